//! A new user's first hour (issue #22): right refusals only, outputs that load, and one
//! consistent command line.

/// One consistent command line: the same flags everywhere, diff across dtypes, dry runs, man
/// pages, inspect flags on the wrong kind of input.
mod command_line;
/// Right refusals only, outputs that load: tied embeddings, empty extractions, integer buffers,
/// combine's rank cap, foreign files, merge output folders.
mod refusals;
/// Repo ids resolved in the local Hugging Face cache, and one JSON vocabulary over every
/// command's report.
mod reports;

use super::common::*;
use safetensors::{tensor::TensorView, Dtype};
use std::path::{Path, PathBuf};

/// A BERT-shaped base folder: word embeddings and one query projection, no `lm_head`, a config
/// naming `architectures` and no `tie_word_embeddings`.
fn bert_base(dir: &Path, architecture: &str) -> PathBuf {
    let base = dir.join(format!("bert-{architecture}"));
    std::fs::create_dir_all(&base).unwrap();
    let emb: Vec<f32> = (0..40).map(|i| i as f32 * 0.01).collect();
    let q: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
    let (eb, qb) = (f32_bytes(&emb), f32_bytes(&q));
    write_views(
        &base.join("model.safetensors"),
        &[
            (
                "embeddings.word_embeddings.weight",
                Dtype::F32,
                &[10, 4],
                &eb,
            ),
            (
                "encoder.layer.0.attention.self.query.weight",
                Dtype::F32,
                &[4, 4],
                &qb,
            ),
        ],
    );
    std::fs::write(
        base.join("config.json"),
        serde_json::json!({"architectures": [architecture], "model_type": "bert"}).to_string(),
    )
    .unwrap();
    base
}

/// A PEFT adapter on `embeddings.word_embeddings` (rank 2, scale 1).
fn embedding_adapter(dir: &Path) -> PathBuf {
    let ad = dir.join("emb-adapter");
    std::fs::create_dir_all(&ad).unwrap();
    let a = f32_bytes(&[0.5; 20]); // lora_embedding_A: [r, vocab]
    let b = f32_bytes(&[0.25; 8]); // lora_embedding_B: [dim, r]
    write_views(
        &ad.join("adapter_model.safetensors"),
        &[
            (
                "base_model.model.embeddings.word_embeddings.lora_embedding_A",
                Dtype::F32,
                &[2, 10],
                &a,
            ),
            (
                "base_model.model.embeddings.word_embeddings.lora_embedding_B",
                Dtype::F32,
                &[4, 2],
                &b,
            ),
        ],
    );
    std::fs::write(
        ad.join("adapter_config.json"),
        r#"{"peft_type":"LORA","r":2,"lora_alpha":2,"target_modules":["word_embeddings"]}"#,
    )
    .unwrap();
    ad
}
