//! Evaluating a Llama-family model with LoRA adapters: loss and perplexity over sliding
//! windows (transformers' perplexity recipe), logits, and greedy generation.
//!
//! Owns: the scoring rule (which tokens a window scores), batching windows through the model,
//! the logits file, generation, and the report. The operation: [`EvalOptions`] →
//! [`EvalPlan::new`] (every option checked, the model opened, the logits output checked against
//! every input; nothing written) → [`EvalPlan::run`] on an [`Engine`] → [`Evaluated`].
//!
//! Must not parse flags or print: `commands/eval.rs` maps the command line to options and renders
//! [`EvalReport`]; options are named as [`Opt`]s.

use crate::adapter::Adapter;
use crate::backend::Engine;
use crate::error::{Opt, OptionError};
use crate::io::{Checkpoint, Output, TensorSpec};
use crate::model::data::{read_input_ids, token_stream};
use crate::model::llama::{Attached, NO_TARGET};
use crate::model::{Exec, KvCache, Model, ModelConfig, TextTokenizer, Weights};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::Instant;

/// What is scored.
#[derive(Debug, Clone)]
pub enum EvalInput {
    /// Plain text or .jsonl, tokenized and scored in windows.
    Text(PathBuf),
    /// A prompt, scored (and continued by `generate`).
    Prompt(String),
    /// A safetensors file with `input_ids` [batch, seq]; each row scored whole.
    InputIds(PathBuf),
}

/// Options of an evaluation (checked by [`EvalPlan::new`]: `seq_len ≥ 2`,
/// `1 ≤ stride ≤ seq_len`, `batch ≥ 1`, `generate` only with a prompt, one finite weight per
/// adapter).
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub model: PathBuf,
    pub adapters: Vec<PathBuf>,
    /// One weight per adapter.
    pub weights: Vec<f64>,
    /// Merge the adapters into in-memory copies instead of the low-rank path.
    pub merged: bool,
    pub input: EvalInput,
    /// A tokenizer.json (or folder), `bytes`, or `None` for the model folder's.
    pub tokenizer: Option<String>,
    pub seq_len: usize,
    pub stride: usize,
    /// Sequences per forward pass.
    pub batch: usize,
    /// Write the logits here.
    pub logits: Option<PathBuf>,
    /// Greedy-decode this many tokens after the prompt.
    pub generate: Option<usize>,
    pub progress: crate::progress::Reporter,
}

/// A finished evaluation: the report, and what the text rendering also shows.
pub struct Evaluated {
    pub report: EvalReport,
    pub config: ModelConfig,
    /// The stored dtype of the model's first tensor, lower-case (`bf16`).
    pub weight_dtype: String,
}

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
fn load_model<'c>(
    ck: &'c Checkpoint,
    config: ModelConfig,
    adapters: &[PathBuf],
    weights: &[f64],
    merged: bool,
) -> Result<(Model<'c, f32>, Vec<Attached>)> {
    assert_eq!(weights.len(), adapters.len(), "one weight per adapter");
    let mut model: Model<f32> = Model::load(Weights::Checkpoint(ck), config)?;
    let mut attached = Vec::new();
    for (i, p) in adapters.iter().enumerate() {
        let adapter = Adapter::open(p)?;
        attached.push(model.attach(&adapter, weights[i], merged)?);
    }
    Ok((model, attached))
}

/// A validated evaluation, ready to run: the model is opened (its header and config read),
/// nothing is written.
pub struct EvalPlan {
    options: EvalOptions,
    ck: Checkpoint,
    config: ModelConfig,
}

impl EvalPlan {
    /// Checks every option, opens the model and reads its config, and refuses a logits output
    /// that is one of the inputs (model, adapters, data, tokenizer).
    pub fn new(options: EvalOptions) -> Result<EvalPlan> {
        let o = &options;
        if o.seq_len < 2 {
            bail!(OptionError::new(|o| format!(
                "{} must be at least 2",
                o.opt(Opt::SeqLen)
            )));
        }
        if o.stride == 0 || o.stride > o.seq_len {
            let seq_len = o.seq_len;
            bail!(OptionError::new(move |o| format!(
                "{} must be between 1 and {} ({seq_len})",
                o.opt(Opt::Stride),
                o.opt(Opt::SeqLen)
            )));
        }
        if o.batch == 0 {
            bail!(OptionError::new(|o| format!(
                "{} must be at least 1",
                o.opt(Opt::Batch)
            )));
        }
        if o.generate.is_some() && !matches!(o.input, EvalInput::Prompt(_)) {
            bail!(OptionError::new(|o| format!(
                "{} needs {}",
                o.opt(Opt::Generate),
                o.opt(Opt::Prompt)
            )));
        }
        if o.weights.len() != o.adapters.len() {
            bail!(
                "{} weights for {} adapters: give one weight per adapter",
                o.weights.len(),
                o.adapters.len()
            );
        }
        if let Some(&w) = o.weights.iter().find(|w| !crate::dtype::finite_in_f32(**w)) {
            bail!(OptionError::new(move |o| format!(
                "{} is not a finite number in f32",
                o.set(Opt::Weight, w)
            )));
        }
        let ck = Checkpoint::open(&o.model)?;
        crate::io::quant::QuantMap::refuse_for(&ck, "eval")?;
        let config = ModelConfig::for_checkpoint(&ck)?;
        check_logits_output(o, &ck)?;
        Ok(EvalPlan {
            options,
            ck,
            config,
        })
    }

    /// Runs the evaluation on `engine`.
    /// [`ModelConfig::past_context`] of this run: its windows of `seq_len` tokens, or with a
    /// prompt, at least the generated tokens.
    pub fn context_warning(&self) -> Option<String> {
        match (&self.options.input, self.options.generate) {
            (_, Some(n)) => self.config.past_context(n, "a generation"),
            // `--input-ids` rows are scored whole: their length, not `--seq-len`, is the context
            // (an unreadable file is the run's error to report, not the warning's).
            (EvalInput::InputIds(p), None) => {
                let cols = read_input_ids(p).ok()?.cols;
                self.config.past_context(cols, "an input_ids row")
            }
            (_, None) => self
                .config
                .past_context(self.options.seq_len, "a sequence length"),
        }
    }

    pub fn run(&self, engine: &Engine) -> Result<Evaluated> {
        evaluate(&self.options, &self.ck, self.config.clone(), engine)
    }
}

/// Refuses a logits output that is one of the evaluation's inputs.
fn check_logits_output(o: &EvalOptions, ck: &Checkpoint) -> Result<()> {
    if let Some(out) = &o.logits {
        let mut inputs = ck.input_paths();
        inputs.push(ck.root.clone());
        inputs.push(ck.folder().to_path_buf());
        for p in &o.adapters {
            inputs.push(p.clone());
            if p.is_dir() {
                inputs.push(p.join(crate::adapter::formats::peft::WEIGHTS_NAME));
                inputs.push(p.join(crate::adapter::formats::peft::PICKLE_WEIGHTS_NAME));
                inputs.push(p.join(crate::adapter::formats::peft::CONFIG_NAME));
            }
        }
        if let EvalInput::Text(p) | EvalInput::InputIds(p) = &o.input {
            inputs.push(p.clone());
        }
        if let Some(t) = o.tokenizer.as_deref().filter(|t| *t != "bytes") {
            inputs.push(PathBuf::from(t));
        }
        crate::io::writer::check_writes(&inputs, std::slice::from_ref(out), &[])?;
    }
    Ok(())
}

/// The evaluation of a plan: `ck` is the opened model, `config` its config.
fn evaluate(
    o: &EvalOptions,
    ck: &Checkpoint,
    config: ModelConfig,
    engine: &Engine,
) -> Result<Evaluated> {
    let (model, attached) = load_model(ck, config.clone(), &o.adapters, &o.weights, o.merged)?;
    let exec = engine.exec();

    // Inputs: (rows of ids, windows per row).
    let needs_tok = !matches!(o.input, EvalInput::InputIds(_));
    let tok = if needs_tok {
        Some(TextTokenizer::resolve(ck.folder(), o.tokenizer.as_deref())?)
    } else {
        None
    };
    let (input, stream, rows): (&str, Vec<u32>, Option<(usize, usize)>) = match &o.input {
        EvalInput::InputIds(p) => {
            let t = read_input_ids(p)?;
            ("input_ids", t.ids, Some((t.rows, t.cols)))
        }
        EvalInput::Text(p) => (
            "text",
            token_stream(p, tok.as_ref(), config.eos_token_id)?,
            None,
        ),
        EvalInput::Prompt(text) => {
            let ids = tok.as_ref().expect("tokenizer").encode(text, true)?;
            if ids.is_empty() {
                bail!("the prompt gives no tokens");
            }
            ("prompt", ids, None)
        }
    };
    match &o.input {
        EvalInput::InputIds(p) => check_token_ids(p, None, &stream, config.vocab_size)?,
        EvalInput::Text(p) => {
            let via = tok.as_ref().and_then(TextTokenizer::file);
            check_token_ids(p, via, &stream, config.vocab_size)?
        }
        EvalInput::Prompt(_) => {}
    }
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
            windows(stream.len(), o.seq_len, o.stride)
        }
    };
    if o.logits.is_some() && rows.is_none() && units.len() > 1 {
        let (n, seq_len) = (stream.len(), o.seq_len);
        bail!(OptionError::new(move |o| format!(
            "{} needs the input in one window: {n} tokens > {}",
            o.opt(Opt::Logits),
            o.set(Opt::SeqLen, seq_len)
        )));
    }
    let vocab = config.vocab_size;
    let pb = o
        .progress
        .start("eval", units.len() as u64, crate::progress::Unit::Items);
    let t0 = Instant::now();
    let (mut nll, mut scored, mut tokens) = (0f64, 0usize, 0usize);
    let mut all_logits: Vec<f32> = Vec::new();
    let mut i = 0;
    while i < units.len() {
        // Consecutive windows of one length, up to --batch of them.
        let len = units[i].end - units[i].begin;
        let mut j = i + 1;
        while j < units.len() && j - i < o.batch && units[j].end - units[j].begin == len {
            j += 1;
        }
        let group = &units[i..j];
        let ids: Vec<u32> = group
            .iter()
            .flat_map(|w| stream[w.begin..w.end].iter().copied())
            .collect();
        if o.logits.is_some() {
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
    drop(pb);
    let seconds = t0.elapsed().as_secs_f64();

    // A loss or logit that is not finite usually comes from a model weight holding a NaN or an
    // infinity: name that tensor (and write no logits) rather than report a NaN perplexity.
    if !nll.is_finite() || all_logits.iter().any(|x| !x.is_finite()) {
        if let Some(e) = non_finite_weight(ck) {
            return Err(e);
        }
        // Every base weight finite: the adapters' updates (times their weights) or the
        // activations overflowed f32. An error, not a NaN perplexity or a file of NaN logits.
        let what = if o.adapters.is_empty() {
            "the model's activations".to_owned()
        } else {
            format!(
                "the adapters' updates (--weight {:?}) or the activations",
                o.weights
            )
        };
        return Err(crate::error::InputError::invalid(
            ck.folder(),
            format!("the forward gave a non-finite loss or logit: {what} overflow f32"),
        )
        .into());
    }
    let mut logits_path = None;
    if let Some(out) = &o.logits {
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

    let generated = match o.generate {
        Some(n) => Some(generate(
            &model,
            tok.as_ref().expect("prompt has a tokenizer"),
            &stream,
            n,
            o.seq_len,
            config.eos_token_id,
            exec,
        )?),
        None => None,
    };

    let loss = (scored > 0).then(|| nll / scored as f64);
    let report = EvalReport {
        model: o.model.display().to_string(),
        model_type: config.model_type.clone(),
        adapters: attached,
        mode: if o.merged { "merged" } else { "unmerged" }.into(),
        device: engine.describe(),
        input: input.into(),
        tokenizer: tok.as_ref().map(|t| t.describe()),
        sequences: units.len(),
        seq_len: if rows.is_some() {
            rows.map(|r| r.1).unwrap_or(0)
        } else {
            o.seq_len
        },
        stride: if rows.is_some() { 0 } else { o.stride },
        tokens,
        tokens_scored: scored,
        loss,
        perplexity: loss.map(f64::exp),
        seconds,
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
        logits: logits_path,
        generated,
    };
    let weight_dtype = ck
        .infos()
        .next()
        .map(|(_, t)| crate::dtype::name(t.dtype).to_lowercase())
        .unwrap_or_default();
    Ok(Evaluated {
        report,
        config,
        weight_dtype,
    })
}

/// The tokens read from `path` (an `input_ids` file, or text through the tokenizer) exist and
/// index the model's embedding: a one-line error naming the file otherwise, before any work.
/// `eval` and `train` (its data and eval data) check every token up front, so an id beyond
/// the vocabulary is refused even where no window would reach it.
/// `tokenizer`: the `tokenizer.json` the ids came from, named too (its vocabulary is the one
/// that does not fit the model).
pub(crate) fn check_token_ids(
    path: &std::path::Path,
    tokenizer: Option<&std::path::Path>,
    ids: &[u32],
    vocab: usize,
) -> Result<()> {
    use crate::error::InputError;
    if ids.is_empty() {
        bail!(InputError::invalid(path, "holds no tokens"));
    }
    if let Some((at, t)) = ids.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
        let from = tokenizer.map_or(String::new(), |p| format!(", from {}", p.display()));
        bail!(InputError::invalid(
            path,
            format!(
                "token id {t} (token {at}{from}) is not below the model's vocabulary size {vocab}"
            )
        ));
    }
    Ok(())
}

/// The first float tensor of `ck` holding a NaN or an infinity, as the one-line error naming
/// its file and tensor; `None` when every one is finite. Read only after a loss came out
/// non-finite (`eval`, `train`), so a healthy run pays nothing for it.
pub(crate) fn non_finite_weight(ck: &Checkpoint) -> Option<anyhow::Error> {
    let names: Vec<String> = ck.names().map(str::to_owned).collect();
    for name in names {
        if !ck
            .info(&name)
            .is_some_and(|t| crate::dtype::is_float_compute(t.dtype))
        {
            continue;
        }
        let Ok(v) = ck.read_f32(&name) else {
            continue;
        };
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            let file = ck
                .file_of(&name)
                .map(|f| f.path().to_path_buf())
                .unwrap_or_default();
            return Some(
                crate::error::InputError::invalid(
                    file,
                    format!(
                        "tensor `{name}`: element {i} is {}, so the loss is not finite",
                        v[i]
                    ),
                )
                .into(),
            );
        }
    }
    None
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

    /// Options are refused before the model is opened, naming the library's options; the binary
    /// spells them as the command line did before the plan existed (the strings are those of the
    /// pre-plan `commands/eval.rs`).
    #[test]
    fn options_are_checked_first_and_named_as_options() {
        let base = EvalOptions {
            model: PathBuf::from("/nonexistent/lorakit-eval"),
            adapters: vec![PathBuf::from("a")],
            weights: vec![1.0],
            merged: false,
            input: EvalInput::Prompt("hi".into()),
            tokenizer: None,
            seq_len: 4,
            stride: 4,
            batch: 1,
            logits: None,
            generate: None,
            progress: Default::default(),
        };
        let with = |f: &dyn Fn(&mut EvalOptions)| {
            let mut o = base.clone();
            f(&mut o);
            o
        };
        for (o, named, cli) in [
            (
                with(&|o| o.seq_len = 1),
                vec![Opt::SeqLen],
                "--seq-len must be at least 2",
            ),
            (
                with(&|o| o.stride = 5),
                vec![Opt::Stride, Opt::SeqLen],
                "--stride must be between 1 and --seq-len (4)",
            ),
            (
                with(&|o| o.stride = 0),
                vec![Opt::Stride, Opt::SeqLen],
                "--stride must be between 1 and --seq-len (4)",
            ),
            (
                with(&|o| o.batch = 0),
                vec![Opt::Batch],
                "--batch must be at least 1",
            ),
            (
                with(&|o| {
                    o.generate = Some(2);
                    o.input = EvalInput::Text(PathBuf::from("t.txt"));
                }),
                vec![Opt::Generate, Opt::Prompt],
                "--generate needs --prompt",
            ),
            (
                with(&|o| o.weights = vec![f64::INFINITY]),
                vec![Opt::Weight],
                "--weight inf is not a finite number in f32",
            ),
            (
                with(&|o| o.weights = vec![1e39]),
                vec![Opt::Weight],
                "--weight 1000000000000000000000000000000000000000 is not a finite number in f32",
            ),
        ] {
            let e = EvalPlan::new(o).err().expect("refused");
            let o = e.downcast_ref::<OptionError>().expect("an option error");
            assert_eq!(o.options(), named);
            assert_eq!(o.render(&crate::cli::flags::spell), cli);
        }
        let e = EvalPlan::new(with(&|o| o.weights.clear()))
            .err()
            .expect("refused");
        assert_eq!(
            e.to_string(),
            "0 weights for 1 adapters: give one weight per adapter"
        );
        // Valid options reach the model, and the missing folder is the error.
        let e = EvalPlan::new(base.clone()).err().expect("refused");
        assert!(e.downcast_ref::<OptionError>().is_none(), "{e:#}");
        assert!(e.to_string().contains("lorakit-eval"), "{e:#}");
    }
}
