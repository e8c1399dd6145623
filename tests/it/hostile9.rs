//! The ninth hostile round (`fuzz/hostile_round.py`, `fuzz/hostile_cases_round9.py`): a failed
//! allocation under a memory limit, an input truncated while the recipe hashes it, and the
//! violations round 9's cases found; each test fails before its fix.

use super::common::*;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Output;

/// Runs lorakit with `args` through `sh -c` under `ulimit -v KIB` (and no core file).
fn under_address_limit(kib: u64, args: &[String], cwd: &Path) -> Output {
    let lk = env!("CARGO_BIN_EXE_lorakit");
    std::process::Command::new("sh")
        .current_dir(cwd)
        .arg("-c")
        .arg(format!("ulimit -c 0; ulimit -v {kib}; exec \"$0\" \"$@\""))
        .arg(lk)
        .args(args)
        .output()
        .unwrap()
}

/// A PEFT adapter whose `lora_A` is F16 `[1, 2^28]` (a 512 MiB sparse file: it costs no disk),
/// so reading it as f32 allocates 1 GiB at once.
fn adapter_with_a_huge_factor(dir: &Path) -> (PathBuf, String) {
    let ad = dir.join("ad");
    std::fs::create_dir_all(&ad).unwrap();
    let a = "base_model.model.model.layers.0.mlp.big.lora_A.weight";
    let b = "base_model.model.model.layers.0.mlp.big.lora_B.weight";
    let k: u64 = 1 << 28;
    let n = 2 * k;
    let header = serde_json::json!({
        a: {"dtype": "F16", "shape": [1, k], "data_offsets": [0, n]},
        b: {"dtype": "F16", "shape": [2, 1], "data_offsets": [n, n + 4]},
    });
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let path = ad.join("adapter_model.safetensors");
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    std::fs::write(&path, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(bytes.len() as u64 + n + 4).unwrap();
    std::fs::write(
        ad.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ["big"]}"#,
    )
    .unwrap();
    (ad, a.to_string())
}

/// Under `ulimit -v`, a failed allocation aborted with Rust's own line "memory allocation of N
/// bytes failed", which names no file (exit 134 by SIGABRT). Now the global allocator reports
/// it: one line naming the file and the tensor being read, exit 2, nothing written.
#[test]
fn a_failed_allocation_under_a_memory_limit_is_one_line_naming_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (ad, tensor) = adapter_with_a_huge_factor(dir.path());
    let out = dir.path().join("o.safetensors");
    let before = snapshot(dir.path());
    // 1 GiB: the binary, its threads and the 512 MiB map fit; the 1 GiB of f32 does not.
    let p = under_address_limit(1 << 20, &convert_args(&ad, "kohya", &out, &[]), dir.path());
    let err = String::from_utf8_lossy(&p.stderr);
    assert_eq!(p.status.signal(), None, "killed by a signal: {err}");
    assert_eq!(p.status.code(), Some(2), "{err}");
    let line = one_line_error(&p);
    assert_mentions(
        &line,
        &["adapter_model.safetensors", &tensor, "out of memory"],
    );
    assert!(!err.contains("memory allocation of"), "{err}");
    assert!(snapshot(dir.path()) == before, "the folder changed: {line}");
}

/// The allocations the code makes fallible on purpose still return their error to the caller
/// under the reporting allocator: `train --rank 1000000000` is refused naming `--rank` (its
/// factors are reserved with `try_reserve_exact`), not reported as an out-of-memory abort.
#[test]
fn a_fallible_allocation_still_returns_its_error_to_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama/base");
    let ids = fixture("text/tiny_ids.safetensors");
    let out = dir.path().join("ad");
    let args = one_step_train(&base, &ids, &out, &["--rank", "1000000000"]);
    let p = under_address_limit(3 << 20, &args, dir.path());
    let line = one_line_error(&p);
    assert_eq!(p.status.code(), Some(2), "{line}");
    assert_mentions(&line, &["--rank"]);
    assert!(!line.contains("out of memory"), "{line}");
    assert!(!out.exists());
}

/// The recipe's provenance hashed an input through blake3's own memory map
/// (`update_mmap_rayon`): an input truncated while hashed raised SIGBUS in a map lorakit did
/// not know, and the process died by the signal (no line). Now the map is lorakit's
/// (`io::mapped::map_input`): one line naming the file, exit 2.
#[test]
fn an_input_truncated_while_the_recipe_hashes_it_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let ad = dir.path().join("qv");
    std::fs::create_dir_all(&ad).unwrap();
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        std::fs::copy(fixture("llama/adapters/qv_r8").join(f), ad.join(f)).unwrap();
    }
    // A 4 GiB sparse file beside the adapter: the step's inputs are every file of its folders.
    let junk = ad.join("junk.bin");
    std::fs::File::create(&junk)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let out = dir.path().join("merged");
    let recipe = dir.path().join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            "[[step]]\nname = \"m\"\ncommand = \"merge\"\nbase = \"{}\"\nadapter = [\"{}\"]\n\
             out = \"{}\"\n",
            s(&fixture("llama/base")),
            s(&ad),
            s(&out)
        ),
    )
    .unwrap();
    let mut child = bin()
        .args(run_args(&recipe, &["--quiet"]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The output is committed, then the inputs are hashed for the step's record: truncate the
    // big input as soon as the output exists.
    let t0 = std::time::Instant::now();
    while !out.join("model.safetensors").exists() && t0.elapsed().as_secs() < 60 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&junk)
        .unwrap()
        .set_len(0)
        .unwrap();
    let p = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&p.stderr);
    if p.status.code() == Some(0) {
        // The hash finished before the truncation (a fast machine): nothing to check.
        eprintln!("note: the recipe hashed the input before it was truncated");
        return;
    }
    assert_eq!(p.status.signal(), None, "killed by a signal: {err}");
    assert_eq!(p.status.code(), Some(2), "{err}");
    let line = one_line_error(&p);
    assert_mentions(&line, &[s(&junk), "truncated"]);
}

/// `adapter.lora.alpha` stored as another GGUF type than FLOAT32 (here UINT32 16 or 2^32-1,
/// INT32 -8, written over the FLOAT32 in place): llama.cpp's `gguf_get_val_f32` asserts the
/// type and aborts, and no converter writes one; lorakit read any integer as the alpha (a
/// U32 of 2^32-1 merged with a scale of 10^9, exit 0) and refused INT32 -8 as "not a finite
/// number". Now every other type is refused naming the key and the stored type.
#[test]
fn a_gguf_adapter_alpha_of_another_type_than_float32_is_refused_naming_the_key_and_type() {
    const PHI3_BASE: &str = "gguf/llamacpp/hf_phi3_base.f32.gguf";
    const PHI3_LORA: &str = "gguf/llamacpp/phi3_lora.gguf";
    for (ty, name, value) in [
        (4u32, "U32", 16u32.to_le_bytes()),
        (4, "U32", u32::MAX.to_le_bytes()),
        (5, "I32", (-8i32).to_le_bytes()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = std::fs::read(fixture(PHI3_LORA)).unwrap();
        let key = b"adapter.lora.alpha";
        let hits: Vec<usize> = b
            .windows(key.len())
            .enumerate()
            .filter(|(_, w)| *w == key)
            .map(|(i, _)| i + key.len())
            .collect();
        assert_eq!(hits.len(), 1);
        let at = hits[0];
        assert_eq!(b[at..at + 4], 6u32.to_le_bytes(), "FLOAT32");
        b[at..at + 4].copy_from_slice(&ty.to_le_bytes());
        b[at + 4..at + 8].copy_from_slice(&value);
        let a = dir.path().join("a.gguf");
        std::fs::write(&a, b).unwrap();
        let out = dir.path().join("o.gguf");
        let line = refused(merge_args(&fixture(PHI3_BASE), &a, &out, &[]), &out);
        assert_mentions(&line, &["a.gguf", "adapter.lora.alpha", name, "FLOAT32"]);
        assert!(!line.contains("not a finite number"), "{line}");
    }
}
