//! LoRA training on a frozen Llama-family model (CPU, f32): data packing, PEFT's initialisation,
//! AdamW with torch's semantics, warmup + cosine schedule, global-norm gradient clipping,
//! checkpoints that resume bit for bit.
//!
//! * Data: one token stream (see [`crate::model::data`]) cut into sequences of `seq_len`
//!   tokens (the tail that does not fill one is dropped), the order shuffled per epoch by the
//!   seed. Batch `s` holds sequences `s·batch .. (s+1)·batch` of the endless epoch-by-epoch
//!   order, so the data position is a function of the step alone. The loss is transformers'
//!   causal-LM loss with labels = inputs: the mean cross-entropy of each next token within a
//!   sequence.
//! * Initialisation (PEFT `LoraLayer.reset_lora_parameters`, `init_lora_weights=True`): `A` by
//!   `kaiming_uniform_(a=√5)`, i.e. U(−1/√in, 1/√in); `B = 0`, so step 0 computes the base model.
//!   Only `A` and `B` are trained.
//! * Optimiser: torch's `AdamW` (decoupled weight decay `p ← p·(1 − lr·wd)`, then Adam with bias
//!   correction, `eps` added to `√v̂`) on every factor, after `clip_grad_norm_` (global L2 norm
//!   over all factors, scaled by `max/(norm + 1e-6)` when above `max`). Learning rate per step
//!   from transformers' schedules: linear warmup from 0 over `warmup` steps, then cosine (or
//!   linear, or constant) decay to 0 at `steps`.
//! * State: the adapter (PEFT folder, f32) plus `trainer_state.safetensors` (Adam moments) and
//!   `trainer_state.json` (step, options, data fingerprint, history), written through one
//!   [`Output`] (each file atomically, the state JSON last; all three record the step, and a
//!   folder whose files disagree — a save interrupted between renames — is refused). Resuming
//!   from such a folder continues exactly as if the run had not stopped (the moments and
//!   factors are stored exactly, and the data order is a function of the step).
//!
//! Must not print: progress goes to the `Progress` trait and results into the report.

use crate::adapter::{Adapter, Data, Factors, Format, LoraModule, ModuleKind};
use crate::dtype::Dtype;
use crate::error::{InputError, Opt, OptionError};
use crate::io::{Output, SafetensorsFile, TensorSpec};
use crate::linalg::rng::{SplitMix64, Xoshiro256PlusPlus};
use crate::model::linear::Lora;
use crate::model::{Model, NO_TARGET};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

mod dataset;
pub use dataset::Dataset;

/// Name of the trainer-state files written beside the adapter.
pub const STATE_JSON: &str = "trainer_state.json";
pub const STATE_TENSORS: &str = "trainer_state.safetensors";

/// Learning-rate decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// transformers `get_cosine_schedule_with_warmup` (half a cosine to 0).
    Cosine,
    /// transformers `get_linear_schedule_with_warmup`.
    Linear,
    /// transformers `get_constant_schedule_with_warmup`.
    Constant,
}

/// Hyper-parameters of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub steps: usize,
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup: usize,
    pub weight_decay: f64,
    /// Maximum global gradient norm; 0 disables clipping.
    pub grad_clip: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub batch: usize,
    pub seq_len: usize,
    pub seed: u64,
}

/// Learning rate for the update that follows `step` completed steps (transformers'
/// `LambdaLR` schedules, multiplied by the base rate).
pub fn lr_at(o: &TrainOptions, step: usize) -> f64 {
    if step < o.warmup {
        return o.lr * step as f64 / o.warmup.max(1) as f64;
    }
    let rest = (o.steps.saturating_sub(o.warmup)).max(1) as f64;
    let progress = (step - o.warmup) as f64 / rest;
    let f = match o.schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => ((o.steps as f64 - step as f64) / rest).max(0.0),
        Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    };
    o.lr * f
}

/// A trained module: where it is in the model and its LoRA settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedModule {
    pub name: String,
    #[serde(skip)]
    pub slot: usize,
    pub rank: usize,
    pub alpha: f64,
}

/// How the trainable adapters start.
#[derive(Debug)]
pub enum Init<'a> {
    /// PEFT's default: A Kaiming-uniform, B zero, on the layers matching `targets`.
    Fresh {
        targets: &'a [String],
        rank: usize,
        alpha: f64,
    },
    /// The factors, ranks and alphas of an existing adapter (linear modules only).
    Adapter(&'a Adapter),
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Steps completed after this one.
    pub step: usize,
    /// Mean loss of the batch, before the update.
    pub loss: f64,
    /// Learning rate of the update.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// An evaluation during training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalStats {
    pub step: usize,
    pub loss: f64,
    pub perplexity: f64,
}

/// `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateFile {
    pub lorakit_version: String,
    pub step: usize,
    pub rslora: bool,
    pub modules: Vec<TrainedModule>,
    pub options: TrainOptions,
    pub data_tokens: usize,
    pub data_fingerprint: String,
    pub history: Vec<StepStats>,
    pub eval: Vec<EvalStats>,
}

/// How [`Trainer::run`] drives a run: periodic evaluation and checkpoints, where the adapter
/// goes, and what its config records.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// Evaluate every N steps (0: only at the end, when there is evaluation data).
    pub eval_every: usize,
    /// Save `checkpoint-N` every N steps (0: never).
    pub save_every: usize,
    pub out: std::path::PathBuf,
    /// `base_model_name_or_path` of the written adapter.
    pub base_model: String,
    /// `target_modules` of the written adapter.
    pub targets: Vec<String>,
}

/// What [`Trainer::run`] did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub start_step: usize,
    /// Wall time of the steps (evaluations included, the final save not).
    pub seconds: f64,
    pub tokens_per_step: usize,
    /// `checkpoint-N` folders written.
    pub checkpoints: Vec<String>,
}

/// A training run in progress.
#[derive(Debug)]
pub struct Trainer<'c> {
    pub model: Model<'c, f32>,
    pub modules: Vec<TrainedModule>,
    pub rslora: bool,
    pub options: TrainOptions,
    pub data: Dataset,
    pub step: usize,
    /// Adam first and second moments, per module: (A, B).
    m: Vec<(Vec<f32>, Vec<f32>)>,
    v: Vec<(Vec<f32>, Vec<f32>)>,
    pub history: Vec<StepStats>,
    pub eval: Vec<EvalStats>,
}

impl<'c> Trainer<'c> {
    /// Adds trainable adapters to `model` and sets up the optimiser.
    pub fn new(
        mut model: Model<'c, f32>,
        init: Init,
        rslora: bool,
        options: TrainOptions,
        data: Dataset,
    ) -> Result<Self> {
        if options.batch == 0 || options.steps == 0 {
            bail!(OptionError::new(|o| format!(
                "{} and {} must be at least 1",
                o.opt(Opt::Batch),
                o.opt(Opt::Steps)
            )));
        }
        if !(options.lr.is_finite() && options.lr >= 0.0) {
            bail!(OptionError::new(|o| format!(
                "{} must be a non-negative number",
                o.opt(Opt::Lr)
            )));
        }
        let mut modules = Vec::new();
        match init {
            Init::Fresh {
                targets,
                rank,
                alpha,
            } => {
                if rank == 0 {
                    bail!(OptionError::new(|o| format!(
                        "{} must be at least 1",
                        o.opt(Opt::Rank)
                    )));
                }
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(options.seed);
                for slot in model.select(targets)? {
                    let lin = model.linear_mut(slot);
                    let (d, k) = (lin.out_features(), lin.in_features());
                    // kaiming_uniform_(a=√5): gain √(2/(1+5)), bound gain·√(3/fan_in) = 1/√fan_in.
                    let bound = 1.0 / (k as f64).sqrt();
                    let a: Vec<f32> = (0..rank * k)
                        .map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32)
                        .collect();
                    lin.loras.push(Lora {
                        source: "trainable".into(),
                        a,
                        b: vec![0.0; d * rank],
                        rank,
                        scale: crate::adapter::scale_for(alpha, rank, rslora) as f32,
                        bias: None,
                        trainable: true,
                    });
                    modules.push(TrainedModule {
                        name: lin.name.clone(),
                        slot,
                        rank,
                        alpha,
                    });
                }
            }
            Init::Adapter(ad) => {
                for m in &ad.modules {
                    if m.kind != ModuleKind::Linear
                        || m.dora_magnitude.is_some()
                        || m.base_transposed
                    {
                        bail!(
                            "{}: module `{}` is not a plain linear LoRA; lorakit trains those only",
                            ad.path.display(),
                            m.name
                        );
                    }
                    let slot = model
                        .module_slot(ad.format, &m.name)
                        .map_err(|e| anyhow::Error::new(InputError::invalid(&ad.path, e)))?;
                    let (b, a) = ad.factors(m)?;
                    let lin = model.linear_mut(slot);
                    if (m.out_features, m.in_features) != (lin.out_features(), lin.in_features()) {
                        bail!(
                            "{}: module `{}` is {}→{}, the layer {}→{}",
                            ad.path.display(),
                            m.name,
                            m.in_features,
                            m.out_features,
                            lin.in_features(),
                            lin.out_features()
                        );
                    }
                    if lin.trainable().is_some() {
                        bail!("{}: two modules on `{}`", ad.path.display(), lin.name);
                    }
                    lin.loras.push(Lora {
                        source: "trainable".into(),
                        a: a.to_vec(),
                        b: b.to_vec(),
                        rank: m.rank,
                        scale: m.scale as f32,
                        bias: None,
                        trainable: true,
                    });
                    modules.push(TrainedModule {
                        name: lin.name.clone(),
                        slot,
                        rank: m.rank,
                        alpha: m.alpha,
                    });
                }
                modules.sort_by_key(|m| m.slot);
                if modules.is_empty() {
                    bail!("{}: no modules to train", ad.path.display());
                }
            }
        }
        let zeros = |model: &Model<f32>, m: &TrainedModule| {
            let l = model.linear(m.slot).trainable().expect("trainable");
            (vec![0f32; l.a.len()], vec![0f32; l.b.len()])
        };
        let m: Vec<_> = modules.iter().map(|x| zeros(&model, x)).collect();
        let v = m.clone();
        Ok(Trainer {
            model,
            modules,
            rslora,
            options,
            data,
            step: 0,
            m,
            v,
            history: Vec::new(),
            eval: Vec::new(),
        })
    }

    /// Trainable parameters.
    pub fn parameters(&self) -> usize {
        self.modules
            .iter()
            .map(|m| {
                let l = self.model.linear(m.slot);
                m.rank * (l.in_features() + l.out_features())
            })
            .sum()
    }

    /// Steps to `options.steps` from the current step (0, or where [`Trainer::resume`] left
    /// off), evaluating on `eval_data` every `plan.eval_every` steps and once more at the end
    /// when the last step was not an evaluation step, saving `checkpoint-N` folders every
    /// `plan.save_every` steps, and the final adapter (with its resumable state) into
    /// `plan.out`. Progress: one item per step, the loss, learning rate and throughput as its
    /// message, evaluation results as notes.
    pub fn run(
        &mut self,
        plan: &RunPlan,
        eval_data: Option<&Dataset>,
        progress: &crate::progress::Reporter,
    ) -> Result<RunOutcome> {
        let steps = self.options.steps;
        let start = self.step;
        let pb = progress.start("train", steps as u64, crate::progress::Unit::Items);
        pb.set_position(start as u64);
        let tokens_per_step = self.options.batch * self.options.seq_len;
        let t0 = std::time::Instant::now();
        let mut checkpoints = Vec::new();
        let mut evaluated_at = None;
        while self.step < steps {
            let s = self.step()?;
            let el = t0.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                s.loss,
                s.lr,
                ((self.step - start) * tokens_per_step) as f64 / el
            ));
            pb.set_position(self.step as u64);
            if plan.eval_every > 0 && self.step.is_multiple_of(plan.eval_every) {
                if let Some(d) = eval_data {
                    let e = self.evaluate(d)?;
                    evaluated_at = Some(self.step);
                    pb.note(&format!(
                        "step {}: eval loss {:.4}, perplexity {:.3}",
                        e.step, e.loss, e.perplexity
                    ));
                }
            }
            if plan.save_every > 0 && self.step.is_multiple_of(plan.save_every) && self.step < steps
            {
                let dir = plan.out.join(format!("checkpoint-{}", self.step));
                self.save(&dir, &plan.base_model, &plan.targets)?;
                checkpoints.push(dir.display().to_string());
            }
        }
        drop(pb);
        let seconds = t0.elapsed().as_secs_f64();
        if let Some(d) = eval_data {
            if evaluated_at != Some(self.step) {
                self.evaluate(d)?;
            }
        }
        self.save(&plan.out, &plan.base_model, &plan.targets)?;
        Ok(RunOutcome {
            start_step: start,
            seconds,
            tokens_per_step,
            checkpoints,
        })
    }

    /// One optimiser step on the next batch.
    pub fn step(&mut self) -> Result<StepStats> {
        let o = self.options.clone();
        let (ids, targets) = self.data.batch(self.step, o.batch, o.seed);
        let (loss, mut grads) = self
            .model
            .loss_and_grads(&ids, &targets, o.batch, o.seq_len)?;
        if !loss.is_finite() {
            bail!("step {}: the loss is not finite ({loss})", self.step + 1);
        }
        let norm = grads.sum_sq().sqrt();
        if o.grad_clip > 0.0 {
            let coef = (o.grad_clip / (norm + 1e-6)).min(1.0) as f32;
            if coef < 1.0 {
                for g in grads.slots.iter_mut().flatten() {
                    g.a.iter_mut()
                        .chain(g.b.iter_mut())
                        .for_each(|x| *x *= coef);
                }
            }
        }
        let lr = lr_at(&o, self.step);
        let t = (self.step + 1) as i32;
        let (b1, b2) = o.betas;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = (1.0 - lr * o.weight_decay) as f32;
        let (w1, w2, eps) = ((1.0 - b1) as f32, (1.0 - b2) as f32, o.eps as f32);
        let b2f = b2 as f32;
        for (i, tm) in self.modules.iter().enumerate() {
            let g = grads.slots[tm.slot]
                .take()
                .expect("gradient of a trainable module");
            let lora = self
                .model
                .linear_mut(tm.slot)
                .trainable_mut()
                .expect("trainable");
            let (ma, mb) = &mut self.m[i];
            let (va, vb) = &mut self.v[i];
            for (p, g, m, v) in [(&mut lora.a, &g.a, ma, va), (&mut lora.b, &g.b, mb, vb)] {
                // torch.optim.AdamW (single-tensor path), element by element.
                for j in 0..p.len() {
                    p[j] *= decay;
                    m[j] += w1 * (g[j] - m[j]);
                    v[j] = v[j] * b2f + w2 * g[j] * g[j];
                    let denom = v[j].sqrt() / bc2_sqrt + eps;
                    p[j] += -step_size * (m[j] / denom);
                }
            }
        }
        self.step += 1;
        let s = StepStats {
            step: self.step,
            loss,
            lr,
            grad_norm: norm,
        };
        self.history.push(s);
        Ok(s)
    }

    /// Mean loss over `data` (all its sequences, in batches of `--batch`).
    pub fn evaluate(&mut self, data: &Dataset) -> Result<EvalStats> {
        let (mut sum, mut count) = (0f64, 0usize);
        for (ids, tg, rows, len) in data.eval_batches(self.options.batch) {
            let (s, c) = self
                .model
                .loss_sum(&ids, &tg, rows, len, crate::model::Exec::Cpu)?;
            sum += s;
            count += c;
        }
        let loss = sum / count.max(1) as f64;
        let e = EvalStats {
            step: self.step,
            loss,
            perplexity: loss.exp(),
        };
        self.eval.push(e);
        Ok(e)
    }

    /// The trained factors as an adapter (PEFT layout, owned values).
    pub fn adapter(&self, base_model: &str, targets: &[String]) -> Adapter {
        let modules = self
            .modules
            .iter()
            .map(|tm| {
                let lin = self.model.linear(tm.slot);
                let l = lin.trainable().expect("trainable");
                LoraModule {
                    name: tm.name.clone(),
                    kind: ModuleKind::Linear,
                    rank: tm.rank,
                    alpha: tm.alpha,
                    scale: crate::adapter::scale_for(tm.alpha, tm.rank, self.rslora),
                    out_features: lin.out_features(),
                    in_features: lin.in_features(),
                    factors: Factors::Lora {
                        a: Data::Owned(Arc::new(l.a.clone())),
                        b: Data::Owned(Arc::new(l.b.clone())),
                    },
                    base_transposed: false,
                    dora_magnitude: None,
                    dora_rule: Default::default(),
                    bias: None,
                }
            })
            .collect();
        let config = serde_json::json!({
            "target_modules": targets,
            "task_type": "CAUSAL_LM",
            "lora_dropout": 0.0,
            "init_lora_weights": true,
            "inference_mode": true,
        });
        Adapter {
            base_model: Some(base_model.to_owned()),
            use_rslora: self.rslora,
            config: Some(config),
            ..Adapter::of_modules(Format::Peft, Path::new("<trained>").to_path_buf(), modules)
        }
    }

    /// Writes the adapter and the trainer state into `dir` (one atomic set of files).
    pub fn save(&self, dir: &Path, base_model: &str, targets: &[String]) -> Result<()> {
        let adapter = self.adapter(base_model, targets);
        let mut out = Output::new();
        out.create_dir_all(dir)?;
        out.lock(dir, crate::io::writer::LockMode::Exclusive)?;
        let mut meta = crate::ops::output::provenance_head("train").to_vec();
        meta.push(("lorakit.step".to_string(), self.step.to_string()));
        crate::adapter::formats::peft::write(&adapter, dir, &mut out, Dtype::F32, &meta)?;
        let mut specs = Vec::new();
        let mut payload: Vec<&[f32]> = Vec::new();
        for (i, tm) in self.modules.iter().enumerate() {
            let l = self.model.linear(tm.slot).trainable().expect("trainable");
            let (d, k) = (l.b.len() / tm.rank, l.a.len() / tm.rank);
            for (which, shape, m, v) in [
                ("lora_A", vec![tm.rank, k], &self.m[i].0, &self.v[i].0),
                ("lora_B", vec![d, tm.rank], &self.m[i].1, &self.v[i].1),
            ] {
                specs.push(TensorSpec::new(
                    format!("{}.{which}.exp_avg", tm.name),
                    Dtype::F32,
                    shape.clone(),
                ));
                payload.push(m);
                specs.push(TensorSpec::new(
                    format!("{}.{which}.exp_avg_sq", tm.name),
                    Dtype::F32,
                    shape,
                ));
                payload.push(v);
            }
        }
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let mut w = out.safetensors(
            &dir.join(STATE_TENSORS),
            &[("lorakit.step".to_string(), self.step.to_string())],
            specs,
        )?;
        for (n, p) in names.iter().zip(payload) {
            w.write_tensor(n, bytemuck::cast_slice(p))?;
        }
        w.finish()?;
        let state = StateFile {
            lorakit_version: env!("CARGO_PKG_VERSION").into(),
            step: self.step,
            rslora: self.rslora,
            modules: self.modules.clone(),
            options: self.options.clone(),
            data_tokens: self.data.tokens.len(),
            data_fingerprint: self.data.fingerprint(),
            history: self.history.clone(),
            eval: self.eval.clone(),
        };
        let mut text = serde_json::to_vec_pretty(&state)?;
        text.push(b'\n');
        out.small_file(&dir.join(STATE_JSON), &text)?;
        out.commit()?;
        Ok(())
    }

    /// Continues from a folder written by [`Trainer::save`]: factors, moments, step and
    /// history. The modules, ranks, alphas, seed, batch, sequence length and data must be the
    /// same as this run's; the step count, learning rate and schedule may change.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let sp = dir.join(STATE_JSON);
        let text = crate::io::read_json_file(&sp)?;
        let st: StateFile = serde_json::from_slice(&text)
            .map_err(|e| InputError::invalid(&sp, format!("not a lorakit trainer state: {e}")))?;
        let bad = |m: String| anyhow::Error::new(InputError::invalid(&sp, m));
        let names = |v: &[TrainedModule]| -> Vec<(String, usize, String)> {
            v.iter()
                .map(|m| (m.name.clone(), m.rank, format!("{}", m.alpha)))
                .collect()
        };
        if names(&st.modules) != names(&self.modules) || st.rslora != self.rslora {
            bail!(InputError::option(&sp, |o| {
                format!(
                "the saved run trains other modules, ranks or alphas than this one (same {}, {}, {}, {} needed)",
                o.opt(Opt::Targets),
                o.opt(Opt::Rank),
                o.opt(Opt::Alpha),
                o.opt(Opt::Rslora)
            )
            }));
        }
        let o = &self.options;
        let so = &st.options;
        if (so.seed, so.batch, so.seq_len) != (o.seed, o.batch, o.seq_len) {
            let (saved, this) = (
                (so.seed, so.batch, so.seq_len),
                (o.seed, o.batch, o.seq_len),
            );
            bail!(InputError::option(&sp, move |o| {
                let run = |(seed, batch, seq_len): (u64, usize, usize)| {
                    format!(
                        "{} {} {}",
                        o.set(Opt::Seed, seed),
                        o.set(Opt::Batch, batch),
                        o.set(Opt::SeqLen, seq_len)
                    )
                };
                format!("the saved run used {}, this one {}", run(saved), run(this))
            }));
        }
        if st.data_fingerprint != self.data.fingerprint() {
            bail!(bad("the saved run was trained on other data".into()));
        }
        if st.step > o.steps {
            let (step, steps) = (st.step, o.steps);
            bail!(InputError::option(&sp, move |o| format!(
                "the saved run is at step {step}, beyond {}",
                o.set(Opt::Steps, steps)
            )));
        }
        let adapter = Adapter::open(dir)?;
        let moments = SafetensorsFile::open(dir.join(STATE_TENSORS))?;
        // The files are renamed into place one by one: a save interrupted between renames
        // leaves files of two steps, which must not be mixed.
        let step = st.step.to_string();
        let adapter_step = adapter
            .metadata
            .iter()
            .find(|(k, _)| k == "lorakit.step")
            .map(|(_, v)| v.as_str());
        let moments_step = moments.header().metadata_value("lorakit.step");
        if adapter_step != Some(step.as_str()) || moments_step != Some(step.as_str()) {
            bail!(bad(format!(
                "the adapter (step {}), moments (step {}) and state (step {step}) disagree: a save was interrupted; resume from an earlier checkpoint",
                adapter_step.unwrap_or("?"),
                moments_step.unwrap_or("?")
            )));
        }
        for (i, tm) in self.modules.iter().enumerate() {
            let m = adapter
                .module(&tm.name)
                .ok_or_else(|| bad(format!("module `{}` is missing from the adapter", tm.name)))?;
            let (b, a) = adapter.factors(m)?;
            let read = |k: &str| -> Result<Vec<f32>> {
                moments
                    .read_f32(&format!("{}.{k}", tm.name))
                    .with_context(|| format!("{}", dir.display()))
            };
            let (ma, va, mb, vb) = (
                read("lora_A.exp_avg")?,
                read("lora_A.exp_avg_sq")?,
                read("lora_B.exp_avg")?,
                read("lora_B.exp_avg_sq")?,
            );
            let lora = self
                .model
                .linear_mut(tm.slot)
                .trainable_mut()
                .expect("trainable");
            if a.len() != lora.a.len()
                || b.len() != lora.b.len()
                || ma.len() != a.len()
                || mb.len() != b.len()
                || va.len() != a.len()
                || vb.len() != b.len()
            {
                bail!(bad(format!("module `{}`: saved shapes differ", tm.name)));
            }
            // AdamW's state: first moments finite, second moments finite and ≥ 0 (they are
            // running means of squares; a negative one makes √v̂ NaN on the first step).
            for (what, v, second) in [
                ("lora_A.exp_avg", &ma, false),
                ("lora_A.exp_avg_sq", &va, true),
                ("lora_B.exp_avg", &mb, false),
                ("lora_B.exp_avg_sq", &vb, true),
            ] {
                if let Some(i) = v
                    .iter()
                    .position(|x| !x.is_finite() || (second && *x < 0.0))
                {
                    bail!(InputError::invalid(
                        dir.join(STATE_TENSORS),
                        format!(
                            "tensor `{}.{what}`: element {i} is {}, not a valid AdamW {} moment; the state is corrupt",
                            tm.name,
                            v[i],
                            if second { "second" } else { "first" }
                        )
                    ));
                }
            }
            if let Some(x) = a.iter().chain(b.iter()).find(|x| !x.is_finite()) {
                bail!(bad(format!(
                    "module `{}`: a saved factor holds {x}",
                    tm.name
                )));
            }
            lora.a = a.to_vec();
            lora.b = b.to_vec();
            self.m[i] = (ma, mb);
            self.v[i] = (va, vb);
        }
        self.step = st.step;
        self.history = st.history;
        self.eval = st.eval;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(schedule: Schedule) -> TrainOptions {
        TrainOptions {
            steps: 10,
            lr: 1.0,
            schedule,
            warmup: 2,
            weight_decay: 0.0,
            grad_clip: 1.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
            batch: 2,
            seq_len: 4,
            seed: 0,
        }
    }

    #[test]
    fn schedules_follow_transformers() {
        let c = opts(Schedule::Cosine);
        assert_eq!(lr_at(&c, 0), 0.0);
        assert_eq!(lr_at(&c, 1), 0.5);
        assert_eq!(lr_at(&c, 2), 1.0);
        assert!((lr_at(&c, 6) - 0.5).abs() < 1e-12);
        assert!(lr_at(&c, 10).abs() < 1e-12);
        let l = opts(Schedule::Linear);
        assert!((lr_at(&l, 6) - 0.5).abs() < 1e-12);
        let k = opts(Schedule::Constant);
        assert_eq!(lr_at(&k, 9), 1.0);
    }

    #[test]
    fn batches_cover_each_epoch_once_and_depend_on_step_only() {
        let d = Dataset::new((0..40).collect(), 4).unwrap();
        assert_eq!(d.sequences(), 10);
        let mut firsts = Vec::new();
        for s in 0..5 {
            let (ids, tg) = d.batch(s, 2, 9);
            assert_eq!(ids.len(), 8);
            assert_eq!(tg[0], ids[1]);
            assert_eq!(tg[3], NO_TARGET);
            firsts.push(ids[0] / 4);
            firsts.push(ids[4] / 4);
        }
        firsts.sort();
        assert_eq!(firsts, (0..10).collect::<Vec<_>>());
        assert_eq!(d.batch(7, 2, 9), d.batch(7, 2, 9));
        assert_ne!(d.batch(5, 2, 9), d.batch(0, 2, 9));
        let ev = d.eval_batches(3);
        assert_eq!(ev.iter().map(|b| b.2).sum::<usize>(), 10);
    }
}
