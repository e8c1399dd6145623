//! The training loop: [`Trainer`] adds the trainable factors to a loaded model (PEFT's
//! initialisation or an existing adapter's), steps AdamW over the batches, evaluates, and
//! checkpoints through [`Trainer::save`] (`state.rs`).
//!
//! Must not choose files or read options from anywhere but its arguments: [`TrainPlan`](super::TrainPlan)
//! opens and checks the inputs; must not print (progress goes to the `Progress` trait).

use super::dataset::Dataset;
use super::hyperparams::{lr_at, Hyperparams, Init};
use super::record::{EvalStats, StepStats, TrainedModule};
use crate::adapter::{Adapter, Data, Factors, Format, LoraModule, ModuleKind};
use crate::error::{InputError, Opt, OptionError};
use crate::linalg::rng::Xoshiro256PlusPlus;
use crate::model::linear::Lora;
use crate::model::Model;
use anyhow::{bail, Result};
use std::path::Path;
use std::sync::Arc;

/// `n` zeroed values (`None`: a size past `usize`), or an error naming `--rank` when they cannot
/// be allocated: a rank far past the model's sizes (`--rank 1000000000`) is refused cleanly
/// instead of aborting the process on a failed allocation.
fn try_zeros(n: Option<usize>, rank: usize, module: &str) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    match n {
        Some(n) if crate::io::memory::fallible(|| v.try_reserve_exact(n)).is_ok() => {
            v.resize(n, 0.0);
            Ok(v)
        }
        _ => {
            let module = module.to_owned();
            bail!(OptionError::new(move |o| format!(
                "{} {rank} is too large: the factors of `{module}` cannot be allocated",
                o.opt(Opt::Rank)
            )))
        }
    }
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
    pub options: Hyperparams,
    pub data: Dataset,
    pub step: usize,
    /// Adam first and second moments, per module: (A, B).
    pub(super) m: Vec<(Vec<f32>, Vec<f32>)>,
    pub(super) v: Vec<(Vec<f32>, Vec<f32>)>,
    pub history: Vec<StepStats>,
    pub eval: Vec<EvalStats>,
}

impl<'c> Trainer<'c> {
    /// Adds trainable adapters to `model` and sets up the optimiser.
    pub fn new(
        mut model: Model<'c, f32>,
        init: Init,
        rslora: bool,
        options: Hyperparams,
        data: Dataset,
    ) -> Result<Self> {
        if options.batch == 0 || options.steps == 0 {
            bail!(OptionError::new(|o| format!(
                "{} and {} must be at least 1",
                o.opt(Opt::Batch),
                o.opt(Opt::Steps)
            )));
        }
        super::memory::check_step(
            &model.config,
            options.batch,
            options.seq_len,
            super::memory::memory_limit(),
        )?;
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
                    let mut a = try_zeros(rank.checked_mul(k), rank, &lin.name)?;
                    for x in &mut a {
                        *x = ((2.0 * rng.next_f64() - 1.0) * bound) as f32;
                    }
                    let b = try_zeros(d.checked_mul(rank), rank, &lin.name)?;
                    lin.loras.push(Lora {
                        source: "trainable".into(),
                        a,
                        b,
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
        // AdamW's two moments, as large as the factors: allocated fallibly too.
        let zeros = |model: &Model<f32>, m: &TrainedModule| -> Result<(Vec<f32>, Vec<f32>)> {
            let l = model.linear(m.slot).trainable().expect("trainable");
            let name = &model.linear(m.slot).name;
            Ok((
                try_zeros(Some(l.a.len()), m.rank, name)?,
                try_zeros(Some(l.b.len()), m.rank, name)?,
            ))
        };
        let m = modules
            .iter()
            .map(|x| zeros(&model, x))
            .collect::<Result<Vec<_>>>()?;
        let v = modules
            .iter()
            .map(|x| zeros(&model, x))
            .collect::<Result<Vec<_>>>()?;
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
        let (ids, targets) = self.data.batch(self.step, o.batch, o.seed)?;
        let (loss, mut grads) = self
            .model
            .loss_and_grads(&ids, &targets, o.batch, o.seq_len)?;
        if !loss.is_finite() {
            bail!(NonFiniteLoss {
                step: self.step + 1,
                loss,
            });
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
}

/// A step whose loss came out NaN or infinite; [`super::plan::TrainPlan::run`] then names the
/// model tensor that caused it, when one holds a NaN or an infinity.
#[derive(Debug)]
pub struct NonFiniteLoss {
    pub step: usize,
    pub loss: f64,
}

impl std::fmt::Display for NonFiniteLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {}: the loss is not finite ({})",
            self.step, self.loss
        )
    }
}

impl std::error::Error for NonFiniteLoss {}
