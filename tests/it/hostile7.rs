//! The seventh hostile round (`fuzz/hostile_round.py`, `fuzz/hostile_cases_round7.py`: sizes a
//! file or option cannot back, names, output paths, combine over mixed adapters, tokenizer and
//! trainer-state lies, part manifests, recipes): each test is one violation that round found,
//! failing before its fix. Inputs are committed fixtures with one lie written into a copy (JSON
//! edited with serde_json, GGUF bytes replaced in place).

use super::common::*;
use std::path::{Path, PathBuf};

/// Runs `argv` in `dir`, expecting a one-line refusal (exit 2) that mentions `parts`, and
/// nothing changed in `dir`.
fn refused_in(dir: &Path, argv: Vec<String>, parts: &[&str]) -> String {
    let before = snapshot(dir);
    let line = one_line_error(&run_exit(&argv, 2));
    assert_mentions(&line, parts);
    assert_eq!(snapshot(dir), before, "something was written: {line}");
    line
}

/// `train --rank R` with R·in_features past any machine's memory (2^50 · 64 f32 values = 256
/// PiB) or past `usize` (u64::MAX): the factors were allocated infallibly, so the process
/// aborted ("memory allocation of … failed", SIGABRT) or panicked on the overflowing product.
#[test]
fn a_train_rank_no_memory_can_hold_is_refused_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixture("text/tiny_ids.safetensors");
    for rank in ["1125899906842624", "18446744073709551615"] {
        let out = dir.path().join("ad");
        let argv = one_step_train(&fixture("llama/base"), &data, &out, &["--rank", rank]);
        let line = refused_in(dir.path(), argv, &["--rank", rank, "q_proj"]);
        assert!(!out.exists(), "{line}");
    }
}

/// `combine --method svd` with weights whose product with a module's scale overflows f32
/// (1e38 · 4 for rslora_all's scale): the SVD asserted finite scales and the worker thread
/// panicked ("linalg::stacked_factored_svd: scale 0 is inf", exit 101).
#[test]
fn an_svd_combine_weight_that_overflows_f32_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (qv, all) = (
        fixture("llama/adapters/qv_r8"),
        fixture("llama/adapters/rslora_all"),
    );
    let out = dir.path().join("o");
    let argv = combine_args(
        &[(&qv, Some("1e38")), (&all, Some("1e38"))],
        &out,
        &["--method", "svd"],
    );
    refused_in(
        dir.path(),
        argv,
        &["rslora_all", "module `", "overflows f32"],
    );
    // A weight that stays finite is combined (the check is not a blanket refusal).
    let argv = combine_args(
        &[(&qv, Some("1e30")), (&all, Some("1e30"))],
        &out,
        &["--method", "svd", "--rank", "4"],
    );
    run_ok(argv);
}

/// Parts 1/2 and 2/2 of a merge of the sharded base, then `edit` applied to both manifests.
fn parted(dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let out = dir.join("out");
    for part in ["1/2", "2/2"] {
        run_ok(merge_args(
            &fixture("llama/base_sharded"),
            &fixture("llama/adapters/qv_r8"),
            &out,
            &["--part", part, "--quiet"],
        ));
    }
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".lorakit-part-") {
            let mut j: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            edit(&mut j);
            std::fs::write(e.path(), serde_json::to_vec(&j).unwrap()).unwrap();
        }
    }
    out
}

/// The manifests carry the index document as text, and finalize wrote it as it was: an index
/// that is not JSON, or whose weight_map names a shard no part wrote, became the output's
/// `model.safetensors.index.json` (exit 0; transformers cannot load the result).
#[test]
fn finalize_refuses_an_index_document_that_does_not_map_the_written_files() {
    type Edit = fn(&str) -> String;
    let edits: [(&str, Edit); 3] = [
        ("not JSON", |_| "{".to_string()),
        ("a shard no part wrote", |doc| {
            doc.replace("model-00004-of-00004.safetensors", "evil.safetensors")
        }),
        ("a tensor dropped", |doc| {
            let mut j: serde_json::Value = serde_json::from_str(doc).unwrap();
            j["weight_map"]
                .as_object_mut()
                .unwrap()
                .remove("lm_head.weight");
            j.to_string()
        }),
    ];
    for (what, edit) in edits {
        let dir = tempfile::tempdir().unwrap();
        let out = parted(dir.path(), |j| {
            let doc = j["plan"]["index"].as_str().unwrap().to_owned();
            j["plan"]["index"] = serde_json::Value::String(edit(&doc));
        });
        let line = refused_in(
            dir.path(),
            finalize_args(&out, &[]),
            &[".lorakit-part-", "index"],
        );
        assert!(
            !out.join("model.safetensors.index.json").exists(),
            "{what}: {line}"
        );
    }
    // The manifests as the parts wrote them finalize.
    let dir = tempfile::tempdir().unwrap();
    let out = parted(dir.path(), |_| {});
    run_ok(finalize_args(&out, &["--quiet"]));
    assert!(out.join("model.safetensors.index.json").exists());
}

/// A copy of the fixture tokenizer as `dir/tok.json`, edited by `edit`.
fn tokenizer_with(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("text/tokenizer.json")).unwrap()).unwrap();
    edit(&mut j);
    let p = dir.join("tok.json");
    std::fs::write(&p, serde_json::to_vec(&j).unwrap()).unwrap();
    p
}

/// A tokenizer whose ids lie past the model's vocabulary was blamed on the text file alone
/// ("t.txt: token id 1067 … is not below the model's vocabulary size 128"), and one that cannot
/// encode the text (its unk token missing from an empty vocabulary) named no file at all
/// ("encoding text: tokenizer: Unk token `<unk>` not found"). eval and train alike.
#[test]
fn tokenizer_errors_name_the_tokenizer_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = fixture("text/tiny.txt");
    let shifted = |j: &mut serde_json::Value| {
        for v in j["model"]["vocab"].as_object_mut().unwrap().values_mut() {
            *v = serde_json::json!(v.as_u64().unwrap() + 1000);
        }
        for a in j["added_tokens"].as_array_mut().unwrap() {
            a["id"] = serde_json::json!(a["id"].as_u64().unwrap() + 1000);
        }
    };
    let empty = |j: &mut serde_json::Value| {
        j["model"]["vocab"] = serde_json::json!({});
        j["model"]["merges"] = serde_json::json!([]);
    };
    type Lie<'a> = (&'a str, &'a dyn Fn(&mut serde_json::Value));
    let lies: [Lie; 2] = [
        ("ids past the vocabulary", &shifted),
        ("no vocabulary", &empty),
    ];
    for (what, lie) in lies {
        let tok = tokenizer_with(dir.path(), lie);
        let eval = eval_cpu_args(
            &fixture("llama/base"),
            &["--text", s(&text), "--tokenizer", s(&tok), "--seq-len", "8"],
        );
        let out = dir.path().join("o");
        let train = one_step_train(
            &fixture("llama/base"),
            &text,
            &out,
            &["--tokenizer", s(&tok)],
        );
        for argv in [eval, train] {
            let line = refused_in(dir.path(), argv, &["tok.json"]);
            assert!(!out.exists(), "{what}: {line}");
        }
    }
}

/// A GGUF base whose q_proj tensor name holds a NUL (`blk.0.attn_\0.weight`): the merge said
/// "qv: 1 module(s) match no tensor of the GGUF base (…)", naming the adapter but not the base
/// file whose tensors were looked through.
#[test]
fn an_unmatched_module_of_a_gguf_merge_names_the_base_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read(fixture("gguf/llama_f32.gguf")).unwrap();
    let (old, new) = (&b"blk.0.attn_q.weight"[..], &b"blk.0.attn_\0.weight"[..]);
    let at = src
        .windows(old.len())
        .position(|w| w == old)
        .expect("fixture names blk.0.attn_q.weight");
    let mut b = src.clone();
    b[at..at + old.len()].copy_from_slice(new);
    let base = dir.path().join("b.gguf");
    std::fs::write(&base, &b).unwrap();
    let argv = merge_args(
        &base,
        &fixture("llama/adapters/qv_r8"),
        &dir.path().join("o.gguf"),
        &[],
    );
    refused_in(
        dir.path(),
        argv,
        &["b.gguf", "qv_r8", "blk.0.attn_q.weight"],
    );
}

/// The qv_r8 folder copied to `dir/name` with every `lora_B` multiplied by `2^e` (exact).
fn qv_b_scaled(dir: &Path, name: &str, e: i32) -> PathBuf {
    let qv = dir.join(name);
    copy_dir(&fixture("llama/adapters/qv_r8"), &qv);
    let f = qv.join("adapter_model.safetensors");
    let mut t = read(&f);
    for (n, x) in t.iter_mut() {
        if n.contains("lora_B") {
            let v: Vec<f32> = x.f32().iter().map(|&v| v * 2f32.powi(e)).collect();
            x.data = f32_bytes(&v);
        }
    }
    write_tensors(&f, &t);
    qv
}

/// `B·A` of module `m` (`…lora_A.weight` / `…lora_B.weight` of `t`), in f64, row-major `d×k`.
fn delta(t: &TensorMap, m: &str) -> Vec<f64> {
    let (a, b) = (
        &t[&format!("{m}.lora_A.weight")],
        &t[&format!("{m}.lora_B.weight")],
    );
    let (r, k, d) = (a.shape[0], a.shape[1], b.shape[0]);
    let (av, bv) = (a.f32(), b.f32());
    let mut out = vec![0f64; d * k];
    for i in 0..d {
        for j in 0..k {
            out[i * k + j] = (0..r)
                .map(|l| bv[i * r + l] as f64 * av[l * k + j] as f64)
                .sum();
        }
    }
    out
}

/// Finite factors whose squares overflow f32 (`lora_B` × 2¹⁰⁰ ≈ 1.3e30): the thin QR / SVD of
/// `resize` and `combine --method svd` panicked ("faer SVD of a 8×8 matrix failed:
/// NoConvergence", exit 101). Now B, A and the scale are brought to [½, 1) by powers of two
/// (exact) inside `factored_svd`: the resized `B·A` of the scaled adapter is 2¹⁰⁰ times that of
/// the original, a relation checked here to f32 rounding (the original's resize is checked
/// against kohya's rule elsewhere).
#[test]
fn factors_of_huge_finite_magnitude_resize_and_combine_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let plain = qv_b_scaled(dir.path(), "plain", 0);
    let huge = qv_b_scaled(dir.path(), "huge", 100);
    let (o1, o2) = (dir.path().join("r_plain"), dir.path().join("r_huge"));
    run_ok(resize_args(&plain, &o1, &["--rank", "2", "--quiet"]));
    run_ok(resize_args(&huge, &o2, &["--rank", "2", "--quiet"]));
    let (a, b) = (
        read(&o1.join("adapter_model.safetensors")),
        read(&o2.join("adapter_model.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    assert_deltas_scaled(&a, &b, 100, 1e-6);
    let out = dir.path().join("c");
    run_ok(combine_args(
        &[(&huge, None), (&plain, None)],
        &out,
        &["--method", "svd", "--rank", "4", "--quiet"],
    ));
}

/// Asserts that every module's `B·A` in `b` is `2^e` times that in `a`, to relative `tol`.
fn assert_deltas_scaled(a: &TensorMap, b: &TensorMap, e: i32, tol: f64) {
    let modules: Vec<&str> = a
        .keys()
        .filter_map(|n| n.strip_suffix(".lora_A.weight"))
        .collect();
    assert_eq!(modules.len(), 4);
    for m in modules {
        let want: Vec<f64> = delta(a, m).iter().map(|v| v * 2f64.powi(e)).collect();
        let got = delta(b, m);
        let num: f64 = got.iter().zip(&want).map(|(g, w)| (g - w).powi(2)).sum();
        let den: f64 = want.iter().map(|w| w.powi(2)).sum();
        let err = (num / den).sqrt();
        assert!(err < tol, "{m}: relative error {err:e}");
    }
}

/// The tensors of `src` with every F32 value times `2^e` (exact), written to `dst`.
fn scaled_checkpoint(src: &Path, dst: &Path, e: i32) {
    let mut t = read(src);
    for x in t.values_mut() {
        if x.dtype == safetensors::Dtype::F32 {
            let v: Vec<f32> = x.f32().iter().map(|&v| v * 2f32.powi(e)).collect();
            x.data = f32_bytes(&v);
        }
    }
    write_tensors(dst, &t);
}

/// `extract` of a checkpoint pair whose ΔW reaches ~1e19 (base and tuned × 2⁶⁶, exact): the
/// SVD of the randomized sketch panicked ("faer SVD of a 12×12 matrix failed: NoConvergence",
/// exit 101). The extracted `B·A` of the scaled pair is 2⁶⁶ times that of the original pair
/// (same seed; every step scales by powers of two), checked to f32 rounding.
#[test]
fn an_extract_of_huge_finite_weights_scales_instead_of_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base/model.safetensors");
    let tuned = dir.path().join("tuned.safetensors");
    run_ok(merge_args(
        &base,
        &fixture("llama/adapters/qv_r8"),
        &tuned,
        &["--quiet"],
    ));
    let (hb, ht) = (
        dir.path().join("hb.safetensors"),
        dir.path().join("ht.safetensors"),
    );
    scaled_checkpoint(&base, &hb, 66);
    scaled_checkpoint(&tuned, &ht, 66);
    let (o1, o2) = (dir.path().join("x_plain"), dir.path().join("x_huge"));
    let opts = ["--rank", "2", "--device", "cpu", "--quiet"];
    run_ok(extract_args(&base, &tuned, &o1, &opts));
    run_ok(extract_args(&hb, &ht, &o2, &opts));
    let (a, b) = (
        read(&o1.join("adapter_model.safetensors")),
        read(&o2.join("adapter_model.safetensors")),
    );
    assert_deltas_scaled(&a, &b, 66, 1e-5);
}

/// `check --fix --dora-rank 1000000000`: each DoRA module's LoRA was allocated at the asked
/// rank (d·r values) and the process aborted. A rank past min(d, k) adds only zero columns, so
/// it is capped there, as combine and extract do: the fixed adapter is the one `--dora-rank 64`
/// writes (64 = the largest min(d, k) of the fixture's modules; that fix is checked against
/// PEFT's own DoRA merge in check/fix.rs).
#[test]
fn a_dora_rank_past_the_module_sizes_is_capped_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let mut written = Vec::new();
    for rank in ["64", "1000000000"] {
        let out = dir.path().join(format!("f{rank}"));
        let o = bin()
            .args(check_args(
                &fixture("llama/adapters/dora"),
                &[
                    "--base",
                    s(&fixture("llama/base")),
                    "--target",
                    "vllm",
                    "--fix",
                    "--dora-rank",
                    rank,
                    "--out",
                    s(&out),
                    "--quiet",
                ],
            ))
            .output()
            .unwrap();
        assert!(
            matches!(o.status.code(), Some(0 | 1)),
            "--dora-rank {rank}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        written.push(read(&out.join("adapter_model.safetensors")));
    }
    assert_eq!(written[0], written[1]);
}
