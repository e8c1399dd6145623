//! `check --fix` for `modules_to_save` embeddings and heads: a full `embed_tokens` / `lm_head`
//! tensor (PEFT `modules_to_save`) rewritten, against the base, into what the loaders read.
//!
//! Let `W` be the saved tensor and `W0` the base tensor it replaces (both `[V, D]`, compared in
//! f32), and `C` the rows where they differ.
//! - `C = ∅`: the tensor equals the base; it is dropped (exact).
//! - `0 < |C| < V` with [`SavedOptions::tokens`]: PEFT trainable tokens — `trainable_token_indices
//!   = {leaf: C}` and `{module}.token_adapter.trainable_tokens_delta = W[C]` (the rows in the
//!   order of `C`). PEFT replaces those rows of `W0` (`TrainableTokensLayer.merge`, `index_copy`),
//!   so the merged weight is `W` exactly (PEFT 0.21.2 `tuners/trainable_tokens/layer.py`).
//! - otherwise, with [`SavedOptions::rank`] = `r`: a LoRA of rank `r` on the module, the
//!   truncated SVD of `Δ = W − W0` (Eckart–Young–Mirsky: the nearest rank-`r` matrix in
//!   Frobenius norm), scale 1; the error `‖Δ − B·A‖_F = (Σ_{i>r} σᵢ²)^{1/2}` is reported. An
//!   embedding's LoRA is stored transposed (`ΔW = (B·A)ᵀ`, PEFT `lora_embedding_A/B`), so the
//!   SVD is of `Δᵀ` (`D×V`); a head (`nn.Linear`, `[V, D]`) takes `Δ` as is.
//! - otherwise the tensor is kept, and the report says why.
//!
//! Only 2-D tensors named `…embed_tokens.weight` or `…lm_head.weight` that land on a base tensor
//! of the same shape, and whose module has no LoRA already, are considered. Must not: touch
//! any other full tensor, or write (the caller writes).

use crate::adapter::mapping;
use crate::adapter::{Adapter, Data, DoraRule, Factors, FullTensor, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::Checkpoint;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What to turn saved embeddings and heads into.
#[derive(Debug, Clone, Copy, Default)]
pub struct SavedOptions {
    /// Trainable tokens where only some rows changed.
    pub tokens: bool,
    /// A LoRA of this rank otherwise (or everywhere when `tokens` is off).
    pub rank: Option<usize>,
}

impl SavedOptions {
    pub fn any(&self) -> bool {
        self.tokens || self.rank.is_some()
    }
}

/// What became of one saved tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SavedRewrite {
    /// The module (`lm_head`, `model.embed_tokens`).
    pub module: String,
    /// `dropped_equal_to_base`, `trainable_tokens`, `lora`, or `kept`.
    pub form: &'static str,
    /// Rows that differ from the base, of `rows`.
    pub rows_changed: usize,
    pub rows: usize,
    /// With `lora`: its rank, `‖Δ − B·A‖_F` and that over `‖Δ‖_F`.
    pub rank: Option<usize>,
    pub fro_error: Option<f64>,
    pub rel_fro_error: Option<f64>,
    /// With `kept`: why.
    pub why: Option<String>,
}

/// Rewrites the saved embeddings and heads of `adapter` (values loaded) per `opts`.
pub fn rewrite(
    adapter: &mut Adapter,
    base: &Checkpoint,
    opts: SavedOptions,
) -> InputResult<Vec<SavedRewrite>> {
    if opts.rank == Some(0) {
        return Err(InputError::invalid(
            &adapter.path,
            "the rank of a LoRA replacing a saved embedding must be at least 1",
        ));
    }
    let res = mapping::resolve(adapter, base);
    let mut out = Vec::new();
    let mut remove = Vec::new();
    let mut new_modules = Vec::new();
    let mut new_full = Vec::new();
    let mut indices: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (fi, base_name) in &res.full {
        let f = &adapter.full_tensors[*fi];
        let Some(module) = base_name.strip_suffix(".weight") else {
            continue;
        };
        let leaf = module.rsplit('.').next().unwrap_or(module);
        let embedding = leaf == "embed_tokens";
        if !(embedding || leaf == "lm_head") || f.shape.len() != 2 {
            continue;
        }
        if matches!(&f.data, Data::Stored { key, .. } if key.contains(".base_layer.")) {
            continue;
        }
        if adapter.modules.iter().any(|m| m.name == module) {
            continue;
        }
        let Some(info) = base.info(base_name) else {
            continue;
        };
        if info.shape != f.shape {
            continue;
        }
        let (v, d) = (f.shape[0], f.shape[1]);
        let Data::Owned(w) = &f.data else {
            unreachable!("the caller loaded every value")
        };
        let w0 = base.read_f32(base_name)?;
        if w.len() != v * d || w0.len() != v * d {
            return Err(InputError::invalid(
                &adapter.path,
                format!("tensor `{}` does not hold {v}×{d} values", f.name),
            ));
        }
        let changed: Vec<usize> = (0..v)
            .filter(|&i| w[i * d..(i + 1) * d] != w0[i * d..(i + 1) * d])
            .collect();
        let mut rw = SavedRewrite {
            module: module.to_owned(),
            form: "kept",
            rows_changed: changed.len(),
            rows: v,
            rank: None,
            fro_error: None,
            rel_fro_error: None,
            why: None,
        };
        if changed.is_empty() {
            rw.form = "dropped_equal_to_base";
            remove.push(*fi);
        } else if opts.tokens && changed.len() < v {
            let mut rows = Vec::with_capacity(changed.len() * d);
            for &i in &changed {
                rows.extend_from_slice(&w[i * d..(i + 1) * d]);
            }
            new_full.push(FullTensor {
                name: format!("{module}{}", super::tokens::TOKENS_SUFFIX),
                data: Data::Owned(Arc::new(rows)),
                shape: vec![changed.len(), d],
                rows: None,
            });
            indices.insert(leaf.to_owned(), changed.iter().map(|&i| i as u64).collect());
            rw.form = "trainable_tokens";
            remove.push(*fi);
        } else if let Some(r) = opts.rank {
            // Δ as the canonical `d_out × k_in` matrix the factors multiply to.
            let (rows_c, cols_c, delta) = if embedding {
                let mut t = vec![0f32; v * d];
                for i in 0..v {
                    for j in 0..d {
                        t[j * v + i] = (w[i * d + j] as f64 - w0[i * d + j] as f64) as f32;
                    }
                }
                (d, v, t)
            } else {
                let t: Vec<f32> = w
                    .iter()
                    .zip(&w0)
                    .map(|(&a, &b)| (a as f64 - b as f64) as f32)
                    .collect();
                (v, d, t)
            };
            let norm_sq: f64 = delta.iter().map(|&x| (x as f64).powi(2)).sum();
            let svd = crate::linalg::exact_svd(crate::ops::output::view(&delta, rows_c, cols_c));
            let keep = r.min(svd.s.len());
            let tail: f64 = svd.s[keep..].iter().map(|&x| (x as f64).powi(2)).sum();
            let (b, a) = crate::ops::output::svd_factors(&svd, r);
            new_modules.push(LoraModule {
                name: module.to_owned(),
                kind: if embedding {
                    ModuleKind::Embedding
                } else {
                    ModuleKind::Linear
                },
                rank: r,
                alpha: r as f64,
                scale: 1.0,
                out_features: rows_c,
                in_features: cols_c,
                factors: Factors::Lora {
                    a: Data::Owned(Arc::new(a)),
                    b: Data::Owned(Arc::new(b)),
                },
                base_transposed: embedding,
                dora_magnitude: None,
                dora_rule: DoraRule::Peft,
                bias: None,
            });
            rw.form = "lora";
            rw.rank = Some(r);
            rw.fro_error = Some(tail.sqrt());
            rw.rel_fro_error = Some(if norm_sq > 0.0 {
                (tail / norm_sq).sqrt()
            } else {
                0.0
            });
            remove.push(*fi);
        } else {
            rw.why = Some(if changed.len() == v {
                "every row differs from the base: only a LoRA of a chosen rank can replace it"
                    .into()
            } else {
                "neither trainable tokens nor a LoRA rank was asked for".into()
            });
        }
        out.push(rw);
    }
    remove.sort_unstable();
    for i in remove.into_iter().rev() {
        adapter.full_tensors.remove(i);
    }
    adapter.full_tensors.extend(new_full);
    let converted: Vec<String> = out
        .iter()
        .filter(|r| r.form != "kept")
        .map(|r| r.module.clone())
        .collect();
    // `modules_to_save` lists leaf names or paths; a rewritten module leaves it.
    adapter.modules_to_save.retain(|entry| {
        !converted.iter().any(|m| {
            m == entry
                || m.strip_suffix(entry.as_str())
                    .is_some_and(|p| p.ends_with('.'))
        })
    });
    if !new_modules.is_empty() {
        adapter.modules.extend(new_modules);
        adapter.modules.sort_by(|a, b| a.name.cmp(&b.name));
    }
    if let Some(serde_json::Value::Object(cfg)) = adapter.config.as_mut() {
        if !indices.is_empty() {
            // A list names the input embedding's rows (LoraConfig.trainable_token_indices).
            let mut obj = match cfg.get("trainable_token_indices") {
                Some(serde_json::Value::Object(o)) => o.clone(),
                Some(list @ serde_json::Value::Array(_)) => {
                    serde_json::Map::from_iter([("embed_tokens".to_owned(), list.clone())])
                }
                _ => serde_json::Map::new(),
            };
            for (k, ids) in indices {
                obj.insert(k, serde_json::json!(ids));
            }
            cfg.insert(
                "trainable_token_indices".into(),
                serde_json::Value::Object(obj),
            );
        }
        if out.iter().any(|r| r.form == "lora") {
            // Full module names are written instead (peft::config_json).
            cfg.insert("target_modules".into(), serde_json::Value::Null);
        }
    }
    Ok(out)
}
