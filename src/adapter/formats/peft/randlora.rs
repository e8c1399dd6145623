//! Reading PEFT RandLoRA folders (`peft_type` RANDLORA; Albert et al., "RandLoRA: Full-rank
//! parameter-efficient fine-tuning of large models", ICLR 2025; PEFT 0.21.2 `tuners/randlora/`)
//! into the one adapter model. Never writes.
//!
//! One pair of frozen random bases serves every layer: `base_model.randlora_A` [r, 1, m′] and
//! `base_model.randlora_B` [M, n′, r] (m′ = min and M = max of the widest targeted output and
//! input, n′ = ⌈m′/r⌉; `model.py` `_init_randlora_A_randlora_B`), saved when `save_projection`
//! is true (the default); each layer's copy of them is saved too (the same tensors). Each module
//! stores `randlora_lambda` [r, n] and `randlora_gamma` [n, m] (m = min(out, in), n = ⌈m/r⌉),
//! and PEFT merges (`layer.py` `get_scaled_bases`, `get_delta_weight`)
//! `UA = (λ[:, :, None] · A[:, :n, :m]) · γ[None]` flattened to [r·n, m] (f32 products in that
//! order, as here), `UB = B[:max, :n, :]` flattened to [max, n·r], and
//! `ΔW = alpha/r · UB·UA` when in ≤ out, its transpose otherwise (`randlora_alpha`, default
//! 640). The base decides max and the orientation, so the module is a [`Factors::RandLora`].
//! Without the saved bases PEFT regenerates them from `projection_prng_key` with torch's
//! generator, which lorakit cannot reproduce: refused. On GPT-2's Conv1D (`fan_in_fan_out`) the
//! same update is added transposed to the stored `[in, out]` weight.

use super::assemble::{all_present, assemble, paired_by_suffixes};
use super::config::{saved_projections, stored_f32, PeftConfig};
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, LoraModule};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

const A_KEY: &str = "base_model.randlora_A";
const B_KEY: &str = "base_model.randlora_B";

/// Reads a PEFT RandLoRA adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let (sa, sb) = saved_projections(&file, &cfg, "RANDLORA's shared bases", [A_KEY, B_KEY])?;
    let alpha = match cfg.raw.get("randlora_alpha") {
        None | Some(Value::Null) => 640.0,
        Some(v) => v.as_f64().filter(|a| a.is_finite()).ok_or_else(|| {
            bad("`randlora_alpha` in adapter_config.json must be a number".into())
        })?,
    };
    let shape = |k: &str| -> InputResult<Vec<usize>> { Ok(file.view(k)?.shape.to_vec()) };
    let (ra, na, wa, big, nb, rb) = match (sa, sb) {
        ([ra, na, wa], [big, nb, rb])
            if ra == rb && [*ra, *na, *wa, *big, *nb].iter().all(|&x| x > 0) =>
        {
            (*ra, *na, *wa, *big, *nb, *rb)
        }
        (a, b) => {
            return Err(bad(format!(
                "tensors `{A_KEY}` {a:?} and `{B_KEY}` {b:?} are not [r, n, min] and [max, n, r]"
            )))
        }
    };
    // PEFT builds the shared bases and the lambdas at the config's `r` (hostile round 12).
    if let Some(cr) = cfg.r_other_than(ra) {
        return Err(bad(format!(
            "tensor `{A_KEY}` has rank {ra}, but `r` in adapter_config.json is {cr}: PEFT builds RandLoRA at r and refuses the file"
        )));
    }
    let shared_a = stored_f32(&file, A_KEY)?;
    let shared_b = stored_f32(&file, B_KEY)?;
    // Each layer's copies of the shared bases: PEFT loads them into the one shared buffer, so
    // they must be the same tensors.
    let mut skip = vec![A_KEY, B_KEY];
    for t in file.tensors() {
        let shared = if t.name.ends_with(".randlora_A") && t.name != A_KEY {
            A_KEY
        } else if t.name.ends_with(".randlora_B") && t.name != B_KEY {
            B_KEY
        } else {
            continue;
        };
        if file.view(&t.name)?.data != file.view(shared)?.data || t.shape != shape(shared)? {
            return Err(bad(format!(
                "tensor `{}` differs from `{shared}`: PEFT loads every layer's copy into the one shared basis, so which one it keeps depends on load order",
                t.name
            )));
        }
        skip.push(t.name.as_str());
    }
    let (parts, full) = paired_by_suffixes(
        &file,
        [".randlora_lambda", ".randlora_gamma"],
        "randlora_",
        &skip,
        "RandLoRA tensor (randlora_lambda, randlora_gamma, randlora_A/B)",
    )?;
    let mut modules = Vec::with_capacity(parts.len());
    for (name, keys) in parts {
        let [lkey, gkey] = all_present(
            &file,
            &name,
            keys,
            "RandLoRA needs randlora_lambda and randlora_gamma",
        )?;
        let (r, n, m) = match (&shape(&lkey)?[..], &shape(&gkey)?[..]) {
            ([r, n], [n2, m])
                if n == n2 && *r == ra && *n > 0 && *m > 0 && *n <= nb && *m <= wa
                    && (na == 1 || *n <= na) =>
            {
                (*r, *n, *m)
            }
            (l, g) => {
                return Err(bad(format!(
                    "module `{name}`: randlora_lambda {l:?} and randlora_gamma {g:?} are not [r = {ra}, n] and [n, min] within the shared bases (n ≤ {nb}, min ≤ {wa})"
                )))
            }
        };
        let lambda = stored_f32(&file, &lkey)?;
        let gamma = stored_f32(&file, &gkey)?;
        // UA[i·n + b, j] = (λ[i, b] · A[i, b or 0, j]) · γ[b, j], f32 as PEFT.
        let mut ua = vec![0f32; r * n * m];
        for i in 0..r {
            for b in 0..n {
                let arow = &shared_a[(i * na + if na == 1 { 0 } else { b }) * wa..][..m];
                for j in 0..m {
                    ua[(i * n + b) * m + j] = (lambda[i * n + b] * arow[j]) * gamma[b * m + j];
                }
            }
        }
        // UB[row, b·r + i] = B[row, b, i] for b < n.
        let mut ub = vec![0f32; big * n * r];
        for row in 0..big {
            for b in 0..n {
                let src = &shared_b[(row * nb + b) * rb..][..r];
                ub[(row * n + b) * r..][..r].copy_from_slice(src);
            }
        }
        let factors = Factors::RandLora {
            a: Data::Owned(Arc::new(ua)),
            b: Data::Owned(Arc::new(ub)),
        };
        // Conv1D (GPT-2): PEFT transposes its [out, in] update to the stored [in, out]
        // (`get_delta_weight`: `transpose(update, fan_in_fan_out)`).
        let module = LoraModule::peft_linear(name, (m, big, r), alpha, factors, cfg.fan_in_fan_out);
        modules.push(LoraModule {
            scale: alpha / r as f64,
            ..module
        });
    }
    assemble(path, file, &cfg, modules, full)
}
