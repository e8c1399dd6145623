//! Tests of [`super`]: the tables' lookups and placements on tiny bases.

use super::*;

#[test]
fn original_names_map_to_diffusers_paths() {
    let t = |n, k| targets(n, k);
    assert_eq!(
        t("lora_unet_double_blocks_12_img_attn_qkv", true).unwrap(),
        [
            "transformer_blocks.12.attn.to_q",
            "transformer_blocks.12.attn.to_k",
            "transformer_blocks.12.attn.to_v"
        ]
    );
    assert_eq!(
        t("diffusion_model.single_blocks.3.linear1", false)
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        t("lora_unet_blocks_0_cross_attn_k_img", true).unwrap(),
        ["blocks.0.attn2.add_k_proj"]
    );
    assert_eq!(t("lora_unet_double_blocks_x_img_attn_qkv", true), None);
    assert_eq!(t("lora_te1_double_blocks_0_img_attn_qkv", true), None);
    assert_eq!(t("double_blocks.0.img_attn.qkvx", false), None);
}

const FINAL: (&str, &str) = ("final_layer.adaLN_modulation.1", "norm_out.linear");

#[test]
fn the_final_modulation_takes_its_rows_with_the_halves_swapped() {
    let rs = |offset, len| RowSlice { offset, len };
    let part = whole_part(FINAL, 6, || false).unwrap().unwrap();
    assert_eq!(part, Part(vec![rs(3, 3), rs(0, 3)]));
    assert_eq!((part.rows(), part.end()), (6, 6));
    // Rows of a 6 × 2 matrix (B of rank 2, or a dense ΔW of 2 columns) in the tensor's order.
    let m: Vec<u32> = (0..12).collect();
    assert_eq!(part.gather(&m, 2), [6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]);
    assert_eq!(part.to_string(), "rows 3..6, 0..3");
    // An odd module cannot be one; other rows are whole, in order.
    assert_eq!(whole_part(FINAL, 5, || false), Err(()));
    assert_eq!(whole_part(FINAL, 0, || false), Err(()));
    assert_eq!(
        whole_part(("final_layer.linear", "proj_out"), 6, || true),
        Ok(None)
    );
    assert!(!whole_fits(&Err(()), true, &[5, 4]));
    assert!(!whole_fits(&Ok(Some(part.clone())), false, &[6, 4]));
    assert!(whole_fits(&Ok(Some(part)), true, &[6, 4]));
    assert_eq!(
        targets("lora_unet_final_layer_adaLN_modulation_1", true).unwrap(),
        ["norm_out.linear"]
    );
}

#[test]
fn sd3_names_are_merged_but_not_said_converted_by_diffusers() {
    // diffusers' SD3 loader converts no original names: `check` must not hear of them.
    assert_eq!(
        targets("lora_unet_joint_blocks_0_x_block_attn_qkv", true),
        None
    );
    let row = lookup(
        "diffusion_model.joint_blocks.3.x_block.attn2.qkv",
        false,
        false,
    )
    .remove(0);
    assert_eq!(
        row.paths,
        [
            "transformer_blocks.3.attn2.to_q",
            "transformer_blocks.3.attn2.to_k",
            "transformer_blocks.3.attn2.to_v"
        ]
    );
    assert_eq!(row.index, "3");
    let row = lookup("lora_unet_t_embedder_mlp_2", true, false).remove(0);
    assert_eq!(row.paths, ["time_text_embed.timestep_embedder.linear_2"]);
}

#[test]
fn an_original_name_two_models_rename_apart_is_both_rows_flux_first() {
    let rows = lookup("lora_unet_double_blocks_0_img_mlp_0", true, false);
    let paths: Vec<&str> = rows.iter().map(|r| r.paths[0].as_str()).collect();
    assert_eq!(
        paths,
        [
            "transformer_blocks.0.ff.net.0.proj",
            "transformer_blocks.0.ff.linear_in"
        ]
    );
    // `check` hears only of Flux's (diffusers' Flux loader), as before Flux.2's rows.
    let t = targets("lora_unet_double_blocks_0_img_mlp_0", true).unwrap();
    assert_eq!(t, ["transformer_blocks.0.ff.net.0.proj"]);
    assert!(targets("lora_unet_single_stream_modulation_lin", true).is_none());
    // HunyuanVideo's `img_attn_qkv` (dotted: diffusers' and ComfyUI's rows; flat: Flux's too).
    let p = |n, k| {
        lookup(n, k, false)
            .iter()
            .map(|r| r.paths.join(" "))
            .collect::<Vec<_>>()
    };
    let dotted = p("diffusion_model.double_blocks.2.img_attn_qkv", false);
    assert!(dotted[0].ends_with("2.attn.to_v") && dotted[1] == "double_blocks.2.img_attn.qkv");
    let flat = p("lora_unet_double_blocks_2_img_attn_qkv", true);
    let same = flat.iter().filter(|x| **x == dotted[0]).count();
    assert!(dotted.len() == 2 && same == 2 && flat.iter().all(|x| dotted.contains(x)));
}

#[test]
fn only_the_last_blocks_context_modulation_swaps_its_halves() {
    let names = [
        "transformer.transformer_blocks.0.attn.to_q.weight",
        "transformer.transformer_blocks.1.norm1_context.linear.weight",
        "transformer.single_transformer_blocks.2.proj_out.weight",
    ];
    let p = "transformer_blocks.#.norm1_context.linear";
    assert!(!in_last_block(p, "0", &names));
    // `single_transformer_blocks.2` is no block 2 of `transformer_blocks`.
    assert!(in_last_block(p, "1", &names));
    assert!(!in_last_block("final_layer.linear", "", &names));
    assert!(!in_last_block(p, "99999999999999999999999", &names));
    let orig = (
        "joint_blocks.#.context_block.adaLN_modulation.1",
        "transformer_blocks.#.norm1_context.linear",
    );
    assert_eq!(whole_part(orig, 4, || false), Ok(None));
    assert_eq!(whole_part(orig, 4, || true), Ok(Part::halves_swapped(4)));
    assert_eq!(whole_part(orig, 3, || true), Err(()));
}

#[test]
fn lumina2_and_ltx_video_rows_and_pefts_root() {
    // Z-Image's and Lumina 2's original names are one string: both rows, the base decides.
    let rows = lookup("diffusion_model.layers.3.attention.qkv", false, false);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[1].paths,
        [
            "layers.3.attn.to_q",
            "layers.3.attn.to_k",
            "layers.3.attn.to_v"
        ]
    );
    let rows = lookup("lora_unet_noise_refiner_0_feed_forward_w3", true, false);
    assert_eq!(rows[0].paths, ["noise_refiner.0.feed_forward.linear_3"]);
    let rows = lookup(
        "diffusion_model.final_layer.adaLN_modulation.1",
        false,
        false,
    );
    assert!(rows.iter().any(|r| r.paths == ["norm_out.linear_1"]));
    // No context-refiner modulation in Lumina 2 (`convert_lumina2_to_diffusers`).
    assert!(lookup("context_refiner.0.adaLN_modulation.1", false, false).is_empty());
    assert_eq!(
        lookup("diffusion_model.patchify_proj", false, false)[0].paths,
        ["proj_in"]
    );
    // diffusers' LTX-Video LoRA converter renames neither: `check` must not hear of them.
    assert_eq!(targets("diffusion_model.patchify_proj", false), None);
    assert_eq!(
        lookup(
            "base_model.model.double_blocks.0.img_attn.qkv",
            false,
            false
        )[0]
        .paths[0],
        "transformer_blocks.0.attn.to_q"
    );
    assert!(lookup(
        "base_model.other.double_blocks.0.img_attn.qkv",
        false,
        false
    )
    .is_empty());
}

#[test]
fn a_weight_is_found_under_at_most_one_root() {
    let names = [
        "transformer.proj_out.weight",
        "transformer.single_transformer_blocks.0.proj_out.weight",
    ];
    assert_eq!(
        weight_of("proj_out", &names),
        ["transformer.proj_out.weight"]
    );
    assert_eq!(
        weight_of("proj_out", &["proj_out.weight"]),
        ["proj_out.weight"]
    );
}

/// `convert --to diffusers` refuses a module on a name of an original layout
/// ([`original_layout_path`]), so no diffusers path of any table may be taken for one, nor a text
/// encoder's or Qwen-Image's own paths, and every block path of the checkpoint converters' tables
/// that diffusers names otherwise is one, under no root or `diffusion_model.`.
#[test]
fn diffusers_paths_are_not_taken_for_original_ones() {
    let at = |p: &str| p.replace('#', "3");
    for (model, orig, difs) in rows() {
        if !model.rows_name_diffusers() {
            continue;
        }
        for d in difs.iter().map(|d| at(d)) {
            assert!(
                !original_layout_path(&d),
                "{model:?}: diffusers path {d} read as an original one"
            );
        }
        let o = at(orig);
        let a_diffusers_path = rows().any(|(_, _, difs)| difs.iter().any(|d| at(d) == o));
        if model.checkpoint_layout() && orig.contains('#') && !a_diffusers_path {
            assert!(
                original_layout_path(&o) && original_layout_path(&format!("diffusion_model.{o}")),
                "{model:?}: original path {o} not recognized"
            );
        }
    }
    for path in [
        "encoder.layers.0.self_attn.q_proj",
        "text_model.encoder.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "layers.0.self_attn.k_proj",
        "txt_in",
        "img_in",
        "transformer_blocks.0.attn.to_q",
    ] {
        assert!(!original_layout_path(path), "{path}");
    }
}
