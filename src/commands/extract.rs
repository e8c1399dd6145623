//! `lorakit extract`.
//!
//! Arguments → library options → plan → run → printed report. Must not validate or compute what the
//! library does, nor write to stdout/stderr except through `printer`.

use super::options;
use super::printer;
use crate::adapter::Format;
use crate::cli::ExtractArgs;
use crate::extract::{EmbeddingMode, ExtractOptions, ExtractPlan, ExtractSummary};
use crate::inspect::{human_bytes, table_of};
use crate::io::Checkpoint;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub fn run(a: ExtractArgs, quiet: bool) -> Result<i32> {
    let base = Checkpoint::open(&a.base)?;
    let tuned = Checkpoint::open(&a.tuned)?;
    let mut options = options(&a, &tuned, quiet)?;
    // The files a part must find unchanged at finalize: the base as given, not its copy.
    let base_inputs = base.input_paths();
    // A quantized base: ΔW against its dequantization (a temporary float copy, removed at exit).
    let (base, _dequantized) = crate::extract::dequantized_base(base, &tuned)?;
    if _dequantized.is_some() {
        options
            .base_model
            .get_or_insert_with(|| a.base.display().to_string());
    }
    if let Some(part) = a.part {
        return run_part(&a, part, base, base_inputs, tuned, options);
    }
    let plan = ExtractPlan::new(base, tuned, a.out.clone(), options)?;
    warn_one_sided(&plan, quiet);
    if a.dry_run {
        let d = plan.dry_run();
        printer::print_report(a.json, "extract", &d, || {
            format!(
                "dry run: would extract {} low-rank candidate(s) of {} selected tensor(s) ({} left out by --targets/--exclude) and write {}; nothing was written\n",
                d.low_rank_candidates_count,
                d.tensors_count,
                d.excluded_count,
                d.files.join(", ")
            )
        })?;
        return Ok(0);
    }
    let engine = crate::backend::Engine::new(a.device)?;
    let summary = plan.run(&engine).context("extract")?;
    report(&summary, a.format, a.json, quiet)?;
    Ok(0)
}

/// `extract --part I/N`: this part's share of the modules into a part file.
fn run_part(
    a: &ExtractArgs,
    part: (usize, usize),
    base: Checkpoint,
    base_inputs: Vec<PathBuf>,
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
        options
            .base_model
            .clone()
            .unwrap_or_else(|| base.root.display().to_string()),
    );
    let mut inputs = base_inputs;
    inputs.extend(tuned.input_paths());
    let plan = ExtractPlan::new(base, tuned, a.out.clone(), options)?;
    warn_one_sided(&plan, false);
    let engine = crate::backend::Engine::new(a.device)?;
    let items = plan.part_items(part);
    let outcomes = plan.process_items(&items, &engine).context("extract")?;
    let device = engine.describe();
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
    printer::print_report(a.json, "extract", &r, || {
        format!(
            "extract part {}/{}: {} of {} tensors ({} modules) → {}; when all parts are done: lorakit finalize {}\n",
            r.part,
            r.parts,
            r.tensor_count,
            plan.tensor_count(),
            r.module_count,
            r.path,
            a.out.display()
        )
    })?;
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
    let base = Checkpoint::open(&a.base)?;
    let tuned = Checkpoint::open(&a.tuned)?;
    let options = options(&a, &tuned, quiet)?;
    let mut inputs = base.input_paths();
    inputs.extend(tuned.input_paths());
    let stamps = crate::parts::stamps(&inputs)?;
    // A quantized base is dequantized again, as each part did (deterministic).
    let (base, _dequantized) = crate::extract::dequantized_base(base, &tuned)?;
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
        printer::warn(
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
    /// The summary with the adapter's files (`files`, a list of paths in every report that
    /// writes): the PEFT folder's two files or the kohya file, as the layout writes them.
    #[derive(serde::Serialize)]
    struct WithFiles<'a> {
        #[serde(flatten)]
        summary: &'a ExtractSummary,
        files: Vec<String>,
    }
    let files = format
        .layout()
        .files(Path::new(&summary.out))
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    printer::print_report(json, "extract", &WithFiles { summary, files }, || {
        render(summary)
    })
}

/// The extraction options of `a`, validated.
fn options(a: &ExtractArgs, tuned: &Checkpoint, quiet: bool) -> Result<ExtractOptions> {
    let rank = options::rank_rule(a.rank, a.energy, a.sv_ratio, Some(a.max_rank), "--max-rank")?;
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
        .map(|t| crate::extract::ModuleFilter::parse(crate::error::Opt::Targets, t))
        .transpose()?;
    let exclude = a
        .exclude
        .as_deref()
        .map(|t| crate::extract::ModuleFilter::parse(crate::error::Opt::Exclude, t))
        .transpose()?;
    if a.kohya_prefix.is_empty() || a.kohya_prefix.contains('.') {
        bail!(
            "--prefix `{}` must be a non-empty name without dots",
            a.kohya_prefix
        );
    }
    let embeddings = a.embeddings.unwrap_or(match a.format {
        Format::Peft | Format::Mlx => EmbeddingMode::Lora,
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
        max_power_iters: a.max_power_iters.max(a.power_iters),
        seed: a.seed,
        min_diff: a.min_diff,
        save_changed: a.save_changed,
        fan_in_fan_out: a.fan_in_fan_out,
        dtype: a.dtype.apply(tuned_dtype(tuned)),
        base_model: a.base_model.clone(),
        progress: printer::progress(!quiet && !a.json),
    })
}

/// The dtype `--dtype keep` writes: the tuned checkpoint's first 2-D float tensor's (F32 when
/// there is none).
fn tuned_dtype(tuned: &Checkpoint) -> crate::dtype::Dtype {
    tuned
        .infos()
        .map(|(_, i)| i)
        .find(|i| i.shape.len() == 2 && crate::dtype::is_float_storage(i.dtype))
        .map_or(crate::dtype::Dtype::F32, |i| i.dtype)
}

fn render(s: &ExtractSummary) -> String {
    let sci = |x: f64| format!("{x:.2e}");
    let method = if s.method == "exact" {
        "exact SVD".to_string()
    } else {
        format!(
            "randomized SVD p={} q={}…{} (adaptive) seed {}",
            s.oversample
                .map_or_else(|| "max(10, r/2)".to_string(), |p| p.to_string()),
            s.power_iters,
            s.max_power_iters,
            s.seed
        )
    };
    let format = s.format;
    let mut out = format!(
        "extracted {} − {} → {} ({format}, {method})\n\n",
        s.tuned, s.base, s.out
    );
    out.push_str(&table_of(
        &[
            "module",
            "kind",
            "shape",
            "rank",
            "alpha",
            "energy kept",
            "rel.error",
        ],
        &[false, false, true, true, true, true, true],
        s.modules.iter(),
        |m| {
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
                printer::percent(m.energy_kept),
                sci(m.rel_error),
            ]
        },
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
        "\n\n{} modules, {ranks}, {} of the energy kept, rel. error {}; adapter {} vs full ΔW {} ({:.1}×); {:.2} s on {}\n",
        t.module_count,
        printer::percent(t.energy_kept),
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
        printer::warn(
            quiet,
            &format!(
                "skipped {} non-float tensor(s) present in only one checkpoint (buffers, not weights): {}",
                plan.one_sided.len(),
                plan.one_sided.join(", ")
            ),
        );
    }
}
