//! `lorakit train`: the command line mapped to [`TrainOptions`] → [`TrainPlan`] → run, the
//! report printed.
//!
//! Must not validate or compute what the library does, nor write to stdout/stderr except through
//! `printer`.

use super::printer;
use crate::cli::TrainArgs;
use crate::ops::train::{TrainOptions, TrainPlan, TrainReport};
use anyhow::Result;

pub fn run(a: TrainArgs, quiet: bool) -> Result<i32> {
    crate::model::retain_freed_memory();
    let plan = TrainPlan::new(options(&a, quiet))?;
    // Said before `run` consumes the plan, printed after it, so that a failed run's stderr
    // stays its one error line.
    let warning = plan.context_warning();
    let report = plan.run()?;
    if let Some(w) = warning {
        printer::warn(quiet, &w);
    }
    printer::print_report(a.json, "train", &report, || render(&report))?;
    Ok(0)
}

/// The library options `a` asks for: progress bars unless quiet or `--json`.
pub fn options(a: &TrainArgs, quiet: bool) -> TrainOptions {
    TrainOptions {
        model: a.model.clone(),
        data: a.data.clone(),
        out: a.out.clone(),
        rank: a.rank,
        alpha: a.alpha,
        rslora: a.rslora,
        targets: a.targets.clone(),
        init_adapter: a.init_adapter.clone(),
        steps: a.steps,
        lr: a.lr,
        batch: a.batch,
        seq_len: a.seq_len,
        warmup: a.warmup,
        schedule: a.schedule,
        weight_decay: a.weight_decay,
        grad_clip: a.grad_clip,
        beta1: a.beta1,
        beta2: a.beta2,
        adam_eps: a.adam_eps,
        seed: a.seed,
        eval_every: a.eval_every,
        eval_data: a.eval_data.clone(),
        save_every: a.save_every,
        resume: a.resume.clone(),
        tokenizer: a.tokenizer.clone(),
        progress: printer::progress(!quiet && !a.json),
    }
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
