//! Running a planned extraction: each tensor factored (or stored whole, or skipped), and the
//! outcomes assembled into the adapter and its report. Must not decide what is extracted.

use super::factor::{closed_form_residual_sq, factorize, module_seed, residual_sq};
use super::operators::{DeltaInput, DeltaOperators};
use super::{
    module_of, EmbeddingMode, ExtractPlan, ExtractSummary, FullReport, Item, ItemKind, Layout,
    LowRankOutcome, ModuleReport, Outcome, TensorReport, Timings, Totals, WholeModule,
};
use crate::adapter::{Adapter, Data, Factors, FullTensor, LoraModule, ModuleKind};
use crate::dtype::{self, Dtype};
use crate::error::{InputError, Opt};
use crate::linalg::{self, RsvdOptions};
use anyhow::{bail, Result};
use ndarray::{Array2, ArrayView2};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

impl ExtractPlan {
    /// Runs the extraction and commits the output. On failure nothing is left behind:
    /// temporary files are removed, and so is the output folder if this run created it.
    pub fn run(self, ops: &dyn DeltaOperators) -> Result<ExtractSummary> {
        let start = Instant::now();
        let bar = self.options.progress.start(
            "extracting",
            self.items.len() as u64,
            crate::progress::Unit::Items,
        );
        let mut outcomes = Vec::with_capacity(self.items.len());
        for item in &self.items {
            outcomes.push(self.process(item, ops)?);
            bar.inc(1);
        }
        drop(bar);
        self.assemble(outcomes, ops.describe(), start)
    }

    /// Processes the tensors at `indices` (see [`Self::part_items`]) and returns their
    /// outcomes, for a split run's part file.
    pub fn process_items(
        &self,
        indices: &[usize],
        ops: &dyn DeltaOperators,
    ) -> Result<Vec<Outcome>> {
        let bar = self.options.progress.start(
            "extracting",
            indices.len() as u64,
            crate::progress::Unit::Items,
        );
        let mut out = Vec::with_capacity(indices.len());
        for &j in indices {
            out.push(self.process(&self.items[j], ops)?);
            bar.inc(1);
        }
        drop(bar);
        Ok(out)
    }

    /// Extracts one tensor: everything [`Self::assemble`] needs from it.
    pub(super) fn process(&self, item: &Item, ops: &dyn DeltaOperators) -> Result<Outcome> {
        let o = &self.options;
        let mut out = Outcome::default();
        match &item.kind {
            ItemKind::NonFloat => {
                let a = self.base.view(&item.name)?;
                let b = self.tuned.view(&item.name)?;
                if a.data != b.data {
                    out.changed = Some(TensorReport::new(item, None, "non_float"));
                }
            }
            ItemKind::Other | ItemKind::EmbeddingWhole(_) => {
                let d = self.delta(item)?;
                let rel = d.rel_diff();
                self.release(&item.name);
                let is_changed = d.norm_sq > 0.0;
                self.recycle(d.values);
                match (&item.kind, is_changed) {
                    (_, false) => out.skipped = Some(TensorReport::new(item, rel, "unchanged")),
                    (ItemKind::EmbeddingWhole(EmbeddingMode::Full), true) => {
                        out.whole = Some(WholeModule {
                            module: item.module.clone(),
                            reason: "embedding_full".into(),
                            replace: true,
                        });
                    }
                    (ItemKind::EmbeddingWhole(_), true) => {
                        out.skipped = Some(TensorReport::new(item, rel, "embedding_skip"))
                    }
                    (_, true) if o.save_changed => {
                        out.whole = Some(WholeModule {
                            module: item.module.clone(),
                            reason: "save_changed".into(),
                            replace: false,
                        });
                        out.changed = Some(TensorReport::new(item, rel, "stored"));
                    }
                    (_, true) => out.changed = Some(TensorReport::new(item, rel, "not_stored")),
                }
            }
            ItemKind::LowRank(layout) => {
                let t0 = Instant::now();
                let d = self.delta(item)?;
                let rel = d.rel_diff();
                if d.norm_sq == 0.0 || rel.is_some_and(|r| r < o.min_diff) {
                    self.release(&item.name);
                    let why = if d.norm_sq == 0.0 {
                        "unchanged"
                    } else {
                        "below_min_diff"
                    };
                    out.skipped = Some(TensorReport::new(item, rel, why));
                    self.recycle(d.values);
                    return Ok(out);
                }
                let t_delta = t0.elapsed().as_secs_f64();
                let (rows, cols) = (d.rows, d.cols);
                let view = ArrayView2::from_shape((rows, cols), d.data()).expect("shape");
                let (w, w0) = (self.tuned.view(&item.name)?, self.base.view(&item.name)?);
                let input = DeltaInput {
                    name: &item.name,
                    rows,
                    cols,
                    w: w.data,
                    w_dtype: w.dtype,
                    w0: w0.data,
                    w0_dtype: w0.dtype,
                    delta: view,
                };
                let op = ops.operator(&input)?;
                let cap = o.rank.cap().min(rows).min(cols).max(1);
                let rsvd = RsvdOptions {
                    oversample: o
                        .oversample
                        .unwrap_or_else(|| linalg::default_oversample(cap)),
                    power_iters: o.power_iters,
                    seed: module_seed(o.seed, &item.name),
                };
                let t1 = Instant::now();
                let f = factorize(
                    op.as_ref(),
                    d.norm_sq,
                    &o.rank,
                    o.exact,
                    &rsvd,
                    o.max_power_iters,
                );
                drop(op);
                let t_factorize = t1.elapsed().as_secs_f64();
                let k = f.rank;
                let alpha = o.alpha.unwrap_or(k as f64);
                let scale = alpha / k as f64;
                let (mut bs, mut as_) = linalg::split_factors(&f.svd, k);
                if scale != 1.0 {
                    let c = (1.0 / scale).sqrt() as f32;
                    bs.mapv_inplace(|x| x * c);
                    as_.mapv_inplace(|x| x * c);
                }
                // Round to the output dtype now, so the error is that of the file.
                let round = |a: &mut Array2<f32>| {
                    if o.dtype != Dtype::F32 {
                        let r = dtype::decode(
                            o.dtype,
                            &dtype::encode(o.dtype, a.as_slice().expect("standard layout")),
                        );
                        a.as_slice_mut()
                            .expect("standard layout")
                            .copy_from_slice(&r);
                    }
                };
                round(&mut bs);
                round(&mut as_);
                let t2 = Instant::now();
                let res = match closed_form_residual_sq(&f, d.norm_sq) {
                    Some(r) if o.dtype == Dtype::F32 && !f.exact => r,
                    _ => residual_sq(view, bs.view(), as_.view(), scale as f32),
                };
                let t_error = t2.elapsed().as_secs_f64();
                self.release(&item.name);
                let raw = |a: Array2<f32>| a.into_raw_vec_and_offset().0;
                // Canonical orientation: B is out×k, A is k×in.
                let (kind, out_f, in_f, b, a, transposed) = match layout {
                    Layout::Linear => (ModuleKind::Linear, rows, cols, raw(bs), raw(as_), false),
                    Layout::Conv(kernel) => (
                        ModuleKind::Conv {
                            kernel: kernel.clone(),
                        },
                        rows,
                        cols,
                        raw(bs),
                        raw(as_),
                        false,
                    ),
                    Layout::LinearT | Layout::Embedding => {
                        let kind = if *layout == Layout::Embedding {
                            ModuleKind::Embedding
                        } else {
                            ModuleKind::Linear
                        };
                        let b = as_.t().as_standard_layout().into_owned();
                        let a = bs.t().as_standard_layout().into_owned();
                        (kind, cols, rows, raw(b), raw(a), true)
                    }
                };
                let report = ModuleReport {
                    name: item.module.clone(),
                    tensor: item.name.clone(),
                    kind: kind.to_string(),
                    shape: item.shape.clone(),
                    rank: k,
                    alpha,
                    scale,
                    energy_kept: f.energy_kept,
                    rel_error: (res / d.norm_sq).sqrt(),
                    delta_norm: d.norm_sq.sqrt(),
                    rel_diff: rel,
                    method: if f.exact { "exact" } else { "randomized" }.into(),
                    oversample: if f.exact { 0 } else { rsvd.oversample },
                    power_iters: f.power_iters,
                    seconds: t0.elapsed().as_secs_f64(),
                    timings: Timings {
                        delta: t_delta,
                        factorize: t_factorize,
                        error: t_error,
                    },
                };
                let norm_sq = d.norm_sq;
                self.recycle(d.values);
                out.low_rank = Some(Box::new(LowRankOutcome {
                    report,
                    kind,
                    out_features: out_f,
                    in_features: in_f,
                    transposed,
                    residual_sq: res,
                    norm_sq,
                    full_delta_bytes: (rows * cols * d.elem_bytes) as u64,
                    a,
                    b,
                }));
            }
        }
        Ok(out)
    }

    /// Builds and writes the adapter from every tensor's outcome (in plan order) and commits it.
    /// A split run's `finalize` calls this with the outcomes read back from the part files, so
    /// the file is byte-identical to a single run's.
    pub fn assemble(
        &self,
        outcomes: Vec<Outcome>,
        device: String,
        start: Instant,
    ) -> Result<ExtractSummary> {
        let o = &self.options;
        if outcomes.len() != self.items.len() {
            bail!(
                "internal: {} outcomes for {} planned tensors",
                outcomes.len(),
                self.items.len()
            );
        }
        let mut modules: Vec<LoraModule> = Vec::new();
        let mut reports: Vec<ModuleReport> = Vec::new();
        let mut skipped = Vec::new();
        let mut changed: Vec<TensorReport> = Vec::new();
        // Modules whose tensors are stored whole: module → reason.
        let mut whole: BTreeMap<String, String> = BTreeMap::new();
        let mut lora_biases: Vec<String> = Vec::new();
        let (mut total_res, mut total_norm, mut total_kept, mut full_delta_bytes) =
            (0f64, 0f64, 0f64, 0u64);
        for out in outcomes {
            skipped.extend(out.skipped);
            changed.extend(out.changed);
            if let Some(w) = out.whole {
                if w.replace {
                    whole.insert(w.module, w.reason);
                } else {
                    whole.entry(w.module).or_insert(w.reason);
                }
            }
            if let Some(lr) = out.low_rank {
                let lr = *lr;
                total_res += lr.residual_sq;
                total_norm += lr.norm_sq;
                total_kept += lr.report.energy_kept * lr.norm_sq;
                full_delta_bytes += lr.full_delta_bytes;
                modules.push(LoraModule {
                    name: lr.report.name.clone(),
                    kind: lr.kind,
                    rank: lr.report.rank,
                    alpha: lr.report.alpha,
                    scale: lr.report.scale,
                    out_features: lr.out_features,
                    in_features: lr.in_features,
                    factors: Factors::Lora {
                        a: Data::Owned(Arc::new(lr.a)),
                        b: Data::Owned(Arc::new(lr.b)),
                    },
                    base_transposed: lr.transposed,
                    dora_magnitude: None,
                    dora_rule: Default::default(),
                    bias: None,
                });
                reports.push(lr.report);
            }
        }

        // Whole tensors: PEFT `modules_to_save` (every direct tensor of the module, from the
        // tuned checkpoint), or `{module}.base_layer.bias` with `bias: "lora_only"` for a changed
        // bias of a module that is also a LoRA module.
        let lora_names: BTreeSet<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        let mut full_tensors = Vec::new();
        let mut full_reports = Vec::new();
        let mut modules_to_save = Vec::new();
        for (module, reason) in &whole {
            if lora_names.contains(module.as_str()) {
                let bias = format!("{module}.bias");
                if let Some(c) = changed.iter().find(|c| {
                    c.reason == "stored" && c.name != bias && module_of(&c.name) == module
                }) {
                    let (name, module) = (c.name.clone(), module.clone());
                    bail!(InputError::option(
                        self.tuned.file_of(&name).expect("listed").path(),
                        move |o| {
                            format!(
                            "tensor `{name}` changed, but its module `{module}` is extracted as LoRA and PEFT cannot also save it whole; exclude the module or drop {}",
                            o.opt(Opt::SaveChanged)
                        )
                        }
                    ));
                }
                lora_biases.push(module.clone());
                continue;
            }
            modules_to_save.push(module.clone());
            for t in self.tuned.names().filter(|t| module_of(t) == module) {
                let info = self.tuned.info(t).expect("listed");
                if !dtype::is_float_compute(info.dtype) {
                    bail!(InputError::invalid(
                        self.tuned.file_of(t).expect("listed").path(),
                        format!("tensor `{t}`: module `{module}` is saved whole, but this tensor is {} (only float tensors can be stored)", dtype::name(info.dtype))
                    ));
                }
                let v = self.tuned.read_f32(t)?;
                self.release_tuned(t);
                full_reports.push(FullReport {
                    name: t.to_owned(),
                    shape: info.shape.clone(),
                    reason: reason.clone(),
                });
                full_tensors.push(FullTensor {
                    name: t.to_owned(),
                    data: Data::Owned(Arc::new(v)),
                    shape: info.shape.clone(),
                    rows: None,
                });
            }
        }
        let bias_mode = if lora_biases.is_empty() {
            "none"
        } else {
            "lora_only"
        };
        if !lora_biases.is_empty() {
            // PEFT's `lora_only` saves the bias of every LoRA layer that has one.
            for m in &modules {
                let t = format!("{}.bias", m.name);
                if let Some(info) = self.tuned.info(&t) {
                    let v = self.tuned.read_f32(&t)?;
                    full_reports.push(FullReport {
                        name: t.clone(),
                        shape: info.shape.clone(),
                        reason: "lora_only_bias".into(),
                    });
                    full_tensors.push(FullTensor {
                        name: format!("{}.base_layer.bias", m.name),
                        data: Data::Owned(Arc::new(v)),
                        shape: info.shape.clone(),
                        rows: None,
                    });
                }
            }
        }
        modules.sort_by(|a, b| a.name.cmp(&b.name));

        let mut config = serde_json::Map::new();
        config.insert("bias".into(), serde_json::json!(bias_mode));
        config.insert("task_type".into(), serde_json::Value::Null);
        let base_model = o
            .base_model
            .clone()
            .unwrap_or_else(|| self.base.root.display().to_string());
        let adapter = Adapter {
            full_tensors,
            base_model: Some(base_model),
            modules_to_save: modules_to_save.clone(),
            config: Some(serde_json::Value::Object(config)),
            ..Adapter::of_modules(o.format, self.out.clone(), modules)
        };
        let layout = o.format.layout();
        let elem = dtype::byte_len(o.dtype, 1).expect("float dtype") as u64;
        let adapter_params = adapter.parameter_count() as u64
            + if layout.alpha_tensors() {
                adapter.modules.len() as u64
            } else {
                0
            };
        let adapter_bytes = adapter_params * elem;

        if adapter.modules.is_empty() && adapter.full_tensors.is_empty() {
            let (root, searched, unstored) = (
                self.base.root.display().to_string(),
                self.items.len(),
                changed.len(),
            );
            bail!(InputError::option(&self.tuned.root, move |o| {
                format!(
                "no module differs from the base {root} among the {searched} tensor(s) searched{}; an adapter with nothing in it would load nowhere, so nothing was written",
                if unstored == 0 { String::new() } else { format!(" ({unstored} changed tensor(s) could not be stored: pass {})", o.opt(Opt::SaveChanged)) }
            )
            }));
        }
        let mut output = crate::ops::output::adapter_output(o.format, &self.out)?;
        let meta = self.metadata();
        let args = crate::adapter::formats::WriteArgs {
            out: &self.out,
            dtype: Some(o.dtype),
            metadata: &meta,
            prefix: &o.kohya_prefix,
        };
        layout.write(&adapter, &mut output, args)?;
        let bytes_written = output.commit()?;

        let ranks: Vec<usize> = reports.iter().map(|r| r.rank).collect();
        let totals = Totals {
            module_count: reports.len(),
            rank_min: ranks.iter().copied().min().unwrap_or(0),
            rank_max: ranks.iter().copied().max().unwrap_or(0),
            rel_error: if total_norm > 0.0 {
                (total_res / total_norm).sqrt()
            } else {
                0.0
            },
            energy_kept: if total_norm > 0.0 {
                total_kept / total_norm
            } else {
                1.0
            },
            delta_norm: total_norm.sqrt(),
        };
        Ok(ExtractSummary {
            base: self.base.root.display().to_string(),
            tuned: self.tuned.root.display().to_string(),
            out: self.out.display().to_string(),
            format: o.format,
            device,
            method: if o.exact { "exact" } else { "randomized" },
            oversample: o.oversample,
            power_iters: o.power_iters,
            max_power_iters: o.max_power_iters,
            seed: o.seed,
            rank_rule: o.rank,
            alpha: o.alpha,
            dtype: dtype::name(o.dtype),
            modules: reports,
            full_tensors: full_reports,
            modules_to_save,
            changed_tensors: changed,
            skipped,
            excluded: self.excluded,
            totals,
            adapter_bytes,
            full_delta_bytes,
            compression: if adapter_bytes > 0 {
                full_delta_bytes as f64 / adapter_bytes as f64
            } else {
                0.0
            },
            bytes_written,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}
