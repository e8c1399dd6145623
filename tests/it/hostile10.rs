//! The tenth hostile round (`fuzz/hostile_round.py`, `fuzz/hostile_cases_round10.py`): the
//! violations its cases found, each test failing before its fix.

use super::common::*;
use lorakit::io::gguf::GgufModel;
use std::path::Path;

/// Copies `fixture` to `dir/b.gguf` with a NaN written over the first stored value of `tensor`
/// (an F32 value, or a Q8_0 block's F16 scale), at the offset lorakit's reader gives.
fn gguf_base_with_a_nan(
    dir: &Path,
    fixture_rel: &str,
    tensor: &str,
    q8: bool,
) -> std::path::PathBuf {
    let base = dir.join("b.gguf");
    std::fs::copy(fixture(fixture_rel), &base).unwrap();
    let at = {
        let m = GgufModel::open(&base).unwrap();
        let (f, t) = m.get(tensor).unwrap();
        f.source(t).1 as usize
    };
    let mut bytes = std::fs::read(&base).unwrap();
    if q8 {
        bytes[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
    } else {
        bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(&base, bytes).unwrap();
    base
}

/// A NaN stored in a GGUF base, on a tensor the adapter changes, was refused naming the
/// *output* ("o.gguf: tensor `blk.0.attn_qkv.weight`: the merge gives an invalid result …"),
/// though o.gguf does not exist and the NaN is the base's; the safetensors merge names the base.
/// Now the line names the base file (F32 and Q8_0 bases, a GGUF and a PEFT adapter, and the
/// tied Qwen2 base's token_embd under `--tied-embeddings shared`); nothing is written.
#[test]
fn a_nan_in_a_gguf_base_is_named_against_the_base_not_the_output() {
    let cases = [
        (
            "gguf/llamacpp/hf_phi3_base.f32.gguf",
            "blk.0.attn_qkv.weight",
            false,
            "gguf/llamacpp/phi3_lora.gguf",
            &[][..],
        ),
        (
            "gguf/llamacpp/hf_phi3_base.q8_0.gguf",
            "blk.0.attn_qkv.weight",
            true,
            "gguf/hf_phi3/lora",
            &[][..],
        ),
        (
            "gguf/peft_variants/qwen2.f32.gguf",
            "token_embd.weight",
            false,
            "gaps8/qwen2_tied_head/adapter",
            &["--tied-embeddings", "shared"][..],
        ),
    ];
    for (base_rel, tensor, q8, adapter, extra) in cases {
        let dir = tempfile::tempdir().unwrap();
        let base = gguf_base_with_a_nan(dir.path(), base_rel, tensor, q8);
        let out = dir.path().join("o.gguf");
        let line = merge_refused(&base, &fixture(adapter), &out, extra);
        assert!(
            line.starts_with(&format!("error: {}: ", base.display())),
            "{base_rel}: {line}"
        );
        assert_mentions(&line, &[tensor, "not finite"]);
        assert!(!line.contains("o.gguf"), "{base_rel}: {line}");
    }
}

/// A `target_modules` regex that Python's `re` refuses too (an unclosed group, a class never
/// closed, `*` with nothing to repeat) makes PEFT's `re.fullmatch` raise when it loads the
/// adapter; lorakit read it as undecidable and merged every stored module, exit 0. Now it is
/// refused naming adapter_config.json and the key; a backreference (Python-only syntax, which
/// the `regex` crate cannot compile) still counts as undecidable and merges.
#[test]
fn a_target_modules_regex_python_refuses_is_refused_naming_the_config() {
    for (pattern, refused) in [
        ("(q_proj", true),
        ("[qv_proj", true),
        ("*_proj", true),
        (r"(q)_proj\1|.*_proj", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ad = dir.path().join("qv");
        copy_dir(&fixture("llama/adapters/qv_r8"), &ad);
        let cfg_path = ad.join("adapter_config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        cfg["target_modules"] = pattern.into();
        std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
        let out = dir.path().join("o");
        if refused {
            let line = merge_refused(&fixture("llama/base"), &ad, &out, &[]);
            assert_mentions(
                &line,
                &["adapter_config.json", "target_modules", "not a valid regex"],
            );
        } else {
            run_ok(merge_args(&fixture("llama/base"), &ad, &out, &["--quiet"]));
            assert!(out.join("model.safetensors").exists(), "{pattern}");
        }
    }
}

/// A 4-weight f32 base of 1024×1024 (4 MiB per weight, so the 16 MiB output fills the direct-I/O
/// writer's 8 MiB buffers) and a rank-8 PEFT adapter on each weight.
fn big_model(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let n = 1024usize;
    let (sw, sa, sb) = ([n, n], [8, n], [n, 8]);
    let row: Vec<u8> = (0..n)
        .flat_map(|i| (((i * 7919) % 2001) as f32 / 1000.0 - 1.0).to_le_bytes())
        .collect();
    let base = dir.join("big");
    let ad = dir.join("ad");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::create_dir_all(&ad).unwrap();
    let w = row.repeat(n);
    let names: Vec<String> = (0..4).map(|i| format!("layers.{i}.proj.weight")).collect();
    let views: Vec<_> = names
        .iter()
        .map(|k| (k.as_str(), safetensors::Dtype::F32, &sw[..], &w[..]))
        .collect();
    write_views(&base.join("model.safetensors"), &views);
    let a = row.repeat(8);
    let keys: Vec<(String, String)> = (0..4)
        .map(|i| {
            (
                format!("base_model.model.layers.{i}.proj.lora_A.weight"),
                format!("base_model.model.layers.{i}.proj.lora_B.weight"),
            )
        })
        .collect();
    let mut views = Vec::new();
    for (ka, kb) in &keys {
        views.push((ka.as_str(), safetensors::Dtype::F32, &sa[..], &a[..]));
        views.push((kb.as_str(), safetensors::Dtype::F32, &sb[..], &a[..]));
    }
    write_views(&ad.join("adapter_model.safetensors"), &views);
    std::fs::write(
        ad.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 8, "target_modules": ["proj"]}"#,
    )
    .unwrap();
    (base, ad)
}

/// Under `ulimit -v` between what the readers need and what the whole merge needs, the
/// direct-I/O writer's next 8 MiB buffer could not be mapped and the merge said only
/// "o/model.safetensors: cannot write: the direct-I/O writer stopped" (found at 100 and 110 MiB
/// on the project's machine), and lower the pipelined writer's thread could not be started:
/// `thread::scope` panicked ("failed to spawn thread", at 64 MiB). Now both say why, one line
/// naming the output, exit 3. Over a sweep of limits every run is done or one line naming a
/// file of the run, exit 2 or 3, never those two, and a refusal leaves the folder as it was.
/// Failures inside glibc or std at a thread's start, which lorakit's code never sees (glibc's
/// "failed to register TLS destructor" abort, std's "failed to allocate an alternative stack"
/// panic), are skipped but must leave nothing behind. (Where the temporary folder is on tmpfs
/// the writer is not direct and the sweep checks the other paths only.)
#[test]
fn a_memory_limit_that_stops_the_writer_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ad) = big_model(dir.path());
    let out = dir.path().join("o");
    let before = snapshot(dir.path());
    for mib in (64..=160).step_by(8) {
        let args = merge_args(&base, &ad, &out, &["--device", "cpu", "--quiet"]);
        let p = under_address_limit(mib << 10, &args, dir.path());
        if p.status.success() {
            std::fs::remove_dir_all(&out).unwrap();
            continue;
        }
        let err = String::from_utf8_lossy(&p.stderr);
        let known = [
            "Fatal glibc error: failed to register TLS destructor",
            "failed to allocate an alternative stack",
        ];
        // `main` builds the thread pool before any input is opened, so that line can name no
        // file (seen when the suite's other tests hold the machine's threads); it is still one
        // line with exit 2 or 3.
        let pool = err.contains("cannot start the worker threads");
        if !known.iter().any(|k| err.contains(k)) {
            assert!(!err.contains("panicked"), "{mib} MiB: {err}");
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{mib} MiB: {err}");
            assert!(
                matches!(p.status.code(), Some(2 | 3)),
                "{mib} MiB: {:?} {err}",
                p.status
            );
            assert!(
                pool || err.contains(s(dir.path())),
                "{mib} MiB: names no file: {err}"
            );
            assert!(!err.contains("writer stopped"), "{mib} MiB: {err}");
        }
        assert!(
            snapshot(dir.path()) == before,
            "{mib} MiB: the folder changed: {err}"
        );
    }
}

/// Runs lorakit with `args` through `sh -c` under `ulimit -v KIB` (and no core file), as
/// `hostile9.rs` does.
fn under_address_limit(kib: u64, args: &[String], cwd: &Path) -> std::process::Output {
    std::process::Command::new("sh")
        .current_dir(cwd)
        .arg("-c")
        .arg(format!("ulimit -c 0; ulimit -v {kib}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_lorakit"))
        .args(args)
        .output()
        .unwrap()
}
