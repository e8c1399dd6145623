//! The twelfth hostile round (`fuzz/hostile_round.py`, `fuzz/hostile_cases_round12.py`): the
//! violations its cases found, each test failing before its fix.

use super::common::*;
use super::hostile11::{
    each_config_edit_is_refused, merge_each_into_llama, merges_with_each_target_pattern,
    python_re_agrees,
};

/// Python 3.11's `sre_parse` takes global flags only before anything else of the first
/// top-level alternative (after other global flags and, in verbose mode, whitespace and
/// comments). lorakit tested the text before the flags for the characters `(?)imsxau`: it
/// refused `(?x) (?i)…` (Python reads it) and merged `m(?i)…`, `((?i)…)` (Python refuses them);
/// flags both refuse (`(?q)`, `(?--i)`, `(?i-)`, `(?i-i:…)`) selected every module, exit 0.
/// Each verdict is Python's `re.compile`, checked below where LORAKIT_PYTHON has one.
#[test]
fn global_flags_and_bad_flags_follow_pythons_re() {
    let refused_patterns = [
        "m(?i).*_proj",
        "((?i).*_proj)",
        "(?:(?i)).*_proj",
        ".*_proj|(?i)x",
        "(?q).*_proj",
        "(?--i).*_proj",
        "(?i-).*_proj",
        "(?i-i:.*_proj)",
    ];
    let accepted = [
        "(?x) (?i).*_PROJ",
        "(?x)# comment\n(?i).*_PROJ",
        "(?x) (?s) (?i) .*_PROJ",
        "(?i).*_proj|x",
        "(?ii).*_proj",
    ];
    python_re_agrees(&refused_patterns, &accepted);
    let dir = tempfile::tempdir().unwrap();
    for (i, p) in refused_patterns.iter().enumerate() {
        let ad = edited_copy(dir.path(), "llama/adapters/qv_r8", &format!("r{i}"), |c| {
            c["target_modules"] = (*p).into()
        });
        let line = merge_refused(&fixture("llama/base"), &ad, &dir.path().join("o"), &[]);
        assert_mentions(
            &line,
            &["adapter_config.json", "target_modules", "not a valid regex"],
        );
    }
    merges_with_each_target_pattern(dir.path(), &accepted);
}

/// PEFT builds MiSS (`r`), C3A (`block_size`), GraLoRA (`r`, `gralora_k`, `hybrid_r`) and
/// RandLoRA (`r`) layers from adapter_config.json and refuses a state dict of other shapes
/// (load_state_dict's size mismatch); SHiRA's `shira_weight` is one vector. lorakit read the
/// shapes from the tensors and merged, exit 0. Now each is refused naming the adapter file, the
/// tensor or module, and the config field; the fixtures as written still merge.
#[test]
fn peft_gaps11_configs_contradicting_their_tensors_are_refused() {
    let cases: [(&str, &str, serde_json::Value, &str); 8] = [
        ("gaps11/miss/adapter", "r", 4.into(), "miss_block"),
        ("gaps11/miss_bat/adapter", "r", 8.into(), "miss_block"),
        ("gaps11/c3a/adapter", "block_size", 8.into(), "c3a_kernel"),
        ("gaps11/c3a/adapter", "block_size", 0.into(), "c3a_kernel"),
        ("gaps11/gralora/adapter", "gralora_k", 4.into(), "down_proj"),
        ("gaps11/gralora/adapter", "r", 16.into(), "down_proj"),
        (
            "gaps11/gralora_hybrid/adapter",
            "hybrid_r",
            0.into(),
            "down_proj",
        ),
        ("gaps11/randlora/adapter", "r", 8.into(), "randlora_A"),
    ];
    let dir = tempfile::tempdir().unwrap();
    each_config_edit_is_refused(dir.path(), &cases, &[]);
    // A C3A block_size_pattern entry is the block size of the modules it matches.
    let ad = edited_copy(dir.path(), "gaps11/c3a/adapter", "pattern", |c| {
        c["block_size_pattern"] = serde_json::json!({"q_proj": 8})
    });
    let line = merge_refused(&fixture("llama/base"), &ad, &dir.path().join("o"), &[]);
    assert_mentions(&line, &["q_proj.c3a_kernel", "block_size 8"]);
    // SHiRA values stored as a matrix.
    let ad = dir.path().join("shira");
    copy_dir(&fixture("gaps11/shira/adapter"), &ad);
    let file = ad.join("adapter_model.safetensors");
    let mut tensors = read(&file);
    let key = "base_model.model.model.layers.0.self_attn.q_proj.shira_weight";
    tensors.get_mut(key).unwrap().shape = vec![16, 16];
    write_tensors(&file, &tensors);
    let line = merge_refused(&fixture("llama/base"), &ad, &dir.path().join("o"), &[]);
    assert_mentions(&line, &["adapter_model.safetensors", key, "[16, 16]"]);
    let rels = ["c3a", "gralora", "gralora_hybrid", "randlora", "miss_bat"];
    let rels = rels.map(|rel| format!("gaps11/{rel}/adapter"));
    merge_each_into_llama(dir.path(), &rels.each_ref().map(String::as_str));
}

/// An MLX-quantized base (config.json `quantization`) whose `P.weight` beside `P.scales` and
/// `P.biases` is not packed uint32 (I32, U8, F32): `dequantize` copied the weight and its
/// scales as they were (exit 0, a checkpoint mlx-lm cannot load), and merge into a module the
/// adapter does not change copied them too. Now refused naming the weight and its dtype.
#[test]
fn mlx_scales_beside_a_weight_that_is_not_packed_uint32_are_refused() {
    let w = "model.layers.0.self_attn.q_proj.weight";
    for dt in [
        safetensors::Dtype::I32,
        safetensors::Dtype::U8,
        safetensors::Dtype::F32,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        copy_dir(&fixture("mlx_quant/q4"), &base);
        let file = base.join("model.safetensors");
        let mut tensors = read(&file);
        let t = tensors.get_mut(w).unwrap();
        t.dtype = dt;
        if dt == safetensors::Dtype::U8 {
            t.shape[1] *= 4;
        }
        write_tensors(&file, &tensors);
        let out = dir.path().join("dq");
        let line = refused(dequantize_args(&base, &out, &[]), &out);
        assert_mentions(&line, &["model.safetensors", w, "uint32"]);
    }
}
