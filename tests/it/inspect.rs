//! `inspect`: counts from headers, adapter facts, spectra against an f64 reference.

use super::common::*;
use super::reference::*;

#[test]
fn checkpoint_counts_match_the_file() {
    let v = inspect_json(&fixture("llama/base_sharded"), &["--tensors"]);
    let all = read_checkpoint(&fixture("llama/base_sharded"));
    assert_eq!(v["kind"], "checkpoint");
    assert_eq!(v["layout"], "sharded");
    assert_eq!(v["files"].as_array().unwrap().len(), 4);
    assert_eq!(v["tensor_count"].as_u64().unwrap() as usize, all.len());
    let params: usize = all
        .values()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    assert_eq!(v["parameters"].as_u64().unwrap() as usize, params);
    assert_eq!(
        v["dtypes"]["F32"]["tensor_count"].as_u64().unwrap() as usize,
        all.len()
    );
    let list = v["tensors"].as_array().unwrap();
    assert_eq!(list.len(), all.len());
    for row in list {
        let t = &all[row["name"].as_str().unwrap()];
        assert_eq!(row["bytes"].as_u64().unwrap() as usize, t.data.len());
    }
    let text = run_ok(inspect_args(&fixture("llama/base_bf16"), &[]));
    assert_mentions(&text, &["BF16", "90432"]);
}

#[test]
fn adapter_facts_follow_the_config() {
    let v = inspect_json(&fixture("llama/adapters/patterns"), &[]);
    assert_eq!(v["kind"], "adapter");
    assert_eq!(v["format"], "peft");
    let m = |name: &str| {
        v["modules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap()
    };
    // rank_pattern {"k_proj": 2, "layers.1.self_attn.q_proj": 6}, alpha_pattern {"v_proj": 3, "layers.0.self_attn.o_proj": 5}
    assert_eq!(m("model.layers.0.self_attn.k_proj")["rank"], 2);
    assert_eq!(m("model.layers.0.self_attn.k_proj")["scale"], 4.0);
    assert_eq!(m("model.layers.1.self_attn.q_proj")["rank"], 6);
    assert_eq!(m("model.layers.0.self_attn.q_proj")["rank"], 4);
    assert_eq!(m("model.layers.0.self_attn.v_proj")["scale"], 0.75);
    assert_eq!(m("model.layers.0.self_attn.o_proj")["scale"], 1.25);
    assert_eq!(m("model.layers.1.self_attn.o_proj")["scale"], 2.0);

    let k = inspect_json(&fixture("kohya/te_lora.safetensors"), &[]);
    assert_eq!(k["format"], "kohya");
    let missing = entry(
        &k["modules"],
        "name",
        "lora_te_text_model_encoder_layers_1_self_attn_v_proj",
    );
    assert_eq!(missing["scale"], 1.0, "missing alpha means alpha = rank");

    let d = inspect_json(&fixture("llama/adapters/dora"), &[]);
    assert_eq!(d["dora"], true);
    let r = inspect_json(&fixture("llama/adapters/rslora_all"), &[]);
    assert_eq!(r["modules"][0]["scale"], 4.0, "rsLoRA: 8/√4");
}

/// Singular values from the factors equal those of the materialised s·B·A, computed here by
/// an f64 Jacobi eigen-solve of (sBA)ᵀ(sBA)'s small Gram form.
#[test]
fn spectrum_matches_materialised_delta() {
    let v = inspect_json(&fixture("llama/adapters/qv_r8"), &["--spectrum"]);
    let ad = read(&fixture("llama/adapters/qv_r8/adapter_model.safetensors"));
    for m in v["modules"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let a = &ad[&format!("base_model.model.{name}.lora_A.weight")];
        let b = &ad[&format!("base_model.model.{name}.lora_B.weight")];
        let (r, k, d) = (a.shape[0], a.shape[1], b.shape[0]);
        let (av, bv) = (a.f32(), b.f32());
        let scale = m["scale"].as_f64().unwrap();
        // ΔW (d×k) in f64, then the r-dim Gram G = ΔWᵀΔW restricted via ΔW·ΔWᵀ (d×d) eigenvalues.
        let dw = scaled_product64(scale, &bv, &av, (d, r, k));
        // The f64 reference: one-sided Jacobi SVD of the materialised ΔW.
        let (_, sv_ref, _) = jacobi_svd(&dw, d, k);
        let got: Vec<f64> = m["spectrum"]["singular_values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), r.min(d).min(k));
        for (i, sv) in got.iter().enumerate() {
            let want = sv_ref[i];
            assert!(
                (sv - want).abs() <= 1e-4 * sv_ref[0],
                "{name} σ{i}: {sv} vs {want}"
            );
        }
        let fro: f64 = dw.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((m["spectrum"]["fro_norm"].as_f64().unwrap() - fro).abs() <= 1e-5 * fro);
        // r90: smallest k with Σ_{i<k} σ² ≥ 0.9 Σ σ².
        let total: f64 = got.iter().map(|x| x * x).sum();
        let mut acc = 0.0;
        let r90 = got.iter().position(|x| {
            acc += x * x;
            acc >= 0.9 * total
        });
        assert_eq!(
            m["spectrum"]["rank90"].as_u64().unwrap() as usize,
            r90.unwrap() + 1
        );
    }
}

#[test]
fn plot_writes_an_svg() {
    let (dir, svg) = scratch("s.svg");
    run_ok(inspect_args(
        &fixture("llama/adapters/patterns"),
        &["--plot", s(&svg)],
    ));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") && text.contains("polyline"),
        "{}",
        &text[..200.min(text.len())]
    );
    // One panel per module type, each captioned with its module count and stored rank; the
    // markers and the annotation explained on the figure; a layer colour scale.
    let v = inspect_json(&fixture("llama/adapters/patterns"), &[]);
    let mut kinds: Vec<(String, usize, u64)> = Vec::new();
    for m in v["modules"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let kind = name.rsplit('.').next().unwrap().to_owned();
        let rank = m["rank"].as_u64().unwrap();
        match kinds.iter_mut().find(|k| k.0 == kind) {
            Some(k) => {
                k.1 += 1;
                k.2 = k.2.max(rank);
            }
            None => kinds.push((kind, 1, rank)),
        }
    }
    assert!(kinds.len() >= 2, "{kinds:?}");
    for (kind, n, rank) in &kinds {
        let caption = format!(
            "{kind} — {n} module{}, stored rank {rank}",
            if *n == 1 { "" } else { "s" }
        );
        assert!(text.contains(&caption), "no panel {caption:?}");
    }
    assert_eq!(text.matches("optimal rel. error").count(), kinds.len() + 1);
    assert!(text.contains("r90") && text.contains("r99") && text.contains("Eckart"));
    assert!(text.contains("layer 0") && text.contains("line colour"));
    // PNG: same drawing, a real PNG of the figure's size.
    let png = dir.path().join("s.png");
    run_ok(inspect_args(
        &fixture("llama/adapters/patterns"),
        &["--plot", s(&png)],
    ));
    let b = std::fs::read(&png).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(b[16..20].try_into().unwrap());
    assert_eq!(width, (460 * kinds.len().min(3) as u32).max(920));
}

/// A 20 GiB sparse file with a valid header: inspect reads the header only.
#[test]
fn inspect_reads_headers_only() {
    if super::process::rss_probe() {
        return;
    }
    let (_dir, p) = scratch("big.safetensors");
    let n: u64 = 20 << 30;
    let header = format!(
        r#"{{"w":{{"dtype":"BF16","shape":[{},1024],"data_offsets":[0,{}]}}}}"#,
        n / 2048,
        n
    );
    let mut h = header.into_bytes();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    std::fs::write(&p, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(bytes.len() as u64 + n).unwrap();
    let s = run_ok(inspect_args(&p, &["--json"]));
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["bytes"].as_u64(), Some(n));
    // Peak resident memory of inspect itself (`wait4` through a probe process: see
    // `process::peak_rss_kib_env`; other tests' children do not count): had inspect touched the
    // 20 GiB data section it would be gigabytes.
    let kib = super::process::peak_rss_kib_env(
        "it::inspect::inspect_reads_headers_only",
        &inspect_args(&p, &["--json"]),
        &[],
    );
    assert!(kib < 1_000_000, "inspect peak RSS {kib} KiB");
    let du = std::process::Command::new("du")
        .arg("-k")
        .arg(&p)
        .output()
        .unwrap();
    let kb: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kb < 1024, "file stayed sparse: nothing was written into it");
}
