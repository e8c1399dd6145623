//! Attaching adapters to a [`Model`]: placing each module on the layer its name refers to,
//! applying LoRA unmerged on the low-rank path, and merging DoRA modules (or everything, when
//! asked) into an in-memory f32 copy of the weight by `lorakit merge`'s own kernel
//! (`backend::cpu::merge`); `modules_to_save` tensors replace the model's.
//!
//! Must not match names or merge on its own: a module name (or a `target_modules` entry) is
//! resolved by `adapter::mapping`'s matcher, the one `lorakit merge` uses, over the model's
//! `{path}.weight` names; in-memory merges go through `backend::cpu::merge`, the kernel `lorakit
//! merge` runs.

use super::structure::{EmbedLora, Model};
use crate::adapter::formats::peft::tokens_module;
use crate::adapter::mapping::{dotted_suffix, dotted_suffix_agrees, target_matches, WeightNames};
use crate::adapter::{Adapter, Format, ModuleKind};
use crate::backend::{Dora, MergeJob, NormAxis, Term};
use crate::dtype::Dtype;
use crate::error::InputError;
use crate::model::linear::{Lora, Matrix, MatrixData};
use crate::model::scalar::{stored_as, Real};
use anyhow::{bail, Result};
use std::sync::Arc;

/// Where an adapter module lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Embed,
    Linear(usize),
}

/// Counts of what attaching one adapter did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Attached {
    pub path: String,
    pub weight: f64,
    /// Modules applied through the low-rank path.
    pub modules_unmerged: usize,
    /// Modules merged into an in-memory copy of the weight (DoRA, or all with merging asked).
    pub modules_merged: usize,
    /// `modules_to_save` tensors that replaced the model's.
    pub tensors_replaced: usize,
}

impl<'c, T: Real> Model<'c, T> {
    /// Slots whose module path matches one of `targets` as PEFT matches a `target_modules`
    /// list ([`target_matches`]): the whole path, or a suffix of it that starts after a dot
    /// (`q_proj`, `self_attn.q_proj`, `layers.0.mlp.down_proj`). Every target must match
    /// something.
    pub fn select(&self, targets: &[String]) -> Result<Vec<usize>> {
        let mut slots = Vec::new();
        for t in targets {
            let hits: Vec<usize> = (0..self.num_slots())
                .filter(|&s| target_matches(&self.linear(s).name, t))
                .collect();
            if hits.is_empty() {
                if target_matches(&self.embed_name(), t) {
                    bail!(
                        "target `{t}` is the embedding; lorakit trains LoRA on linear layers only"
                    );
                }
                bail!(
                    "target `{t}` matches no linear layer (names end in q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head)"
                );
            }
            slots.extend(hits);
        }
        slots.sort_unstable();
        slots.dedup();
        Ok(slots)
    }

    /// Slot of the linear layer module `name` of an adapter in `format` refers to (same matching
    /// as [`Model::attach`]).
    pub fn module_slot(&self, format: Format, name: &str) -> std::result::Result<usize, String> {
        match self.find_module(format, name)? {
            Target::Linear(s) => Ok(s),
            Target::Embed => Err(format!(
                "module `{name}` is the embedding, not a linear layer"
            )),
        }
    }

    /// The layer module `name` of an adapter in `format` refers to, by the matcher `lorakit
    /// merge` uses ([`WeightNames::module_candidates`]) over the model's weights as a base
    /// checkpoint names them: `{path}.weight` of every linear layer, then the embedding's.
    fn find_module(&self, format: Format, name: &str) -> std::result::Result<Target, String> {
        let targets: Vec<(String, Target)> = (0..self.num_slots())
            .map(|s| (self.linear(s).name.clone(), Target::Linear(s)))
            .chain([(self.embed_name(), Target::Embed)])
            .collect();
        let weights: Vec<String> = targets.iter().map(|(n, _)| format!("{n}.weight")).collect();
        let index = WeightNames::new(weights.iter().map(String::as_str).collect(), format);
        // Back to the model's order (slots, then the embedding), which the errors list.
        let mut hits: Vec<usize> = index
            .module_candidates(format, name)
            .into_iter()
            .filter_map(|c| weights.iter().position(|w| w == c))
            .collect();
        hits.sort_unstable();
        match hits.as_slice() {
            [one] => Ok(targets[*one].1),
            [] => Err(format!("module `{name}` matches no layer of the model")),
            many => Err(format!(
                "module `{name}` is ambiguous: {}",
                many.iter()
                    .map(|&i| targets[i].0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Attaches every module of `adapter` with weight `weight`: unmerged through the low-rank
    /// path, or merged into an in-memory f32 copy of the weight when `merge` is set (DoRA
    /// modules are always merged). Nothing is dropped: a module that fits no layer is an error.
    pub fn attach(&mut self, adapter: &Adapter, weight: f64, merge: bool) -> Result<Attached> {
        adapter.check_mergeable()?;
        adapter.check_plain_base("running it unmerged")?;
        let path = adapter.path.clone();
        let err = |m: String| anyhow::Error::new(InputError::invalid(&path, m));
        let mut rep = Attached {
            path: adapter.path.display().to_string(),
            weight,
            ..Default::default()
        };
        // Replacement tensors first (`modules_to_save`, PEFT's saved base embedding): they are
        // the base the adapter's modules apply to, as in `lorakit merge`.
        for (fi, f) in adapter.full_tensors.iter().enumerate() {
            // As in `lorakit merge`: a replaced tensor has no weighted form (PEFT's saved
            // `base_layer` copy is the base itself, which a weight does not scale).
            let base_copy = matches!(&f.data, crate::adapter::Data::Stored { key, .. } if key.contains(".base_layer."));
            if weight != 1.0 && !base_copy && adapter.format == Format::Peft {
                return Err(err(format!(
                    "tensor `{}` (modules_to_save or trainable tokens) replaces the model's and has no weighted form; attach this adapter with --weight 1 (it is {weight})",
                    f.name
                )));
            }
            // Trainable-token rows overwrite rows of the input embedding or of `lm_head` (PEFT's
            // `TrainableTokensLayer`, `index_copy` on an Embedding or a Linear's weight). On a
            // tied base PEFT ties the embedding's token adapter to the output layer
            // (`peft/tuners/trainable_tokens/model.py:55-95`, `inject_adapter` with
            // `tied_adapter`), so the same rows land in `lm_head` too.
            if let (Some(_), Some(module)) = (&f.rows, tokens_module(&f.name)) {
                let target = self.find_module(adapter.format, module);
                let embed = matches!(target, Ok(Target::Embed));
                let head = self.num_slots() - 1;
                if !embed && target != Ok(Target::Linear(head)) {
                    return Err(err(format!(
                        "tensor `{}`: trainable tokens apply to the input embedding or `lm_head`, not to `{module}`",
                        f.name
                    )));
                }
                if embed {
                    let (rows, cols) = (self.embed.rows, self.embed.cols);
                    let vals = adapter.full_values(fi, || Ok(self.embed.to_f32()))?;
                    self.embed = Matrix::owned(vals.to_vec(), rows, cols);
                }
                if !embed || self.tied {
                    let (rows, cols) = (self.lm_head.w.rows, self.lm_head.w.cols);
                    let vals = adapter.full_values(fi, || Ok(self.lm_head.w.to_f32()))?;
                    self.lm_head.w = Matrix::owned(vals.to_vec(), rows, cols);
                }
                rep.tensors_replaced += 1;
                continue;
            }
            let vals = adapter.values(&f.data)?;
            if base_copy {
                // PEFT's saved copy of the base layer: loading it sets the layer's base, under
                // every adapter's update. A copy equal to the base the model has changes nothing
                // (what an earlier adapter merged into the weight stays); one that differs would
                // replace the base under updates already merged into it: refused.
                match self.base_as_loaded(adapter.format, &f.name) {
                    Some((base, _)) if base.as_slice() == vals.as_slice() => continue,
                    Some((_, true)) => {
                        return Err(err(format!(
                            "tensor `{}`: PEFT's saved copy of the base layer differs from the model's, and an earlier adapter is already merged into that layer (PEFT would put the copy under it); run without --merged, with no DoRA adapter on that layer before this one",
                            f.name
                        )))
                    }
                    _ => {}
                }
            }
            self.replace_tensor(adapter.format, &f.name, &f.shape, &vals)
                .map_err(|e| err(format!("tensor `{}` (modules_to_save): {e}", f.name)))?;
            rep.tensors_replaced += 1;
        }
        let (vocab, hidden) = (self.config.vocab_size, self.config.hidden_size);
        for m in &adapter.modules {
            let target = self.find_module(adapter.format, &m.name).map_err(&err)?;
            let scale = weight * m.scale;
            let (b, a) = adapter.factors(m)?;
            let magnitude = m
                .dora_magnitude
                .as_ref()
                .map(|d| adapter.values(d))
                .transpose()?;
            let lbias = m.bias.as_ref().map(|d| adapter.values(d)).transpose()?;
            match target {
                Target::Embed => {
                    if m.kind != ModuleKind::Embedding
                        || m.in_features != vocab
                        || m.out_features != hidden
                    {
                        return Err(err(format!(
                            "module `{}` ({:?}, {}→{}) does not fit the embedding ({vocab}×{hidden})",
                            m.name, m.kind, m.in_features, m.out_features
                        )));
                    }
                    if merge || magnitude.is_some() {
                        let module = |e: String| err(format!("module `{}`: {e}", m.name));
                        if self.embed_base0.is_none() {
                            self.embed_base0 = Some(self.embed.clone());
                        }
                        if magnitude.is_some() {
                            // PEFT's DoRA embedding forward scales the rows looked up so far
                            // (`mag_norm_scale * result`), earlier LoRAs included: merged first.
                            self.fold_embed_loras().map_err(module)?;
                        }
                        // Stored [vocab, hidden] = transposed: ΔW = s·(B·A)ᵀ = s·Aᵀ·Bᵀ.
                        let bt = crate::adapter::transpose(&a, m.rank, m.in_features);
                        let at = crate::adapter::transpose(&b, m.out_features, m.rank);
                        let merged = merge_matrix(
                            &self.embed,
                            self.embed_base0.as_ref(),
                            &bt,
                            &at,
                            m.rank,
                            scale,
                            magnitude.as_deref().map(|v| (v.as_slice(), NormAxis::Cols)),
                        )
                        .map_err(module)?;
                        self.embed = merged;
                        rep.modules_merged += 1;
                    } else {
                        self.embed_loras.push(EmbedLora {
                            a: a.iter().map(|&x| T::from_f32(x)).collect(),
                            b: b.iter().map(|&x| T::from_f32(x)).collect(),
                            rank: m.rank,
                            scale: T::from_f64(scale),
                        });
                        rep.modules_unmerged += 1;
                    }
                }
                Target::Linear(slot) => {
                    let lin = self.linear_mut(slot);
                    if m.kind != ModuleKind::Linear
                        || m.base_transposed
                        || m.out_features != lin.out_features()
                        || m.in_features != lin.in_features()
                    {
                        return Err(err(format!(
                            "module `{}` ({:?}{}, {}→{}) does not fit `{}` ({}→{})",
                            m.name,
                            m.kind,
                            if m.base_transposed {
                                ", fan_in_fan_out"
                            } else {
                                ""
                            },
                            m.in_features,
                            m.out_features,
                            lin.name,
                            lin.in_features(),
                            lin.out_features()
                        )));
                    }
                    if merge || magnitude.is_some() {
                        let module = |e: String| err(format!("module `{}`: {e}", m.name));
                        if lin.base0.is_none() {
                            lin.base0 = Some(lin.w.clone());
                        }
                        if magnitude.is_some() {
                            // PEFT's DoRA forward scales the layer's output so far
                            // (`base_result`), which holds every LoRA of the layer before it:
                            // those are merged first, in order.
                            fold_loras(lin).map_err(module)?;
                        }
                        let merged = merge_matrix(
                            &lin.w,
                            lin.base0.as_ref(),
                            &b,
                            &a,
                            m.rank,
                            scale,
                            magnitude.as_deref().map(|v| (v.as_slice(), NormAxis::Rows)),
                        )
                        .map_err(module)?;
                        lin.w = merged;
                        if let Some(lb) = &lbias {
                            let d = lin.out_features();
                            let bias = lin.bias.get_or_insert_with(|| vec![T::ZERO; d]);
                            for (o, &v) in bias.iter_mut().zip(lb.iter()) {
                                *o = T::from_f32(o.to_f32() + (scale as f32) * v);
                            }
                        }
                        rep.modules_merged += 1;
                    } else {
                        lin.loras.push(Lora {
                            source: adapter.path.display().to_string(),
                            a: a.iter().map(|&x| T::from_f32(x)).collect(),
                            b: b.iter().map(|&x| T::from_f32(x)).collect(),
                            rank: m.rank,
                            scale: T::from_f64(scale),
                            bias: lbias
                                .as_ref()
                                .map(|v| v.iter().map(|&x| T::from_f32(x)).collect()),
                            trainable: false,
                        });
                        rep.modules_unmerged += 1;
                    }
                }
            }
        }
        Ok(rep)
    }

    /// The weight named `name` (`….weight`, of an adapter in `format`) as loaded or last
    /// replaced, in f32, and whether an update has been merged into it since (its `base0` is
    /// kept). `None` where it names no embedding or linear layer.
    fn base_as_loaded(&self, format: Format, name: &str) -> Option<(Vec<f32>, bool)> {
        let module = name.strip_suffix(".weight")?;
        Some(match self.find_module(format, module).ok()? {
            Target::Embed => (
                self.embed_base0.as_ref().unwrap_or(&self.embed).to_f32(),
                self.embed_base0.is_some(),
            ),
            Target::Linear(slot) => {
                let lin = self.linear(slot);
                (
                    lin.base0.as_ref().unwrap_or(&lin.w).to_f32(),
                    lin.base0.is_some(),
                )
            }
        })
    }

    /// Replaces one of the model's tensors (a `modules_to_save` copy of an adapter in `format`).
    fn replace_tensor(
        &mut self,
        format: Format,
        name: &str,
        shape: &[usize],
        vals: &[f32],
    ) -> std::result::Result<(), String> {
        let module = name
            .strip_suffix(".weight")
            .or_else(|| name.strip_suffix(".bias"));
        let is_bias = name.ends_with(".bias");
        let to_t = |v: &[f32]| v.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>();
        let Some(module) = module else {
            return Err("not a .weight or .bias tensor".into());
        };
        let check = |want: &[usize]| -> std::result::Result<(), String> {
            if shape != want {
                return Err(format!("shape {shape:?}, the model has {want:?}"));
            }
            Ok(())
        };
        // Norms.
        let mut norms: Vec<(String, usize, usize)> = Vec::new();
        for l in 0..self.layers.len() {
            norms.push((format!("{}layers.{l}.input_layernorm", self.prefix), l, 0));
            norms.push((
                format!("{}layers.{l}.post_attention_layernorm", self.prefix),
                l,
                1,
            ));
        }
        let h = self.config.hidden_size;
        if !is_bias {
            if let Some((_, l, which)) = norms
                .iter()
                .find(|(n, _, _)| dotted_suffix_agrees(n, module))
            {
                check(&[h])?;
                let v = to_t(vals);
                if *which == 0 {
                    self.layers[*l].input_norm = v;
                } else {
                    self.layers[*l].post_norm = v;
                }
                return Ok(());
            }
            let final_norm = format!("{}norm", self.prefix);
            if dotted_suffix(&final_norm, module) {
                check(&[h])?;
                self.norm = to_t(vals);
                return Ok(());
            }
        }
        match self.find_module(format, module)? {
            Target::Embed if !is_bias => {
                check(&[self.embed.rows, self.embed.cols])?;
                self.embed = Matrix::owned(vals.to_vec(), self.embed.rows, self.embed.cols);
                self.embed_base0 = None;
            }
            Target::Embed => return Err("the embedding has no bias".into()),
            Target::Linear(slot) => {
                let lin = self.linear_mut(slot);
                if is_bias {
                    check(&[lin.out_features()])?;
                    lin.bias = Some(to_t(vals));
                } else {
                    check(&[lin.out_features(), lin.in_features()])?;
                    lin.w = Matrix::owned(vals.to_vec(), lin.w.rows, lin.w.cols);
                    // The replacement is the base later DoRA modules are normed on.
                    lin.base0 = None;
                }
            }
        }
        Ok(())
    }
}

impl<T: Real> Model<'_, T> {
    /// Merges the unmerged embedding LoRAs into [`Model::embed`], in the order attached.
    fn fold_embed_loras(&mut self) -> std::result::Result<(), String> {
        let (vocab, hidden) = (self.config.vocab_size, self.config.hidden_size);
        for l in std::mem::take(&mut self.embed_loras) {
            let f32s = |v: &[T]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
            // `a` rank × vocab, `b` hidden × rank; stored [vocab, hidden]: s·Aᵀ·Bᵀ.
            let bt = crate::adapter::transpose(&f32s(&l.a), l.rank, vocab);
            let at = crate::adapter::transpose(&f32s(&l.b), hidden, l.rank);
            let scale = l.scale.to_f32() as f64;
            self.embed = merge_matrix(&self.embed, None, &bt, &at, l.rank, scale, None)?;
        }
        Ok(())
    }
}

/// Merges the layer's unmerged (non-trainable) LoRAs into its weight, in the order attached,
/// their `lora_B` biases into its bias.
fn fold_loras<T: Real>(
    lin: &mut crate::model::linear::Linear<'_, T>,
) -> std::result::Result<(), String> {
    let (keep, fold): (Vec<_>, Vec<_>) = std::mem::take(&mut lin.loras)
        .into_iter()
        .partition(|l| l.trainable);
    lin.loras = keep;
    for l in fold {
        let f32s = |v: &[T]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
        let scale = l.scale.to_f32() as f64;
        lin.w = merge_matrix(&lin.w, None, &f32s(&l.b), &f32s(&l.a), l.rank, scale, None)?;
        if let Some(lb) = &l.bias {
            let d = lin.out_features();
            let bias = lin.bias.get_or_insert_with(|| vec![T::ZERO; d]);
            for (o, v) in bias.iter_mut().zip(lb) {
                *o = T::from_f32(o.to_f32() + (scale as f32) * v.to_f32());
            }
        }
    }
    Ok(())
}

/// `W + s·B·A` (with DoRA when a magnitude is given: its norm taken from `base0 + s·B·A` when
/// `base0` is given, PEFT's unmerged base weight, else from `W + s·B·A`) as an owned f32
/// matrix, by the merge kernel `lorakit merge` uses.
fn merge_matrix<'c>(
    w: &Matrix<'c>,
    base0: Option<&Matrix<'c>>,
    b: &[f32],
    a: &[f32],
    rank: usize,
    scale: f64,
    dora: Option<(&[f32], NormAxis)>,
) -> std::result::Result<Matrix<'c>, String> {
    let (bytes, in_dtype) = w.bytes();
    let terms = [Term {
        b,
        a,
        rank,
        dense: None,
        scale: scale as f32,
        dora: dora.map(|(magnitude, axis)| Dora::peft(magnitude, axis)),
        delta_dtype: None,
    }];
    let job = MergeJob::new(bytes, in_dtype, (w.rows, w.cols), &terms, Dtype::F32);
    job.validate().map_err(|e| e.to_string())?;
    let out = match base0 {
        Some(w0) if dora.is_some() => {
            let (bytes0, dtype0) = w0.bytes();
            let job0 = MergeJob::new(bytes0, dtype0, (w0.rows, w0.cols), &terms, Dtype::F32);
            job0.validate().map_err(|e| e.to_string())?;
            let norms = crate::backend::cpu::dora_norms(&job0);
            crate::backend::cpu::merge_with_norms(&job, &norms)
        }
        _ => crate::backend::cpu::merge(&job),
    }
    .map_err(|e| e.to_string())?;
    let vals: Vec<f32> = stored_as::<f32>(&out, Dtype::F32).into_owned();
    Ok(Matrix::new(
        MatrixData::Owned(Arc::new(vals)),
        w.rows,
        w.cols,
    ))
}
