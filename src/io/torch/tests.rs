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
