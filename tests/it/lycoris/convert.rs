//! `convert --to lycoris|comfy|peft` of LyCORIS algorithms: LyCORIS files (lycoris-lora 4.1.3)
//! ↔ PEFT LOHA/LOKR folders (PEFT 0.21) with byte-identical factors both ways, merges equal to
//! what the producing library's own module computes, and the real peers loading lorakit's
//! outputs (`fixtures/gen/check_lycoris_peers.py`, gated on `LORAKIT_PYTHON` as
//! tests/it/peft_load.rs is).

use super::*;
use std::path::PathBuf;

/// LyCORIS files (folder, case) PEFT can hold: LoHa, and LoKr whose Kronecker splits one
/// `decompose_factor` gives (`fixtures/lycoris_peft/`, made by lycoris-lora with its default
/// factor: `lokr_w2` decomposed, and both halves decomposed with a Tucker core). `lokr` and
/// `lokr_both_tucker` of `fixtures/lycoris/`, made with LyCORIS' `factor=4` / `factor=8`, are
/// refused below.
const TO_PEFT: &[(&str, &str)] = &[
    ("lycoris", "loha"),
    ("lycoris", "loha_tucker"),
    ("lycoris", "lokr_full"),
    ("lycoris_peft", "lokr_w2"),
    ("lycoris_peft", "lokr_both"),
];
const PEFT_CASES: &[&str] = &["loha", "loha_tucker", "lokr", "lokr_both"];

fn convert(input: &Path, to: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "convert".to_owned(),
        input.display().to_string(),
        "--to".into(),
        to.into(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run_ok(args)
}

/// Every tensor of `a` is in `b` with the same dtype, shape and bytes, under `rename(key)`.
fn same_tensors(
    a: &BTreeMap<String, T>,
    b: &BTreeMap<String, T>,
    rename: &dyn Fn(&str) -> String,
    skip: &dyn Fn(&str) -> bool,
) {
    let mut n = 0;
    for (k, t) in a {
        if skip(k) {
            continue;
        }
        let k2 = rename(k);
        let u = b.get(&k2).unwrap_or_else(|| panic!("{k} → {k2} missing"));
        assert!(
            t.dtype == u.dtype && t.shape == u.shape && t.data == u.data,
            "{k} → {k2}: not byte-identical"
        );
        n += 1;
    }
    assert!(n > 0);
}

/// A merge of `adapter` onto the LyCORIS fixture base, tensor by tensor against the fixture's
/// forward-probed weights: within TOL where they changed, byte-identical elsewhere.
fn assert_merges_like(dir: &Path, adapter: &Path, folder: &str, case: &str) {
    let out = dir.join(format!("{folder}_{case}.merged.safetensors"));
    merge_ok(
        &fixture("lycoris/base.safetensors"),
        adapter,
        &out,
        &["--device", "cpu", "--quiet"],
    );
    let (got, want, base) = (
        read(&out),
        read(&fixture(&format!("{folder}/{case}.merged.safetensors"))),
        read(&fixture("lycoris/base.safetensors")),
    );
    let changed = assert_merged_like(case, &base, &want, &got, Vacuity::Matched);
    assert_eq!(changed, 4, "{case}: four weights merged");
}

/// LyCORIS → PEFT → LyCORIS: the PEFT folder merges to the weights lycoris-lora's modules
/// compute, and the file written back has the original's factors byte for byte and the same
/// alphas (LoKr with both halves whole: PEFT gets r = alpha, LyCORIS' scale 1).
#[test]
fn lycoris_to_peft_and_back_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    for &(folder, case) in TO_PEFT {
        let src = fixture(&format!("{folder}/{case}.safetensors"));
        let peft = dir.path().join(format!("{folder}_{case}_peft"));
        convert(
            &src,
            "peft",
            &peft,
            &["--base", s(&fixture("lycoris/base.safetensors"))],
        );
        let cfg: serde_json::Value = read_json(peft.join("adapter_config.json"));
        let want_type = if case.starts_with("loha") {
            "LOHA"
        } else {
            "LOKR"
        };
        assert_eq!(cfg["peft_type"], want_type, "{case}");
        assert_merges_like(dir.path(), &peft, folder, case);
        let back = dir.path().join(format!("{folder}_{case}_back.safetensors"));
        convert(&peft, "lycoris", &back, &[]);
        let (orig, peft_t, again) = (
            read(&src),
            read(&peft.join("adapter_model.safetensors")),
            read(&back),
        );
        // PEFT keys: base_model.model.{dotted path}.{suffix}.
        let to_peft = |k: &str| {
            let (module, suffix) = k.split_once('.').unwrap();
            let path = module.strip_prefix("lycoris_").unwrap().replace('_', ".");
            let path = path
                .replace("down.blocks", "down_blocks")
                .replace("to.q", "to_q")
                .replace("ff.out", "ff_out")
                .replace("conv.in", "conv_in")
                .replace("proj.out", "proj_out");
            format!("base_model.model.{path}.{suffix}")
        };
        let is_alpha = |k: &str| k.ends_with(".alpha");
        same_tensors(&orig, &peft_t, &to_peft, &is_alpha);
        same_tensors(&orig, &again, &|k| k.to_owned(), &is_alpha);
        assert_eq!(orig.len(), again.len(), "{case}: same tensors");
        for (k, t) in orig.iter().filter(|(k, _)| is_alpha(k)) {
            assert_eq!(t.f32(), again[k].f32(), "{case} {k}: alpha");
        }
        assert_merges_like(dir.path(), &back, folder, case);
    }
}

/// PEFT LOHA/LOKR → LyCORIS → PEFT: factors byte-identical both ways; merges equal PEFT's
/// `merge_and_unload`. PEFT's LoKr with both halves whole (`lokr`: scale alpha/r = 1.5) has no
/// LyCORIS alpha (scale 1 there), so its scale is folded into `lokr_w1` once and reported: that
/// tensor is `round(1.5·w1)`, everything else byte-identical.
#[test]
fn peft_loha_lokr_to_lycoris_and_back_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = fixture("conv/base");
    let base = read_checkpoint(&base_path);
    for case in PEFT_CASES {
        let src = fixture(&format!("peft_lycoris/{case}"));
        let lyc = dir.path().join(format!("{case}.safetensors"));
        let json = convert(&src, "lycoris", &lyc, &["--json"]);
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        let folds: Vec<Option<f64>> = report["modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["folded"].as_f64())
            .collect();
        let reference = read(&fixture(&format!("peft_lycoris/{case}.merged.safetensors")));
        let out = dir.path().join(format!("{case}_lycoris_merged"));
        merge_ok(&base_path, &lyc, &out, &["--quiet"]);
        assert_eq!(
            assert_matches_reference(&read_checkpoint(&out), &base, &reference, TOL),
            3,
            "{case}"
        );
        let back = dir.path().join(format!("{case}_back"));
        convert(&lyc, "peft", &back, &[]);
        let out = dir.path().join(format!("{case}_back_merged"));
        merge_ok(&base_path, &back, &out, &["--quiet"]);
        assert_matches_reference(&read_checkpoint(&out), &base, &reference, TOL);
        let (orig, file, again) = (
            read(&src.join("adapter_model.safetensors")),
            read(&lyc),
            read(&back.join("adapter_model.safetensors")),
        );
        let folded_w1 = |k: &str| *case == "lokr" && k.ends_with("lokr_w1");
        let to_lyc = |k: &str| {
            let rest = k.strip_prefix("base_model.model.").unwrap();
            let (module, suffix) = rest.split_once('.').unwrap();
            format!("lycoris_{module}.{suffix}")
        };
        same_tensors(&orig, &file, &to_lyc, &folded_w1);
        same_tensors(&orig, &again, &|k| k.to_owned(), &folded_w1);
        if *case == "lokr" {
            assert!(folds.iter().all(|f| *f == Some(1.5)), "{folds:?}");
            for (k, t) in orig.iter().filter(|(k, _)| folded_w1(k)) {
                let want: Vec<f32> = t.f32().iter().map(|&x| (x as f64 * 1.5) as f32).collect();
                assert_eq!(file[&to_lyc(k)].f32(), want, "{k}: folded once");
            }
        } else {
            assert!(folds.iter().all(Option::is_none), "{case}: {folds:?}");
        }
    }
}

/// `--to comfy` names modules as ComfyUI's `model_lora_keys_unet` / `_clip` map them: the
/// component's kohya prefix (`unet.` → `lora_unet_`, `text_encoder.` → `lora_te_`), LyCORIS
/// suffixes kept; the factors are the input's bytes and the file merges like the input.
#[test]
fn comfy_names_follow_the_component_and_keep_every_factor() {
    let dir = tempfile::tempdir().unwrap();
    // A LyCORIS file: kohya-named already, so only the factors matter.
    let src = fixture("lycoris/lokr.safetensors");
    let out = dir.path().join("comfy.safetensors");
    convert(&src, "comfy", &out, &[]);
    same_tensors(&read(&src), &read(&out), &|k| k.to_owned(), &|_| false);
    // PEFT module paths without a component: kohya's default (lora_unet).
    let out = dir.path().join("peft_comfy.safetensors");
    convert(&fixture("peft_lycoris/loha"), "comfy", &out, &[]);
    let keys: Vec<String> = read(&out).keys().cloned().collect();
    assert!(keys.iter().all(|k| k.starts_with("lora_unet_")), "{keys:?}");
    assert!(
        keys.contains(&"lora_unet_conv1.hada_w1_a".to_owned()),
        "{keys:?}"
    );
}

/// What PEFT cannot hold is refused by module, nothing written: a LoKr split no single
/// `decompose_factor` gives (LyCORIS' `factorization` puts the smaller factor first, PEFT's
/// does not), a LoHa DoRA scale, a LoCon Tucker core, a full diff.
#[test]
fn peft_refuses_what_it_has_no_tuner_for() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("lycoris/base.safetensors");
    for (case, expect) in [
        ("lokr", "decompose_factor"),
        ("lokr_both_tucker", "decompose_factor"),
        ("loha_dora_in", "dora_scale"),
        ("locon_tucker", "lora-tucker"),
        ("full", "full"),
    ] {
        let (src, out) = (
            fixture(&format!("lycoris/{case}.safetensors")),
            dir.path().join(case),
        );
        let base = ["--base", s(&base)];
        let line = refused(convert_args(&src, "peft", &out, &base), &out);
        assert!(
            line.contains(&format!("{case}.safetensors")) && line.contains(expect),
            "{case}: {line}"
        );
    }
}

fn python() -> Option<PathBuf> {
    let py = std::env::var_os("LORAKIT_PYTHON").map(PathBuf::from)?;
    let ok = std::process::Command::new(&py)
        .args(["-c", "import torch, peft, lycoris"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(py)
    } else {
        eprintln!(
            "LYCORIS PEER TEST SKIPPED: {} cannot import torch, peft and lycoris",
            py.display()
        );
        None
    }
}

/// The peer (`mode`: `peft` or `lycoris`, run by fixtures/gen/check_lycoris_peers.py on its
/// `model`) loads `adapter` onto `base` and merges it, into `{out}.peer.safetensors`; lorakit
/// merges the same file into `{out}.ours.safetensors`, which matches the peer's within [`TOL`]
/// (see [`assert_matches_reference`]). Returns how many tensors changed.
fn peer_merges_like_ours(
    py: &Path,
    mode: &str,
    adapter: &Path,
    model: &str,
    base: &Path,
    out: &Path,
) -> usize {
    let beside = |suffix: &str| {
        let mut p = out.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let (peer_out, ours) = (beside(".peer.safetensors"), beside(".ours.safetensors"));
    let args = [mode, s(adapter), model, s(base), s(&peer_out)].map(std::ffi::OsStr::new);
    python_ok(py, "check_lycoris_peers.py", &args);
    merge_ok(base, adapter, &ours, &["--quiet"]);
    assert_matches_reference(&read(&ours), &read(base), &read(&peer_out), TOL)
}

/// The real peers load lorakit's outputs and compute lorakit's merge: PEFT loads the LOHA/LOKR
/// folders written from lycoris-lora files (`PeftModel.from_pretrained`, no missing or
/// unexpected keys, tensors unchanged; `merge_and_unload`), and lycoris-lora loads the LyCORIS
/// files written from PEFT folders (`create_lycoris_from_weights`, every module and tensor
/// used; weights probed from the forward). Each within TOL of lorakit's merge of the same file.
///
/// Not run through lycoris-lora: `lokr_both` (PEFT, Tucker `lokr_t2` with a whole `lokr_w1`).
/// lycoris-lora 4.1.3 `LokrModule.make_module_from_state_dict` (`lycoris/modules/lokr.py`) takes
/// the rank from `lokr_w2_a.size(1)`, which for a Tucker `w2_a` (`[r, b]`) is `b`, rebuilds `w2`
/// whole and fails (`'LokrModule' object has no attribute 'lokr_w2_a'`) — also on LyCORIS' own
/// files of that shape (`use_tucker` without `decompose_both`).
#[test]
fn peft_and_lycoris_load_the_converted_files() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lyc_base = fixture("lycoris/base.safetensors");
    for &(fx, case) in TO_PEFT {
        let folder = dir.path().join(format!("{fx}_{case}"));
        convert(
            &fixture(&format!("{fx}/{case}.safetensors")),
            "peft",
            &folder,
            &["--base", s(&lyc_base)],
        );
        let n = peer_merges_like_ours(&py, "peft", &folder, "lycoris-net", &lyc_base, &folder);
        assert_eq!(n, 4, "{case}");
    }
    let conv_base = dir.path().join("conv_base.safetensors");
    std::fs::copy(fixture("conv/base/model.safetensors"), &conv_base).unwrap();
    for case in ["loha", "loha_tucker", "lokr"] {
        let file = dir.path().join(format!("{case}.lycoris.safetensors"));
        convert(
            &fixture(&format!("peft_lycoris/{case}")),
            "lycoris",
            &file,
            &[],
        );
        let n = peer_merges_like_ours(&py, "lycoris", &file, "tinyconv", &conv_base, &file);
        assert_eq!(n, 3, "{case}");
    }
}
