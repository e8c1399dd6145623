//! What a merge's output folder holds besides the tensors it writes: the shard file names
//! (`shard_stem`, `shard_groups`), the base's other files copied beside them (`extra_files`),
//! and the files of an older checkpoint there that the commit removes (`stale_files`).
//! Must not write or remove anything itself: the run hands these lists to the writer.

use super::model::*;
use crate::io::checkpoint::Layout;
use crate::io::Checkpoint;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// NVIDIA ModelOpt's hf_quant_config.json, left out of a dequantized output.
pub(crate) const MODELOPT_CONFIG: &str = "hf_quant_config.json";

impl MergePlan {
    /// The commit removes an older checkpoint's files from an output folder
    /// ([`MergePlan::stale_files`], as `run` computes them): none may be one of `inputs`.
    pub(super) fn check_no_input_removed(
        &self,
        folder_out: bool,
        inputs: &[PathBuf],
    ) -> crate::error::InputResult<()> {
        if !(folder_out || self.index.is_some()) || self.options.part.is_some() {
            return Ok(());
        }
        let dir = self
            .files
            .first()
            .map_or_else(|| self.out.clone(), |f| crate::parts::out_dir(&f.path));
        crate::io::writer::check_removals(inputs, &self.stale_files(&dir))
    }

    /// Files of an older checkpoint in the output folder that would survive this run and make
    /// it open as the old model: an index lorakit would write (and the shards it lists),
    /// `{model,diffusion_pytorch_model}.safetensors` and `…-NNNNN-of-NNNNN.safetensors` shards
    /// not in the new layout, and an hf_quant_config.json this run does not write.
    /// Never anything else.
    pub(super) fn stale_files(&self, dir: &Path) -> Vec<PathBuf> {
        let new: Vec<&Path> = self
            .files
            .iter()
            .map(|f| f.path.as_path())
            .chain(self.index.as_deref())
            .collect();
        let mut stale = Vec::new();
        let Ok(rd) = std::fs::read_dir(dir) else {
            return stale;
        };
        let is_shard_name = |n: &str| {
            ["model", "diffusion_pytorch_model"].iter().any(|stem| {
                n.strip_prefix(stem).is_some_and(|r| {
                    r == ".safetensors"
                        || r.strip_prefix('-')
                            .and_then(|r| r.strip_suffix(".safetensors"))
                            .is_some_and(|r| {
                                let b = r.as_bytes();
                                b.len() == 14
                                    && &r[5..9] == "-of-"
                                    && b[..5].iter().chain(&b[9..]).all(u8::is_ascii_digit)
                            })
                })
            })
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = dir.join(&name);
            if new.contains(&p.as_path()) || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            if name.ends_with(".safetensors.index.json") {
                // The shards an old index lists go with it (plain names only).
                if let Ok(text) = crate::io::read_json_file(&p) {
                    if let Ok(idx) = crate::io::checkpoint::parse_index(&text) {
                        for (_, shard) in idx.weight_map {
                            let sp = dir.join(&shard);
                            // Only safetensors shards: an index may list anything.
                            if crate::parts::is_plain_name(&shard)
                                && shard.ends_with(".safetensors")
                                && !new.contains(&sp.as_path())
                                && !stale.contains(&sp)
                            {
                                stale.push(sp);
                            }
                        }
                    }
                }
                stale.push(p);
            } else if is_shard_name(&name) && !stale.contains(&p) {
                stale.push(p);
            }
        }
        // An older ModelOpt export's hf_quant_config.json that this run does not write over:
        // TensorRT-LLM and vLLM read it before config.json and would load the output as
        // quantized (a float output, or a checkpoint quantized otherwise).
        let hf = dir.join(MODELOPT_CONFIG);
        // A float output's plan leaves it out of `extra_files` (plan.rs).
        let writes_hf = self.extra_files.iter().any(|(_, d)| d == &hf);
        if !writes_hf && std::fs::symlink_metadata(&hf).is_ok_and(|m| m.is_file()) {
            stale.push(hf);
        }
        stale.sort();
        stale.dedup();
        stale
    }
}

/// The stem re-sharded outputs are named with: `diffusion_pytorch_model` for a diffusers
/// component (diffusers 0.42.1 `from_pretrained` opens only `diffusion_pytorch_model.safetensors`
/// or `diffusion_pytorch_model.safetensors.index.json`, `_fetch_index_file`, and its
/// `save_pretrained` names shards `diffusion_pytorch_model-0000N-of-0000M.safetensors`), `model`
/// otherwise (transformers' `model.safetensors.index.json`). A variant (`….fp16.safetensors`) is
/// not carried over: the merged dtype need not be the variant's.
pub(super) fn shard_stem(base: &Checkpoint) -> &'static str {
    const DIFFUSERS: &str = "diffusion_pytorch_model";
    let name = match &base.layout {
        Layout::Sharded { index_name } => index_name.clone(),
        Layout::Folder { file_name } => file_name.clone(),
        Layout::File => base
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let name = safetensors_name(&name);
    if name.split('.').next() == Some(DIFFUSERS) && name.contains(".safetensors") {
        DIFFUSERS
    } else {
        "model"
    }
}

/// Greedy sharding as `huggingface_hub.split_torch_state_dict_into_shards`: tensors in order,
/// a new shard when the next tensor would exceed `max` (a tensor larger than `max` gets its own).
pub(super) fn shard_groups(
    names: &[String],
    size_of: &dyn Fn(&str) -> u64,
    max: u64,
) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    let mut cur_size = 0u64;
    for n in names {
        let s = size_of(n);
        if !cur.is_empty() && cur_size + s > max {
            groups.push(std::mem::take(&mut cur));
            cur_size = 0;
        }
        cur.push(n.clone());
        cur_size += s;
    }
    if !cur.is_empty() || groups.is_empty() {
        groups.push(cur);
    }
    groups
}

/// Every regular, non-weight, non-hidden file of the base folder (config.json, tokenizer
/// files, generation_config.json, …), to copy beside the output.
/// [`extra_files`] as a part manifest records them: (canonical source, destination relative
/// to `out`).
pub(crate) fn copied_files(base: &Checkpoint, out: &Path) -> Result<Vec<(String, String)>> {
    extra_files(base, out)?
        .into_iter()
        .map(|(src, dst)| -> Result<(String, String)> {
            let src = std::fs::canonicalize(&src)
                .with_context(|| format!("{}: cannot resolve", src.display()))?;
            let rel = dst.strip_prefix(out).unwrap_or(&dst);
            Ok((
                src.display().to_string(),
                rel.to_string_lossy().into_owned(),
            ))
        })
        .collect()
}

/// The non-weight files of a base folder, copied into the output: configs, tokenizer files,
/// and subfolders (sentence-transformers' `1_Pooling/`, `2_Normalize/`), recursively. Symlinks
/// are followed (a Hugging Face cache snapshot is all symlinks into `blobs/`); hidden entries,
/// weights and pickles are not copied.
pub(super) fn extra_files(base: &Checkpoint, out: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    fn walk(dir: &Path, out: &Path, depth: usize, v: &mut Vec<(PathBuf, PathBuf)>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_weight = name.ends_with(".safetensors")
                || name.ends_with(".safetensors.index.json")
                || name.ends_with(".bin.index.json");
            let is_pickle = [".bin", ".pt", ".pth", ".ckpt", ".gguf"]
                .iter()
                .any(|x| name.ends_with(x));
            if is_weight || is_pickle || name.starts_with('.') {
                continue;
            }
            // Follows symlinks: what the entry is, not what the link is.
            let Ok(meta) = std::fs::metadata(e.path()) else {
                continue;
            };
            if meta.is_file() {
                v.push((e.path(), out.join(&name)));
            } else if meta.is_dir() && depth < 4 {
                walk(&e.path(), &out.join(&name), depth + 1, v)?;
            }
        }
        Ok(())
    }
    let mut v = Vec::new();
    walk(base.folder(), out, 0, &mut v)?;
    Ok(v)
}

/// The name a merged shard is written under: the base shard's own, except that a `torch.save`
/// shard (`pytorch_model-00001-of-00002.bin`, read through `io::torch`) becomes the safetensors
/// shard transformers names it (`model-00001-of-00002.safetensors`; diffusers'
/// `diffusion_pytorch_model-…` keeps its stem), its index likewise
/// (`pytorch_model.bin.index.json` → `model.safetensors.index.json`), and a lone `.pt`/`.pth`/
/// `.ckpt` base file `NAME.safetensors`.
pub(crate) fn safetensors_name(name: &str) -> String {
    let renamed = |stem: &str| {
        if stem.starts_with("pytorch_model") {
            stem.replacen("pytorch_model", "model", 1)
        } else {
            stem.to_owned()
        }
    };
    if let Some(stem) = name.strip_suffix(".bin.index.json") {
        return format!("{}.safetensors.index.json", renamed(stem));
    }
    for ext in [".bin", ".pt", ".pth", ".ckpt"] {
        if let Some(stem) = name.strip_suffix(ext) {
            return format!("{}.safetensors", renamed(stem));
        }
    }
    name.to_owned()
}
