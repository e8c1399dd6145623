//! The one streaming writer every command uses.
//!
//! Tensors are written one at a time, in a declared order, into a temporary file in the
//! destination folder (`.NAME.lorakit-PID.tmp`); the header is written first from the declared
//! dtypes and shapes, so nothing needs to be held in memory but the tensor being written. On
//! [`Output::commit`] every file is flushed and fsynced, then renamed into place (an index last)
//! and the folder fsynced. Until then the destination is untouched: an error, a panic or a kill
//! leaves either the old file or nothing, never a truncated one. A dropped, uncommitted output
//! removes its temporary files; temporary files of dead processes are swept on the next run.
//!
//! Same inputs → byte-identical files: the header is serialised deterministically and no
//! timestamps are recorded.

use crate::dtype::{self, Dtype};
use crate::error::{InputError, InputResult};
use crate::io::header;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A tensor to be written: its name, dtype and shape, declared before any data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> Self {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
        }
    }

    pub fn byte_len(&self) -> u64 {
        dtype::byte_len(self.dtype, self.shape.iter().product()).expect("valid spec") as u64
    }
}

/// A set of files being written to one destination folder, committed together.
#[derive(Debug, Default)]
pub struct Output {
    pending: Vec<(PathBuf, PathBuf)>,
    bytes: u64,
}

impl Output {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a safetensors file at `path` holding exactly `specs`, in that order.
    pub fn safetensors(
        &mut self,
        path: &Path,
        metadata: &[(String, String)],
        specs: Vec<TensorSpec>,
    ) -> InputResult<FileWriter<'_>> {
        let tmp = temp_path(path)?;
        let file = create_new(&tmp)?;
        let mut w = BufWriter::with_capacity(8 << 20, file);
        let triples: Vec<(String, Dtype, Vec<usize>)> = specs
            .iter()
            .map(|s| (s.name.clone(), s.dtype, s.shape.clone()))
            .collect();
        let head = header::serialize(metadata, &triples);
        self.pending.push((tmp.clone(), path.to_path_buf()));
        w.write_all(&head).map_err(|e| InputError::io(&tmp, e))?;
        Ok(FileWriter {
            out: self,
            tmp,
            w: Some(w),
            specs,
            next: 0,
            left: 0,
            bytes: head.len() as u64,
        })
    }

    /// Adds a small whole file (JSON, copied config) to the set.
    pub fn small_file(&mut self, path: &Path, contents: &[u8]) -> InputResult<()> {
        let tmp = temp_path(path)?;
        let mut f = create_new(&tmp)?;
        self.pending.push((tmp.clone(), path.to_path_buf()));
        f.write_all(contents).map_err(|e| InputError::io(&tmp, e))?;
        f.sync_all().map_err(|e| InputError::io(&tmp, e))?;
        self.bytes += contents.len() as u64;
        Ok(())
    }

    /// Bytes written so far (headers included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Renames every file into place in the order they were started (so an index started last
    /// lands last) and fsyncs their folders.
    pub fn commit(mut self) -> InputResult<u64> {
        let pending = std::mem::take(&mut self.pending);
        let mut dirs = HashSet::new();
        for (tmp, dest) in &pending {
            std::fs::rename(tmp, dest).map_err(|e| InputError::io(dest, e))?;
            dirs.insert(parent_of(dest).to_path_buf());
        }
        for d in dirs {
            if let Ok(f) = File::open(&d) {
                let _ = f.sync_all();
            }
        }
        Ok(self.bytes)
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        for (tmp, _) in &self.pending {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Writes one safetensors file's tensors in their declared order.
#[derive(Debug)]
pub struct FileWriter<'o> {
    out: &'o mut Output,
    tmp: PathBuf,
    w: Option<BufWriter<File>>,
    specs: Vec<TensorSpec>,
    next: usize,
    left: u64,
    bytes: u64,
}

impl FileWriter<'_> {
    /// The declared tensors.
    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// Writes the whole of the next tensor, which must be `name`.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> InputResult<()> {
        self.begin(name)?;
        self.write_chunk(data)
    }

    /// Starts the next tensor, which must be `name`; its bytes follow with [`Self::write_chunk`].
    pub fn begin(&mut self, name: &str) -> InputResult<()> {
        if self.left != 0 {
            let prev = &self.specs[self.next - 1].name;
            return Err(InputError::invalid(
                &self.tmp,
                format!("tensor `{prev}`: {} bytes short", self.left),
            ));
        }
        let spec = self.specs.get(self.next).ok_or_else(|| {
            InputError::invalid(
                &self.tmp,
                format!("tensor `{name}` was not declared for this file"),
            )
        })?;
        if spec.name != name {
            return Err(InputError::invalid(
                &self.tmp,
                format!("tensor `{name}` written where `{}` was declared", spec.name),
            ));
        }
        self.left = spec.byte_len();
        self.next += 1;
        Ok(())
    }

    /// Appends bytes to the current tensor.
    pub fn write_chunk(&mut self, data: &[u8]) -> InputResult<()> {
        if data.len() as u64 > self.left {
            let name = self
                .next
                .checked_sub(1)
                .map(|i| self.specs[i].name.as_str())
                .unwrap_or("?");
            return Err(InputError::invalid(
                &self.tmp,
                format!("tensor `{name}`: more bytes than its shape holds"),
            ));
        }
        self.left -= data.len() as u64;
        self.bytes += data.len() as u64;
        let w = self.w.as_mut().expect("open until finish");
        w.write_all(data).map_err(|e| InputError::io(&self.tmp, e))
    }

    /// Flushes and fsyncs; the file is renamed into place when the [`Output`] commits.
    pub fn finish(mut self) -> InputResult<u64> {
        if self.next != self.specs.len() || self.left != 0 {
            let missing = self
                .specs
                .get(self.next)
                .map(|s| s.name.as_str())
                .unwrap_or("the last tensor");
            return Err(InputError::invalid(
                &self.tmp,
                format!("tensor `{missing}` was never written"),
            ));
        }
        let w = self.w.take().expect("open until finish");
        let file = w
            .into_inner()
            .map_err(|e| InputError::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| InputError::io(&self.tmp, e))?;
        self.out.bytes += self.bytes;
        Ok(self.bytes)
    }
}

fn parent_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// `.NAME.lorakit-PID.tmp` beside `dest`; sweeps leftovers of dead lorakit processes first.
fn temp_path(dest: &Path) -> InputResult<PathBuf> {
    let name = dest
        .file_name()
        .ok_or_else(|| InputError::invalid(dest, "output path has no file name"))?
        .to_string_lossy()
        .into_owned();
    let dir = parent_of(dest);
    let prefix = format!(".{name}.lorakit-");
    if let Ok(rd) = std::fs::read_dir(dir) {
        for ent in rd.flatten() {
            let fname = ent.file_name().to_string_lossy().into_owned();
            if let Some(pid) = fname
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".tmp"))
            {
                let alive = pid
                    .parse::<u32>()
                    .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
                if !alive {
                    let _ = std::fs::remove_file(ent.path());
                }
            }
        }
    }
    Ok(dir.join(format!("{prefix}{}.tmp", std::process::id())))
}

fn create_new(p: &Path) -> InputResult<File> {
    // A leftover of our own pid (an earlier output in this process) is ours to replace.
    let _ = std::fs::remove_file(p);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)
        .map_err(|e| InputError::io(p, e))
}

/// Refuses an output path that is, or resolves (through symlinks or hard links) to, one of the
/// inputs, or a folder that holds an input when writing a folder. Checked before anything is
/// written.
pub fn refuse_overwrite(output: &Path, inputs: &[PathBuf]) -> InputResult<()> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let out_id = id(output);
    let out_canon = canonical_target(output);
    for input in inputs {
        let same_inode = out_id.is_some() && out_id == id(input);
        let same_path = out_canon.is_some() && out_canon == canonical_target(input);
        if same_inode || same_path {
            return Err(InputError::invalid(
                output,
                format!(
                    "output is also an input ({}); choose another output path",
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Canonical form of a path that may not exist yet (its parent canonicalised), following a
/// symlink at the final component even when dangling.
fn canonical_target(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = std::fs::canonicalize(p) {
        return Some(c);
    }
    if let Ok(link) = std::fs::read_link(p) {
        let joined = if link.is_absolute() {
            link
        } else {
            parent_of(p).join(link)
        };
        return canonical_target(&joined);
    }
    let parent = std::fs::canonicalize(parent_of(p)).ok()?;
    Some(parent.join(p.file_name()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::file::SafetensorsFile;

    #[test]
    fn writes_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.safetensors");
        let mut out = Output::new();
        let specs = vec![
            TensorSpec::new("x", Dtype::F32, vec![2]),
            TensorSpec::new("y", Dtype::U8, vec![3]),
        ];
        let mut w = out
            .safetensors(&dest, &[("k".into(), "v".into())], specs)
            .unwrap();
        w.write_tensor("x", &dtype::encode(Dtype::F32, &[1.0, 2.0]))
            .unwrap();
        w.begin("y").unwrap();
        w.write_chunk(&[7]).unwrap();
        w.write_chunk(&[8, 9]).unwrap();
        w.finish().unwrap();
        assert!(!dest.exists(), "nothing lands before commit");
        out.commit().unwrap();
        let f = SafetensorsFile::open(&dest).unwrap();
        assert_eq!(f.read_f32("x").unwrap(), vec![1.0, 2.0]);
        assert_eq!(f.view("y").unwrap().data, &[7, 8, 9]);
        assert_eq!(f.header().metadata_value("k"), Some("v"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1);
    }

    #[test]
    fn dropped_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.safetensors");
        {
            let mut out = Output::new();
            let mut w = out
                .safetensors(&dest, &[], vec![TensorSpec::new("x", Dtype::F32, vec![2])])
                .unwrap();
            w.write_tensor("x", &[0u8; 8]).unwrap();
            assert!(w.write_tensor("z", &[0u8; 8]).is_err());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_output_onto_input_or_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.safetensors");
        std::fs::write(&input, b"x").unwrap();
        let link = dir.path().join("link.safetensors");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        assert!(refuse_overwrite(&input, std::slice::from_ref(&input)).is_err());
        assert!(refuse_overwrite(&link, std::slice::from_ref(&input)).is_err());
        let other = dir.path().join("sub/../in.safetensors");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(refuse_overwrite(&other, std::slice::from_ref(&input)).is_err());
        assert!(refuse_overwrite(&dir.path().join("new.safetensors"), &[input]).is_ok());
    }
}
