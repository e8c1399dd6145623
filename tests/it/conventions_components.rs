//! kohya component prefixes on bases that hold several components (issue #16): a `lora_te2_`
//! module never lands on the first text encoder because the names agree after the prefix.
//!
//! Bases and adapters are built here (a few 4×4 tensors with the real names): a single-file
//! SDXL checkpoint (`conditioner.embedders.0.transformer.text_model.…` = CLIP-L in HF names,
//! `conditioner.embedders.1.model.transformer.resblocks.N.…` = OpenCLIP-G, as ComfyUI's
//! `supported_models.py` `SDXL.process_clip_state_dict` reads them) whose two encoders' tensors
//! have equal shapes, and a diffusers-style file (`text_encoder.` + `text_encoder_2.`, HF names
//! in both). ComfyUI `comfy/lora.py` @41444b5 `model_lora_keys_clip` maps `lora_te1_` onto
//! `clip_l` and `lora_te2_` onto `clip_g` only. Merges are checked against W + (alpha/r)·B·A
//! computed here in f64.

use super::common::*;
use std::path::{Path, PathBuf};

/// Relative Frobenius error of lorakit's f32 merge against the f64 reference.
const TOL: f64 = 1e-6;

const TE1_Q: &str =
    "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";
const TE2_FC: &str = "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight";
const TE2_OUT: &str = "conditioner.embedders.1.model.transformer.resblocks.0.attn.out_proj.weight";
const UNET: &str = "model.diffusion_model.input_blocks.4.1.proj_in.weight";
const Q: &str = "text_model_encoder_layers_0_self_attn_q_proj";

/// Deterministic values in [-1, 1) (a fixed LCG; no two tensors share a seed).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn t(shape: &[usize], v: &[f32]) -> T {
    T {
        dtype: safetensors::Dtype::F32,
        shape: shape.to_vec(),
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn write(path: PathBuf, tensors: &[(String, T)]) -> PathBuf {
    write_tensors(&path, &tensors.iter().cloned().collect());
    path
}

/// 4×4 base tensors, one seed each.
fn base(dir: &Path, file: &str, names: &[&str]) -> PathBuf {
    let tensors: Vec<(String, T)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), t(&[4, 4], &values(100 + i as u64, 16))))
        .collect();
    write(dir.join(file), &tensors)
}

/// A rank-2 kohya module on a 4×4 weight: (name, A `[2,4]`, B `[4,2]`, alpha).
struct Module {
    name: String,
    a: Vec<f32>,
    b: Vec<f32>,
    alpha: f32,
}

fn module(name: &str, seed: u64, alpha: f32) -> Module {
    Module {
        name: name.to_owned(),
        a: values(seed, 8),
        b: values(seed + 1, 8),
        alpha,
    }
}

fn kohya(path: PathBuf, modules: &[&Module]) -> PathBuf {
    let mut tensors = Vec::new();
    for m in modules {
        tensors.push((format!("{}.lora_down.weight", m.name), t(&[2, 4], &m.a)));
        tensors.push((format!("{}.lora_up.weight", m.name), t(&[4, 2], &m.b)));
        tensors.push((format!("{}.alpha", m.name), t(&[], &[m.alpha])));
    }
    write(path, &tensors)
}

/// W + (alpha/r)·B·A in f64, rounded to f32 once.
fn reference(w: &[f32], m: &Module) -> Vec<f32> {
    let scale = m.alpha as f64 / 2.0;
    (0..16)
        .map(|ij| {
            let (i, j) = (ij / 4, ij % 4);
            let ba: f64 = (0..2)
                .map(|r| m.b[i * 2 + r] as f64 * m.a[r * 4 + j] as f64)
                .sum();
            (w[ij] as f64 + scale * ba) as f32
        })
        .collect()
}

/// Every tensor of `out` equals the base's, except `changed` (tensor → module), which equal
/// their f64 references.
fn assert_merged(base: &Path, out: &Path, changed: &[(&str, &Module)]) {
    let (base, out) = (read(base), read_checkpoint(out));
    assert_eq!(out.len(), base.len());
    for (name, b) in &base {
        let got = out[name].f32();
        match changed.iter().find(|(n, _)| n == name) {
            Some((_, m)) => {
                let err = rel_err(&got, &reference(&b.f32(), m));
                assert!(err < TOL, "{name}: {err:e}");
                assert_ne!(got, b.f32(), "{name} unchanged");
            }
            None => assert_eq!(got, b.f32(), "{name} changed"),
        }
    }
}

fn sdxl_single_file(dir: &Path) -> PathBuf {
    base(dir, "sdxl.safetensors", &[TE1_Q, TE2_FC, TE2_OUT, UNET])
}

#[test]
fn sdxl_single_file_te2_never_lands_on_te1() {
    let dir = tempfile::tempdir().unwrap();
    let base = sdxl_single_file(dir.path());
    let te1 = module(&format!("lora_te1_{Q}"), 1, 1.0);
    let te2 = module(&format!("lora_te2_{Q}"), 3, 1.0);
    let out = dir.path().join("out");
    // Equal shapes: before the fix, TE2's q_proj alone merged into TE1's silently.
    for (file, modules) in [
        ("te2.safetensors", vec![&te2]),
        ("k.safetensors", vec![&te1, &te2]),
    ] {
        let adapter = kohya(dir.path().join(file), &modules);
        let line = one_line_error(&run_err(merge_args(&base, &adapter, &out, &[])));
        assert!(
            line.contains(&te2.name)
                && line.contains("`lora_te2_` is the second text encoder")
                && line.contains(TE1_Q)
                && line.contains("the first text encoder"),
            "{line}"
        );
        assert!(!line.contains(&format!("`{}`", te1.name)), "{line}");
        assert!(!out.exists(), "nothing written");
    }
    assert_eq!(listing(dir.path()).len(), 3, "{:?}", listing(dir.path()));

    // The first encoder's module alone lands on the first encoder, as ComfyUI maps it.
    let adapter = kohya(dir.path().join("te1.safetensors"), &[&te1]);
    merge_ok(&base, &adapter, &out, &["--quiet"]);
    assert_merged(&base, &out, &[(TE1_Q, &te1)]);
}

/// TE2's own kohya names (OpenCLIP `mlp_c_fc`, `attn_out_proj`, as a file trained on the
/// single-file layout would name them) land on the second encoder, and a `lora_te1_` module
/// with the same names is refused: the only match belongs to the second encoder.
#[test]
fn sdxl_single_file_openclip_names_stay_on_te2() {
    let dir = tempfile::tempdir().unwrap();
    let base = sdxl_single_file(dir.path());
    let fc = module("lora_te2_model_transformer_resblocks_0_mlp_c_fc", 5, 4.0);
    let out_proj = module(
        "lora_te2_model_transformer_resblocks_0_attn_out_proj",
        7,
        2.0,
    );
    let adapter = kohya(dir.path().join("k.safetensors"), &[&fc, &out_proj]);
    let out = dir.path().join("out");
    merge_ok(&base, &adapter, &out, &["--quiet"]);
    assert_merged(&base, &out, &[(TE2_FC, &fc), (TE2_OUT, &out_proj)]);

    let wrong = module("lora_te1_model_transformer_resblocks_0_mlp_c_fc", 9, 1.0);
    let adapter = kohya(dir.path().join("wrong.safetensors"), &[&wrong]);
    let out = dir.path().join("out2");
    let line = one_line_error(&run_err(merge_args(&base, &adapter, &out, &[])));
    assert!(
        line.contains("`lora_te1_` is the first text encoder")
            && line.contains(TE2_FC)
            && line.contains("the second text encoder"),
        "{line}"
    );
    assert!(!out.exists(), "nothing written");
}

/// A diffusers-style file with both encoders in HF names: each prefix lands on its own encoder
/// (before, both names matched both encoders and the merge was refused as ambiguous).
#[test]
fn diffusers_style_base_each_encoder_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let q = |root: &str| format!("{root}.text_model.encoder.layers.0.self_attn.q_proj.weight");
    let (q1, q2) = (q("text_encoder"), q("text_encoder_2"));
    let unet = "unet.down_blocks.1.attentions.0.proj_in.weight";
    let base = base(dir.path(), "pipe.safetensors", &[&q1, &q2, unet]);
    let te1 = module(&format!("lora_te1_{Q}"), 11, 1.0);
    let te2 = module(&format!("lora_te2_{Q}"), 13, 8.0);
    let un = module("lora_unet_down_blocks_1_attentions_0_proj_in", 15, 2.0);
    let adapter = kohya(dir.path().join("k.safetensors"), &[&te1, &te2, &un]);
    let out = dir.path().join("out");
    merge_ok(&base, &adapter, &out, &["--quiet"]);
    assert_merged(&base, &out, &[(&q1, &te1), (&q2, &te2), (unet, &un)]);
}

/// Bare names and bases without a text-encoder root are matched as before: a kohya name on a
/// `transformer.` base (GPT-2's root too) still lands (no component to confuse it with).
#[test]
fn bases_without_encoders_keep_suffix_matching() {
    let dir = tempfile::tempdir().unwrap();
    let w = "transformer.layers.0.mlp.fc.weight";
    let base = base(dir.path(), "gpt2.safetensors", &[w]);
    let m = module("lora_te_layers_0_mlp_fc", 17, 2.0);
    let adapter = kohya(dir.path().join("k.safetensors"), &[&m]);
    let out = dir.path().join("out");
    merge_ok(&base, &adapter, &out, &["--quiet"]);
    assert_merged(&base, &out, &[(w, &m)]);
}

/// ComfyUI's own text-encoder names (`text_encoders.clip_l.transformer.…`, the keys
/// `model_lora_keys_clip` @41444b5 maps as `text_encoders.{key}`) land on the same encoder of
/// an SDXL single file and of a diffusers-style file; `clip_g`'s HF q_proj finds no OpenCLIP
/// tensor in this base (it has no `in_proj_weight`: with one, q lands on its first third, see
/// `conventions_slices`) and is refused, never put on CLIP-L.
#[test]
fn comfy_text_encoder_names_land_on_their_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let comfy = |enc: &str| {
        format!("text_encoders.{enc}.transformer.text_model.encoder.layers.0.self_attn.q_proj")
    };
    let l = module(&comfy("clip_l"), 21, 1.0);
    let g = module(&comfy("clip_g"), 23, 2.0);

    let sdxl = sdxl_single_file(dir.path());
    let adapter = kohya(dir.path().join("l.safetensors"), &[&l]);
    let out = dir.path().join("out");
    merge_ok(&sdxl, &adapter, &out, &["--quiet"]);
    assert_merged(&sdxl, &out, &[(TE1_Q, &l)]);
    let adapter = kohya(dir.path().join("g.safetensors"), &[&g]);
    let out = dir.path().join("out2");
    let line = one_line_error(&run_err(merge_args(&sdxl, &adapter, &out, &[])));
    assert!(
        line.contains(&g.name) && line.contains("no base tensor"),
        "{line}"
    );
    assert!(!out.exists(), "nothing written");

    let q = |root: &str| format!("{root}.text_model.encoder.layers.0.self_attn.q_proj.weight");
    let (q1, q2) = (q("text_encoder"), q("text_encoder_2"));
    let pipe = base(dir.path(), "pipe.safetensors", &[&q1, &q2]);
    let adapter = kohya(dir.path().join("lg.safetensors"), &[&l, &g]);
    let out = dir.path().join("out3");
    merge_ok(&pipe, &adapter, &out, &["--quiet"]);
    assert_merged(&pipe, &out, &[(&q1, &l), (&q2, &g)]);
}

/// `convert --to diffusers --base PIPELINE`: a diffusers pipeline folder (`model_index.json`,
/// `unet/`, `text_encoder/`) is a base, each sd-scripts module resolved on its component's folder
/// (rev16c F5: the folder was no base, and a file holding `lora_unet_` and `lora_te_` modules
/// could be converted onto neither component alone). Each component merged from the converted
/// file equals the f64 reference of `fixtures/gen/pipeline_base_fixtures.py`, every other weight
/// keeps its bytes; a module of a component the folder lacks is refused, nothing written.
#[test]
fn kohya_modules_convert_onto_the_components_of_a_pipeline_folder() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = fixture("pipeline_sd1");
    let src = pipeline.join("kohya.safetensors");
    let out = dir.path().join("diffusers.safetensors");
    run_ok(convert_args(
        &src,
        "diffusers",
        &out,
        &["--base", s(&pipeline)],
    ));
    let want = read(&pipeline.join("reference.safetensors"));
    for comp in ["unet", "text_encoder"] {
        let merged = dir.path().join(format!("{comp}_merged"));
        merge_ok(
            &pipeline.join(comp),
            &out,
            &merged,
            &["--allow-unmatched", "--quiet"],
        );
        let (got, base) = (
            read_checkpoint(&merged),
            read_checkpoint(&pipeline.join(comp)),
        );
        let mut adapted = 0;
        for (name, b) in &base {
            match want.get(&format!("{comp}.{name}")) {
                Some(w) => {
                    assert_f32_close(name, &got[name].f32(), &w.f32(), &b.f32());
                    adapted += 1;
                }
                None => assert_eq!(got[name].data, b.data, "{comp}.{name}: same bytes"),
            }
        }
        let expected = want
            .keys()
            .filter(|k| k.starts_with(&format!("{comp}.")))
            .count();
        assert_eq!(adapted, expected, "{comp}: every reference weight merged");
    }
    // A second text encoder's module on a pipeline with one.
    let mut te2 = read(&src);
    te2 = te2
        .into_iter()
        .map(|(k, t)| (k.replacen("lora_te_", "lora_te2_", 1), t))
        .collect();
    let te2_src = dir.path().join("te2.safetensors");
    write_tensors(&te2_src, &te2);
    let refused_out = dir.path().join("refused.safetensors");
    let line = refused(
        convert_args(
            &te2_src,
            "diffusers",
            &refused_out,
            &["--base", s(&pipeline)],
        ),
        &refused_out,
    );
    assert!(
        line.contains("`text_encoder_2`") && line.contains("no `text_encoder_2/` folder"),
        "{line}"
    );
    // The pipeline's model_index.json is an input, never an output (on a copy of the folder).
    let copy = dir.path().join("pipeline");
    for rel in [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "model_index.json",
    ] {
        std::fs::create_dir_all(copy.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(pipeline.join(rel), copy.join(rel)).unwrap();
    }
    // Nor are the weights of a component no module of the adapter uses (rev19 review: a UNet-only
    // file's output replaced the text encoder's weights).
    let mut unet_only = read(&src);
    unet_only.retain(|k, _| k.starts_with("lora_unet_"));
    let unet_src = dir.path().join("unet_only.safetensors");
    write_tensors(&unet_src, &unet_only);
    for (adapter, out) in [
        (&src, copy.join("model_index.json")),
        (&unet_src, copy.join("text_encoder/model.safetensors")),
    ] {
        let before = std::fs::read(&out).unwrap();
        let line = one_line_error(&run_err(convert_args(
            adapter,
            "diffusers",
            &out,
            &["--base", s(&copy)],
        )));
        assert!(
            line.contains(&*out.file_name().unwrap().to_string_lossy()),
            "{line}"
        );
        assert_eq!(std::fs::read(&out).unwrap(), before, "{}", out.display());
    }
}

/// `convert --to diffusers` gives the denoiser one component for the whole model, told by its
/// paths (rev19 review): a transformer with a top-level `time_embedding` (CogVideoX) goes whole
/// under `transformer.` (its `time_embedding` went under `unet.`, where CogVideoX's loader drops
/// it), a UNet's modules under `unet.`; and text-encoder modules on a transformers 5 CLIP
/// (`encoder.layers.…`, which a LoRA converter's table row reads as another model's original
/// name) convert under `text_encoder.` (they were refused as an original layout).
#[test]
fn the_denoiser_takes_one_component_and_text_encoders_are_no_original_layout() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], &str); 2] = [
        (
            "cog",
            &["transformer_blocks.0.attn1.to_q", "time_embedding.linear_1"],
            "transformer",
        ),
        (
            "unet",
            &[
                "down_blocks.0.attentions.0.proj_in",
                "time_embedding.linear_1",
            ],
            "unet",
        ),
    ];
    for (case, paths, comp) in cases {
        let weights: Vec<String> = paths.iter().map(|p| format!("{p}.weight")).collect();
        let names: Vec<&str> = weights.iter().map(String::as_str).collect();
        let b = base(dir.path(), &format!("{case}_base.safetensors"), &names);
        let mods: Vec<Module> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                module(
                    &format!("lora_unet_{}", p.replace('.', "_")),
                    7 + i as u64,
                    2.0,
                )
            })
            .collect();
        let src = kohya(
            dir.path().join(format!("{case}.safetensors")),
            &mods.iter().collect::<Vec<_>>(),
        );
        let out = dir.path().join(format!("{case}_diffusers.safetensors"));
        run_ok(convert_args(
            &src,
            "diffusers",
            &out,
            &["--base", s(&b), "--quiet"],
        ));
        let keys: Vec<String> = read(&out).into_keys().collect();
        assert_eq!(keys.len(), 2 * paths.len(), "{case}: {keys:?}");
        assert!(
            keys.iter().all(|k| k.starts_with(&format!("{comp}."))),
            "{case}: {keys:?}"
        );
    }
    let pipeline = fixture("pipeline_sd1");
    let mut te = read(&pipeline.join("kohya.safetensors"));
    te.retain(|k, _| k.starts_with("lora_te_"));
    let src = dir.path().join("te.safetensors");
    write_tensors(&src, &te);
    let out = dir.path().join("te_diffusers.safetensors");
    let encoder = pipeline.join("text_encoder");
    run_ok(convert_args(
        &src,
        "diffusers",
        &out,
        &["--base", s(&encoder), "--quiet"],
    ));
    let keys: Vec<String> = read(&out).into_keys().collect();
    assert!(
        keys.contains(&"text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight".to_owned()),
        "{keys:?}"
    );
}
