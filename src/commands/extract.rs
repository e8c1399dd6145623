//! `lorakit extract`.

use crate::adapter::Format;
use crate::cli::DeviceArg;
use crate::dtype::Dtype;
use crate::extract::{
    CpuDeltaOperators, DeltaOperators, EmbeddingMode, ExtractOptions, ExtractPlan, ExtractSummary,
    RankRule,
};
use crate::inspect::{human_bytes, table};
use crate::io::Checkpoint;
use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, ValueEnum, ValueHint};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Extract a LoRA adapter from a fine-tuned checkpoint: ΔW = W_tuned − W_base, low rank.
///
/// Per weight, ΔW is formed in f32 from the two memory-mapped checkpoints and factored by a
/// randomized SVD (Halko–Martinsson–Tropp 2011, Alg. 4.4 + 5.1: power iterations with QR
/// re-orthonormalisation; exact SVD when that is cheaper, or everywhere with --exact). The kept
/// triplets become B = U·√S, A = √S·Vᵀ, so alpha/r·B·A is the best rank-r approximation the SVD
/// found. The output is a PEFT adapter folder (loads with PeftModel.from_pretrained) or a kohya
/// file. Every module's rank, kept energy and relative error ‖ΔW − s·B·A‖_F/‖ΔW‖_F of the
/// factors as written are reported (from the spectrum when that is exact to ~1e-4, otherwise
/// computed explicitly).
///
/// Candidates are float tensors named *.weight with 2 or more dimensions in both checkpoints:
/// 2-D weights are taken as nn.Linear [out, in] (pass --fan-in-fan-out for GPT-2 Conv1D
/// [in, out]: a checkpoint cannot tell), embeddings (module name with `embed`, wte, wpe,
/// shared) follow --embeddings, more dimensions are convolutions [out, in, kh, kw]. Unchanged
/// modules are skipped and listed; other changed tensors (norms, biases) are reported and, with
/// --save-changed, stored whole (PEFT modules_to_save). A tensor in one checkpoint only, or with
/// a different shape or dtype, is an error unless --targets/--exclude leave it out.
///
/// Same inputs, options and --seed give byte-identical files.
///
/// Examples:
///   lorakit extract --base base/ --tuned tuned/ --rank 16 --out adapter/
///   lorakit extract --base base/ --tuned tuned/ --energy 0.9 --max-rank 64 --alpha 32 --out a/
///   lorakit extract --base b/ --tuned t/ --rank 8 --targets attn --format kohya --out k.safetensors
///   lorakit extract --base gpt2/ --tuned gpt2-ft/ --rank 8 --fan-in-fan-out --out a/ --json
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(verbatim_doc_comment)]
#[command(group(ArgGroup::new("rank_rule").required(true).args(["rank", "energy", "sv_ratio"])))]
pub struct ExtractArgs {
    /// Base checkpoint W0: a .safetensors file or a Hugging Face model folder.
    #[arg(long, value_hint = ValueHint::AnyPath)]
    pub base: PathBuf,

    /// Fine-tuned checkpoint W, same tensors as the base.
    #[arg(long, value_hint = ValueHint::AnyPath)]
    pub tuned: PathBuf,

    /// Output: a folder for --format peft, a .safetensors file for --format kohya.
    #[arg(long, short = 'o', value_hint = ValueHint::AnyPath)]
    pub out: PathBuf,

    /// Rank of every module (capped at min(out, in)).
    #[arg(long, value_name = "R")]
    pub rank: Option<usize>,

    /// Per module, the smallest rank keeping a fraction E of ‖ΔW‖²_F (0 < E ≤ 1), at most
    /// --max-rank. Singular values are f32: prefer 0.999999 to 1 for "all but rounding noise".
    #[arg(long, value_name = "E")]
    pub energy: Option<f64>,

    /// Per module, keep singular values > s_max/X (kohya resize_lora's sv_ratio), at most
    /// --max-rank.
    #[arg(long, value_name = "X")]
    pub sv_ratio: Option<f64>,

    /// Upper bound of the rank picked by --energy or --sv-ratio.
    #[arg(long, value_name = "N", default_value_t = 128, conflicts_with = "rank")]
    pub max_rank: usize,

    /// Only these modules: a comma list of module names or dotted suffixes, as PEFT's
    /// target_modules (q_proj,v_proj matches model.layers.0.self_attn.q_proj), or re:REGEX
    /// (searched anywhere in the module name). Same syntax as train --targets.
    #[arg(long, value_name = "LIST")]
    pub targets: Option<String>,

    /// Leave out these modules or tensors (same syntax as --targets; matched against module
    /// and tensor names, e.g. embeddings.position_ids).
    #[arg(long, value_name = "LIST")]
    pub exclude: Option<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Peft)]
    pub format: Format,

    /// kohya key prefix (lora_unet, lora_te, lora_te1, lora_te2); the same flag as convert's.
    #[arg(long = "prefix", alias = "kohya-prefix", default_value = "lora_unet")]
    pub kohya_prefix: String,

    /// lora_alpha of every module (default: each module's rank, i.e. scale 1). With differing
    /// ranks the factors are rescaled so that ΔW = alpha/r·B·A holds for each module's r.
    #[arg(long, value_name = "A")]
    pub alpha: Option<f64>,

    /// Changed embeddings: low rank in PEFT's embedding layout, the tuned matrix whole
    /// (modules_to_save), or left out. Default: lora for peft, skip for kohya.
    #[arg(long, value_enum)]
    pub embeddings: Option<EmbeddingMode>,

    /// Full SVD of every ΔW instead of the randomized one (slow; for reference).
    #[arg(long)]
    pub exact: bool,

    /// Oversampling p of the randomized SVD (rank + p samples).
    #[arg(long, value_name = "P", default_value_t = 10)]
    pub oversample: usize,

    /// Power (subspace) iterations q of the randomized SVD.
    #[arg(long, value_name = "Q", default_value_t = 2)]
    pub power_iters: usize,

    /// Seed of the random test matrices (combined with each tensor's name).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Skip modules whose ‖ΔW‖_F/‖W0‖_F is below X (listed as below_min_diff).
    #[arg(long, value_name = "X", default_value_t = 0.0)]
    pub min_diff: f64,

    /// Store changed tensors that are not extracted (norms, biases) whole: PEFT
    /// modules_to_save, or base_layer.bias with bias "lora_only" for biases of LoRA modules.
    #[arg(long)]
    pub save_changed: bool,

    /// 2-D weights are stored [in, out] (GPT-2 Conv1D), not [out, in] (nn.Linear).
    #[arg(long)]
    pub fan_in_fan_out: bool,

    /// Dtype of the written tensors.
    #[arg(long, value_enum, default_value_t = FactorDtype::F32)]
    pub dtype: FactorDtype,

    /// base_model_name_or_path written into adapter_config.json (default: --base as given).
    #[arg(long, value_name = "NAME")]
    pub base_model: Option<String>,

    /// Where the products of the randomized SVD run: gpu forms W − W0 on the device from the
    /// stored bytes (sketch kernels); auto uses a GPU when one exists.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,

    /// Extract only part I of N of the modules (a deterministic share, balanced by size) into
    /// a part file beside the output, for N jobs on N machines; then run `lorakit finalize
    /// OUT` once to write the adapter, byte-identical to a single run. Every part needs the
    /// same inputs (same paths) and flags.
    #[arg(long, value_name = "I/N", value_parser = crate::parts::parse_part)]
    #[serde(skip)]
    pub part: Option<(usize, usize)>,

    /// Validate and print the plan (tensors selected, low-rank candidates, files to write);
    /// compute and write nothing.
    #[arg(long)]
    #[serde(skip)]
    pub dry_run: bool,

    /// Print the summary as JSON on stdout.
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
}

/// `--dtype` values of extract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FactorDtype {
    #[value(alias = "float32", alias = "float")]
    F32,
    #[value(alias = "float16", alias = "half")]
    F16,
    #[value(alias = "bfloat16")]
    Bf16,
}

impl From<FactorDtype> for Dtype {
    fn from(d: FactorDtype) -> Dtype {
        match d {
            FactorDtype::F32 => Dtype::F32,
            FactorDtype::F16 => Dtype::F16,
            FactorDtype::Bf16 => Dtype::BF16,
        }
    }
}

pub fn run(a: ExtractArgs, quiet: bool) -> Result<i32> {
    let options = options(&a, quiet)?;
    let base = Checkpoint::open(&a.base)?;
    let tuned = Checkpoint::open(&a.tuned)?;
    if let Some(part) = a.part {
        return run_part(&a, part, base, tuned, options);
    }
    let plan = ExtractPlan::new(base, tuned, a.out.clone(), options)?;
    warn_one_sided(&plan, quiet);
    if a.dry_run {
        let d = plan.dry_run();
        if a.json {
            super::print_json("extract", &d)?;
        } else {
            super::print(&format!(
                "dry run: would extract {} low-rank candidate(s) of {} selected tensor(s) ({} left out by --targets/--exclude) and write {}; nothing was written\n",
                d.low_rank_candidates_count,
                d.tensors_count,
                d.excluded_count,
                d.files.join(", ")
            ))?;
        }
        return Ok(0);
    }
    let engine = crate::backend::Engine::new(a.device)?;
    let summary = match &engine {
        crate::backend::Engine::Gpu(ctx) => plan.run(&crate::extract::GpuDeltaOperators { ctx }),
        crate::backend::Engine::Cpu => plan.run(&CpuDeltaOperators),
    }
    .context("extract")?;
    report(&summary, a.format, a.json, quiet)?;
    Ok(0)
}

/// `extract --part I/N`: this part's share of the modules into a part file.
fn run_part(
    a: &ExtractArgs,
    part: (usize, usize),
    base: Checkpoint,
    tuned: Checkpoint,
    options: ExtractOptions,
) -> Result<i32> {
    let start = std::time::Instant::now();
    // What every part must agree on, and what finalize rebuilds the plan from: the arguments
    // with absolute paths, and the default base_model_name_or_path made explicit (it is the
    // base as given, which finalize cannot know).
    let abs = |p: &Path| std::path::absolute(p).with_context(|| format!("{}", p.display()));
    let mut recorded = a.clone();
    recorded.base = abs(&a.base)?;
    recorded.tuned = abs(&a.tuned)?;
    recorded.out = abs(&a.out)?;
    recorded.base_model = Some(
        a.base_model
            .clone()
            .unwrap_or_else(|| base.root.display().to_string()),
    );
    let mut inputs = base.input_paths();
    inputs.extend(tuned.input_paths());
    let plan = ExtractPlan::new(base, tuned, a.out.clone(), options)?;
    warn_one_sided(&plan, false);
    let engine = crate::backend::Engine::new(a.device)?;
    let items = plan.part_items(part);
    let (outcomes, device) = match &engine {
        crate::backend::Engine::Gpu(ctx) => {
            let ops = crate::extract::GpuDeltaOperators { ctx };
            (plan.process_items(&items, &ops), ops.describe())
        }
        crate::backend::Engine::Cpu => (
            plan.process_items(&items, &CpuDeltaOperators),
            CpuDeltaOperators.describe(),
        ),
    };
    let outcomes = outcomes.context("extract")?;
    let header = crate::parts::ExtractPart {
        version: crate::parts::EXTRACT_PART_VERSION,
        part: part.0,
        parts: part.1,
        args: serde_json::to_value(&recorded)?,
        tensors: plan.tensor_names(),
        inputs: crate::parts::stamps(&inputs)?,
        device,
        items,
        outcomes: Vec::new(),
    };
    let path = crate::parts::extract_part_path(&a.out, a.format, part.0, part.1);
    let r = crate::parts::write_extract_part(&path, header, outcomes)?;
    let r = crate::parts::PartReport {
        seconds: start.elapsed().as_secs_f64(),
        ..r
    };
    if a.json {
        super::print_json("extract", &r)?;
    } else {
        super::print(&format!(
            "extract part {}/{}: {} of {} tensors ({} modules) → {}; when all parts are done: lorakit finalize {}\n",
            r.part,
            r.parts,
            r.tensor_count,
            plan.tensor_count(),
            r.module_count,
            r.path,
            a.out.display()
        ))?;
    }
    Ok(0)
}

/// `finalize OUT` for the part files of `extract --part`: rebuilds the plan from the recorded
/// arguments, checks every part against it and writes the adapter.
/// Joins the extract part files of `out`. `out` comes from the command line: the output path
/// recorded in the part files is never used (an edited part file cannot redirect the adapter).
pub fn finalize(
    parts: Vec<PathBuf>,
    out: &std::path::Path,
    json: bool,
    quiet: bool,
) -> Result<i32> {
    let start = std::time::Instant::now();
    let loaded = crate::parts::read_extract_parts(&parts)?;
    let first_path = &parts[0];
    let device = loaded[0].0.device.clone();
    let mut a: ExtractArgs = serde_json::from_value(loaded[0].0.args.clone()).map_err(|e| {
        crate::error::InputError::invalid(
            first_path,
            format!("part file records arguments this lorakit cannot read: {e}"),
        )
    })?;
    a.part = None;
    a.json = json;
    a.out = out.to_path_buf();
    let options = options(&a, quiet)?;
    let base = Checkpoint::open(&a.base)?;
    let tuned = Checkpoint::open(&a.tuned)?;
    let mut inputs = base.input_paths();
    inputs.extend(tuned.input_paths());
    let stamps = crate::parts::stamps(&inputs)?;
    let plan = ExtractPlan::new(base, tuned, a.out.clone(), options)?;
    warn_one_sided(&plan, quiet);
    let outcomes =
        crate::parts::join_extract_parts(loaded, &parts, &plan.tensor_names(), &stamps, |p| {
            plan.part_items(p)
        })?;
    let summary = plan
        .assemble(outcomes, device, start)
        .context("finalize extract")?;
    for p in &parts {
        std::fs::remove_file(p).map_err(|e| crate::error::InputError::io(p, e))?;
    }
    report(&summary, a.format, json, quiet)?;
    Ok(0)
}

fn report(summary: &ExtractSummary, format: Format, json: bool, quiet: bool) -> Result<()> {
    let unsaved: Vec<&str> = summary
        .changed_tensors
        .iter()
        .filter(|c| c.reason != "stored")
        .map(|c| c.name.as_str())
        .collect();
    if !unsaved.is_empty() && !json {
        super::warn(
            quiet,
            &format!(
                "{} changed tensor(s) not in the adapter ({}{}){}",
                unsaved.len(),
                unsaved
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", "),
                if unsaved.len() > 5 { ", …" } else { "" },
                if format == Format::Peft {
                    "; pass --save-changed to store float ones whole"
                } else {
                    ""
                }
            ),
        );
    }
    if json {
        super::print_json("extract", summary)
    } else {
        super::print(&render(summary))
    }
}

/// The extraction options of `a`, validated.
fn options(a: &ExtractArgs, quiet: bool) -> Result<ExtractOptions> {
    let rank = match (a.rank, a.energy, a.sv_ratio) {
        (Some(r), _, _) => {
            if r == 0 {
                bail!("--rank must be at least 1");
            }
            RankRule::Fixed(r)
        }
        (_, Some(e), _) => {
            if !(e > 0.0 && e <= 1.0) {
                bail!("--energy {e} must be in (0, 1]");
            }
            RankRule::Energy {
                energy: e,
                max_rank: a.max_rank,
            }
        }
        (_, _, Some(x)) => {
            if !(x.is_finite() && x > 0.0) {
                bail!("--sv-ratio {x} must be a positive number");
            }
            RankRule::SvRatio {
                ratio: x,
                max_rank: a.max_rank,
            }
        }
        _ => bail!("give one of --rank, --energy, --sv-ratio"),
    };
    if a.max_rank == 0 {
        bail!("--max-rank must be at least 1");
    }
    if let Some(al) = a.alpha {
        if !(al.is_finite() && al > 0.0) {
            bail!("--alpha {al} must be a positive number");
        }
    }
    if !(a.min_diff.is_finite() && a.min_diff >= 0.0) {
        bail!("--min-diff {} must be a non-negative number", a.min_diff);
    }
    let targets = a
        .targets
        .as_deref()
        .map(|t| crate::extract::ModuleFilter::parse("--targets", t))
        .transpose()?;
    let exclude = a
        .exclude
        .as_deref()
        .map(|t| crate::extract::ModuleFilter::parse("--exclude", t))
        .transpose()?;
    if a.kohya_prefix.is_empty() || a.kohya_prefix.contains('.') {
        bail!(
            "--prefix `{}` must be a non-empty name without dots",
            a.kohya_prefix
        );
    }
    let embeddings = a.embeddings.unwrap_or(match a.format {
        Format::Peft => EmbeddingMode::Lora,
        Format::Kohya => EmbeddingMode::Skip,
    });
    Ok(ExtractOptions {
        rank,
        targets,
        exclude,
        format: a.format,
        kohya_prefix: a.kohya_prefix.clone(),
        alpha: a.alpha,
        embeddings,
        exact: a.exact,
        oversample: a.oversample,
        power_iters: a.power_iters,
        seed: a.seed,
        min_diff: a.min_diff,
        save_changed: a.save_changed,
        fan_in_fan_out: a.fan_in_fan_out,
        dtype: a.dtype.into(),
        base_model: a.base_model.clone(),
        progress: super::printer::progress(!quiet && !a.json),
    })
}

fn render(s: &ExtractSummary) -> String {
    let sci = |x: f64| format!("{x:.2e}");
    let rows: Vec<Vec<String>> = s
        .modules
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.kind.clone(),
                m.shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("×"),
                m.rank.to_string(),
                format!("{}", m.alpha),
                format!("{:.6}", m.energy_kept),
                sci(m.rel_error),
            ]
        })
        .collect();
    let method = if s.method == "exact" {
        "exact SVD".to_string()
    } else {
        format!(
            "randomized SVD p={} q={} seed {}",
            s.oversample, s.power_iters, s.seed
        )
    };
    let format = match s.format {
        Format::Peft => "peft",
        Format::Kohya => "kohya",
    };
    let mut out = format!(
        "extracted {} − {} → {} ({format}, {method})\n\n",
        s.tuned, s.base, s.out
    );
    out.push_str(&table(
        &[
            "module",
            "kind",
            "shape",
            "rank",
            "alpha",
            "energy",
            "rel.error",
        ],
        &rows,
        &[false, false, true, true, true, true, true],
    ));
    let list = |v: Vec<&str>| -> String {
        let n = v.len();
        let mut s = v.into_iter().take(8).collect::<Vec<_>>().join(", ");
        if n > 8 {
            s.push_str(&format!(", … ({n} in all)"));
        }
        s
    };
    for reason in ["unchanged", "below_min_diff", "embedding_skip"] {
        let v: Vec<&str> = s
            .skipped
            .iter()
            .filter(|t| t.reason == reason)
            .map(|t| t.name.as_str())
            .collect();
        if !v.is_empty() {
            out.push_str(&format!(
                "\nskipped ({}): {}",
                reason.replace('_', " "),
                list(v)
            ));
        }
    }
    let changed: Vec<String> = s
        .changed_tensors
        .iter()
        .map(|c| match c.rel_diff {
            Some(r) => format!(
                "{} ({}, rel. diff {:.2e})",
                c.name,
                c.reason.replace('_', " "),
                r
            ),
            None => format!("{} ({})", c.name, c.reason.replace('_', " ")),
        })
        .collect();
    if !changed.is_empty() {
        out.push_str(&format!(
            "\nchanged tensors: {}",
            list(changed.iter().map(String::as_str).collect())
        ));
    }
    if !s.full_tensors.is_empty() {
        out.push_str(&format!(
            "\nstored whole: {}",
            list(s.full_tensors.iter().map(|f| f.name.as_str()).collect())
        ));
    }
    if s.excluded > 0 {
        out.push_str(&format!(
            "\nexcluded by --targets/--exclude: {} tensors",
            s.excluded
        ));
    }
    let t = &s.totals;
    let ranks = if t.rank_min == t.rank_max {
        format!("rank {}", t.rank_min)
    } else {
        format!("ranks {}–{}", t.rank_min, t.rank_max)
    };
    out.push_str(&format!(
        "\n\n{} modules, {ranks}, energy kept {:.6}, rel. error {}; adapter {} vs full ΔW {} ({:.1}×); {:.2} s on {}\n",
        t.module_count,
        t.energy_kept,
        sci(t.rel_error),
        human_bytes(s.adapter_bytes),
        human_bytes(s.full_delta_bytes),
        s.compression,
        s.seconds,
        s.device
    ));
    out
}

/// Integer buffers in one checkpoint only are skipped, with a word.
fn warn_one_sided(plan: &ExtractPlan, quiet: bool) {
    if !plan.one_sided.is_empty() {
        super::warn(
            quiet,
            &format!(
                "skipped {} non-float tensor(s) present in only one checkpoint (buffers, not weights): {}",
                plan.one_sided.len(),
                plan.one_sided.join(", ")
            ),
        );
    }
}
