//! Planning an extraction: candidate tensors paired and validated, modules filtered and laid
//! out, parts assigned, ΔW formed per tensor. Must not factor or write the adapter.

use super::factor::sub_norms;
use super::{
    is_embedding_module, module_of, EmbeddingMode, ExtractDryRun, ExtractOptions, ExtractPlan,
    Item, ItemKind, Layout,
};
use crate::adapter::formats::{Holds, Shape};
use crate::adapter::Format;
use crate::dtype::{self};
use crate::error::{InputError, InputResult, Opt, OptionError};
use crate::io::Checkpoint;
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::path::PathBuf;

/// The most power iterations an extraction runs per module.
const MAX_POWER_ITERS: usize = 100;

impl ExtractPlan {
    /// Checks both checkpoints against each other and classifies every selected tensor; reads
    /// headers only, writes nothing.
    pub fn new(
        base: Checkpoint,
        tuned: Checkpoint,
        out: PathBuf,
        options: ExtractOptions,
    ) -> Result<Self> {
        let o = &options;
        // The adaptive stop runs at least `power_iters` and at most `max_power_iters` passes
        // over every ΔW (each two products with it); more than a hundred gain nothing.
        let (q, max) = (o.power_iters, o.max_power_iters);
        if q > max || max > MAX_POWER_ITERS {
            let (opt, v) = match q > MAX_POWER_ITERS || q > max {
                true => (Opt::PowerIters, q),
                false => (Opt::MaxPowerIters, max),
            };
            bail!(OptionError::new(move |f| format!(
                "{}: at most {} power iterations are run",
                f.set(opt, v.to_string()),
                MAX_POWER_ITERS.min(max),
            )));
        }
        crate::ops::output::refuse_folder_named_like_a_file(o.format, &out)?;
        let layout = o.format.layout();
        let holds = layout.holds();
        // The format named with an option, and the first format that holds what it cannot.
        let (this, instead) = (o.format.to_string(), |holds_it: fn(&Holds) -> bool| {
            Format::ALL
                .iter()
                .find(|f| holds_it(&f.layout().holds()))
                .map_or_else(String::new, |f| f.to_string())
        });
        if o.save_changed && !holds.full_tensors {
            let other = instead(|h| h.full_tensors);
            bail!(OptionError::new(move |o| format!(
                "{} cannot hold full tensors; drop {} or use {}",
                o.set(Opt::Format, &this),
                o.opt(Opt::SaveChanged),
                o.set(Opt::Format, &other)
            )));
        }
        if o.embeddings != EmbeddingMode::Skip && !holds.embeddings {
            let other = instead(|h| h.embeddings);
            bail!(OptionError::new(move |o| format!(
                "{} cannot hold embeddings; use {} or {}",
                o.set(Opt::Format, &this),
                o.set(Opt::Embeddings, "skip"),
                o.set(Opt::Format, &other)
            )));
        }
        if o.fan_in_fan_out && !holds.fan_in_fan_out {
            let other = instead(|h| h.fan_in_fan_out);
            bail!(OptionError::new(move |o| format!(
                "{} cannot hold fan_in_fan_out (Conv1D) modules; use {}",
                o.set(Opt::Format, &this),
                o.set(Opt::Format, &other)
            )));
        }
        o.rank.validate()?;
        let mut inputs = base.input_paths();
        inputs.extend(tuned.input_paths());
        inputs.push(base.root.clone());
        inputs.push(tuned.root.clone());
        let label = layout.label();
        let folders = match layout.shape() {
            Shape::Folder if out.exists() && !out.is_dir() => bail!(InputError::invalid(
                &out,
                format!("a {label} adapter is a folder, but this path is a file")
            )),
            Shape::File if out.is_dir() => bail!(InputError::invalid(
                &out,
                format!("a {label} adapter is a file, but this path is a folder")
            )),
            Shape::Folder => std::slice::from_ref(&out),
            Shape::File => &[],
        };
        crate::io::writer::check_writes(&inputs, &layout.files(&out), folders)?;

        let mut items = Vec::new();
        let mut excluded = 0;
        let mut one_sided = Vec::new();
        for name in base.names() {
            let module = module_of(name);
            if !o.selects(name) {
                excluded += 1;
                continue;
            }
            let bi = base.info(name).expect("listed");
            let ti = match tuned.info(name) {
                Some(t) => t,
                None if !dtype::is_float_compute(bi.dtype) => {
                    one_sided.push(name.to_owned());
                    continue;
                }
                None => bail!(InputError::invalid(
                    &tuned.root,
                    format!(
                        "tensor `{name}` is in the base ({}) but not in this checkpoint",
                        base.root.display()
                    )
                )),
            };
            let tfile = tuned.file_of(name).expect("listed").path();
            if ti.shape != bi.shape {
                bail!(InputError::invalid(
                    tfile,
                    format!(
                        "tensor `{name}`: shape {:?} differs from the base's {:?} ({})",
                        ti.shape,
                        bi.shape,
                        base.root.display()
                    )
                ));
            }
            if ti.dtype != bi.dtype {
                bail!(InputError::invalid(
                    tfile,
                    format!(
                        "tensor `{name}`: dtype {} differs from the base's {} ({}); convert one checkpoint first",
                        dtype::name(ti.dtype),
                        dtype::name(bi.dtype),
                        base.root.display()
                    )
                ));
            }
            let float = dtype::is_float_compute(bi.dtype);
            let kind = if !float {
                ItemKind::NonFloat
            } else if name.ends_with(".weight")
                && bi.shape.len() >= 2
                && bi.shape.iter().all(|&d| d > 0)
            {
                if bi.shape.len() > 2 {
                    ItemKind::LowRank(Layout::Conv(bi.shape[2..].to_vec()))
                } else if is_embedding_module(module) {
                    match o.embeddings {
                        EmbeddingMode::Lora => ItemKind::LowRank(Layout::Embedding),
                        m => ItemKind::EmbeddingWhole(m),
                    }
                } else if o.fan_in_fan_out {
                    ItemKind::LowRank(Layout::LinearT)
                } else {
                    ItemKind::LowRank(Layout::Linear)
                }
            } else {
                ItemKind::Other
            };
            items.push(Item {
                name: name.to_owned(),
                module: module.to_owned(),
                shape: bi.shape.clone(),
                kind,
            });
        }
        for name in tuned.names() {
            if !base.contains(name)
                && o.selects(name)
                && !dtype::is_float_compute(tuned.info(name).expect("listed").dtype)
            {
                one_sided.push(name.to_owned());
                continue;
            }
            if !base.contains(name) && o.selects(name) {
                bail!(InputError::invalid(
                    tuned.file_of(name).expect("listed").path(),
                    format!(
                        "tensor `{name}` is not in the base ({})",
                        base.root.display()
                    )
                ));
            }
        }
        if !items.iter().any(|i| !matches!(i.kind, ItemKind::NonFloat)) {
            let (count, root) = (base.names().count(), base.root.display().to_string());
            let filtered = o.targets.is_some() || o.exclude.is_some();
            bail!(InputError::option(&tuned.root, move |o| {
                format!(
                "no float tensor to extract: {}/{} select none of the {count} tensors of the base {root}{}",
                o.opt(Opt::Targets),
                o.opt(Opt::Exclude),
                if filtered {
                    format!(" (a {} list matches module names or dotted suffixes such as q_proj,v_proj; re:REGEX for a regex)", o.opt(Opt::Targets))
                } else {
                    String::new()
                }
            )
            }));
        }
        Ok(ExtractPlan {
            base,
            tuned,
            out,
            options,
            items,
            excluded,
            one_sided,
            scratch: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// What [`Self::run`] would do, without doing it (`extract --dry-run`).
    pub fn dry_run(&self) -> ExtractDryRun {
        let files = self.options.format.layout().files(&self.out);
        ExtractDryRun {
            operation: "extract",
            dry_run: true,
            base: self.base.root.display().to_string(),
            tuned: self.tuned.root.display().to_string(),
            out: self.out.display().to_string(),
            files: files.iter().map(|p| p.display().to_string()).collect(),
            tensors_count: self.items.len(),
            low_rank_candidates_count: self
                .items
                .iter()
                .filter(|i| matches!(i.kind, ItemKind::LowRank(_)))
                .count(),
            excluded_count: self.excluded,
            skipped_one_sided: self.one_sided.clone(),
        }
    }

    /// Number of tensors the plan looks at (after `targets` / `exclude`).
    pub fn tensor_count(&self) -> usize {
        self.items.len()
    }

    /// Names of the planned tensors, in plan order (what every part of a split run must agree
    /// on).
    pub fn tensor_names(&self) -> Vec<String> {
        self.items.iter().map(|i| i.name.clone()).collect()
    }

    /// The tensors (plan indices, ascending) that part `i` of `n` processes. Low-rank candidates
    /// — where the time goes — are dealt largest first to the least-loaded part (ties: the lower
    /// part; load = elements), the cheap tensors round-robin, so the split depends only on the
    /// plan.
    pub fn part_items(&self, part: (usize, usize)) -> Vec<usize> {
        let (i, n) = part;
        let mut heavy: Vec<(usize, usize)> = self
            .items
            .iter()
            .enumerate()
            .filter(|(_, it)| matches!(it.kind, ItemKind::LowRank(_)))
            .map(|(j, it)| (j, it.shape.iter().product::<usize>()))
            .collect();
        heavy.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut load = vec![0usize; n];
        let mut owner = vec![usize::MAX; self.items.len()];
        for (j, size) in heavy {
            let p = (0..n).min_by_key(|&p| (load[p], p)).expect("n ≥ 1");
            load[p] += size;
            owner[j] = p;
        }
        let mut light = 0;
        for (j, o) in owner.iter_mut().enumerate() {
            if *o == usize::MAX {
                debug_assert!(!matches!(self.items[j].kind, ItemKind::LowRank(_)));
                *o = light % n;
                light += 1;
            }
        }
        (0..self.items.len())
            .filter(|&j| owner[j] == i - 1)
            .collect()
    }

    /// `W − W0` of one tensor in f32, with both norms, checking that every value is finite.
    pub(super) fn delta(&self, item: &Item) -> InputResult<Delta> {
        let name = &item.name;
        let w = self.tuned.view(name)?;
        let w0 = self.base.view(name)?;
        let tpath = || {
            self.tuned
                .file_of(name)
                .expect("listed")
                .path()
                .to_path_buf()
        };
        let bpath = || {
            self.base
                .file_of(name)
                .expect("listed")
                .path()
                .to_path_buf()
        };
        let n = w.numel();
        // Same dtype in both (checked by the plan).
        let elem = dtype::byte_len(w.dtype, 1).expect("float dtype");
        enum Bad {
            Tuned(usize, f32),
            Base(usize, f32),
            Overflow(usize),
        }
        // Chunks in parallel; their sums are added in chunk order, so the result does not
        // depend on the thread count. Both tensors are decoded and subtracted in one pass per
        // chunk, into the reused buffer.
        const CHUNK: usize = 1 << 16;
        // Each chunk maps its own pages of both inputs first (in one call per input rather
        // than a fault per page), so the threads map pages concurrently.
        let files = [&self.base, &self.tuned].map(|c| c.file_of(name).zip(c.info(name)));
        let mut values = std::mem::take(&mut *self.scratch.lock().expect("scratch"));
        if values.len() < n {
            // One buffer for the largest tensor of the plan, so it is never grown (a grown
            // buffer is copied and its new part zero-filled, only to be overwritten here).
            drop(values);
            values = zeroed_scratch(n.max(self.largest_delta()));
        }
        let parts: Vec<Result<(f64, f64), Bad>> = values[..n]
            .par_chunks_mut(CHUNK)
            .enumerate()
            .map(|(c, out)| {
                let at = c * CHUNK;
                for (f, info) in files.iter().flatten() {
                    f.prefetch_part(info, at * elem, out.len() * elem);
                }
                let mut base = [0f32; 1024];
                let (mut norm_sq, mut base_sq) = (0f64, 0f64);
                for (k, out) in out.chunks_mut(base.len()).enumerate() {
                    let at = at + k * base.len();
                    let len = out.len();
                    let base = &mut base[..len];
                    dtype::decode_into(w.dtype, &w.data[at * elem..(at + len) * elem], out);
                    dtype::decode_into(w0.dtype, &w0.data[at * elem..(at + len) * elem], base);
                    let (ns, bs) = sub_norms(out, base);
                    // A non-finite W, W0 or W − W0 makes a sum non-finite (squares of finite
                    // f32 cannot overflow f64): only then look for the first offender.
                    if !(ns.is_finite() && bs.is_finite()) {
                        dtype::decode_into(w.dtype, &w.data[at * elem..(at + len) * elem], out);
                        for (i, (x, &y)) in out.iter().zip(base.iter()).enumerate() {
                            if !x.is_finite() {
                                return Err(Bad::Tuned(at + i, *x));
                            }
                            if !y.is_finite() {
                                return Err(Bad::Base(at + i, y));
                            }
                            if !(x - y).is_finite() {
                                return Err(Bad::Overflow(at + i));
                            }
                        }
                    }
                    norm_sq += ns;
                    base_sq += bs;
                }
                Ok((norm_sq, base_sq))
            })
            .collect();
        let (mut norm_sq, mut base_sq) = (0f64, 0f64);
        for part in parts {
            match part {
                Ok((a, b)) => {
                    norm_sq += a;
                    base_sq += b;
                }
                Err(Bad::Tuned(i, x)) => {
                    return Err(InputError::invalid(
                        tpath(),
                        format!("tensor `{name}`: value {x} at flat index {i} is not finite"),
                    ))
                }
                Err(Bad::Base(i, y)) => {
                    return Err(InputError::invalid(
                        bpath(),
                        format!("tensor `{name}`: value {y} at flat index {i} is not finite"),
                    ))
                }
                Err(Bad::Overflow(i)) => {
                    return Err(InputError::invalid(
                        tpath(),
                        format!("tensor `{name}`: W − W0 overflows f32 at flat index {i}"),
                    ))
                }
            }
        }
        let rows = item.shape.first().copied().unwrap_or(1);
        let cols = n.checked_div(rows).unwrap_or(0);
        Ok(Delta {
            values,
            rows,
            cols,
            norm_sq,
            base_sq,
            elem_bytes: elem,
        })
    }

    /// Elements of the largest tensor whose `ΔW` the plan forms.
    pub(super) fn largest_delta(&self) -> usize {
        self.items
            .iter()
            .filter(|i| !matches!(i.kind, ItemKind::NonFloat))
            .map(|i| i.shape.iter().product::<usize>())
            .max()
            .unwrap_or(0)
    }

    /// Returns a `ΔW` buffer for the next module.
    pub(super) fn recycle(&self, values: Vec<f32>) {
        let mut s = self.scratch.lock().expect("scratch");
        if values.capacity() > s.capacity() {
            *s = values;
        }
    }

    pub(super) fn release(&self, name: &str) {
        if let (Some(f), Some(i)) = (self.base.file_of(name), self.base.info(name)) {
            f.release(i);
        }
        self.release_tuned(name);
    }

    pub(super) fn release_tuned(&self, name: &str) {
        if let (Some(f), Some(i)) = (self.tuned.file_of(name), self.tuned.info(name)) {
            f.release(i);
        }
    }

    pub(super) fn metadata(&self) -> Vec<(String, String)> {
        let o = &self.options;
        let settings = serde_json::json!({
            "rank_rule": o.rank,
            "method": if o.exact { "exact" } else { "randomized" },
            "oversample": o.oversample,
            "power_iters": o.power_iters,
            "max_power_iters": o.max_power_iters,
            "seed": o.seed,
        });
        // The provenance head every output carries (extract's lacked `lorakit.version`). No
        // input paths: a `--part` run and its `finalize` see the base and the tuned model by
        // other paths (absolute, or a dequantized copy), and both must write the same bytes;
        // `base_model_name_or_path` names the base.
        let mut meta = crate::ops::output::provenance_head("extract").to_vec();
        meta.push(("lorakit.extract".into(), settings.to_string()));
        meta
    }
}

pub(super) struct Delta {
    /// Row-major `rows × cols` in its first `rows·cols` elements (the buffer is reused, so it
    /// may be longer): see [`Delta::data`].
    pub(super) values: Vec<f32>,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) norm_sq: f64,
    pub(super) base_sq: f64,
    pub(super) elem_bytes: usize,
}

impl Delta {
    pub(super) fn data(&self) -> &[f32] {
        &self.values[..self.rows * self.cols]
    }

    /// `‖ΔW‖_F / ‖W0‖_F`; `None` when `W0 = 0` and `ΔW ≠ 0` (infinite).
    pub(super) fn rel_diff(&self) -> Option<f64> {
        if self.base_sq > 0.0 {
            Some((self.norm_sq / self.base_sq).sqrt())
        } else if self.norm_sq == 0.0 {
            Some(0.0)
        } else {
            None
        }
    }
}

/// A zero-filled `f32` buffer of `n` elements for `ΔW`. The allocation is `calloc`'s, so the
/// kernel supplies zero pages as they are first written, with no `memset` pass; on Linux the
/// buffer is marked for transparent huge pages, which cuts those faults 512-fold.
pub(super) fn zeroed_scratch(n: usize) -> Vec<f32> {
    let v = vec![0f32; n];
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const HUGE: usize = 2 << 20;
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + n * 4) / HUGE * HUGE;
        if end > start {
            // SAFETY: advice on whole pages inside the vector's allocation; MADV_HUGEPAGE
            // changes how the pages are backed, never their contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    v
}
