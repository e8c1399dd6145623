//! 6. Messages stay one line and safe; hub-cache symlinks are followed, never written through.

use super::*;

#[test]
fn names_with_control_characters_are_escaped() {
    let (dir, ad) = scratch("evil");
    let evil = "base_model.model.model.layers.0.self_attn.q\n\u{1b}[2Jproj\r";
    let a = format!("{evil}.lora_A.weight");
    let b = format!("{evil}.lora_B.weight");
    write_adapter(
        &ad,
        &[
            (&a, vec![2, 64], vec![0.01; 128]),
            (&b, vec![64, 2], vec![0.02; 128]),
        ],
        serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 2}),
    );
    let res = run_err(merge_args(
        &fixture("llama/base"),
        &ad,
        &dir.path().join("o"),
        &[],
    ));
    let line = one_line_error(&res);
    assert!(
        !res.stderr.contains(&0x1b) && !res.stderr.contains(&b'\r'),
        "{line}"
    );
    assert_mentions(&line, &["\\n", "\\u{1b}"]);
}

#[test]
fn an_invalid_rank_pattern_is_one_line_naming_the_config() {
    let (_dir, ad) = scratch("a");
    copy_dir(&fixture("llama/adapters/qv_r8"), &ad);
    let cfg_path = ad.join("adapter_config.json");
    edit_json(&cfg_path, |cfg| {
        cfg["rank_pattern"] = serde_json::json!({"q_proj(": 4})
    });
    let line = one_line_error(&run_err(inspect_args(&ad, &[])));
    assert!(
        line.contains(s(&cfg_path)) && line.contains("rank_pattern"),
        "{line}"
    );
}

/// A base laid out as the Hugging Face hub cache: every file a symlink into `blobs/`. The merge
/// follows them, copies config.json and generation_config.json as files, and writes none of
/// its outputs through a link.
#[test]
fn a_hub_cache_snapshot_merges_with_its_configs() {
    let (dir, repo) = scratch("models--org--tiny");
    let blobs = repo.join("blobs");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    for (i, f) in ["config.json", "generation_config.json", "model.safetensors"]
        .iter()
        .enumerate()
    {
        let blob = blobs.join(format!("blob{i}"));
        std::fs::copy(fixture(&format!("llama/base/{f}")), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob{i}"), snap.join(f)).unwrap();
    }
    let blobs_before = snapshot(&blobs);
    let out = dir.path().join("out");
    merge_qv_r8_into(&snap, &out, &["--quiet"]);
    assert_eq!(
        listing(&out),
        vec!["config.json", "generation_config.json", "model.safetensors"]
    );
    for f in listing(&out) {
        assert!(!std::fs::symlink_metadata(out.join(&f))
            .unwrap()
            .file_type()
            .is_symlink());
    }
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        std::fs::read(fixture("llama/base/config.json")).unwrap()
    );
    assert_eq!(snapshot(&blobs), blobs_before);
}
