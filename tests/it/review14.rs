//! Session 14's review findings fixed on branch fix14 (fixtures/gen/review14_fixtures.py): TinyLoRA
//! and UniLoRA written back as LoRA at their own scale, trainable-token rows that have no LoRA
//! folder refused, and an OSF module with nothing trained.

use super::common::*;

/// `convert --to peft`, `resize` at the adapter's own rank and `convert --to kohya` of PEFT's
/// TinyLoRA (r 2) and UniLoRA (r 4) folders, then merged: PEFT's merge of the original folder
/// (`merged.safetensors`; ΔW has no scale). Before: the readers kept alpha 1 at rank r, so the
/// written files carried lora_alpha 1 and every loader applied ΔW/r (0.5×, 0.25×).
#[test]
fn tinylora_and_unilora_written_as_lora_keep_their_scale() {
    let base = fixture("llama/base");
    for (case, rank) in [("gaps13a/tinylora", "2"), ("gaps13a/unilora", "4")] {
        let adapter = fixture(&format!("{case}/adapter"));
        let want = fixture(&format!("{case}/merged.safetensors"));
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let outs = [
            ("convert", dir.join("peft")),
            ("resize", dir.join("resized")),
            ("kohya", dir.join("kohya.safetensors")),
        ];
        for (how, out) in &outs {
            let mut args = match *how {
                "convert" => vec!["convert", s(&adapter), "--to", "peft"],
                "resize" => vec!["resize", s(&adapter), "--rank", rank],
                _ => vec!["convert", s(&adapter), "--to", "kohya"],
            };
            args.extend(["--out", s(out), "--quiet"]);
            run_ok(&args);
            if *how != "kohya" {
                let text = std::fs::read_to_string(out.join("adapter_config.json")).unwrap();
                let cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(cfg["peft_type"], "LORA", "{case} {how}");
                assert_eq!(
                    cfg["lora_alpha"].as_f64(),
                    cfg["r"].as_f64(),
                    "{case} {how}"
                );
                for key in ["u", "weight_tying", "projection_seed", "init_v_bound"] {
                    assert!(cfg.get(key).is_none(), "{case} {how}: `{key}` carried over");
                }
            }
            let merged = dir.join(format!("{how}-merged"));
            run_ok(merge_args(
                &base,
                out,
                &merged,
                &["--device", "cpu", "--quiet"],
            ));
            assert_eq!(
                assert_merged_matches(&merged, &base, &want, 1e-5),
                4,
                "{case} {how}"
            );
        }
    }
}

/// A TRAINABLE_TOKENS folder has no LoRA module, and PEFT 0.21.2 refuses a LoRA config without
/// targets: `convert --to peft` refuses it, naming the folder, and writes nothing. Before: a LORA
/// config without `trainable_token_indices`, whose rows PEFT dropped.
#[test]
fn trainable_tokens_alone_are_not_written_as_a_lora_folder() {
    let (_dir, out) = scratch("out");
    let adapter = fixture("gaps13a/tokens/adapter");
    let line = refused(
        ["convert", s(&adapter), "--to", "peft", "--out", s(&out)],
        &out,
    );
    assert_mentions(
        &line,
        &["gaps13a/tokens", "trainable-token rows", "no LoRA module"],
    );
}

/// OSF with `rank_pattern {"v_proj": 1.0}`: v_proj's effective rank is min(out, in), PEFT saves
/// U_low [32, 0], S_low [0], V_low [0, 64], and its merge changes only q_proj. Before: lorakit
/// refused the whole file ("… with 0 < n < min(out, in)").
#[test]
fn osf_module_with_nothing_trained_leaves_its_weight() {
    assert_eq!(
        merge_matches_peft_fixture("review14/osf_full_rank", "llama/base", &[]),
        2
    );
}
