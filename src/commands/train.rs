//! `lorakit train`: train a LoRA adapter on a frozen Llama-family model (CPU).
//!
//! Must not validate or compute what the library does, nor write to stdout/stderr except through
//! `printer`.

use crate::adapter::Adapter;
use crate::cli::TrainArgs;
use crate::io::Checkpoint;
use crate::model::data::token_stream;
use crate::model::{Model, ModelConfig, TextTokenizer, Weights};
use crate::train::{
    Dataset, EvalStats, Init, RunOutcome, RunPlan, Schedule, StepStats, TrainOptions, Trainer,
};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

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

pub fn run(a: TrainArgs, quiet: bool) -> Result<i32> {
    crate::model::retain_freed_memory();
    if a.init_adapter.is_some() && (a.alpha.is_some() || a.rslora) {
        bail!("--init-adapter takes the rank, alpha and rsLoRA setting from the adapter; drop --alpha / --rslora");
    }
    for (name, v) in [
        ("--lr", a.lr),
        ("--weight-decay", a.weight_decay),
        ("--grad-clip", a.grad_clip),
        ("--adam-eps", a.adam_eps),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            bail!("{name} must be a non-negative number");
        }
    }
    if !(0.0..1.0).contains(&a.beta1) || !(0.0..1.0).contains(&a.beta2) {
        bail!("--beta1 and --beta2 must be in [0, 1)");
    }
    let ck = Checkpoint::open(&a.model)?;
    let config = ModelConfig::for_checkpoint(&ck)?;
    {
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
                inputs.push(init.join(crate::adapter::formats::peft::WEIGHTS_NAME));
                inputs.push(init.join(crate::adapter::formats::peft::CONFIG_NAME));
            }
        }
        inputs.extend(a.resume.iter().cloned());
        let files: Vec<PathBuf> = [
            crate::adapter::formats::peft::WEIGHTS_NAME,
            crate::adapter::formats::peft::CONFIG_NAME,
            crate::train::STATE_JSON,
            crate::train::STATE_TENSORS,
        ]
        .iter()
        .map(|f| a.out.join(f))
        .collect();
        crate::io::writer::check_writes(&inputs, &files, std::slice::from_ref(&a.out))?;
    }
    let is_ids = |p: &Path| {
        p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    };
    let needs_tok = !is_ids(&a.data) || a.eval_data.as_deref().is_some_and(|p| !is_ids(p));
    let tok = if needs_tok {
        Some(TextTokenizer::resolve(ck.folder(), a.tokenizer.as_deref())?)
    } else {
        None
    };
    let data = Dataset::new(
        token_stream(&a.data, tok.as_ref(), config.eos_token_id)?,
        a.seq_len,
    )?;
    let eval_data = match (&a.eval_data, a.eval_every > 0) {
        (Some(p), _) => Some(Dataset::for_eval(
            token_stream(p, tok.as_ref(), config.eos_token_id)?,
            a.seq_len,
        )?),
        (None, true) => Some(data.clone()),
        (None, false) => None,
    };
    let steps = a
        .steps
        .unwrap_or_else(|| data.sequences().div_ceil(a.batch.max(1)));
    let options = TrainOptions {
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
    let model: Model<f32> = Model::load(Weights::Checkpoint(&ck), config)?;
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
    let mut trainer = Trainer::new(model, init, rslora, options.clone(), data)?;
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
    let progress = super::printer::progress(!quiet && !a.json);
    let RunOutcome {
        start_step: start,
        seconds,
        tokens_per_step,
        checkpoints,
    } = trainer.run(&plan, eval_data.as_ref(), &progress)?;

    let report = TrainReport {
        model: base_name,
        data: a.data.display().to_string(),
        out: a.out.display().to_string(),
        device: format!("cpu ({} threads)", rayon::current_num_threads()),
        tokenizer: tok.as_ref().map(|t| t.describe()),
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
    };
    super::print_report(a.json, "train", &report, || render(&report))?;
    Ok(0)
}

fn render(r: &TrainReport) -> String {
    let mut short: Vec<String> = r
        .modules
        .iter()
        .map(|m| m.rsplit('.').next().unwrap_or(m).to_string())
        .collect();
    short.sort();
    short.dedup();
    let ranks = {
        let mut v = r.rank.clone();
        v.dedup();
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut s = format!(
        "trained    {} modules ({}), rank {ranks}, {} parameters\n",
        r.modules.len(),
        short.join(", "),
        r.trainable_parameters
    );
    s.push_str(&format!(
        "data       {}: {} tokens, {} sequences of {}\n",
        r.data, r.data_tokens, r.sequences, r.seq_len
    ));
    s.push_str(&format!(
        "steps      {}{} (batch {}, {} tokens/step) in {:.2} s, {:.0} tokens/s on {}\n",
        if r.start_step > 0 {
            format!("{}→", r.start_step)
        } else {
            String::new()
        },
        r.steps,
        r.batch,
        r.tokens_per_step,
        r.seconds,
        r.tokens_per_s,
        r.device
    ));
    if let (Some(f), Some(l)) = (r.first_loss, r.final_loss) {
        s.push_str(&format!("loss       {f:.4} → {l:.4} (first → last step)\n"));
    }
    if let Some(e) = r.eval.last() {
        s.push_str(&format!(
            "eval       step {}: loss {:.4}, perplexity {:.3}\n",
            e.step, e.loss, e.perplexity
        ));
    }
    s.push_str(&format!("saved      {}\n", r.out));
    s
}
