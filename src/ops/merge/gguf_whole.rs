//! The GGUF merge's targets that are not row bands of `W0 + ΔW`: biases of `lora_bias` modules
//! and whole tensors of `modules_to_save`, planned onto the base's tensors and computed whole.
//!
//! - `lora_bias` (PEFT 0.21.2 `tuners/lora/layer.py` `Linear.merge`: `bias += lora_B.bias ·
//!   scaling`) adds `w·s·b` to the base's `{tensor}.bias` (F32 as convert_hf_to_gguf.py stores
//!   every 1-D tensor, `conversion/base.py` `n_dims <= 1`), in the file's row order: for
//!   architecture `llama` the q/k biases were permuted as their weights
//!   (`conversion/llama.py` `LlamaModel.modify_tensors`: `q_proj.bias`, `k_proj.bias`), so `b`
//!   is too. A bias the base does not have is refused by module: lorakit does not add tensors to
//!   a GGUF base (llama.cpp's loaders would take an optional q/k/v bias for `llama` and `qwen2`,
//!   `create_tensor_qkv` in `src/llama-model.cpp`, and `attn_output`/FFN biases for `llama`,
//!   `src/models/llama.cpp`, but none for Qwen2's `attn_output`, `src/models/qwen2.cpp`; PEFT's
//!   own merge raises on a layer without a bias).
//! - `modules_to_save` (PEFT `utils/other.py` `ModulesToSaveWrapper`; `merge_and_unload` puts the
//!   saved copy in place) replaces the GGUF tensor its name maps to (`model.embed_tokens.weight`
//!   → `token_embd.weight`, `lm_head.weight` → `output.weight`), PyTorch's `[out, in]` being the
//!   GGUF rows as for every weight (q/k rows permuted for `llama`, as the converter permutes the
//!   checkpoint's; never for embeddings or the head); PEFT's trainable-token rows
//!   (`trainable_token_indices`) overwrite those rows of the dequantized base, on a tied base
//!   too (PEFT ties them to the head, `utils/other.py` `TrainableTokensWrapper`). Stored in the base tensor's type (`keep`, requantized with the
//!   reference quantizer) or the `--outtype`. A tied base (no `output.weight`: llama.cpp then
//!   computes logits with `token_embd`, `src/models/llama.cpp` / `qwen2.cpp`
//!   `load_arch_tensors`, `TENSOR_DUPLICATED`) takes a saved `lm_head` only beside a saved
//!   `embed_tokens` holding the same values; a saved `lm_head` alone or a different one, and a
//!   saved `embed_tokens` alone (it would change the output too, PEFT issue #2018), are
//!   refused: llama.cpp would load an optional `output.weight`, but lorakit does not add tensors.
//!   Gemma's converters store norms + 1 (`conversion/gemma.py`), so a saved Gemma norm is
//!   refused rather than shifted.
//!
//! Must not write: values go back to [`super::gguf`]'s writer.

use super::gguf_model::{GgufMergeOptions, GgufMergePlan, Kind, OutType, Target};
use crate::adapter::formats::peft::tokens_module;
use crate::adapter::{mapping::Unmatched, Adapter};
use crate::error::InputError;
use crate::io::gguf::names::{self, Rope};
use crate::io::gguf::{quant, GgufModel};
use anyhow::Result;

/// The bias target of module `(ai, mi)` of adapter `a` on GGUF module `g` (`blk.0.attn_q`), its
/// rows permuted with `permute` heads as the weight's.
pub(super) fn plan_bias(
    base: &GgufModel,
    a: &Adapter,
    (ai, mi): (usize, usize),
    g: &str,
    permute: Option<usize>,
) -> Result<Target> {
    let m = &a.modules[mi];
    let tensor = format!("{g}.bias");
    let refuse = |why: String| -> Result<Target> {
        Err(InputError::invalid(&a.path, format!("module `{}`: lora_bias {why}", m.name)).into())
    };
    if m.factors.lora().is_none() {
        return refuse(format!(
            "on a {} module is not merged into a GGUF base (LoRA modules only)",
            m.factors.algo()
        ));
    }
    let Some((_, t)) = base.get(&tensor) else {
        return refuse(format!(
            "adds to the layer's bias, and the GGUF base has no `{tensor}` (PEFT's own merge refuses a layer without a bias); lorakit does not add tensors to a GGUF base"
        ));
    };
    if t.shape() != [m.out_features] {
        return refuse(format!(
            "has {} values, base bias `{tensor}` has shape {:?}",
            m.out_features,
            t.shape()
        ));
    }
    if !(t.ty.can_dequantize() && t.ty.can_quantize()) {
        return refuse(format!(
            "cannot be added to `{tensor}`, stored as {}, which lorakit does not read and write",
            t.ty
        ));
    }
    Ok(Target {
        tensor,
        terms: vec![(ai, mi)],
        permute,
        // A 1-D tensor keeps its type (F32 from the converter) whatever --outtype says.
        out_type: t.ty,
        kind: Kind::Bias,
    })
}

/// The replacement targets of adapter `ai`'s full tensors (`modules_to_save`), PEFT's saved base
/// copies skipped. `heads` is `(permutes, n_head, n_head_kv)` of the base. Names without a
/// GGUF tensor go to `unmatched`.
pub(super) fn plan_full(
    base: &GgufModel,
    arch: &str,
    ai: usize,
    a: &Adapter,
    options: &GgufMergeOptions,
    (permutes, n_head, n_head_kv): (bool, Option<usize>, Option<usize>),
    unmatched: &mut Vec<super::UnmatchedReport>,
) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    // (full tensor, GGUF tensor, q/k) of each saved tensor with a GGUF name.
    let saved: Vec<(usize, String, Rope)> = a
        .full_tensors
        .iter()
        .enumerate()
        .filter(|(_, f)| !a.is_saved_base_copy(f))
        .filter_map(|(fi, f)| {
            // Trainable-token rows replace rows of their module's weight (as `mapping` reads
            // them for safetensors bases).
            let name = match (&f.rows, tokens_module(&f.name)) {
                (Some(_), Some(module)) => format!("{module}.weight"),
                _ => f.name.clone(),
            };
            let (stem, suffix) = name.rsplit_once('.')?;
            let (g, rope) = names::gguf_module_in(arch, stem)?;
            Some((fi, format!("{g}.{suffix}"), rope))
        })
        .collect();
    let tied = base.get("output.weight").is_none();
    for (fi, f) in a.full_tensors.iter().enumerate() {
        if a.is_saved_base_copy(f) {
            continue;
        }
        let refuse = |why: String| -> Result<Vec<Target>> {
            Err(InputError::invalid(
                &a.path,
                format!(
                    "full tensor `{}` ({}): {why}",
                    f.name,
                    if f.name.ends_with(".bias") {
                        "a trained bias PEFT saves whole, bias=\"all\"/\"lora_only\""
                    } else {
                        "modules_to_save"
                    }
                ),
            )
            .into())
        };
        if options.unmerge {
            return refuse("it replaces the base tensor, which cannot be undone".into());
        }
        let Some((tensor, rope)) = saved
            .iter()
            .find(|(i, ..)| *i == fi)
            .map(|(_, t, r)| (t.clone(), *r))
        else {
            unmatched.push(super::UnmatchedReport {
                adapter: a.path.display().to_string(),
                detail: Unmatched::NoGgufName {
                    module: f.name.clone(),
                    architecture: arch.to_owned(),
                },
            });
            continue;
        };
        let embd = saved.iter().find(|(_, t, _)| t == "token_embd.weight");
        if tied && tensor == "output.weight" {
            // llama.cpp computes logits with token_embd: the saved head can only be the saved
            // embedding itself.
            let same = match embd {
                Some(&(ei, ..)) => a.values(&a.full_tensors[ei].data)? == a.values(&f.data)?,
                None => false,
            };
            if same {
                continue;
            }
            return refuse(format!(
                "the GGUF base ties its output to `token_embd.weight` (it has no `output.weight`), and the adapter {}; llama.cpp would load an added `output.weight`, but lorakit does not add tensors to a GGUF base",
                if embd.is_some() {
                    "saves an lm_head that differs from its saved embed_tokens"
                } else {
                    "saves no embed_tokens equal to it"
                }
            ));
        }
        // PEFT ties trainable-token rows of a tied embedding to the head (peft 0.21.2
        // `utils/other.py`: `TrainableTokensWrapper` with `tied_adapter`), as llama.cpp does.
        if tied && tensor == "token_embd.weight" && f.rows.is_none() {
            let head = saved.iter().any(|(_, t, _)| t == "output.weight");
            if !head {
                return refuse("the GGUF base ties its output to `token_embd.weight` (it has no `output.weight`), so replacing it would change the output too (PEFT issue #2018); save lm_head beside it (equal, as PEFT's ensure_weight_tying keeps them) or untie the base".into());
            }
        }
        if arch.starts_with("gemma") && tensor.ends_with("norm.weight") {
            return refuse(format!("Gemma's converter stores norms + 1 (`{tensor}`); lorakit does not shift a saved norm"));
        }
        let Some((_, t)) = base.get(&tensor) else {
            unmatched.push(super::UnmatchedReport {
                adapter: a.path.display().to_string(),
                detail: Unmatched::NotFound {
                    module: f.name.clone(),
                    expected: tensor,
                },
            });
            continue;
        };
        if !f.fits(&t.shape()) {
            return refuse(format!(
                "has shape {:?}, base tensor `{tensor}` has {:?} (a resized vocabulary needs the GGUF tokenizer too)",
                f.shape,
                t.shape()
            ));
        }
        let out_type = match options.outtype {
            OutType::To(ty) if t.dims.len() > 1 => quant::fallback(ty, t.dims[0] as usize),
            _ => t.ty,
        };
        let blocks = t.dims[0].is_multiple_of(out_type.block_size() as u64);
        if !(t.ty.can_dequantize() && out_type.can_quantize() && blocks) {
            return refuse(format!(
                "base tensor `{tensor}` is {}, which lorakit cannot store it as (choose --outtype with a writable type whose blocks fit its rows)",
                t.ty
            ));
        }
        let permute = match (permutes, rope) {
            (true, Rope::Q) => Some(n_head),
            (true, Rope::K) => Some(n_head_kv),
            _ => None,
        };
        let Some(permute) = permute.map_or(Some(None), |h| h.map(Some)) else {
            return refuse(format!("`{arch}.attention.head_count` is missing or not one integer; it is needed to permute the rows of `{tensor}` as llama.cpp's converter did"));
        };
        // A q/k weight, or its bias (`LlamaModel.modify_tensors` permutes both).
        if permute
            .is_some_and(|h| !matches!(t.dims.len(), 1 | 2) || !names::permutable(t.shape()[0], h))
        {
            return refuse(format!(
                "`{tensor}` cannot be permuted as llama.cpp permutes q/k"
            ));
        }
        out.push(Target {
            tensor,
            terms: vec![(ai, fi)],
            permute,
            out_type,
            kind: Kind::Replace,
        });
    }
    Ok(out)
}

impl GgufMergePlan {
    /// For a trainable-token target stored in the base tensor's own type: the base's stored
    /// bytes with only the adapter's rows quantized anew (rows are whole blocks), and the
    /// quantization error of those rows. The other rows keep their bytes: a K-quant
    /// requantized from its own dequantization need not give its bytes back, and PEFT's
    /// `index_copy` leaves them as they were. `None` for every other target (quantized whole
    /// from [`Self::whole`]).
    pub(super) fn rows_in_place(
        &self,
        t: &Target,
    ) -> Result<Option<(Vec<u8>, quant::StoredError)>> {
        let (f, info) = self.base.get(&t.tensor).expect("planned");
        let (ai, fi) = t.terms[0];
        let a = &self.adapters[ai].adapter;
        let rows = match (
            &t.kind,
            a.full_tensors.get(fi).and_then(|x| x.rows.as_ref()),
        ) {
            (Kind::Replace, Some(rows)) if t.permute.is_none() && t.out_type == info.ty => rows,
            _ => return Ok(None),
        };
        let shape = info.shape();
        let cols = shape.iter().skip(1).product::<usize>().max(1);
        let stored = f.view(info).data;
        let row_bytes = stored.len() / shape[0].max(1);
        let vals = a.values(&a.full_tensors[fi].data)?;
        let mut bytes = stored.to_vec();
        let mut err = quant::StoredError::default();
        let mut row = Vec::with_capacity(row_bytes);
        // In the adapter's order: a row listed twice ends as its last values, as in
        // `Adapter::full_values`.
        for (i, &r) in rows.iter().enumerate() {
            row.clear();
            let e =
                quant::quantize_par_measured(t.out_type, &vals[i * cols..(i + 1) * cols], &mut row)
                    .expect("planned: rows are whole blocks of a quantizable type");
            bytes[r * row_bytes..(r + 1) * row_bytes].copy_from_slice(&row);
            err = err.then(e, r * cols);
        }
        Ok(Some((bytes, err)))
    }

    /// The new values of a [`Kind::Bias`] or [`Kind::Replace`] target, whole, in the file's
    /// layout.
    pub(super) fn whole(&self, t: &Target) -> Result<Vec<f32>> {
        let (f, info) = self.base.get(&t.tensor).expect("planned");
        let shape = info.shape();
        let (rows, cols) = (shape[0], shape.iter().skip(1).product::<usize>().max(1));
        let permute = |v: Vec<f32>, cols: usize| match t.permute {
            Some(h) => names::permute_rows(&v, rows, cols, h),
            None => v,
        };
        let v = match t.kind {
            Kind::Replace => {
                let (ai, fi) = t.terms[0];
                let a = &self.adapters[ai].adapter;
                let v = a.full_values(fi, || {
                    // Trainable-token rows overwrite the base's in HF order: un-permute first.
                    let w = f.dequantize(info)?;
                    Ok(match t.permute {
                        Some(h) => names::unpermute_rows(&w, rows, cols, h),
                        None => w,
                    })
                })?;
                permute(v.to_vec(), cols)
            }
            Kind::Bias => {
                let mut v = f.dequantize(info)?;
                for &(ai, mi) in &t.terms {
                    let wa = &self.adapters[ai];
                    let m = &wa.adapter.modules[mi];
                    let b = wa.adapter.values(m.bias.as_ref().expect("planned"))?;
                    let b = permute(b.to_vec(), 1);
                    let s = wa.weight * m.scale;
                    let s = if self.options.unmerge { -s } else { s } as f32;
                    for (x, y) in v.iter_mut().zip(&b) {
                        *x += y * s;
                    }
                }
                v
            }
            Kind::Weight => unreachable!("merged in row bands"),
        };
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(InputError::invalid(
                f.path(),
                format!(
                    "tensor `{}`: the merge gives an invalid result: value {} at index {i}; nothing was written",
                    t.tensor, v[i]
                ),
            )
            .into());
        }
        Ok(v)
    }

    /// The adapter entries merged into target `t`: module names, or the full tensor's.
    pub(super) fn term_names(&self, t: &Target) -> Vec<String> {
        t.terms
            .iter()
            .map(|&(ai, i)| {
                let a = &self.adapters[ai].adapter;
                match t.kind {
                    Kind::Replace => a.full_tensors[i].name.clone(),
                    _ => a.modules[i].name.clone(),
                }
            })
            .collect()
    }
}
