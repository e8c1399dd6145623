//! The `torch.save` reader against files torch itself wrote (`fixtures/gen/torch_pickle_fixtures.py`):
//! every tensor's dtype, shape and values as `torch.load(weights_only=True)` reads them back
//! (`views.json`), and the refusals.

use crate::dtype::Dtype;
use crate::io::file::SafetensorsFile;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/torch")
        .join(name)
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "float32",
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        Dtype::F64 => "float64",
        Dtype::I64 => "int64",
        Dtype::BOOL => "bool",
        _ => "other",
    }
}

/// Every tensor of `views.pt` (protocol 2) and `views_p4.pt` (protocol 4) as torch reads it:
/// f32/f16/bf16/f64/int64/bool, two views at offsets 0 and 50 of one storage, a 0-dim scalar,
/// an empty tensor, an `nn.Parameter`; the non-tensor entries are skipped.
#[test]
fn tensors_equal_what_torch_loads() {
    let want: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixture("views.json")).unwrap()).unwrap();
    for file in ["views.pt", "views_p4.pt"] {
        let f = SafetensorsFile::open(fixture(file)).unwrap();
        let mut names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
        names.sort();
        let mut keys: Vec<&str> = want.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(names, keys, "{file}");
        for (name, w) in &want {
            let v = f.view(name).unwrap();
            assert_eq!(dtype_name(v.dtype), w["dtype"], "{file} {name}");
            let shape: Vec<usize> = serde_json::from_value(w["shape"].clone()).unwrap();
            assert_eq!(v.shape, &shape[..], "{file} {name}");
            if let Some(bits) = w.get("bits16") {
                let bits: Vec<u16> = serde_json::from_value(bits.clone()).unwrap();
                let got: Vec<u16> = v
                    .data
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect();
                assert_eq!(got, bits, "{file} {name}");
            } else if let Some(ints) = w.get("int") {
                let ints: Vec<i64> = serde_json::from_value(ints.clone()).unwrap();
                let got: Vec<i64> = match v.dtype {
                    Dtype::I64 => v
                        .data
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                    _ => v.data.iter().map(|&b| i64::from(b)).collect(),
                };
                assert_eq!(got, ints, "{file} {name}");
            } else {
                let vals: Vec<f64> = serde_json::from_value(w["float"].clone()).unwrap();
                let got: Vec<f64> = match v.dtype {
                    Dtype::F64 => v
                        .data
                        .chunks_exact(8)
                        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                    _ => v.to_f32().into_iter().map(f64::from).collect(),
                };
                assert_eq!(got, vals, "{file} {name}");
            }
        }
    }
}

fn open_err(name: &str) -> String {
    SafetensorsFile::open(fixture(name))
        .unwrap_err()
        .to_string()
}

/// A transposed view, a compressed archive and the pre-1.6 format are refused saying why.
#[test]
fn what_cannot_be_mapped_is_refused_by_name() {
    let e = open_err("strided.pt");
    assert!(
        e.contains("tensor `t`") && e.contains("strided view"),
        "{e}"
    );
    let e = open_err("deflated.pt");
    assert!(e.contains("compressed"), "{e}");
    let e = open_err("legacy.pt");
    assert!(e.contains("pre-1.6"), "{e}");
    for e in [
        open_err("strided.pt"),
        open_err("deflated.pt"),
        open_err("legacy.pt"),
    ] {
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

/// A pickle that calls `os.system` is refused by the global's name, and nothing runs.
#[test]
fn pickled_code_is_never_run() {
    let marker = std::path::Path::new("/tmp/lorakit_evil_ran");
    let _ = std::fs::remove_file(marker);
    let e = open_err("evil.pt");
    assert!(e.contains("system") && e.contains("never runs"), "{e}");
    assert!(!marker.exists());
}

/// Truncations at every length and single-byte corruptions of a real archive give errors or
/// a table whose every range lies inside the file, never a panic.
#[test]
fn truncated_and_corrupted_archives_fail_cleanly() {
    let bytes = std::fs::read(fixture("views.pt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pt");
    let check = |b: &[u8]| {
        std::fs::write(&p, b).unwrap();
        if let Ok(f) = SafetensorsFile::open(&p) {
            for t in f.tensors() {
                assert!(t.end <= b.len() as u64 && t.start <= t.end, "{}", t.name);
                let v = f.view_info(t).unwrap();
                assert_eq!(v.data.len() as u64, t.end - t.start);
            }
        }
    };
    for len in (0..bytes.len()).step_by(11) {
        let mut b = bytes[..len].to_vec();
        // Keep the zip signature so that the torch reader, not the safetensors one, sees it.
        if b.len() >= 4 {
            b[..4].copy_from_slice(b"PK\x03\x04");
        }
        check(&b);
    }
    let mut s = 0x2545_F491u64;
    for _ in 0..1000 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let mut b = bytes.clone();
        let at = 4 + (s as usize) % (b.len() - 4);
        b[at] = (s >> 32) as u8;
        check(&b);
    }
}

/// A zip archive of stored entries, laid out as `torch.save` lays them out.
fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let at = out.len() as u32;
        let crc = 0u32; // not checked by readers that map the bytes
        let mut head = Vec::new();
        head.extend(0x0403_4b50u32.to_le_bytes());
        head.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        head.extend(crc.to_le_bytes());
        head.extend((data.len() as u32).to_le_bytes());
        head.extend((data.len() as u32).to_le_bytes());
        head.extend((name.len() as u16).to_le_bytes());
        head.extend(0u16.to_le_bytes());
        out.extend(&head);
        out.extend(name.as_bytes());
        out.extend(*data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend(crc.to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((name.len() as u16).to_le_bytes());
        central.extend([0u8; 12]);
        central.extend(at.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let dir_at = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(dir_at.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn open_bytes(bytes: &[u8]) -> Result<usize, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pt");
    std::fs::write(&p, bytes).unwrap();
    SafetensorsFile::open(&p)
        .map(|f| f.tensors().len())
        .map_err(|e| e.to_string())
}

/// Hand-made pickles: a tuple nested 200,000 deep (one byte per level) is refused, not a stack
/// overflow; a tensor whose offset points past its storage is refused by name; the builder
/// itself is checked on a minimal good state dict.
#[test]
fn hostile_pickles_are_refused() {
    let mut deep = b"\x80\x02)".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 200_000));
    deep.push(b'.');
    let e = open_bytes(&zip(&[("a/data.pkl", &deep)])).unwrap_err();
    assert!(e.contains("nested"), "{e}");
    // {"w": _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', 4), OFFSET, (2,), (1,), False, OrderedDict())}
    let state = |offset: u8| {
        let mut p = b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK".to_vec();
        p.extend([offset, b'K', 2, 0x85, b'K', 1, 0x85, 0x89]);
        p.extend(b"ccollections\nOrderedDict\n)RtRu.");
        p
    };
    let data = [0u8; 16];
    let good = zip(&[("a/data.pkl", &state(2)), ("a/data/0", &data)]);
    assert_eq!(open_bytes(&good), Ok(1));
    let e = open_bytes(&zip(&[("a/data.pkl", &state(3)), ("a/data/0", &data)])).unwrap_err();
    assert!(
        e.contains("tensor `w`") && e.contains("outside its storage"),
        "{e}"
    );
    let e = open_bytes(&zip(&[("a/data.pkl", &state(0))])).unwrap_err();
    assert!(
        e.contains("tensor `w`") && e.contains("not in the archive"),
        "{e}"
    );
}

/// What the review of this reader found (rev17t), against files torch wrote
/// (`fixtures/gen/torch_pickle_fixtures.py` section 6): the `_rebuild_tensor_v3` dtypes
/// (float8, uint16–64) read with torch's bytes, zero-size tensors with a 0 after the first
/// dimension, a complex tensor refused by its dtype and name, a `{"model": …}` checkpoint read,
/// and a tied `lm_head.weight` dropped as transformers' safetensors save drops it.
#[test]
fn review_dtypes_nesting_and_ties() {
    let want: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixture("dtypes.json")).unwrap()).unwrap();
    let f = SafetensorsFile::open(fixture("dtypes.pt")).unwrap();
    assert_eq!(f.tensors().len(), want.len());
    for (name, w) in &want {
        let v = f.view(name).unwrap();
        let dtype = match v.dtype {
            Dtype::F8_E4M3 => "float8_e4m3fn",
            Dtype::F8_E5M2 => "float8_e5m2",
            Dtype::F8_E8M0 => "float8_e8m0fnu",
            Dtype::U16 => "uint16",
            Dtype::U32 => "uint32",
            Dtype::U64 => "uint64",
            other => dtype_name(other),
        };
        assert_eq!(dtype, w["dtype"], "{name}");
        let shape: Vec<usize> = serde_json::from_value(w["shape"].clone()).unwrap();
        assert_eq!(v.shape, &shape[..], "{name}");
        let hex: String = v.data.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, w["hex"], "{name}");
    }
    let e = open_err("complex.pt");
    assert!(
        e.contains("tensor `c`") && e.contains("ComplexFloatStorage"),
        "{e}"
    );
    let f = SafetensorsFile::open(fixture("nested_model.pt")).unwrap();
    assert_eq!(f.tensors().len(), 1);
    assert_eq!(f.tensors()[0].name, "w");
    let f = SafetensorsFile::open(fixture("tied.pt")).unwrap();
    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["model.embed_tokens.weight"]);
}

/// A pickle that stores a growing dict in the memo before each `SETITEM` (every mutation would
/// copy the whole dict: 100 s for 200 KB before the copy budget) is refused at once; two zip
/// entries of one name (torch reads the first) and a storage record longer than the pickle
/// says (torch refuses: "record size … does not match") are refused.
#[test]
fn review_hostile_archives_are_refused() {
    let mut p = b"\x80\x02}".to_vec();
    for i in 0..20_000u32 {
        p.extend(b"q\x00J");
        p.extend(i.to_le_bytes());
        p.extend(b"K\x01s");
    }
    p.push(b'.');
    let t = std::time::Instant::now();
    let e = open_bytes(&zip(&[("a/data.pkl", &p)])).unwrap_err();
    assert!(e.contains("over and over"), "{e}");
    assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
    let state = b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRu.";
    let e = open_bytes(&zip(&[
        ("a/data.pkl", state),
        ("a/data/0", &[0u8; 16]),
        ("a/data/0", &[9u8; 16]),
    ]))
    .unwrap_err();
    assert!(e.contains("appears twice"), "{e}");
    let e = open_bytes(&zip(&[("a/data.pkl", state), ("a/data/0", &[0u8; 20])])).unwrap_err();
    assert!(
        e.contains("tensor `w`") && e.contains("holds 20 bytes, the pickle says 16"),
        "{e}"
    );
    assert_eq!(
        open_bytes(&zip(&[("a/data.pkl", state), ("a/data/0", &[0u8; 16])])),
        Ok(1)
    );
}
