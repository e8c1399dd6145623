//! `merge --part I/N` of a safetensors output (a file, or a folder of shards with an index and
//! the base's other files) as a [`SplitOutput`]: the plan records every file's exact size, the
//! index document and the base's non-weight files to copy; `finalize` checks that the written
//! files hold exactly the recorded base's tensors and that the files to copy are exactly its
//! non-weight files, then writes the copies and the index (last, atomically). The result is
//! byte-identical to a single-process run.
//!
//! Must not copy or write anything a manifest names unless the base it records confirms it.

use super::engine::{
    finalize_parts, find_manifests, is_plain_name, is_safe_relative, manifest_file, unsafe_name,
    PartManifest, SplitOutput,
};
use crate::error::{InputError, InputResult, Opt};
use crate::io::{Output, SafetensorsFile};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One planned output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFile {
    pub name: String,
    pub bytes: u64,
}

/// The whole output of a safetensors merge, identical in every part's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub files: Vec<PlannedFile>,
    pub index_name: Option<String>,
    /// The index document, written by `finalize`.
    pub index: Option<String>,
    /// (absolute source, destination path relative to the output folder) of non-weight files
    /// to copy.
    pub extra: Vec<(String, String)>,
    /// The base folder (absolute). `finalize` checks that the output's tensors are the base's
    /// and that `extra` is exactly the base's non-weight files, so an edited manifest cannot
    /// make it copy any other file.
    pub base: String,
    /// The base is quantized and the output writes it as float (`merge --quant dequantize`):
    /// the output's tensors are the base's logical weights (companions dropped, packed weights
    /// under their `….weight` names) and config.json is copied without `quantization_config`.
    #[serde(default)]
    pub dequantized: bool,
}

/// Version of the merge part manifest (2: the plan records the base folder).
pub const MANIFEST_VERSION: u32 = 2;

/// A merge part manifest (`.lorakit-part-I-of-N.json` in the output folder).
pub type Manifest = PartManifest<Plan, String>;

/// The manifests' prefix in the output folder.
const PREFIX: &str = ".lorakit-part-";

/// The manifest file name of part `i` of `n`.
pub fn manifest_name(i: usize, n: usize) -> String {
    manifest_file(PREFIX, i, n)
}

/// Whether `dir` holds merge part manifests.
pub fn has_merge_manifests(dir: &Path) -> bool {
    !find_manifests(&MergeParts {
        dir: dir.to_path_buf(),
    })
    .is_empty()
}

/// What `finalize` did.
#[derive(Debug, Serialize)]
pub struct FinalizeReport {
    pub out: String,
    pub parts: usize,
    pub files_checked: usize,
    pub bytes: u64,
    pub index: Option<String>,
    pub copied: Vec<String>,
    /// Every file of the final output, as the single-process merge's `files` lists them: the
    /// shards (checked), then the index, then the copied non-weight files (written).
    pub files: Vec<String>,
}

/// Checks all parts of `dir` and writes the index and copied files.
pub fn finalize(dir: &Path) -> Result<FinalizeReport> {
    finalize_parts(&MergeParts {
        dir: dir.to_path_buf(),
    })
}

/// The safetensors merge output in folder `dir`.
pub struct MergeParts {
    pub dir: PathBuf,
}

impl SplitOutput for MergeParts {
    type Plan = Plan;
    type Written = String;
    type Report = FinalizeReport;
    const VERSION: u32 = MANIFEST_VERSION;

    fn out(&self) -> &Path {
        &self.dir
    }

    fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    fn manifest_prefix(&self) -> String {
        PREFIX.to_owned()
    }

    fn none_found(&self) -> InputError {
        InputError::option(&self.dir, |o| {
            format!(
                "no part manifests (.lorakit-part-I-of-N.json) or extract part files: run merge or extract with {} first",
                o.set(Opt::Part, "I/N")
            )
        })
    }

    fn planned_files(plan: &Plan) -> Vec<&str> {
        plan.files.iter().map(|f| f.name.as_str()).collect()
    }

    fn written_name(w: &String) -> &str {
        w
    }

    fn planned_bytes(plan: &Plan, j: usize, _: &Manifest) -> Option<u64> {
        plan.files.get(j).map(|f| f.bytes)
    }

    /// The index is a plain `.json` name, every copied file a relative path inside the folder.
    fn check_names(path: &Path, plan: &Plan) -> InputResult<()> {
        if let Some(n) = &plan.index_name {
            if !is_plain_name(n) || !n.ends_with(".json") {
                return Err(unsafe_name(path, "index name", n));
            }
        }
        for (_, dst) in &plan.extra {
            if !is_safe_relative(dst) {
                return Err(unsafe_name(path, "copied file", dst));
            }
        }
        Ok(())
    }

    /// Every file a valid safetensors file; the tensors exactly the recorded base's, the copied
    /// files exactly its non-weight files; then the copies and the index staged.
    fn finish(
        &self,
        manifest: &Path,
        first: &Manifest,
        out: &mut Output,
        bytes: u64,
    ) -> Result<FinalizeReport> {
        let (dir, plan) = (&self.dir, &first.plan);
        let mut out_names: Vec<String> = Vec::new();
        // Each written tensor and the file that holds it: what the index must map.
        let mut homes = std::collections::BTreeMap::new();
        for pf in &plan.files {
            let f = SafetensorsFile::open(dir.join(&pf.name))?;
            out_names.extend(f.tensors().iter().map(|t| t.name.clone()));
            for t in f.tensors() {
                homes.insert(t.name.clone(), pf.name.as_str());
            }
        }
        // The copied files must be exactly the recorded base's non-weight files, and the base must
        // be the checkpoint the parts wrote: nothing else can be copied into the output.
        let base = crate::io::Checkpoint::open(&plan.base).map_err(|e| {
            InputError::invalid(
                manifest,
                format!("the base folder the manifest records cannot be opened: {e}"),
            )
        })?;
        let mut base_names: Vec<String> = if plan.dequantized {
            let q = crate::io::quant::QuantMap::scan(&base)?;
            base.names()
                .filter(|n| q.companion_of(n).is_none())
                .map(|n| q.logical_name(n).to_owned())
                .collect()
        } else {
            base.names().map(str::to_owned).collect()
        };
        base_names.sort();
        out_names.sort();
        if base_names != out_names {
            bail!(InputError::invalid(
            manifest,
            format!(
                "the output's tensors are not those of the recorded base {}; the manifest was edited or the base changed",
                plan.base
            )
        ));
        }
        let expected = crate::merge::copied_files(&base, dir)?;
        if expected != plan.extra {
            bail!(InputError::invalid(
            manifest,
            format!(
                "the files to copy are not the non-weight files of the recorded base {}; the manifest was edited or the base changed",
                plan.base
            )
        ));
        }
        let mut copied = Vec::new();
        for (src, dst) in &plan.extra {
            if plan.dequantized && dst == crate::merge::MODELOPT_CONFIG {
                continue; // as `write_finals` leaves it out
            }
            let mut data = crate::io::read_whole_file(Path::new(src))?;
            if plan.dequantized && dst == "config.json" {
                // As the single-process merge writes it (`write_finals`).
                data = crate::merge::without_quantization_config(data);
            }
            let d = dir.join(dst);
            if let Some(parent) = d.parent() {
                out.create_dir_all(parent)?;
            }
            out.small_file(&d, &data)?;
            copied.push(dst.clone());
        }
        if let (Some(name), Some(doc)) = (&plan.index_name, &plan.index) {
            // The manifest carries the index as text: it is written only if its weight_map is
            // exactly the written tensors, each in the file that holds it.
            if !index_maps(doc, &homes) {
                bail!(InputError::invalid(
                    manifest,
                    "the index document is not the index of the written files (a JSON object whose `weight_map` names each tensor's file); the manifest was edited",
                ));
            }
            out.small_file(&dir.join(name), doc.as_bytes())?;
        }
        let files = plan
            .files
            .iter()
            .map(|f| f.name.as_str())
            .chain(plan.index_name.as_deref())
            .chain(copied.iter().map(String::as_str))
            .map(|n| dir.join(n).display().to_string())
            .collect();
        Ok(FinalizeReport {
            out: dir.display().to_string(),
            parts: first.parts,
            files_checked: plan.files.len(),
            bytes,
            index: plan.index_name.clone(),
            copied,
            files,
        })
    }
}

/// Whether the index document `doc` is a JSON object whose `weight_map` maps exactly the
/// tensors of `homes` to the files that hold them.
fn index_maps(doc: &str, homes: &std::collections::BTreeMap<String, &str>) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(doc) else {
        return false;
    };
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        return false;
    };
    map.len() == homes.len()
        && map
            .iter()
            .all(|(k, f)| f.as_str().is_some_and(|f| homes.get(k) == Some(&f)))
}
