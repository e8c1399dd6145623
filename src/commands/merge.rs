//! `lorakit merge`.
//!
//! Arguments → library options → plan → run → printed report. Must not validate or compute what the
//! library does, nor write to stdout/stderr except through `printer`.

use super::options;
use super::printer;
use crate::adapter::Adapter;
use crate::cli::MergeArgs;
use crate::error::InputError;
use crate::inspect::{human_bytes, table_of};
use crate::io::Checkpoint;
use crate::merge::gguf::{GgufMergeOptions, GgufMergePlan, GgufMergeReport};
use crate::merge::{MergeOptions, MergePlan, MergeSummary, WeightedAdapter};
use anyhow::Result;

/// The merge plan of a command line: the adapter weights validated, base and adapters opened,
/// every module matched. `merge` and `run` (recipes, for their dry-run sizes) both plan
/// through here, so a recipe step is validated exactly as the command would be.
pub fn plan(a: &MergeArgs, progress: bool) -> Result<MergePlan> {
    plan_split(
        a,
        progress,
        a.output.out.clone(),
        a.output.max_shard_size,
        a.part,
    )
}

/// [`plan`] with its own output path and split (a GGUF output is laid out by its own plan).
fn plan_split(
    a: &MergeArgs,
    progress: bool,
    out: std::path::PathBuf,
    max_shard_size: Option<u64>,
    part: Option<(usize, usize)>,
) -> Result<MergePlan> {
    let weights = options::adapter_weights(a.adapters.len(), &a.weights)?;
    let base = Checkpoint::open(&a.base)?;
    let adapters = weighted_adapters(a, &weights)?;
    let options = MergeOptions {
        dtype: a.output.dtype,
        max_shard_size,
        unmerge: a.unmerge,
        allow_unmatched: a.allow_unmatched,
        progress: printer::progress(progress),
        part,
        quant: match a.quant {
            crate::cli::QuantArg::Keep => crate::merge::QuantOutput::Keep,
            crate::cli::QuantArg::Dequantize => crate::merge::QuantOutput::Dequantize,
        },
        as_trained_on: a
            .as_trained_on
            .map(|(kind, double_quant)| crate::merge::AsTrainedOn {
                kind,
                blocksize: a.blocksize,
                double_quant,
                skip: a.as_trained_on_skip.clone(),
                dtype: a.trained_dtype.map(|d| match d {
                    crate::cli::TrainedDtypeArg::Bf16 => crate::dtype::Dtype::BF16,
                    crate::cli::TrainedDtypeArg::F16 => crate::dtype::Dtype::F16,
                    crate::cli::TrainedDtypeArg::F32 => crate::dtype::Dtype::F32,
                }),
            }),
        rounding: if a.exact_rounding {
            crate::merge::Rounding::Exact
        } else {
            crate::merge::Rounding::F32
        },
        tied_embeddings: match a.tied_embeddings {
            crate::cli::TiedArg::Refuse => crate::merge::TiedEmbeddings::Refuse,
            crate::cli::TiedArg::Shared => crate::merge::TiedEmbeddings::Shared,
        },
        expand_base: if a.expand_base {
            crate::merge::ExpandBase::ZeroPad
        } else {
            crate::merge::ExpandBase::Refuse
        },
    };
    MergePlan::new(base, adapters, out, options)
}

/// The adapters of the command line, opened in order, each with its weight.
fn weighted_adapters(a: &MergeArgs, weights: &[f64]) -> Result<Vec<WeightedAdapter>> {
    let mut target = None;
    a.adapters
        .iter()
        .zip(weights)
        .map(|(p, &weight)| {
            Ok(WeightedAdapter {
                adapter: open_adapter(p, &a.base, &mut target)?,
                weight,
            })
        })
        .collect()
}

pub fn run(a: MergeArgs, quiet: bool) -> Result<i32> {
    if a.exact_rounding && crate::io::gguf::is_gguf(&a.base) {
        return Err(InputError::invalid(
            &a.base,
            "is a GGUF model: --exact-rounding covers safetensors bases (a GGUF merge is rounded again into its tensor types)",
        )
        .into());
    }
    if a.expand_base && (crate::io::gguf::is_gguf(&a.base) || writes_gguf(&a)) {
        return Err(InputError::invalid(
            &a.base,
            "--expand-base widens safetensors weights written as safetensors; a GGUF base or output keeps the base's tensor shapes",
        )
        .into());
    }
    if crate::io::gguf::is_gguf(&a.base) {
        return gguf(a, quiet);
    }
    if writes_gguf(&a) {
        return hf_to_gguf(a, quiet);
    }
    if a.gguf_tokenizer_pre.is_some() {
        return Err(InputError::invalid(
            &a.output.out,
            "--gguf-tokenizer-pre names the tokenizer of a GGUF model written from a Hugging Face base: the output must end in .gguf",
        )
        .into());
    }
    if a.outtype.is_some() {
        return Err(InputError::invalid(
            &a.base,
            "is not a GGUF file: --outtype sets the type of tensors merged into a GGUF base or written to a .gguf output; use --dtype for safetensors",
        )
        .into());
    }
    let plan = plan(&a, !quiet && !a.json)?;
    warn_unmatched(quiet, &plan.unmatched);
    printer::warn_bundled(quiet, plan.adapters.iter().map(|w| &w.adapter));
    if a.dry_run {
        let d = plan.dry_run();
        printer::print_report(a.json, "merge", &d, || render_dry_run(&d))?;
        return Ok(0);
    }
    let engine = a.compute.engine()?;
    let summary = plan.run(&engine)?;
    print_profile(summary.run.seconds);
    printer::print_report(a.json, "merge", &summary, || render(&summary))?;
    Ok(0)
}

/// `lorakit dequantize`: a merge plan with no adapters (see `MergePlan::dequantize`).
pub fn run_dequantize(a: crate::cli::DequantizeArgs, quiet: bool) -> Result<i32> {
    let base = Checkpoint::open(&a.model)?;
    let options = MergeOptions {
        dtype: a.output.dtype,
        max_shard_size: a.output.max_shard_size,
        progress: printer::progress(!quiet && !a.json),
        ..MergeOptions::default()
    };
    let plan = MergePlan::dequantize(base, a.output.out.clone(), options)?;
    if a.dry_run {
        let d = plan.dry_run();
        printer::print_report(a.json, "dequantize", &d, || render_dry_run(&d))?;
        return Ok(0);
    }
    let engine = crate::backend::Engine::Cpu;
    let summary = plan.run(&engine)?;
    printer::print_report(a.json, "dequantize", &summary, || {
        format!(
            "wrote {} (dequantized {} weights of {}; {} other tensors copied, {} files, {} in {:.2} s)\n",
            summary.run.out,
            summary.tensors_dequantized_count,
            summary.run.base,
            summary.run.tensors_copied_count - summary.tensors_dequantized_count,
            summary.run.files.len(),
            human_bytes(summary.run.bytes_written),
            summary.run.seconds
        )
    })?;
    Ok(0)
}

fn render(s: &MergeSummary) -> String {
    // "wrote OUT", first: the base is read, never written.
    let mut out = headline(
        &s.run.out,
        s.run.operation,
        s.run.adapters.len(),
        &format!("base {}", s.run.base),
    );
    for d in &s.run.created_folders {
        out.push_str(&format!("created folder {d}\n"));
    }
    if !s.run.created_folders.is_empty() {
        out.push('\n');
    }
    out.push_str(&table_of(
        &["adapter", "weight", "modules", "replaced", "biases"],
        &[false, true, true, true, true],
        s.run.adapters.iter(),
        |a| {
            vec![
                a.path.clone(),
                format!("{}", a.weight),
                a.modules_merged.to_string(),
                a.tensors_replaced.to_string(),
                a.biases_updated.to_string(),
            ]
        },
    ));
    if s.tensors_streamed_count > 0 {
        out.push_str(&format!(
            "\ngpu: {} of {} merged tensors streamed through the device in chunks, never whole in memory\n",
            s.tensors_streamed_count, s.run.tensors_merged_count
        ));
    }
    if s.tensors_requantized_count > 0 {
        out.push_str(&format!(
            "\nquantized base: {} merged weights quantized again in their format (fresh scales), every other tensor copied\n",
            s.tensors_requantized_count
        ));
    }
    if s.tensors_dequantized_count > 0 {
        out.push_str(&format!(
            "\nquantized base: {} weights dequantized and written as float, quantization companions dropped\n",
            s.tensors_dequantized_count
        ));
    }
    if !s.qlora.is_empty() {
        out.push_str(
            "\nas trained on: merged into dequant(Q(W)) where transformers' bitsandbytes quantizer converts the layer, else into W as loaded; stray term W − that removed\n",
        );
        out.push_str(&table_of(
            &["tensor", "loaded", "‖W−dq(Q(W))‖", "‖ΔW‖", "ratio"],
            &[false, false, true, true, true],
            s.qlora.iter().filter(|q| q.not_quantized.is_none()),
            |q| {
                vec![
                    q.name.clone(),
                    q.load_dtype.clone(),
                    format!("{:.4e}", q.stray_norm),
                    format!("{:.4e}", q.delta_norm),
                    format!("{:.3}", q.ratio),
                ]
            },
        ));
        let float: Vec<_> = s
            .qlora
            .iter()
            .filter_map(|q| Some((q, q.not_quantized.as_deref()?)))
            .collect();
        if !float.is_empty() {
            out.push_str("\nnot quantized by transformers (merged into W as loaded):\n");
            out.push_str(&table_of(
                &["tensor", "loaded", "why"],
                &[false, false, false],
                float,
                |(q, why)| vec![q.name.clone(), q.load_dtype.clone(), why.to_owned()],
            ));
        }
    }
    out.push_str(&format!(
        "\n{} tensors {}, {} copied, {} files, {} written in {:.2} s ({:.2} GB/s) on {}\n",
        s.run.tensors_merged_count,
        done_verb(s.run.operation),
        s.run.tensors_copied_count,
        s.run.files.len(),
        human_bytes(s.run.bytes_written),
        s.run.seconds,
        s.run.gb_per_s,
        s.run.device
    ));
    out
}

/// The dry-run table of the files a merge would write (safetensors shards or one GGUF file):
/// path, tensor count, size.
fn files_table<'a>(files: impl Iterator<Item = (&'a str, usize, u64)>) -> String {
    table_of(
        &["file", "tensors", "bytes"],
        &[false, true, true],
        files,
        |(path, tensors, bytes)| vec![path.to_string(), tensors.to_string(), human_bytes(bytes)],
    )
}

fn render_dry_run(d: &crate::merge::DryRunSummary) -> String {
    let mut out = format!(
        "dry run: would write {} ({} of base {}): {} modules matched, {} tensors changed, {} total\n\n",
        d.out,
        d.operation,
        d.base,
        d.modules_matched_count,
        d.tensors_merged_count,
        human_bytes(d.bytes)
    );
    out.push_str(&files_table(
        d.files
            .iter()
            .map(|f| (f.path.as_str(), f.tensors_count, f.bytes)),
    ));
    if let Some(i) = &d.index {
        out.push_str(&format!("\nindex {i}\n"));
    }
    if !d.copied.is_empty() {
        out.push_str(&format!("copied {}\n", d.copied.join(", ")));
    }
    out.push_str("nothing was written\n");
    out
}

/// Whether this merge writes a GGUF file (into a GGUF base, or a Hugging Face base to a `.gguf`
/// output) rather than safetensors: the paths [`plan`] does not cover.
pub fn writes_gguf(a: &MergeArgs) -> bool {
    crate::io::gguf::is_gguf(&a.base)
        || a.output
            .out
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Plans `merge --base MODEL.gguf` in full (which validates the base, the adapters and their
/// matching) and drops the plan: what a recipe's plan asks of a GGUF merge step, so that a bad
/// input is refused before any step runs, as for safetensors merges.
pub fn gguf_check(a: &MergeArgs) -> Result<()> {
    gguf_plan(a, true).map(drop)
}

/// `merge --base MODEL.gguf`'s plan: flags that only make sense for safetensors outputs are
/// refused.
fn gguf_plan(a: &MergeArgs, quiet: bool) -> Result<GgufMergePlan> {
    let refuse = |flag: &str| -> Result<GgufMergePlan> {
        Err(InputError::invalid(
            &a.base,
            format!("a GGUF base: {flag} is not supported for GGUF outputs"),
        )
        .into())
    };
    if a.output.dtype != crate::merge::DtypeChoice::Keep {
        return refuse("--dtype (use --outtype)");
    }
    if a.gguf_tokenizer_pre.is_some() {
        return refuse("--gguf-tokenizer-pre (the base's tokenizer is kept)");
    }
    let weights = options::adapter_weights(a.adapters.len(), &a.weights)?;
    let base = crate::io::gguf::GgufModel::open(&a.base)?;
    let adapters = weighted_adapters(a, &weights)?;
    let options = GgufMergeOptions {
        outtype: a.outtype.unwrap_or_default(),
        max_shard_size: a.output.max_shard_size,
        unmerge: a.unmerge,
        allow_unmatched: a.allow_unmatched,
        part: a.part,
        progress: printer::progress(!quiet && !a.json),
        tied_embeddings: match a.tied_embeddings {
            crate::cli::TiedArg::Refuse => crate::merge::TiedEmbeddings::Refuse,
            crate::cli::TiedArg::Shared => crate::merge::TiedEmbeddings::Shared,
        },
    };
    GgufMergePlan::new(&a.base, base, adapters, a.output.out.clone(), options)
}

/// One warning line per unmatched module (`ADAPTER: unmatched module DETAIL`), for every
/// merge path: safetensors, GGUF base and GGUF output.
fn warn_unmatched(quiet: bool, unmatched: &[crate::merge::UnmatchedReport]) {
    for u in unmatched {
        printer::warn(
            quiet,
            &format!("{}: unmatched module {}", u.adapter, u.detail),
        );
    }
}

/// The merge profile line when the environment asks for it (`LORAKIT_MERGE_PROFILE`): a
/// diagnostic, shown even with --quiet.
fn print_profile(seconds: f64) {
    if crate::backend::profile::enabled() {
        eprintln!("{}", crate::backend::profile::line(seconds));
    }
}

/// `merge --base MODEL.gguf`.
fn gguf(a: MergeArgs, quiet: bool) -> Result<i32> {
    let plan = gguf_plan(&a, quiet)?;
    warn_unmatched(quiet, &plan.unmatched);
    if a.dry_run {
        let d = plan.dry_run();
        if a.json {
            printer::print_json("merge", &d)?;
        } else {
            let mut out = format!(
                "dry run: would write {} ({} tensors merged, --outtype {}, {} copied); nothing written\n\n",
                d.out, d.tensors_merged_count, d.outtype, d.tensors_copied_count
            );
            out.push_str(&files_table(
                d.files
                    .iter()
                    .map(|f| (f.path.as_str(), f.tensor_count, f.bytes)),
            ));
            printer::print(&out)?;
        }
        return Ok(0);
    }
    let report = plan.run(&a.compute.engine()?)?;
    print_profile(report.run.seconds);
    printer::print_report(a.json, "merge", &report, || render_gguf(&report))?;
    Ok(0)
}

/// `merge --base HF_FOLDER --out MODEL.gguf`: the merged model written as llama.cpp's
/// converter writes it.
fn hf_to_gguf(a: MergeArgs, quiet: bool) -> Result<i32> {
    use crate::merge::gguf::OutType;
    if a.output.dtype != crate::merge::DtypeChoice::Keep {
        return Err(InputError::invalid(
            &a.output.out,
            "is a GGUF model: --dtype sets safetensors outputs; use --outtype",
        )
        .into());
    }
    // convert_hf_to_gguf.py's default type.
    let outtype = match a.outtype {
        None => crate::io::gguf::GgmlType::F16,
        Some(OutType::To(t)) => t,
        Some(OutType::Keep) => {
            return Err(InputError::invalid(
                &a.output.out,
                "--outtype keep: a safetensors base has no GGUF types to keep; choose f32, f16, bf16, q8_0, …",
            )
            .into())
        }
    };
    if a.dry_run {
        return Err(InputError::invalid(
            &a.output.out,
            "--dry-run is not supported yet for a GGUF model written from a safetensors base",
        )
        .into());
    }
    // The GGUF plan lays out, checks and writes the output (files, parts); the merge plan only
    // merges, so it gets no split and a path that never exists (`OUT.lorakit-unused`): its
    // safetensors layout rules (a folder base wants a folder output) are not the GGUF file's.
    let mut unused = a.output.out.clone().into_os_string();
    unused.push(".lorakit-unused");
    let merge = plan_split(&a, false, unused.into(), None, None)?;
    warn_unmatched(quiet, &merge.unmatched);
    printer::warn_bundled(quiet, merge.adapters.iter().map(|w| &w.adapter));
    let options = crate::merge::gguf_hf::HfGgufOptions {
        outtype,
        tokenizer_pre: a.gguf_tokenizer_pre.clone(),
        max_shard_size: a.output.max_shard_size,
        part: a.part,
    };
    let p = crate::merge::gguf_hf::HfGgufPlan::new(merge, a.output.out.clone(), options)?;
    let r = p.run(&a.compute.engine()?)?;
    for t in &r.tensors {
        if let Some(f) = &t.fallback_from {
            printer::warn(
                quiet,
                &format!(
                    "{}: rows are not whole {f} blocks, written as {} (llama-quantize's fallback)",
                    t.name, t.ty
                ),
            );
        }
    }
    if a.json {
        printer::print_json("merge", &r)?;
    } else {
        let mut out = headline(
            &r.run.out,
            r.run.operation,
            r.run.adapters.len(),
            &format!("{}, as GGUF {}", r.run.base, r.architecture),
        );
        out.push_str(&format!(
            "{} tensors ({} merged), --outtype {}, {} written in {:.2} s\n",
            r.tensors.len(),
            r.run.tensors_merged_count,
            r.outtype,
            human_bytes(r.run.bytes_written),
            r.run.seconds
        ));
        printer::print(&out)?;
    }
    Ok(0)
}

/// `finalize OUT.gguf`: the parts of a GGUF merge checked, their manifests removed.
pub fn finalize_gguf(out: &std::path::Path, json: bool) -> Result<i32> {
    let r = crate::merge::gguf_parts::finalize(out)?;
    printer::print_report(json, "finalize", &r, || {
        format!(
            "finalized {}: {} parts, {} files checked ({}, {} tensors)\n",
            r.out,
            r.parts,
            r.files.len(),
            human_bytes(r.bytes),
            r.tensor_count
        )
    })?;
    Ok(0)
}

/// What a report's operation did to its tensors: "unmerged" for an unmerge, else "merged".
fn done_verb(operation: &str) -> &'static str {
    if operation == "unmerge" {
        "unmerged"
    } else {
        "merged"
    }
}

fn render_gguf(r: &GgufMergeReport) -> String {
    let mut out = headline(
        &r.run.out,
        r.run.operation,
        r.run.adapters.len(),
        &format!("{}, {}", r.run.base, r.architecture),
    );
    out.push_str(&table_of(
        &[
            "tensor",
            "type",
            "quant rel err",
            "quant max abs",
            "modules",
        ],
        &[false, false, true, true, false],
        r.merged_tensors.iter(),
        |t| {
            vec![
                t.name.clone(),
                match &t.fallback_from {
                    Some(_) => format!("{} → {}*", t.base_type, t.ty),
                    None => format!("{} → {}", t.base_type, t.ty),
                },
                format!("{:.3e}", t.quant_rel_fro_error),
                format!("{:.3e}", t.quant_max_abs_error),
                t.modules.join(" + "),
            ]
        },
    ));
    out.push_str(&format!(
        "\n{} tensors {} (--outtype {}), {} copied byte for byte, {} written in {:.2} s\n",
        r.run.tensors_merged_count,
        done_verb(r.run.operation),
        r.outtype,
        r.run.tensors_copied_count,
        human_bytes(r.run.bytes_written),
        r.run.seconds
    ));
    let fallbacks = r
        .merged_tensors
        .iter()
        .filter(|t| t.fallback_from.is_some())
        .count();
    if fallbacks > 0 {
        out.push_str(&format!(
            "* {fallbacks} tensor(s) in llama-quantize's fallback type: their rows are not whole blocks of --outtype {} (fallback_from in --json)\n",
            r.outtype
        ));
    }
    if let Some([i, n]) = r.run.part {
        out.push_str(&format!(
            "part {i}/{n}: wrote {} of the output's files; when all parts are done: lorakit finalize {}\n",
            r.run.files.len(),
            r.run.out
        ));
    }
    out
}

/// An adapter of any format; a llama.cpp GGUF adapter is read in the base's terms (its
/// architecture and head counts, read once from `base`: a GGUF model or a Hugging Face folder).
fn open_adapter(
    p: &std::path::Path,
    base: &std::path::Path,
    target: &mut Option<crate::adapter::formats::gguf::Target>,
) -> Result<Adapter> {
    use crate::adapter::formats::gguf;
    if !crate::io::gguf::is_gguf(p) {
        return Ok(Adapter::open(p)?);
    }
    if target.is_none() {
        *target = Some(gguf::Target::open(base)?);
    }
    Ok(gguf::read(p, target.as_ref().expect("just set"))?)
}

/// "wrote OUT (merged N adapter(s) into a copy of BASE)", first: the base is read, never
/// written. One wording for safetensors and GGUF merges.
fn headline(out: &str, operation: &str, adapters: usize, base: &str) -> String {
    let (verb, how) = if operation == "unmerge" {
        ("unmerged", "from")
    } else {
        ("merged", "into a copy of")
    };
    format!("wrote {out} ({verb} {adapters} adapter(s) {how} {base})\n\n")
}
