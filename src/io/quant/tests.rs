//! The readers against the producers' own outputs (`fixtures/quant/`, made by
//! `fixtures/gen/quant_fixtures.py` with bitsandbytes 0.50.2 and transformers 5.24 on CPU):
//! every comparison is of stored bytes, exact.

use super::*;
use crate::io::SafetensorsFile;
use std::path::PathBuf;

/// A small safetensors fixture read whole: the edge tables each format file tests its rounding
/// against (`fixtures/<rel>`).
pub(super) struct EdgeFile(Vec<u8>);

impl EdgeFile {
    pub(super) fn open(rel: &str) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(rel);
        Self(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    pub(super) fn tensors(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.0).expect("safetensors")
    }
}

/// Stored bf16 `got` equal to `want` bit for bit, but NaNs, whose payloads may differ.
pub(super) fn assert_bf16_eq_but_nan_payloads(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.chunks(2).zip(want.chunks(2)).enumerate() {
        let (g, w) = (
            u16::from_le_bytes([g[0], g[1]]),
            u16::from_le_bytes([w[0], w[1]]),
        );
        let nan = |b: u16| b & 0x7fff > 0x7f80;
        assert!(
            g == w || (nan(g) && nan(w)),
            "{what} element {i}: {g:#06x} vs {w:#06x}"
        );
    }
}

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/quant")
        .join(rel)
}

/// Stored bytes of `values` in `dtype`.
fn stored(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    dtype::encode(dtype, values)
}

/// Byte equality of two stored tensors, reporting the first differing element (not the bytes).
#[track_caller]
fn assert_same(dtype: Dtype, have: &[u8], want: &[u8], what: &str) {
    if have == want {
        return;
    }
    let size = (dtype.bitsize() / 8).max(1);
    let i = have
        .chunks(size)
        .zip(want.chunks(size))
        .position(|(a, b)| a != b);
    let show = |b: &[u8], i: usize| -> String {
        let e = b.get(i * size..(i + 1) * size).unwrap_or_default();
        if dtype::is_float_compute(dtype) {
            format!("{:?}", dtype::decode(dtype, e))
        } else {
            format!("{e:?}")
        }
    };
    match i {
        Some(i) => panic!(
            "{what}: element {i} differs: lorakit {} library {} ({} of {} bytes)",
            show(have, i),
            show(want, i),
            have.len(),
            want.len()
        ),
        None => panic!("{what}: lengths differ: {} vs {}", have.len(), want.len()),
    }
}

/// Checks every reference tensor of `ref/<name>.safetensors` against lorakit's dequantization of
/// `<name>/`; returns how many were compared.
fn check_model(name: &str) -> usize {
    let ck = Checkpoint::open(fixture(name)).unwrap();
    let map = QuantMap::scan(&ck).unwrap();
    // 2 layers × (q, k, v, o, gate, up, down); lm_head and embeddings stay float.
    assert_eq!(map.len(), 14, "{name}");
    let reference = SafetensorsFile::open(fixture(&format!("ref/{name}.safetensors"))).unwrap();
    let mut n = 0;
    for t in reference.tensors() {
        let (weight, _) = t.name.split_once('@').unwrap_or((&t.name, ""));
        let q = map
            .get(weight)
            .unwrap_or_else(|| panic!("{name}: {weight} not recognised"));
        let got = map.dequantize(&ck, q).unwrap();
        assert_eq!(q.shape, t.shape, "{name} {weight}");
        if !t.name.contains('@') {
            assert_eq!(q.natural_dtype(), t.dtype, "{name} {weight}");
        }
        let want = reference.view_info(t).unwrap().data;
        assert_same(
            t.dtype,
            &stored(t.dtype, &got),
            want,
            &format!("{name} {}", t.name),
        );
        n += 1;
    }
    n
}

/// Every producer's fixture model dequantizes bit for bit ([`check_model`]), with how many
/// reference tensors each compares.
#[test]
fn every_quantized_model_dequantizes_bit_exact() {
    for (name, compared) in [
        ("nf4", 3),
        ("nf4_dq", 3),
        ("fp4", 3),
        ("nf4_bf16", 3),
        ("int8", 3),
        // 2/3/4/5/6/8 bits, symmetric and asymmetric, channel and groups, f32/f16/bf16 scales.
        ("ct_pack", 7),
        // FP8 blocks in f32 and bf16.
        ("fp8_block", 6),
    ] {
        assert_eq!(check_model(name), compared, "{name}");
    }
}

/// The awkward bitsandbytes cases: dequantization against `dequantize_4bit`, and (without
/// double quantization) lorakit's quantizer against `quantize_4bit`'s bytes and absmax.
#[test]
fn bnb4_edge_cases_dequantize_and_quantize_like_bitsandbytes() {
    let ck = Checkpoint::open(fixture("edge.safetensors")).unwrap();
    let map = QuantMap::scan(&ck).unwrap();
    assert_eq!(map.len(), 11);
    let mut quantized = 0;
    for q in map.iter() {
        let case = q.name.strip_suffix(".weight").unwrap();
        let expected = ck.view(&format!("{case}.expected")).unwrap();
        let got = map.dequantize(&ck, q).unwrap();
        assert_same(
            expected.dtype,
            &stored(expected.dtype, &got),
            expected.data,
            &format!("{case}: dequantize"),
        );
        let Scheme::Bnb4(p) = &q.scheme else {
            panic!("{case}")
        };
        if p.nested.is_some() {
            continue;
        }
        let source = ck.view(&format!("{case}.source")).unwrap().to_f32();
        let (packed, absmax) = bnb4::quantize(p.kind, p.blocksize, &source);
        let want = ck.view(&q.name).unwrap().data;
        assert_same(Dtype::U8, &packed, want, &format!("{case}: packed bytes"));
        let want = ck.view(&format!("{case}.weight.absmax")).unwrap().data;
        assert_same(Dtype::F32, &stored(Dtype::F32, &absmax), want, case);
        quantized += 1;
    }
    assert_eq!(quantized, 9);
}

/// lorakit's NF4/FP4 quantizer on the real model weights equals the bytes bitsandbytes wrote when
/// transformers loaded `fixtures/llama/base` in 4 bits.
#[test]
fn bnb4_quantizer_reproduces_transformers_checkpoints() {
    let base =
        Checkpoint::open(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama/base"))
            .unwrap();
    for name in ["nf4", "fp4"] {
        let ck = Checkpoint::open(fixture(name)).unwrap();
        let map = QuantMap::scan(&ck).unwrap();
        for q in map.iter() {
            let Scheme::Bnb4(p) = &q.scheme else { panic!() };
            let w = base.read_f32(&q.name).unwrap();
            let (packed, absmax) = bnb4::quantize(p.kind, p.blocksize, &w);
            let what = format!("{name} {}", q.name);
            assert_same(Dtype::U8, &packed, ck.view(&q.name).unwrap().data, &what);
            let want = ck.view(&format!("{}.absmax", q.name)).unwrap().data;
            assert_same(Dtype::F32, &stored(Dtype::F32, &absmax), want, &what);
        }
    }
}

/// bitsandbytes double quantization: lorakit's requantizer (4-bit codes, absmax → torch mean →
/// 8-bit table quantizer, quant_state JSON) reproduces every stored byte of the NF4 + double-quant
/// checkpoints transformers wrote (f32 and bf16 bases; the bf16 state's `"dtype"` as a merge
/// writes it, float32) and of the nested edge cases.
#[test]
fn bnb4_double_quant_requantizes_bit_exact() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama");
    let mut checked = 0;
    for (name, base, edge) in [
        ("nf4_dq", "base", false),
        ("nf4_bf16", "base_bf16", false),
        ("edge.safetensors", "", true),
    ] {
        let ck = Checkpoint::open(fixture(name)).unwrap();
        let base = (!edge).then(|| Checkpoint::open(root.join(base)).unwrap());
        let map = QuantMap::scan(&ck).unwrap();
        for q in map.iter() {
            let Scheme::Bnb4(p) = &q.scheme else { panic!() };
            if p.nested.is_none() {
                continue;
            }
            let w = match &base {
                Some(b) => b.read_f32(&q.name).unwrap(),
                None => {
                    let case = q.name.strip_suffix(".weight").unwrap();
                    ck.view(&format!("{case}.source")).unwrap().to_f32()
                }
            };
            let pieces = map.requantize(&ck, q, &w, Requant::Sum).unwrap();
            assert_eq!(pieces.len(), 4);
            for (n, bytes) in pieces {
                let want = ck.view(&n).unwrap();
                // A merge's requantization records the f32 input as PEFT's does (see
                // `QuantMap::requantize`): a 16-bit state's JSON says float32, all else equal.
                let data = match (n.contains(".quant_state."), p.dtype) {
                    (true, d) if d != Dtype::F32 => bnb4_dq::with_dtype_f32(want.data).unwrap(),
                    _ => want.data.to_vec(),
                };
                assert_same(want.dtype, &bytes, &data, &format!("{name} {n}"));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 14 + 14 + 2);
}

/// LLM.int8 requantization from the exact float32 weight PEFT handed to `Int8Params` (dequantized
/// weight + delta): the I8 codes and `SCB` bitsandbytes wrote, byte for byte.
#[test]
fn bnb_int8_requantizes_bit_exact() {
    let ck = Checkpoint::open(fixture("qlora/peft_merged_int8.safetensors")).unwrap();
    let mut n = 0;
    for name in ck.names().filter(|n| n.ends_with(".merged")) {
        let m = name.strip_suffix(".merged").unwrap();
        let v = ck.view(name).unwrap();
        let (q, scb) = int8::quantize(&v.to_f32(), v.shape[1]);
        let want = ck.view(&format!("{m}.weight")).unwrap().data;
        assert_same(Dtype::I8, &q, want, m);
        let want = ck.view(&format!("{m}.SCB")).unwrap().data;
        assert_same(Dtype::F32, &stored(Dtype::F32, &scb), want, m);
        n += 1;
    }
    assert_eq!(n, 4);
}

/// The two steps of compress_statistics on absmax vectors of awkward lengths (1 to 33000, one
/// torch thread): torch's mean and bitsandbytes' CPU quantize_blockwise, exact.
#[test]
fn torch_mean_and_bnb_blockwise_quantizer_match() {
    let edge = Checkpoint::open(fixture("dq_edge.safetensors")).unwrap();
    let model = Checkpoint::open(fixture("nf4_dq")).unwrap();
    let code = model
        .view("model.layers.0.self_attn.q_proj.weight.nested_quant_map")
        .unwrap()
        .to_f32();
    let mut cases = 0;
    for name in edge.names().filter(|n| n.ends_with(".absmax")) {
        let n = name.strip_suffix(".absmax").unwrap();
        let absmax = edge.view(name).unwrap().to_f32();
        let (offset, codes, nabs) = bnb4_dq::compress_statistics(&absmax, &code, 256);
        let want = edge.view(&format!("{n}.offset")).unwrap().to_f32()[0];
        assert_eq!(
            offset.to_bits(),
            want.to_bits(),
            "{n}: mean {offset} vs {want}"
        );
        assert_same(
            Dtype::U8,
            &codes,
            edge.view(&format!("{n}.codes")).unwrap().data,
            n,
        );
        let want = edge.view(&format!("{n}.nested_absmax")).unwrap().data;
        assert_same(Dtype::F32, &stored(Dtype::F32, &nabs), want, n);
        cases += 1;
    }
    assert_eq!(cases, 11);
}

/// FP8: dequantization against `Fp8Dequantize`, quantization against `Fp8Quantize` (128×128
/// blocks with an all-zero block, and per tensor), from bf16 sources.
#[test]
fn fp8_edge_cases_match_transformers() {
    let ck = Checkpoint::open(fixture("fp8_edge.safetensors")).unwrap();
    let map = QuantMap::scan(&ck).unwrap();
    assert_eq!(map.len(), 3);
    // Power-of-two F8_E8M0 scales (scale_fmt ue8m0): dequantized to bf16, as transformers does.
    let q = map.get("ue8m0.weight").unwrap();
    assert_eq!(q.natural_dtype(), Dtype::BF16);
    let expected = ck.view("ue8m0.expected").unwrap();
    let got = map.dequantize(&ck, q).unwrap();
    assert_same(
        Dtype::BF16,
        &stored(Dtype::BF16, &got),
        expected.data,
        "ue8m0",
    );
    for (case, block) in [("block128", Some((128, 128))), ("per_tensor", None)] {
        let q = map.get(&format!("{case}.weight")).unwrap();
        let got = map.dequantize(&ck, q).unwrap();
        let expected = ck.view(&format!("{case}.expected")).unwrap();
        assert_same(Dtype::F32, &stored(Dtype::F32, &got), expected.data, case);
        let source = ck.view(&format!("{case}.source")).unwrap().to_f32();
        let (rows, cols) = (q.shape[0], q.shape[1]);
        let (bm, bn) = block.unwrap_or((rows, cols));
        let (bytes, inv) = fp8::quantize(&source, rows, cols, bm, bn);
        let want = ck.view(&q.name).unwrap().data;
        assert_same(Dtype::U8, &bytes, want, &format!("{case}: fp8 bytes"));
        let want = ck.view(&format!("{case}.weight_scale_inv")).unwrap().data;
        assert_same(Dtype::F32, &stored(Dtype::F32, &inv), want, case);
    }
}

/// Hostile variations of real quantized checkpoints (every format): a tensor removed, its dtype
/// or shape changed (with data of the matching length), its bytes scrambled, a state blob
/// rewritten. Recognising and dequantizing must end in a result or an error, never a panic or an
/// out-of-bounds read. Deterministic (the one seeded generator, `linalg::rng`).
#[test]
fn mutated_quantized_checkpoints_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = crate::linalg::rng::Xoshiro256PlusPlus::seed_from_u64(0x9E37_79B9);
    let mut next = move || rng.next_u64();
    let dtypes = [
        Dtype::U8,
        Dtype::I8,
        Dtype::F32,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::I64,
        Dtype::F8_E4M3,
    ];
    let (mut opened, mut scanned, mut dequantized) = (0, 0, 0);
    for model in ["nf4_dq", "fp4", "int8", "fp8_block", "ct_pack"] {
        let src = SafetensorsFile::open(fixture(&format!("{model}/model.safetensors"))).unwrap();
        let base: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = src
            .tensors()
            .iter()
            .map(|t| {
                let v = src.view_info(t).unwrap();
                (t.name.clone(), t.dtype, t.shape.clone(), v.data.to_vec())
            })
            .collect();
        for case in 0..60 {
            let mut tensors = base.clone();
            // Mutate one or two quantization-related tensors (names with a companion suffix or
            // the layer-0 weights), so most cases reach the quantization checks.
            for _ in 0..1 + next() % 2 {
                let candidates: Vec<usize> = (0..tensors.len())
                    .filter(|&i| tensors[i].0.contains("layers.0."))
                    .collect();
                let i = candidates[(next() as usize) % candidates.len()];
                let t = &mut tensors[i];
                match next() % 6 {
                    0 => {
                        tensors.remove(i);
                    }
                    1 => {
                        // Another dtype, data resized to match.
                        t.1 = dtypes[(next() as usize) % dtypes.len()];
                        let n: usize = t.2.iter().product();
                        t.3 = vec![0x3C; crate::dtype::byte_len(t.1, n).unwrap()];
                    }
                    2 => {
                        // Another shape with the same or a different element count.
                        let n: usize = t.2.iter().product();
                        let m = match next() % 3 {
                            0 => n,
                            1 => n / 2 + 1,
                            _ => n * 2,
                        };
                        t.2 = if next() % 2 == 0 { vec![m] } else { vec![1, m] };
                        t.3 = vec![0x41; crate::dtype::byte_len(t.1, m).unwrap()];
                    }
                    3 => {
                        for b in t.3.iter_mut() {
                            *b = next() as u8;
                        }
                    }
                    4 if t.0.contains("quant_state") => {
                        let blobs: [&[u8]; 4] = [
                            br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [1000000, 1000000]}"#,
                            br#"{"quant_type": "fp4", "blocksize": 32, "dtype": "bfloat16", "shape": [3], "nested_blocksize": 1, "nested_offset": 1e39}"#,
                            br#"{"quant_type": "nf4", "blocksize": 4096, "dtype": "float16", "shape": [18446744073709551615, 2]}"#,
                            b"\xff\xfe{",
                        ];
                        t.3 = blobs[(next() as usize) % blobs.len()].to_vec();
                        t.2 = vec![t.3.len()];
                        t.1 = Dtype::U8;
                    }
                    _ => {
                        // Scale-like tensors to extremes.
                        if crate::dtype::is_float_compute(t.1) {
                            let n: usize = t.2.iter().product();
                            let v: Vec<f32> = (0..n)
                                .map(|k| [f32::NAN, 0.0, -0.0, f32::INFINITY, 1e-45, 3e38][k % 6])
                                .collect();
                            t.3 = crate::dtype::encode(t.1, &v);
                        }
                    }
                }
            }
            let folder = dir.path().join(format!("{model}-{case}"));
            std::fs::create_dir(&folder).unwrap();
            std::fs::copy(
                fixture(&format!("{model}/config.json")),
                folder.join("config.json"),
            )
            .unwrap();
            let specs: Vec<(String, Dtype, Vec<usize>)> = tensors
                .iter()
                .map(|t| (t.0.clone(), t.1, t.2.clone()))
                .collect();
            let mut bytes = crate::io::header::serialize(&[], &specs);
            for t in &tensors {
                bytes.extend_from_slice(&t.3);
            }
            std::fs::write(folder.join("model.safetensors"), bytes).unwrap();
            let Ok(ck) = Checkpoint::open(&folder) else {
                continue;
            };
            opened += 1;
            let Ok(map) = QuantMap::scan(&ck) else {
                continue;
            };
            scanned += 1;
            for q in map.iter() {
                if map.dequantize(&ck, q).is_ok() {
                    dequantized += 1;
                }
            }
        }
    }
    // The sweep reached every stage.
    assert!(
        opened > 250 && scanned > 50 && dequantized > 500,
        "{opened} {scanned} {dequantized}"
    );
}

/// compressed-tensors FP8 per-channel / per-tensor requantization from the exact f32 input
/// compressed-tensors' own observer + `calculate_qparams` + `compress` was given
/// (`fixtures/gen/ct_fp8_fixtures.py`): the E4M3 bytes and the fresh `weight_scale` (bf16, f16,
/// f32), byte for byte, on all 14 weights.
#[test]
fn ct_fp8_requantizes_bit_exact() {
    let ck = Checkpoint::open(fixture("qlora/ct_fp8_keep.safetensors")).unwrap();
    let mut n = 0;
    for name in ck.names().filter(|n| n.ends_with(".merged")) {
        let m = name.strip_suffix(".merged").unwrap();
        let v = ck.view(name).unwrap();
        let s = ck.view(&format!("{m}.weight_scale")).unwrap();
        let (rows, cols) = (v.shape[0], v.shape[1]);
        let layout = if s.shape.iter().product::<usize>() == 1 {
            fp8::Layout {
                block_m: rows,
                block_n: cols,
                grid_rows: 1,
                grid_cols: 1,
            }
        } else {
            fp8::Layout {
                block_m: 1,
                block_n: cols,
                grid_rows: rows,
                grid_cols: 1,
            }
        };
        let (q, scales) = fp8::quantize_ct(&v.to_f32(), rows, cols, &layout, s.dtype);
        let want = ck.view(&format!("{m}.weight")).unwrap().data;
        assert_same(Dtype::F8_E4M3, &q, want, m);
        assert_same(s.dtype, &stored(s.dtype, &scales), s.data, m);
        n += 1;
    }
    assert_eq!(n, 14);
}

/// bitsandbytes' `create_dynamic_map()` (torch's f32 linspace included) equals the nested code
/// map bitsandbytes stored in every double-quant weight transformers saved, byte for byte.
#[test]
fn dynamic_map_equals_the_map_bitsandbytes_stores() {
    let model = Checkpoint::open(fixture("nf4_dq")).unwrap();
    let mine = stored(Dtype::F32, &bnb4_dq::dynamic_map());
    let mut n = 0;
    for name in model.names().filter(|n| n.ends_with(".nested_quant_map")) {
        assert_same(Dtype::F32, &mine, model.view(name).unwrap().data, name);
        n += 1;
    }
    assert_eq!(n, 14);
    assert_eq!(bnb4_dq::torch_linspace_f32(0.1, 1.0, 1), vec![0.1]);
}
