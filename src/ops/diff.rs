//! `diff`: per-tensor comparison of two checkpoints, so a pipeline can assert that a merge
//! reproduced a reference.
//!
//! For every tensor name in either checkpoint: present in one only; dtype or shape differ;
//! otherwise, for float tensors, the largest absolute difference and the relative Frobenius
//! difference `‖a − b‖_F / ‖b‖_F` (f64 sums; `‖a − b‖_F` when `b` is zero), and whether the
//! bytes are identical; non-float tensors are compared byte for byte. A tensor passes when it is
//! in both, with equal dtype and shape, and (float) its relative difference is ≤ the tolerance
//! and its max-abs difference ≤ `max_abs` when given, or (other dtypes) its bytes are equal.
//! Tensors are streamed from the memory maps, one at a time, pages released after use.
//!
//! Must not print or write anything: the report goes back to the caller.

use crate::dtype::{self, Dtype};
use crate::error::{Opt, OptionError};
use crate::io::gguf::{self, GgufModel};
use crate::io::Checkpoint;
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;

/// Options of a diff.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Largest accepted relative Frobenius difference per float tensor.
    pub tolerance: f64,
    /// Largest accepted absolute difference per element (float tensors), if any.
    pub max_abs: Option<f64>,
    /// Compare only the tensors both hold: one present on one side only does not fail.
    pub common: bool,
}

/// One side of a diff, opened (headers read and checked, no tensor data yet).
enum Input {
    Checkpoint(Checkpoint),
    Gguf(GgufModel),
}

/// A validated diff, the shape of every operation: [`DiffOptions`] → [`DiffPlan::new`] (the
/// options checked, both inputs opened) → [`DiffPlan::run`] → [`DiffReport`]. Two GGUF models
/// are compared with [`diff_gguf`], two Hugging Face checkpoints with [`diff`], one of each
/// with [`diff_gguf_checkpoint`] (in Hugging Face terms).
pub struct DiffPlan {
    a: (String, Input),
    b: (String, Input),
    options: DiffOptions,
}

impl DiffPlan {
    /// Checks the options (`tolerance` and `max_abs` finite and ≥ 0), then opens `a` and `b`,
    /// each as a GGUF model or a safetensors checkpoint after its first bytes.
    pub fn new(a: &Path, b: &Path, options: DiffOptions) -> Result<Self> {
        let bad = |x: f64| !(x >= 0.0 && x.is_finite());
        for (opt, value) in [
            (Opt::Tolerance, Some(options.tolerance)),
            (Opt::MaxAbs, options.max_abs),
        ] {
            if value.is_some_and(bad) {
                bail!(OptionError::new(move |o| format!(
                    "{} must be a finite number ≥ 0",
                    o.opt(opt)
                )));
            }
        }
        let open = |p: &Path| -> Result<(String, Input)> {
            let side = if gguf::is_gguf(p) {
                Input::Gguf(GgufModel::open(p)?)
            } else {
                Input::Checkpoint(Checkpoint::open(p)?)
            };
            Ok((p.display().to_string(), side))
        };
        Ok(DiffPlan {
            a: open(a)?,
            b: open(b)?,
            options,
        })
    }

    /// Compares every tensor; the report says whether all passed.
    pub fn run(&self) -> Result<DiffReport> {
        let ((na, a), (nb, b), opts) = (&self.a, &self.b, &self.options);
        match (a, b) {
            (Input::Gguf(ga), Input::Gguf(gb)) => diff_gguf(ga, gb, na.clone(), nb.clone(), opts),
            (Input::Checkpoint(ca), Input::Checkpoint(cb)) => diff(ca, cb, opts),
            (Input::Gguf(g), Input::Checkpoint(c)) => {
                diff_gguf_checkpoint(g, c, true, (na.clone(), nb.clone()), opts)
            }
            (Input::Checkpoint(c), Input::Gguf(g)) => {
                diff_gguf_checkpoint(g, c, false, (na.clone(), nb.clone()), opts)
            }
        }
    }
}

/// One tensor's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct TensorDiff {
    pub name: String,
    /// `both`, `only_a` or `only_b`.
    pub presence: &'static str,
    pub dtype_a: Option<String>,
    pub dtype_b: Option<String>,
    pub shape_a: Option<Vec<usize>>,
    pub shape_b: Option<Vec<usize>>,
    pub identical: bool,
    /// Float tensors of equal shape only.
    pub max_abs_diff: Option<f64>,
    pub rel_fro_diff: Option<f64>,
    pub pass: bool,
}

impl TensorDiff {
    /// A tensor's row before its values are compared: `a` and `b` are its (type name, shape)
    /// on each side, `None` where it is missing. A tensor on one side only fails unless
    /// `common` is set (then it is listed but does not fail); a tensor on both sides fails
    /// until a comparison passes it.
    fn new(
        name: &str,
        a: Option<(String, Vec<usize>)>,
        b: Option<(String, Vec<usize>)>,
        opts: &DiffOptions,
    ) -> Self {
        let presence = match (&a, &b) {
            (Some(_), Some(_)) => "both",
            (Some(_), None) => "only_a",
            _ => "only_b",
        };
        let (dtype_a, shape_a) = a.unzip();
        let (dtype_b, shape_b) = b.unzip();
        TensorDiff {
            name: name.to_owned(),
            presence,
            dtype_a,
            dtype_b,
            shape_a,
            shape_b,
            identical: false,
            max_abs_diff: None,
            rel_fro_diff: None,
            pass: presence != "both" && opts.common,
        }
    }

    /// Records the value comparison of `x` (side a) against `y` (side b) and the verdict:
    /// identical, or within `tolerance` (relative Frobenius) and `max_abs`.
    fn judge_values<T: Copy + Into<f64>>(&mut self, x: &[T], y: &[T], opts: &DiffOptions) {
        let (mx, rel) = compare_values(x, y);
        self.max_abs_diff = Some(mx);
        self.rel_fro_diff = Some(rel);
        self.pass =
            self.identical || (rel <= opts.tolerance && opts.max_abs.is_none_or(|m| mx <= m));
    }
}

/// The report of a diff.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub a: String,
    pub b: String,
    pub tolerance: f64,
    pub max_abs: Option<f64>,
    /// Whether only shared tensors were judged (`--common`).
    pub common: bool,
    /// Tensors both hold in different dtypes (compared by value when both are float).
    pub dtype_changes: usize,
    pub tensors_compared: usize,
    pub identical: usize,
    pub failed: usize,
    pub only_in_a: usize,
    pub only_in_b: usize,
    pub max_rel_fro_diff: f64,
    pub max_abs_diff: f64,
    pub pass: bool,
    pub tensors: Vec<TensorDiff>,
}

/// Compares every tensor of `a` and `b`.
pub fn diff(a: &Checkpoint, b: &Checkpoint, opts: &DiffOptions) -> Result<DiffReport> {
    let names: BTreeSet<&str> = a.names().chain(b.names()).collect();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let (ia, ib) = (a.info(name), b.info(name));
        let mut d = TensorDiff::new(
            name,
            ia.map(|i| (dtype::name(i.dtype), i.shape.clone())),
            ib.map(|i| (dtype::name(i.dtype), i.shape.clone())),
            opts,
        );
        if let (Some(ia), Some(ib)) = (ia, ib) {
            // Float tensors of equal shape are compared by value whatever their dtypes (a
            // bf16 copy of an f32 checkpoint differs by its rounding only); the dtype change is
            // reported. Other dtypes must match and be byte-identical.
            let comparable = ia.shape == ib.shape
                && (ia.dtype == ib.dtype
                    || (dtype::is_float_compute(ia.dtype) && dtype::is_float_compute(ib.dtype)));
            if comparable {
                let (fa, fb) = (
                    a.file_of(name).expect("listed"),
                    b.file_of(name).expect("listed"),
                );
                let (va, vb) = (fa.view_info(ia)?, fb.view_info(ib)?);
                d.identical = ia.dtype == ib.dtype && va.data == vb.data;
                if ia.dtype == Dtype::F64 || ib.dtype == Dtype::F64 {
                    // In f64: an f32 reading would round differences below 1e-7 away.
                    d.judge_values(&va.to_f64(), &vb.to_f64(), opts);
                } else if dtype::is_float_compute(ia.dtype) {
                    d.judge_values(&va.to_f32(), &vb.to_f32(), opts);
                } else {
                    d.pass = d.identical;
                }
                fa.release(ia);
                fb.release(ib);
            }
        }
        tensors.push(d);
    }
    Ok(summarize(
        a.root.display().to_string(),
        b.root.display().to_string(),
        opts,
        tensors,
    ))
}

/// `(max |x − y|, ‖x − y‖_F / ‖y‖_F)` in f64 (`‖x − y‖_F` when `y` is zero). Equal values are
/// no difference, equal infinities and two NaNs included; a NaN against anything else, or an
/// infinity against another value, is an infinite one. `‖y‖_F` sums the finite values of `y`
/// only, so an infinity both sides share does not hide the other elements' differences.
fn compare_values<T: Copy + Into<f64>>(x: &[T], y: &[T]) -> (f64, f64) {
    let (mut num, mut den, mut mx) = (0f64, 0f64, 0f64);
    for (&p, &q) in x.iter().zip(y) {
        let (p, q): (f64, f64) = (p.into(), q.into());
        let e = if p == q || (p.is_nan() && q.is_nan()) {
            0.0
        } else if p.is_nan() || q.is_nan() {
            f64::INFINITY
        } else {
            (p - q).abs()
        };
        num += e * e;
        if q.is_finite() {
            den += q * q;
        }
        mx = mx.max(e);
    }
    let rel = if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    };
    (mx, rel)
}

/// Compares every tensor of two GGUF models (files or split sets) by name. Tensors of equal
/// shape are compared by their dequantized values whatever their types (a Q8_0 copy of an F16
/// model differs by its rounding only; the type change is reported); a type lorakit cannot
/// dequantize must be the same on both sides and is compared byte for byte. Shapes are in
/// PyTorch order (ggml's dims reversed), types by their ggml names.
pub fn diff_gguf(
    a: &crate::io::gguf::GgufModel,
    b: &crate::io::gguf::GgufModel,
    a_name: String,
    b_name: String,
    opts: &DiffOptions,
) -> Result<DiffReport> {
    let names: BTreeSet<&str> = a
        .tensors()
        .chain(b.tensors())
        .map(|(_, t)| t.name.as_str())
        .collect();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let (ia, ib) = (a.get(name), b.get(name));
        let mut d = TensorDiff::new(
            name,
            ia.map(|(_, t)| (t.ty.name().to_owned(), t.shape())),
            ib.map(|(_, t)| (t.ty.name().to_owned(), t.shape())),
            opts,
        );
        if let (Some((fa, ta)), Some((fb, tb))) = (ia, ib) {
            if ta.dims == tb.dims {
                let (va, vb) = (fa.view(ta), fb.view(tb));
                d.identical = ta.ty == tb.ty && va.data == vb.data;
                if ta.ty.can_dequantize() && tb.ty.can_dequantize() {
                    let x = crate::io::gguf::dequantize(fa.path(), va)?;
                    let y = crate::io::gguf::dequantize(fb.path(), vb)?;
                    d.judge_values(&x, &y, opts);
                } else {
                    d.pass = d.identical;
                }
            }
        }
        tensors.push(d);
    }
    Ok(summarize(a_name, b_name, opts, tensors))
}

fn summarize(a: String, b: String, opts: &DiffOptions, tensors: Vec<TensorDiff>) -> DiffReport {
    let failed = tensors.iter().filter(|t| !t.pass).count();
    // `--common` with no tensor on both sides compared nothing: no pass (a recipe's check step
    // would otherwise pass on two unrelated files).
    let nothing_shared =
        opts.common && !tensors.is_empty() && tensors.iter().all(|t| t.presence != "both");
    DiffReport {
        a,
        b,
        tolerance: opts.tolerance,
        max_abs: opts.max_abs,
        common: opts.common,
        dtype_changes: tensors
            .iter()
            .filter(|t| t.presence == "both" && t.dtype_a != t.dtype_b)
            .count(),
        tensors_compared: tensors.iter().filter(|t| t.presence == "both").count(),
        identical: tensors.iter().filter(|t| t.identical).count(),
        failed,
        only_in_a: tensors.iter().filter(|t| t.presence == "only_a").count(),
        only_in_b: tensors.iter().filter(|t| t.presence == "only_b").count(),
        max_rel_fro_diff: tensors
            .iter()
            .filter_map(|t| t.rel_fro_diff)
            .fold(0.0, f64::max),
        max_abs_diff: tensors
            .iter()
            .filter_map(|t| t.max_abs_diff)
            .fold(0.0, f64::max),
        pass: failed == 0 && !nothing_shared,
        tensors,
    }
}

/// One side of a mixed diff: a tensor's type name, PyTorch shape and values.
enum Side<'a> {
    Gguf {
        file: &'a crate::io::gguf::GgufFile,
        info: &'a crate::io::gguf::TensorInfo,
        /// Heads of the q/k permutation to undo, if any.
        heads: Option<usize>,
    },
    Safetensors {
        ckpt: &'a Checkpoint,
        name: &'a str,
        /// Gemma's `*norm.weight` against a GGUF: compared as llama.cpp's converter stores it,
        /// `w + 1` rounded in the tensor's dtype (`conversion/gemma.py` `modify_tensors`, as
        /// `ops::merge::gguf_hf` writes it), so an exact conversion compares equal.
        plus_one: bool,
    },
}

impl Side<'_> {
    fn type_name(&self, c: &Checkpoint) -> String {
        match self {
            Side::Gguf { info, .. } => info.ty.name().to_owned(),
            Side::Safetensors { name, .. } => dtype::name(c.info(name).expect("listed").dtype),
        }
    }

    fn shape(&self) -> Vec<usize> {
        match self {
            Side::Gguf { info, .. } => info.shape(),
            Side::Safetensors { ckpt, name, .. } => ckpt.info(name).expect("listed").shape.clone(),
        }
    }

    /// Values in Hugging Face layout, or `None` for a type that has none lorakit can read.
    fn values(&self) -> Result<Option<Vec<f32>>> {
        Ok(match self {
            Side::Gguf { file, info, heads } => {
                if !info.ty.can_dequantize() {
                    return Ok(None);
                }
                let v = file.dequantize(info)?;
                let s = info.shape();
                Some(match heads {
                    Some(h) if s.len() == 2 => {
                        crate::io::gguf::names::unpermute_rows(&v, s[0], s[1], *h)
                    }
                    // A q/k bias: `LlamaModel.modify_tensors` permutes it as rows of one value.
                    Some(h) if s.len() == 1 => {
                        crate::io::gguf::names::unpermute_rows(&v, s[0], 1, *h)
                    }
                    _ => v,
                })
            }
            Side::Safetensors {
                ckpt,
                name,
                plus_one,
            } => {
                let info = ckpt.info(name).expect("listed");
                if !dtype::is_float_compute(info.dtype) {
                    return Ok(None);
                }
                let f = ckpt.file_of(name).expect("listed");
                let mut v = f.view_info(info)?.to_f32();
                if *plus_one {
                    for x in &mut v {
                        *x = dtype::round_to(info.dtype, *x + 1.0);
                    }
                }
                Some(v)
            }
        })
    }
}

/// Compares a GGUF model with a Hugging Face checkpoint by value, in Hugging Face terms: GGUF
/// tensors are named by gguf-py's `tensor_mapping.py` in reverse (`blk.N.attn_q.weight` →
/// `model.layers.N.self_attn.q_proj.weight`) and, for architecture `llama`, q/k rows are
/// un-permuted (llama.cpp's `LlamaModel.permute`, heads from the file) — so a merged GGUF can be
/// checked against a PEFT merge. `gguf_is_a` says which side the GGUF is (`b` is the
/// reference of the relative difference). Types differ by nature (a GGUF type against a
/// safetensors dtype); values are compared whenever both sides can be read.
pub fn diff_gguf_checkpoint(
    g: &crate::io::gguf::GgufModel,
    c: &Checkpoint,
    gguf_is_a: bool,
    names: (String, String),
    opts: &DiffOptions,
) -> Result<DiffReport> {
    use crate::io::gguf::{names as gn, Value};
    use std::collections::BTreeMap;
    let arch = g.architecture().unwrap_or("");
    let permute = gn::permutes(arch).unwrap_or(false);
    let heads = |k: &str| {
        g.header()
            .get(&format!("{arch}.attention.{k}"))
            .and_then(Value::as_u64)
            .map(|v| v as usize)
    };
    let (n_head, n_kv) = (heads("head_count"), heads("head_count_kv"));
    let mut gside: BTreeMap<String, Side> = BTreeMap::new();
    for (file, info) in g.tensors() {
        let hf = gn::hf_name_in(arch, &info.name).unwrap_or_else(|| info.name.clone());
        let h = match (permute, info.name.as_str()) {
            (true, n) if n.ends_with("attn_q.weight") || n.ends_with("attn_q.bias") => n_head,
            (true, n) if n.ends_with("attn_k.weight") || n.ends_with("attn_k.bias") => {
                n_kv.or(n_head)
            }
            _ => None,
        };
        gside.insert(
            hf,
            Side::Gguf {
                file,
                info,
                heads: h,
            },
        );
    }
    let all: BTreeSet<String> = gside
        .keys()
        .cloned()
        .chain(c.names().map(str::to_owned))
        .collect();
    let mut tensors = Vec::with_capacity(all.len());
    for name in &all {
        let gs = gside.get(name);
        let cs = c.info(name).map(|_| Side::Safetensors {
            ckpt: c,
            name: name.as_str(),
            plus_one: arch.starts_with("gemma") && name.ends_with("norm.weight"),
        });
        let (sa, sb) = if gguf_is_a {
            (gs, cs.as_ref())
        } else {
            (cs.as_ref(), gs)
        };
        let mut d = TensorDiff::new(
            name,
            sa.map(|s| (s.type_name(c), s.shape())),
            sb.map(|s| (s.type_name(c), s.shape())),
            opts,
        );
        if let (Some(a), Some(b)) = (sa, sb) {
            if a.shape() == b.shape() {
                if let (Some(x), Some(y)) = (a.values()?, b.values()?) {
                    // Identical only bit for bit (a bit-identical pair has max |x − y| = 0 and
                    // passes any threshold, so `judge_values`'s shortcut changes nothing here).
                    d.identical = x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits());
                    d.judge_values(&x, &y, opts);
                }
            }
        }
        tensors.push(d);
    }
    Ok(summarize(names.0, names.1, opts, tensors))
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    /// A bad threshold is refused before either input is opened, naming the library option.
    #[test]
    fn thresholds_are_checked_first_and_named_as_options() {
        let missing = Path::new("/nonexistent/lorakit-diff");
        for (options, opt) in [
            (
                DiffOptions {
                    tolerance: -1.0,
                    ..Default::default()
                },
                Opt::Tolerance,
            ),
            (
                DiffOptions {
                    tolerance: f64::NAN,
                    ..Default::default()
                },
                Opt::Tolerance,
            ),
            (
                DiffOptions {
                    max_abs: Some(f64::INFINITY),
                    ..Default::default()
                },
                Opt::MaxAbs,
            ),
        ] {
            let e = DiffPlan::new(missing, missing, options)
                .err()
                .expect("refused");
            let o = e.downcast_ref::<OptionError>().expect("an option error");
            assert_eq!(o.options(), vec![opt]);
            assert_eq!(
                o.to_string(),
                format!("`{}` must be a finite number ≥ 0", opt.name())
            );
        }
        // Valid options reach the inputs, and the missing file is the error.
        let e = DiffPlan::new(missing, missing, DiffOptions::default())
            .err()
            .expect("refused");
        assert!(e.downcast_ref::<OptionError>().is_none(), "{e:#}");
    }
}
