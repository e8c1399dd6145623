//! GGUF files (llama.cpp, Ollama, LM Studio): a validated header ([`header`]), the ggml type
//! table ([`types`]), the block codecs ([`quant`]), memory-mapped files ([`GgufFile`]) and
//! models split over several files ([`GgufModel`]), Hugging Face ↔ GGUF names and llama.cpp's
//! q/k permutation ([`names`]), and the streaming writer ([`writer`]).
//!
//! Reading never trusts a number from the file: the header is parsed from the memory map with
//! every count, size and offset checked ([`header::parse`]). Tensors are borrowed views over
//! the map; dequantizing copies one tensor at a time.

mod bpe;
pub mod header;
mod hf_config;
pub mod hparams;
mod kquant;
pub mod modelcard;
pub mod names;
pub mod phi3;
mod pre_table;
pub mod quant;
mod spm;
mod tokens;
pub mod types;
pub mod vocab;
pub mod writer;

pub use header::{GgufError, Header, KeyValue, TensorInfo, Value, ValueType};
pub use types::GgmlType;

use crate::error::{InputError, InputResult};
use memmap2::Mmap;
use std::path::{Path, PathBuf};

/// `general.architecture`.
pub const KEY_ARCHITECTURE: &str = "general.architecture";
/// Split keys written by `gguf-split` / `GGUFWriter` (`constants.py` `Keys.Split`).
pub const KEY_SPLIT_NO: &str = "split.no";
pub const KEY_SPLIT_COUNT: &str = "split.count";
pub const KEY_SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// True when `path`'s first four bytes are `GGUF` (or it is named `*.gguf`).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        && path.is_file()
    {
        return true;
    }
    let mut magic = [0u8; 4];
    crate::io::open_regular(path)
        .ok()
        .and_then(|mut f| f.read_exact(&mut magic).ok())
        .is_some()
        && &magic == header::MAGIC
}

/// One open GGUF file: its validated header over a read-only memory map.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    file: std::fs::File,
    map: Mmap,
    header: Header,
}

/// A borrowed GGUF tensor.
#[derive(Debug, Clone, Copy)]
pub struct GgufView<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
}

impl GgufFile {
    /// Opens `path`, maps it and validates its header.
    ///
    /// # Safety contract
    /// The map is only sound while no process truncates or rewrites the file. lorakit never
    /// writes to a file it reads (outputs go to a temporary file renamed into place, and an
    /// output that resolves to an input is refused by `io::writer::check_writes`); the header
    /// is validated against the length of the map itself, so every tensor range lies inside
    /// it. Another program modifying an input while lorakit runs is outside the contract.
    pub fn open(path: impl AsRef<Path>) -> InputResult<Self> {
        let path = path.as_ref();
        let file = crate::io::open_regular(path)?;
        // SAFETY: see the contract above.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| InputError::io(path, e))?;
        crate::io::mapped::note(&map, path);
        let header = header::parse(&map).map_err(|e| InputError::new(path, e))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            file,
            map,
            header,
        })
    }

    crate::io::file::header_accessors!(Header, TensorInfo);

    /// The raw bytes of a metadata entry (key, type and value) as stored.
    pub fn raw_kv(&self, kv: &KeyValue) -> &[u8] {
        &self.map[kv.raw.clone()]
    }

    /// Borrows `t`'s bytes (`t` must be one of this file's tensor infos).
    pub fn view<'a>(&'a self, t: &'a TensorInfo) -> GgufView<'a> {
        crate::io::memory::note_tensor(&self.path, &t.name);
        GgufView {
            info: t,
            data: &self.map[self.header.data_range(t)],
        }
    }

    /// The open file, and the absolute offset and length of `t`'s bytes in it, for copies the
    /// kernel makes file to file ([`crate::io::gguf::writer::GgufWriter::copy_tensor`]) without
    /// touching the map.
    pub fn source(&self, t: &TensorInfo) -> (&std::fs::File, u64, u64) {
        let r = self.header.data_range(t);
        (&self.file, r.start as u64, r.len() as u64)
    }

    /// Maps the pages of `t`'s bytes in one call (`MADV_POPULATE_READ`, Linux ≥ 5.14, reading
    /// what is not cached with the kernel's large requests) ahead of a pass over them, instead
    /// of one fault per few pages as the pass reaches them. A hint: errors (older kernels) are
    /// ignored, and the pages still fault in on access.
    pub fn prefetch(&self, t: &TensorInfo) {
        let r = self.header.data_range(t);
        if !r.is_empty() {
            let _ = self
                .map
                .advise_range(memmap2::Advice::PopulateRead, r.start, r.len());
        }
    }

    /// Unmaps the whole pages of `t`'s bytes from this process (`MADV_DONTNEED`) once a pass
    /// has read them, so the base's pages do not add up in the resident set; they stay in the
    /// page cache, and a later access reads them back from the file.
    pub fn release(&self, t: &TensorInfo) {
        let r = self.header.data_range(t);
        let page = 4096;
        let (s, e) = (r.start.next_multiple_of(page), r.end / page * page);
        if e > s {
            // SAFETY: the map is read-only and file-backed, so dropped pages are read back
            // from the file on the next access; no borrowed view observes a change.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, s, e - s)
            };
        }
    }

    /// Dequantizes `t` to `f32` (ggml order: rows of `dims[0]` values), or names the type
    /// lorakit cannot dequantize.
    pub fn dequantize(&self, t: &TensorInfo) -> InputResult<Vec<f32>> {
        dequantize(&self.path, self.view(t))
    }

    /// File identity (device, inode) for refusing outputs that alias inputs.
    pub fn identity(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|m| (m.dev(), m.ino()))
    }
}

/// Dequantizes a view to `f32`, or names the type lorakit cannot dequantize.
pub fn dequantize(path: &Path, v: GgufView<'_>) -> InputResult<Vec<f32>> {
    let t = v.info;
    if !t.ty.can_dequantize() {
        return Err(InputError::invalid(
            path,
            format!(
                "tensor `{}`: type {} cannot be dequantized by lorakit (it reads {})",
                t.name,
                t.ty,
                types::names(types::DEQUANTIZABLE)
            ),
        ));
    }
    let n = usize::try_from(t.numel())
        .map_err(|_| InputError::invalid(path, format!("tensor `{}` is too large", t.name)))?;
    let mut out = vec![0f32; n];
    let ok = quant::dequantize_par(t.ty, v.data, &mut out);
    debug_assert!(ok, "sizes were validated by the header");
    Ok(out)
}

/// A GGUF model: one file, or every file of a split (`NAME-00001-of-00003.gguf` …) opened
/// together, with its tensors in file order.
#[derive(Debug)]
pub struct GgufModel {
    pub files: Vec<GgufFile>,
    /// `(file index, tensor index)` in order.
    order: Vec<(usize, usize)>,
    by_name: std::collections::HashMap<String, usize>,
}

/// `(prefix, number, count)` of a split file name `PREFIX-0000I-of-0000N.gguf`, as llama.cpp's
/// `llama_split_path` writes it (`%s-%05d-of-%05d.gguf`).
pub fn split_name(path: &Path) -> Option<(String, u32, u32)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let ok = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !ok(no) || !ok(count) {
        return None;
    }
    Some((prefix.to_owned(), no.parse().ok()?, count.parse().ok()?))
}

impl GgufModel {
    /// Opens a GGUF file; a split file (any of its parts) opens every part. Each part's
    /// `split.no` / `split.count` must agree with its name, `split.tensors.count` with the
    /// tensors found, and no tensor may be in two parts.
    pub fn open(path: impl AsRef<Path>) -> InputResult<Self> {
        let path = path.as_ref();
        let paths = match split_name(path) {
            Some((prefix, _, count)) if count >= 1 => {
                let dir = path.parent().unwrap_or(Path::new(""));
                (1..=count)
                    .map(|i| dir.join(format!("{prefix}-{i:05}-of-{count:05}.gguf")))
                    .collect()
            }
            _ => vec![path.to_path_buf()],
        };
        let split = paths.len() > 1 || split_name(path).is_some();
        // Shown as stored: a `split.count` of another type is not "missing".
        let shown = |v: Option<&Value>| {
            v.map_or("missing".to_owned(), |v| match v.as_u64() {
                Some(n) => n.to_string(),
                None => format!("{v:?}"),
            })
        };
        let mut files = Vec::with_capacity(paths.len());
        for p in &paths {
            if !p.exists() {
                return Err(InputError::invalid(
                    p,
                    format!("part of the split GGUF model {} is missing", path.display()),
                ));
            }
            files.push(GgufFile::open(p)?);
        }
        // A part of a split model under another name would read as a whole model with most
        // tensors missing (and a merge into it would drop them): its metadata gives it away.
        if !split {
            let h = files[0].header();
            let count = h.get(KEY_SPLIT_COUNT);
            if count.is_some_and(|c| c.as_u64() != Some(1)) {
                return Err(InputError::invalid(
                    path,
                    format!(
                        "metadata says this is part of a split GGUF model ({KEY_SPLIT_NO}={} {KEY_SPLIT_COUNT}={}), but the file is not named PREFIX-0000I-of-0000N.gguf as llama.cpp's gguf-split names the parts: give the parts their split names",
                        shown(h.get(KEY_SPLIT_NO)),
                        shown(count)
                    ),
                ));
            }
        }
        let mut order = Vec::new();
        let mut by_name = std::collections::HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            if split {
                let h = f.header();
                let no = h.get(KEY_SPLIT_NO).and_then(Value::as_u64);
                let count = h.get(KEY_SPLIT_COUNT).and_then(Value::as_u64);
                if no != Some(fi as u64) || count != Some(files.len() as u64) {
                    return Err(InputError::invalid(
                        &f.path,
                        format!(
                            "split metadata {KEY_SPLIT_NO}={} {KEY_SPLIT_COUNT}={} does not match part {} of {} named by the file",
                            shown(h.get(KEY_SPLIT_NO)),
                            shown(h.get(KEY_SPLIT_COUNT)),
                            fi + 1,
                            files.len()
                        ),
                    ));
                }
            }
            for (ti, t) in f.tensors().iter().enumerate() {
                if by_name.insert(t.name.clone(), order.len()).is_some() {
                    return Err(InputError::invalid(
                        &f.path,
                        format!("tensor `{}` is in two parts of the split model", t.name),
                    ));
                }
                order.push((fi, ti));
            }
        }
        if split {
            let want = files[0]
                .header()
                .get(KEY_SPLIT_TENSORS_COUNT)
                .and_then(Value::as_u64);
            if want != Some(order.len() as u64) {
                return Err(InputError::invalid(
                    &files[0].path,
                    format!(
                        "{KEY_SPLIT_TENSORS_COUNT} is {}, but the {} parts hold {} tensors",
                        shown(files[0].header().get(KEY_SPLIT_TENSORS_COUNT)),
                        files.len(),
                        order.len()
                    ),
                ));
            }
        }
        Ok(GgufModel {
            files,
            order,
            by_name,
        })
    }

    /// The first file's header (the one holding the model's metadata).
    pub fn header(&self) -> &Header {
        self.files[0].header()
    }

    pub fn architecture(&self) -> Option<&str> {
        self.header().architecture()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Every tensor in order, with its file.
    pub fn tensors(&self) -> impl Iterator<Item = (&GgufFile, &TensorInfo)> {
        self.order
            .iter()
            .map(|&(f, t)| (&self.files[f], &self.files[f].tensors()[t]))
    }

    /// A tensor by name, with its file.
    pub fn get(&self, name: &str) -> Option<(&GgufFile, &TensorInfo)> {
        let &(f, t) = self.order.get(*self.by_name.get(name)?)?;
        Some((&self.files[f], &self.files[f].tensors()[t]))
    }

    /// Dequantizes a tensor by name.
    pub fn dequantize(&self, name: &str) -> InputResult<Vec<f32>> {
        let (f, t) = self.get(name).ok_or_else(|| {
            InputError::invalid(&self.files[0].path, format!("tensor `{name}` not found"))
        })?;
        f.dequantize(t)
    }

    /// Paths of every part.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }
}

#[cfg(test)]
mod tests;
