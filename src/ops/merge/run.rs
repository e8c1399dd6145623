//! Running a planned merge: tensors streamed out (copied byte for byte, or merged on the
//! engine and rounded once), sharding, `--part` manifests, metadata, the atomic commit.
//! Must not decide what matches what: that is the plan's.

use super::layout::copied_files;
use super::model::*;
use super::tensor::{check_finite, TensorMerge};
use crate::backend;
use crate::backend::profile::{self, Stage};
use crate::dtype::{self, Dtype};
use crate::error::InputError;
use crate::io::checkpoint::Layout;
use crate::io::writer::Extent;
use crate::io::{Output, TensorSpec};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

impl MergePlan {
    /// Runs the merge and commits the output. On failure nothing is left behind: temporary
    /// files are removed, and so is the output folder if this run created it.
    pub fn run(self, engine: &backend::Engine) -> Result<MergeSummary> {
        let start = Instant::now();
        // Each merged tensor's output buffer is allocated and freed once per tensor; with
        // glibc's defaults every one came back as fresh zeroed pages, their faults a third of
        // the encode stage. Retained, a freed buffer is reused; the peak does not grow, since
        // no more is live at once than before (buffers over 32 MiB are still unmapped).
        self.refuse_qalora_on_gptq()?;
        crate::model::retain_freed_memory();
        let total = self.output_bytes();
        let bar = self
            .options
            .progress
            .start("merging", total, crate::progress::Unit::Bytes);
        let mut output = Output::new();
        let dir = crate::parts::out_dir(&self.files[0].path);
        output.create_dir_all(&dir)?;
        let folder_out = self.index.is_some()
            || !matches!(self.base.layout, Layout::File)
            || self.options.max_shard_size.is_some();
        if folder_out {
            let mode = match self.options.part {
                Some(_) => crate::io::writer::LockMode::Shared,
                None => crate::io::writer::LockMode::Exclusive,
            };
            output.lock(&dir, mode)?;
            if self.options.part.is_none() {
                output.remove_on_commit(self.stale_files(&dir));
            }
        } else {
            output.lock(&self.files[0].path, crate::io::writer::LockMode::Exclusive)?;
        }
        let metadata = self.output_metadata();
        let (mut merged, mut copied, mut dequantized) = (0usize, 0usize, 0usize);
        let (mut requantized, mut streamed) = (0usize, 0usize);
        let mut qlora = Vec::new();
        let keep = self.options.quant == QuantOutput::Keep;
        let mut pending = Requantized::default();
        // A requantized bitsandbytes double-quant weight rewrites its quant_state JSON, whose
        // length follows the new offset's digits: found first, so every header states it.
        let resized = match keep {
            true => self.resized_states(engine)?,
            false => BTreeMap::new(),
        };
        let mut written = Vec::new();
        for (fi, f) in self.files.iter().enumerate() {
            if !crate::parts::owns(self.options.part, fi) {
                continue;
            }
            let specs: Vec<TensorSpec> = f
                .tensors
                .iter()
                .map(|n| {
                    let (d, shape) = self.out_spec(n);
                    let shape = resized.get(n).map_or(shape, |&len| vec![len]);
                    TensorSpec::new(n.clone(), d, shape)
                })
                .collect();
            written.push(file_name(&f.path));
            let w = output.safetensors(&f.path, &metadata, specs)?;
            // Written on its own thread: tensor i goes to the file while i + 1 is computed.
            crate::io::writer::pipelined(w, |w| {
                for name in &f.tensors {
                    // The stored tensor behind a name (a packed weight is stored under another).
                    let stored = self
                        .quant
                        .get(name)
                        .map_or(name.as_str(), |q| q.stored.as_str());
                    let (file, info) = self.base_tensor(stored);
                    let (out_dtype, _) = self.out_spec(name);
                    if keep {
                        if let Some(bytes) = self.requantized_piece(engine, name, &mut pending)? {
                            bar.inc(bytes.len() as u64);
                            // The quantized codes themselves are opaque bytes, even under a
                            // float dtype (bnb_4bit_quant_storage float32/f16/bf16 stores the
                            // packed nibbles as F32/F16/BF16, where random codes read as NaN);
                            // the float companions (absmax, scales) are checked as results.
                            let codes = self
                                .quant
                                .get(self.quant.logical_name(name))
                                .is_some_and(|q| q.stored == *name);
                            if codes {
                                w.write_packed(name, bytes)?;
                            } else {
                                w.write_tensor(name, bytes)?;
                            }
                            if self.quant.get(self.quant.logical_name(name)).is_some() {
                                requantized += 1;
                                merged += 1;
                            }
                            continue;
                        }
                    }
                    let quantized = self.quant.get(name).filter(|_| !keep);
                    if quantized.is_some() {
                        dequantized += 1;
                    }
                    match self.actions.get(name).unwrap_or(&Action::Copy) {
                        Action::Copy if quantized.is_some() => {
                            let q = quantized.expect("checked");
                            let v = self.quant.dequantize(&self.base, q)?;
                            let data = dtype::encode(out_dtype, &v);
                            bar.inc(data.len() as u64);
                            w.write_tensor(name, data)?;
                            file.release(info);
                            copied += 1;
                        }
                        Action::Copy if out_dtype == info.dtype => {
                            let (src, at) = file.source(info);
                            let extent = Extent {
                                file: src,
                                path: file.path(),
                                offset: at,
                                len: info.byte_len(),
                            };
                            w.copy_tensor(name, extent)?;
                            bar.inc(info.byte_len());
                            copied += 1;
                        }
                        Action::Copy => {
                            let v = file.view_info(info)?;
                            let data = dtype::encode(out_dtype, &v.to_f32());
                            bar.inc(data.len() as u64);
                            w.write_tensor(name, data)?;
                            file.release(info);
                            copied += 1;
                        }
                        Action::Merge(terms) => {
                            // Base pages a streamed merge has consumed are dropped from the
                            // map as it goes (rows in = rows out), so they do not add up.
                            let ratio = (info.dtype.bitsize(), out_dtype.bitsize());
                            let consumed = |from: u64, to: u64| {
                                file.release_range(
                                    info,
                                    from * ratio.0 as u64 / ratio.1 as u64,
                                    (to - from) * ratio.0 as u64 / ratio.1 as u64,
                                )
                            };
                            // (a widened weight is read narrower than it is written)
                            let plain =
                                self.quant.get(name).is_none() && !self.widened.contains_key(name);
                            let mut out = Streamed::new(name, plain.then_some(&consumed));
                            let stray = {
                                let _t = profile::time(Stage::Kernel);
                                let merge = TensorMerge::new(engine, name, terms, out_dtype);
                                self.merge_tensor(merge, &mut |p| out.take(w, bar.as_ref(), p))?
                            };
                            if out.finish(w, bar.as_ref())? {
                                streamed += 1;
                            }
                            if let Some(t) = stray {
                                qlora.push(t);
                            }
                            file.release(info);
                            merged += 1;
                        }
                        Action::Bias(terms) => {
                            let v = self.biased(name, terms)?;
                            check_finite(&self.base, name, &v)?;
                            let data = dtype::encode(out_dtype, &v);
                            bar.inc(data.len() as u64);
                            w.write_tensor(name, data)?;
                            merged += 1;
                        }
                        Action::Replace(ai, fi) => {
                            let a = &self.adapters[*ai].adapter;
                            let v = a.full_values(*fi, || self.w0_f32(name))?;
                            let data = dtype::encode(out_dtype, &v);
                            bar.inc(data.len() as u64);
                            w.write_tensor(name, data)?;
                            merged += 1;
                        }
                    }
                }
                Ok(())
            })?;
        }
        match self.options.part {
            None => self.write_finals(&mut output)?,
            Some(part) => {
                // The last files (index, copied configs) are written by `finalize` once every
                // part is done; this part records what it wrote and what the whole plan is.
                let parts = crate::parts::MergeParts { dir };
                let plan = self.part_plan(&resized)?;
                crate::parts::write_manifest(&parts, &mut output, part, plan, written)?;
            }
        }
        let created: Vec<String> = output.created_dirs();
        let t = profile::time(Stage::Commit);
        let bytes = output.commit()?;
        drop(t);
        drop(bar);
        let seconds = start.elapsed().as_secs_f64();
        let adapters = self.adapter_summaries();
        Ok(MergeSummary {
            run: MergeRun {
                base: self.base.root.display().to_string(),
                out: self.out.display().to_string(),
                operation: self.operation(),
                device: engine.describe(),
                adapters,
                tensors_merged_count: merged,
                tensors_copied_count: copied,
                files: self.written_files(),
                part: self.options.part.map(|(i, n)| [i, n]),
                bytes_written: bytes,
                seconds,
                gb_per_s: super::model::gb_per_s(bytes, seconds),
                created_folders: created,
                unmatched: self.unmatched.clone(),
            },
            tensors_dequantized_count: dequantized,
            tensors_requantized_count: requantized,
            tensors_streamed_count: streamed,
            qlora,
        })
    }

    /// What [`Self::run`] writes: every shard, the index and the copied files; with `--part`,
    /// only the shards the part owns.
    fn written_files(&self) -> Vec<String> {
        let shards = self.files.iter().enumerate();
        let shards = shards.filter(|(fi, _)| crate::parts::owns(self.options.part, *fi));
        let finals = self
            .index
            .iter()
            .chain(self.extra_files.iter().map(|(_, d)| d));
        let finals = finals.filter(|_| self.options.part.is_none());
        shards
            .map(|(_, f)| &f.path)
            .chain(finals)
            .map(|p| p.display().to_string())
            .collect()
    }

    /// Per adapter, what the plan merges of it (the whole plan's, with `--part` too): the
    /// `adapters` of every merge report, the HF → GGUF one included.
    pub(super) fn adapter_summaries(&self) -> Vec<AdapterSummary> {
        self.adapters
            .iter()
            .zip(&self.resolutions)
            .map(|(wa, r)| AdapterSummary {
                path: wa.adapter.path.display().to_string(),
                weight: wa.weight,
                // Modules, not placements: a module split over several tensors counts once.
                modules_merged: r
                    .modules
                    .iter()
                    .map(|p| p.module)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                tensors_replaced: r.full.len(),
                biases_updated: r.modules.iter().filter(|p| p.bias.is_some()).count(),
            })
            .collect()
    }

    /// The index document of the output (sharded outputs).
    fn index_doc(&self) -> Option<Vec<u8>> {
        self.index.as_ref()?;
        let mut weight_map: BTreeMap<String, String> = BTreeMap::new();
        for f in &self.files {
            for n in &f.tensors {
                weight_map.insert(n.clone(), file_name(&f.path));
            }
        }
        let mut meta = self.base.index_metadata.clone().unwrap_or_default();
        meta.insert("total_size".into(), serde_json::json!(self.output_bytes()));
        let doc = serde_json::json!({ "metadata": meta, "weight_map": weight_map });
        let mut text = serde_json::to_vec_pretty(&doc).expect("json");
        text.push(b'\n');
        Some(text)
    }

    /// Copied non-weight files, then the index (last).
    fn write_finals(&self, output: &mut Output) -> Result<()> {
        for (src, dst) in &self.extra_files {
            let mut bytes = crate::io::read_whole_file(src)?;
            if !self.quant.is_empty()
                && self.options.quant == QuantOutput::Dequantize
                && dst == &self.out.join("config.json")
            {
                // Every quantized weight is written as float: the config must not tell loaders
                // to quantize-load it again.
                bytes = without_quantization_config(bytes);
            }
            if let Some((at, edited)) = &self.widened_config {
                if at == dst {
                    bytes = edited.clone();
                }
            }
            if let Some(parent) = dst.parent() {
                output.create_dir_all(parent)?;
            }
            output.small_file(dst, &bytes)?;
        }
        if let (Some(index), Some(doc)) = (&self.index, self.index_doc()) {
            output.small_file(index, &doc)?;
        }
        Ok(())
    }

    /// The whole output as `finalize` needs it: every file with its expected size, the index,
    /// and the files to copy.
    fn part_plan(&self, resized: &BTreeMap<String, usize>) -> Result<crate::parts::Plan> {
        let metadata = self.output_metadata();
        let files = self
            .files
            .iter()
            .map(|f| {
                let triples: Vec<(String, Dtype, Vec<usize>)> = f
                    .tensors
                    .iter()
                    .map(|n| {
                        let (d, shape) = self.out_spec(n);
                        let shape = resized.get(n).map_or(shape, |&len| vec![len]);
                        (n.clone(), d, shape)
                    })
                    .collect();
                let data: u64 = triples
                    .iter()
                    .map(|(_, d, s)| dtype::byte_len(*d, s.iter().product()).expect("valid") as u64)
                    .sum();
                let header = crate::io::header::serialize(&metadata, &triples).len() as u64;
                crate::parts::PlannedFile {
                    name: file_name(&f.path),
                    bytes: header + data,
                }
            })
            .collect();
        let extra = copied_files(&self.base, &self.out)?;
        let base = std::fs::canonicalize(self.base.folder())
            .with_context(|| format!("{}: cannot resolve", self.base.folder().display()))?
            .display()
            .to_string();
        Ok(crate::parts::Plan {
            dequantized: !self.quant.is_empty() && self.options.quant == QuantOutput::Dequantize,
            base,
            files,
            index_name: self.index.as_ref().map(|p| file_name(p)),
            index: self
                .index_doc()
                .map(|v| String::from_utf8(v).expect("utf8 json")),
            extra,
        })
    }

    /// With `QuantOutput::Keep`: the stored bytes of `name` when it is a merged quantized
    /// weight or one of its changed companions (computed once per weight, kept in `pending`
    /// until written); `None` for every other tensor.
    fn requantized_piece(
        &self,
        engine: &backend::Engine,
        name: &str,
        pending: &mut Requantized,
    ) -> Result<Option<Vec<u8>>> {
        if let Some(b) = pending.bytes.remove(name) {
            return Ok(Some(b));
        }
        // A weight stored under another name (GPTQ's `P.qweight` for `P.weight`) is found by it.
        let owner = match (
            self.quant.get(self.quant.logical_name(name)),
            self.quant.companion_of(name),
        ) {
            (Some(q), _) => q,
            (None, Some(w)) => self.quant.get(w).expect("companion's weight"),
            (None, None) => return Ok(None),
        };
        let Some(Action::Merge(terms)) = self.actions.get(&owner.name) else {
            return Ok(None);
        };
        if pending.done.contains(&owner.name) {
            // Already requantized: this companion did not change.
            return Ok(None);
        }
        let merged = self.merge_tensor_f32(engine, &owner.name, terms)?;
        // PEFT casts a DoRA merge to the dequantized weight's dtype before requantizing it.
        let how = match terms.iter().any(|&(ai, mi)| {
            self.adapters[ai].adapter.modules[mi]
                .dora_magnitude
                .is_some()
        }) {
            true => crate::io::quant::Requant::InStateDtype,
            false => crate::io::quant::Requant::Sum,
        };
        let pieces = self
            .quant
            .requantize(&self.base, owner, &merged, how)
            .map_err(|m| {
                anyhow::Error::new(InputError::invalid(
                    self.base
                        .file_of(&owner.name)
                        .map(|f| f.path())
                        .unwrap_or(&self.base.root),
                    format!("tensor `{}`: {m}", owner.name),
                ))
            })?;
        pending.done.insert(owner.name.clone());
        pending.bytes.extend(pieces);
        Ok(pending.bytes.remove(name))
    }

    /// With `QuantOutput::Keep`: the quant_state blobs of merged double-quant or 16-bit
    /// weights whose new JSON has another length than the stored one (name → new length). Merges and requantizes
    /// each such weight once more than the write does, and keeps nothing else.
    fn resized_states(&self, engine: &backend::Engine) -> Result<BTreeMap<String, usize>> {
        let mut out = BTreeMap::new();
        for q in self.quant.iter() {
            let crate::io::quant::Scheme::Bnb4(p) = &q.scheme else {
                continue;
            };
            // A double-quant state gets a new offset, a 16-bit one `"dtype": "float32"`.
            let Some(Action::Merge(_)) = self.actions.get(&q.name) else {
                continue;
            };
            if p.nested.is_none() && p.dtype == Dtype::F32 {
                continue;
            }
            let mut pending = Requantized::default();
            let state = &q.companions[0];
            if let Some(blob) = self.requantized_piece(engine, state, &mut pending)? {
                let stored = self.base.info(state).expect("companion").byte_len();
                if blob.len() as u64 != stored {
                    out.insert(state.clone(), blob.len());
                }
            }
        }
        Ok(out)
    }

    pub(super) fn signed(&self, s: f64) -> f64 {
        if self.options.unmerge {
            -s
        } else {
            s
        }
    }

    fn output_metadata(&self) -> Vec<(String, String)> {
        let mut meta: Vec<(String, String)> = self
            .base
            .metadata()
            .iter()
            .filter(|(k, _)| !k.starts_with("lorakit."))
            .cloned()
            .collect();
        let adapters: Vec<serde_json::Value> = self
            .adapters
            .iter()
            .map(|wa| serde_json::json!({ "path": wa.adapter.path.display().to_string(), "weight": wa.weight }))
            .collect();
        meta.extend(crate::ops::output::provenance_head(self.operation()));
        if let Some(t) = &self.options.as_trained_on {
            meta.push((
                "lorakit.as_trained_on".into(),
                format!(
                    "{}{} blocksize {}{}{}",
                    t.kind.name(),
                    if t.double_quant { ",double-quant" } else { "" },
                    t.blocksize,
                    t.dtype
                        .map(|d| format!(" dtype {}", crate::dtype::name(d)))
                        .unwrap_or_default(),
                    t.skip
                        .as_ref()
                        .map(|k| format!(" skip {}", k.join(",")))
                        .unwrap_or_default()
                ),
            ));
        }
        meta.push((
            "lorakit.adapters".into(),
            serde_json::Value::Array(adapters).to_string(),
        ));
        meta
    }
}

/// config.json with `quantization_config` removed (key order kept), and MLX's `quantization`
/// (an object with `bits` or `group_size`: mlx-lm's loader reads it before
/// `quantization_config`); the bytes unchanged when they are not a JSON object.
pub(crate) fn without_quantization_config(bytes: Vec<u8>) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice(&bytes) else {
        return bytes;
    };
    let mlx = obj
        .get("quantization")
        .is_some_and(|q| q.get("bits").is_some() || q.get("group_size").is_some());
    let removed = obj.shift_remove("quantization_config").is_some();
    let removed_mlx = mlx && obj.shift_remove("quantization").is_some();
    if !removed && !removed_mlx {
        return bytes;
    }
    let mut text = serde_json::to_vec_pretty(&serde_json::Value::Object(obj)).expect("json");
    text.push(b'\n');
    text
}

pub(super) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A merged tensor on its way to the output file: moved whole when the engine computed it on
/// the host, or, streamed from the GPU, each tile written by the writer thread straight from
/// the mapped readback ([`crate::io::writer::Pipe::write_borrowed`]); small pieces (a tile of
/// rows whose width is not a multiple of the kernel's vector comes back one row at a time) are
/// gathered into batches of [`Streamed::BATCH`] bytes first. The host never holds the tensor.
struct Streamed<'n> {
    name: &'n str,
    begun: bool,
    streamed: bool,
    batch: Vec<u8>,
    /// Output bytes written so far.
    written: u64,
    /// Told each range of output bytes once written (the base's consumed pages are dropped).
    consumed: Option<&'n dyn Fn(u64, u64)>,
}

impl<'n> Streamed<'n> {
    const BATCH: usize = 8 << 20;

    fn new(name: &'n str, consumed: Option<&'n dyn Fn(u64, u64)>) -> Self {
        Streamed {
            name,
            begun: false,
            streamed: false,
            batch: Vec::new(),
            written: 0,
            consumed,
        }
    }

    fn take(
        &mut self,
        w: &mut crate::io::writer::Pipe<'_>,
        bar: &dyn crate::progress::Progress,
        p: backend::Piece<'_>,
    ) -> Result<()> {
        match p {
            backend::Piece::Whole(data) => {
                bar.inc(data.len() as u64);
                self.begun = true;
                w.write_tensor(self.name, data)
            }
            backend::Piece::Part(b) => {
                if !self.begun {
                    w.begin_tensor(self.name)?;
                    (self.begun, self.streamed) = (true, true);
                }
                if b.len() >= Self::BATCH {
                    // A whole tile: written from the mapped readback, no copy.
                    self.flush(w, bar)?;
                    w.write_borrowed(b)?;
                    self.wrote(bar, b.len());
                    return Ok(());
                }
                if self.batch.is_empty() {
                    self.batch.reserve(Self::BATCH);
                }
                self.batch.extend_from_slice(b);
                if self.batch.len() >= Self::BATCH {
                    self.flush(w, bar)?;
                }
                Ok(())
            }
        }
    }

    fn wrote(&mut self, bar: &dyn crate::progress::Progress, n: usize) {
        bar.inc(n as u64);
        if let Some(f) = self.consumed {
            f(self.written, self.written + n as u64);
        }
        self.written += n as u64;
    }

    fn flush(
        &mut self,
        w: &mut crate::io::writer::Pipe<'_>,
        bar: &dyn crate::progress::Progress,
    ) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let b = std::mem::take(&mut self.batch);
        let n = b.len();
        w.write_chunk(b)?;
        self.wrote(bar, n);
        Ok(())
    }

    /// Sends what is left; a tensor that produced no piece at all (no elements) is written
    /// empty. Returns whether the tensor came in streamed pieces.
    fn finish(
        mut self,
        w: &mut crate::io::writer::Pipe<'_>,
        bar: &dyn crate::progress::Progress,
    ) -> Result<bool> {
        if !self.begun {
            w.write_tensor(self.name, Vec::new())?;
            return Ok(false);
        }
        let streamed = self.streamed;
        self.flush(w, bar)?;
        Ok(streamed)
    }
}

/// Requantized tensors not yet written (a weight's companions may come before or after it in
/// the file), and the weights already requantized.
#[derive(Default)]
pub(super) struct Requantized {
    bytes: std::collections::HashMap<String, Vec<u8>>,
    done: std::collections::HashSet<String>,
}
