//! 8. The third hostile round (`fuzz/hostile_round.py`, `fuzz/hostile_cases_round3.py`): each
//! test is one violation that round found, failing before its fix.

use super::*;

/// Overwrites `bytes` at byte `at` of tensor `name`'s data in safetensors file `path`.
fn poke(path: &Path, name: &str, at: usize, bytes: &[u8]) {
    let mut b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let start = h[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n + at;
    b[start..start + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, b).unwrap();
}

const CT_PARTIAL: &str = "quant/sweep/ct_fp8_partial";
const QW: &str = "model.layers.0.self_attn.q_proj.weight";
const QS: &str = "model.layers.0.self_attn.q_proj.weight_scale";

/// A copy of the compressed-tensors FP8_BLOCK checkpoint with partial blocks (as `q`) and its
/// adapter (as `ad`), `edit` applied to the copy's model.safetensors.
fn fp8_block_copy(edit: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (dir, q) = scratch("q");
    copy_dir(&fixture(&format!("{CT_PARTIAL}/q")), &q);
    let ad = dir.path().join("ad");
    copy_dir(&fixture(&format!("{CT_PARTIAL}/ad")), &ad);
    edit(&q.join("model.safetensors"));
    (dir, q, ad)
}

/// A NaN or infinite block scale (BF16) was not named: merge blamed the weight ("merged value
/// at [0, 0] is not finite"), dequantize the *output* file ("o/model.safetensors: … element 0
/// is NaN in BF16"). Both now name the scale tensor of the checkpoint.
#[test]
fn a_non_finite_fp8_block_scale_is_refused_naming_the_scale() {
    for (what, raw) in [("NaN", [0xc0u8, 0x7f]), ("inf", [0x80, 0x7f])] {
        let (dir, q, ad) = fp8_block_copy(|f| poke(f, QS, 2, &raw));
        let before = snapshot(dir.path());
        let out = dir.path().join("o");
        for argv in [
            merge_args(&q, &ad, &out, &["--quant", "keep"]),
            vec![
                "dequantize".into(),
                s(&q).into(),
                "--out".into(),
                s(&out).into(),
            ],
        ] {
            let line = one_line_error(&run_exit(&argv, 2));
            assert_mentions(&line, &["model.safetensors", QS, what]);
        }
        assert_eq!(snapshot(dir.path()), before, "something was written");
    }
}

/// An E4M3 NaN byte (S.1111.111) in an FP8 weight is named with its byte, in the input.
#[test]
fn an_e4m3_nan_byte_in_an_fp8_weight_is_refused_naming_the_weight() {
    let (dir, q, _ad) = fp8_block_copy(|f| poke(f, QW, 5, &[0x7f]));
    let out = dir.path().join("o");
    let line = one_line_error(&run_exit(["dequantize", s(&q), "--out", s(&out)], 2));
    assert_mentions(&line, &["q/model.safetensors", QW, "element 5", "0x7f"]);
    assert!(!out.exists());
}

/// An output path that is a FIFO was replaced by a regular file (the commit's rename), and a
/// reader waiting on it got nothing; a FIFO, socket or device (`--out /dev/null` as root) is
/// refused before anything is written.
#[test]
fn an_output_that_is_a_fifo_is_refused_and_left_alone() {
    use std::os::unix::fs::FileTypeExt;
    let (dir, fifo) = scratch("o.safetensors");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let out = run_exit(
        convert_args(&fixture("llama/adapters/qv_r8"), "kohya", &fifo, &[]),
        2,
    );
    assert_mentions(
        &one_line_error(&out),
        &["o.safetensors", "not a regular file"],
    );
    let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(kind.is_fifo(), "the FIFO was replaced");
    assert_eq!(listing(dir.path()), vec!["o.safetensors".to_string()]);
}

fn listing(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A split merge and its finalize in a recipe, run once.
fn finished_split_recipe() -> (tempfile::TempDir, PathBuf) {
    let (dir, _m, _a) = llama_and_qv_r8_copies("base", "qv");
    let step = |name: &str, part: &str| {
        format!(
            "[[step]]\nname = \"{name}\"\ncommand = \"merge\"\nbase = \"base\"\nadapter = [\"qv\"]\nout = \"o\"\npart = \"{part}\"\n\n"
        )
    };
    let body = step("p1", "1/2")
        + &step("p2", "2/2")
        + "[[step]]\nname = \"f\"\ncommand = \"finalize\"\nout = \"o\"\n";
    let r = dir.path().join("r.toml");
    std::fs::write(&r, body).unwrap();
    run_ok(["run", s(&r), "--quiet"]);
    (dir, r)
}

/// One lost or corrupt provenance record of a part (or of the finalize) made the next run
/// rerun that step alone: the finalize that had consumed the parts' manifests then failed
/// ("parts not finished: 2/2", or "no part manifests"), on every run until `--force`. Steps
/// sharing an output now rerun together.
#[test]
fn a_corrupt_record_of_one_part_reruns_the_parts_and_finalize_together() {
    for rec in [
        ".lorakit-step-part-1-of-2.json",
        ".lorakit-step-part-2-of-2.json",
        ".lorakit-step-finalize.json",
    ] {
        let (dir, r) = finished_split_recipe();
        let o = dir.path().join("o");
        let want = snapshot(&o)
            .into_iter()
            .filter(|(p, _)| !p.to_string_lossy().contains(".lorakit-step"))
            .collect::<Vec<_>>();
        std::fs::write(o.join(rec), "{not json").unwrap();
        run_ok(["run", s(&r), "--quiet"]);
        let got = snapshot(&o)
            .into_iter()
            .filter(|(p, _)| !p.to_string_lossy().contains(".lorakit-step"))
            .collect::<Vec<_>>();
        assert!(got == want, "{rec}: the rerun's output differs");
    }
}

/// `run --dry-run` said "run" for a finalize of a folder that holds no parts (and that no step
/// writes parts into), which the real run refuses.
#[test]
fn a_dry_run_refuses_a_finalize_of_a_folder_without_parts() {
    let (dir, _m, _a) = llama_and_qv_r8_copies("base", "qv");
    let r = dir.path().join("r.toml");
    std::fs::write(
        &r,
        "[[step]]\nname = \"f\"\ncommand = \"finalize\"\nout = \"qv\"\n",
    )
    .unwrap();
    let line = one_line_error(&run_exit(["run", s(&r), "--dry-run"], 2));
    assert_mentions(&line, &["step `f`", "qv", "no part manifests"]);
}
