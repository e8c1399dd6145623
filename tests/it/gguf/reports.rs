//! The GGUF merge reports (a GGUF base; a Hugging Face base written as GGUF) carry the
//! safetensors merge report's fields with its meaning: the same `adapters[]` and
//! `tensors_merged_count` as a safetensors merge of the same tensors, counts equal to the rows
//! of their own per-tensor lists, `files`, `bytes_written` and `created_folders` as on disk.

use super::*;
use serde_json::{json, Value};

/// GGUF model `gguf` as one safetensors file of its tensors under their Hugging Face names,
/// dequantized to F32 (rows left in GGUF's order: only names and shapes decide what matches).
fn as_safetensors(gguf: &Path, out: &Path) {
    let m = GgufModel::open(gguf).unwrap();
    let tensors: TensorMap = m
        .tensors()
        .map(|(f, t)| {
            let v = f.dequantize(t).unwrap();
            let name = names::hf_name(&t.name).unwrap();
            let t = T {
                dtype: safetensors::Dtype::F32,
                shape: t.shape(),
                data: f32_bytes(&v),
            };
            (name, t)
        })
        .collect();
    write_tensors(out, &tensors);
}

/// `files`, `bytes_written` and `created_folders` of a GGUF report whose one file is `out`,
/// written into the folder `new` this run created.
#[track_caller]
fn assert_written(v: &Value, out: &Path, new: &Path) {
    assert_eq!(v["files"], json!([s(out)]));
    assert_eq!(
        v["bytes_written"].as_u64(),
        Some(std::fs::metadata(out).unwrap().len())
    );
    assert_eq!(v["created_folders"], json!([s(new)]));
    assert!(!v["device"].as_str().unwrap().is_empty());
    assert!(v["gb_per_s"].as_f64().unwrap() > 0.0);
}

/// A GGUF base: LoRA (qv_r8), LoRA with `lora_bias`, `modules_to_save` and DoRA adapters; the
/// safetensors merge of the same adapter into the same tensors is the reference.
#[test]
fn gguf_base_merge_report_counts_as_the_safetensors_merge() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("llama_f32.gguf", "llama/adapters/qv_r8"),
        (
            "peft_variants/llama.f32.gguf",
            "gguf/peft_variants/llama_bias",
        ),
        (
            "peft_variants/llama.f32.gguf",
            "gguf/peft_variants/llama_saved",
        ),
        (
            "peft_variants/llama.f32.gguf",
            "gguf/peft_variants/llama_dora",
        ),
    ];
    for (i, (gguf, adapter)) in cases.into_iter().enumerate() {
        let adapter = fixture(adapter);
        let st_base = dir.path().join(format!("base{i}.safetensors"));
        as_safetensors(&fixture(&format!("gguf/{gguf}")), &st_base);
        let st: Value = serde_json::from_str(&merge_ok(
            &st_base,
            &adapter,
            &dir.path().join(format!("st{i}.safetensors")),
            &["--json"],
        ))
        .unwrap();
        let new = dir.path().join(format!("new{i}"));
        let out = new.join("m.gguf");
        let v = merge_json(g(gguf), &adapter, &out, &[]);
        let mut want = st["adapters"].clone();
        if adapter.ends_with("llama_dora") {
            // `lm_head.weight`, the base copy PEFT saves beside an lm_head LoRA, is a full
            // tensor to the safetensors merge; the GGUF merge skips it, as llama.cpp's
            // converter does (the base's own `output.weight` is W0).
            want[0]["tensors_replaced"] =
                json!(st["adapters"][0]["tensors_replaced"].as_u64().unwrap() - 1);
        }
        assert_eq!(v["adapters"], want, "{}", adapter.display());
        let rows = v["merged_tensors"].as_array().unwrap().len();
        assert_eq!(v["tensors_merged_count"], rows);
        assert_eq!(v["tensors_merged_count"], st["tensors_merged_count"]);
        let total = GgufModel::open(&out).unwrap().tensors().count();
        assert_eq!(v["tensors_copied_count"], total - rows);
        assert_eq!(v["tensors_copied_count"], st["tensors_copied_count"]);
        assert_written(&v, &out, &new);
    }
}

/// A Hugging Face base written as GGUF: the adapters and merged count of the safetensors merge
/// of the same base, `tensors_copied_count` the `tensors` rows no adapter changed.
#[test]
fn hf_to_gguf_report_counts_as_the_safetensors_merge() {
    let dir = tempfile::tempdir().unwrap();
    let base = hf::hf_folder(dir.path());
    let adapter = fixture("llama/adapters/qv_r8");
    let st: Value = serde_json::from_str(&merge_ok(
        &base,
        &adapter,
        &dir.path().join("st"),
        &["--json"],
    ))
    .unwrap();
    let new = dir.path().join("new");
    let out = new.join("m.gguf");
    let v = merge_json(&base, &adapter, &out, &["--outtype", "f16"]);
    assert_eq!(v["adapters"], st["adapters"]);
    let rows = v["tensors"].as_array().unwrap();
    let merged = rows.iter().filter(|t| t["merged"] == true).count();
    assert_eq!(v["tensors_merged_count"], merged);
    assert_eq!(v["tensors_merged_count"], st["tensors_merged_count"]);
    assert_eq!(v["tensors_copied_count"], rows.len() - merged);
    assert_eq!(rows.len(), GgufModel::open(&out).unwrap().tensors().count());
    assert_written(&v, &out, &new);
}

/// `unmatched` of a GGUF merge is the safetensors merge's list (`adapter`, `reason`, `module`,
/// `expected`), not free text: a module on a layer the base lacks is `not_found` under its
/// GGUF tensor name, and one llama.cpp has no name for is `no_gguf_name`.
#[test]
fn gguf_unmatched_modules_are_reported_as_the_safetensors_merge_reports_them() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("llama/adapters/qv_r8");
    let adapter = dir.path().join("extra");
    std::fs::create_dir(&adapter).unwrap();
    let config = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    let mut config: Value = serde_json::from_str(&config).unwrap();
    config["target_modules"]
        .as_array_mut()
        .unwrap()
        .push(json!("rotary"));
    std::fs::write(adapter.join("adapter_config.json"), config.to_string()).unwrap();
    let mut tensors = read(&src.join("adapter_model.safetensors"));
    let layer0 = "base_model.model.model.layers.0.self_attn.q_proj";
    for (module, ab) in [
        ("base_model.model.model.layers.7.self_attn.q_proj", "lora_A"),
        ("base_model.model.model.layers.7.self_attn.q_proj", "lora_B"),
        ("base_model.model.model.layers.0.self_attn.rotary", "lora_A"),
        ("base_model.model.model.layers.0.self_attn.rotary", "lora_B"),
    ] {
        let t = tensors[&format!("{layer0}.{ab}.weight")].clone();
        tensors.insert(format!("{module}.{ab}.weight"), t);
    }
    write_tensors(&adapter.join("adapter_model.safetensors"), &tensors);
    let st_base = dir.path().join("base.safetensors");
    as_safetensors(Path::new(&g("llama_f32.gguf")), &st_base);
    let allow = ["--allow-unmatched"];
    let st: Value = serde_json::from_str(&merge_ok(
        &st_base,
        &adapter,
        &dir.path().join("st.safetensors"),
        &[&["--json"][..], &allow].concat(),
    ))
    .unwrap();
    let v = merge_json(
        g("llama_f32.gguf"),
        &adapter,
        &dir.path().join("m.gguf"),
        &allow,
    );
    let rows = |v: &Value| -> Vec<Value> {
        let mut r = v["unmatched"].as_array().unwrap().clone();
        r.sort_by_key(|u| u["module"].as_str().unwrap().to_owned());
        r
    };
    let (want, got) = (rows(&st), rows(&v));
    let adapter = s(&adapter);
    assert_eq!(
        want,
        vec![
            json!({"adapter": adapter, "reason": "not_found",
                   "module": "model.layers.0.self_attn.rotary",
                   "expected": "model.layers.0.self_attn.rotary.weight"}),
            json!({"adapter": adapter, "reason": "not_found",
                   "module": "model.layers.7.self_attn.q_proj",
                   "expected": "model.layers.7.self_attn.q_proj.weight"}),
        ]
    );
    assert_eq!(
        got,
        vec![
            json!({"adapter": adapter, "reason": "no_gguf_name",
                   "module": "model.layers.0.self_attn.rotary", "architecture": "llama"}),
            json!({"adapter": adapter, "reason": "not_found",
                   "module": "model.layers.7.self_attn.q_proj",
                   "expected": "blk.7.attn_q.weight"}),
        ]
    );
    assert_eq!(v["tensors_merged_count"], st["tensors_merged_count"]);
}
