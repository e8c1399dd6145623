//! GGUF (llama.cpp) through the binary: `inspect` and `diff` on files written by gguf-py,
//! malformed files refused in one line.

use super::common::*;

fn g(name: &str) -> String {
    fixture(&format!("gguf/{name}"))
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn inspect_gguf_json_speaks_the_report_vocabulary() {
    let j = run_ok(["inspect", &g("types.gguf"), "--tensors", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    let obj = v.as_object().unwrap();
    assert_eq!(obj.keys().next().map(String::as_str), Some("operation"));
    assert_eq!(v["operation"], "inspect");
    assert_eq!(v["kind"], "gguf");
    assert_eq!(v["files"], serde_json::json!(["types.gguf"]));
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["version"], 3);
    assert_eq!(v["tensor_count"], 15);
    assert_eq!(v["dtypes"]["Q8_0"]["tensor_count"], 2);
    assert_eq!(v["dtypes"]["Q6_K"]["bytes"], 840);
    assert_eq!(v["unsupported_types"], serde_json::json!(["IQ4_NL"]));
    assert_eq!(v["metadata"]["test.u32"]["type"], "UINT32");
    assert_eq!(v["metadata"]["test.u32"]["value"], 4_000_000_000u64);
    assert_eq!(
        v["metadata"]["test.nested"]["values"],
        serde_json::json!([[1, 2], [3]])
    );
    let t = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "t.q8_0_3d")
        .unwrap();
    // PyTorch order: ggml's dims [32, 3, 2] reversed.
    assert_eq!(t["shape"], serde_json::json!([2, 3, 32]));
    assert_eq!(t["dtype"], "Q8_0");
}

#[test]
fn inspect_a_split_gguf_lists_every_part() {
    let out = run_ok(["inspect", &g("split-00003-of-00003.gguf")]);
    assert!(out.contains("layout      split (3 files)"), "{out}");
    assert!(out.contains("tensors     5"), "{out}");
}

#[test]
fn diff_of_gguf_files_compares_dequantized_values() {
    // types.f32.gguf holds gguf-py's dequantization of every tensor of types.gguf.
    let out = run_err(["diff", &g("types.gguf"), &g("types.f32.gguf"), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["operation"], "diff");
    assert_eq!(v["failed"], 1, "the IQ4_NL tensor is only in A");
    assert_eq!(v["max_abs_diff"], 0.0);
    assert_eq!(v["dtype_changes"], 13);
    let out = run_ok([
        "diff",
        &g("types.gguf"),
        &g("types.f32.gguf"),
        "--common",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pass"], true);
    // A GGUF model against a Hugging Face checkpoint is compared in Hugging Face terms (names
    // mapped back, llama q/k rows un-permuted): the converted base equals its source exactly.
    for (gguf, hf) in [
        ("llama_f32.gguf", "llama/base"),
        ("qwen2_bf16.gguf", "llama/qwen2"),
    ] {
        let j = run_ok(["diff", &g(gguf), fixture(hf).to_str().unwrap(), "--json"]);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["pass"], true, "{gguf}");
        assert_eq!(v["identical"], v["tensors_compared"], "{gguf}");
        assert_eq!(v["only_in_a"], 0);
        assert_eq!(v["only_in_b"], 0);
    }
    // A merged GGUF against PEFT's merge (which holds the changed tensors only), either order.
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.gguf");
    let adapter = fixture("llama/adapters/rslora_all");
    merge_json(&g("llama_f32.gguf"), adapter.to_str().unwrap(), &m, &[]);
    let peft = fixture("llama/merged/rslora_all.safetensors");
    let (m, peft) = (m.to_str().unwrap(), peft.to_str().unwrap());
    run_ok(["diff", m, peft, "--common", "--tolerance", "1e-6"]);
    run_ok(["diff", peft, m, "--common", "--tolerance", "1e-6"]);
    assert_eq!(
        run_err(["diff", m, peft, "--common"]).status.code(),
        Some(1)
    );
}

/// Hostile GGUF files: one line naming the file and the problem, exit 2.
#[test]
fn malformed_gguf_files_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = std::fs::read(fixture("gguf/tiny.gguf")).unwrap();
    let find = |name: &[u8]| {
        let mut pat = (name.len() as u64).to_le_bytes().to_vec();
        pat.extend_from_slice(name);
        pat.extend_from_slice(&2u32.to_le_bytes());
        tiny.windows(pat.len()).position(|w| w == pat).unwrap() + pat.len()
    };
    // Tensor `b`: dims at +0, type at +16, offset at +20 (after its n_dims).
    let b = find(b"b");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            tiny[..tiny.len() - 40].to_vec(),
            "runs past the end",
        ),
        (
            "offset",
            {
                let mut t = tiny.clone();
                t[b + 20..b + 28].copy_from_slice(&0u64.to_le_bytes());
                t
            },
            "tensor `b`: data offset 0 is not the expected 512",
        ),
        (
            "type",
            {
                let mut t = tiny.clone();
                t[b + 16..b + 20].copy_from_slice(&99u32.to_le_bytes());
                t
            },
            "tensor `b`: unknown ggml type id 99",
        ),
        (
            "blocks",
            {
                let mut t = tiny.clone();
                t[b..b + 8].copy_from_slice(&48u64.to_le_bytes());
                t
            },
            "tensor `b`: row length 48 of type Q8_0 is not a multiple of its block size 32",
        ),
        (
            "count",
            {
                let mut t = tiny.clone();
                t[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
                t
            },
            "header claims 18446744073709551615 tensors",
        ),
    ];
    for (name, bytes, want) in cases {
        let p = dir.path().join(format!("{name}.gguf"));
        std::fs::write(&p, bytes).unwrap();
        for cmd in [vec!["inspect", p.to_str().unwrap()], {
            vec!["diff", p.to_str().unwrap(), p.to_str().unwrap()]
        }] {
            let e = one_line_error(&run_err(&cmd));
            assert!(
                e.starts_with(&format!("error: {}: ", p.display())) && e.contains(want),
                "{name}: {e}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// merge --base MODEL.gguf
// ---------------------------------------------------------------------------------------------

use lorakit::io::gguf::{names, GgmlType, GgufModel};
use std::collections::BTreeMap;
use std::path::Path;

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

fn merge_json(base: &str, adapter: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "merge",
        "--base",
        base,
        "--adapter",
        adapter,
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&run_ok(args)).unwrap()
}

/// An F32 GGUF base (the fixture Llama as convert_hf_to_gguf lays it out) merged with PEFT
/// adapters equals PEFT's own merge_and_unload once the q/k permutation is undone (1e-6
/// relative per tensor, as every safetensors merge test); untouched tensors are byte copies.
/// rslora_all adapts every linear module, k_proj included (4 q heads, 2 kv heads).
#[test]
fn merge_into_an_f32_gguf_equals_the_peft_merge() {
    for case in ["qv_r8", "rslora_all"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        let v = merge_json(
            &g("llama_f32.gguf"),
            fixture(&format!("llama/adapters/{case}")).to_str().unwrap(),
            &out,
            &[],
        );
        assert_eq!(v["operation"], "merge");
        assert_eq!(v["files"], serde_json::json!([out.to_str().unwrap()]));
        let got = hf_view(&out);
        let base = hf_view(&fixture("gguf/llama_f32.gguf"));
        let reference = read(&fixture(&format!("llama/merged/{case}.safetensors")));
        assert_eq!(got.len(), base.len());
        let mut changed = 0;
        for (name, (ty, shape, vals, bytes)) in &got {
            assert_eq!(*ty, GgmlType::F32, "{name}");
            match reference.get(name) {
                Some(r) => {
                    assert_eq!(*shape, r.shape, "{name}");
                    let e = rel_err(vals, &r.f32());
                    assert!(e <= 1e-6, "{case} {name}: relative error {e:e}");
                    changed += 1;
                }
                None => assert_eq!(*bytes, base[name].3, "{case} {name}: not a byte copy"),
            }
        }
        assert_eq!(changed, reference.len(), "{case}");
        assert_eq!(v["tensors_merged_count"], changed);
        // F32 stores the f32 merge exactly.
        for t in v["merged_tensors"].as_array().unwrap() {
            assert_eq!(t["quant_rel_fro_error"], 0.0);
        }
    }
}

/// Per block of 32: the largest error Q8_0 (`d = amax/127` stored as f16, `q = round(x/d)`)
/// or Q4_0 (`d = max/-8`, one level clipped at the far end) can make.
fn block_bound(ty: GgmlType, block: &[f32]) -> f32 {
    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    match ty {
        // Rounding (d/2) plus 127 steps of the f16 rounding of d (≤ d·2⁻¹¹).
        GgmlType::Q8_0 => amax / 127.0 * (0.5 + 127.0 / 2048.0) * 1.0001,
        // One clipped level (|d|) plus 8 steps of the f16 rounding of d.
        GgmlType::Q4_0 => amax / 8.0 * (1.0 + 8.0 / 2048.0) * 1.0001,
        _ => unreachable!(),
    }
}

/// Quantized bases: with `--outtype f32` the merge is the dequantized base plus PEFT's ΔW
/// (1e-6 relative); with `keep` each merged tensor is stored in its base type and differs from
/// that f32 merge by no more than the type's rounding, block by block, and the report states
/// that error.
#[test]
fn merge_into_quantized_gguf_keeps_types_within_their_rounding() {
    let f32_base = hf_view(&fixture("gguf/llama_f32.gguf"));
    let peft = read(&fixture("llama/merged/qv_r8.safetensors"));
    let adapter = fixture("llama/adapters/qv_r8");
    for (file, ty) in [
        ("llama_q8_0.gguf", GgmlType::Q8_0),
        ("llama_q4_0.gguf", GgmlType::Q4_0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let qbase = hf_view(&fixture(&format!("gguf/{file}")));
        // The exact merge of this base: its dequantized values plus PEFT's ΔW.
        let expected: BTreeMap<&String, Vec<f32>> = peft
            .iter()
            .map(|(name, r)| {
                let merged = r.f32();
                let delta = merged.iter().zip(&f32_base[name].2).map(|(m, b)| m - b);
                (
                    name,
                    qbase[name]
                        .2
                        .iter()
                        .zip(delta)
                        .map(|(q, d)| q + d)
                        .collect(),
                )
            })
            .collect();
        let f32_out = dir.path().join("f32.gguf");
        merge_json(
            &g(file),
            adapter.to_str().unwrap(),
            &f32_out,
            &["--outtype", "f32"],
        );
        let got = hf_view(&f32_out);
        for (name, want) in &expected {
            assert_eq!(got[*name].0, GgmlType::F32);
            let e = rel_err(&got[*name].2, want);
            assert!(e <= 1e-6, "{file} {name}: {e:e}");
        }
        let keep_out = dir.path().join("keep.gguf");
        let v = merge_json(&g(file), adapter.to_str().unwrap(), &keep_out, &[]);
        assert_eq!(v["outtype"], "keep");
        let got = hf_view(&keep_out);
        for (name, (t, _, vals, bytes)) in &got {
            assert_eq!(*t, qbase[name].0, "{name}: type kept");
            let Some(want) = expected.get(name) else {
                assert_eq!(*bytes, qbase[name].3, "{name}: byte copy");
                continue;
            };
            let mut max = 0f64;
            for (i, (gb, wb)) in vals.chunks(32).zip(want.chunks(32)).enumerate() {
                let bound = block_bound(ty, wb);
                for (x, y) in gb.iter().zip(wb) {
                    let e = (x - y).abs();
                    assert!(e <= bound, "{file} {name} block {i}: {e} > {bound}");
                    max = max.max(e as f64);
                }
            }
            let row = v["merged_tensors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| names::hf_name(r["name"].as_str().unwrap()).as_ref() == Some(name))
                .unwrap();
            let reported = row["quant_max_abs_error"].as_f64().unwrap();
            assert!(
                max > 0.0 && (reported - max).abs() <= 1e-6 * max + 1e-7,
                "{name}: {reported} vs {max}"
            );
            assert_eq!(row["type"], ty.name());
        }
    }
}

/// Merge then unmerge with --outtype f32 gives the base back (to f32 rounding).
#[test]
fn unmerge_from_a_gguf_restores_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("llama/adapters/rslora_all");
    let (m, u) = (dir.path().join("m.gguf"), dir.path().join("u.gguf"));
    merge_json(&g("llama_f32.gguf"), adapter.to_str().unwrap(), &m, &[]);
    let v = merge_json(
        m.to_str().unwrap(),
        adapter.to_str().unwrap(),
        &u,
        &["--unmerge"],
    );
    assert_eq!(v["operation"], "unmerge");
    let (got, base) = (hf_view(&u), hf_view(&fixture("gguf/llama_f32.gguf")));
    for (name, t) in &got {
        let e = rel_err(&t.2, &base[name].2);
        assert!(e <= 1e-6, "{name}: {e:e}");
    }
}

/// Refusals before anything is written: the output onto the base, an adapter whose modules
/// are not in the base, safetensors-only flags, --outtype on a safetensors base.
#[test]
fn gguf_merge_refusals_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.gguf");
    std::fs::copy(fixture("gguf/llama_q8_0.gguf"), &base).unwrap();
    let before = std::fs::read(&base).unwrap();
    let qv = fixture("llama/adapters/qv_r8");
    let qv = qv.to_str().unwrap();
    let b = base.to_str().unwrap();
    let out = dir.path().join("o.gguf");
    let o = out.to_str().unwrap();
    let tiny = g("tiny.gguf");
    let hf_base = fixture("llama/base");
    let hf_base = hf_base.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["merge", "--base", b, "--adapter", qv, "--out", b],
            "output is also an input",
        ),
        (
            vec!["merge", "--base", &tiny, "--adapter", qv, "--out", o],
            "match no tensor of the GGUF base",
        ),
        (
            vec![
                "merge",
                "--base",
                b,
                "--adapter",
                qv,
                "--out",
                o,
                "--part",
                "1/2",
            ],
            "--part is not supported for GGUF outputs",
        ),
        (
            vec![
                "merge",
                "--base",
                b,
                "--adapter",
                qv,
                "--out",
                o,
                "--dtype",
                "f16",
            ],
            "--dtype (use --outtype)",
        ),
        (
            vec![
                "merge",
                "--base",
                hf_base,
                "--adapter",
                qv,
                "--out",
                o,
                "--outtype",
                "q8_0",
            ],
            "--outtype sets the type of tensors merged into a GGUF base",
        ),
    ];
    let allow = vec![
        "merge",
        "--base",
        &tiny,
        "--adapter",
        qv,
        "--out",
        o,
        "--allow-unmatched",
    ];
    let cases = cases
        .into_iter()
        .chain([(allow, "no adapter module matches a tensor of the GGUF base")]);
    for (args, want) in cases {
        let e = one_line_error(&run_err(&args));
        assert!(e.contains(want), "{args:?}: {e}");
    }
    let e = run_err([
        "merge",
        "--base",
        b,
        "--adapter",
        qv,
        "--out",
        o,
        "--outtype",
        "q4_k",
    ]);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("unknown or unwritable GGUF type `q4_k`"));
    assert_eq!(std::fs::read(&base).unwrap(), before);
    assert_eq!(listing(dir.path()), ["base.gguf"]);
}

// ---------------------------------------------------------------------------------------------
// convert ADAPTER --to gguf
// ---------------------------------------------------------------------------------------------

/// `ΔW` of every pair of a GGUF LoRA adapter as llama.cpp applies it (`src/llama-adapter.cpp`,
/// `llm_build_lora_mm` / `llm_build_inp_embd`): `alpha / rank · B·A` with rank = `b.ne[0]`,
/// `token_embd` with A stored `[vocab, r]`; rows of q/k un-permuted to Hugging Face order.
/// Returned by HF tensor name, `[out, in]` row-major (`[vocab, dim]` for the embedding).
fn gguf_adapter_deltas(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let m = GgufModel::open(path).unwrap();
    let h = m.header();
    assert_eq!(
        h.get("general.type").and_then(|v| v.as_str()),
        Some("adapter")
    );
    assert_eq!(h.get("adapter.type").and_then(|v| v.as_str()), Some("lora"));
    assert_eq!(h.architecture(), Some("llama"));
    let alpha = h
        .get("adapter.lora.alpha")
        .and_then(|v| v.as_f64())
        .unwrap();
    let mut out = BTreeMap::new();
    for (f, t) in m.tensors() {
        let Some(base) = t.name.strip_suffix(".lora_a") else {
            assert!(t.name.ends_with(".lora_b"), "{}", t.name);
            continue;
        };
        let (_, tb) = m.get(&format!("{base}.lora_b")).unwrap();
        let (a, b) = (f.dequantize(t).unwrap(), f.dequantize(tb).unwrap());
        let r = tb.dims[0] as usize;
        let out_f = tb.dims[1] as usize;
        assert_eq!(t.dims.len(), 2);
        let scale = if alpha == 0.0 { 1.0 } else { alpha / r as f64 };
        let hf = names::hf_name(base).unwrap();
        let delta: Vec<f32> = if base == "token_embd.weight" {
            // lora_a is [vocab, r] (dims [r, vocab]); row t of ΔW is B·a_t.
            assert_eq!(t.dims[0] as usize, r);
            let vocab = t.dims[1] as usize;
            (0..vocab * out_f)
                .map(|i| {
                    let (tok, j) = (i / out_f, i % out_f);
                    let s: f64 = (0..r)
                        .map(|k| b[j * r + k] as f64 * a[tok * r + k] as f64)
                        .sum();
                    (scale * s) as f32
                })
                .collect()
        } else {
            assert_eq!(t.dims[1] as usize, r, "lora_a is [r, in] (dims [in, r])");
            let in_f = t.dims[0] as usize;
            let d: Vec<f32> = (0..out_f * in_f)
                .map(|i| {
                    let (o, c) = (i / in_f, i % in_f);
                    let s: f64 = (0..r)
                        .map(|k| b[o * r + k] as f64 * a[k * in_f + c] as f64)
                        .sum();
                    (scale * s) as f32
                })
                .collect();
            let heads = if base.ends_with("attn_q.weight") {
                Some(N_HEAD)
            } else if base.ends_with("attn_k.weight") {
                Some(N_HEAD_KV)
            } else {
                None
            };
            match heads {
                Some(hh) => names::unpermute_rows(&d, out_f, in_f, hh),
                None => d,
            }
        };
        out.insert(hf, delta);
    }
    out
}

/// A PEFT adapter written as a llama.cpp adapter applies, as llama.cpp computes it, exactly
/// PEFT's ΔW (its merge_and_unload minus the base; 1e-6 relative): q/k rows permuted like the
/// GGUF base, rsLoRA's scale folded into B (llama.cpp has one alpha / rank rule), the
/// embedding's A transposed. With a GGUF base or the Hugging Face folder alike.
#[test]
fn convert_to_gguf_applies_the_peft_delta_as_llama_cpp_computes_it() {
    let base = read(&fixture("llama/base/model.safetensors"));
    for (case, base_arg, folded) in [
        ("qv_r8", "gguf/llama_q8_0.gguf", 0),
        ("rslora_all", "llama/base", 14),
        ("embed", "gguf/llama_f32.gguf", 0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.gguf");
        let j = run_ok([
            "convert",
            fixture(&format!("llama/adapters/{case}")).to_str().unwrap(),
            "--to",
            "gguf",
            "--base",
            fixture(base_arg).to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["operation"], "convert");
        assert_eq!(v["folded_count"], folded, "{case}");
        let deltas = gguf_adapter_deltas(&out);
        let reference = read(&fixture(&format!("llama/merged/{case}.safetensors")));
        assert_eq!(
            deltas.keys().collect::<Vec<_>>(),
            reference.keys().collect::<Vec<_>>(),
            "{case}"
        );
        for (name, r) in &reference {
            let want: Vec<f32> = r
                .f32()
                .iter()
                .zip(base[name].f32())
                .map(|(m, b)| m - b)
                .collect();
            let e = rel_err(&deltas[name], &want);
            assert!(e <= 1e-6, "{case} {name}: {e:e}");
        }
    }
}

#[test]
fn convert_to_gguf_refuses_what_llama_cpp_cannot_apply() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.gguf");
    let o = out.to_str().unwrap();
    let base = fixture("llama/base");
    let b = base.to_str().unwrap();
    for (case, extra, want) in [
        (
            "dora",
            vec!["--base", b],
            "is DoRA, which llama.cpp adapters cannot hold",
        ),
        (
            "modules_to_save",
            vec!["--base", b],
            "(modules_to_save): a llama.cpp adapter holds LoRA pairs only",
        ),
        ("qv_r8", vec![], "--to gguf needs --base"),
        (
            "qv_r8",
            vec!["--base", &g("tiny.gguf")],
            "no tensor `blk.0.attn_q.weight`",
        ),
    ] {
        let a = fixture(&format!("llama/adapters/{case}"));
        let mut args = vec!["convert", a.to_str().unwrap(), "--to", "gguf", "-o", o];
        args.extend(extra);
        let e = one_line_error(&run_err(&args));
        assert!(e.contains(want), "{case}: {e}");
        assert!(!out.exists());
    }
}

/// llama.cpp GGUF adapters as merge inputs: lorakit's conversion of a PEFT adapter, merged into
/// the GGUF base and into the Hugging Face base, equals PEFT's own merge (1e-6), so reading
/// undoes exactly what writing did (names, q/k permutation, embedding layout, folded scales).
#[test]
fn gguf_adapters_merge_into_gguf_and_hf_bases_as_peft() {
    let hf_base = read(&fixture("llama/base/model.safetensors"));
    for case in ["qv_r8", "rslora_all", "embed"] {
        let dir = tempfile::tempdir().unwrap();
        let ad = dir.path().join("a.gguf");
        run_ok([
            "convert",
            fixture(&format!("llama/adapters/{case}")).to_str().unwrap(),
            "--to",
            "gguf",
            "--base",
            fixture("llama/base").to_str().unwrap(),
            "-o",
            ad.to_str().unwrap(),
        ]);
        let reference = read(&fixture(&format!("llama/merged/{case}.safetensors")));
        // Into the GGUF base.
        let out = dir.path().join("m.gguf");
        merge_json(&g("llama_f32.gguf"), ad.to_str().unwrap(), &out, &[]);
        let got = hf_view(&out);
        for (name, r) in &reference {
            let e = rel_err(&got[name].2, &r.f32());
            assert!(e <= 1e-6, "{case} gguf {name}: {e:e}");
        }
        // Into the Hugging Face base.
        let out = dir.path().join("m.safetensors");
        run_ok([
            "merge",
            "--base",
            fixture("llama/base/model.safetensors").to_str().unwrap(),
            "--adapter",
            ad.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_matches_reference(&read(&out), &hf_base, &reference, 1e-6);
    }
    // A GGUF model is not an adapter; an adapter for another architecture is refused.
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("o.gguf");
    let e = one_line_error(&run_err([
        "merge",
        "--base",
        &g("llama_f32.gguf"),
        "--adapter",
        &g("llama_q8_0.gguf"),
        "--out",
        o.to_str().unwrap(),
    ]));
    assert!(e.contains("is a GGUF model (general.type ``"), "{e}");
    let ad = dir.path().join("a.gguf");
    run_ok([
        "convert",
        fixture("llama/adapters/qv_r8").to_str().unwrap(),
        "--to",
        "gguf",
        "--base",
        fixture("llama/base").to_str().unwrap(),
        "-o",
        ad.to_str().unwrap(),
    ]);
    let e = one_line_error(&run_err([
        "merge",
        "--base",
        fixture("llama/qwen2").to_str().unwrap(),
        "--adapter",
        ad.to_str().unwrap(),
        "--out",
        dir.path().join("q").to_str().unwrap(),
    ]));
    assert!(
        e.contains("adapter architecture `llama` does not match the base's `qwen2`"),
        "{e}"
    );
    assert_eq!(listing(dir.path()), ["a.gguf"]);
}

/// Split out and split in: `--max-shard-size` writes parts as gguf-py's `split_max_size` does
/// (here 4 parts of ≤ 100 kB of tensor data, `split.*` keys in each), they open as one model
/// equal to PEFT's merge, and unmerging from the split model gives the base back; `--dry-run`
/// plans the same parts and writes nothing.
#[test]
fn gguf_merge_splits_and_reads_its_split_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let adapter = fixture("llama/adapters/qv_r8");
    let v = merge_json(
        &g("llama_f32.gguf"),
        adapter.to_str().unwrap(),
        &out,
        &["--max-shard-size", "100KB"],
    );
    let files: Vec<String> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(files[2].ends_with("m-00003-of-00004.gguf"));
    assert_eq!(
        listing(dir.path()),
        (1..=4)
            .map(|i| format!("m-0000{i}-of-00004.gguf"))
            .collect::<Vec<_>>()
    );
    let m = GgufModel::open(&files[3]).unwrap();
    for (i, f) in m.files.iter().enumerate() {
        let h = f.header();
        assert!(
            f.tensors().iter().map(|t| t.bytes).sum::<u64>() <= 100_000 || f.tensors().len() == 1
        );
        assert_eq!(h.get("split.no").and_then(|x| x.as_u64()), Some(i as u64));
        assert_eq!(
            h.get("split.tensors.count").and_then(|x| x.as_u64()),
            Some(21)
        );
    }
    let got = hf_view(Path::new(&files[0]));
    for (name, r) in read(&fixture("llama/merged/qv_r8.safetensors")) {
        let e = rel_err(&got[&name].2, &r.f32());
        assert!(e <= 1e-6, "{name}: {e:e}");
    }
    // --dry-run states the same layout and writes nothing.
    let dry = merge_json(
        &g("llama_f32.gguf"),
        adapter.to_str().unwrap(),
        &dir.path().join("dry.gguf"),
        &["--max-shard-size", "100KB", "--dry-run"],
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["files"].as_array().unwrap().len(), 4);
    assert_eq!(dry["tensors_merged_count"], 4);
    assert_eq!(listing(dir.path()).len(), 4);
    let back = dir.path().join("b.gguf");
    merge_json(&files[1], adapter.to_str().unwrap(), &back, &["--unmerge"]);
    let base = hf_view(&fixture("gguf/llama_f32.gguf"));
    for (name, t) in hf_view(&back) {
        let e = rel_err(&t.2, &base[&name].2);
        assert!(e <= 1e-6, "{name}: {e:e}");
    }
}

/// Qwen2 (llama.cpp's Qwen2Model writes q/k unpermuted, attention biases kept): a BF16 GGUF
/// base merged with a PEFT adapter on q/k/v/o/down equals the float64 merge computed from the
/// files by the fixture generator — 1e-6 with `--outtype f32`, and within one bf16 rounding
/// (2⁻⁸ relative per element) with `keep`; biases and untouched tensors are byte copies.
#[test]
fn merge_into_a_qwen2_gguf_is_not_permuted() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("llama/adapters/qwen2_lora");
    let expected = GgufModel::open(fixture("gguf/qwen2_lora.expected.gguf")).unwrap();
    let base = GgufModel::open(fixture("gguf/qwen2_bf16.gguf")).unwrap();
    for outtype in ["f32", "keep"] {
        let out = dir.path().join(format!("{outtype}.gguf"));
        let v = merge_json(
            &g("qwen2_bf16.gguf"),
            adapter.to_str().unwrap(),
            &out,
            &["--outtype", outtype],
        );
        assert_eq!(v["architecture"], "qwen2");
        assert_eq!(v["tensors_merged_count"], expected.len());
        let got = GgufModel::open(&out).unwrap();
        for (f, t) in got.tensors() {
            let Some((ef, et)) = expected.get(&t.name) else {
                let (bf, bt) = base.get(&t.name).unwrap();
                assert_eq!(f.view(t).data, bf.view(bt).data, "{}", t.name);
                continue;
            };
            let (x, y) = (f.dequantize(t).unwrap(), ef.dequantize(et).unwrap());
            if outtype == "f32" {
                let e = rel_err(&x, &y);
                assert!(e <= 1e-6, "{}: {e:e}", t.name);
            } else {
                assert_eq!(t.ty, GgmlType::BF16);
                for (a, b) in x.iter().zip(&y) {
                    assert!((a - b).abs() <= b.abs() / 256.0, "{}: {a} vs {b}", t.name);
                }
            }
        }
    }
}

fn kinds(v: &serde_json::Value, out: &mut Vec<(String, &'static str)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let kind = match x {
                    serde_json::Value::Array(_) => "list",
                    serde_json::Value::Number(_) => "number",
                    _ => "other",
                };
                out.push((k.clone(), kind));
                kinds(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| kinds(x, out)),
        _ => {}
    }
}

/// The GGUF reports speak the one JSON vocabulary (first_hour's rule): `operation` first,
/// `files` a list, and no key a number in one report and a list in another — checked together
/// with the safetensors inspect and merge reports.
#[test]
fn gguf_reports_share_the_json_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let qv = fixture("llama/adapters/qv_r8").to_str().unwrap().to_owned();
    let base = fixture("llama/base").to_str().unwrap().to_owned();
    let lines = [
        format!("inspect {} --tensors", g("types.gguf")),
        format!("inspect {base} --tensors"),
        format!("merge --base {base} --adapter {qv} -o {}", d("hf")),
        format!(
            "merge --base {} --adapter {qv} -o {}",
            g("llama_q8_0.gguf"),
            d("m.gguf")
        ),
        format!(
            "merge --base {} --adapter {qv} -o {} --dry-run --max-shard-size 50KB",
            g("llama_q8_0.gguf"),
            d("n.gguf")
        ),
        format!("convert {qv} --to gguf --base {base} -o {}", d("a.gguf")),
        format!("diff {} {} --common", g("types.gguf"), g("types.f32.gguf")),
    ];
    let mut seen = Vec::new();
    for line in &lines {
        let argv: Vec<&str> = line.split_whitespace().collect();
        let out = bin().args(&argv).arg("--json").output().unwrap();
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v.as_object().unwrap().keys().next().unwrap(),
            "operation",
            "{line}"
        );
        kinds(&v, &mut seen);
    }
    for (k, kind) in &seen {
        if k == "files" {
            assert_eq!(*kind, "list");
        }
        if *kind == "number" {
            assert!(
                !seen.iter().any(|(k2, kd)| k2 == k && *kd == "list"),
                "{k} is a number in one report and a list in another"
            );
        }
    }
}

/// Malformed llama.cpp adapters are refused as llama.cpp refuses them, in one line, nothing
/// written: half a pair, a tensor with an unexpected suffix, a lora_a whose rank differs from its
/// lora_b.
#[test]
fn malformed_gguf_adapters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ad = dir.path().join("a.gguf");
    run_ok([
        "convert",
        fixture("llama/adapters/qv_r8").to_str().unwrap(),
        "--to",
        "gguf",
        "--base",
        fixture("llama/base").to_str().unwrap(),
        "-o",
        ad.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&ad).unwrap();
    let find = |pat: &[u8]| bytes.windows(pat.len()).position(|w| w == pat).unwrap();
    let name = b"blk.0.attn_q.weight.lora_b";
    let at = find(name);
    let mut pair = bytes.clone();
    pair[at + name.len() - 1] = b'c';
    let mut suffix = bytes.clone();
    let at_a = find(b"blk.0.attn_q.weight.lora_a");
    suffix[at_a + name.len() - 1] = b'c';
    // lora_a of blk.0.attn_q: dims [64, 8] follow its name and n_dims; claim rank 4 instead.
    let a_name = b"blk.0.attn_q.weight.lora_a";
    let dims = find(a_name) + a_name.len() + 4;
    let mut rank = bytes.clone();
    rank[dims..dims + 8].copy_from_slice(&32u64.to_le_bytes());
    rank[dims + 8..dims + 16].copy_from_slice(&16u64.to_le_bytes());
    for (case, b, want) in [
        ("pair", pair, "has no `blk.0.attn_q.weight.lora_b`"),
        ("suffix", suffix, "has an unexpected suffix"),
        ("rank", rank, "lora_a ne[1] 16 is not lora_b ne[0] 8"),
    ] {
        let p = dir.path().join(format!("{case}.gguf"));
        std::fs::write(&p, b).unwrap();
        let o = dir.path().join(format!("{case}.out.gguf"));
        let e = one_line_error(&run_err([
            "merge",
            "--base",
            &g("llama_f32.gguf"),
            "--adapter",
            p.to_str().unwrap(),
            "--out",
            o.to_str().unwrap(),
        ]));
        assert!(e.contains(want), "{case}: {e}");
        assert!(!o.exists());
    }
}

/// Several weighted adapters with different tensor sets into one GGUF base: weighted_a at 0.7
/// and weighted_b at −0.4 equal PEFT's weighted `cat` merge (1e-6), as for safetensors bases.
#[test]
fn weighted_adapters_merge_into_a_gguf_as_peft_weighted_cat() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let (a, b) = (
        fixture("llama/adapters/weighted_a"),
        fixture("llama/adapters/weighted_b"),
    );
    let j = run_ok([
        "merge",
        "--base",
        &g("llama_q8_0.gguf"),
        "--adapter",
        a.to_str().unwrap(),
        "--weight",
        "0.7",
        "--adapter",
        b.to_str().unwrap(),
        "--weight",
        "-0.4",
        "--outtype",
        "f32",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["adapters"][1]["weight"], -0.4);
    // Reference for this base: its dequantized values plus PEFT's weighted ΔW.
    let f32_base = hf_view(&fixture("gguf/llama_f32.gguf"));
    let q_base = hf_view(&fixture("gguf/llama_q8_0.gguf"));
    let got = hf_view(&out);
    let peft = read(&fixture("llama/merged/weighted.safetensors"));
    for (name, r) in &peft {
        let want: Vec<f32> = r
            .f32()
            .iter()
            .zip(&f32_base[name].2)
            .zip(&q_base[name].2)
            .map(|((m, b), q)| q + (m - b))
            .collect();
        let e = rel_err(&got[name].2, &want);
        assert!(e <= 1e-6, "{name}: {e:e}");
    }
    assert_eq!(v["tensors_merged_count"], peft.len());
}

/// A K-quant tensor (no reference quantizer in lorakit yet): `--outtype keep` is refused before
/// anything is written, naming the tensor and the types that can be written; `--outtype f32`
/// stores the merge of its dequantized values (gguf-py's Q4_K blocks from types.gguf, in a
/// file written with lorakit's GGUF writer for this refusal test).
#[test]
fn k_quant_tensors_refuse_keep_and_merge_to_a_writable_type() {
    use lorakit::io::gguf::writer::{header, kv_string, OutTensor};
    let dir = tempfile::tempdir().unwrap();
    let types = GgufModel::open(fixture("gguf/types.gguf")).unwrap();
    let (f, t) = types.get("t.q4_k").unwrap();
    assert_eq!((t.ty, t.dims.clone()), (GgmlType::Q4_K, vec![512, 2]));
    let name = "blk.0.attn_v.weight";
    let mut bytes = header(
        &[kv_string("general.architecture", "llama")],
        &[OutTensor {
            name: name.into(),
            dims: t.dims.clone(),
            ty: t.ty,
        }],
        32,
    );
    bytes.extend_from_slice(f.view(t).data);
    let base = dir.path().join("k.gguf");
    std::fs::write(&base, bytes).unwrap();
    let w0 = f.dequantize(t).unwrap();
    // A rank-1 adapter on v_proj ([2, 512]): ΔW = 2·b·a with b = [1, -1], a = 0.01·(i mod 7).
    let a: Vec<f32> = (0..512).map(|i| 0.01 * (i % 7) as f32).collect();
    let b = [1f32, -1.0];
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let ad = dir.path().join("ad");
    write_peft_adapter(
        &ad,
        r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 2, "target_modules": ["v_proj"]}"#,
        &[
            (
                "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight".into(),
                vec![1, 512],
                le(&a),
            ),
            (
                "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight".into(),
                vec![2, 1],
                le(&b),
            ),
        ],
    );
    let out = dir.path().join("m.gguf");
    let e = one_line_error(&run_err([
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        ad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(
        e.contains(
            "tensor `blk.0.attn_v.weight` is Q4_K: lorakit has no reference quantizer for it"
        ) && e.contains("--outtype f32|f16|bf16|q8_0"),
        "{e}"
    );
    assert!(!out.exists());
    merge_json(
        base.to_str().unwrap(),
        ad.to_str().unwrap(),
        &out,
        &["--outtype", "f32"],
    );
    let m = GgufModel::open(&out).unwrap();
    let (mf, mt) = m.get(name).unwrap();
    assert_eq!(mt.ty, GgmlType::F32);
    let got = mf.dequantize(mt).unwrap();
    for (i, (x, w)) in got.iter().zip(&w0).enumerate() {
        let want = w + 2.0 * b[i / 512] * a[i % 512];
        assert!(
            (x - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{i}: {x} vs {want}"
        );
    }
}
