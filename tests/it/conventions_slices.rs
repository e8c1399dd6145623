//! Row-slice merges (issue #16): a kohya SDXL LoRA names the second text encoder in HF CLIP's
//! layout (`lora_te2_text_model_encoder_layers_N_self_attn_{q,k,v}_proj`), a single-file SDXL
//! checkpoint stores it as OpenCLIP-G with q, k and v fused in `attn.in_proj_weight` `[3d, d]`.
//! ComfyUI splits that tensor into rows `[0,d)`, `[d,2d)`, `[2d,3d)` when it loads the file
//! (`comfy/utils.py` @00728eb `transformers_convert`); lorakit merges each module into its rows.
//!
//! Fixture `conventions_te/sdxl_*` (fixtures/gen/openclip_slice_fixture.py): the base with both
//! encoders in ldm layout, a kohya file written by diffusers' `convert_state_dict_to_kohya` from
//! PEFT LoRAs on both encoders, and PEFT's own `merge_and_unload` of each encoder in the base's
//! layout. Merges are compared with that reference and with W + (alpha/r)·B·A computed here in
//! f64 on the module's rows; every other row and tensor must keep its bytes.

use super::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Relative Frobenius error of lorakit's f32 merge against PEFT and the f64 reference.
const TOL: f64 = 1e-6;
const TE2: &str = "conditioner.embedders.1.model.transformer.resblocks";
const D: usize = 16;

fn base() -> PathBuf {
    fixture("conventions_te/sdxl_single.safetensors")
}

fn adapter() -> PathBuf {
    fixture("conventions_te/sdxl_kohya.safetensors")
}

fn in_proj(layer: usize) -> String {
    format!("{TE2}.{layer}.attn.in_proj_weight")
}

fn kohya_q(layer: usize, p: char) -> String {
    format!("lora_te2_text_model_encoder_layers_{layer}_self_attn_{p}_proj")
}

/// `(alpha/r)·B·A` of kohya module `name` of `file` in f64 (`[out, in]`, row-major).
fn delta(file: &BTreeMap<String, T>, name: &str) -> Vec<f64> {
    let up = &file[&format!("{name}.lora_up.weight")];
    let down = &file[&format!("{name}.lora_down.weight")];
    let (out, r, k) = (up.shape[0], up.shape[1], down.shape[1]);
    let alpha = match &file[&format!("{name}.alpha")] {
        a if a.dtype == safetensors::Dtype::I64 => {
            i64::from_le_bytes(a.data[..8].try_into().unwrap()) as f64
        }
        a => a.f32()[0] as f64,
    };
    let (b, a) = (up.f32(), down.f32());
    (0..out * k)
        .map(|ij| {
            let (i, j) = (ij / k, ij % k);
            let ba: f64 = (0..r)
                .map(|t| b[i * r + t] as f64 * a[t * k + j] as f64)
                .sum();
            alpha / r as f64 * ba
        })
        .collect()
}

/// The rows `[from, from + n)` of a `[·, D]` tensor.
fn rows(v: &[f32], from: usize, n: usize) -> &[f32] {
    &v[from * D..(from + n) * D]
}

/// W + Σ wᵢ·ΔWᵢ on rows `[from, from + D)`, rounded to f32 once.
fn reference(w: &[f32], from: usize, deltas: &[(f64, &[f64])]) -> Vec<f32> {
    rows(w, from, D)
        .iter()
        .enumerate()
        .map(|(i, &x)| (x as f64 + deltas.iter().map(|(s, d)| s * d[i]).sum::<f64>()) as f32)
        .collect()
}

/// Writes the modules `names` of the fixture adapter to `path` (a kohya file with fewer modules).
fn subset(path: PathBuf, names: &[String]) -> PathBuf {
    let all = read(&adapter());
    let picked: BTreeMap<String, T> = all
        .into_iter()
        .filter(|(k, _)| {
            names
                .iter()
                .any(|n| k.split('.').next() == Some(n.as_str()))
        })
        .collect();
    assert_eq!(picked.len(), 3 * names.len());
    write_tensors(&path, &picked);
    path
}

/// The whole fixture adapter, as kohya and as diffusers' DIFFUSERS form (`text_encoder_2.…`
/// `lora_A`/`lora_B`): every TE1 and TE2 module lands (q/k/v of TE2 on their thirds of
/// `in_proj_weight`) and the merge equals PEFT's merge of each encoder and the f64 reference.
#[test]
fn sdxl_kohya_both_encoders_equal_peft() {
    let dir = tempfile::tempdir().unwrap();
    let b = read(&base());
    let reference = read(&fixture("conventions_te/sdxl_kohya.merged.safetensors"));
    assert_eq!(
        reference.len(),
        20,
        "12 TE1 weights + 4 TE2 tensors per layer"
    );
    let mut outs = Vec::new();
    for a in [
        adapter(),
        fixture("conventions_te/sdxl_diffusers_te.safetensors"),
    ] {
        let out = dir.path().join(a.file_name().unwrap());
        merge_ok(&base(), &a, &out, &["--quiet"]);
        let o = read(&out);
        assert_eq!(o.len(), b.len());
        for (name, t) in &b {
            match reference.get(name) {
                Some(r) => {
                    let err = rel_err(&o[name].f32(), &r.f32());
                    assert!(err < TOL, "{}: {name}: {err:e} against PEFT", a.display());
                }
                None => assert_eq!(o[name].data, t.data, "{name} changed"),
            }
        }
        outs.push(o);
    }
    let o = &outs[0];
    let k = read(&adapter());
    for layer in 0..2 {
        let (w, got) = (b[&in_proj(layer)].f32(), o[&in_proj(layer)].f32());
        for (i, p) in ['q', 'k', 'v'].into_iter().enumerate() {
            let d = delta(&k, &kohya_q(layer, p));
            let want = reference_rows(&w, i * D, &d);
            let err = rel_err(rows(&got, i * D, D), &want);
            assert!(err < TOL, "layer {layer} {p}: {err:e} against f64");
        }
    }
}

fn reference_rows(w: &[f32], from: usize, d: &[f64]) -> Vec<f32> {
    reference(w, from, &[(1.0, d)])
}

/// q and v only: k's rows keep their bytes; on the GPU the same bytes as on the CPU; with
/// `--part` over a sharded output the same files as one process.
#[test]
fn disjoint_slices_leave_the_rows_between_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let a = subset(
        dir.path().join("qv.safetensors"),
        &[kohya_q(0, 'q'), kohya_q(0, 'v')],
    );
    let out = dir.path().join("out.safetensors");
    merge_ok(&base(), &a, &out, &["--quiet"]);
    let (b, o, k) = (read(&base()), read(&out), read(&a));
    let name = in_proj(0);
    let (w, got) = (b[&name].f32(), o[&name].f32());
    assert_eq!(
        o[&name].data[D * D * 4..2 * D * D * 4],
        b[&name].data[D * D * 4..2 * D * D * 4],
        "k rows changed"
    );
    for (i, p) in [(0, 'q'), (2, 'v')] {
        let want = reference_rows(&w, i * D, &delta(&k, &kohya_q(0, p)));
        let err = rel_err(rows(&got, i * D, D), &want);
        assert!(err < TOL, "{p}: {err:e}");
        assert_ne!(rows(&got, i * D, D), rows(&w, i * D, D), "{p} unchanged");
    }
    for (n, t) in &b {
        if *n != name {
            assert_eq!(o[n].data, t.data, "{n} changed");
        }
    }

    // Written as bf16: rows no module covers are the base's rounded once (to nearest even).
    let bf16 = dir.path().join("bf16.safetensors");
    merge_ok(&base(), &a, &bf16, &["--quiet", "--dtype", "bf16"]);
    let rne = |x: f32| {
        let b = x.to_bits();
        (((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16).to_le_bytes()
    };
    let want: Vec<u8> = rows(&w, D, D).iter().flat_map(|&x| rne(x)).collect();
    assert_eq!(read(&bf16)[&name].data[D * D * 2..2 * D * D * 2], want[..]);

    if gpu_available() {
        for (cpu, extra) in [(&out, None), (&bf16, Some("bf16"))] {
            let gpu = dir.path().join("gpu.safetensors");
            let mut args = vec!["--quiet", "--device", "gpu"];
            args.extend(extra.map(|d| ["--dtype", d]).into_iter().flatten());
            merge_ok(&base(), &a, &gpu, &args);
            assert!(
                std::fs::read(&gpu).unwrap() == std::fs::read(cpu).unwrap(),
                "gpu output differs ({extra:?})"
            );
        }
    }

    // `finalize` reopens the base by its folder: the base alone in one.
    let alone = dir.path().join("base");
    std::fs::create_dir(&alone).unwrap();
    let alone = alone.join("sdxl.safetensors");
    std::fs::copy(base(), &alone).unwrap();
    let shards = |out: &Path, part: &[&str]| {
        let extra = [&["--quiet", "--max-shard-size", "20000"], part].concat();
        merge_ok(&alone, &a, out, &extra);
    };
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    assert_parts_equal_one_process(&whole, &split, shards, "sharded merge");
    assert!(listing(&whole).len() > 2, "{:?}", listing(&whole));
    let merged = read_checkpoint(&whole);
    assert_eq!(merged[&name].data, o[&name].data);
}

/// Two adapters on the same slices (the full file at 0.5 and its q-only subset at 2) add up on
/// those rows exactly as two whole-tensor modules would: W + 0.5·ΔW₁ + 2·ΔW₂.
#[test]
fn overlapping_slices_of_two_adapters_combine() {
    let dir = tempfile::tempdir().unwrap();
    let q = subset(dir.path().join("q.safetensors"), &[kohya_q(1, 'q')]);
    let out = dir.path().join("out.safetensors");
    let (a, w) = (
        adapter(),
        ["--weight", "0.5", "--adapter", s(&q), "--weight", "2"],
    );
    run_ok(merge_args(
        &base(),
        &a,
        &out,
        &[&["--quiet"], &w[..]].concat(),
    ));
    let (b, o, k) = (read(&base()), read(&out), read(&adapter()));
    let (w, got) = (b[&in_proj(1)].f32(), o[&in_proj(1)].f32());
    let dq = delta(&k, &kohya_q(1, 'q'));
    let want = reference(&w, 0, &[(0.5, &dq), (2.0, &dq)]);
    let err = rel_err(rows(&got, 0, D), &want);
    assert!(err < TOL, "q: {err:e}");
    let dk = delta(&k, &kohya_q(1, 'k'));
    let err = rel_err(rows(&got, D, D), &reference(&w, D, &[(0.5, &dk)]));
    assert!(err < TOL, "k: {err:e}");
}

/// A fused tensor whose rows are not three of the module's: the slice would run past the
/// tensor (or cut another projection); one line naming the base file and tensor, nothing written.
#[test]
fn a_slice_past_the_tensor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = read(&base());
    let name = in_proj(0);
    let t = b.get_mut(&name).unwrap();
    t.shape = vec![3 * D - 3, D];
    t.data.truncate((3 * D - 3) * D * 4);
    let hostile = dir.path().join("hostile.safetensors");
    write_tensors(&hostile, &b);
    let a = subset(dir.path().join("v.safetensors"), &[kohya_q(0, 'v')]);
    let out = dir.path().join("out.safetensors");
    let line = one_line_error(&run_err(merge_args(&hostile, &a, &out, &[])));
    assert!(
        line.contains("hostile.safetensors")
            && line.contains(&name)
            && line.contains(&kohya_q(0, 'v')),
        "{line}"
    );
    assert!(!out.exists(), "nothing written");
    assert_eq!(listing(dir.path()).len(), 2, "{:?}", listing(dir.path()));
}

/// `check --base` reports q/k/v as landed on their rows of the fused tensor, the rest exact.
#[test]
fn check_reports_row_slices_as_mapped() {
    let out = bin()
        .args(check_args(&adapter(), &["--base", s(&base()), "--json"]))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let modules = v["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 24);
    for m in modules {
        let name = m["module"].as_str().unwrap();
        let sliced = name.starts_with("lora_te2_")
            && name.contains("self_attn_")
            && !name.ends_with("out_proj");
        if sliced {
            assert_eq!(m["status"], "row_slice", "{m}");
            let layer = if name.contains("_layers_0_") { 0 } else { 1 };
            assert_eq!(m["base_tensor"], in_proj(layer), "{m}");
            let third = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .position(|p| name.ends_with(p))
                .unwrap();
            let rows = format!("rows {}..{}", third * D, (third + 1) * D);
            assert!(m["detail"].as_str().unwrap().contains(&rows), "{m}");
        } else {
            assert_eq!(m["status"], "exact", "{m}");
        }
    }
}

/// A DoRA module on a slice (its weight norm is not a function of single rows) is refused when
/// the plan is made: one line naming the base file, tensor and module, nothing written.
#[test]
fn a_dora_module_on_a_slice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = kohya_q(0, 'q');
    let mut a = read(&subset(
        dir.path().join("q.safetensors"),
        std::slice::from_ref(&q),
    ));
    let ones: Vec<f32> = vec![1.0; D];
    a.insert(
        format!("{q}.dora_scale"),
        T {
            dtype: safetensors::Dtype::F32,
            shape: vec![D, 1],
            data: ones.iter().flat_map(|x| x.to_le_bytes()).collect(),
        },
    );
    let dora = dir.path().join("dora.safetensors");
    write_tensors(&dora, &a);
    let out = dir.path().join("out.safetensors");
    let line = one_line_error(&run_err(merge_args(&base(), &dora, &out, &[])));
    assert!(
        line.contains("sdxl_single.safetensors")
            && line.contains(&in_proj(0))
            && line.contains(&q)
            && line.contains("DoRA"),
        "{line}"
    );
    assert!(!out.exists(), "nothing written");
}

/// `--unmerge` of the merged file with the same adapter gives the base back on the sliced rows
/// (within f32 rounding of W + Δ − Δ) and every other tensor byte for byte.
#[test]
fn unmerge_of_row_slices_restores_the_base() {
    let (dir, merged) = scratch("merged.safetensors");
    merge_ok(&base(), &adapter(), &merged, &["--quiet"]);
    let back = dir.path().join("back.safetensors");
    merge_ok(&merged, &adapter(), &back, &["--quiet", "--unmerge"]);
    let (b, m, o) = (read(&base()), read(&merged), read(&back));
    for (name, t) in &b {
        if m[name].data == t.data {
            assert_eq!(o[name].data, t.data, "{name} changed");
        } else {
            let err = rel_err(&o[name].f32(), &t.f32());
            assert!(err < TOL, "{name}: {err:e}");
        }
    }
}
