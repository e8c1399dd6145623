//! `convert` through the binary: PEFT → kohya → PEFT round trips, against diffusers' kohya
//! conversion (fixtures/kohya/te_from_peft.safetensors), merges of converted files, and one-line
//! errors that write nothing.

use super::*;

#[test]
fn convert_round_trip_peft_kohya_peft_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    for (adapter, base) in [
        ("kohya/adapters/te_peft", "kohya/te_base"),
        ("llama/adapters/patterns", "llama/base"),
        ("llama/adapters/rslora_all", "llama/base"),
        ("conv/adapters/peft", "conv/base/model.safetensors"),
    ] {
        let tag = adapter.replace('/', "_");
        let k = dir.path().join(format!("{tag}.safetensors"));
        let back = dir.path().join(format!("{tag}_back"));
        let rep = run_json(&convert_args(&fixture(adapter), "kohya", &k, &[]));
        assert_eq!(rep["to"], "kohya");
        let rep = run_json(&convert_args(&k, "peft", &back, &[]));
        assert_eq!(
            (rep["names_from"].as_str(), rep["config_restored"].as_bool()),
            (Some("metadata"), Some(true)),
            "{adapter}"
        );
        // Factors byte for byte.
        let orig = read(&fixture(adapter).join("adapter_model.safetensors"));
        let got = read(&back.join("adapter_model.safetensors"));
        assert_eq!(orig, got, "{adapter}: factors");
        // Per-module rank, alpha and scale identical.
        let (o, g) = (
            Adapter::open(fixture(adapter)).unwrap(),
            Adapter::open(&back).unwrap(),
        );
        assert_eq!(o.use_rslora, g.use_rslora);
        for (mo, mg) in o.modules.iter().zip(&g.modules) {
            assert_eq!(
                (&mo.name, mo.rank, mo.alpha, mo.scale),
                (&mg.name, mg.rank, mg.alpha, mg.scale)
            );
        }
        // Merges: the kohya file and the round trip both merge exactly like the original.
        let m0 = merged(dir.path(), base, &fixture(adapter), &format!("{tag}_m0"));
        assert_eq!(
            m0,
            merged(dir.path(), base, &back, &format!("{tag}_m1")),
            "{adapter}: merge after round trip"
        );
        if !adapter.contains("rslora") {
            assert_eq!(
                m0,
                merged(dir.path(), base, &k, &format!("{tag}_m2")),
                "{adapter}: merge of the kohya file"
            );
        }
    }
    // A lorakit kohya file resized as kohya keeps its names and the map back to module paths; the
    // PEFT config no longer fits the new ranks, so only the names come back, with kohya's alphas
    // (same scales).
    let k = dir.path().join("te1.safetensors");
    run_ok(convert_args(
        &fixture("kohya/adapters/te_peft"),
        "kohya",
        &k,
        &["--prefix", "lora_te1"],
    ));
    let k2 = dir.path().join("te1_r2.safetensors");
    run_ok(resize_args(&k, &k2, &["--rank", "2"]));
    assert!(read(&k2).contains_key("lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha"));
    let back = dir.path().join("te1_r2_peft");
    let rep = run_json(&convert_args(&k2, "peft", &back, &[]));
    assert_eq!(
        (rep["names_from"].as_str(), rep["config_restored"].as_bool()),
        (Some("metadata"), Some(false))
    );
    let direct = dir.path().join("te_r2_direct");
    run_ok(resize_args(
        &fixture("kohya/adapters/te_peft"),
        &direct,
        &["--rank", "2"],
    ));
    let (g, w) = (deltas(&back), deltas(&direct));
    assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>());
    for (name, d) in &w {
        assert!(rel64(&g[name].w, &d.w) < 1e-6, "{name}");
    }
    // rsLoRA in kohya: alpha = scale·rank (4·4 = 16 for r = 4, alpha 8, √r scaling).
    let k = read(&dir.path().join("llama_adapters_rslora_all.safetensors"));
    assert_eq!(
        k["lora_unet_model_layers_0_self_attn_q_proj.alpha"].f32(),
        vec![16.0]
    );
}

#[test]
fn convert_te_peft_to_kohya_matches_diffusers() {
    let (dir, out) = scratch("te1.safetensors");
    run_ok(convert_args(
        &fixture("kohya/adapters/te_peft"),
        "kohya",
        &out,
        &["--prefix", "lora_te1"],
    ));
    let got = read(&out);
    let want = read(&fixture("kohya/te_from_peft.safetensors"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "diffusers' names"
    );
    for (k, t) in &want {
        if k.ends_with(".alpha") {
            // diffusers writes alpha = rank as I64; lorakit the PEFT alpha (also 4) as F32.
            assert_eq!(t.dtype, safetensors::Dtype::I64);
            assert_eq!(
                i64::from_le_bytes(t.data[..8].try_into().unwrap()) as f32,
                got[k].f32()[0]
            );
        } else {
            assert_eq!(&got[k], t, "{k}: factors byte for byte");
        }
    }
    // ΔW per module equal (the independent kohya reader on both files, kohya names).
    let (g, w) = (
        kohya_deltas(&out),
        kohya_deltas(&fixture("kohya/te_from_peft.safetensors")),
    );
    for (name, d) in &w {
        assert_eq!(g[name].w, d.w, "{name}");
    }
    // Default prefix for a text encoder: lora_te.
    let out = dir.path().join("te.safetensors");
    run_ok(convert_args(
        &fixture("kohya/adapters/te_peft"),
        "kohya",
        &out,
        &[],
    ));
    assert!(read(&out)
        .contains_key("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"));
}

#[test]
fn convert_kohya_to_peft_merges_like_the_kohya_file() {
    let dir = tempfile::tempdir().unwrap();
    for (kohya, base, reference) in [
        (
            "kohya/te_lora.safetensors",
            "kohya/te_base",
            "kohya/merged_te.safetensors",
        ),
        (
            "kohya/locon.safetensors",
            "conv/base/model.safetensors",
            "kohya/merged_locon.safetensors",
        ),
    ] {
        let tag = kohya.replace('/', "_");
        let peft = dir.path().join(format!("{tag}_peft"));
        let rep = run_json(&convert_args(
            &fixture(kohya),
            "peft",
            &peft,
            &["--base", &fx(base)],
        ));
        assert_eq!(rep["names_from"], "base");
        // Factors byte for byte.
        let k = read(&fixture(kohya));
        let p = read(&peft.join("adapter_model.safetensors"));
        for (name, t) in &k {
            if let Some(m) = name.strip_suffix(".lora_down.weight") {
                let dotted = entry(&rep["modules"], "from", m)["to"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert_eq!(
                    &p[&format!("base_model.model.{dotted}.lora_A.weight")],
                    t,
                    "{name}"
                );
            }
        }
        let out = dir.path().join(format!("{tag}_merged.safetensors"));
        let base_path = fixture(base);
        let out_path = if base_path.is_dir() {
            dir.path().join(format!("{tag}_merged"))
        } else {
            out
        };
        merge_ok(&base_path, &peft, &out_path, &["--device", "cpu"]);
        let merged = read_checkpoint(&out_path);
        assert_matches_reference(
            &merged,
            &read_checkpoint(&base_path),
            &read(&fixture(reference)),
            1e-6,
        );
    }
    // The missing alpha of te_lora (alpha = rank = 4) is an alpha_pattern entry.
    let cfg = read_json(
        dir.path()
            .join("kohya_te_lora.safetensors_peft/adapter_config.json"),
    );
    assert_eq!(cfg["lora_alpha"], 2);
    assert_eq!(
        cfg["alpha_pattern"]["text_model.encoder.layers.1.self_attn.v_proj"],
        4
    );
    assert_eq!(cfg["base_model_name_or_path"], fx("kohya/te_base"));
}

#[test]
fn convert_errors_are_one_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // kohya → PEFT without base.
    let (out, te) = (dir.path().join("p"), fixture("kohya/te_lora.safetensors"));
    let line = refused(convert_args(&te, "peft", &out, &[]), &out);
    assert_mentions(&line, &["te_lora.safetensors", "--base"]);
    // A base the modules do not fit.
    let llama = ["--base", &fx("llama/base")];
    let line = refused(convert_args(&te, "peft", &out, &llama), &out);
    assert_mentions(
        &line,
        &[
            "do not match the base",
            "lora_te_text_model_encoder_layers_0_mlp_fc1",
        ],
    );
    // Ambiguous kohya names: `a.b_c` and `a_b.c` both read `a_b_c`.
    let (base, k) = ambiguous_kohya_case(dir.path());
    let line = refused(convert_args(&k, "peft", &out, &["--base", s(&base)]), &out);
    assert_ambiguous_kohya(&line);
    // No kohya form: the error names the module; folders created for the output are removed.
    let (embed, nested) = (
        fixture("llama/adapters/embed"),
        dir.path().join("new/sub/e.safetensors"),
    );
    let line = refused(convert_args(&embed, "kohya", &nested, &[]), &nested);
    assert_mentions(&line, &["embed_tokens", "kohya format cannot hold"]);
    assert!(
        !dir.path().join("new").exists(),
        "created folders are removed on failure"
    );
    // Output onto the input (file, and PEFT folder).
    let (te, qv) = (
        fixture("kohya/te_lora.safetensors"),
        fixture("llama/adapters/qv_r8"),
    );
    for args in [
        convert_args(&te, "kohya", &te, &[]),
        convert_args(&qv, "peft", &qv, &[]),
        resize_args(&qv, &qv, &["--rank", "2"]),
    ] {
        let line = one_line_error(&run_err(&args));
        assert!(line.contains("output is also an input"), "{args:?}: {line}");
    }
    // An existing folder where convert writes one file: refused without offering `--format`,
    // which convert does not have (its target is `--to`).
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    for to in ["kohya", "diffusers"] {
        let line = one_line_error(&run_err(convert_args(&qv, to, &folder, &[])));
        assert_mentions(&line, &["is a folder", "choose a file name"]);
        assert!(!line.contains("--format"), "{to}: {line}");
    }
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0);
}
