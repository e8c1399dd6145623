//! `lorakit eval`: the command line checked and mapped to [`EvalOptions`], the report printed.
//!
//! Must not validate or compute what the library does, nor write to stdout/stderr except through
//! `printer`.

use crate::cli::EvalArgs;
use crate::model::ModelConfig;
use crate::ops::eval::{evaluate, EvalInput, EvalOptions, EvalReport};
use anyhow::{bail, Result};

pub fn run(mut a: EvalArgs, quiet: bool) -> Result<i32> {
    crate::model::retain_freed_memory();
    a.model = crate::io::hub::resolve_input(&a.model)?;
    for ad in &mut a.adapters {
        *ad = crate::io::hub::resolve_input(ad)?;
    }
    if a.seq_len < 2 {
        bail!("--seq-len must be at least 2");
    }
    let stride = a.stride.unwrap_or(a.seq_len);
    if stride == 0 || stride > a.seq_len {
        bail!("--stride must be between 1 and --seq-len ({})", a.seq_len);
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.generate.is_some() && a.prompt.is_none() {
        bail!("--generate needs --prompt");
    }
    let input = match (&a.input_ids, &a.text, &a.prompt) {
        (Some(p), _, _) => EvalInput::InputIds(p.clone()),
        (None, Some(p), _) => EvalInput::Text(p.clone()),
        (None, None, Some(t)) => EvalInput::Prompt(t.clone()),
        (None, None, None) => unreachable!("clap requires one of --text, --prompt, --input-ids"),
    };
    let weights = super::adapter_weights(a.adapters.len(), &a.weights)?;
    let options = EvalOptions {
        model: a.model,
        adapters: a.adapters,
        weights,
        merged: a.merged,
        input,
        tokenizer: a.tokenizer,
        seq_len: a.seq_len,
        stride,
        batch: a.batch,
        logits: a.logits,
        generate: a.generate,
        progress: super::printer::progress(!quiet && !a.json),
    };
    let run = evaluate(&options, &a.compute.engine()?)?;
    super::print_report(a.json, "eval", &run.report, || {
        render(&run.report, &run.config, &run.weight_dtype)
    })?;
    Ok(0)
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
