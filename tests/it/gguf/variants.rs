//! DoRA, `lora_bias` and `modules_to_save` merged into GGUF bases (fixtures/gguf/peft_variants,
//! fixtures/gen/gguf_peft_variants.py): a tiny Llama (q/k/v/o biases, untied) and a tiny Qwen2
//! (q/k/v biases, tied) converted by llama.cpp's convert_hf_to_gguf.py, against the converter's
//! output of PEFT's merge_and_unload; Q8_0 bases against gguf-py's quantizer; the refusals that
//! stay; `--part` + `finalize`.

use super::*;
use lorakit::io::gguf::TensorInfo;

fn pv(name: &str) -> String {
    g(&format!("peft_variants/{name}"))
}

/// `(type, dims, dequantized values, stored bytes)` of a GGUF tensor.
pub(super) type Stored = (GgmlType, Vec<u64>, Vec<f32>, Vec<u8>);

/// Every tensor of a GGUF file, by name.
pub(super) fn tensors(path: &Path) -> BTreeMap<String, Stored> {
    let m = GgufModel::open(path).unwrap();
    m.tensors()
        .map(|(f, t): (_, &TensorInfo)| {
            let v = f.dequantize(t).unwrap();
            (
                t.name.clone(),
                (t.ty, t.dims.clone(), v, f.view(t).data.to_vec()),
            )
        })
        .collect()
}

/// [`peft_python`]'s policy for an oracle that needs gguf-py and numpy only: `LORAKIT_PYTHON`,
/// else `python3`, if it imports them (importing torch, transformers and peft to ask would take
/// ten seconds); else skipped loudly, or a failure with `LORAKIT_REQUIRE_PEFT=1`.
pub(super) fn gguf_python() -> Option<std::path::PathBuf> {
    let py = std::env::var_os("LORAKIT_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "python3".into());
    let ok = std::process::Command::new(&py)
        .args(["-c", "import gguf, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    let why = format!("{} cannot import gguf and numpy", py.display());
    if std::env::var("LORAKIT_REQUIRE_PEFT").as_deref() == Ok("1") {
        panic!("LORAKIT_REQUIRE_PEFT=1 but {why}");
    }
    eprintln!("PEFT TEST SKIPPED: {why}");
    None
}

/// (architecture, adapter case) of every mergeable fixture adapter.
const CASES: [(&str, &str); 5] = [
    ("llama", "dora"),
    ("llama", "bias"),
    ("llama", "saved"),
    ("qwen2", "dora"),
    ("qwen2", "bias"),
];

/// The tensors PEFT's merge changed (the converter's output of it differs from the converter's
/// output of the base), sorted.
fn changed_by_peft(arch: &str, case: &str) -> Vec<String> {
    let base = tensors(Path::new(&pv(&format!("{arch}.f32.gguf"))));
    let reference = tensors(Path::new(&pv(&format!("{arch}_{case}.f32.gguf"))));
    reference
        .iter()
        .filter(|(n, t)| t.3 != base[*n].3)
        .map(|(n, _)| n.clone())
        .collect()
}

/// The names a merge report lists as merged, sorted.
fn reported(v: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = v["merged_tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Into an F32 GGUF base, each adapter gives the converter's output of PEFT's merge_and_unload
/// within f32 rounding (1e-6 relative per tensor): DoRA on every linear module (Llama: q/k rows
/// and their magnitudes permuted), lora_bias into the base biases (Llama: q/k biases
/// permuted), modules_to_save replacing `token_embd` and `output` (exactly: the saved values);
/// the merged tensors are exactly those PEFT changed, every other one a byte copy, and the
/// tensor list, dims and types are the converter's.
#[test]
fn dora_bias_and_saved_tensors_into_an_f32_gguf_equal_the_converted_peft_merge() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, case) in CASES {
        let label = format!("{arch}_{case}");
        let out = dir.path().join(format!("{label}.gguf"));
        let v = merge_json(pv(&format!("{arch}.f32.gguf")), pv(&label), &out, &[]);
        let changed = changed_by_peft(arch, case);
        assert!(changed.len() >= 3, "{label}: {changed:?}");
        assert_eq!(reported(&v), changed, "{label}");
        let (got, want) = (
            tensors(&out),
            tensors(Path::new(&pv(&format!("{label}.f32.gguf")))),
        );
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (name, (ty, dims, vals, bytes)) in &got {
            let w = &want[name];
            assert_eq!((ty, dims), (&w.0, &w.1), "{label} {name}");
            if !changed.contains(name) {
                assert!(bytes == &w.3, "{label} {name}: not a byte copy");
            } else if case == "saved" && !name.starts_with("blk.") {
                assert!(bytes == &w.3, "{label} {name}: not the saved tensor");
            } else {
                let e = rel_err(vals, &w.2);
                assert!(e <= 1e-6, "{label} {name}: relative error {e:e}");
            }
        }
    }
}

/// Into a Q8_0 base (the converter's `--outtype q8_0`), `keep` stores exactly gguf-py's
/// `quants.quantize` of lorakit's own f32 merge (`--outtype f32`: the dequantized base plus the
/// adapter), every merged Q8_0 tensor byte for byte (fixtures/gen/check_gguf_requant.py), and
/// its values are within one quantization step (block amax / 127) of the converter's output of
/// PEFT's f32 merge; biases stay F32. The gguf-py comparison is skipped loudly without Python
/// ([`gguf_python`]).
#[test]
fn into_a_q8_0_gguf_keep_is_gguf_py_quantize_of_the_f32_merge() {
    let dir = tempfile::tempdir().unwrap();
    let py = gguf_python();
    for (arch, case) in CASES {
        let label = format!("{arch}_{case}");
        let base = pv(&format!("{arch}.q8_0.gguf"));
        let (f32_out, keep_out) = (
            dir.path().join(format!("{label}.f32.gguf")),
            dir.path().join(format!("{label}.keep.gguf")),
        );
        merge_json(&base, pv(&label), &f32_out, &["--outtype", "f32"]);
        let v = merge_json(&base, pv(&label), &keep_out, &[]);
        let changed = changed_by_peft(arch, case);
        assert_eq!(reported(&v), changed, "{label}");
        let (got, peft, qbase) = (
            tensors(&keep_out),
            tensors(Path::new(&pv(&format!("{label}.f32.gguf")))),
            tensors(Path::new(&base)),
        );
        let mut quantized = Vec::new();
        for (name, (ty, _, vals, bytes)) in &got {
            assert_eq!(*ty, qbase[name].0, "{label} {name}: type kept");
            if !changed.contains(name) {
                assert!(bytes == &qbase[name].3, "{label} {name}: not a byte copy");
                continue;
            }
            let want = &peft[name].2;
            if *ty == GgmlType::F32 {
                let e = rel_err(vals, want);
                assert!(e <= 1e-6, "{label} {name}: relative error {e:e}");
                continue;
            }
            assert_eq!(*ty, GgmlType::Q8_0);
            quantized.push(name.clone());
            for (i, (x, y)) in vals.chunks(32).zip(want.chunks(32)).enumerate() {
                let amax = x.iter().chain(y).fold(0f32, |m, v| m.max(v.abs()));
                let step = amax / 127.0;
                for (a, b) in x.iter().zip(y) {
                    assert!(
                        (a - b).abs() <= step,
                        "{label} {name} block {i}: {a} vs PEFT's {b}, step {step}"
                    );
                }
            }
        }
        assert!(!quantized.is_empty(), "{label}");
        let Some(py) = &py else { continue };
        assert_eq!(
            requantized_by_gguf_py(py, &f32_out, &keep_out, &label),
            quantized,
            "{label}"
        );
    }
}

/// The tensors of `keep_out` that `fixtures/gen/check_gguf_requant.py` finds byte-equal to
/// gguf-py's quantizer applied to the same tensor of `f32_out` (each of its verdicts must say
/// equal), sorted.
pub(super) fn requantized_by_gguf_py(
    py: &Path,
    f32_out: &Path,
    keep_out: &Path,
    label: &str,
) -> Vec<String> {
    let lines = python_ok(
        py,
        "check_gguf_requant.py",
        &[f32_out.as_os_str(), keep_out.as_os_str()],
    );
    let mut checked: Vec<String> = String::from_utf8(lines)
        .unwrap()
        .lines()
        .map(|l| {
            let x: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(x["equal"], true, "{label}: {x}");
            x["name"].as_str().unwrap().to_owned()
        })
        .collect();
    checked.sort();
    checked
}

/// What stays refused, in one line naming the adapter and the module or tensor, nothing
/// written: lora_bias on Qwen2's o_proj (the base has no `attn_output.bias`; PEFT's merge
/// raises too), a saved lm_head on the tied Qwen2 (no `output.weight` to replace), DoRA with
/// --unmerge (the original norm is lost), modules_to_save with --unmerge, and a tensor both
/// merged into (DoRA on lm_head) and replaced (a saved lm_head of the next adapter).
#[test]
fn refusals_of_bias_tied_head_and_dora_unmerge_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let saved = pv("llama_saved");
    let cases = [
        (
            "qwen2",
            "bias_o",
            &[][..],
            "qwen2_bias_o: module `model.layers.0.self_attn.o_proj`: lora_bias adds to the layer's bias, and the GGUF base has no `blk.0.attn_output.bias`",
        ),
        (
            "qwen2",
            "saved_head",
            &[][..],
            "qwen2_saved_head: full tensor `lm_head.weight` (modules_to_save): the GGUF base ties its output to `token_embd.weight` (it has no `output.weight`)",
        ),
        (
            "llama",
            "dora",
            &["--unmerge"][..],
            "llama_dora: module `lm_head`: a DoRA merge cannot be undone",
        ),
        (
            "llama",
            "saved",
            &["--unmerge"][..],
            "llama_saved: full tensor `",
        ),
        (
            "llama",
            "dora",
            &["--adapter", &saved][..],
            "llama_saved: base tensor `output.weight` is changed by more than one adapter entry",
        ),
    ];
    for (arch, case, extra, want) in cases {
        let args = merge_args(
            Path::new(&pv(&format!("{arch}.f32.gguf"))),
            Path::new(&pv(&format!("{arch}_{case}"))),
            &out,
            extra,
        );
        let e = one_line_error(&run_err(&args));
        assert!(e.contains(want), "{case}: {e}");
    }
    assert!(listing(dir.path()).is_empty());
}

/// PEFT's trainable tokens (`trainable_token_indices`, fixtures/llama/adapters/tokens: rows 0,
/// 5, 7, 2 of `embed_tokens` beside a q/v LoRA) overwrite those rows of `token_embd` in the
/// F32 Llama GGUF: the merge equals PEFT's merge_and_unload (fixtures/llama/merged/tokens) once
/// the q/k permutation is undone, 1e-6 per tensor, every other tensor a byte copy.
#[test]
fn trainable_tokens_overwrite_rows_of_token_embd() {
    let (_dir, out) = scratch("m.gguf");
    let v = merge_json(
        g("llama_f32.gguf"),
        fixture("llama/adapters/tokens"),
        &out,
        &[],
    );
    let (got, base) = (hf_view(&out), hf_view(&fixture("gguf/llama_f32.gguf")));
    let reference = read(&fixture("llama/merged/tokens.safetensors"));
    assert!(reference.contains_key("model.embed_tokens.weight"));
    for (name, (_, _, vals, bytes)) in &got {
        match reference.get(name) {
            Some(r) => {
                let e = rel_err(vals, &r.f32());
                assert!(e <= 1e-6, "{name}: relative error {e:e}");
            }
            None => assert!(bytes == &base[name].3, "{name}: not a byte copy"),
        }
    }
    assert_eq!(v["tensors_merged_count"], reference.len());
}

/// `--device gpu` (the backend's WGSL merge, DoRA norms included, the tensor whole) writes the
/// CPU's files byte for byte: DoRA into the Q8_0 Llama and the F32 Qwen2, biases and saved
/// tensors beside. Skipped loudly without a wgpu adapter.
#[test]
fn dora_into_gguf_on_the_gpu_equals_the_cpu() {
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (arch, base, cases) in [
        ("llama", "q8_0", &["dora", "bias"][..]),
        ("llama", "q8_0", &["saved"][..]),
        ("qwen2", "f32", &["dora"][..]),
    ] {
        let base = pv(&format!("{arch}.{base}.gguf"));
        let adapter = pv(&format!("{arch}_{}", cases[0]));
        let mut extra: Vec<String> = Vec::new();
        for c in &cases[1..] {
            extra.extend(["--adapter".into(), pv(&format!("{arch}_{c}"))]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (cpu, gpu) = (dir.path().join("cpu.gguf"), dir.path().join("gpu.gguf"));
        merge_json(&base, &adapter, &cpu, &extra);
        merge_json(
            &base,
            &adapter,
            &gpu,
            &[&extra[..], &["--device", "gpu"]].concat(),
        );
        assert!(
            std::fs::read(&cpu).unwrap() == std::fs::read(&gpu).unwrap(),
            "{arch}: GPU output differs from the CPU's"
        );
    }
}

/// LyCORIS' per-input-channel `dora_scale` (`[1, in]`: lycoris/functional/general.py
/// `_weight_decompose`, the norm per column over the output axis, eps = f32 epsilon; lorakit
/// reads kohya/LyCORIS files with it) on the permuted q projection of the F32 Llama GGUF: a
/// per-column norm needs every row, so the tensor is merged as one band; it equals the
/// decomposition computed here in f64 from the files (W0 un-permuted, ΔW = alpha/r·up·down,
/// `W' = (W0 + ΔW)·s / (‖W0 + ΔW‖ + eps)`), 1e-6, and every tensor but q and v is a byte copy.
#[test]
fn a_per_column_dora_scale_merges_its_tensor_whole() {
    let (dir, kohya) = scratch("qv.safetensors");
    run_ok(convert_args(
        &fixture("llama/adapters/qv_r8"),
        "kohya",
        &kohya,
        &[],
    ));
    let mut t = read(&kohya);
    let m = "lora_unet_model_layers_0_self_attn_q_proj";
    let scale: Vec<f32> = (0..64)
        .map(|j| 1.0 + 0.01 * ((j * 37 % 23) as f32 - 11.0))
        .collect();
    t.insert(
        format!("{m}.dora_scale"),
        T {
            dtype: safetensors::Dtype::F32,
            shape: vec![1, 64],
            data: f32_bytes(&scale),
        },
    );
    let adapter = dir.path().join("dora.safetensors");
    write_tensors(&adapter, &t);
    let out = dir.path().join("m.gguf");
    let v = merge_json(g("llama_f32.gguf"), &adapter, &out, &[]);
    assert_eq!(v["tensors_merged_count"], 4);
    let (got, base) = (hf_view(&out), hf_view(&fixture("gguf/llama_f32.gguf")));
    let q = "model.layers.0.self_attn.q_proj.weight";
    let (w0, rows, cols) = (&base[q].2, base[q].1[0], base[q].1[1]);
    let (down, up) = (
        t[&format!("{m}.lora_down.weight")].f32(),
        t[&format!("{m}.lora_up.weight")].f32(),
    );
    let r = down.len() / cols;
    let s = t[&format!("{m}.alpha")].f32()[0] as f64 / r as f64;
    let w: Vec<f64> = (0..rows * cols)
        .map(|ij| {
            let (i, j) = (ij / cols, ij % cols);
            let d: f64 = (0..r)
                .map(|k| up[i * r + k] as f64 * down[k * cols + j] as f64)
                .sum();
            w0[ij] as f64 + s * d
        })
        .collect();
    let norms: Vec<f64> = (0..cols)
        .map(|j| {
            (0..rows)
                .map(|i| w[i * cols + j].powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let want: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(ij, x)| {
            let j = ij % cols;
            (x * scale[j] as f64 / (norms[j] + f32::EPSILON as f64)) as f32
        })
        .collect();
    let e = rel_err(&got[q].2, &want);
    assert!(e <= 1e-6, "q_proj: relative error {e:e}");
    // q is square: normed per row instead, the same magnitudes would give another tensor.
    let by_rows: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(ij, x)| {
            let i = ij / cols;
            let n = (0..cols)
                .map(|j| w[i * cols + j].powi(2))
                .sum::<f64>()
                .sqrt();
            (x * scale[i] as f64 / (n + f32::EPSILON as f64)) as f32
        })
        .collect();
    assert!(rel_err(&got[q].2, &by_rows) > 1e-3);
    let merged = [q, "model.layers.0.self_attn.v_proj.weight"];
    for (name, tensor) in &got {
        if !name.contains(".layers.1.") && !merged.contains(&name.as_str()) {
            assert!(tensor.3 == base[name].3, "{name}: not a byte copy");
        }
    }
}

/// `--unmerge` of a lora_bias adapter subtracts what the merge added, from the biases too: the
/// F32 Qwen2 and Llama come back within f32 rounding (1e-6 per tensor).
#[test]
fn unmerging_lora_bias_restores_the_biases() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2"] {
        let (m, u) = (
            dir.path().join(format!("{arch}.m.gguf")),
            dir.path().join(format!("{arch}.u.gguf")),
        );
        let (base, adapter) = (pv(&format!("{arch}.f32.gguf")), pv(&format!("{arch}_bias")));
        merge_json(&base, &adapter, &m, &[]);
        let v = merge_json(s(&m), &adapter, &u, &["--unmerge"]);
        assert!(reported(&v).iter().any(|n| n.ends_with("attn_q.bias")));
        assert_restores(&u, Path::new(&base), arch);
    }
}

/// Trainable tokens into a quantized `token_embd` (the Q4_0 Llama): the rows the adapter lists
/// are its values quantized once (within one Q4_0 step of them), and every other row keeps
/// the base's bytes, as PEFT's `index_copy` keeps its values — not a requantization of its own
/// dequantization. On this Q4_0 fixture that requantization happens to give the bytes back (the
/// test passes with the rows requantized too); it guards the rule and the row offsets. The case
/// that motivates it, a K-quant `token_embd` (ggml's scale search need not reproduce its own
/// output), needs rows of 256 values, which no fixture model here has (review of the GGUF
/// trainable-token merge, 2026-12-05).
#[test]
fn trainable_tokens_keep_the_stored_bytes_of_every_other_row() {
    let (_dir, out) = scratch("m.gguf");
    merge_json(
        g("llama_q4_0.gguf"),
        fixture("llama/adapters/tokens"),
        &out,
        &[],
    );
    let (got, base) = (hf_view(&out), hf_view(&fixture("gguf/llama_q4_0.gguf")));
    let (ty, shape, vals, bytes) = &got["model.embed_tokens.weight"];
    let (base_ty, _, _, base_bytes) = &base["model.embed_tokens.weight"];
    assert_eq!((ty, base_ty), (&GgmlType::Q4_0, &GgmlType::Q4_0));
    let reference = read(&fixture("llama/merged/tokens.safetensors"));
    let want = reference["model.embed_tokens.weight"].f32();
    let (rows, cols) = (shape[0], shape[1]);
    let row_bytes = bytes.len() / rows;
    let listed = [0usize, 5, 7, 2];
    for r in 0..rows {
        let (got_row, base_row) = (
            &bytes[r * row_bytes..(r + 1) * row_bytes],
            &base_bytes[r * row_bytes..(r + 1) * row_bytes],
        );
        if listed.contains(&r) {
            // Q4_0 (`quantize_row_q4_0_ref`): d = max/-8 per block of 32 and codes 0..15, so a
            // value lies within |d|/2 of its code, or within |d| at the far end (code 15 = 7d).
            for (blk, (g, w)) in vals[r * cols..(r + 1) * cols]
                .chunks(32)
                .zip(want[r * cols..(r + 1) * cols].chunks(32))
                .enumerate()
            {
                let amax = w.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (a, b) in g.iter().zip(w) {
                    assert!(
                        (a - b).abs() <= amax / 8.0 * 1.001,
                        "row {r} block {blk}: {a} vs {b}"
                    );
                }
            }
        } else {
            assert!(got_row == base_row, "row {r}: bytes changed");
        }
    }
}
