//! Outputs are byte-identical across refactors: every writing command runs on the fixtures and
//! each file it writes is hashed (BLAKE3, the hash lorakit already builds for recipe
//! provenance) against `tests/golden/outputs.txt`, recorded from the build before the `ops/`
//! restructuring (issue #14). A refactor that changes one byte of any output fails here.
//!
//! Float results depend on the SIMD path the CPU takes (FMA contracts roundings), so the file
//! records the CPU class it was made on; on another class only the files that involve no float
//! arithmetic are compared, and the test says so loudly. To re-record after an intended
//! change of output: `LORAKIT_BLESS=1 cargo test golden`. The dequantize, finalize,
//! `inspect --plot`, GGUF and `check --fix` lines were added after the restructuring: their
//! hashes come from later builds and guard later refactors; they are not pre-refactor hashes.

use super::common::*;
use std::path::Path;

/// The command lines, run in a scratch folder where `fx` links to `fixtures/`, so that the
/// paths lorakit records in provenance metadata are the same on every machine.
const RUNS: &[&str] = &[
    "merge --base fx/llama/base --adapter fx/llama/adapters/qv_r8 -o out/merge",
    "merge --base fx/llama/base --adapter fx/llama/adapters/rslora_all --adapter fx/llama/adapters/patterns --weight 0.5 --dtype bf16 --max-shard-size 100KB -o out/merge_sharded",
    "merge --base fx/llama/base --adapter fx/llama/adapters/dora -o out/merge_dora",
    "extract --base fx/llama/base --tuned out/merge --rank 4 -o out/extract",
    "extract --base fx/llama/base --tuned out/merge --energy 0.99 --max-rank 6 --format kohya -o out/extract_kohya.safetensors",
    "resize fx/llama/adapters/qv_r8 --rank 4 -o out/resize",
    "combine --method cat --adapter fx/llama/adapters/weighted_a --adapter fx/llama/adapters/weighted_b -o out/combine_cat",
    "combine --method svd --rank 4 --adapter fx/llama/adapters/weighted_a --adapter fx/llama/adapters/weighted_b -o out/combine_svd",
    "convert fx/llama/adapters/qv_r8 --to kohya -o out/convert.safetensors",
    "train --model fx/llama/base --data fx/text/tiny_ids.safetensors --seq-len 8 --steps 2 --rank 2 --seed 7 -o out/train",
    "eval --model fx/llama/base --adapter fx/llama/adapters/qv_r8 --input-ids fx/text/tiny_ids.safetensors --logits out/eval_logits.safetensors --device cpu",
    // Added after the restructuring (recorded from its build, not the pre-refactor one): they
    // guard later refactors of dequantize, part runs + finalize and the spectrum plot.
    "dequantize fx/quant/nf4 --dtype f16 -o out/dequantize",
    "dequantize fx/quant/nf4_dq --dtype keep -o out/dequantize_keep",
    "merge --base fx/llama/base_sharded --adapter fx/llama/adapters/qv_r8 --part 1/2 -o out/merge_parts",
    "merge --base fx/llama/base_sharded --adapter fx/llama/adapters/qv_r8 --part 2/2 -o out/merge_parts",
    "finalize out/merge_parts",
    "inspect fx/llama/adapters/qv_r8 --plot out/plot.svg",
    "inspect fx/llama/adapters/qv_r8 --plot out/plot.png",
    // Added later still (recorded from that build): GGUF merges (an f32 base, a Q4_0 base kept
    // Q4_0, a Q8_0 base written as Q8_0 through `--outtype`), a GGUF adapter, and `check --fix`
    // (pattern folding, and DoRA lowered to LoRA).
    "merge --base fx/gguf/llama_f32.gguf --adapter fx/llama/adapters/rslora_all -o out/merge_f32.gguf",
    "merge --base fx/gguf/llama_q4_0.gguf --adapter fx/llama/adapters/qv_r8 -o out/merge_q4_0.gguf",
    "merge --base fx/gguf/llama_q8_0.gguf --adapter fx/llama/adapters/qv_r8 --outtype q8_0 -o out/merge_q8_0.gguf",
    "convert fx/llama/adapters/patterns --to gguf --base fx/llama/base -o out/adapter.gguf",
    "check fx/llama/adapters/patterns --base fx/llama/base --target vllm,sglang,llama.cpp,peft --fix --out out/check_fix",
    "check fx/llama/adapters/dora --base fx/llama/base --target vllm --fix --dora-rank 8 --out out/check_fix_dora",
];

/// The CPU class the float outputs depend on.
fn cpu_class() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f: &str| match f {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            _ => std::arch::is_x86_feature_detected!("fma"),
        };
        let feats: Vec<&str> = ["avx512f", "avx2", "fma"]
            .into_iter()
            .filter(|f| has(f))
            .collect();
        format!("x86_64 {}", feats.join(" "))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// Every file under `dir`, relative, sorted, with its BLAKE3 hash.
fn hashes(dir: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((
                    rel,
                    blake3::hash(&std::fs::read(&p).unwrap())
                        .to_hex()
                        .to_string(),
                ));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// Files whose bytes involve no float arithmetic: copied configs, tokenizers and the like (not
/// tensors, adapter configs with their alphas, nor the spectrum plots drawn from singular values).
fn float_free(name: &str) -> bool {
    !name.ends_with(".safetensors")
        && !name.ends_with(".gguf")
        && !name.ends_with("adapter_config.json")
        && !name.starts_with("plot.")
}

#[test]
fn every_command_writes_the_recorded_bytes() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(fixture(""), dir.path().join("fx")).unwrap();
    for line in RUNS {
        let argv: Vec<&str> = line.split_whitespace().collect();
        ok_stdout(bin().args(&argv).arg("-q").current_dir(dir.path()));
    }
    let got = hashes(&dir.path().join("out"));
    let class = cpu_class();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/outputs.txt");
    if std::env::var_os("LORAKIT_BLESS").is_some() {
        let mut text =
            format!("# Outputs of tests/it/golden.rs RUNS; BLAKE3 per file.\ncpu {class}\n");
        for (name, h) in &got {
            text.push_str(&format!("{h}  {name}\n"));
        }
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, text).unwrap();
        eprintln!(
            "GOLDEN: recorded {} files to {}",
            got.len(),
            golden.display()
        );
        return;
    }
    let text = std::fs::read_to_string(&golden).expect("tests/golden/outputs.txt");
    let recorded_class = text
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .expect("a `cpu` line");
    let want: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("cpu "))
        .map(|l| {
            let (h, n) = l.split_once("  ").unwrap();
            (n.to_owned(), h.to_owned())
        })
        .collect();
    let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&got),
        names(&want),
        "the set of files written changed"
    );
    let same_class = recorded_class == class;
    if !same_class {
        eprintln!(
            "GOLDEN: recorded on `{recorded_class}`, running on `{class}`: comparing only the \
             files without float arithmetic"
        );
    }
    let mut compared = 0;
    let mut differ = Vec::new();
    for ((name, h), (_, w)) in got.iter().zip(&want) {
        if same_class || float_free(name) {
            compared += 1;
            if h != w {
                differ.push(name.clone());
            }
        }
    }
    assert!(differ.is_empty(), "outputs changed: {differ:?}");
    assert!(compared > 0);
    if same_class {
        assert_eq!(compared, want.len());
    }
}
