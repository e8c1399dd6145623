//! What an independent sweep against PEFT 0.21.2's own merges found (2026-12-07), each test
//! failing before its fix; fixtures made by PEFT and LyCORIS themselves
//! (`fixtures/gen/peft_conv1d_fixtures.py`, `fixtures/gen/lycoris_tucker_nd.py`).

use super::common::*;
use std::path::Path;

/// Merges `adapter` into the single-file `base` and compares every tensor of the peer's merged
/// weights `want` with lorakit's (`assert_f32_close`); returns the names the peer changed.
fn merged_as(dir: &Path, base: &Path, adapter: &Path, want: &Path) -> Vec<String> {
    let out = dir.join(format!(
        "{}.merged.safetensors",
        s(adapter).replace('/', "_")
    ));
    merge_ok(base, adapter, &out, &["--quiet"]);
    let (got, want, b) = (read(&out), read(want), read(base));
    let mut changed = Vec::new();
    for (name, w) in &want {
        let label = format!("{} {name}", adapter.display());
        assert_f32_close(&label, &got[name].f32(), &w.f32(), &b[name].f32());
        if w.data != b[name].data {
            changed.push(name.clone());
        }
    }
    changed
}

/// PEFT LoKr and LoHa on an nn.Conv1d: a whole 3-D `lokr_w2` (PEFT's `make_kron` leaves `w1`
/// 2-D, so `torch.kron` pairs it with `w2`'s last two dims: ΔW[o, i, τ] = w2[o/a, i/c, τ]·
/// w1[o%a, i%c], not LyCORIS' product — lorakit was off by 1.28 on a ΔW of 1.01), a
/// decomposed one, and `use_effective_conv2d`'s Tucker cores `[r, r, k, 1]` on the base's
/// `[out, in, k]` (refused before). Each merge equals `merge_and_unload`'s weights.
#[test]
fn peft_lokr_and_loha_on_conv1d_merge_as_peft_merges_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture("peft_conv1d");
    let base = root.join("base.safetensors");
    for case in ["lokr_full", "lokr_low", "loha_effective", "lokr_effective"] {
        let want = root.join(case).join("merged.safetensors");
        let changed = merged_as(dir.path(), &base, &root.join(case), &want);
        assert!(!changed.is_empty(), "{case}: PEFT changed nothing");
    }
}

/// LyCORIS LoCon and LoHa with `use_tucker` on an nn.Conv1d and an nn.Conv3d: 3-D and 5-D
/// Tucker cores (`lora_mid`, `hada_t1/t2`), refused before as not `[r, r, kh, kw]`. Each merge
/// equals the base plus the ΔW of LyCORIS' own forward (`fixtures/gen/lycoris_tucker_nd.py`).
#[test]
fn lycoris_tucker_cores_of_conv1d_and_conv3d_merge_as_lycoris_computes_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture("lycoris_tucker_nd");
    let base = root.join("base.safetensors");
    for algo in ["lora", "loha"] {
        let adapter = root.join(format!("{algo}.safetensors"));
        let want = root.join(format!("{algo}_merged.safetensors"));
        // Both layers, the Conv1d and the Conv3d.
        assert_eq!(
            merged_as(dir.path(), &base, &adapter, &want).len(),
            2,
            "{algo}"
        );
    }
}

/// `check --target diffusers` on kohya text-encoder modules with their own alphas, against what
/// diffusers applied (`fixtures/gen/te_alpha_fixtures.py`, MANIFEST `diffusers`): lorakit names
/// as not applied exactly the modules diffusers did not apply as trained. It used to call every
/// text-encoder alpha lost, where diffusers applies an MLP module's wherever its `alpha_pattern`
/// entry matches a layer (SDXL's usual `lora_te2_text_model_…`, and paths without `text_model_`).
#[test]
fn check_names_the_text_encoder_alphas_diffusers_loses() {
    let m = read_json(fixture("te_alpha/MANIFEST.json"));
    let mut outcomes = std::collections::BTreeSet::new();
    for (case, rec) in m["diffusers"].as_object().unwrap() {
        let file = fixture(&format!("te_alpha/{case}.safetensors"));
        let out = bin()
            .args(check_args(&file, &["--target", "diffusers", "--json"]))
            .output()
            .unwrap();
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = r["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == "diffusers")
            .unwrap();
        let lost: std::collections::BTreeSet<String> = rec
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v["outcome"] == "lost")
            .map(|(k, _)| k.clone())
            .collect();
        outcomes.extend(
            rec.as_object()
                .unwrap()
                .values()
                .map(|v| v["outcome"].clone().to_string()),
        );
        assert_eq!(silent_modules(t), lost, "{case}: {t}");
    }
    assert_eq!(outcomes.len(), 2, "both outcomes recorded: {outcomes:?}");
}

/// A PEFT SEQ_CLS LoRA with `bias = "all"`: PEFT also saves the `modules_to_save` wrapper's
/// biases (`classifier.modules_to_save.bias`, `classifier.original_module.bias`), which merge
/// refused as modules matching no base tensor and check called PEFT failing; PEFT loads it
/// with no warning. The merge equals `merge_and_unload`'s weights and check says PEFT loads it.
#[test]
fn a_seq_cls_lora_with_every_bias_merges_as_peft_merges_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture("peft_seqcls_bias_all");
    let (base, adapter) = (root.join("base"), root.join("adapter"));
    let out = dir.path().join("merged");
    merge_ok(&base, &adapter, &out, &["--quiet"]);
    let (got, want, b) = (
        read_checkpoint(&out),
        read(&root.join("merged.safetensors")),
        read_checkpoint(&base),
    );
    let mut changed = 0;
    for (name, w) in &want {
        assert_f32_close(name, &got[name].f32(), &w.f32(), &b[name].f32());
        changed += usize::from(w.data != b[name].data);
    }
    assert!(changed > 4, "PEFT changed {changed} tensors");
    let (code, r) = super::check::check_json(&adapter, &["--target", "peft", "--base", s(&base)]);
    assert_eq!(code, 0, "{r}");
}

/// PEFT's own TRAINABLE_TOKENS type gives its rows in `token_indices`; check read only LoRA's
/// `trainable_token_indices` and said PEFT fails on it (`peft.trainable_tokens`), though PEFT
/// loads it and merge applies it exactly (`fixtures/gaps13a/tokens`).
#[test]
fn check_reads_the_rows_of_a_trainable_tokens_adapter() {
    let (code, r) = super::check::check_json(
        &fixture("gaps13a/tokens/adapter"),
        &["--target", "peft", "--base", s(&fixture("llama/base"))],
    );
    assert_eq!(code, 0, "{r}");
}

/// The other way: a LyCORIS LoKr on an nn.Conv1d with a whole `lokr_w2` was written as a PEFT
/// LOKR folder that PEFT multiplies otherwise (the test above); now refused, nothing written.
#[test]
fn a_lycoris_conv1d_lokr_with_a_whole_w2_is_not_written_as_peft() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lokr1d.safetensors");
    let f32s = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect()
    };
    let (w1, w2) = (f32s(16), f32s(72));
    write_views(
        &file,
        &[
            ("lycoris_c1.lokr_w1", safetensors::Dtype::F32, &[4, 4], &w1),
            (
                "lycoris_c1.lokr_w2",
                safetensors::Dtype::F32,
                &[6, 4, 3],
                &w2,
            ),
        ],
    );
    let out = dir.path().join("peft");
    let base = fixture("peft_conv1d/base.safetensors");
    let err = refused(
        convert_args(&file, "peft", &out, &["--base", s(&base)]),
        &out,
    );
    assert!(err.contains("c1") && err.contains("Conv1d"), "{err}");
    // LyCORIS' own form of it merges (w1 broadcast over the kernel).
    merge_ok(
        &base,
        &file,
        &dir.path().join("m.safetensors"),
        &["--quiet"],
    );
}
