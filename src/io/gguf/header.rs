//! The GGUF header: magic, version, metadata key/values, tensor infos and the data section's
//! place, parsed from untrusted bytes with every number checked before it is used.
//!
//! The layout follows llama.cpp `gguf-py/gguf/gguf_reader.py` and `gguf_writer.py`, and the
//! checks follow the C loader `ggml/src/gguf.cpp` (`gguf_init_from_reader`): version 2 or 3
//! (little-endian; a byte-swapped version is named as such), at most 4 dimensions, a known
//! type whose block divides the row length (`ne[0]`), `general.alignment` a `UINT32` power of
//! two, and each tensor's offset equal to the end of the previous one rounded up to the
//! alignment (so tensors can neither overlap nor hide bytes). Beyond the C loader, every count
//! is checked against the bytes left before anything is allocated, array nesting is bounded,
//! and the total number of metadata values is capped ([`MAX_VALUES`]).
//!
//! Nothing here touches a file: [`parse`] reads a byte slice (the memory map), so the fuzz
//! target drives exactly the code a real file goes through.

use super::types::GgmlType;
use std::ops::Range;

/// `"GGUF"`, the first four bytes.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// `GGUF_DEFAULT_ALIGNMENT` (`constants.py`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// `GGML_MAX_DIMS` (`ggml.h`).
pub const MAX_DIMS: u32 = 4;
/// Deepest array nesting accepted (the C loader accepts none; gguf-py any).
pub const MAX_NESTING: usize = 4;
/// Most metadata values (scalars plus array elements) held in memory: a 262k-token vocabulary
/// with scores, types and merges is about 1M; a hostile header claiming more stops here
/// instead of allocating tens of bytes per byte of file.
pub const MAX_VALUES: u64 = 1 << 24;

/// What is wrong with a GGUF file. One variant per malformed-file case.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    #[error("truncated GGUF file: {what} at byte {at} runs past the end of the {len}-byte file")]
    Truncated { what: String, at: u64, len: u64 },
    #[error("not a GGUF file (first bytes {0:02x?}, expected \"GGUF\")")]
    BadMagic(Vec<u8>),
    #[error("GGUF version {0:#x} is byte-swapped: a big-endian file, which lorakit does not read")]
    BigEndian(u32),
    #[error("GGUF version {0} is not supported (lorakit reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("header claims {count} {what} but only {left} bytes follow")]
    CountTooLarge {
        what: &'static str,
        count: u64,
        left: u64,
    },
    #[error("metadata key {0} is empty")]
    EmptyKey(u64),
    #[error("{what} is not valid UTF-8")]
    NotUtf8 { what: String },
    #[error("metadata key `{0}` appears twice")]
    DuplicateKey(String),
    #[error("metadata key `{key}`: unknown value type {ty}")]
    UnknownValueType { key: String, ty: u32 },
    #[error("metadata key `{key}`: arrays nested deeper than {MAX_NESTING} levels")]
    NestingTooDeep { key: String },
    #[error("metadata holds more than {MAX_VALUES} values")]
    TooManyValues,
    #[error("metadata key `general.alignment` must be a UINT32, found {0}")]
    AlignmentType(String),
    #[error("metadata key `general.alignment` is {0}, not a power of two")]
    AlignmentValue(u64),
    #[error("tensor {0} has an empty name")]
    EmptyTensorName(u64),
    #[error("tensor `{0}` appears twice")]
    DuplicateTensor(String),
    #[error("tensor `{tensor}`: {n} dimensions, at most {MAX_DIMS} are allowed")]
    TooManyDims { tensor: String, n: u32 },
    #[error("tensor `{tensor}`: element count of dims {dims:?} overflows")]
    ShapeOverflow { tensor: String, dims: Vec<u64> },
    #[error("tensor `{tensor}`: unknown ggml type id {id}")]
    UnknownType { tensor: String, id: u32 },
    #[error("tensor `{tensor}`: row length {ne0} of type {ty} is not a multiple of its block size {block}")]
    RowNotBlocks {
        tensor: String,
        ty: GgmlType,
        ne0: u64,
        block: usize,
    },
    #[error("tensor `{tensor}`: data offset {offset} is not the expected {expected} (tensors are stored in order, each aligned to {alignment} bytes)")]
    BadOffset {
        tensor: String,
        offset: u64,
        expected: u64,
        alignment: u64,
    },
    #[error("tensor `{tensor}`: data [{start}, {end}) runs past the end of the {len}-byte file")]
    OutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        len: u64,
    },
}

/// A metadata value type (`GGUFValueType` in `constants.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// The gguf-py spelling (`UINT32`, `STRING`, …).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            F32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            U64 => "UINT64",
            I64 => "INT64",
            F64 => "FLOAT64",
        }
    }

    /// Fewest bytes a value of this type takes (a string: its length; an array: type + count).
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    /// Decoded lossily for display; the bytes themselves are kept in [`KeyValue::raw`].
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// An integer value of any width, if it is one and fits.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as JSON (arrays of any depth; non-finite floats as strings).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        let float = |v: f64| {
            serde_json::Number::from_f64(v)
                .map(J::Number)
                .unwrap_or_else(|| J::String(v.to_string()))
        };
        match self {
            Value::U8(v) => (*v).into(),
            Value::I8(v) => (*v).into(),
            Value::U16(v) => (*v).into(),
            Value::I16(v) => (*v).into(),
            Value::U32(v) => (*v).into(),
            Value::I32(v) => (*v).into(),
            Value::U64(v) => (*v).into(),
            Value::I64(v) => (*v).into(),
            Value::F32(v) => float((*v).into()),
            Value::F64(v) => float(*v),
            Value::Bool(v) => (*v).into(),
            Value::String(s) => J::String(s.clone()),
            Value::Array(_, items) => J::Array(items.iter().map(Value::to_json).collect()),
        }
    }
}

/// One metadata entry.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyValue {
    pub key: String,
    pub value: Value,
    /// The entry's bytes in the file (key, type and value), copied verbatim by writers.
    pub raw: Range<usize>,
}

/// One tensor info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` (`ne[0]`) is the row length, the fastest-varying dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of the tensor's data (from its type's block layout).
    pub bytes: u64,
}

impl TensorInfo {
    /// The shape in PyTorch/safetensors order (outermost first): `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed, validated header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub version: u32,
    pub alignment: u64,
    pub metadata: Vec<KeyValue>,
    pub tensors: Vec<TensorInfo>,
    /// Where the data section starts in the file (a multiple of the alignment).
    pub data_start: u64,
    pub file_len: u64,
}

impl Header {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| &kv.value)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    /// The absolute byte range of `t`'s data (checked at parse time to lie inside the file).
    pub fn data_range(&self, t: &TensorInfo) -> Range<usize> {
        let start = (self.data_start + t.offset) as usize;
        start..start + t.bytes as usize
    }
}

/// Rounds `n` up to a multiple of `align` (a power of two), or `None` on overflow.
pub fn pad(n: u64, align: u64) -> Option<u64> {
    n.checked_add(align - 1).map(|v| v & !(align - 1))
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Metadata values read so far (against [`MAX_VALUES`]).
    values: u64,
}

type R<T> = Result<T, GgufError>;

impl<'a> Cursor<'a> {
    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> R<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.buf.len());
        match end {
            Some(e) => {
                let s = &self.buf[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                what: what(),
                at: self.pos as u64,
                len: self.buf.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> R<[u8; N]> {
        let s = self.take(N as u64, what)?;
        Ok(s.try_into().expect("took N bytes"))
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> R<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> R<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string's bytes (u64 length, then the bytes).
    fn bytes(&mut self, what: &dyn Fn() -> String) -> R<&'a [u8]> {
        let n = self.u64(|| format!("the length of {}", what()))?;
        self.take(n, what)
    }

    fn utf8(&mut self, what: &dyn Fn() -> String) -> R<String> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| GgufError::NotUtf8 { what: what() })
    }

    /// A string that must be non-empty and not among `seen` (metadata keys, tensor names),
    /// added to `seen`; else `empty`, or `duplicate` of it.
    fn unique_name(
        &mut self,
        what: &dyn Fn() -> String,
        seen: &mut std::collections::HashSet<String>,
        empty: GgufError,
        duplicate: fn(String) -> GgufError,
    ) -> R<String> {
        let name = self.utf8(what)?;
        if name.is_empty() {
            return Err(empty);
        }
        if !seen.insert(name.clone()) {
            return Err(duplicate(name));
        }
        Ok(name)
    }

    fn count_value(&mut self) -> R<()> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(GgufError::TooManyValues);
        }
        Ok(())
    }

    fn value(&mut self, key: &str, ty: ValueType, depth: usize) -> R<Value> {
        self.count_value()?;
        let what = || format!("the value of metadata key `{key}`");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(what)?[0] as i8),
            ValueType::Bool => Value::Bool(self.array::<1>(what)?[0] != 0),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::String => {
                Value::String(String::from_utf8_lossy(self.bytes(&what)?).into_owned())
            }
            ValueType::Array => {
                if depth >= MAX_NESTING {
                    return Err(GgufError::NestingTooDeep { key: key.into() });
                }
                let id = self.u32(|| format!("the element type of metadata key `{key}`"))?;
                let ety = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
                    key: key.into(),
                    ty: id,
                })?;
                let n = self.u64(|| format!("the length of metadata key `{key}`"))?;
                if n.checked_mul(ety.min_size())
                    .is_none_or(|b| b > self.left())
                {
                    return Err(GgufError::CountTooLarge {
                        what: "array elements",
                        count: n,
                        left: self.left(),
                    });
                }
                if self.values.saturating_add(n) > MAX_VALUES {
                    return Err(GgufError::TooManyValues);
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(key, ety, depth + 1)?);
                }
                Value::Array(ety, items)
            }
        })
    }
}

/// Parses and validates the header of a GGUF file whose bytes are `buf` (the whole file:
/// tensor offsets are checked against its length).
pub fn parse(buf: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor {
        buf,
        pos: 0,
        values: 0,
    };
    let magic = buf.get(..4).unwrap_or(buf);
    if magic != MAGIC {
        return Err(GgufError::BadMagic(magic.to_vec()));
    }
    c.pos = 4;
    let version = c.u32(|| "the version".into())?;
    if version & 0xFFFF == 0 && version != 0 {
        return Err(GgufError::BigEndian(version));
    }
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let n_tensors = c.u64(|| "the tensor count".into())?;
    let n_kv = c.u64(|| "the metadata count".into())?;
    // Fewest bytes per entry: key length + 1-byte key + type + 1-byte value; name length +
    // 1-byte name + dims count + type + offset.
    for (what, count, min) in [
        ("metadata entries", n_kv, 14u64),
        ("tensors", n_tensors, 25u64),
    ] {
        if count.checked_mul(min).is_none_or(|b| b > c.left()) {
            return Err(GgufError::CountTooLarge {
                what,
                count,
                left: c.left(),
            });
        }
    }
    let mut metadata: Vec<KeyValue> = Vec::with_capacity(n_kv as usize);
    let mut keys = std::collections::HashSet::new();
    for i in 0..n_kv {
        let start = c.pos;
        let key = c.unique_name(
            &|| format!("metadata key {i}"),
            &mut keys,
            GgufError::EmptyKey(i),
            GgufError::DuplicateKey,
        )?;
        let id = c.u32(|| format!("the type of metadata key `{key}`"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.clone(),
            ty: id,
        })?;
        let value = c.value(&key, ty, 0)?;
        metadata.push(KeyValue {
            key,
            value,
            raw: start..c.pos,
        });
    }
    let alignment = match metadata.iter().find(|kv| kv.key == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(KeyValue {
            value: Value::U32(a),
            ..
        }) => {
            let a = u64::from(*a);
            if !a.is_power_of_two() {
                return Err(GgufError::AlignmentValue(a));
            }
            a
        }
        Some(kv) => {
            return Err(GgufError::AlignmentType(
                kv.value.value_type().name().into(),
            ))
        }
    };
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut names = std::collections::HashSet::new();
    for i in 0..n_tensors {
        let name = c.unique_name(
            &|| format!("the name of tensor {i}"),
            &mut names,
            GgufError::EmptyTensorName(i),
            GgufError::DuplicateTensor,
        )?;
        let n = c.u32(|| format!("the dimension count of tensor `{name}`"))?;
        if n > MAX_DIMS {
            return Err(GgufError::TooManyDims { tensor: name, n });
        }
        let mut dims = Vec::with_capacity(n as usize);
        for _ in 0..n {
            dims.push(c.u64(|| format!("the dimensions of tensor `{name}`"))?);
        }
        let id = c.u32(|| format!("the type of tensor `{name}`"))?;
        let offset = c.u64(|| format!("the data offset of tensor `{name}`"))?;
        // The C loader reads dims as int64 and refuses negatives; the product must fit too.
        let numel = dims
            .iter()
            .try_fold(1u64, |acc, &d| {
                (d <= i64::MAX as u64).then_some(())?;
                acc.checked_mul(d).filter(|&p| p <= i64::MAX as u64)
            })
            .ok_or_else(|| GgufError::ShapeOverflow {
                tensor: name.clone(),
                dims: dims.clone(),
            })?;
        let ty = GgmlType::from_id(id).ok_or_else(|| GgufError::UnknownType {
            tensor: name.clone(),
            id,
        })?;
        let ne0 = dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(ty.block_size() as u64) {
            return Err(GgufError::RowNotBlocks {
                tensor: name,
                ty,
                ne0,
                block: ty.block_size(),
            });
        }
        let bytes = ty.byte_len(numel).ok_or_else(|| GgufError::ShapeOverflow {
            tensor: name.clone(),
            dims: dims.clone(),
        })?;
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            bytes,
        });
    }
    let len = buf.len() as u64;
    let data_start = if tensors.is_empty() {
        c.pos as u64
    } else {
        pad(c.pos as u64, alignment)
            .filter(|&d| d <= len)
            .ok_or(GgufError::Truncated {
                what: "the data section".into(),
                at: c.pos as u64,
                len,
            })?
    };
    let mut expected = 0u64;
    for t in &tensors {
        if t.offset != expected {
            return Err(GgufError::BadOffset {
                tensor: t.name.clone(),
                offset: t.offset,
                expected,
                alignment,
            });
        }
        let start = data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.bytes));
        match (start, end) {
            (Some(s), Some(e)) if e <= len => {
                let _ = s;
            }
            _ => {
                return Err(GgufError::OutOfBounds {
                    tensor: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    len,
                })
            }
        }
        expected = t
            .offset
            .checked_add(t.bytes)
            .and_then(|e| pad(e, alignment))
            .ok_or_else(|| GgufError::OutOfBounds {
                tensor: t.name.clone(),
                start: t.offset,
                end: u64::MAX,
                len,
            })?;
    }
    Ok(Header {
        version,
        alignment,
        metadata,
        tensors,
        data_start,
        file_len: len,
    })
}
