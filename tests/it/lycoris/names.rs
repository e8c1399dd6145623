//! What lorakit makes of a diffusion adapter's names: the per-module scale of every LyCORIS
//! algorithm against the scale lycoris-lora itself computed (`fixtures/lycoris/MANIFEST.json`),
//! the model family and component prefixes of files named as each producer names them, and the
//! spellings that had no fixture before: DyLoRA as lycoris-lora writes it, diffusers'
//! `.lora_linear_layer.up/down` and OneTrainer's kohya-style "mixture" format.

use super::*;

/// The `inspect --json` report of `path`.
fn inspect(path: &Path) -> serde_json::Value {
    inspect_json(path, &[])
}

/// Every module of every LyCORIS case reports the scale lycoris-lora's own module holds
/// (`module.scale`, recorded by `fixtures/gen/lycoris_fixtures.py`): alpha/dim for LoHa and
/// LoCon, and LoKr's rule (1 where both halves are whole, alpha/dim where one is decomposed,
/// which the `lokr` case mixes by module), 1 for full. The algorithm is the one it was made with.
#[test]
fn inspect_reports_the_scale_lycoris_computed_for_every_module() {
    let manifest: serde_json::Value = read_json(fixture("lycoris/MANIFEST.json"));
    let mut checked = 0;
    for case in CASES {
        let entry = &manifest["cases"][case];
        let report = inspect(&fixture(&format!("lycoris/{case}.safetensors")));
        let rows = report["modules"].as_array().unwrap();
        assert_eq!(
            rows.len(),
            entry["modules"].as_object().unwrap().len(),
            "{case}"
        );
        for (module, facts) in entry["modules"].as_object().unwrap() {
            let name = format!("lycoris_{}", module.replace('.', "_"));
            let row = rows
                .iter()
                .find(|m| m["name"] == name.as_str())
                .unwrap_or_else(|| panic!("{case}: {name} not listed"));
            let (got, want) = (
                row["scale"].as_f64().unwrap(),
                facts["scale"].as_f64().unwrap(),
            );
            assert!(
                (got - want).abs() <= 1e-12 * want.abs(),
                "{case} {name}: scale {got}, lycoris-lora {want}"
            );
            let algo = row["algo"].as_str().unwrap();
            let made = entry["algo"].as_str().unwrap();
            assert!(
                algo.starts_with(if made == "lora" { "lora" } else { made }),
                "{case} {name}: algo {algo}, made as {made}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * CASES.len());
}

/// A small single-file LoRA over `modules`: kohya `lora_down`/`lora_up`/`alpha` names for
/// underscore names, PEFT `lora_A`/`lora_B` for dotted ones (2×4 factors; only names matter).
fn named_file(dir: &Path, file: &str, modules: &[&str]) -> std::path::PathBuf {
    let mut t = BTreeMap::new();
    let f32s = |n: usize| T {
        dtype: safetensors::Dtype::F32,
        shape: vec![],
        data: (0..n)
            .flat_map(|i| (0.01 * i as f32).to_le_bytes())
            .collect(),
    };
    for m in modules {
        let (down, up) = if m.contains('.') {
            (format!("{m}.lora_A.weight"), format!("{m}.lora_B.weight"))
        } else {
            t.insert(format!("{m}.alpha"), f32s(1));
            (
                format!("{m}.lora_down.weight"),
                format!("{m}.lora_up.weight"),
            )
        };
        t.insert(
            down,
            T {
                shape: vec![2, 4],
                ..f32s(8)
            },
        );
        t.insert(
            up,
            T {
                shape: vec![4, 2],
                ..f32s(8)
            },
        );
    }
    let p = dir.join(format!("{file}.safetensors"));
    write(&p, &t);
    p
}

/// (file, module names, family, component prefixes).
type Case<'a> = (&'a str, &'a [&'a str], Option<&'a str>, &'a [&'a str]);

/// The family and component prefixes of files named as their producers name them. Module names
/// are those of the models' own state dicts, spelled by each producer's rule:
/// - kohya sd-scripts @48d368fa `networks/lora_flux.py` (`lora_unet` for the Flux transformer,
///   `lora_te1` CLIP-L, `lora_te3` T5; `train_blocks="double"` trains `DoubleStreamBlock` only,
///   whose `img_mlp`/`img_mod` names Qwen-Image shares) over `library/flux_models.py`
///   (`double_blocks.N.img_attn.qkv`, `img_mlp.0`, `img_mod.lin`; `single_blocks.N.linear1`);
///   `networks/lora_sd3.py` (`lora_unet`, `lora_te1/2/3`) over MMDiT's `joint_blocks.N.x_block.attn.qkv`;
///   `networks/lora.py` (`lora_te1`/`lora_te2` for SDXL) over SGM's `input_blocks.4.1.transformer_blocks`;
/// - ComfyUI `comfy/lora.py` @41444b52 `model_lora_keys_unet` / `_clip`: `transformer.` and
///   `lora_transformer_` (OneTrainer) over diffusers' Flux/SD3 names, `lora_prior_unet_`
///   (Stable Cascade: only the prefix is checked, lorakit names no Cascade family),
///   `text_encoder_2.` (SDXL diffusers), `text_encoders.` (its generic clip keys);
/// - diffusers `transformer_qwenimage.py` (`transformer_blocks.N.img_mlp.net.0.proj`,
///   `img_mod.1`); ComfyUI `comfy/ldm/wan/model.py` (`blocks.N.cross_attn.k`, `ffn.0`) under
///   `diffusion_model.`.
#[test]
fn inspect_names_the_family_and_prefixes_of_each_producers_names() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[Case] = &[
        (
            "flux_kohya",
            &[
                "lora_unet_double_blocks_0_img_attn_qkv",
                "lora_unet_double_blocks_0_img_mlp_0",
                "lora_unet_single_blocks_0_linear1",
                "lora_te1_text_model_encoder_layers_0_mlp_fc1",
                "lora_te3_encoder_block_0_layer_0_SelfAttention_q",
            ],
            Some("Flux"),
            &["lora_te1", "lora_te3", "lora_unet"],
        ),
        (
            "flux_kohya_double_only",
            &[
                "lora_unet_double_blocks_0_img_attn_qkv",
                "lora_unet_double_blocks_0_img_mlp_0",
                "lora_unet_double_blocks_0_img_mod_lin",
                "lora_unet_double_blocks_0_txt_mlp_2",
            ],
            Some("Flux"),
            &["lora_unet"],
        ),
        (
            "flux_kohya_single_only",
            &[
                "lora_unet_single_blocks_0_linear1",
                "lora_unet_single_blocks_1_linear2",
            ],
            Some("Flux"),
            &["lora_unet"],
        ),
        (
            "flux_diffusers",
            &[
                "transformer.transformer_blocks.0.attn.to_q",
                "transformer.single_transformer_blocks.0.attn.to_q",
            ],
            Some("Flux"),
            &["transformer"],
        ),
        (
            "flux_onetrainer",
            &[
                "lora_transformer_transformer_blocks_0_attn_to_q",
                "lora_transformer_single_transformer_blocks_0_proj_out",
            ],
            Some("Flux"),
            &["lora_transformer"],
        ),
        (
            "sd3_kohya",
            &[
                "lora_unet_joint_blocks_0_x_block_attn_qkv",
                "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                "lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
            ],
            Some("SD3"),
            &["lora_te1", "lora_te2", "lora_unet"],
        ),
        (
            "sd3_diffusers",
            &[
                "transformer.transformer_blocks.0.attn.to_q",
                "transformer.transformer_blocks.0.attn.add_k_proj",
            ],
            Some("SD3"),
            &["transformer"],
        ),
        (
            "sdxl_kohya",
            &[
                "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                "lora_te1_text_model_encoder_layers_0_mlp_fc1",
                "lora_te2_text_model_encoder_layers_0_mlp_fc1",
            ],
            Some("SDXL"),
            &["lora_te1", "lora_te2", "lora_unet"],
        ),
        (
            "sdxl_diffusers",
            &[
                "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q",
                "text_encoder.text_model.encoder.layers.0.mlp.fc1",
                "text_encoder_2.text_model.encoder.layers.0.mlp.fc1",
            ],
            Some("SDXL"),
            &["text_encoder", "text_encoder_2", "unet"],
        ),
        (
            "qwen_image",
            &[
                "transformer.transformer_blocks.0.img_mlp.net.0.proj",
                "transformer.transformer_blocks.0.img_mod.1",
            ],
            Some("Qwen-Image"),
            &["transformer"],
        ),
        (
            "wan",
            &[
                "diffusion_model.blocks.0.cross_attn.k",
                "diffusion_model.blocks.0.ffn.0",
            ],
            Some("Wan"),
            &["diffusion_model"],
        ),
        (
            "cascade",
            &["lora_prior_unet_down_blocks_0_2_attention_attn_out_proj"],
            None,
            &["lora_prior_unet"],
        ),
        (
            "text_encoders",
            &["text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1"],
            Some("CLIP text encoder"),
            &["text_encoders"],
        ),
    ];
    for &(file, modules, family, prefixes) in cases {
        let p = named_file(dir.path(), file, modules);
        let c = inspect(&p)["convention"].clone();
        assert_eq!(c["family"].as_str(), family, "{file}: {c}");
        let got: Vec<&str> = strs(&c["prefixes"]);
        assert_eq!(got, prefixes, "{file}");
        let naming = if modules[0].contains('.') {
            "peft"
        } else {
            "kohya"
        };
        assert_eq!(c["naming"], serde_json::json!([naming]), "{file}");
    }
}

/// DyLoRA as lycoris-lora writes it (`fixtures/lycoris_dylora/`, `fixtures/gen/lycoris_dylora_fixture.py`):
/// plain LoRA on disk, with a 2-D `lora_up` even for the convs. It merges as ComfyUI's LoRA
/// adapter computes it (alpha / rank, the reference made in f64 by the generator), byte for
/// byte elsewhere; inspect calls it LoRA with the rank of its blocks.
#[test]
fn dylora_files_merge_as_the_plain_lora_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("lycoris_dylora/dylora.safetensors");
    let out = dir.path().join("merged.safetensors");
    merge_ok(
        &fixture("lycoris/base.safetensors"),
        &adapter,
        &out,
        &["--quiet"],
    );
    let (got, want, base) = (
        read(&out),
        read(&fixture("lycoris_dylora/dylora.merged.safetensors")),
        read(&fixture("lycoris/base.safetensors")),
    );
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    let mut changed = 0;
    for (name, t) in &got {
        if want[name].data == base[name].data {
            assert!(
                t.data == base[name].data,
                "{name}: untouched tensor changed"
            );
            continue;
        }
        let e = rel_err(&t.f32(), &want[name].f32());
        assert!(e <= TOL, "{name}: relative error {e:e}");
        changed += 1;
    }
    assert_eq!(changed, 4);
    let manifest: serde_json::Value = read_json(fixture("lycoris_dylora/MANIFEST.json"));
    let report = inspect(&adapter);
    for (module, facts) in manifest["modules"].as_object().unwrap() {
        let name = format!("lycoris_{}", module.replace('.', "_"));
        let row = entry(&report["modules"], "name", name.as_str());
        assert_eq!(row["algo"], "lora", "{name}");
        assert_eq!(row["rank"], facts["rank"], "{name}");
        assert_eq!(row["alpha"].as_f64(), facts["alpha"].as_f64(), "{name}");
    }
}

/// Two text-encoder spellings made from one PEFT adapter (`kohya/adapters/te_peft`, alpha = r):
/// `.lora_linear_layer.up/down`, as diffusers' own `convert_state_dict_to_diffusers` writes it
/// (`fixtures/gen/lora_linear_layer_fixture.py`: the CLIP attention projections renamed, the
/// MLP left in PEFT names), and OneTrainer's "mixture" format (`lora_te1_…` kohya-style, built
/// to OneTrainer's `convert_to_mixture`/`kohya_flatten` by `fixtures/gen/onetrainer_fixture.py`).
/// Each merges into the text encoder as PEFT's merge of the same factors
/// (`kohya/merged/te_peft.safetensors`), and inspect names its spellings, component prefix and
/// the CLIP family.
#[test]
fn text_encoder_spellings_merge_like_peft() {
    let dir = tempfile::tempdir().unwrap();
    let want = read(&fixture("kohya/merged/te_peft.safetensors"));
    let base = read_checkpoint(&fixture("kohya/te_base"));
    for (file, naming, prefix) in [
        (
            "te_lora_linear_layer",
            &["lora-linear-layer", "peft"][..],
            "text_encoder",
        ),
        ("te_onetrainer", &["kohya"][..], "lora_te1"),
    ] {
        let adapter = fixture(&format!("conventions_te/{file}.safetensors"));
        let out = dir.path().join(file);
        merge_ok(&fixture("kohya/te_base"), &adapter, &out, &["--quiet"]);
        let got = read_checkpoint(&out);
        for (name, t) in &got {
            match want.get(name) {
                Some(w) => {
                    let e = rel_err(&t.f32(), &w.f32());
                    assert!(e <= TOL, "{file} {name}: relative error {e:e}");
                }
                None => assert!(t.data == base[name].data, "{file} {name} changed"),
            }
        }
        assert!(want.keys().all(|k| got.contains_key(k)), "{file}");
        let c = inspect(&adapter)["convention"].clone();
        assert_eq!(c["naming"], serde_json::json!(naming), "{file}");
        assert_eq!(c["prefixes"], serde_json::json!([prefix]), "{file}");
        assert_eq!(c["family"], "CLIP text encoder", "{file}");
    }
}
