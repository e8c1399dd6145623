//! Planning a merge: every adapter module resolved against the base, tied embeddings and
//! unmatched modules decided, the output files laid out and checked against the inputs.
//! Must not write anything (the plan is also what `--dry-run` and recipes print).

use super::layout::{extra_files, safetensors_name, shard_groups, shard_stem, MODELOPT_CONFIG};
use super::model::*;
use crate::adapter::formats::peft::params;
use crate::adapter::formats::peft::BaseResidual;
use crate::adapter::mapping::{self, Unmatched};
use crate::backend::Rounding;
use crate::dtype::{self, Dtype};
use crate::error::{InputError, Opt, OptNames, OptionError};
use crate::io::checkpoint::Layout;
use crate::io::Checkpoint;
use crate::ops::output::DtypeChoice;
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::path::PathBuf;

impl MergePlan {
    /// Resolves and validates everything; writes nothing.
    pub fn new(
        base: Checkpoint,
        adapters: Vec<WeightedAdapter>,
        out: PathBuf,
        options: MergeOptions,
    ) -> Result<Self> {
        if adapters.is_empty() {
            bail!("no adapter given");
        }
        Self::build(base, adapters, out, options, false)
    }

    /// `lorakit dequantize`: the plan of a copy of `base` with every quantized weight written as
    /// float and its companion tensors dropped. Refuses a base with nothing quantized.
    pub fn dequantize(base: Checkpoint, out: PathBuf, mut options: MergeOptions) -> Result<Self> {
        options.quant = QuantOutput::Dequantize;
        Self::build(base, Vec::new(), out, options, true)
    }

    fn build(
        base: Checkpoint,
        mut adapters: Vec<WeightedAdapter>,
        out: PathBuf,
        options: MergeOptions,
        dequantize_only: bool,
    ) -> Result<Self> {
        let quant = crate::io::quant::QuantMap::scan(&base)?;
        if dequantize_only || options.quant == QuantOutput::Dequantize {
            quant.check_readable()?;
        }
        if dequantize_only && quant.is_empty() {
            bail!(InputError::invalid(
                &base.root,
                "no quantized weights (bitsandbytes 4-bit/int8, FP8 with scales) to dequantize"
            ));
        }
        if options.as_trained_on.is_some() && !quant.is_empty() {
            bail!(InputError::option(&base.root, |o| {
                format!(
                "{0} merges into a full-precision base as if quantized; this base is already quantized (merge into it without {0})",
                o.opt(Opt::AsTrainedOn)
            )
            }));
        }
        // Everything this run reads; checked against everything it writes once the layout is
        // known, before anything is written.
        let mut inputs = base.input_paths();
        inputs.push(base.root.clone());
        for a in &adapters {
            inputs.extend(a.adapter.input_paths());
        }

        // MoE experts (PEFT `target_parameters`) take the base's layout.
        // Names transformers gives base tensors at load (conversion_mapping.py) on their
        // on-disk names first.
        for wa in &mut adapters {
            mapping::to_disk_names(&mut wa.adapter, &base)?;
            params::fit_to_base(&mut wa.adapter, &base)?;
        }
        for wa in &mut adapters {
            params::fan_in_fan_out_as_peft(&mut wa.adapter, &base);
        }
        let mut actions: HashMap<String, Action> = HashMap::new();
        let mut base_override: HashMap<String, (usize, usize)> = HashMap::new();
        let mut rows: HashMap<(usize, usize), mapping::RowSlice> = HashMap::new();
        let mut splits: HashMap<(usize, usize), HashMap<String, mapping::Part>> = HashMap::new();
        let mut unmatched = Vec::new();
        let mut resolutions = Vec::new();
        let has_lm_head = base.names().any(is_lm_head_name);
        let is_tied = ties_embeddings(&base, has_lm_head);
        // `--expand-base`: the base weights some adapter reads wider, at the widths they are
        // written with; every adapter is then resolved against them.
        let widened = super::widen::widenings(&adapters, &base, &quant, &options)?;
        super::widen::pad_narrow(&mut adapters, &base, &quant, &widened)?;
        for (ai, wa) in adapters.iter().enumerate() {
            let a = &wa.adapter;
            a.check_mergeable()?;
            check_weight_tying(a, is_tied)?;
            let label = a.path.display().to_string();
            let mut res = mapping::resolve_widened(a, &base, Some(&quant), &widened);
            // On the shared tensor; the tie check below refuses it unless `shared` is asked for,
            // naming the flag (it was an unmatched `lm_head.weight` before).
            if is_tied && !has_lm_head {
                land_lm_head_on_tied_embedding(a, &base, &mut res);
            }
            super::frod_base::check(a, &res, &base, &quant)?;
            for u in &res.unmatched {
                unmatched.push(UnmatchedReport {
                    adapter: label.clone(),
                    detail: u.clone(),
                });
            }
            let mut touched: Vec<(String, String)> = Vec::new();
            for p in &res.modules {
                let m = &a.modules[p.module];
                if options.unmerge && m.dora_magnitude.is_some() {
                    bail!(InputError::invalid(
                        &a.path,
                        format!(
                            "module `{}`: a DoRA merge cannot be undone from the merged weights alone (the weight norm of the original base is lost)",
                            m.name
                        )
                    ));
                }
                if options.rounding == Rounding::Exact && m.dora_magnitude.is_some() {
                    bail!(InputError::invalid(
                        &a.path,
                        format!(
                            "module `{}`: exact rounding covers W0 + s·B·A; a DoRA update (a weight norm and a division) is outside it; merge with f32 rounding",
                            m.name
                        )
                    ));
                }
                if options.unmerge && m.factors.delta_reads_base_values() {
                    bail!(InputError::invalid(
                        &a.path,
                        format!(
                            "module `{}`: a {} update depends on the base weight (W' = f(W0)); lorakit does not undo it from the merged weights",
                            m.name,
                            m.factors.algo()
                        )
                    ));
                }
                if let Some(rule) = a.residual_of(m) {
                    // Why not, as a sentence that may name an option (spelled by the front end).
                    let why: Option<fn(&OptNames) -> String> = if options.unmerge {
                        Some(|_| {
                            "it cannot be unmerged: the merged weight does not say what the original was".into()
                        })
                    } else if quant.get(&p.weight).is_some() {
                        Some(|_| {
                            "lorakit computes the residual of full-precision bases only, not of a quantized one".into()
                        })
                    } else if options.as_trained_on.is_some() {
                        Some(|o| {
                            format!(
                                "the QLoRA base of {} and PEFT's residual cannot both apply",
                                o.opt(Opt::AsTrainedOn)
                            )
                        })
                    } else if rule == BaseResidual::Olora && m.base_transposed {
                        Some(|_| {
                            "PEFT's OLoRA factors a fan_in_fan_out (Conv1D) weight as stored, so its lora_B does not fit the layer".into()
                        })
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        let (name, label, weight) =
                            (m.name.clone(), rule.label(), p.weight.clone());
                        bail!(InputError::option(&a.path, move |o| {
                            format!(
                            "module `{name}`: the adapter ({label}) is added to the base PEFT rewrites from `{weight}`, and {}",
                            why(o)
                        )
                        }));
                    }
                }
                touched.push((m.name.clone(), p.weight.clone()));
                match actions
                    .entry(p.weight.clone())
                    .or_insert_with(|| Action::Merge(Vec::new()))
                {
                    Action::Merge(v) => {
                        // Experts of one fused parameter land on their own slices, and so do
                        // q, k and v of a fused `in_proj_weight` (disjoint row slices).
                        let expert = |mi: usize| params::parse_expert(&a.modules[mi].name);
                        let same_slice = |mi: usize| match (expert(mi), expert(p.module)) {
                            (Some(x), Some(y)) => x.1 == y.1,
                            _ => mapping::RowSlice::overlap(rows.get(&(ai, mi)).copied(), p.rows),
                        };
                        // On a tied base with `shared`, an `embed_tokens` and an `lm_head` LoRA
                        // both land on the one shared tensor: PEFT's layers wrap the same
                        // Parameter, and merge_and_unload adds both ΔW to it in place, in module
                        // order (embed_tokens first; `tuners/tuners_utils.py` `_unload_and_optionally_merge`
                        // over `named_modules`, `tuners/lora/layer.py` `Embedding.merge`,
                        // `Linear.merge`). fixtures/gen/gaps8_fixtures.py `tied_both`.
                        // (refused below, naming the flag, unless `shared`)
                        let is_head = |n: &str| is_lm_head_name(&format!("{n}.weight"));
                        let tied_pair = |mi: usize| {
                            is_tied
                                && !has_lm_head
                                && is_embedding_name(&p.weight)
                                && is_head(&a.modules[mi].name) != is_head(&m.name)
                        };
                        if v.iter()
                            .any(|&(x, mi)| x == ai && same_slice(mi) && !tied_pair(mi))
                        {
                            bail!(InputError::invalid(
                                &a.path,
                                format!(
                                    "two modules of this adapter land on base tensor `{}`",
                                    p.weight
                                )
                            ));
                        }
                        // With DoRA, PEFT's second layer norms the weight the first already
                        // merged into (`DoraLinearVariant.merge_unsafe` over `base_layer.weight`);
                        // lorakit's DoRA norm is over the base ([`crate::backend::Dora`]).
                        if let Some(&(_, other)) =
                            v.iter().find(|&&(x, mi)| x == ai && tied_pair(mi))
                        {
                            let dora = [other, p.module]
                                .into_iter()
                                .find(|&i| a.modules[i].dora_magnitude.is_some());
                            if let Some(i) = dora {
                                bail!(InputError::invalid(
                                    &a.path,
                                    format!(
                                        "module `{}` is DoRA, and it lands with `{}` on the shared tied tensor `{}`: PEFT merges the second of them from the weight the first already changed (its DoRA norm included), which lorakit does not reproduce; merge a plain LoRA, or untie the base first",
                                        a.modules[i].name,
                                        a.modules[if i == other { p.module } else { other }].name,
                                        p.weight
                                    )
                                ));
                            }
                        }
                        v.push((ai, p.module));
                        if let Some(r) = p.rows {
                            rows.insert((ai, p.module), r);
                        }
                        if let Some(r) = p.part.clone() {
                            let split = splits.entry((ai, p.module)).or_default();
                            // A `lora_B` bias takes the same rows as the weight beside it.
                            if let Some(b) = &p.bias {
                                split.insert(b.clone(), r.clone());
                            }
                            split.insert(p.weight.clone(), r);
                        }
                    }
                    _ => bail!(InputError::invalid(
                        &a.path,
                        format!(
                            "module `{}`: base tensor `{}` is also replaced by a full tensor",
                            m.name, p.weight
                        )
                    )),
                }
                if let Some(b) = &p.bias {
                    match actions
                        .entry(b.clone())
                        .or_insert_with(|| Action::Bias(Vec::new()))
                    {
                        Action::Bias(v) => v.push((ai, p.module)),
                        _ => bail!(InputError::invalid(
                            &a.path,
                            format!("base bias `{b}` is also replaced")
                        )),
                    }
                }
            }
            for (fi, name) in &res.full {
                if options.unmerge {
                    bail!(InputError::invalid(
                        &a.path,
                        format!(
                            "tensor `{}`: modules_to_save replaces the base tensor, which cannot be undone",
                            a.full_tensors[*fi].name
                        )
                    ));
                }
                if let Some(bi) = base.info(name) {
                    if !dtype::is_float_storage(bi.dtype) && quant.get(name).is_none() {
                        bail!(InputError::invalid(
                            &a.path,
                            format!(
                                "tensor `{}` (modules_to_save) would replace base tensor `{name}`, which is {}, not a float type; lorakit does not round float values into integer tensors",
                                a.full_tensors[*fi].name,
                                dtype::name(bi.dtype)
                            )
                        ));
                    }
                }
                touched.push((a.full_tensors[*fi].name.clone(), name.clone()));
                // PEFT saves a targeted embedding's base weight as `{module}.base_layer.weight`
                // (and, with `bias="lora_only"`/`"all"`, a trained base bias as
                // `{module}.base_layer.bias`); loading it replaces the base tensor, which the
                // LoRA delta (or `lora_bias`'s `lora_B.bias`) is then added to.
                let from_base_layer = matches!(&a.full_tensors[*fi].data, crate::adapter::Data::Stored { key, .. } if key.contains(".base_layer."));
                // Trainable-token rows (`rows`) start from that copy too (a resized vocabulary's
                // `token_adapter.base_layer.weight`), in either order of the two entries.
                let stored_rows = |f: usize| a.full_tensors[f].rows.is_some();
                if from_base_layer {
                    match actions.get(name) {
                        Some(Action::Merge(v) | Action::Bias(v))
                            if v.iter().any(|(x, _)| *x == ai) =>
                        {
                            base_override.insert(name.clone(), (ai, *fi));
                            continue;
                        }
                        Some(Action::Replace(x, f)) if *x == ai && stored_rows(*f) => {
                            base_override.insert(name.clone(), (ai, *fi));
                            continue;
                        }
                        _ => {}
                    }
                } else if stored_rows(*fi) {
                    if let Some(&Action::Replace(x, f)) = actions.get(name) {
                        let copy = matches!(&a.full_tensors[f].data, crate::adapter::Data::Stored { key, .. } if key.contains(".base_layer."));
                        if x == ai && copy {
                            base_override.insert(name.clone(), (ai, f));
                            actions.insert(name.clone(), Action::Replace(ai, *fi));
                            continue;
                        }
                    }
                }
                // A replaced tensor has no weighted form: `W0 + w·ΔW` is lorakit's formula for
                // low-rank updates, and PEFT's `add_weighted_adapter` combines only those
                // (`peft/tuners/lora/model.py:724-737` refuses modules_to_save it cannot combine).
                // ComfyUI's `set_weight` is another peer's rule: a "set" patch copied whatever
                // the strength (`comfy/lora.py`; tests/it/sweep15.rs), so PEFT folders only.
                if wa.weight != 1.0 && a.format == crate::adapter::Format::Peft {
                    bail!(InputError::invalid(
                        &a.path,
                        format!(
                            "tensor `{}` (modules_to_save or trainable tokens) replaces base tensor `{name}` and has no weighted form; merge this adapter with --weight 1 (it is {})",
                            a.full_tensors[*fi].name, wa.weight
                        )
                    ));
                }
                if actions
                    .insert(name.clone(), Action::Replace(ai, *fi))
                    .is_some()
                {
                    bail!(InputError::invalid(
                        &a.path,
                        format!("base tensor `{name}` is changed by more than one adapter entry (modules_to_save and LoRA)")
                    ));
                }
            }
            // Tied embeddings (PEFT issue #2018): changing one silently changes the other.
            if is_tied {
                super::tied::check(
                    a,
                    ai,
                    &touched,
                    &actions,
                    has_lm_head,
                    options.tied_embeddings,
                )?;
            }
            resolutions.push(res);
        }
        // A residual (PiSSA, OLoRA, KaSA) is PEFT's base for one adapter; another term on the
        // same tensor would need an order PEFT does not define.
        let mut names: Vec<&String> = actions.keys().collect();
        names.sort();
        for name in names {
            if let Some(Action::Merge(v)) = actions.get(name) {
                let residual = v.iter().find_map(|&(ai, mi)| {
                    let a = &adapters[ai].adapter;
                    Some((a, &a.modules[mi], a.residual_of(&a.modules[mi])?))
                });
                if let (Some((a, m, rule)), true) = (residual, v.len() > 1) {
                    bail!(InputError::invalid(
                        &a.path,
                        format!(
                            "module `{}` ({}) is added to a base PEFT rewrites, and another adapter also changes `{name}`; merge it alone first",
                            m.name,
                            rule.label()
                        )
                    ));
                }
            }
        }
        // lm_head targeted on a tied base with no lm_head tensor: say why it is unmatched.
        for u in unmatched.iter_mut() {
            if let Unmatched::NotFound { module, expected } = &mut u.detail {
                if expected.ends_with("lm_head.weight") && !has_lm_head {
                    *expected = format!("{expected} (the base has no lm_head tensor: lm_head is tied to the input embedding)");
                    let _ = module;
                }
            }
        }
        // A module whose weight is quantized in a layout lorakit cannot read: that is the cause,
        // the error itself, or (with --allow-unmatched, which copies such weights as they are)
        // what the warning about the skipped module says.
        for u in unmatched.iter_mut() {
            // MLX's packed `P.weight` is found, in a packed shape: the quantization is the cause.
            let expected = match &mut u.detail {
                Unmatched::NotFound { expected, .. } => Some(expected),
                Unmatched::ShapeMismatch { tensor, .. } => Some(tensor),
                // An FP8 weight of a ModelOpt algorithm lorakit does not read is left out of
                // the map and found as a plain F8 tensor.
                Unmatched::NotFloat { tensor, .. } => Some(tensor),
                _ => None,
            };
            if let Some(expected) = expected {
                if let Some(e) = quant.unsupported_weight(expected) {
                    if !options.allow_unmatched {
                        bail!(InputError::invalid(&e.path, e.kind.to_string()));
                    }
                    *expected =
                        format!("{expected} (quantized as lorakit cannot read: {})", e.kind);
                }
            }
        }
        if !options.allow_unmatched {
            super::qalora::refuse_pooled(&adapters, &unmatched, &quant)?;
        }
        if !unmatched.is_empty() && !options.allow_unmatched {
            let widenable = super::widen::widenable(&unmatched, &quant, &options);
            let list: Vec<String> = unmatched
                .iter()
                .map(|u| format!("{}: {}", u.adapter, u.detail))
                .collect();
            let (count, root) = (unmatched.len(), base.root.display().to_string());
            bail!(OptionError::new(move |o| {
                format!(
                "{count} adapter module(s) do not match the base {root} (pass {} to merge the rest): {}{}",
                o.opt(Opt::AllowUnmatched),
                list.join("; "),
                if widenable { super::widen::hint(o) } else { String::new() }
            )
            }));
        }

        let landed: usize = resolutions
            .iter()
            .map(|r| r.modules.len() + r.full.len())
            .sum();
        if landed == 0 && !dequantize_only {
            let list: Vec<String> = unmatched
                .iter()
                .take(5)
                .map(|u| format!("{}: {}", u.adapter, u.detail))
                .collect();
            let tail = format!(
                "{}{}",
                if list.is_empty() {
                    String::new()
                } else {
                    format!(": {}", list.join("; "))
                },
                if unmatched.len() > 5 {
                    format!("; and {} more", unmatched.len() - 5)
                } else {
                    String::new()
                }
            );
            bail!(InputError::option(&base.root, move |o| {
                format!(
                "no adapter module matches a tensor of this base, so the merge would change nothing ({} never allows that){tail}",
                o.opt(Opt::AllowUnmatched)
            )
            }));
        }
        // Quantized weights that are changed must be quantized again, or written as float.
        if options.quant == QuantOutput::Keep {
            let mut changed: Vec<&String> = actions
                .iter()
                .filter(|(n, a)| quant.get(n).is_some() && !matches!(a, Action::Copy))
                .map(|(n, _)| n)
                .collect();
            changed.sort();
            for n in changed {
                let q = quant.get(n).expect("quantized");
                let why = match actions.get(n) {
                    Some(Action::Merge(_)) => quant.requantize_unsupported(q),
                    _ => Some("a tensor replaced whole (modules_to_save)".into()),
                };
                if let Some(why) = why {
                    let (n, method) = (n.clone(), q.method());
                    bail!(InputError::option(
                        base.file_of(&n).map(|f| f.path()).unwrap_or(&base.root),
                        move |o| {
                            format!(
                            "tensor `{n}` ({method}): lorakit cannot write it back quantized: {why}; pass {} to write the merged model as float",
                            o.set(Opt::Quant, "dequantize")
                        )
                        }
                    ));
                }
            }
        }
        if options.rounding == Rounding::Exact {
            // Exact rounding is one rounding of the exact value into the stored dtype: not a
            // value rounded again into a quantized format, an f32 pass of a QLoRA merge, or
            // f64 (whose own precision the f64 bound cannot decide).
            if options.as_trained_on.is_some()
                || (!quant.is_empty() && options.quant == QuantOutput::Keep)
            {
                bail!(InputError::invalid(
                    &base.root,
                    "exact rounding rounds the merged value once into a float dtype; a quantized output or a merge as trained on a quantized base rounds it again, so they are not combined"
                ));
            }
            let mut merged: Vec<&String> = actions
                .iter()
                .filter(|(_, a)| matches!(a, Action::Merge(_)))
                .map(|(n, _)| n)
                .collect();
            merged.sort();
            for n in merged {
                let d = out_spec(&base, &quant, options.dtype, options.quant, n).0;
                if crate::backend::cpu::exact::Format::of(d).is_none() {
                    bail!(InputError::invalid(
                        base.file_of(n).map(|f| f.path()).unwrap_or(&base.root),
                        format!(
                            "tensor `{n}` is written as {}: exact rounding writes bf16, f16 or f32 (choose one as the output dtype)",
                            dtype::name(d)
                        )
                    ));
                }
            }
        }
        // Output layout: every base tensor; quantization companions only when kept.
        let keep = options.quant == QuantOutput::Keep;
        // Dequantized, a packed tensor is written under its weight's name (`…weight_packed` →
        // `…weight`).
        let names: Vec<String> = base
            .names()
            .filter(|n| keep || quant.companion_of(n).is_none())
            .map(|n| {
                if keep {
                    n.to_owned()
                } else {
                    quant.logical_name(n).to_owned()
                }
            })
            .collect();
        super::widen::check_terms(&widened, &actions, &rows, &splits, &base)?;
        let size_of = |n: &str| out_bytes(&base, &quant, options.dtype, options.quant, &widened, n);
        let (files, index, extra_files) = match (&base.layout, options.max_shard_size) {
            (Layout::File, None) => {
                // `--out DIR` or `--out new/` (trailing slash): the base's file name inside it.
                let target = if out.is_dir() || out.as_os_str().to_string_lossy().ends_with('/') {
                    let name = base.root.file_name().expect("file has a name");
                    out.join(safetensors_name(&name.to_string_lossy()))
                } else {
                    out.clone()
                };
                (
                    vec![OutFile {
                        path: target,
                        tensors: names,
                    }],
                    None,
                    Vec::new(),
                )
            }
            (layout, max) => {
                if out.exists() && !out.is_dir() {
                    bail!(InputError::option(&out, |o| format!(
                        "the base is a folder (or {} is set), so the output must be a folder",
                        o.opt(Opt::MaxShardSize)
                    )));
                }
                if !out.exists() && out.extension().is_some_and(|e| e == "safetensors") {
                    bail!(InputError::option(&out, |o| {
                        format!(
                        "the base is a folder (or {} is set), so the output is a folder, not one .safetensors file; give a folder name (a folder named like a file would be made otherwise)",
                        o.opt(Opt::MaxShardSize)
                    )
                    }));
                }
                let mut files = Vec::new();
                let stem = shard_stem(&base);
                match (layout, max) {
                    (_, Some(max)) => {
                        let groups = shard_groups(&names, &size_of, max);
                        let n = groups.len();
                        for (i, g) in groups.into_iter().enumerate() {
                            let name = if n == 1 {
                                format!("{stem}.safetensors")
                            } else {
                                format!("{stem}-{:05}-of-{:05}.safetensors", i + 1, n)
                            };
                            files.push(OutFile {
                                path: out.join(name),
                                tensors: g,
                            });
                        }
                    }
                    (Layout::Folder { file_name }, None) => {
                        files.push(OutFile {
                            path: out.join(file_name),
                            tensors: names,
                        });
                    }
                    (Layout::Sharded { .. }, None) => {
                        let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); base.shards.len()];
                        for n in &names {
                            let stored = quant.get(n).map_or(n.as_str(), |q| q.stored.as_str());
                            by_shard[base.entry(stored).expect("listed").shard].push(n.clone());
                        }
                        for (s, tensors) in base.shards.iter().zip(by_shard) {
                            let fname = s.path().file_name().expect("shard name");
                            files.push(OutFile {
                                path: out.join(safetensors_name(&fname.to_string_lossy())),
                                tensors,
                            });
                        }
                    }
                    (Layout::File, None) => unreachable!(),
                }
                let index = match (&base.layout, files.len()) {
                    (Layout::Sharded { index_name }, _) if max.is_none() => {
                        Some(out.join(safetensors_name(index_name)))
                    }
                    (_, n) if n > 1 => Some(out.join(format!("{stem}.safetensors.index.json"))),
                    _ => None,
                };
                let mut extra = if matches!(base.layout, Layout::File) {
                    Vec::new()
                } else {
                    extra_files(&base, &out)?
                };
                if options.quant == QuantOutput::Dequantize && !quant.is_empty() {
                    // ModelOpt's own description of the quantization: TensorRT-LLM and vLLM
                    // read it (the model would load as quantized again), so a float output
                    // goes without it, and the report does not list it.
                    extra.retain(|(_, d)| d != &out.join(MODELOPT_CONFIG));
                }
                (files, index, extra)
            }
        };
        inputs.extend(extra_files.iter().map(|(src, _)| src.clone()));
        let folder_out = !matches!((&base.layout, options.max_shard_size), (Layout::File, None));
        let mut outputs: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        outputs.extend(index.iter().cloned());
        outputs.extend(extra_files.iter().map(|(_, d)| d.clone()));
        let parts = crate::parts::MergeParts {
            dir: files
                .first()
                .map_or_else(|| out.clone(), |f| crate::parts::out_dir(&f.path)),
        };
        let writes = crate::parts::planned_writes(&parts, &outputs, options.part);
        let folders: Vec<PathBuf> = if folder_out {
            vec![out.clone()]
        } else {
            Vec::new()
        };
        crate::io::writer::check_writes(&inputs, &writes, &folders)?;
        let widened_config = super::widen::config(&widened, &base, &extra_files, &out)?;
        let qlora_scope = qlora_scope(&base, &options)?;
        let plan = MergePlan {
            base,
            adapters,
            out,
            options,
            actions,
            base_override,
            rows,
            splits,
            files,
            index,
            extra_files,
            unmatched,
            resolutions,
            quant,
            dequantize_only,
            widened,
            widened_config,
            qlora_scope,
        };
        plan.check_slices()?;
        plan.check_no_input_removed(folder_out, &inputs)?;
        Ok(plan)
    }

    /// Dtype and shape a base tensor is written with: quantized weights as float (`--dtype`, or
    /// the dtype their producer dequantizes to), in their logical shape.
    pub(super) fn out_spec(&self, name: &str) -> (Dtype, Vec<usize>) {
        let (d, shape) = out_spec(
            &self.base,
            &self.quant,
            self.options.dtype,
            self.options.quant,
            name,
        );
        (d, self.widened.get(name).cloned().unwrap_or(shape))
    }

    /// The operation name in reports and metadata.
    pub(super) fn operation(&self) -> &'static str {
        if self.dequantize_only {
            "dequantize"
        } else if self.options.unmerge {
            "unmerge"
        } else {
            "merge"
        }
    }

    /// What [`Self::run`] would do, without doing it (`merge --dry-run`).
    pub fn dry_run(&self) -> DryRunSummary {
        let size = |n: &String| self.out_bytes(n);
        let files = self
            .files
            .iter()
            .enumerate()
            .filter(|(fi, _)| crate::parts::owns(self.options.part, *fi))
            .map(|(_, f)| DryRunFile {
                path: f.path.display().to_string(),
                tensors_count: f.tensors.len(),
                bytes: f.tensors.iter().map(size).sum(),
            })
            .collect();
        DryRunSummary {
            operation: self.operation(),
            dry_run: true,
            base: self.base.root.display().to_string(),
            out: self.out.display().to_string(),
            files,
            index: self.index.as_ref().map(|p| p.display().to_string()),
            copied: self
                .extra_files
                .iter()
                .map(|(_, d)| d.display().to_string())
                .collect(),
            tensors_merged_count: self
                .actions
                .values()
                .filter(|a| !matches!(a, Action::Copy))
                .count(),
            modules_matched_count: self.resolutions.iter().map(|r| r.modules.len()).sum(),
            unmatched: self.unmatched.clone(),
            bytes: self.output_bytes(),
        }
    }

    /// Bytes the output will hold (tensor data only).
    pub fn output_bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| f.tensors.iter())
            .map(|n| self.out_bytes(n))
            .sum()
    }

    fn out_bytes(&self, n: &str) -> u64 {
        out_bytes(
            &self.base,
            &self.quant,
            self.options.dtype,
            self.options.quant,
            &self.widened,
            n,
        )
    }
}

fn out_spec(
    base: &Checkpoint,
    quant: &crate::io::quant::QuantMap,
    choice: DtypeChoice,
    mode: QuantOutput,
    name: &str,
) -> (Dtype, Vec<usize>) {
    if let (Some(q), QuantOutput::Dequantize) = (quant.get(name), mode) {
        return (choice.apply(q.natural_dtype()), q.shape.clone());
    }
    let i = base.info(name).expect("base tensor");
    match (quant.get(name), mode) {
        (Some(_), QuantOutput::Dequantize) => unreachable!("returned above"),
        // Kept quantized: weights and companions exactly as stored.
        (Some(_), QuantOutput::Keep) => (i.dtype, i.shape.clone()),
        (None, _) if quant.companion_of(name).is_some() => (i.dtype, i.shape.clone()),
        (None, _) => (choice.apply(i.dtype), i.shape.clone()),
    }
}

fn out_bytes(
    base: &Checkpoint,
    quant: &crate::io::quant::QuantMap,
    choice: DtypeChoice,
    mode: QuantOutput,
    widened: &HashMap<String, Vec<usize>>,
    name: &str,
) -> u64 {
    let (d, shape) = out_spec(base, quant, choice, mode, name);
    let shape = widened.get(name).cloned().unwrap_or(shape);
    dtype::byte_len(d, shape.iter().product()).expect("valid") as u64
}
