//! One `.safetensors` file (or a `torch.save` archive, whose pickle [`crate::io::torch`] turns
//! into the same header): its validated header, read with two small reads, and its data
//! memory-mapped on first use.
//!
//! Opening a file costs what its header costs; the mapping is created only when a tensor's bytes
//! are asked for. Tensors are borrowed views over the map, nothing is copied until a kernel needs
//! it. Pages already used can be released with [`SafetensorsFile::release`] so that streaming
//! over a model larger than memory keeps resident memory bounded.
//!
//! Must not use a number from the header before it is checked, nor copy tensor data a caller did
//! not ask for.

use crate::dtype::{self, Dtype};
use crate::error::{FormatError, InputError, InputErrorKind, InputResult, Opt, OptionError};
use crate::io::header::{self, Header, TensorInfo};
use memmap2::{Mmap, UncheckedAdvice};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The accessors every opened input file answers alike: `path()` (as given when opened),
/// `header()` (validated) and `tensors()` (the header's entries in file order). For an impl
/// block of a struct with fields `path: PathBuf` and `header: $header`, whose `tensors` field is
/// a `Vec<$info>`: [`SafetensorsFile`] here, `GgufFile` in [`crate::io::gguf`].
macro_rules! header_accessors {
    ($header:ty, $info:ty) => {
        pub fn path(&self) -> &std::path::Path {
            &self.path
        }

        pub fn header(&self) -> &$header {
            &self.header
        }

        pub fn tensors(&self) -> &[$info] {
            &self.header.tensors
        }
    };
}
pub(crate) use header_accessors;

/// A borrowed tensor: header facts plus its bytes inside the memory map.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl TensorView<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Decodes to `f32` (F32, F16, BF16, F64 only; the caller checks the dtype).
    pub fn to_f32(&self) -> Vec<f32> {
        dtype::decode(self.dtype, self.data)
    }

    /// Decodes to `f64`, exactly ([`dtype::decode_f64_into`]; same dtypes as [`Self::to_f32`]).
    pub fn to_f64(&self) -> Vec<f64> {
        let mut out = vec![0f64; self.data.len() * 8 / self.dtype.bitsize()];
        dtype::decode_f64_into(self.dtype, self.data, &mut out);
        out
    }
}

/// An open safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    header: Header,
    map: OnceLock<Mmap>,
}

impl SafetensorsFile {
    /// Opens `path` and validates its header; tensor data is not read.
    pub fn open(path: impl AsRef<Path>) -> InputResult<Self> {
        let path = path.as_ref();
        let err = |e: FormatError| InputError::new(path, e);
        let mut file = open_regular(path)?;
        let meta = file.metadata().map_err(|e| InputError::io(path, e))?;
        let file_len = meta.len();
        let mut prefix = [0u8; 8];
        let got = read_up_to(&mut file, &mut prefix).map_err(|e| InputError::io(path, e))?;
        if prefix[..got].starts_with(b"PK\x03\x04") {
            // A `torch.save` archive (`adapter_model.bin`, `.pt`): the same header, built from
            // its pickle (`io::torch`).
            let header = crate::io::torch::header(&file, file_len)
                .map_err(|e| InputError::invalid(path, format!("PyTorch checkpoint: {e}")))?;
            return Ok(SafetensorsFile {
                path: path.to_path_buf(),
                file,
                header,
                map: OnceLock::new(),
            });
        }
        let torch_named = path
            .extension()
            .is_some_and(|e| matches!(e.to_str(), Some("bin" | "pt" | "pth")));
        if torch_named
            && header::header_len(&prefix[..got], file_len).is_err()
            && foreign_format(&prefix[..got]).is_none()
        {
            return Err(InputError::invalid(
                path,
                "is neither a torch.save zip archive (PyTorch ≥ 1.6, what PEFT writes) nor safetensors",
            ));
        }
        let n = header::header_len(&prefix[..got], file_len).map_err(|e| {
            match foreign_format(&prefix[..got]) {
                Some(what) => InputError::new(path, what),
                None => err(e),
            }
        })?;
        let mut json = vec![0u8; n as usize];
        file.seek(SeekFrom::Start(8))
            .map_err(|e| InputError::io(path, e))?;
        file.read_exact(&mut json)
            .map_err(|e| InputError::io(path, e))?;
        let header = header::parse(&json, file_len).map_err(err)?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            header,
            map: OnceLock::new(),
        })
    }

    header_accessors!(Header, TensorInfo);

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.get(name)
    }

    /// The memory map, created on first use.
    ///
    /// # Safety contract
    /// Mapping a file is only sound while no other process truncates or rewrites it. lorakit
    /// never writes to a file it has open for reading (outputs go to a temporary file that is
    /// renamed into place, and an output path that resolves to an input is refused), and the
    /// file's size is checked against its header when the map is made. Another program modifying
    /// an input while lorakit runs is outside the contract (documented in the README).
    fn map(&self) -> InputResult<&Mmap> {
        if let Some(m) = self.map.get() {
            return Ok(m);
        }
        let actual = self
            .file
            .metadata()
            .map_err(|e| InputError::io(&self.path, e))?
            .len();
        let expected = self.header.file_len();
        if actual != expected {
            return Err(InputError::new(
                &self.path,
                FormatError::SizeChanged { expected, actual },
            ));
        }
        // SAFETY: see the contract above; the size was just checked against the header.
        let map = unsafe { Mmap::map(&self.file) }.map_err(|e| InputError::io(&self.path, e))?;
        crate::io::mapped::note(&map, &self.path);
        Ok(self.map.get_or_init(|| map))
    }

    /// Borrows a tensor's bytes from the map.
    pub fn view(&self, name: &str) -> InputResult<TensorView<'_>> {
        let info = self
            .header
            .get(name)
            .ok_or_else(|| InputError::invalid(&self.path, format!("tensor `{name}` not found")))?;
        self.view_info(info)
    }

    /// Borrows the bytes of a tensor of this file's header.
    pub fn view_info<'a>(&'a self, info: &'a TensorInfo) -> InputResult<TensorView<'a>> {
        crate::io::memory::note_tensor(&self.path, &info.name);
        let map = self.map()?;
        let start = (self.header.data_start + info.start) as usize;
        let end = (self.header.data_start + info.end) as usize;
        let data = map.get(start..end).ok_or_else(|| {
            InputError::new(
                &self.path,
                FormatError::SizeChanged {
                    expected: self.header.file_len(),
                    actual: map.len() as u64,
                },
            )
        })?;
        Ok(TensorView {
            name: &info.name,
            dtype: info.dtype,
            shape: &info.shape,
            data,
        })
    }

    /// Decodes a float tensor to `f32`, or explains why it cannot be.
    pub fn read_f32(&self, name: &str) -> InputResult<Vec<f32>> {
        let v = self.view(name)?;
        if !dtype::is_float_compute(v.dtype) {
            return Err(InputError::invalid(
                &self.path,
                format!(
                    "tensor `{name}`: dtype {} is not a float type lorakit computes with",
                    dtype::name(v.dtype)
                ),
            ));
        }
        Ok(v.to_f32())
    }

    /// Maps the pages of the bytes `offset..offset + len` of `info`'s data in one call
    /// (`MADV_POPULATE_READ`, Linux ≥ 5.14) ahead of a pass over them, instead of one page
    /// fault per 4 KiB; threads each working on a part of a tensor map their own parts
    /// concurrently. A hint: errors (older kernels) are ignored, and the pages still fault in
    /// on access.
    pub fn prefetch_part(&self, info: &TensorInfo, offset: usize, len: usize) {
        if let Ok(map) = self.map() {
            let start = (self.header.data_start + info.start) as usize + offset;
            if len > 0 && offset + len <= info.byte_len() as usize && start + len <= map.len() {
                let _ = map.advise_range(memmap2::Advice::PopulateRead, start, len);
            }
        }
    }

    /// Tells the kernel the pages of `info` are no longer needed, so a streaming pass over a
    /// file larger than memory does not keep it resident. Harmless if the map does not exist.
    pub fn release(&self, info: &TensorInfo) {
        self.release_range(info, 0, info.byte_len());
    }

    /// [`Self::release`] of bytes `offset..offset + len` of `info` only (clamped to it): the
    /// part of a tensor a streamed pass has consumed.
    pub fn release_range(&self, info: &TensorInfo, offset: u64, len: u64) {
        if let Some(map) = self.map.get() {
            let offset = offset.min(info.byte_len());
            let len = len.min(info.byte_len() - offset) as usize;
            let start = (self.header.data_start + info.start + offset) as usize;
            // Only whole pages inside the range are dropped.
            let page = 4096;
            let s = start.next_multiple_of(page);
            let e = (start + len) / page * page;
            if e > s {
                // SAFETY: the map is read-only and file-backed, so dropped pages are read back
                // from the file on the next access; no borrowed view observes a change.
                let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, s, e - s) };
            }
        }
    }

    /// Reads a byte range of a tensor with ordinary reads (no map), for plain copies.
    pub fn read_range(&self, info: &TensorInfo, offset: u64, buf: &mut [u8]) -> InputResult<()> {
        use std::os::unix::fs::FileExt;
        let at = self.header.data_start + info.start + offset;
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| InputError::io(&self.path, e))
    }

    /// The open file and the absolute offset of `info`'s bytes in it, for copies the kernel
    /// makes file to file ([`crate::io::writer::FileWriter::copy_tensor`]).
    pub fn source(&self, info: &TensorInfo) -> (&File, u64) {
        (&self.file, self.header.data_start + info.start)
    }

    /// File identity (device, inode) for refusing outputs that alias inputs.
    pub fn identity(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|m| (m.dev(), m.ino()))
    }
}

/// Names the format of a file that is not safetensors, from its first bytes, with what to do.
fn foreign_format(head: &[u8]) -> Option<InputErrorKind> {
    let what = if head.starts_with(b"GGUF") {
        return Some(
            OptionError::new(|o| {
                format!(
                    "is a GGUF file (llama.cpp), not safetensors; lorakit reads GGUF models with inspect, diff, merge {0} and convert {0}, and llama.cpp GGUF LoRA adapters as a merge's {1} only",
                    o.opt(Opt::Base),
                    o.opt(Opt::Adapter)
                )
            })
            .into(),
        );
    } else if head.first() == Some(&0x80) && head.get(1).is_some_and(|v| (2..=5).contains(v)) {
        "is a bare Python pickle (PyTorch's legacy pre-1.6 .bin/.pt/.ckpt format), not safetensors or a torch.save zip archive; load and re-save it with a current torch, or convert it to safetensors"
    } else if head.starts_with(b"\x93NUMPY") {
        "is a NumPy .npy file, not safetensors"
    } else if head.starts_with(b"\x89HDF") {
        "is an HDF5 file (Keras .h5), not safetensors"
    } else if head.first() == Some(&b'{') {
        "is a JSON text, not a safetensors file"
    } else {
        return None;
    };
    Some(InputErrorKind::Invalid(what.to_owned()))
}

/// Opens an input for reading, refusing at once anything that is not a regular file (a FIFO,
/// a device, a socket, a folder). The open itself does not block: `O_NONBLOCK` (which has no
/// effect on regular files) keeps a FIFO with no writer from hanging the open, and the type is
/// taken from the opened descriptor, not from an earlier `stat` that could be raced.
pub fn open_regular(path: &Path) -> InputResult<File> {
    use std::os::unix::fs::OpenOptionsExt;
    crate::io::memory::note_file(path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| InputError::io(path, e))?;
    let meta = file.metadata().map_err(|e| InputError::io(path, e))?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a folder"
        } else {
            use std::os::unix::fs::FileTypeExt;
            let t = meta.file_type();
            if t.is_fifo() {
                "a FIFO"
            } else if t.is_char_device() || t.is_block_device() {
                "a device"
            } else if t.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        };
        return Err(InputError::invalid(
            path,
            format!("is {what}, not a regular file; lorakit reads regular files only"),
        ));
    }
    Ok(file)
}

/// Largest JSON file lorakit reads (configs, indexes, part manifests): 64 MiB. A real
/// `model.safetensors.index.json` of a 1T-parameter checkpoint is a few MB.
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// Reads a small input file whole (a JSON config, an index, a manifest): a regular file only
/// ([`open_regular`]) and at most [`MAX_JSON_BYTES`].
pub fn read_json_file(path: &Path) -> InputResult<Vec<u8>> {
    use std::io::Read as _;
    let file = open_regular(path)?;
    let len = file.metadata().map_err(|e| InputError::io(path, e))?.len();
    if len > MAX_JSON_BYTES {
        return Err(InputError::invalid(
            path,
            format!("is {len} bytes, over the {MAX_JSON_BYTES}-byte limit for a JSON file"),
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    file.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| InputError::io(path, e))?;
    if buf.len() as u64 > MAX_JSON_BYTES {
        return Err(InputError::invalid(
            path,
            format!("grew past the {MAX_JSON_BYTES}-byte limit for a JSON file while read"),
        ));
    }
    Ok(buf)
}

/// Reads a copied non-weight file (a tokenizer, a config) whole; a regular file only.
pub fn read_whole_file(path: &Path) -> InputResult<Vec<u8>> {
    use std::io::Read as _;
    let mut file = open_regular(path)?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .map_err(|e| InputError::io(path, e))?;
    Ok(buf)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract: a file whose size changes between opening (header read) and mapping is an
    /// error, not a crash or a read past the end.
    #[test]
    fn size_change_before_mapping_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        let header = crate::io::header::serialize(&[], &[("t".into(), Dtype::F32, vec![4])]);
        let mut bytes = header.clone();
        bytes.extend_from_slice(&[0u8; 16]);
        std::fs::write(&p, &bytes).unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(bytes.len() as u64 - 8)
            .unwrap();
        let err = f.view("t").unwrap_err().to_string();
        assert!(err.contains("changed size"), "{err}");
    }
}
