//! PEFT adapters saved with `safe_serialization=False` (`adapter_model.bin`, a `torch.save`
//! archive: `src/io/torch/`), from `fixtures/gen/torch_pickle_fixtures.py`: PEFT's own `.bin`
//! of the `qv_r8` adapter merges into the llama fixture as PEFT merges it, bit for bit the
//! merge of the same adapter's safetensors, and the files lorakit must refuse exit non-zero with
//! one line and no output.

use super::common::*;

/// `got` and `want` hold the same tensors with the same bits.
fn assert_same_bits(got: &TensorMap, want: &TensorMap, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (k, t) in got {
        let bits = |t: &T| t.f32().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(bits(t) == bits(&want[k]), "{k} differs from {what}");
    }
}

/// `merge --adapter qv_r8_bin/` (PEFT's `adapter_model.bin`) equals PEFT's merge_and_unload of
/// the adapter (`llama/merged/qv_r8.safetensors`) within f32 rounding, and the merge of the same
/// adapter as PEFT saved it in safetensors bit for bit; `convert` and `inspect` read it too.
#[test]
fn peft_bin_adapter_merges_as_its_safetensors_twin() {
    let dir = tempfile::tempdir().unwrap();
    let (bin_out, st_out) = (dir.path().join("bin"), dir.path().join("st"));
    merge_fixtures("llama/base", "torch/qv_r8_bin", &bin_out, &["--quiet"]);
    merge_fixtures("llama/base", "llama/adapters/qv_r8", &st_out, &["--quiet"]);
    let got = read_checkpoint(&bin_out);
    let base = read_checkpoint(&fixture("llama/base"));
    let peft = read(&fixture("llama/merged/qv_r8.safetensors"));
    let changed = assert_matches_reference(&got, &base, &peft, 1e-6);
    assert_eq!(changed, 4, "q/v of two layers");
    // The same tensors bit for bit (the files differ only in the provenance's adapter path).
    assert_same_bits(
        &got,
        &read_checkpoint(&st_out),
        "the safetensors twin's merge",
    );
    let info = inspect_json(&fixture("torch/qv_r8_bin"), &[]);
    assert_eq!(info["format"], "peft", "{info}");
    let conv = dir.path().join("conv");
    run_ok([
        "convert",
        s(&fixture("torch/qv_r8_bin")),
        "--to",
        "peft",
        "--out",
        s(&conv),
        "--quiet",
    ]);
    let a = read(&conv.join("adapter_model.safetensors"));
    let b = read(&fixture("llama/adapters/qv_r8/adapter_model.safetensors"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &a {
        assert_eq!(t.f32(), b[k].f32(), "{k}");
    }
}

/// A pickle that calls `os.system`, a transposed view and a compressed archive given as the
/// adapter: exit 2, one line naming the file, no output folder.
#[test]
fn unreadable_torch_adapters_are_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    for (file, says) in [
        ("evil.pt", "never runs"),
        ("strided.pt", "tensor `t`"),
        ("deflated.pt", "compressed"),
        ("legacy.pt", "pre-1.6"),
    ] {
        let out = dir.path().join(file);
        let o = run_exit(
            merge_args(
                &fixture("llama/base"),
                &fixture(&format!("torch/{file}")),
                &out,
                &[],
            ),
            2,
        );
        let line = one_line_error(&o);
        assert!(line.contains(file) && line.contains(says), "{line}");
        assert!(!out.exists(), "{file}: output left behind");
    }
}

/// Base folders saved with `safe_serialization=False` (transformers < 5: `pytorch_model.bin`,
/// or shards and `pytorch_model.bin.index.json`; transformers 5 loads both, checked by the
/// generator): `qv_r8` merges into each as PEFT merges it into the safetensors base, bit for bit
/// lorakit's merge into that base, and the output is safetensors under transformers' names
/// (`model.safetensors`, or `model-0000I-of-00002.safetensors` and
/// `model.safetensors.index.json`), with no `.bin` or `.bin` index carried over.
#[test]
fn pickled_base_folders_merge_into_safetensors_named_as_transformers_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let twin_out = dir.path().join("twin");
    merge_fixtures(
        "llama/base",
        "llama/adapters/qv_r8",
        &twin_out,
        &["--quiet"],
    );
    let twin = read_checkpoint(&twin_out);
    let base = read_checkpoint(&fixture("llama/base"));
    let peft = read(&fixture("llama/merged/qv_r8.safetensors"));
    for (folder, files) in [
        ("torch/llama_bin", vec!["model.safetensors"]),
        (
            "torch/llama_bin_sharded",
            vec![
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
            ],
        ),
    ] {
        let out = dir.path().join(folder.replace('/', "_"));
        merge_fixtures(folder, "llama/adapters/qv_r8", &out, &["--quiet"]);
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".json") || n.contains("safetensors") || n.contains(".bin"))
            .collect();
        names.sort();
        assert_eq!(names, files, "{folder}");
        let got = read_checkpoint(&out);
        assert_eq!(assert_matches_reference(&got, &base, &peft, 1e-6), 4);
        assert_same_bits(&got, &twin, folder);
    }
}

/// What the review found in the output names and folder picking (rev17t F4, F8, F10): a merge
/// into a lone `pytorch_model.bin` given as a file writes `model.safetensors` into an output
/// folder (it wrote safetensors bytes under the `.bin` name, which torch.load and transformers
/// refuse), an output named `.bin`/`.pt`/`.ckpt` is refused with nothing written, a folder
/// whose only weights are an odd-named `.bin` opens, and a folder with `pytorch_model.bin` and a
/// lone variant `model.fp16.safetensors` reads the `.bin`, as transformers loads it.
#[test]
fn pickled_base_names_in_and_out() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    merge_ok(
        &fixture("torch/llama_bin/pytorch_model.bin"),
        &fixture("llama/adapters/qv_r8"),
        &out,
        &["--quiet"],
    );
    assert_eq!(listing(&out), ["model.safetensors"]);
    for name in ["merged.bin", "merged.pt", "merged.ckpt", "merged.PTH"] {
        let o = dir.path().join(name);
        let e = one_line_error(&run_exit(
            merge_args(
                &fixture("llama/base/model.safetensors"),
                &fixture("llama/adapters/qv_r8"),
                &o,
                &[],
            ),
            2,
        ));
        assert!(e.contains("name the output .safetensors"), "{e}");
        assert!(!o.exists());
    }
    // A folder holding fixture files under new names.
    let folder = |name: &str, files: &[(&str, &str)]| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for (from, to) in files {
            std::fs::copy(fixture(from), d.join(to)).unwrap();
        }
        d
    };
    let odd = folder(
        "odd",
        &[
            (
                "torch/llama_bin/pytorch_model.bin",
                "gptq_model-4bit-128g.bin",
            ),
            ("torch/llama_bin/config.json", "config.json"),
        ],
    );
    let v = inspect_json(&odd, &[]);
    assert_eq!(v["tensor_count"], 21, "{v}");
    let variant = folder(
        "variant",
        &[
            ("torch/llama_bin/pytorch_model.bin", "pytorch_model.bin"),
            (
                "llama/base_bf16/model.safetensors",
                "model.fp16.safetensors",
            ),
        ],
    );
    let v = inspect_json(&variant, &[]);
    assert!(
        v["dtypes"].get("F32").is_some() && v["dtypes"].get("BF16").is_none(),
        "{v}"
    );
}
