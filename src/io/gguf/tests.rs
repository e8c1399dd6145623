//! Reader, dequantizers and quantizers against files and values written by llama.cpp's
//! `gguf` package (`fixtures/gen/gguf_fixtures.py`).

use super::*;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/gguf")
        .join(name)
}

#[test]
fn metadata_of_every_value_type_reads_as_written() {
    let f = GgufFile::open(fixture("types.gguf")).unwrap();
    let h = f.header();
    assert_eq!(h.version, 3);
    assert_eq!(h.alignment, 32);
    assert_eq!(h.architecture(), Some("llama"));
    assert_eq!(h.get("test.u8"), Some(&Value::U8(200)));
    assert_eq!(h.get("test.i8"), Some(&Value::I8(-100)));
    assert_eq!(h.get("test.u16"), Some(&Value::U16(60000)));
    assert_eq!(h.get("test.i16"), Some(&Value::I16(-30000)));
    assert_eq!(h.get("test.u32"), Some(&Value::U32(4_000_000_000)));
    assert_eq!(h.get("test.i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(h.get("test.f32"), Some(&Value::F32(0.1)));
    assert_eq!(h.get("test.bool"), Some(&Value::Bool(true)));
    assert_eq!(h.get("test.u64"), Some(&Value::U64((1 << 63) + 5)));
    assert_eq!(h.get("test.i64"), Some(&Value::I64(-(1 << 62))));
    assert_eq!(h.get("test.f64"), Some(&Value::F64(2.5e-300)));
    let s = |v: &str| Value::String(v.into());
    assert_eq!(
        h.get("test.strings"),
        Some(&Value::Array(
            ValueType::String,
            vec![s("a"), s("béta"), s("")]
        ))
    );
    // gguf-py writes Python ints as INT32 and floats as FLOAT32 inside arrays.
    assert_eq!(
        h.get("test.ints"),
        Some(&Value::Array(
            ValueType::I32,
            vec![Value::I32(1), Value::I32(-2), Value::I32(3)]
        ))
    );
    assert_eq!(
        h.get("test.floats"),
        Some(&Value::Array(
            ValueType::F32,
            vec![Value::F32(0.5), Value::F32(1.5)]
        ))
    );
    assert_eq!(
        h.get("test.nested"),
        Some(&Value::Array(
            ValueType::Array,
            vec![
                Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(2)]),
                Value::Array(ValueType::I32, vec![Value::I32(3)]),
            ]
        ))
    );
    // The raw bytes of an entry are the entry: key length, key, type, value.
    let kv = h.metadata.iter().find(|kv| kv.key == "test.u8").unwrap();
    let raw = f.raw_kv(kv);
    assert_eq!(&raw[..8], &7u64.to_le_bytes());
    assert_eq!(&raw[8..15], b"test.u8");
    assert_eq!(&raw[15..], &[0, 0, 0, 0, 200]);
}

/// Every dequantizable type, bit for bit against `gguf.quants.dequantize`.
#[test]
fn dequantization_equals_gguf_py_bit_for_bit() {
    let q = GgufFile::open(fixture("types.gguf")).unwrap();
    let e = GgufFile::open(fixture("types.f32.gguf")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for t in e.tensors() {
        let src = q.header().tensor(&t.name).unwrap();
        assert_eq!(src.shape(), t.shape(), "{}", t.name);
        let got = q.dequantize(src).unwrap();
        let want = e.dequantize(t).unwrap();
        assert_eq!(got.len(), want.len(), "{}", t.name);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{} ({}) element {i}: {g} vs {w}",
                t.name,
                src.ty
            );
        }
        // The baseline copy of the per-level kernels gives the same bits.
        let mut low = vec![0f32; want.len()];
        crate::backend::simd::with_baseline_kernels(|| {
            assert!(quant::dequantize_into(src.ty, q.view(src).data, &mut low))
        });
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&low), bits(&want), "{} at the baseline level", t.name);
        seen.insert(src.ty);
    }
    let all: std::collections::BTreeSet<_> = types::DEQUANTIZABLE.iter().copied().collect();
    assert_eq!(seen, all, "every dequantizable type has a fixture tensor");
    assert_eq!(
        q.header().tensor("t.q8_0_3d").unwrap().dims,
        vec![32, 3, 2],
        "ggml order: row length first"
    );
}

#[test]
fn a_type_without_a_dequantizer_is_named_and_refused() {
    let f = GgufFile::open(fixture("types.gguf")).unwrap();
    let t = f.header().tensor("t.iq2_xxs").unwrap();
    assert_eq!(t.ty, GgmlType::IQ2_XXS);
    let e = f.dequantize(t).unwrap_err().to_string();
    assert!(
        e.contains("tensor `t.iq2_xxs`: type IQ2_XXS cannot be dequantized")
            && e.contains("Q6_K")
            && e.contains("IQ4_XS"),
        "{e}"
    );
}

/// Quantizes fixture `name`'s `input` tensor to the type of each of its `q.*` tensors and
/// asserts the bytes equal that tensor's, block by block (the serial and the parallel path);
/// returns the types checked.
fn quantizes_like(name: &str) -> Vec<GgmlType> {
    let f = GgufFile::open(fixture(name)).unwrap();
    let input = f.dequantize(f.header().tensor("input").unwrap()).unwrap();
    let mut checked = Vec::new();
    for t in f.tensors().iter().filter(|t| t.name.starts_with("q.")) {
        let want = f.view(t).data;
        let mut got = Vec::new();
        assert!(quant::quantize_into(t.ty, &input, &mut got), "{}", t.ty);
        assert_eq!(got.len(), want.len(), "{}", t.ty);
        let (ts, bs) = (t.ty.type_size(), t.ty.block_size());
        for (i, (g, w)) in got.chunks(ts).zip(want.chunks(ts)).enumerate() {
            let block = &input[i * bs..(i + 1) * bs];
            assert_eq!(g, w, "{} block {i}: input {block:?}", t.ty);
        }
        assert_eq!(quant::quantize_par(t.ty, &input).unwrap(), want, "{}", t.ty);
        checked.push(t.ty);
    }
    checked
}

/// Every quantizer, byte for byte against `gguf.quants.quantize` on 128 blocks including
/// zeros, signed zeros, magnitude ties, f16 overflow and underflow, and grid halfway points.
#[test]
fn quantization_equals_gguf_py_byte_for_byte() {
    assert_eq!(quantizes_like("quant.gguf").len(), 7);
}

/// The K-quant quantizers, byte for byte against ggml's own `quantize_row_q*_K_ref` (compiled
/// from llama.cpp's `ggml-quants.c` by `fixtures/gen/gguf_kquant.py`) on edge-case super-blocks.
#[test]
fn k_quantization_equals_ggml_reference_byte_for_byte() {
    use GgmlType::*;
    assert_eq!(
        quantizes_like("kquant.gguf"),
        [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K]
    );
}

#[test]
fn a_split_model_opens_from_any_part_as_one() {
    for part in ["split-00001-of-00003.gguf", "split-00003-of-00003.gguf"] {
        let m = GgufModel::open(fixture(part)).unwrap();
        assert_eq!(m.files.len(), 3);
        let names: Vec<_> = m.tensors().map(|(_, t)| t.name.clone()).collect();
        assert_eq!(names, ["t0", "t1", "t2", "t3", "t4"]);
        assert_eq!(m.architecture(), Some("llama"));
        assert_eq!(m.dequantize("t4").unwrap().len(), 64);
    }
    assert_eq!(
        split_name(Path::new("a/x-y-00002-of-00010.gguf")),
        Some(("x-y".into(), 2, 10))
    );
    assert_eq!(split_name(Path::new("x-2-of-3.gguf")), None);
}

#[test]
fn a_missing_split_part_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for p in ["split-00001-of-00003.gguf", "split-00003-of-00003.gguf"] {
        std::fs::copy(fixture(p), dir.path().join(p)).unwrap();
    }
    let e = GgufModel::open(dir.path().join("split-00001-of-00003.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("split-00002-of-00003.gguf: part of the split GGUF model"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed files: one per error variant, made by corrupting tiny.gguf
// ---------------------------------------------------------------------------------------------

fn tiny() -> Vec<u8> {
    std::fs::read(fixture("tiny.gguf")).unwrap()
}

/// Offset of the tensor info of `name` (its length prefix) in `buf`.
fn info_at(buf: &[u8], name: &str) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    pat.extend_from_slice(&2u32.to_le_bytes());
    buf.windows(pat.len()).position(|w| w == pat).unwrap()
}

/// `(n_dims at, dims at, type at, offset at)` of tensor `name`.
fn fields(buf: &[u8], name: &str) -> (usize, usize, usize, usize) {
    let at = info_at(buf, name) + 8 + name.len();
    (at, at + 4, at + 4 + 16, at + 4 + 16 + 4)
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn err(buf: &[u8]) -> GgufError {
    header::parse(buf).unwrap_err()
}

#[test]
fn tiny_fixture_parses() {
    // Version 2 has version 3's layout (v3 only added big-endian files): read alike.
    let mut v2 = tiny();
    put_u32(&mut v2, 4, 2);
    assert_eq!(header::parse(&v2).unwrap().version, 2);
    let h = header::parse(&tiny()).unwrap();
    assert_eq!(h.tensors.len(), 2);
    assert_eq!(h.tensors[1].ty, GgmlType::Q8_0);
    assert_eq!(h.tensors[1].bytes, 2 * 2 * 34);
}

#[test]
fn truncated_files_are_refused_at_every_length() {
    let buf = tiny();
    let h = header::parse(&buf).unwrap();
    let last = h.data_range(&h.tensors[1]).end;
    for n in 0..last {
        let e = header::parse(&buf[..n]);
        assert!(e.is_err(), "{n} bytes parsed");
    }
    // Padding after the last tensor is not required.
    assert!(header::parse(&buf[..last]).is_ok());
    assert!(matches!(err(&buf[..30]), GgufError::CountTooLarge { .. }));
    assert!(matches!(err(&buf[..100]), GgufError::Truncated { .. }));
    assert!(matches!(
        err(&buf[..last - 1]),
        GgufError::OutOfBounds { .. }
    ));
}

#[test]
fn each_malformed_header_has_its_own_error() {
    let base = tiny();
    let (ndims_a, dims_a, type_a, _) = fields(&base, "a");
    let (_, dims_b, type_b, off_b) = fields(&base, "b");
    let case = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = base.clone();
        f(&mut b);
        err(&b)
    };
    assert!(matches!(case(&|b| b[0] = b'X'), GgufError::BadMagic(_)));
    assert!(matches!(
        case(&|b| put_u32(b, 4, 3 << 24)),
        GgufError::BigEndian(_)
    ));
    assert!(matches!(
        case(&|b| put_u32(b, 4, 1)),
        GgufError::UnsupportedVersion(1)
    ));
    assert!(matches!(
        case(&|b| put_u64(b, 8, u64::MAX)),
        GgufError::CountTooLarge {
            what: "tensors",
            ..
        }
    ));
    assert!(matches!(
        case(&|b| put_u64(b, 16, 1 << 40)),
        GgufError::CountTooLarge {
            what: "metadata entries",
            ..
        }
    ));
    assert!(matches!(
        case(&|b| put_u32(b, type_b, 31)),
        GgufError::UnknownType { id: 31, .. }
    ));
    assert!(matches!(
        case(&|b| put_u32(b, type_a, GgmlType::Q4_K.id())),
        GgufError::RowNotBlocks { block: 256, .. }
    ));
    assert!(matches!(
        case(&|b| put_u32(b, ndims_a, 5)),
        GgufError::TooManyDims { n: 5, .. }
    ));
    assert!(matches!(
        case(&|b| put_u64(b, dims_a + 8, 1 << 62)),
        GgufError::ShapeOverflow { .. }
    ));
    assert!(matches!(
        case(&|b| put_u64(b, dims_b + 8, 1 << 40)),
        GgufError::OutOfBounds { .. }
    ));
    // Lying offsets: overlapping the previous tensor, past it, or past the file.
    assert!(matches!(
        case(&|b| put_u64(b, off_b, 0)),
        GgufError::BadOffset { expected: 512, .. }
    ));
    assert!(matches!(
        case(&|b| put_u64(b, off_b, 544)),
        GgufError::BadOffset { .. }
    ));
    assert!(matches!(
        case(&|b| put_u64(b, off_b, u64::MAX)),
        GgufError::BadOffset { .. }
    ));
    // A second tensor named `a`.
    assert!(matches!(
        case(&|b| {
            let at = info_at(b, "b");
            b[at + 8] = b'a';
        }),
        GgufError::DuplicateTensor(n) if n == "a"
    ));
    assert!(matches!(
        case(&|b| {
            let at = info_at(b, "b");
            b[at + 8] = 0xff;
        }),
        GgufError::NotUtf8 { .. }
    ));
}

/// Builds a header with the given metadata entries (raw bytes) and no tensors.
fn with_kv(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        b.extend_from_slice(e);
    }
    b
}

fn kv(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
    let mut b = (key.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(value);
    b
}

#[test]
fn each_malformed_metadata_entry_has_its_own_error() {
    let ok = with_kv(&[kv("x", 4, &7u32.to_le_bytes())]);
    assert_eq!(header::parse(&ok).unwrap().get("x"), Some(&Value::U32(7)));
    let e = |entries: &[Vec<u8>]| err(&with_kv(entries));
    assert!(matches!(e(&[kv("", 4, &[0; 4])]), GgufError::EmptyKey(0)));
    assert!(matches!(
        e(&[kv("x", 4, &[0; 4]), kv("x", 4, &[0; 4])]),
        GgufError::DuplicateKey(_)
    ));
    assert!(matches!(
        e(&[kv("x", 13, &[0; 4])]),
        GgufError::UnknownValueType { ty: 13, .. }
    ));
    let mut arr = 9u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        e(&[kv("x", 9, &arr)]),
        GgufError::CountTooLarge { .. }
    ));
    // Arrays nested five deep.
    let mut deep = Vec::new();
    for _ in 0..5 {
        deep.extend_from_slice(&9u32.to_le_bytes());
        deep.extend_from_slice(&1u64.to_le_bytes());
    }
    deep.extend_from_slice(&[0; 64]);
    assert!(matches!(
        e(&[kv("x", 9, &deep)]),
        GgufError::NestingTooDeep { .. }
    ));
    assert!(matches!(
        e(&[kv("general.alignment", 10, &[0; 8])]),
        GgufError::AlignmentType(_)
    ));
    assert!(matches!(
        e(&[kv("general.alignment", 4, &24u32.to_le_bytes())]),
        GgufError::AlignmentValue(24)
    ));
    assert!(matches!(
        e(&[kv("x", 8, &5u64.to_le_bytes())]),
        GgufError::Truncated { .. }
    ));
    let mut bad = 1u64.to_le_bytes().to_vec();
    bad.push(0xff);
    bad.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(err(&with_kv(&[bad])), GgufError::NotUtf8 { .. }));
    // 17M one-byte elements: more values than the cap, refused before allocating.
    let n = header::MAX_VALUES + 1;
    let mut big = 0u32.to_le_bytes().to_vec();
    big.extend_from_slice(&n.to_le_bytes());
    let mut file = with_kv(&[kv("x", 9, &big)]);
    file.resize(file.len() + n as usize, 0);
    assert!(matches!(err(&file), GgufError::TooManyValues));
}

#[test]
fn an_empty_tensor_name_is_refused() {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&[0; 40]);
    assert!(matches!(err(&b), GgufError::EmptyTensorName(0)));
}

/// The error `quantize_par_measured` reports is that of the bytes it stored (the same bytes as
/// `quantize_par`), against an f64 computation over those bytes dequantized: over several
/// parallel parts and a partial last one, and with an F16 overflow found at its index.
#[test]
fn measured_quantization_reports_the_error_of_the_stored_bytes() {
    let n = 3 * 65536 + 5 * 256;
    let mut s = 7u64;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
        GgmlType::F16,
    ] {
        let mut bytes = vec![1, 2, 3];
        let e = quant::quantize_par_measured(ty, &values, &mut bytes).unwrap();
        assert_eq!(&bytes[..3], &[1, 2, 3], "{ty}: appends");
        assert_eq!(
            bytes[3..],
            quant::quantize_par(ty, &values).unwrap(),
            "{ty}"
        );
        let mut back = vec![0f32; n];
        assert!(quant::dequantize_into(ty, &bytes[3..], &mut back));
        let (mut num, mut den, mut max) = (0f64, 0f64, 0f64);
        for (q, v) in back.iter().zip(&values) {
            let d = (*q as f64 - *v as f64).abs();
            num += d * d;
            den += *v as f64 * *v as f64;
            max = max.max(d);
        }
        assert!(num > 0.0, "{ty}: the test needs a lossy type");
        assert!(
            (e.sq_err - num).abs() <= 1e-12 * num,
            "{ty}: {} vs {num}",
            e.sq_err
        );
        assert!((e.sq_val - den).abs() <= 1e-12 * den, "{ty}");
        assert_eq!(e.max_abs, max, "{ty}");
        assert_eq!(e.first_bad, None, "{ty}");
        assert_eq!(e.rel_fro(), (e.sq_err / e.sq_val).sqrt());
    }
    let mut big = values.clone();
    big[70_001] = 1e6;
    let e = quant::quantize_par_measured(GgmlType::F16, &big, &mut Vec::new()).unwrap();
    assert_eq!(e.first_bad, Some(70_001));
}

/// A GGUF file written through the pipelined writer — a tensor whole, one in pieces, one
/// copied by the kernel from an input file — holds the header and each tensor's bytes
/// followed by its padding; a copy of the wrong length is refused.
#[test]
fn gguf_writer_writes_whole_pieces_and_kernel_copies() {
    use crate::io::writer::pipelined;
    use writer::{header, GgufWriter, OutTensor};
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("src.bin");
    let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src_path, &payload).unwrap();
    let src = std::fs::File::open(&src_path).unwrap();
    let t = |name: &str, n: u64| OutTensor {
        name: name.into(),
        dims: vec![n],
        ty: GgmlType::F32,
    };
    let tensors = vec![t("a", 3), t("b", 10), t("c", 1000)];
    let entries = vec![writer::kv_string("general.architecture", "llama")];
    let a: Vec<u8> = (0..12).collect();
    let b: Vec<u8> = (100..140).collect();
    let dest = dir.path().join("out.gguf");
    let mut out = crate::io::Output::new();
    let file = out.raw_file(&dest).unwrap();
    let w = GgufWriter::new(file, &dest, &entries, tensors.clone(), 32).unwrap();
    pipelined(w, |p| {
        p.write_tensor("a", a.clone())?;
        p.begin_tensor("b")?;
        p.write_chunk(b[..15].to_vec())?;
        p.write_borrowed(&b[15..])?;
        p.copy_tensor(
            "c",
            crate::io::writer::Extent {
                file: &src,
                path: &src_path,
                offset: 7,
                len: 4000,
            },
        )
    })
    .unwrap();
    out.commit().unwrap();
    let mut want = header(&entries, &tensors, 32);
    for data in [&a[..], &b[..], &payload[7..4007]] {
        want.extend_from_slice(data);
        want.resize(want.len().next_multiple_of(32), 0);
    }
    assert_eq!(std::fs::read(&dest).unwrap(), want);
    let f = GgufFile::open(&dest).unwrap();
    assert_eq!(f.view(&f.tensors()[2]).data, &payload[7..4007]);

    let mut out = crate::io::Output::new();
    let file = out.raw_file(&dest).unwrap();
    let mut w = GgufWriter::new(file, &dest, &entries, tensors, 32).unwrap();
    w.write_tensor("a", &a).unwrap();
    let err = w
        .copy_tensor(
            "b",
            crate::io::writer::Extent {
                file: &src,
                path: &src_path,
                offset: 0,
                len: 39,
            },
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("tensor `b`: 39 bytes copied"),
        "{err}"
    );
}

/// `writer::page_padding` (issue #17): for headers of many lengths, and sources whose data
/// sections start at many offsets, the padded file parses (ggml's rules: each tensor at the
/// previous one's aligned end) with its data section at the copied tensors' source offsets
/// modulo the page, every copied tensor's offset agreeing with its source's; the entry is
/// `lorakit.padding`, spaces only, and is absent where the header already lines up or where
/// the alignment is a page. With copies from two sources that disagree, the one holding more
/// bytes is lined up.
#[test]
fn page_padding_lines_the_data_section_up_with_the_copied_tensors_sources() {
    use writer::{header, kv_string, page_padding, OutTensor, PADDING_KEY};
    const PAGE: u64 = 4096;
    let t = |name: &str, n: u64| OutTensor {
        name: name.into(),
        dims: vec![n],
        ty: GgmlType::F32,
    };
    // Sizes that are not multiples of the alignment, so the padding between tensors counts.
    let tensors = vec![t("a", 5), t("b", 1000), t("c", 37), t("d", 3000), t("e", 1)];
    let rel: Vec<u64> = tensors
        .iter()
        .scan(0u64, |o, t| {
            let at = *o;
            *o = header::pad(at + t.bytes(), 32).unwrap();
            Some(at)
        })
        .collect();
    let data_len = header::pad(rel[4] + 4, 32).unwrap() as usize;
    let mut padded = 0;
    for value_len in (0..300).step_by(37) {
        let entries = vec![
            kv_string("general.architecture", "llama"),
            kv_string("general.name", &"x".repeat(value_len)),
        ];
        for source_start in [0u64, 32, 1696, 4064, 4096 + 640, 3 * 4096 + 2016] {
            // Tensors a, b, d copied from a file whose data section starts at `source_start`
            // (c and e computed).
            let copied: Vec<Option<u64>> = (0..5)
                .map(|i| [0, 1, 3].contains(&i).then(|| source_start + rel[i]))
                .collect();
            let case = format!("entry of {value_len}, source data at {source_start}");
            let pad = page_padding(&entries, &tensors, 32, &copied);
            let bare = header(&entries, &tensors, 32).len() as u64;
            if bare % PAGE == source_start % PAGE {
                assert!(pad.is_none(), "{case}: already lined up");
            }
            let mut all = entries.clone();
            all.extend(pad.clone());
            let mut file = header(&all, &tensors, 32);
            file.resize(file.len() + data_len, 0);
            let h = header::parse(&file).unwrap();
            assert_eq!(h.data_start % PAGE, source_start % PAGE, "{case}");
            for (i, ti) in h.tensors.iter().enumerate() {
                assert_eq!(ti.offset, rel[i], "{case}: tensor {i} moved");
                if let Some(src) = copied[i] {
                    assert_eq!((h.data_start + ti.offset) % PAGE, src % PAGE, "{case}");
                }
            }
            if pad.is_some() {
                padded += 1;
                let Some(Value::String(s)) = h.get(PADDING_KEY) else {
                    panic!("{case}: no {PADDING_KEY} string");
                };
                assert!(s.bytes().all(|b| b == b' '), "{case}");
                // The least padding that lines it up: under a page.
                assert!(h.data_start - bare < PAGE + 64, "{case}");
            }
        }
    }
    assert!(padded > 30, "most cases need the entry");
    let entries = vec![kv_string("general.architecture", "llama")];
    // Two sources disagreeing: b and d (4000 bytes) from one at 4096 + 640, a (20 bytes) from
    // one at 96.
    let copied = [
        Some(96 + rel[0]),
        Some(4736 + rel[1]),
        None,
        Some(4736 + rel[3]),
        None,
    ];
    let pad = page_padding(&entries, &tensors, 32, &copied);
    let mut all = entries.clone();
    all.extend(pad);
    let n = header(&all, &tensors, 32).len() as u64;
    assert_eq!(n % PAGE, 640);
    // Nothing copied, or an alignment of a page: no entry.
    assert!(page_padding(&entries, &tensors, 32, &[]).is_none());
    assert!(page_padding(&entries, &tensors, 32, &[None; 5]).is_none());
    assert!(page_padding(&entries, &tensors, 4096, &copied).is_none());
}
