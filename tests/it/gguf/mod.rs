//! GGUF (llama.cpp) through the binary: `inspect` and `diff` on files written by gguf-py,
//! malformed files refused in one line, merges into GGUF bases (F32, quantized, K-quant, split,
//! Qwen2), `convert --to gguf` and GGUF adapters as inputs. Shared helpers live here; each file
//! below owns one of those areas.

use super::common::*;
use lorakit::io::gguf::{names, GgmlType, GgufModel};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `convert ADAPTER --to gguf`, GGUF adapters as merge inputs, malformed GGUF adapters.
mod adapter;
/// Qwen3 and Gemma against llama.cpp's converters (adapters and HF → GGUF models).
mod arch;
/// `merge --base HF_FOLDER --out MODEL.gguf` against convert_hf_to_gguf.py.
mod hf;
/// IQ4_NL/IQ4_XS bases: read, merged with another --outtype, keep refused.
mod iq4;
/// K-quant bases: `keep` requantizes with ggml's reference quantizers.
mod kquant;
/// lorakit against llama.cpp's own outputs (fixtures/gguf/llamacpp/).
mod llamacpp;
/// `merge --base MODEL.gguf`: F32, Q8_0/Q4_0, unmerge, refusals, split, Qwen2, weights.
mod merge;
/// `merge --part I/N` into a GGUF output and `finalize`.
mod parts;
/// Phi-3 (`phi3`: fused qkv and gate/up) against llama.cpp's converters.
mod phi3;
/// `inspect`, `diff`, malformed GGUF files, the JSON vocabulary of the GGUF reports.
mod read;
/// The GGUF merge reports against the safetensors merge report's fields and meaning.
mod reports;
/// Faults found by fixtures/gen/check_gguf_sweep.py, against llama.cpp's converter.
mod sweep;
/// DoRA, lora_bias and modules_to_save into GGUF bases, against the converted PEFT merge.
mod variants;

fn g(name: &str) -> String {
    fixture(&format!("gguf/{name}"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Heads of the fixture Llama (fixtures/llama/base/config.json): q with 4, k with 2.
const N_HEAD: usize = 4;
const N_HEAD_KV: usize = 2;

/// `(type, shape, values in Hugging Face row order, stored bytes)`.
type Tensor = (GgmlType, Vec<usize>, Vec<f32>, Vec<u8>);

/// Every tensor of a GGUF file as `(type, HF name, values in Hugging Face row order)`: the
/// q/k permutation of llama.cpp's converter undone. Read with lorakit's GGUF reader, whose
/// dequantization is checked bit for bit against gguf-py in `io::gguf::tests`.
fn hf_view(path: &Path) -> BTreeMap<String, Tensor> {
    let m = GgufModel::open(path).unwrap();
    m.tensors()
        .map(|(f, t)| {
            let hf = names::hf_name(&t.name).unwrap();
            let shape = t.shape();
            let mut v = f.dequantize(t).unwrap();
            let heads = if t.name.ends_with("attn_q.weight") {
                Some(N_HEAD)
            } else if t.name.ends_with("attn_k.weight") {
                Some(N_HEAD_KV)
            } else {
                None
            };
            if let Some(h) = heads {
                v = names::unpermute_rows(&v, shape[0], shape[1], h);
            }
            (hf, (t.ty, shape, v, f.view(t).data.to_vec()))
        })
        .collect()
}

/// `lorakit convert ADAPTER --to gguf --out OUT --base BASE --json`: its JSON report.
fn to_gguf(adapter: &Path, base: &Path, out: &Path) -> serde_json::Value {
    let out = run_ok(convert_args(
        adapter,
        "gguf",
        out,
        &["--base", s(base), "--json"],
    ));
    serde_json::from_str(&out).unwrap()
}

/// [`to_gguf`] of the fixture adapter `adapter` onto the fixture base `base`, written to
/// `a.gguf` in a fresh temporary folder: the folder, the file and the report.
fn fixture_to_gguf(adapter: &str, base: &str) -> (tempfile::TempDir, PathBuf, serde_json::Value) {
    let (dir, out) = scratch("a.gguf");
    let v = to_gguf(&fixture(adapter), &fixture(base), &out);
    (dir, out, v)
}

/// Asserts that every tensor of the GGUF file `got` (an unmerge's output) equals the tensor of
/// the same name in the GGUF file `base` to f32 rounding: relative error ≤ 1e-6 per tensor,
/// values dequantized by lorakit's reader (checked against gguf-py in `io::gguf::tests`).
#[track_caller]
fn assert_restores(got: &Path, base: &Path, what: &str) {
    let values = |path: &Path| -> BTreeMap<String, Vec<f32>> {
        let m = GgufModel::open(path).unwrap();
        m.tensors()
            .map(|(f, t)| (t.name.clone(), f.dequantize(t).unwrap()))
            .collect()
    };
    let (got, want) = (values(got), values(base));
    for (name, t) in &got {
        let e = rel_err(t, &want[name]);
        assert!(e <= 1e-6, "{what} {name}: relative error {e:e}");
    }
}

/// `lorakit merge --base BASE --adapter ADAPTER --out OUT --json EXTRA…`: its JSON report.
fn merge_json(
    base: impl AsRef<Path>,
    adapter: impl AsRef<Path>,
    out: &Path,
    extra: &[&str],
) -> serde_json::Value {
    let (base, adapter) = (base.as_ref(), adapter.as_ref());
    let args = merge_args(base, adapter, out, &[&["--json"], extra].concat());
    serde_json::from_str(&run_ok(args)).unwrap()
}

/// PEFT's ΔW of fixture adapter `case` (fixtures/llama/merged/CASE.safetensors minus `base`)
/// per Hugging Face name, after asserting that `deltas` holds exactly those names.
fn peft_deltas(
    case: &str,
    base: &BTreeMap<String, T>,
    deltas: &BTreeMap<String, Vec<f32>>,
) -> Vec<(String, Vec<f32>)> {
    let reference = read(&fixture(&format!("llama/merged/{case}.safetensors")));
    assert_eq!(
        deltas.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>(),
        "{case}"
    );
    reference
        .iter()
        .map(|(name, r)| {
            let (m, b) = (r.f32(), base[name].f32());
            (name.clone(), m.iter().zip(b).map(|(m, b)| m - b).collect())
        })
        .collect()
}

/// `(key, raw entry bytes)` of every metadata entry, in file order.
fn metadata(m: &GgufModel) -> Vec<(String, Vec<u8>)> {
    let f = &m.files[0];
    f.header()
        .metadata
        .iter()
        .map(|kv| (kv.key.clone(), f.raw_kv(kv).to_vec()))
        .collect()
}

/// lorakit's GGUF output `out` and llama.cpp's converter output `gguf/llamacpp/{reference}`,
/// opened, with their metadata compared ([`assert_metadata_is_converters_plus_provenance`]).
fn open_against_converter(out: &Path, reference: &str) -> (GgufModel, GgufModel) {
    let ours = GgufModel::open(out).unwrap();
    let theirs = GgufModel::open(fixture(&format!("gguf/llamacpp/{reference}"))).unwrap();
    assert_metadata_is_converters_plus_provenance(&ours, &theirs, reference);
    (ours, theirs)
}

/// lorakit's merged GGUF `out` (its `merge --json` report `v`) against llama.cpp's converter
/// output `reference`: the metadata as [`open_against_converter`] asserts, then the same tensors
/// in the same order with the same names, dims and types; each tensor the report does not list
/// as merged byte for byte, and each merged one (`merged` of them) handed dequantized, lorakit's
/// then the converter's, to `close`, which asserts its bound.
fn assert_tensors_equal_converter(
    out: &Path,
    reference: &str,
    v: &serde_json::Value,
    merged: usize,
    close: impl Fn(&lorakit::io::gguf::TensorInfo, &[f32], &[f32]),
) {
    assert_eq!(v["tensors_merged_count"], merged, "{reference}");
    let (ours, theirs) = open_against_converter(out, reference);
    let merged_names = merged_names(v);
    let (to, tt): (Vec<_>, Vec<_>) = (ours.tensors().collect(), theirs.tensors().collect());
    assert_eq!(to.len(), tt.len(), "{reference}");
    let mut exact = 0;
    for ((fo, a), (ft, b)) in to.iter().zip(&tt) {
        assert_eq!(
            (&a.name, &a.dims, a.ty),
            (&b.name, &b.dims, b.ty),
            "{reference}"
        );
        if merged_names.contains(&a.name.as_str()) {
            close(a, &fo.dequantize(a).unwrap(), &ft.dequantize(b).unwrap());
        } else {
            assert!(
                fo.view(a).data == ft.view(b).data,
                "{reference} {}: untouched tensor not byte-identical",
                a.name
            );
            exact += 1;
        }
    }
    assert_eq!(exact, to.len() - merged, "{reference}");
}

/// One f16 step between `p` and `q`: 2⁻¹⁰ relative to the larger, 2⁻²⁴ among subnormals
/// (two f32 merges that differ in the last bits, each rounded to f16).
fn f16_step(p: f32, q: f32) -> f32 {
    (p.abs().max(q.abs()) * 2f32.powi(-10)).max(2f32.powi(-24))
}

/// A model folder `d` (created) holding the files `model.1` of fixture folder `model.0` and the
/// files `tokenizer.1` of fixture folder `tokenizer.0`; an empty list takes every file there.
fn model_folder(
    d: std::path::PathBuf,
    model: (&str, &[&str]),
    tokenizer: (&str, &[&str]),
) -> std::path::PathBuf {
    std::fs::create_dir_all(&d).unwrap();
    for (src, files) in [model, tokenizer] {
        let src = fixture(src);
        let names: Vec<std::ffi::OsString> = if files.is_empty() {
            std::fs::read_dir(&src)
                .unwrap()
                .flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name())
                .collect()
        } else {
            files.iter().map(|f| f.into()).collect()
        };
        for f in names {
            std::fs::copy(src.join(&f), d.join(&f)).unwrap();
        }
    }
    d
}

/// The names of the tensors a merge report (`--json`) lists as merged.
fn merged_names(v: &serde_json::Value) -> Vec<&str> {
    v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["merged"] == true)
        .map(|x| x["name"].as_str().unwrap())
        .collect()
}

/// lorakit's GGUF model `ours` against llama.cpp's converter output `theirs` (`label` names the
/// case): every metadata key in the converter's order with identical bytes, then only lorakit's
/// three provenance keys.
fn assert_metadata_is_converters_plus_provenance(
    ours: &GgufModel,
    theirs: &GgufModel,
    label: &str,
) {
    let (mo, mt) = (metadata(ours), metadata(theirs));
    assert_eq!(mo.len(), mt.len() + 3, "{label}");
    for ((ko, vo), (kt, vt)) in mo.iter().zip(&mt) {
        assert_eq!(ko, kt, "{label}: key order");
        assert!(vo == vt, "{label}: metadata `{kt}` differs");
    }
    let extra: Vec<&str> = mo[mt.len()..].iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        extra,
        ["lorakit.version", "lorakit.operation", "lorakit.adapters"]
    );
}
