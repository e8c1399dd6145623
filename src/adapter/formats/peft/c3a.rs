//! Reading PEFT C3A folders (`peft_type` C3A; Chen et al., "Parameter-Efficient Fine-Tuning via
//! Circular Convolution", ACL 2025; PEFT 0.21.2 `tuners/c3a/`) into the one adapter model as
//! full-difference modules. Never writes.
//!
//! Each module stores `c3a_kernel` [out/b, in/b, b], and PEFT merges `W' = W0 + ΔW` with
//! `ΔW = get_circulant_fast(kernel) / in` (`layer.py` `get_delta_weight`; `utils.py`: the
//! block-circulant matrix built with FFTs in f32). Worked out, `fft(ifft(x) ⊙ fft(w))[u] =
//! Σₛ w[s]·x[(u + s) mod b]`, so block (p, q) of ΔW is `ΔW[p·b + u, q·b + t] =
//! kernel[p, q, (t − u) mod b] / in`; lorakit builds it exactly (f64, rounded once), where PEFT's
//! FFT round-trip leaves errors of a few f32 ulps. Linear layers only.

use super::assemble::{assemble, split_by_suffix};
use super::config::{stored_f32, PeftConfig};
use crate::adapter::algo::Factors;
use crate::adapter::data::Data;
use crate::adapter::model::{Adapter, DoraRule, LoraModule, ModuleKind};
use crate::error::{InputError, InputResult};
use crate::io::SafetensorsFile;
use std::path::Path;
use std::sync::Arc;

/// Reads a PEFT C3A adapter (see the module header).
pub(super) fn read(path: &Path, file: SafetensorsFile, cfg: PeftConfig) -> InputResult<Adapter> {
    let fpath = file.path().to_path_buf();
    let bad = |msg: String| InputError::invalid(&fpath, msg);
    let (named, full) = split_by_suffix(&file, ".c3a_kernel");
    if let Some(f) = full.iter().find(|f| f.name.contains("c3a_")) {
        return Err(bad(format!(
            "tensor `{}`: not a C3A tensor (c3a_kernel)",
            f.name
        )));
    }
    let mut modules = Vec::with_capacity(named.len());
    for (name, t) in named {
        let key = t.name.as_str();
        let (p, q, b) = match t.shape[..] {
            [p, q, b] if p > 0 && q > 0 && b > 0 => (p, q, b),
            ref s => {
                return Err(bad(format!(
                    "tensor `{key}`: shape {s:?} is not [out/b, in/b, b]"
                )))
            }
        };
        // PEFT builds the kernel at the configured block size and refuses a state dict of
        // another (hostile round 12).
        let want = configured_block(&cfg, name);
        if want != Some(b as u64) {
            return Err(bad(format!(
                "tensor `{key}` has blocks of {b}, but adapter_config.json gives {}: PEFT builds the kernel [out/block_size, in/block_size, block_size] from it and refuses the file",
                want.map_or("no positive integer block_size".to_owned(), |w| format!("block_size {w}"))
            )));
        }
        let w = stored_f32(&file, key)?;
        let (d, k) = (p * b, q * b);
        let mut diff = vec![0f32; d * k];
        for o in 0..d {
            let (bp, u) = (o / b, o % b);
            for c in 0..k {
                let (bq, t) = (c / b, c % b);
                let x = w[(bp * q + bq) * b + (t + b - u) % b] as f64;
                diff[o * k + c] = (x / k as f64) as f32;
            }
        }
        modules.push(full_diff(name.to_owned(), (d, k), diff));
    }
    assemble(path, file, &cfg, modules, full)
}

/// The block size PEFT builds `module`'s kernel at (`tuners/c3a/model.py`
/// `_create_and_replace`, its own rule, not `get_pattern_key`'s): the first
/// `block_size_pattern` key `k` for which Python's `re.match(rf".*\.{k}$", module)` holds (the
/// key pasted in unwrapped, so `q_proj|v_proj` reads as `.*\.q_proj` or a name that is exactly
/// `v_proj`), else the entry whose key is the whole module name, else `block_size` (default
/// 256); `None` where that value is not a positive integer.
fn configured_block(cfg: &PeftConfig, module: &str) -> Option<u64> {
    let pattern = cfg
        .raw
        .get("block_size_pattern")
        .and_then(serde_json::Value::as_object)
        .and_then(|m| {
            m.iter()
                .find(|(k, _)| {
                    // `re.match` anchors every alternative at the start, and only there.
                    regex::Regex::new(&format!(r"^(?:.*\.{k}$)"))
                        .is_ok_and(|re| re.is_match(module))
                })
                .or_else(|| m.iter().find(|(k, _)| k.as_str() == module))
                .map(|(_, v)| v)
        });
    match pattern.or_else(|| cfg.raw.get("block_size")) {
        None => Some(256),
        Some(v) => v.as_u64().filter(|&b| b > 0),
    }
}

/// A Linear module whose `ΔW` (d×k, row-major) is given whole, scale 1: the form of the PEFT
/// tuners whose update does not depend on W0 and is not low-rank (C3A, GraLoRA).
pub(super) fn full_diff(name: String, (d, k): (usize, usize), diff: Vec<f32>) -> LoraModule {
    LoraModule {
        name,
        kind: ModuleKind::Linear,
        rank: d.min(k),
        alpha: 1.0,
        scale: 1.0,
        out_features: d,
        in_features: k,
        bias: None,
        factors: Factors::Full {
            diff: Data::Owned(Arc::new(diff)),
        },
        base_transposed: false,
        dora_magnitude: None,
        dora_rule: DoraRule::Peft,
    }
}
