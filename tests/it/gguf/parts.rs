//! `merge --base MODEL.gguf --part I/N` + `finalize OUT.gguf`: the parts write the bytes of the
//! single run; finalize refuses mismatched, missing and foreign parts in one line, changing
//! nothing.

use super::*;

/// `merge` of `base` with `adapter` into `out`, run as `parts` processes (or one when `None`).
fn merge_in_parts(base: &str, adapter: &str, out: &Path, parts: Option<usize>, extra: &[&str]) {
    match parts {
        None => {
            merge_json(base, adapter, out, extra);
        }
        Some(n) => {
            for i in 1..=n {
                let part = format!("{i}/{n}");
                let v = merge_json(base, adapter, out, &[extra, &["--part", &part]].concat());
                assert_eq!(v["part"], serde_json::json!([i, n]));
            }
            let v: serde_json::Value =
                serde_json::from_str(&run_ok(finalize_args(out, &["--json"]))).unwrap();
            assert_eq!(v["parts"], n);
        }
    }
}

/// For a single-file and a split GGUF base, merged into one file and into split files: the
/// parts (2 and 3 processes) plus `finalize` leave exactly the files of the single run, byte
/// for byte, and no manifest or lock behind.
#[test]
fn gguf_merge_parts_equal_the_single_run_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("llama/adapters/rslora_all");
    let adapter = s(&adapter);
    // A split base: the fixture Llama in several files (lorakit's split writer, gguf-py's
    // layout).
    let split_dir = dir.path().join("split_base");
    std::fs::create_dir(&split_dir).unwrap();
    merge_json(
        g("llama_q8_0.gguf"),
        fixture("llama/adapters/qv_r8"),
        &split_dir.join("b.gguf"),
        &["--max-shard-size", "40KB"],
    );
    let parts = listing(&split_dir);
    assert!(parts.len() > 1, "{parts:?}");
    let split_base = split_dir.join(&parts[1]);
    let split_base = s(&split_base).to_owned();
    for (bi, base) in [g("llama_q4_0.gguf"), split_base].iter().enumerate() {
        for shard in [&[][..], &["--max-shard-size", "20KB"][..]] {
            let whole = dir.path().join(format!("whole{bi}{}", shard.len()));
            std::fs::create_dir(&whole).unwrap();
            merge_in_parts(base, adapter, &whole.join("m.gguf"), None, shard);
            let want = folder_files(&whole);
            let names: Vec<&String> = want.iter().map(|f| &f.0).collect();
            assert_eq!(want.len() > 2, !shard.is_empty(), "{names:?}");
            for n in [2, 3] {
                let parted = dir.path().join(format!("parts{bi}{}-{n}", shard.len()));
                std::fs::create_dir(&parted).unwrap();
                merge_in_parts(base, adapter, &parted.join("m.gguf"), Some(n), shard);
                let what = format!("base {bi}, {shard:?}, {n} parts");
                assert_same_files(&folder_files(&parted), &want, &what);
            }
        }
    }
}

/// Bad sets of parts: a part missing, a part of another run (other adapter), parts planned
/// differently (--outtype), a manifest edited to name a file outside the folder, and an input
/// changed after the parts ran. Each is one line naming the file, exit non-zero, and leaves
/// the folder exactly as it was.
#[test]
fn gguf_finalize_refuses_bad_parts_changing_nothing() {
    let (dir, base_copy) = scratch("base.gguf");
    std::fs::copy(fixture("gguf/llama_f32.gguf"), &base_copy).unwrap();
    let base = s(&base_copy).to_owned();
    let qv = fixture("llama/adapters/qv_r8");
    let all = fixture("llama/adapters/rslora_all");
    let (qv, all) = (s(&qv), s(&all));
    let shard = ["--max-shard-size", "100KB"];
    let part = |out: &Path, adapter: &str, p: &str, extra: &[&str]| {
        merge_json(
            &base,
            adapter,
            out,
            &[&shard[..], &["--part", p], extra].concat(),
        );
    };
    let check = |out: &Path, want: &str| {
        let d = out.parent().unwrap();
        let before = folder_files(d);
        let e = run_err(finalize_args(out, &[]));
        let line = one_line_error(&e);
        assert!(line.contains(want), "{}: {line}", out.display());
        assert_eq!(
            folder_files(d),
            before,
            "{}: finalize changed files",
            out.display()
        );
    };
    let case = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        d.join("m.gguf")
    };
    // Missing part.
    let out = case("missing");
    part(&out, qv, "1/3", &[]);
    part(&out, qv, "3/3", &[]);
    check(&out, "parts not finished: 2/3");
    // A part from another run: same layout, another adapter.
    let out = case("foreign");
    part(&out, qv, "1/2", &[]);
    part(&out, all, "2/2", &[]);
    check(&out, "belongs to another run than");
    // Mismatched parts: planned with another --outtype.
    let out = case("mismatched");
    part(&out, qv, "1/2", &[]);
    part(&out, qv, "2/2", &["--outtype", "q8_0"]);
    check(&out, "belongs to another run than");
    // A manifest edited to name a file outside the folder.
    let out = case("edited");
    part(&out, qv, "1/2", &[]);
    part(&out, qv, "2/2", &[]);
    let m = out
        .parent()
        .unwrap()
        .join(".m.gguf.lorakit-part-2-of-2.json");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replacen("m-00002-of-00004.gguf", "../x.gguf", 1)).unwrap();
    check(&out, "is not a plain file name");
    // A written file truncated after its part ran.
    let out = case("truncated");
    part(&out, qv, "1/2", &[]);
    part(&out, qv, "2/2", &[]);
    let f = out.parent().unwrap().join("m-00003-of-00004.gguf");
    truncate_by(&f, 1);
    check(&out, "m-00003-of-00004.gguf");
    // The base changed after the parts ran.
    let out = case("changed");
    part(&out, qv, "1/2", &[]);
    part(&out, qv, "2/2", &[]);
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(&base_copy)
        .unwrap()
        .set_modified(t)
        .unwrap();
    check(&out, "changed (size or mtime) since the parts ran");
    // Nothing to finalize.
    let e = run_err(finalize_args(&dir.path().join("none.gguf"), &[]));
    one_line_error(&e);
}

/// A Hugging Face base written as GGUF (the fixture Llama with its tokenizer) takes the same
/// path: one file or `--max-shard-size` split files, and `--part I/N` (2 and 3 processes) +
/// `finalize` leave exactly the files of the single run, byte for byte. The split files,
/// opened as one model, hold the one-file output's tensors (names, types, bytes) and
/// metadata, plus only the `split.*` keys.
#[test]
fn hf_to_gguf_parts_and_splits_equal_the_single_run() {
    let dir = tempfile::tempdir().unwrap();
    let base = super::hf::hf_folder(dir.path());
    let base = s(&base);
    let adapter = fixture("llama/adapters/qv_r8");
    let adapter = s(&adapter);
    let mut singles = Vec::new();
    for shard in [&[][..], &["--max-shard-size", "30KB"][..]] {
        let whole = dir.path().join(format!("whole{}", shard.len()));
        std::fs::create_dir(&whole).unwrap();
        merge_in_parts(base, adapter, &whole.join("m.gguf"), None, shard);
        let want = folder_files(&whole);
        assert_eq!(want.len() > 2, !shard.is_empty());
        for n in [2, 3] {
            let parted = dir.path().join(format!("parts{}-{n}", shard.len()));
            std::fs::create_dir(&parted).unwrap();
            merge_in_parts(base, adapter, &parted.join("m.gguf"), Some(n), shard);
            assert_eq!(folder_files(&parted), want, "{shard:?}, {n} parts");
        }
        let first = whole.join(&listing(&whole)[0]);
        singles.push(GgufModel::open(first).unwrap());
    }
    let (one, split) = (&singles[0], &singles[1]);
    assert!(split.files.len() > 1);
    let tensors = |m: &GgufModel| -> Vec<(String, GgmlType, Vec<u64>, Vec<u8>)> {
        m.tensors()
            .map(|(f, t)| {
                (
                    t.name.clone(),
                    t.ty,
                    t.dims.clone(),
                    f.view(t).data.to_vec(),
                )
            })
            .collect()
    };
    assert!(tensors(one) == tensors(split));
    let keys = |m: &GgufModel| -> Vec<(String, Vec<u8>)> {
        let f = &m.files[0];
        f.header()
            .metadata
            .iter()
            .filter(|kv| !kv.key.starts_with("split."))
            .map(|kv| (kv.key.clone(), f.raw_kv(kv).to_vec()))
            .collect()
    };
    assert!(keys(one) == keys(split));
}

/// DoRA, lora_bias and modules_to_save (fixtures/gguf/peft_variants on the Q8_0 Llama: DoRA
/// then LoRA-with-bias adapters, biases updated; then a saved token_embd and output), split at
/// 4 kB: 2 and 3 parts plus `finalize` give the single run's files byte for byte.
#[test]
fn gguf_parts_with_dora_bias_and_saved_tensors_equal_the_single_run() {
    let dir = tempfile::tempdir().unwrap();
    let base = g("peft_variants/llama.q8_0.gguf");
    let (dora, bias, saved) = (
        g("peft_variants/llama_dora"),
        g("peft_variants/llama_bias"),
        g("peft_variants/llama_saved"),
    );
    let shard = ["--max-shard-size", "4KB"];
    let with_bias = [&["--adapter", &bias][..], &shard].concat();
    for (ci, (adapter, extra)) in [(&dora, &with_bias[..]), (&saved, &shard[..])]
        .into_iter()
        .enumerate()
    {
        let whole = dir.path().join(format!("whole{ci}"));
        std::fs::create_dir(&whole).unwrap();
        merge_in_parts(&base, adapter, &whole.join("m.gguf"), None, extra);
        let want = folder_files(&whole);
        assert!(want.len() > 3, "{}", want.len());
        for n in [2, 3] {
            let parted = dir.path().join(format!("parts{ci}-{n}"));
            std::fs::create_dir(&parted).unwrap();
            merge_in_parts(&base, adapter, &parted.join("m.gguf"), Some(n), extra);
            assert_same_files(&folder_files(&parted), &want, &format!("{ci}: {n} parts"));
        }
    }
}
