//! `lorakit eval`: the command line mapped to [`EvalOptions`] → [`EvalPlan`] → run on the chosen
//! device, the report printed.
//!
//! Must not validate or compute what the library does, nor write to stdout/stderr except through
//! `printer`.

use super::options;
use super::printer;
use crate::cli::EvalArgs;
use crate::model::ModelConfig;
use crate::ops::eval::{EvalInput, EvalOptions, EvalPlan, EvalReport};
use anyhow::Result;

pub fn run(mut a: EvalArgs, quiet: bool) -> Result<i32> {
    crate::model::retain_freed_memory();
    a.model = crate::io::hub::resolve_input(&a.model)?;
    for ad in &mut a.adapters {
        *ad = crate::io::hub::resolve_input(ad)?;
    }
    let plan = EvalPlan::new(options(&a, quiet)?)?;
    let run = plan.run(&a.compute.engine()?)?;
    // After the run, so that a failed run's stderr stays its one error line.
    if let Some(w) = plan.context_warning() {
        printer::warn(quiet, &w);
    }
    printer::print_report(a.json, "eval", &run.report, || {
        render(&run.report, &run.config, &run.weight_dtype)
    })?;
    Ok(0)
}

/// The library options `a` asks for: `--stride` defaults to `--seq-len`, `--weight` values pair
/// with `--adapter` values (missing ones are 1), progress bars unless quiet or `--json`.
pub fn options(a: &EvalArgs, quiet: bool) -> Result<EvalOptions> {
    let input = match (&a.input_ids, &a.text, &a.prompt) {
        (Some(p), _, _) => EvalInput::InputIds(p.clone()),
        (None, Some(p), _) => EvalInput::Text(p.clone()),
        (None, None, Some(t)) => EvalInput::Prompt(t.clone()),
        (None, None, None) => unreachable!("clap requires one of --text, --prompt, --input-ids"),
    };
    Ok(EvalOptions {
        weights: options::adapter_weights(a.adapters.len(), &a.weights)?,
        model: a.model.clone(),
        adapters: a.adapters.clone(),
        merged: a.merged,
        input,
        tokenizer: a.tokenizer.clone(),
        seq_len: a.seq_len,
        stride: a.stride.unwrap_or(a.seq_len),
        batch: a.batch,
        logits: a.logits.clone(),
        generate: a.generate,
        progress: printer::progress(!quiet && !a.json),
    })
}

fn render(r: &EvalReport, c: &ModelConfig, dtype: &str) -> String {
    let mut s = format!(
        "model      {} ({}, {} layers, hidden {}, vocab {}, {})\n",
        r.model, c.model_type, c.num_hidden_layers, c.hidden_size, c.vocab_size, dtype
    );
    for a in &r.adapters {
        s.push_str(&format!(
            "adapter    {} ×{} ({} unmerged, {} merged in memory, {} replaced)\n",
            a.path, a.weight, a.modules_unmerged, a.modules_merged, a.tensors_replaced
        ));
    }
    let what = if r.input == "input_ids" {
        format!("{} rows of {}", r.sequences, r.seq_len)
    } else {
        format!(
            "{} window{} of ≤{} (stride {})",
            r.sequences,
            if r.sequences == 1 { "" } else { "s" },
            r.seq_len,
            r.stride
        )
    };
    s.push_str(&format!(
        "scored     {} tokens in {what}\n",
        r.tokens_scored
    ));
    match (r.loss, r.perplexity) {
        (Some(l), Some(p)) => s.push_str(&format!("loss       {l:.4}   perplexity {p:.3}\n")),
        _ => s.push_str("loss       — (no token has context)\n"),
    }
    s.push_str(&format!(
        "speed      {:.0} tokens/s ({} tokens in {:.2} s) on {}\n",
        r.tokens_per_s, r.tokens, r.seconds, r.device
    ));
    if let Some(p) = &r.logits {
        s.push_str(&format!("logits     {p}\n"));
    }
    if let Some(g) = &r.generated {
        s.push_str(&format!(
            "generated  {} tokens in {:.2} s:\n{}\n",
            g.ids.len(),
            g.seconds,
            g.text
        ));
    }
    s
}
