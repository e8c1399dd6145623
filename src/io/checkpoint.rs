//! A checkpoint: one `.safetensors` file or a Hugging Face model folder (single file, or shards
//! with a `*.safetensors.index.json` whose `weight_map` is the truth).
//!
//! Opening reads headers only. Every tensor named by the index must be in the shard the index
//! names; a missing shard, a tensor missing from its shard, a shard tensor the index does not
//! list, a tensor in two shards, and a shard name that is not a plain file name (path traversal)
//! are errors.
//!
//! Must not interpret what the tensors mean (no adapter or model knowledge) nor write anything.

use crate::error::{InputError, InputResult};
use crate::io::file::{SafetensorsFile, TensorView};
use crate::io::header::TensorInfo;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// How the checkpoint is laid out on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A single `.safetensors` file given directly.
    File,
    /// A folder with one safetensors file (e.g. `model.safetensors`).
    Folder { file_name: String },
    /// A folder with shards and an index.
    Sharded { index_name: String },
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct Entry {
    pub shard: usize,
    pub index: usize,
}

/// An open checkpoint: shards in index order (file order for one file), tensors by name.
#[derive(Debug)]
pub struct Checkpoint {
    pub root: PathBuf,
    pub layout: Layout,
    pub shards: Vec<SafetensorsFile>,
    /// The index's `metadata` object, when sharded.
    pub index_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    order: Vec<(String, Entry)>,
    by_name: HashMap<String, usize>,
}

/// File names that mark a folder as a model (in preference order).
const SINGLE_NAMES: &[&str] = &[
    "model.safetensors",
    "adapter_model.safetensors",
    "diffusion_pytorch_model.safetensors",
];

impl Checkpoint {
    /// Opens a file or folder.
    pub fn open(path: impl AsRef<Path>) -> InputResult<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| InputError::io(path, e))?;
        if !meta.is_dir() {
            // A regular file, or the one error for a FIFO, device or socket.
            let f = SafetensorsFile::open(path)?;
            return Ok(Self::from_single(path.to_path_buf(), Layout::File, f));
        }
        let mut indexes = Vec::new();
        let mut singles = Vec::new();
        for ent in std::fs::read_dir(path).map_err(|e| InputError::io(path, e))? {
            let ent = ent.map_err(|e| InputError::io(path, e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors.index.json") {
                indexes.push(name);
            } else if name.ends_with(".safetensors") {
                singles.push(name);
            }
        }
        indexes.sort();
        singles.sort();
        if let Some(name) = indexes
            .iter()
            .find(|n| n.as_str() == "model.safetensors.index.json")
            .or(indexes.first())
        {
            if indexes.len() > 1 && name != "model.safetensors.index.json" {
                return Err(InputError::invalid(
                    path,
                    format!(
                        "several shard indexes ({}); name one file",
                        indexes.join(", ")
                    ),
                ));
            }
            return Self::open_sharded(path, name);
        }
        let exact = SINGLE_NAMES
            .iter()
            .find(|n| singles.iter().any(|s| s == *n))
            .map(|s| s.to_string());
        // transformers/diffusers take `pytorch_model.bin` before a lone variant file
        // (`….fp16.safetensors` is loaded only when that variant is asked for).
        if exact.is_none() {
            if let Some(c) = Self::open_torch_folder(path, singles.is_empty())? {
                return Ok(c);
            }
        }
        let pick = exact.or_else(|| (singles.len() == 1).then(|| singles[0].clone()));
        match pick {
            Some(name) => {
                let f = SafetensorsFile::open(path.join(&name))?;
                Ok(Self::from_single(
                    path.to_path_buf(),
                    Layout::Folder { file_name: name },
                    f,
                ))
            }
            None if singles.is_empty() => Err(InputError::invalid(
                path,
                "no .safetensors file in this folder",
            )),
            None => Err(InputError::invalid(
                path,
                format!(
                    "several .safetensors files and no index ({}); name one file",
                    singles.join(", ")
                ),
            )),
        }
    }

    /// A folder saved with `safe_serialization=False` (transformers' `pytorch_model.bin`, its
    /// sharded `pytorch_model.bin.index.json`, diffusers' `diffusion_pytorch_model.bin`): the
    /// `torch.save` archives read through [`crate::io::torch`]; with `lone`, also the one `.bin`
    /// of a folder with no safetensors file (`diffusion_pytorch_model.fp16.bin`,
    /// `gptq_model-4bit-128g.bin`). The layout names what a merge writes: safetensors under the
    /// names transformers/diffusers give them (`model.safetensors`,
    /// `diffusion_pytorch_model.safetensors`; shards renamed by the merge).
    fn open_torch_folder(path: &Path, lone: bool) -> InputResult<Option<Self>> {
        let single = |name: String, out: String| -> InputResult<Option<Self>> {
            let f = SafetensorsFile::open(path.join(&name))?;
            Ok(Some(Self::from_single(
                path.to_path_buf(),
                Layout::Folder { file_name: out },
                f,
            )))
        };
        for stem in ["pytorch_model", "diffusion_pytorch_model"] {
            let index = format!("{stem}.bin.index.json");
            if path.join(&index).is_file() {
                return Self::open_sharded(path, &index).map(Some);
            }
            if path.join(format!("{stem}.bin")).is_file() {
                let out = if stem == "pytorch_model" {
                    "model"
                } else {
                    stem
                };
                return single(format!("{stem}.bin"), format!("{out}.safetensors"));
            }
        }
        if !lone {
            return Ok(None);
        }
        let mut bins: Vec<String> = std::fs::read_dir(path)
            .map_err(|e| InputError::io(path, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".bin") && path.join(n).is_file())
            .collect();
        bins.sort();
        match bins.as_slice() {
            [one] => {
                let stem = one.trim_end_matches(".bin");
                let out = match stem.split('.').next() {
                    Some("diffusion_pytorch_model") => "diffusion_pytorch_model",
                    _ => "model",
                };
                single(one.clone(), format!("{out}.safetensors"))
            }
            [] => Ok(None),
            _ => Err(InputError::invalid(
                path,
                format!(
                    "no .safetensors file and several .bin files ({}); name one file",
                    bins.join(", ")
                ),
            )),
        }
    }

    fn from_single(root: PathBuf, layout: Layout, f: SafetensorsFile) -> Self {
        let order: Vec<(String, Entry)> = f
            .tensors()
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), Entry { shard: 0, index: i }))
            .collect();
        let by_name = order
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        Checkpoint {
            root,
            layout,
            shards: vec![f],
            index_metadata: None,
            order,
            by_name,
        }
    }

    fn open_sharded(dir: &Path, index_name: &str) -> InputResult<Self> {
        let index_path = dir.join(index_name);
        let text = crate::io::file::read_json_file(&index_path)?;
        let index = parse_index(&text).map_err(|m| InputError::invalid(&index_path, m))?;
        let mut sorted: Vec<String> = Vec::new();
        for (tensor, shard) in &index.weight_map {
            if !is_plain_file_name(shard) {
                return Err(InputError::invalid(
                    &index_path,
                    format!("tensor `{tensor}`: shard name `{shard}` is not a plain file name in this folder"),
                ));
            }
            sorted.push(shard.clone());
        }
        // Shards in name order (model-00001-of-…, model-00002-of-…) so that output mirrors input.
        sorted.sort();
        sorted.dedup();
        // A stale `model.safetensors` beside a sharded save: transformers loads it before the
        // index (`modeling_utils.py` `_get_resolved_checkpoint_files`), so the folder is another
        // model there than here. (diffusers takes the index before
        // `diffusion_pytorch_model.safetensors`, as lorakit does; mlx-lm's one-shard save names
        // its shard `model.safetensors` in the index: no ambiguity.)
        let whole = index_name.trim_end_matches(".index.json");
        let stale = whole == "model.safetensors" && !sorted.iter().any(|s| s == whole);
        if stale && dir.join(whole).is_file() {
            return Err(InputError::invalid(
                dir,
                format!(
                    "holds both `{whole}`, which transformers loads, and the shard index `{index_name}` over other files; remove the stale one (or name `{whole}` to read it alone)"
                ),
            ));
        }
        let remap: HashMap<&str, usize> = sorted
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        let mut shards = Vec::with_capacity(sorted.len());
        for name in &sorted {
            let p = dir.join(name);
            if !p.exists() {
                return Err(InputError::invalid(
                    &index_path,
                    format!("shard `{name}` named by the index is missing"),
                ));
            }
            shards.push(SafetensorsFile::open(&p)?);
        }
        let listed: HashMap<&str, &str> = index
            .weight_map
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut by_name = HashMap::new();
        let mut order = Vec::new();
        for (si, shard) in shards.iter().enumerate() {
            for (ti, t) in shard.tensors().iter().enumerate() {
                match listed.get(t.name.as_str()) {
                    Some(s) if remap[s] == si => {}
                    Some(s) => {
                        return Err(InputError::invalid(
                            shard.path(),
                            format!(
                                "tensor `{}` is in this shard but the index places it in `{s}`",
                                t.name
                            ),
                        ))
                    }
                    None => {
                        return Err(InputError::invalid(
                            shard.path(),
                            format!("tensor `{}` is not listed in {index_name}", t.name),
                        ))
                    }
                }
                by_name.insert(t.name.clone(), order.len());
                order.push((
                    t.name.clone(),
                    Entry {
                        shard: si,
                        index: ti,
                    },
                ));
            }
        }
        for (tensor, shard) in &index.weight_map {
            if !by_name.contains_key(tensor) {
                return Err(InputError::invalid(
                    dir.join(shard),
                    format!("tensor `{tensor}` named by the index is missing from this shard"),
                ));
            }
        }
        Ok(Checkpoint {
            root: dir.to_path_buf(),
            layout: Layout::Sharded {
                index_name: index_name.to_owned(),
            },
            shards,
            index_metadata: index.metadata,
            order,
            by_name,
        })
    }

    /// Tensor names in file order (shard by shard, offset order within a shard).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(|(n, _)| n.as_str())
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.order[i].1)
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.entry(name)
            .map(|e| &self.shards[e.shard].tensors()[e.index])
    }

    /// All tensors' header entries with the shard they are in, in file order.
    pub fn infos(&self) -> impl Iterator<Item = (usize, &TensorInfo)> {
        self.order
            .iter()
            .map(|(_, e)| (e.shard, &self.shards[e.shard].tensors()[e.index]))
    }

    /// The file holding `name`.
    pub fn file_of(&self, name: &str) -> Option<&SafetensorsFile> {
        self.entry(name).map(|e| &self.shards[e.shard])
    }

    pub fn view(&self, name: &str) -> InputResult<TensorView<'_>> {
        match self.entry(name) {
            Some(e) => self.shards[e.shard].view_info(&self.shards[e.shard].tensors()[e.index]),
            None => Err(InputError::invalid(
                &self.root,
                format!("tensor `{name}` not found"),
            )),
        }
    }

    pub fn read_f32(&self, name: &str) -> InputResult<Vec<f32>> {
        match self.file_of(name) {
            Some(f) => f.read_f32(name),
            None => Err(InputError::invalid(
                &self.root,
                format!("tensor `{name}` not found"),
            )),
        }
    }

    /// `__metadata__` of the first shard.
    pub fn metadata(&self) -> &[(String, String)] {
        &self.shards[0].header().metadata
    }

    /// Sum of tensor bytes.
    pub fn total_bytes(&self) -> u64 {
        self.infos().map(|(_, t)| t.byte_len()).sum()
    }

    /// The folder holding the weights (the file's parent for a file).
    pub fn folder(&self) -> &Path {
        match self.layout {
            Layout::File => self.root.parent().unwrap_or(Path::new(".")),
            _ => &self.root,
        }
    }

    /// Every file the checkpoint reads (shards and index).
    pub fn input_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.shards.iter().map(|s| s.path().to_path_buf()).collect();
        if let Layout::Sharded { index_name } = &self.layout {
            v.push(self.root.join(index_name));
        }
        v
    }
}

/// A parsed `model.safetensors.index.json`.
#[derive(Debug)]
pub struct Index {
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Tensor → shard file name, in file order.
    pub weight_map: Vec<(String, String)>,
}

/// Parses an index; the message names the offending key.
pub fn parse_index(text: &[u8]) -> Result<Index, String> {
    let v: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let wm = obj.get("weight_map").ok_or("missing `weight_map`")?;
    let wm = wm.as_object().ok_or("`weight_map` is not an object")?;
    if wm.is_empty() {
        return Err("`weight_map` names no tensor".into());
    }
    let mut weight_map = Vec::with_capacity(wm.len());
    for (k, v) in wm {
        let s = v
            .as_str()
            .ok_or_else(|| format!("tensor `{k}`: shard is not a string"))?;
        weight_map.push((k.clone(), s.to_owned()));
    }
    let metadata = match obj.get("metadata") {
        Some(serde_json::Value::Object(m)) => Some(m.clone()),
        Some(serde_json::Value::Null) | None => None,
        Some(_) => return Err("`metadata` is not an object".into()),
    };
    Ok(Index {
        metadata,
        weight_map,
    })
}

/// A shard name must be one normal path component: no `/`, `..`, or absolute path.
fn is_plain_file_name(name: &str) -> bool {
    let p = Path::new(name);
    let mut comps = p.components();
    matches!(
        (comps.next(), comps.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.contains('\\')
        && !name.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_must_be_plain() {
        assert!(is_plain_file_name("model-00001-of-00002.safetensors"));
        for bad in [
            "../../etc/passwd",
            "/etc/passwd",
            "a/b.safetensors",
            "..",
            ".",
            "",
            "a\\b",
        ] {
            assert!(!is_plain_file_name(bad), "{bad}");
        }
    }
}
