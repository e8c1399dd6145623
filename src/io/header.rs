//! The safetensors header: parsed from untrusted bytes and validated before any use.
//!
//! Layout (safetensors `tensor.rs`): 8 bytes little-endian header length `n`, `n` bytes of UTF-8
//! JSON (an object mapping tensor names to `{dtype, shape, data_offsets}` plus an optional
//! `__metadata__` string→string map), then the data section. Offsets are relative to the data
//! section. Every number is checked before use: the header length is capped, element counts and
//! byte lengths use checked arithmetic, offsets must be contiguous (no overlap, no gap) and cover
//! the data section exactly. Duplicate JSON keys are rejected rather than silently resolved.
//! This module never reads tensor data.

use crate::dtype::{self, Dtype};
use crate::error::FormatError;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Largest header accepted, as in the safetensors crate.
pub const MAX_HEADER_SIZE: u64 = 100_000_000;

/// One tensor's entry: name, dtype, shape and its byte range inside the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range relative to the start of the data section.
    pub start: u64,
    pub end: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn byte_len(&self) -> u64 {
        self.end - self.start
    }
}

/// A validated header.
#[derive(Debug, Clone)]
pub struct Header {
    /// `__metadata__`, in file order.
    pub metadata: Vec<(String, String)>,
    /// Tensors in data-offset order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset where the data section starts (8 + header length).
    pub data_start: u64,
    /// Length of the data section the tensors cover.
    pub data_len: u64,
    by_name: HashMap<String, usize>,
}

impl Header {
    /// A header from a tensor table read elsewhere (a `torch.save` archive,
    /// [`crate::io::torch`]), sorted by offset as a parsed one is; its tensors may share bytes
    /// (views of one storage). The caller has checked every range against the file and that
    /// names are unique.
    pub(crate) fn from_tensors(
        metadata: Vec<(String, String)>,
        mut tensors: Vec<TensorInfo>,
        data_start: u64,
        data_len: u64,
    ) -> Header {
        tensors.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Header {
            metadata,
            tensors,
            data_start,
            data_len,
            by_name,
        }
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Total file size this header implies.
    pub fn file_len(&self) -> u64 {
        self.data_start + self.data_len
    }

    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the header length from the first 8 bytes and checks it against the file size.
pub fn header_len(prefix: &[u8], file_len: u64) -> Result<u64, FormatError> {
    let Some(first) = prefix.get(..8) else {
        return Err(FormatError::TooShort(file_len));
    };
    let n = u64::from_le_bytes(first.try_into().expect("8 bytes"));
    if n == 0 {
        return Err(FormatError::EmptyHeader);
    }
    if n > MAX_HEADER_SIZE {
        return Err(FormatError::HeaderTooLarge(n));
    }
    if n > file_len.saturating_sub(8) {
        return Err(FormatError::HeaderBeyondFile {
            header: n,
            file: file_len,
        });
    }
    Ok(n)
}

/// Parses and validates the JSON header bytes (without the 8-byte prefix) of a file of
/// `file_len` bytes.
pub fn parse(json: &[u8], file_len: u64) -> Result<Header, FormatError> {
    let text = std::str::from_utf8(json).map_err(|e| FormatError::NotUtf8(e.valid_up_to()))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let entries = de.deserialize_map(UniqueMap).map_err(|e| {
        let msg = e.to_string();
        match msg.strip_prefix(DUPLICATE_PREFIX) {
            Some(key) => FormatError::DuplicateKey(strip_position(key)),
            None if e.is_data() && msg.starts_with("invalid type") => FormatError::NotObject,
            None => FormatError::NotJson(msg),
        }
    })?;
    de.end().map_err(|e| FormatError::NotJson(e.to_string()))?;

    let data_start = 8 + json.len() as u64;
    let data_avail = file_len.saturating_sub(data_start);
    let mut metadata = Vec::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            // `null` is no metadata: the reference reader (the `safetensors` crate,
            // `Metadata::metadata: Option<HashMap<String, String>>`) accepts it, and MLX's
            // `mx.save_safetensors` writes it for every file saved without metadata (mlx-lm's
            // `adapters.safetensors`).
            if value.is_null() {
                continue;
            }
            let serde_json::Value::Object(map) = value else {
                return Err(FormatError::BadMetadata("not an object".into()));
            };
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) => metadata.push((k, s)),
                    other => {
                        return Err(FormatError::BadMetadata(format!(
                            "value of `{k}` is {other}"
                        )))
                    }
                }
            }
            continue;
        }
        tensors.push(parse_entry(name, value)?);
    }

    // Offsets must tile the data section: sorted by start, each begins where the last ended.
    tensors.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    let mut expected = 0u64;
    for t in &tensors {
        if t.start != expected {
            return Err(FormatError::NonContiguous {
                tensor: t.name.clone(),
                start: t.start,
                end: t.end,
                expected,
            });
        }
        if t.end > data_avail {
            return Err(FormatError::OutOfBounds {
                tensor: t.name.clone(),
                end: t.end,
                data: data_avail,
            });
        }
        expected = t.end;
    }
    if expected != data_avail {
        return Err(FormatError::DataNotCovered {
            covered: expected,
            data: data_avail,
        });
    }
    let by_name = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    Ok(Header {
        metadata,
        tensors,
        data_start,
        data_len: expected,
        by_name,
    })
}

fn parse_entry(name: String, value: serde_json::Value) -> Result<TensorInfo, FormatError> {
    let bad = |msg: &str| FormatError::BadEntry {
        tensor: name.clone(),
        msg: msg.to_owned(),
    };
    let serde_json::Value::Object(map) = value else {
        return Err(bad("entry is not an object"));
    };
    for key in map.keys() {
        if !matches!(key.as_str(), "dtype" | "shape" | "data_offsets") {
            return Err(bad(&format!("unexpected field `{key}`")));
        }
    }
    let dtype_str = map
        .get("dtype")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("missing string `dtype`"))?;
    let dtype = dtype::parse(dtype_str).ok_or_else(|| FormatError::UnknownDtype {
        tensor: name.clone(),
        dtype: dtype_str.to_owned(),
    })?;
    // `shape` and `data_offsets`: arrays of non-negative integers.
    let u64s = |field: &str| -> Result<Vec<u64>, FormatError> {
        map.get(field)
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad(&format!("missing array `{field}`")))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| bad(&format!("{field} entry {d} is not a non-negative integer")))
            })
            .collect()
    };
    let shape_raw = u64s("shape")?;
    let offsets = u64s("data_offsets")?;
    let [start, end] = offsets[..] else {
        return Err(bad("data_offsets must have exactly two entries"));
    };
    if end < start {
        return Err(FormatError::ReversedOffsets {
            tensor: name,
            start,
            end,
        });
    }
    let overflow = || FormatError::ShapeOverflow {
        tensor: name.clone(),
        shape: shape_raw.clone(),
    };
    let shape: Vec<usize> = shape_raw
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| overflow()))
        .collect::<Result<_, _>>()?;
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    let bits = (numel as u128) * dtype.bitsize() as u128;
    let actual = end - start;
    if !bits.is_multiple_of(8) || bits / 8 != actual as u128 {
        return Err(FormatError::LengthMismatch {
            tensor: name,
            shape,
            dtype: dtype::name(dtype),
            expected: bits.div_ceil(8),
            actual,
        });
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        start,
        end,
    })
}

const DUPLICATE_PREFIX: &str = "duplicate key: ";

fn strip_position(s: &str) -> String {
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

/// Deserializes a JSON object into ordered entries, failing on a repeated key (serde_json's own
/// maps keep the last value silently).
struct UniqueMap;

impl<'de> Visitor<'de> for UniqueMap {
    type Value = Vec<(String, serde_json::Value)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("{DUPLICATE_PREFIX}{key}")));
            }
            // Nested objects (a tensor's `dtype`/`shape`/`data_offsets`, `__metadata__`) are
            // held to the same rule, as the safetensors crate's parser does; the key path
            // names where (`t.dtype`).
            let value = map.next_value::<StrictValue>().map_err(|e| {
                let msg = e.to_string();
                match msg.strip_prefix(DUPLICATE_PREFIX) {
                    Some(inner) => de::Error::custom(format!(
                        "{DUPLICATE_PREFIX}{key}.{}",
                        strip_position(inner)
                    )),
                    None => e,
                }
            })?;
            out.push((key, value.0));
        }
        Ok(out)
    }
}

/// A JSON value whose objects, at any depth, have no repeated key.
struct StrictValue(serde_json::Value);

impl<'de> de::Deserialize<'de> for StrictValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v)
            .map_or(serde_json::Value::Null, serde_json::Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = seq.next_element::<StrictValue>()? {
            v.push(x.0);
        }
        Ok(serde_json::Value::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut obj = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<StrictValue>()?;
            if obj.insert(key.clone(), value.0).is_some() {
                return Err(de::Error::custom(format!("{DUPLICATE_PREFIX}{key}")));
            }
        }
        Ok(serde_json::Value::Object(obj))
    }
}

/// Serialises a header for writing: `__metadata__` first (omitted when empty), then tensors in
/// the given order with contiguous offsets, padded with spaces to a multiple of 8 bytes as the
/// safetensors crate does. Returns the bytes including the 8-byte length prefix.
pub fn serialize(
    metadata: &[(String, String)],
    tensors: &[(String, Dtype, Vec<usize>)],
) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        obj.insert("__metadata__".into(), serde_json::Value::Object(meta));
    }
    let mut offset = 0u64;
    for (name, dt, shape) in tensors {
        let numel: usize = shape.iter().product();
        let len = dtype::byte_len(*dt, numel).expect("validated shape") as u64;
        obj.insert(
            name.clone(),
            serde_json::json!({
                "dtype": dtype::name(*dt),
                "shape": shape,
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(obj)).expect("serialisable");
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str, data: usize) -> (Vec<u8>, u64) {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.resize(v.len() + data, 0);
        let len = v.len() as u64;
        (v, len)
    }

    fn parse_file(json: &str, data: usize) -> Result<Header, FormatError> {
        let (bytes, len) = file(json, data);
        let n = header_len(&bytes, len)?;
        parse(&bytes[8..8 + n as usize], len)
    }

    /// `"__metadata__": null` (what MLX's `mx.save_safetensors` writes, and the `safetensors`
    /// crate reads as no metadata) is no metadata, not a malformed header.
    #[test]
    fn null_metadata_is_none() {
        let h = parse_file(
            r#"{"__metadata__":null,"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            8,
        )
        .unwrap();
        assert!(h.metadata.is_empty());
        assert_eq!(h.tensors.len(), 1);
    }

    #[test]
    fn valid_header_round_trips_through_serialize() {
        let meta = vec![("format".to_string(), "pt".to_string())];
        let tensors = vec![
            ("b".to_string(), Dtype::F32, vec![2, 3]),
            ("a".to_string(), Dtype::BF16, vec![4]),
        ];
        let mut bytes = serialize(&meta, &tensors);
        assert_eq!((bytes.len() - 8) % 8, 0);
        bytes.resize(bytes.len() + 24 + 8, 0);
        let n = header_len(&bytes, bytes.len() as u64).unwrap();
        let h = parse(&bytes[8..8 + n as usize], bytes.len() as u64).unwrap();
        assert_eq!(h.metadata, meta);
        assert_eq!(h.tensors[0].name, "b");
        assert_eq!((h.tensors[1].start, h.tensors[1].end), (24, 32));
        assert_eq!(h.get("a").unwrap().shape, vec![4]);
    }

    #[test]
    fn each_malformation_is_named() {
        let ok = r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert!(parse_file(ok, 8).is_ok());
        type Case = (&'static str, usize, fn(&FormatError) -> bool);
        let cases: &[Case] = &[
            (
                r#"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
                |e| matches!(e, FormatError::LengthMismatch { .. }),
            ),
            (
                r#"{"t":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#,
                8,
                |e| matches!(e, FormatError::UnknownDtype { .. }),
            ),
            (
                r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                8,
                |e| matches!(e, FormatError::DuplicateKey(k) if k == "t"),
            ),
            (
                r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"u":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
                |e| matches!(e, FormatError::NonContiguous { .. }),
            ),
            (
                r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                4,
                |e| matches!(e, FormatError::OutOfBounds { .. }),
            ),
            (
                r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                16,
                |e| matches!(e, FormatError::DataNotCovered { .. }),
            ),
            (
                r#"{"t":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
                8,
                |e| matches!(e, FormatError::ShapeOverflow { .. }),
            ),
            (
                r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                8,
                |e| matches!(e, FormatError::ReversedOffsets { .. }),
            ),
            (
                r#"{"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
                8,
                |e| matches!(e, FormatError::BadEntry { .. }),
            ),
            (r#"[1,2]"#, 0, |e| matches!(e, FormatError::NotObject)),
            (r#"{"t": nope}"#, 0, |e| {
                matches!(e, FormatError::NotJson(_))
            }),
            (r#"{"__metadata__":{"a":1}}"#, 0, |e| {
                matches!(e, FormatError::BadMetadata(_))
            }),
        ];
        for (json, data, check) in cases {
            let err = parse_file(json, *data).expect_err(json);
            assert!(check(&err), "{json}: got {err:?}");
        }
    }

    #[test]
    fn header_length_checks() {
        assert!(matches!(
            header_len(&[1, 2], 2),
            Err(FormatError::TooShort(2))
        ));
        assert!(matches!(
            header_len(&0u64.to_le_bytes(), 8),
            Err(FormatError::EmptyHeader)
        ));
        assert!(matches!(
            header_len(&(200_000_000u64).to_le_bytes(), 8),
            Err(FormatError::HeaderTooLarge(_))
        ));
        assert!(matches!(
            header_len(&(64u64).to_le_bytes(), 20),
            Err(FormatError::HeaderBeyondFile { .. })
        ));
        assert!(matches!(
            parse(&[0xff, 0xfe], 10),
            Err(FormatError::NotUtf8(0))
        ));
        let deep = "[".repeat(10_000);
        assert!(matches!(
            parse(deep.as_bytes(), 20_000),
            Err(FormatError::NotObject | FormatError::NotJson(_))
        ));
    }
}
