//! The `train` operation's shape: [`TrainOptions`] → [`TrainPlan::new`] → [`TrainPlan::run`] →
//! [`TrainReport`].
//!
//! Owns: which files a run reads and writes (the output refused when it is an input), the
//! checks of the optimiser's options, tokenizing the data, the default step count, and the
//! report. Must not parse flags or print: options are named as [`Opt`]s, and the report is
//! rendered by `commands/train.rs`.

use super::dataset::Dataset;
use super::hyperparams::{Hyperparams, Init, Schedule};
use super::record::{EvalStats, StepStats, STATE_JSON, STATE_TENSORS};
use super::trainer::{RunOutcome, RunPlan, Trainer};
use crate::adapter::formats::peft;
use crate::adapter::Adapter;
use crate::error::{Opt, OptionError};
use crate::io::Checkpoint;
use crate::model::data::token_stream;
use crate::model::{Model, ModelConfig, TextTokenizer, Weights};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// A training run, as a Rust caller states it (the `lorakit train` flags of the same names).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// A Hugging Face folder of a Llama-family model.
    pub model: PathBuf,
    /// Text, .jsonl with a "text" field, or .safetensors with `input_ids`.
    pub data: PathBuf,
    /// The adapter folder (PEFT layout plus the trainer state).
    pub out: PathBuf,
    pub rank: usize,
    /// Default: the rank.
    pub alpha: Option<f64>,
    pub rslora: bool,
    pub targets: Vec<String>,
    /// Start from this adapter's modules, factors, ranks and alphas (replacing `targets`,
    /// `rank`, `alpha` and `rslora`).
    pub init_adapter: Option<PathBuf>,
    /// Default: one pass over the data.
    pub steps: Option<usize>,
    pub lr: f64,
    pub batch: usize,
    pub seq_len: usize,
    pub warmup: usize,
    pub schedule: Schedule,
    pub weight_decay: f64,
    /// 0 disables clipping.
    pub grad_clip: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    pub seed: u64,
    /// Evaluate every N steps (0: only after the last, when there is evaluation data).
    pub eval_every: usize,
    /// Default (with `eval_every > 0`): the training data.
    pub eval_data: Option<PathBuf>,
    /// Save `checkpoint-N` every N steps (0: never).
    pub save_every: usize,
    /// A folder with a trainer state to continue from.
    pub resume: Option<PathBuf>,
    /// A tokenizer.json (or folder), `bytes`, or `None` for the model folder's.
    pub tokenizer: Option<String>,
    pub progress: crate::progress::Reporter,
}

/// `train --json` output.
#[derive(Debug, serde::Serialize)]
pub struct TrainReport {
    pub model: String,
    pub data: String,
    pub out: String,
    pub device: String,
    pub tokenizer: Option<String>,
    pub data_tokens: usize,
    pub sequences: usize,
    pub eval_data: Option<String>,
    pub resumed_from: Option<String>,
    pub start_step: usize,
    pub steps: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub tokens_per_step: usize,
    pub modules: Vec<String>,
    pub rank: Vec<usize>,
    pub alpha: Vec<f64>,
    pub rslora: bool,
    pub trainable_parameters: usize,
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup: usize,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub seed: u64,
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub history: Vec<StepStats>,
    pub eval: Vec<EvalStats>,
    pub checkpoints: Vec<String>,
}

/// A checked run, ready to train: the model's header and config read, the data tokenized,
/// nothing written.
pub struct TrainPlan {
    options: TrainOptions,
    ck: Checkpoint,
    config: ModelConfig,
    tokenizer: Option<TextTokenizer>,
    data: Dataset,
    eval_data: Option<Dataset>,
    hyper: Hyperparams,
}

impl TrainPlan {
    /// Checks the optimiser's options, opens the model, refuses an output that is an input
    /// (model, data, tokenizer, initial adapter, resumed state), and tokenizes the data.
    /// The batch, step count and rank are checked by [`Trainer::new`] in [`Self::run`].
    /// [`ModelConfig::past_context`] of the training sequences.
    pub fn context_warning(&self) -> Option<String> {
        self.config
            .past_context(self.options.seq_len, "a training sequence length")
    }

    pub fn new(options: TrainOptions) -> Result<TrainPlan> {
        check_options(&options)?;
        let a = &options;
        let ck = Checkpoint::open(&a.model)?;
        crate::io::quant::QuantMap::refuse_for(&ck, "train")?;
        let config = ModelConfig::for_checkpoint(&ck)?;
        // Before the data is read: a batch no memory can hold is refused in one line.
        super::memory::check_step(&config, a.batch, a.seq_len, super::memory::memory_limit())?;
        crate::io::writer::check_writes(
            &inputs(a, &ck),
            &writes(&a.out),
            std::slice::from_ref(&a.out),
        )?;
        let is_ids = |p: &Path| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
        };
        let needs_tok = !is_ids(&a.data) || a.eval_data.as_deref().is_some_and(|p| !is_ids(p));
        let tokenizer = if needs_tok {
            Some(TextTokenizer::resolve(ck.folder(), a.tokenizer.as_deref())?)
        } else {
            None
        };
        let tokens = |p: &Path| -> Result<Vec<u32>> {
            let ids = token_stream(p, tokenizer.as_ref(), config.eos_token_id)?;
            let via = tokenizer.as_ref().and_then(TextTokenizer::file);
            let via = if is_ids(p) { None } else { via };
            crate::ops::eval::check_token_ids(p, via, &ids, config.vocab_size)?;
            Ok(ids)
        };
        let data = Dataset::new(tokens(&a.data)?, a.seq_len)?;
        let eval_data = match (&a.eval_data, a.eval_every > 0) {
            (Some(p), _) => Some(Dataset::for_eval(tokens(p)?, a.seq_len)?),
            (None, true) => Some(data.clone()),
            (None, false) => None,
        };
        let steps = a
            .steps
            .unwrap_or_else(|| data.sequences().div_ceil(a.batch.max(1)));
        let hyper = Hyperparams {
            steps,
            lr: a.lr,
            schedule: a.schedule,
            warmup: a.warmup,
            weight_decay: a.weight_decay,
            grad_clip: a.grad_clip,
            betas: (a.beta1, a.beta2),
            eps: a.adam_eps,
            batch: a.batch,
            seq_len: a.seq_len,
            seed: a.seed,
        };
        Ok(TrainPlan {
            options,
            ck,
            config,
            tokenizer,
            data,
            eval_data,
            hyper,
        })
    }

    /// Loads the model, adds the trainable factors (fresh or the initial adapter's), resumes
    /// when asked, trains to the last step (checkpoints on the way) and writes the adapter
    /// with its trainer state into `out`.
    pub fn run(self) -> Result<TrainReport> {
        let (a, ck, eval_data) = (&self.options, &self.ck, &self.eval_data);
        let steps = self.hyper.steps;
        let model: Model<f32> = Model::load(Weights::Checkpoint(ck), self.config)?;
        let init_adapter = a.init_adapter.as_ref().map(Adapter::open).transpose()?;
        let (init, rslora) = match &init_adapter {
            Some(ad) => (Init::Adapter(ad), ad.use_rslora),
            None => (
                Init::Fresh {
                    targets: &a.targets,
                    rank: a.rank,
                    alpha: a.alpha.unwrap_or(a.rank as f64),
                },
                a.rslora,
            ),
        };
        let targets: Vec<String> = match &init_adapter {
            Some(ad) => ad.modules.iter().map(|m| m.name.clone()).collect(),
            None => a.targets.clone(),
        };
        let mut trainer = Trainer::new(model, init, rslora, self.hyper, self.data)?;
        drop(init_adapter);
        if let Some(dir) = &a.resume {
            trainer.resume(dir)?;
        }
        let base_name = a.model.display().to_string();
        let plan = RunPlan {
            eval_every: a.eval_every,
            save_every: a.save_every,
            out: a.out.clone(),
            base_model: base_name.clone(),
            targets,
        };
        let RunOutcome {
            start_step: start,
            seconds,
            tokens_per_step,
            checkpoints,
        } = trainer
            .run(&plan, eval_data.as_ref(), &a.progress)
            .map_err(
                |e| match e.downcast_ref::<super::trainer::NonFiniteLoss>() {
                    Some(_) => crate::ops::eval::non_finite_weight(ck).unwrap_or(e),
                    None => e,
                },
            )?;
        Ok(TrainReport {
            model: base_name,
            data: a.data.display().to_string(),
            out: a.out.display().to_string(),
            device: format!("cpu ({} threads)", rayon::current_num_threads()),
            tokenizer: self.tokenizer.as_ref().map(|t| t.describe()),
            data_tokens: trainer.data.tokens.len(),
            sequences: trainer.data.sequences(),
            eval_data: a
                .eval_data
                .as_ref()
                .map(|p| p.display().to_string())
                .or_else(|| eval_data.as_ref().map(|_| "training data".to_string())),
            resumed_from: a.resume.as_ref().map(|p| p.display().to_string()),
            start_step: start,
            steps,
            batch: a.batch,
            seq_len: a.seq_len,
            tokens_per_step,
            modules: trainer.modules.iter().map(|m| m.name.clone()).collect(),
            rank: trainer.modules.iter().map(|m| m.rank).collect(),
            alpha: trainer.modules.iter().map(|m| m.alpha).collect(),
            rslora,
            trainable_parameters: trainer.parameters(),
            lr: a.lr,
            schedule: a.schedule,
            warmup: a.warmup,
            weight_decay: a.weight_decay,
            grad_clip: a.grad_clip,
            seed: a.seed,
            first_loss: trainer.history.first().map(|s| s.loss),
            final_loss: trainer.history.last().map(|s| s.loss),
            seconds,
            tokens_per_s: ((trainer.step - start) * tokens_per_step) as f64 / seconds.max(1e-9),
            history: trainer.history.clone(),
            eval: trainer.eval.clone(),
            checkpoints,
        })
    }
}

/// The options [`Trainer::new`] does not check: an initial adapter brings its own alpha and
/// rsLoRA setting, the optimiser's numbers are finite and non-negative, `0 ≤ β < 1`.
fn check_options(a: &TrainOptions) -> Result<()> {
    if a.init_adapter.is_some() && (a.alpha.is_some() || a.rslora) {
        bail!(OptionError::new(|o| format!(
            "{} takes the rank, alpha and rsLoRA setting from the adapter; drop {} / {}",
            o.opt(Opt::InitAdapter),
            o.opt(Opt::Alpha),
            o.opt(Opt::Rslora)
        )));
    }
    for (opt, v) in [
        (Opt::Lr, a.lr),
        (Opt::WeightDecay, a.weight_decay),
        (Opt::GradClip, a.grad_clip),
        (Opt::AdamEps, a.adam_eps),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            bail!(OptionError::new(move |o| format!(
                "{} must be a non-negative number",
                o.opt(opt)
            )));
        }
    }
    // The adapter's `lora_alpha` is read back in f32 (merge refuses one past its range).
    if a.alpha.is_some_and(|x| !crate::dtype::finite_in_f32(x)) {
        bail!(OptionError::new(|o| format!(
            "{} must be a finite number in f32 (|alpha| ≤ 3.4e38)",
            o.opt(Opt::Alpha)
        )));
    }
    if !(0.0..1.0).contains(&a.beta1) || !(0.0..1.0).contains(&a.beta2) {
        bail!(OptionError::new(|o| format!(
            "{} and {} must be in [0, 1)",
            o.opt(Opt::Beta1),
            o.opt(Opt::Beta2)
        )));
    }
    Ok(())
}

/// Every file and folder a run reads: the model, the data, the tokenizer, the initial
/// adapter, the resumed state.
fn inputs(a: &TrainOptions, ck: &Checkpoint) -> Vec<PathBuf> {
    let mut inputs = ck.input_paths();
    inputs.push(ck.root.clone());
    inputs.push(ck.folder().to_path_buf());
    inputs.push(a.data.clone());
    inputs.extend(a.eval_data.iter().cloned());
    if let Some(t) = a.tokenizer.as_deref().filter(|t| *t != "bytes") {
        inputs.push(PathBuf::from(t));
    }
    if let Some(init) = &a.init_adapter {
        inputs.push(init.clone());
        if init.is_dir() {
            inputs.push(init.join(peft::WEIGHTS_NAME));
            inputs.push(init.join(peft::PICKLE_WEIGHTS_NAME));
            inputs.push(init.join(peft::CONFIG_NAME));
        }
    }
    inputs.extend(a.resume.iter().cloned());
    inputs
}

/// The files a run writes into `out`.
fn writes(out: &Path) -> Vec<PathBuf> {
    [
        peft::WEIGHTS_NAME,
        peft::CONFIG_NAME,
        STATE_JSON,
        STATE_TENSORS,
    ]
    .iter()
    .map(|f| out.join(f))
    .collect()
}
