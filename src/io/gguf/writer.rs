//! Writing GGUF files: the header (magic, version 3, metadata entries, tensor infos) and the
//! tensors in declared order, each padded to the alignment, streamed through the project's
//! atomic [`Output`](crate::io::Output) (temporary file, fsync, rename at commit).
//!
//! The layout is `gguf-py/gguf/gguf_writer.py` (`write_header_to_file`,
//! `write_kv_data_to_file`, `write_ti_data_to_file`, `write_tensors_to_file`): dims written in
//! ggml order (`ne[0]` first), each tensor's offset the previous end padded to the alignment,
//! the data section starting at the header's end padded to the alignment, padding after every
//! tensor. Metadata entries copied from an input are written as their raw bytes, so every value
//! of every type survives unchanged. Tensors copied unchanged from an input go file to file in
//! the kernel ([`GgufWriter::copy_tensor`]); a [`GgufWriter`] is a [`Sink`] of the pipelined
//! writer thread ([`crate::io::writer::pipelined`]).
//!
//! It does not choose what to write (names, types, metadata come from the caller) and never
//! writes outside its atomic output.

use super::header::{pad, MAGIC};
use super::types::GgmlType;
use crate::error::{InputError, InputResult};
use crate::io::writer::{Extent, RawFile, Sink, DIRECT_IO_ALIGN};

/// A tensor to be written: its name, ggml dims and type, declared before any data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl OutTensor {
    /// Bytes of the tensor's data (the caller has checked that rows are whole blocks).
    pub fn bytes(&self) -> u64 {
        self.ty
            .byte_len(self.dims.iter().product())
            .expect("whole blocks")
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A metadata entry: key, value type `ty` (gguf-py `GGUFValueType`), value bytes.
fn entry(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    string(&mut b, key);
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(value);
    b
}

/// A `STRING` metadata entry.
pub fn kv_string(key: &str, value: &str) -> Vec<u8> {
    let mut v = Vec::new();
    string(&mut v, value);
    entry(key, 8, &v)
}

/// A `UINT32` metadata entry.
pub fn kv_u32(key: &str, value: u32) -> Vec<u8> {
    entry(key, 4, &value.to_le_bytes())
}

/// A `UINT16` metadata entry.
pub fn kv_u16(key: &str, value: u16) -> Vec<u8> {
    entry(key, 2, &value.to_le_bytes())
}

/// An `INT32` metadata entry.
pub fn kv_i32(key: &str, value: i32) -> Vec<u8> {
    entry(key, 5, &value.to_le_bytes())
}

/// A `FLOAT32` metadata entry.
pub fn kv_f32(key: &str, value: f32) -> Vec<u8> {
    entry(key, 6, &value.to_le_bytes())
}

/// A `BOOL` metadata entry.
pub fn kv_bool(key: &str, value: bool) -> Vec<u8> {
    entry(key, 7, &[value as u8])
}

/// An `ARRAY` of `STRING` metadata entry.
pub fn kv_strings(key: &str, values: &[String]) -> Vec<u8> {
    let mut v = array_head(8, values.len());
    for x in values {
        string(&mut v, x);
    }
    entry(key, 9, &v)
}

/// An `ARRAY` of `FLOAT32` metadata entry.
pub fn kv_f32s(key: &str, values: &[f32]) -> Vec<u8> {
    kv_array(key, 6, values.iter().map(|x| x.to_le_bytes()))
}

/// An `ARRAY` of `UINT32` metadata entry.
pub fn kv_u32s(key: &str, values: &[u32]) -> Vec<u8> {
    kv_array(key, 4, values.iter().map(|x| x.to_le_bytes()))
}

/// An `ARRAY` of `INT32` metadata entry.
pub fn kv_i32s(key: &str, values: &[i32]) -> Vec<u8> {
    kv_array(key, 5, values.iter().map(|x| x.to_le_bytes()))
}

/// An `ARRAY` metadata entry of fixed-size items of `item_type`, each given as its bytes.
fn kv_array<const N: usize>(
    key: &str,
    item_type: u32,
    items: impl ExactSizeIterator<Item = [u8; N]>,
) -> Vec<u8> {
    let mut v = array_head(item_type, items.len());
    items.for_each(|x| v.extend_from_slice(&x));
    entry(key, 9, &v)
}

/// An array value's item type and length.
fn array_head(item_type: u32, len: usize) -> Vec<u8> {
    let mut v = item_type.to_le_bytes().to_vec();
    v.extend_from_slice(&(len as u64).to_le_bytes());
    v
}

/// Splits tensors (by byte size, in order) into parts of at most `max` bytes of tensor data, as
/// gguf-py's `GGUFWriter(split_max_size=…)` does: a new part starts when the current one is not
/// empty and the next tensor would take it past `max` (a tensor larger than `max` gets a part
/// of its own).
pub fn split_parts(sizes: &[u64], max: u64) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::new();
    let (mut start, mut cur) = (0usize, 0u64);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && cur.saturating_add(n) > max {
            parts.push(start..i);
            (start, cur) = (i, 0);
        }
        cur = cur.saturating_add(n);
    }
    parts.push(start..sizes.len());
    parts
}

/// `DIR/STEM-0000I-of-0000N.gguf` for `path` = `DIR/STEM.gguf` (gguf-py `SHARD_NAME_FORMAT`).
pub fn part_path(path: &std::path::Path, i: usize, n: usize) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}-{:05}-of-{n:05}.gguf", i + 1))
}

/// Key of the padding entry [`page_padding`] adds: a `STRING` of spaces, read by nothing.
pub const PADDING_KEY: &str = "lorakit.padding";

/// The metadata entry, if one is needed, that puts the data section of a file holding
/// `entries` and `tensors` where the tensors copied into it line up with their sources' pages:
/// `copied[i]` is tensor `i`'s offset in the file it is copied from (`None` for tensors
/// written from memory; empty where none is copied). A copy whose source and output offsets
/// agree modulo the page ([`DIRECT_IO_ALIGN`]) is written by direct I/O straight from the
/// source's page cache, not copied through a buffer (`io::writer::direct`, issue #17).
///
/// The tensors' offsets inside the data section are fixed (each the previous end padded to
/// `alignment`, as ggml's `gguf.cpp` requires), so only the data section's start can move: a
/// residue `r` of it modulo the page aligns every copied tensor with `source − offset ≡ r`.
/// The `r` aligning the most copied bytes is chosen (the smallest on a tie; for a types-kept
/// merge of a one-file base every tensor agrees), and the entry's string is sized so that
/// the header, padded to `alignment`, ends at the first offset `≡ r`. `None` where nothing is
/// copied, where the header already ends there, or where `alignment` is a page or more (every
/// data section then starts on a page). A function of the plan alone: the same inputs give
/// the same bytes, whatever file system or switch the output is written with, and each
/// `--part` writes what a single run writes.
pub fn page_padding(
    entries: &[Vec<u8>],
    tensors: &[OutTensor],
    alignment: u64,
    copied: &[Option<u64>],
) -> Option<Vec<u8>> {
    let page = DIRECT_IO_ALIGN as u64;
    if alignment >= page {
        return None;
    }
    let mut weight = std::collections::BTreeMap::<u64, u64>::new();
    let mut offset = 0u64;
    for (t, src) in tensors
        .iter()
        .zip(copied.iter().chain(std::iter::repeat(&None)))
    {
        if let Some(src) = src {
            // Residues `alignment` cannot reach (a source laid out otherwise) are skipped.
            let r = (src % page + page - offset % page) % page;
            if r.is_multiple_of(alignment) {
                *weight.entry(r).or_default() += t.bytes();
            }
        }
        offset = pad(offset + t.bytes(), alignment)?;
    }
    // The largest weight, the smallest residue among equals (`BTreeMap` iterates upwards and
    // `max_by_key` keeps the last maximum, so the residues go downwards).
    let (&r, _) = weight.iter().rev().max_by_key(|&(_, w)| *w)?;
    let bare = header(entries, tensors, 1).len() as u64;
    if pad(bare, alignment)? % page == r {
        return None;
    }
    // The entry: key length, key, type, string length, then the spaces.
    let fixed = bare + 8 + PADDING_KEY.len() as u64 + 4 + 8;
    let spaces = (r + page - fixed % page) % page;
    Some(kv_string(PADDING_KEY, &" ".repeat(spaces as usize)))
}

/// The header: magic, version 3, tensor and entry counts, `entries` (each a whole metadata
/// entry as bytes), tensor infos, and zero padding up to the data section.
pub fn header(entries: &[Vec<u8>], tensors: &[OutTensor], alignment: u64) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        b.extend_from_slice(e);
    }
    let mut offset = 0u64;
    for t in tensors {
        string(&mut b, &t.name);
        b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&t.ty.id().to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        offset = pad(offset + t.bytes(), alignment).expect("sizes fit");
    }
    let end = pad(b.len() as u64, alignment).expect("sizes fit") as usize;
    b.resize(end, 0);
    b
}

/// Streams one GGUF file: the header first, then each declared tensor in order (whole, in
/// pieces, or copied by the kernel from an input file), each followed by its padding.
#[derive(Debug)]
pub struct GgufWriter<'o> {
    file: RawFile<'o>,
    dest: std::path::PathBuf,
    tensors: Vec<OutTensor>,
    alignment: u64,
    next: usize,
    /// Bytes of the tensor begun last still to come.
    left: u64,
}

impl<'o> GgufWriter<'o> {
    /// Writes the header of a file holding `entries` and exactly `tensors`.
    pub fn new(
        mut file: RawFile<'o>,
        dest: &std::path::Path,
        entries: &[Vec<u8>],
        tensors: Vec<OutTensor>,
        alignment: u64,
    ) -> InputResult<Self> {
        file.write_all(&header(entries, &tensors, alignment))?;
        Ok(GgufWriter {
            file,
            dest: dest.to_path_buf(),
            tensors,
            alignment,
            next: 0,
            left: 0,
        })
    }

    /// Starts the next tensor, which must be `name`; its bytes follow with [`Self::write_chunk`].
    pub fn begin(&mut self, name: &str) -> InputResult<()> {
        if self.left != 0 {
            let prev = &self.tensors[self.next - 1].name;
            return Err(InputError::invalid(
                &self.dest,
                format!("tensor `{prev}`: {} bytes short", self.left),
            ));
        }
        let t = self.tensors.get(self.next).ok_or_else(|| {
            InputError::invalid(&self.dest, format!("tensor `{name}` was not declared"))
        })?;
        if t.name != name {
            return Err(InputError::invalid(
                &self.dest,
                format!("tensor `{name}` written where `{}` was declared", t.name),
            ));
        }
        self.left = t.bytes();
        self.next += 1;
        Ok(())
    }

    /// Checks that `n` more bytes fit the tensor begun last, and counts them.
    fn take(&mut self, n: u64) -> InputResult<()> {
        if n > self.left {
            let t = &self.tensors[self.next.checked_sub(1).expect("a tensor was begun")];
            return Err(InputError::invalid(
                &self.dest,
                format!(
                    "tensor `{}`: more bytes than its {} declared",
                    t.name,
                    t.bytes()
                ),
            ));
        }
        self.left -= n;
        Ok(())
    }

    /// After the last byte of a tensor: its padding up to the alignment.
    fn pad_if_done(&mut self) -> InputResult<()> {
        if self.left != 0 {
            return Ok(());
        }
        let n = self.tensors[self.next - 1].bytes();
        let padding = pad(n, self.alignment).expect("sizes fit") - n;
        if padding > 0 {
            self.file.write_all(&vec![0u8; padding as usize])?;
        }
        Ok(())
    }

    /// Appends bytes to the tensor begun last.
    pub fn write_chunk(&mut self, data: &[u8]) -> InputResult<()> {
        self.take(data.len() as u64)?;
        self.file.write_all(data)?;
        self.pad_if_done()
    }

    /// Writes the next tensor, which must be `name` with exactly its declared size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> InputResult<()> {
        self.begin(name)?;
        if self.left != data.len() as u64 {
            return Err(InputError::invalid(
                &self.dest,
                format!(
                    "tensor `{name}` ({} bytes) written where {} bytes were declared",
                    data.len(),
                    self.left
                ),
            ));
        }
        self.write_chunk(data)
    }

    /// Writes the next tensor, which must be `name`, as the bytes of `src`, copied by the
    /// kernel ([`RawFile::copy_from`]): for tensors copied byte for byte from an input.
    pub fn copy_tensor(&mut self, name: &str, src: Extent) -> InputResult<()> {
        self.begin(name)?;
        let len = src.len;
        if self.left != len {
            return Err(InputError::invalid(
                &self.dest,
                format!(
                    "tensor `{name}`: {len} bytes copied where {} were declared",
                    self.left
                ),
            ));
        }
        self.file.copy_from(name, src)?;
        self.left = 0;
        self.pad_if_done()
    }

    /// Checks every tensor was written, then flushes and fsyncs.
    pub fn finish(self) -> InputResult<u64> {
        let missing = match self.left {
            0 => self.tensors.get(self.next),
            _ => self.tensors.get(self.next - 1),
        };
        if let Some(t) = missing {
            return Err(InputError::invalid(
                &self.dest,
                format!("tensor `{}` was never written", t.name),
            ));
        }
        self.file.finish()
    }
}

impl Sink for GgufWriter<'_> {
    fn dest(&self) -> &std::path::Path {
        &self.dest
    }
    fn write_tensor(&mut self, name: &str, data: &[u8]) -> InputResult<()> {
        GgufWriter::write_tensor(self, name, data)
    }
    fn begin(&mut self, name: &str) -> InputResult<()> {
        GgufWriter::begin(self, name)
    }
    fn write_result_chunk(&mut self, data: &[u8]) -> InputResult<()> {
        self.write_chunk(data)
    }
    fn copy_tensor(&mut self, name: &str, src: Extent) -> InputResult<()> {
        GgufWriter::copy_tensor(self, name, src)
    }
    fn finish(self) -> InputResult<u64> {
        GgufWriter::finish(self)
    }
}
