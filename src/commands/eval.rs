//! `lorakit eval`: loss and perplexity of a Llama-family model with LoRA adapters applied
//! unmerged (or merged in memory), logits, and greedy generation.

use crate::adapter::Adapter;
use crate::backend::Engine;
use crate::cli::EvalArgs;
use crate::io::{Checkpoint, Output, TensorSpec};
use crate::model::data::{read_input_ids, token_stream};
use crate::model::llama::{Attached, NO_TARGET};
use crate::model::{Exec, KvCache, Model, ModelConfig, TextTokenizer, Weights};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::Instant;

/// `eval --json` output.
#[derive(Debug, serde::Serialize)]
pub struct EvalReport {
    pub model: String,
    pub model_type: String,
    pub adapters: Vec<Attached>,
    /// `unmerged` or `merged`.
    pub mode: String,
    pub device: String,
    /// `text`, `prompt` or `input_ids`.
    pub input: String,
    pub tokenizer: Option<String>,
    /// Windows (text, prompt) or rows (input_ids).
    pub sequences: usize,
    pub seq_len: usize,
    pub stride: usize,
    /// Tokens run through the model.
    pub tokens: usize,
    /// Tokens whose prediction is in the loss.
    pub tokens_scored: usize,
    pub loss: Option<f64>,
    pub perplexity: Option<f64>,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub logits: Option<String>,
    pub generated: Option<Generated>,
}

/// Greedy continuation of the prompt.
#[derive(Debug, serde::Serialize)]
pub struct Generated {
    pub prompt_tokens: usize,
    pub ids: Vec<u32>,
    pub text: String,
    pub seconds: f64,
}

/// One forward unit: `ids[begin..end]` of a stream (or one input_ids row), scoring positions
/// `first..end`.
#[derive(Debug, Clone, Copy)]
struct Window {
    begin: usize,
    end: usize,
    first: usize,
}

/// Sliding windows over `n` tokens (the module's scoring rule).
fn windows(n: usize, seq_len: usize, stride: usize) -> Vec<Window> {
    let mut out = Vec::new();
    let (mut begin, mut prev_end) = (0usize, 0usize);
    loop {
        let end = (begin + seq_len).min(n);
        out.push(Window {
            begin,
            end,
            first: prev_end.max(begin + 1),
        });
        prev_end = end;
        if end == n {
            break;
        }
        begin += stride;
    }
    out
}

/// Loads a model and attaches the adapters.
pub fn load_model<'c>(
    ck: &'c Checkpoint,
    config: ModelConfig,
    adapters: &[PathBuf],
    weights: &[f64],
    merged: bool,
) -> Result<(Model<'c, f32>, Vec<Attached>)> {
    if weights.len() > adapters.len() {
        bail!(
            "{} --weight values for {} --adapter values; give at most one weight per adapter",
            weights.len(),
            adapters.len()
        );
    }
    if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
        bail!("--weight {w} is not a finite number");
    }
    let mut model: Model<f32> = Model::load(Weights::Checkpoint(ck), config)?;
    let mut attached = Vec::new();
    for (i, p) in adapters.iter().enumerate() {
        let adapter = Adapter::open(p)?;
        attached.push(model.attach(&adapter, weights.get(i).copied().unwrap_or(1.0), merged)?);
    }
    Ok((model, attached))
}

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
    let ck = Checkpoint::open(&a.model)?;
    let config = ModelConfig::for_checkpoint(&ck)?;
    if let Some(out) = &a.logits {
        let mut inputs = ck.input_paths();
        inputs.push(ck.root.clone());
        inputs.push(ck.folder().to_path_buf());
        for p in &a.adapters {
            inputs.push(p.clone());
            if p.is_dir() {
                inputs.push(p.join(crate::adapter::formats::peft::WEIGHTS_NAME));
                inputs.push(p.join(crate::adapter::formats::peft::CONFIG_NAME));
            }
        }
        inputs.extend(a.input_ids.iter().cloned());
        inputs.extend(a.text.iter().cloned());
        if let Some(t) = a.tokenizer.as_deref().filter(|t| *t != "bytes") {
            inputs.push(PathBuf::from(t));
        }
        crate::io::writer::check_writes(&inputs, std::slice::from_ref(out), &[])?;
    }
    let (model, attached) = load_model(&ck, config.clone(), &a.adapters, &a.weights, a.merged)?;
    let engine = a.compute.engine()?;
    let exec = match &engine {
        Engine::Gpu(ctx) => Exec::Gpu(ctx),
        Engine::Cpu => Exec::Cpu,
    };

    // Inputs: (rows of ids, windows per row).
    let needs_tok = a.input_ids.is_none();
    let tok = if needs_tok {
        Some(TextTokenizer::resolve(ck.folder(), a.tokenizer.as_deref())?)
    } else {
        None
    };
    let (input, stream, rows): (&str, Vec<u32>, Option<(usize, usize)>) =
        if let Some(p) = &a.input_ids {
            let t = read_input_ids(p)?;
            ("input_ids", t.ids, Some((t.rows, t.cols)))
        } else if let Some(p) = &a.text {
            (
                "text",
                token_stream(p, tok.as_ref(), config.eos_token_id)?,
                None,
            )
        } else {
            let text = a.prompt.as_deref().expect("group");
            let ids = tok.as_ref().expect("tokenizer").encode(text, true)?;
            if ids.is_empty() {
                bail!("--prompt gives no tokens");
            }
            ("prompt", ids, None)
        };
    // Units of work: (offset of the sequence in `stream`, window).
    let units: Vec<Window> = match rows {
        Some((r, c)) => (0..r)
            .map(|i| Window {
                begin: i * c,
                end: (i + 1) * c,
                first: i * c + 1,
            })
            .collect(),
        None => {
            if stream.is_empty() {
                bail!("the input has no tokens");
            }
            windows(stream.len(), a.seq_len, stride)
        }
    };
    if a.logits.is_some() && rows.is_none() && units.len() > 1 {
        bail!(
            "--logits needs the input in one window: {} tokens > --seq-len {}",
            stream.len(),
            a.seq_len
        );
    }
    let vocab = config.vocab_size;
    let pb = crate::progress::count_bar(!quiet && !a.json, units.len() as u64, "eval");
    let t0 = Instant::now();
    let (mut nll, mut scored, mut tokens) = (0f64, 0usize, 0usize);
    let mut all_logits: Vec<f32> = Vec::new();
    let mut i = 0;
    while i < units.len() {
        // Consecutive windows of one length, up to --batch of them.
        let len = units[i].end - units[i].begin;
        let mut j = i + 1;
        while j < units.len() && j - i < a.batch && units[j].end - units[j].begin == len {
            j += 1;
        }
        let group = &units[i..j];
        let ids: Vec<u32> = group
            .iter()
            .flat_map(|w| stream[w.begin..w.end].iter().copied())
            .collect();
        if a.logits.is_some() {
            let logits = model.logits(&ids, group.len(), len, exec, false)?;
            for (gi, w) in group.iter().enumerate() {
                for (p, &target) in stream.iter().enumerate().take(w.end).skip(w.first) {
                    // position p is predicted by the logits of position p − 1
                    let row = gi * len + (p - 1 - w.begin);
                    let z = &logits[row * vocab..(row + 1) * vocab];
                    nll += cross_entropy(z, target as usize);
                    scored += 1;
                }
            }
            all_logits.extend_from_slice(&logits);
        } else {
            // The model's fused head: lm_head and the loss over row chunks in parallel, so the
            // vocabulary-wide logits of the whole batch are never held at once.
            let mut targets = vec![NO_TARGET; ids.len()];
            for (gi, w) in group.iter().enumerate() {
                for p in w.first..w.end {
                    targets[gi * len + (p - 1 - w.begin)] = stream[p];
                }
            }
            let (sum, count) = model.loss_sum(&ids, &targets, group.len(), len, exec)?;
            nll += sum;
            scored += count;
        }
        tokens += ids.len();
        pb.inc(group.len() as u64);
        i = j;
    }
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();

    let mut logits_path = None;
    if let Some(out) = &a.logits {
        let (b, s) = rows.unwrap_or((1, stream.len()));
        let mut o = Output::new();
        o.create_dir_all(&crate::parts::out_dir(out))?;
        o.lock(out, crate::io::writer::LockMode::Exclusive)?;
        let mut w = o.safetensors(
            out,
            &[("format".into(), "pt".into())],
            vec![TensorSpec::new(
                "logits",
                crate::dtype::Dtype::F32,
                vec![b, s, vocab],
            )],
        )?;
        w.write_tensor("logits", bytemuck::cast_slice(&all_logits))?;
        w.finish()?;
        o.commit()?;
        logits_path = Some(out.display().to_string());
    }

    let generated = match a.generate {
        Some(n) => Some(generate(
            &model,
            tok.as_ref().expect("prompt has a tokenizer"),
            &stream,
            n,
            a.seq_len,
            config.eos_token_id,
            exec,
        )?),
        None => None,
    };

    let loss = (scored > 0).then(|| nll / scored as f64);
    let report = EvalReport {
        model: a.model.display().to_string(),
        model_type: config.model_type.clone(),
        adapters: attached,
        mode: if a.merged { "merged" } else { "unmerged" }.into(),
        device: engine.describe(),
        input: input.into(),
        tokenizer: tok.as_ref().map(|t| t.describe()),
        sequences: units.len(),
        seq_len: if rows.is_some() {
            rows.map(|r| r.1).unwrap_or(0)
        } else {
            a.seq_len
        },
        stride: if rows.is_some() { 0 } else { stride },
        tokens,
        tokens_scored: scored,
        loss,
        perplexity: loss.map(f64::exp),
        seconds,
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
        logits: logits_path,
        generated,
    };
    if a.json {
        super::print_json("eval", &report)?;
    } else {
        super::print(&render(&report, &config, &ck))?;
    }
    Ok(0)
}

/// `logsumexp(z) − z[target]` in f64.
fn cross_entropy(z: &[f32], target: usize) -> f64 {
    let mx = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let s: f64 = z.iter().map(|&v| (v as f64 - mx).exp()).sum();
    mx + s.ln() - z[target] as f64
}

fn generate(
    model: &Model<f32>,
    tok: &TextTokenizer,
    prompt: &[u32],
    n: usize,
    seq_len: usize,
    eos: Option<u32>,
    exec: Exec,
) -> Result<Generated> {
    let t0 = Instant::now();
    let mut ids = prompt.to_vec();
    let mut out = Vec::new();
    // Keys and values of the positions so far are cached while the context fits in `seq_len`;
    // past that the window slides (positions restart at its first token), so it is recomputed.
    let mut cache = KvCache::default();
    for _ in 0..n {
        let z = if ids.len() <= seq_len {
            model.logits_cached(&ids[cache.len()..], &mut cache, exec)?
        } else {
            let ctx = &ids[ids.len() - seq_len..];
            model.logits(ctx, 1, ctx.len(), exec, true)?
        };
        // First maximum, as torch.argmax.
        let next = z
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0 as u32;
        ids.push(next);
        out.push(next);
        if Some(next) == eos {
            break;
        }
    }
    Ok(Generated {
        prompt_tokens: prompt.len(),
        text: tok.decode(&out),
        ids: out,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn render(r: &EvalReport, c: &ModelConfig, ck: &Checkpoint) -> String {
    let dtype = ck
        .infos()
        .next()
        .map(|(_, t)| crate::dtype::name(t.dtype).to_lowercase())
        .unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_score_each_token_once() {
        for (n, len, stride) in [(10, 4, 4), (10, 4, 2), (3, 8, 8), (9, 4, 3), (617, 32, 16)] {
            let w = windows(n, len, stride);
            let mut seen = vec![0; n];
            for x in &w {
                assert!(x.end - x.begin <= len && x.first > x.begin);
                for s in &mut seen[x.first..x.end] {
                    *s += 1;
                }
            }
            assert_eq!(seen[0], 0);
            assert!(seen.iter().all(|&c| c <= 1));
            if stride == len {
                // Window starts have no context: exactly those go unscored.
                for (p, &c) in seen.iter().enumerate().skip(1) {
                    assert_eq!(c, usize::from(p % len != 0), "{n} {len}: {seen:?}");
                }
            }
            if stride < len {
                assert!(
                    seen[1..].iter().all(|&c| c == 1),
                    "{n} {len} {stride}: {seen:?}"
                );
            }
        }
        assert_eq!(windows(616, 32, 32).len(), 20);
    }
}
