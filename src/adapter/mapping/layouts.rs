//! Modules named in a model's original single-file layout, merged into the same model saved by
//! diffusers (Flux, Wan, SD3 / SD3.5, Flux.2, HunyuanVideo, Z-Image, Lumina 2, LTX-Video, LTX-2, Flux.3;
//! Anima, Krea 2, Ideogram 4, ACE-Step and MiniMax-H3 from their LoRA converters alone), and
//! diffusers-named modules merged into the original file.
//!
//! The trainers people use name a diffusion transformer the way its authors' code does: kohya
//! sd-scripts (`networks/lora_flux.py` @450630c: `lora_unet_double_blocks_0_img_attn_qkv`;
//! `networks/lora_sd3.py` @077f6a4: `lora_unet_joint_blocks_0_x_block_attn_qkv`), ComfyUI's
//! dotted form (`diffusion_model.double_blocks.0.img_attn.qkv`), musubi-tuner for Wan
//! (`lora_unet_blocks_0_self_attn_q`) or Wan's own names (`diffusion_model.blocks.0.self_attn.q`).
//! A diffusers checkpoint of the same model uses other names and splits some fused tensors: BFL
//! Flux's `img_attn.qkv` `[3d, d]` is diffusers' `attn.to_q`/`to_k`/`to_v` `[d, d]` each, and
//! `single_blocks.N.linear1` `[3d + mlp, d]` is `to_q`/`to_k`/`to_v`/`proj_mlp`. The tables
//! (`table.rs`, `video.rs`, [`TABLES`]) are diffusers 0.42.1's own: `loaders/single_file_utils.py`
//! `convert_flux_transformer_checkpoint_to_diffusers`, `convert_wan_transformer_to_diffusers`,
//! `convert_sd3_transformer_checkpoint_to_diffusers`,
//! `convert_flux2_transformer_checkpoint_to_diffusers`,
//! `convert_hunyuan_video_transformer_to_diffusers`,
//! `convert_z_image_transformer_checkpoint_to_diffusers`, `convert_lumina2_to_diffusers` and
//! `convert_ltx_transformer_checkpoint_to_diffusers` (LTX-2: its LoRA converter's `rename_dict`), the same renames its LoRA converters
//! apply where it has them (`loaders/lora_conversion_utils.py`
//! `_convert_kohya_flux_lora_to_diffusers`, `_convert_musubi_wan_lora_to_diffusers`; none for
//! SD3; Flux.2's skips the final modulation's swap, which lorakit does not copy). [`targets`],
//! which `check` asks, keeps to the Flux and Wan rows. Models share original names that diffusers
//! names apart (Flux's and Flux.2's `img_mlp.0`): a module takes the first row whose tensors the
//! base holds.
//!
//! A module on a fused original tensor lands on every split diffusers tensor, each with the
//! [`RowSlice`] of the module's own output rows it receives ([`Placement::part`]): target `j`
//! gets `B[o_j..o_j + rows_j]·A`, the rows of ΔW that diffusers' `torch.split` gives it
//! (`_convert_to_ai_toolkit_cat`: lora_up split along its rows, lora_down shared). The widths are
//! the diffusers tensors' own rows in the base (so `linear1`'s `mlp` part needs no constant),
//! and must add up to the module's output rows. A modulation whose `(shift, scale)` halves
//! diffusers stores as `(scale, shift)` takes the module's rows in that order
//! ([`table::SWAPPED_HALVES`]; for SD3's context modulation only in the base's last block).
//!
//! [`super::resolve_in`] asks here only for a module that the ordinary matching placed nowhere,
//! so every earlier match is unchanged. Must not read tensor data.

mod converted;
mod table;
mod video;

use super::placement::{placed_on_rows, Part, Placement, RowSlice, Unmatched};
use crate::adapter::formats::kohya;
use crate::adapter::model::{LoraModule, ModuleKind};
use crate::dtype::Dtype;
use table::{Model, Rows, Swap, FLUX_NORMS, ORIGINAL_HEADS, SWAPPED_HALVES};

/// Every model's rows, looked up in this order (a path two models share, `final_layer.linear`,
/// maps alike in both).
const TABLES: &[(Model, Rows)] = &[
    (Model::Flux, table::FLUX),
    (Model::FluxComfy, table::FLUX_COMFY),
    (Model::Wan, table::WAN),
    (Model::Sd3, table::SD3),
    (Model::Flux2, table::FLUX2),
    (Model::HunyuanVideo, video::HUNYUAN_VIDEO),
    (Model::HunyuanVideoComfy, video::HUNYUAN_VIDEO_COMFY),
    (Model::ZImage, table::Z_IMAGE),
    (Model::Lumina2, table::LUMINA2),
    (Model::LtxVideo, video::LTX_VIDEO),
    (Model::Ltx2, video::LTX2),
    (Model::Flux3, table::FLUX3),
    (Model::Anima, converted::ANIMA),
    (Model::Krea2, converted::KREA2),
    (Model::Ideogram4, converted::IDEOGRAM4),
    (Model::AceStep, converted::ACE_STEP),
    (Model::MiniMaxH3, converted::MINIMAX_H3),
];

/// Every row of [`TABLES`]: (model, original path, diffusers paths).
fn rows() -> impl Iterator<Item = (Model, &'static str, &'static [&'static str])> {
    TABLES
        .iter()
        .flat_map(|(model, rows)| rows.iter().map(move |(o, d)| (*model, *o, *d)))
}

/// How a module of `out` rows of the row original path `orig` → diffusers path `dif` lands on its one diffusers tensor (or that
/// tensor's module on the original one): the halves swapped for [`SWAPPED_HALVES`] (a
/// [`Swap::InLastBlock`] row only where `last()` says the module is in the last block), else
/// whole (`None`). `Err` for an odd `out`, which no such tensor has.
fn whole_part(
    (orig, dif): (&str, &str),
    out: usize,
    last: impl FnOnce() -> bool,
) -> Result<Option<Part>, ()> {
    let swapped = match swap_of(orig, dif) {
        Some(Swap::Always) => true,
        Some(Swap::InLastBlock) => last(),
        None => false,
    };
    if swapped {
        Part::halves_swapped(out).map(Some).ok_or(())
    } else {
        Ok(None)
    }
}

/// When the [`SWAPPED_HALVES`] row for `(orig, dif)` swaps; `None`: no such row.
fn swap_of(orig: &str, dif: &str) -> Option<Swap> {
    SWAPPED_HALVES
        .iter()
        .find(|(o, d, _)| *o == orig && *d == dif)
        .map(|(_, _, w)| *w)
}

/// Whether the base of `names` is a model whose layouts store [`SWAPPED_HALVES`] swapped: Flux,
/// Flux.2 and HunyuanVideo (double- and single-stream blocks: `double_blocks.` in the original
/// layout, `single_transformer_blocks.` in diffusers') or SD3 (`joint_blocks.`,
/// `norm1_context.`). Other models name the same tensors and keep their order — OmniGen's and
/// CogVideoX's `final_layer.adaLN_modulation.1` is `norm_out.linear` unswapped
/// (`scripts/convert_omnigen_to_diffusers.py`, `convert_cogvideox_to_diffusers.py`) — so a swap
/// row applies only to a base recognized as one of these.
///
/// MiniMax-H3's `mlp.fc1` (`[gate; value]` in the reference, `[value; gate]` in diffusers'
/// `SwiGLU`) swaps only on a base with its blocks' `adaln_proj.linear`, in either layout.
fn swaps_halves(names: &[&str], original_layout: bool) -> bool {
    let marks: &[&str] = if original_layout {
        &["double_blocks.", "joint_blocks.", ".adaln_proj.linear."]
    } else {
        &[
            "single_transformer_blocks.",
            ".norm1_context.",
            ".adaln_proj.linear.",
        ]
    };
    names.iter().any(|n| marks.iter().any(|k| n.contains(k)))
}

/// The refusal of a module on a [`SWAPPED_HALVES`] tensor of a base that is not recognized.
fn unknown_order(m: &LoraModule, tensor: &str) -> Unmatched {
    Unmatched::UnknownOrder {
        module: m.name.clone(),
        tensor: tensor.to_owned(),
        why: "Flux, Flux.2, SD3 and HunyuanVideo store this modulation's two halves swapped between their original and diffusers layouts, other models (OmniGen, CogVideoX) do not, and this base is not recognized as one of the former".into(),
    }
}

/// Whether the prefix of a name before a table path (`name[..start]`, of a module or of an
/// original base tensor) is a root: empty, one component (`transformer.`, `diffusion_model.`),
/// `model.diffusion_model.` or PEFT's `base_model.model.` (fal's Flux Kontext files:
/// `base_model.model.double_blocks.0.img_attn.qkv.lora_A.weight`, which diffusers 0.42.1
/// `_convert_fal_kontext_lora_to_diffusers` reads as BFL names). A deeper prefix is another module whose path ends like a table row
/// (HunyuanVideo's token refiner's `…refiner_blocks.0.norm_out.linear` is no final
/// `norm_out.linear`).
fn root_prefix(prefix: &str) -> bool {
    prefix.is_empty()
        || prefix == "model.diffusion_model."
        || prefix == "base_model.model."
        || (prefix.ends_with('.') && !prefix[..prefix.len() - 1].contains('.'))
}

/// Whether block `index` of `pattern` (a path with `#`, in the layout of `names`) is the last
/// one `names` holds: no tensor, under any root, starts with the path before `#` and `index + 1`.
/// diffusers' SD3 converter counts its blocks the same way (`num_layers` from the checkpoint's
/// `joint_blocks.N` keys).
fn in_last_block(pattern: &str, index: &str, names: &[&str]) -> bool {
    let Some((pre, _)) = pattern.split_once('#') else {
        return false;
    };
    let Some(next) = index.parse::<usize>().ok().and_then(|i| i.checked_add(1)) else {
        return false;
    };
    let next = format!("{pre}{next}.");
    let dotted = format!(".{next}");
    !names
        .iter()
        .any(|n| n.starts_with(&next) || n.contains(&dotted))
}

/// Whether a module whose [`whole_part`] is `part` can land on a whole tensor of shape `found`:
/// swapped halves need a linear module on a 2-D weight (rows of `[out, in]`).
fn whole_fits(part: &Result<Option<Part>, ()>, linear: bool, found: &[usize]) -> bool {
    match part {
        Ok(Some(_)) => linear && found.len() == 2,
        Ok(None) => true,
        Err(()) => false,
    }
}

/// Whether `s` is `pattern` with its `#` (if any) standing for a block index; returns the
/// index's digits. `sep` is the separator the name uses (`_` for a kohya name).
fn matches<'a>(s: &'a str, pattern: &str, sep: char) -> Option<&'a str> {
    let pattern = pattern.replace('.', &sep.to_string());
    match pattern.split_once('#') {
        None => (s == pattern).then_some(""),
        Some((pre, post)) => {
            let digits = s.strip_prefix(pre)?.strip_suffix(post)?;
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
        }
    }
}

/// The diffusers module paths module `name` stands for, where diffusers' own LoRA loader
/// converts it ([`Model::diffusers_converts_lora`]; `check --target diffusers` asks): a kohya
/// name (`lora_unet_` + the original path with `_`) or a dotted name ending in the original path
/// (any root before it, `diffusion_model.`, is the original checkpoint's).
pub fn targets(name: &str, kohya_name: bool) -> Option<Vec<String>> {
    lookup(name, kohya_name, true)
        .into_iter()
        .next()
        .map(|row| row.paths)
}

/// Whether module path `path` (of a base tensor, or a module's dotted name) is a block module of
/// a diffusion transformer's original checkpoint layout, which diffusers names otherwise (BFL
/// Flux's `double_blocks.0.img_attn.qkv`, SD3's `joint_blocks.0.…`, Wan's
/// `blocks.0.self_attn.q`), under any root, and no model's diffusers path. Only the block rows
/// (`#`) of the checkpoint converters' tables ([`Model::checkpoint_layout`]) count: a top-level
/// original name can be another model's diffusers name (BFL's `txt_in`/`img_in` are
/// Qwen-Image's own), and the LoRA converters' rows (ACE-Step's `layers.#.self_attn.q_proj`)
/// read as a text encoder's paths under a root.
pub fn original_layout_path(path: &str) -> bool {
    let tails = || {
        std::iter::once(0)
            .chain(path.match_indices('.').map(|(i, _)| i + 1))
            .filter(|&start| root_prefix(&path[..start]))
            .map(|start| &path[start..])
    };
    let diffusers_path = tails().any(|tail| {
        rows().any(|(model, _, difs)| {
            model.rows_name_diffusers() && difs.iter().any(|d| matches(tail, d, '.').is_some())
        })
    });
    !diffusers_path
        && tails().any(|tail| {
            rows().any(|(model, orig, difs)| {
                model.checkpoint_layout()
                    && orig.contains('#')
                    && matches(tail, orig, '.')
                        .is_some_and(|i| !difs.iter().any(|d| d.replace('#', i) == tail))
            })
        })
}

/// The [`TABLES`] row a module name is in.
struct Row<'a> {
    /// The row's original path (with `#`).
    orig: &'static str,
    /// Its diffusers paths (with `#`).
    difs: &'static [&'static str],
    /// The block index the name holds (`""` for a path without `#`).
    index: &'a str,
    /// `difs` at that index.
    paths: Vec<String>,
}

/// The rows of [`TABLES`] (of models diffusers converts, if `converted_only`) whose original
/// path `name` is, as in [`targets`], in table order: models share original names that
/// diffusers names apart (BFL Flux's and Flux.2's `double_blocks.N.img_mlp.0` are `ff.net.0.proj`
/// and `ff.linear_in`), so the base decides ([`place`]).
fn lookup(name: &str, kohya_name: bool, converted_only: bool) -> Vec<Row<'_>> {
    fn found(tail: &str, sep: char, converted_only: bool) -> Vec<Row<'_>> {
        rows()
            .filter(|(model, _, _)| !converted_only || model.diffusers_converts_lora())
            .filter_map(|(_, orig, difs)| {
                let index = matches(tail, orig, sep)?;
                Some(Row {
                    orig,
                    difs,
                    index,
                    paths: difs.iter().map(|d| d.replace('#', index)).collect(),
                })
            })
            .collect()
    }
    if kohya_name {
        match kohya::split_prefix(name) {
            Some(("lora_unet", rest)) => return found(rest, '_', converted_only),
            // A one-segment original name with no kohya prefix (BFL `img_in`, `txt_in` in a
            // Flux control LoRA) is read as dotted, for the merge only.
            None if !converted_only => {}
            _ => return Vec::new(),
        }
    }
    std::iter::once(0)
        .chain(name.match_indices('.').map(|(i, _)| i + 1))
        .filter(|&start| root_prefix(&name[..start]))
        .map(|start| found(&name[start..], '.', converted_only))
        .find(|rows| !rows.is_empty())
        .unwrap_or_default()
}

/// The base weight of diffusers module `path`: `{path}.weight` itself, or under one root
/// (`transformer.{path}.weight` in a file of several components). More than one is ambiguous,
/// but `{path}.weight` itself is taken where the base has it: in HunyuanVideo's diffusers layout
/// `context_embedder.time_text_embed.text_embedder.linear_1` (the token refiner's, original
/// `txt_in.c_embedder.linear_1`) is not a root over `time_text_embed.text_embedder.linear_1`
/// (original `vector_in.in_layer`; sweep7 formats seed 31 case 32).
fn weight_of<'a>(path: &str, names: &[&'a str]) -> Vec<&'a str> {
    let want = format!("{path}.weight");
    if let Some(exact) = names.iter().find(|n| **n == want) {
        return vec![*exact];
    }
    names
        .iter()
        .filter(|n| {
            n.strip_suffix(want.as_str()).is_some_and(|root| {
                root.is_empty() || (root.ends_with('.') && !root[..root.len() - 1].contains('.'))
            })
        })
        .copied()
        .collect()
}

/// Where module `m` (index `mi`), named in the diffusers layout (ai-toolkit's `transformer.
/// transformer_blocks.0.attn.to_k`, Wan's `blocks.0.attn1.to_q`), lands on a base in the
/// original layout (BFL `double_blocks.0.img_attn.qkv.weight`, under no root, one root or
/// `model.diffusion_model.`): the whole tensor of a renamed module, or its rows of a fused one —
/// as ComfyUI's `comfy/utils.py` `flux_to_diffusers` maps each diffusers key to a row range of
/// the BFL tensor. In [`TABLES`] every part of a fused tensor but the last has one width (q, k, v;
/// `linear1`'s MLP input comes last), so part `j` of `n` starts at `j·out` and the last at
/// `rows − out`. `None` when the name is no diffusers path of the table or no original tensor
/// exists.
pub(super) fn place_on_original(
    mi: usize,
    m: &LoraModule,
    kohya_name: bool,
    names: &[&str],
    logical: &dyn Fn(&str) -> (Vec<usize>, Dtype),
) -> Option<Result<Placement, Unmatched>> {
    // OneTrainer's `lora_transformer_`/SimpleTuner's `lycoris_` + diffusers path (ComfyUI's maps).
    let (tails, sep): (Vec<&str>, char) = if kohya_name {
        match kohya::split_prefix(&m.name) {
            Some(("lora_transformer" | "lycoris", rest)) => (vec![rest], '_'),
            _ => return None,
        }
    } else {
        if let Some(placed) = place_on_head(mi, m, names, logical) {
            return Some(placed);
        }
        let starts = std::iter::once(0)
            .chain(m.name.match_indices('.').map(|(i, _)| i + 1))
            .filter(|&start| root_prefix(&m.name[..start]));
        (starts.map(|st| &m.name[st..]).collect(), '.')
    };
    // Every row the name is a diffusers path of (models share diffusers names: Flux's and SD3's
    // `transformer_blocks.N.attn.to_q`, Wan's `proj_out`): the first whose original tensor the
    // base holds.
    let ((pattern, index, j, n, dif), found_names) = tails
        .into_iter()
        .flat_map(|tail| {
            rows().flat_map(move |(_, orig, difs)| {
                difs.iter().enumerate().filter_map(move |(j, d)| {
                    let i = matches(tail, d, sep)?;
                    Some((orig, i, j, difs.len(), difs[0]))
                })
            })
        })
        .map(|row| {
            let want = format!("{}.weight", row.0.replace('#', row.1));
            let found: Vec<&str> = names
                .iter()
                .filter(|x| x.strip_suffix(want.as_str()).is_some_and(root_prefix))
                .copied()
                .collect();
            (row, found)
        })
        .find(|(_, found)| !found.is_empty())?;
    let orig = pattern.replace('#', index);
    let weight = match found_names.as_slice() {
        [one] => one.to_string(),
        many => return Some(Err(Unmatched::ambiguous(m, many))),
    };
    if m.bias.is_some() {
        // As in `place`: a `lora_B` bias is refused by module, never dropped.
        return Some(Err(Unmatched::NotFound {
            module: format!("{}.lora_B.bias", m.name),
            expected: format!("{orig}.bias"),
        }));
    }
    let (found, dtype) = logical(&weight);
    let expected = super::placement::expected_shape(m);
    let linear = matches!(m.kind, ModuleKind::Linear) && !m.base_transposed;
    if swap_of(pattern, dif).is_some() && !swaps_halves(names, true) {
        return Some(Err(unknown_order(m, &weight)));
    }
    let swapped = whole_part((pattern, dif), m.out_features, || {
        in_last_block(pattern, index, names)
    });
    let (fits, rows) = if n == 1 {
        (
            whole_fits(&swapped, linear, &found) && found == expected,
            None,
        )
    } else {
        let total = found.first().copied().unwrap_or(0);
        let out = m.out_features;
        let offset = if j + 1 < n {
            j.saturating_mul(out)
        } else {
            total.saturating_sub(out)
        };
        // The parts before the last share one width: `offset` of the last is (n−1) of them.
        // Every three-part row is q, k, v in equal thirds (`torch.chunk(…, 3)` or `split` at
        // one width in each converter), so the tensor is exactly three parts; with a fourth
        // (`linear1`'s MLP input, last) each part leaves room for the others.
        let whole = if n == 3 {
            total == out.saturating_mul(3)
        } else if j + 1 < n {
            total > out.saturating_mul(n - 1)
        } else {
            total > out
        };
        let fits = linear
            && found.len() == 2
            && found[1] == m.in_features
            && offset.saturating_add(out) <= total
            && (j + 1 < n || offset % (n - 1) == 0)
            && whole
            && out > 0;
        (fits, Some(RowSlice { offset, len: out }))
    };
    let placed = placed_on_rows(m, mi, weight, fits, expected, found, dtype, rows);
    Some(placed.map(|p| Placement {
        part: swapped.ok().flatten(),
        ..p
    }))
}

/// Where module `m` (index `mi`), a row of [`ORIGINAL_HEADS`] (`….single_blocks.N.linear1_qkv`),
/// lands on the original layout: rows `[0, 3·hidden)` of `single_blocks.N.linear1.weight`
/// (`[3·hidden + mlp, hidden]`), the `weight.narrow(0, 0, 3·hidden)` ComfyUI adds ΔW to
/// (`comfy/lora.py` `calculate_weight`); a module not `[3·hidden, hidden]` ComfyUI cannot reshape.
fn place_on_head(
    mi: usize,
    m: &LoraModule,
    names: &[&str],
    logical: &dyn Fn(&str) -> (Vec<usize>, Dtype),
) -> Option<Result<Placement, Unmatched>> {
    let (orig, weights) = std::iter::once(0)
        .chain(m.name.match_indices('.').map(|(i, _)| i + 1))
        .filter(|&start| root_prefix(&m.name[..start]))
        .find_map(|start| {
            ORIGINAL_HEADS.iter().find_map(|(name, fused)| {
                let index = matches(&m.name[start..], name, '.')?;
                let want = format!("{}.weight", fused.replace('#', index));
                let found: Vec<&str> = names
                    .iter()
                    .filter(|x| x.strip_suffix(want.as_str()).is_some_and(root_prefix))
                    .copied()
                    .collect();
                Some((want, found))
            })
        })?;
    let weight = match weights.as_slice() {
        [] => return None,
        [one] => one.to_string(),
        many => return Some(Err(Unmatched::ambiguous(m, many))),
    };
    if m.bias.is_some() {
        return Some(Err(Unmatched::NotFound {
            module: format!("{}.lora_B.bias", m.name),
            expected: orig.replace(".weight", ".bias"),
        }));
    }
    let (found, dtype) = logical(&weight);
    let out = m.out_features;
    let fits = matches!(m.kind, ModuleKind::Linear)
        && !m.base_transposed
        && found.len() == 2
        && found[1] == m.in_features
        && Some(out) == m.in_features.checked_mul(3)
        && found[0] > out;
    let expected = vec![m.in_features.saturating_mul(3), m.in_features];
    let rows = Some(RowSlice {
        offset: 0,
        len: out,
    });
    Some(placed_on_rows(
        m, mi, weight, fits, expected, found, dtype, rows,
    ))
}

/// Base weights for a dotted `want` under one denoiser root stored under another denoiser root
/// with the same path below it: `diffusion_model.transformer_blocks.0.attn.to_q.weight`
/// (Qwen-Image's trainers; diffusers 0.42.1 `_convert_non_diffusers_qwen_lora_to_diffusers`
/// removes `diffusion_model.` and loads the rest under `transformer.`) on a file of several
/// components holding `transformer.transformer_blocks.0.attn.to_q.weight`. The whole path below
/// the roots must be equal (denoiser layouts differ below their roots, so a suffix would be a
/// guess).
pub(super) fn other_denoiser_root<'a>(want: &str, names: &[&'a str]) -> Vec<&'a str> {
    use super::placement::{root_of, Component};
    let Some((aroot, Component::Denoiser, _)) = root_of(want) else {
        return Vec::new();
    };
    let rest = &want[aroot.len()..];
    names
        .iter()
        .filter(|n| {
            root_of(n).is_some_and(|(broot, c, _)| {
                broot != aroot && *c == Component::Denoiser && n[broot.len()..] == *rest
            })
        })
        .copied()
        .collect()
}

/// The diffusers-layout base tensor a whole tensor named in BFL Flux's layout replaces
/// ([`FLUX_NORMS`]: a control LoRA's q/k norm scales), under any root [`lookup`] allows, where
/// the base holds exactly one; `None` otherwise.
pub(super) fn full_target<'a>(name: &str, names: &[&'a str]) -> Option<&'a str> {
    std::iter::once(0)
        .chain(name.match_indices('.').map(|(i, _)| i + 1))
        .filter(|&start| root_prefix(&name[..start]))
        .find_map(|start| {
            FLUX_NORMS.iter().find_map(|(orig, dif)| {
                let index = matches(&name[start..], orig, '.')?;
                let path = dif.replace('#', index);
                match weight_of(path.strip_suffix(".weight")?, names).as_slice() {
                    [one] => Some(*one),
                    _ => None,
                }
            })
        })
}

/// The base bias beside base weight `weight` (`….weight` → `….bias`), where the base holds it.
fn bias_of(weight: &str, names: &[&str]) -> Option<String> {
    let bias = format!("{}.bias", weight.strip_suffix(".weight")?);
    names.contains(&bias.as_str()).then_some(bias)
}

/// Where module `m` (index `mi`), named in an original layout, lands on a diffusers-layout base
/// of `names`: `None` when its name is in no layout of [`TABLES`] or none of its diffusers
/// tensors exists; an [`Unmatched`] when they exist but do not fit (ambiguous, shapes that do
/// not split the module's rows, not float).
pub(super) fn place(
    mi: usize,
    m: &LoraModule,
    kohya_name: bool,
    names: &[&str],
    logical: &dyn Fn(&str) -> (Vec<usize>, Dtype),
) -> Option<Result<Vec<Placement>, Unmatched>> {
    let Row {
        orig,
        difs,
        index,
        paths,
    } = lookup(&m.name, kohya_name, false)
        .into_iter()
        .find(|row| !weight_of(&row.paths[0], names).is_empty())?;
    let mut weights = Vec::with_capacity(paths.len());
    for p in &paths {
        match weight_of(p, names).as_slice() {
            [] if weights.is_empty() => return None,
            [] => {
                return Some(Err(Unmatched::NotFound {
                    module: m.name.clone(),
                    expected: format!("{p}.weight"),
                }))
            }
            [one] => weights.push(one.to_string()),
            many => return Some(Err(Unmatched::ambiguous(m, many))),
        }
    }
    // A `lora_B` bias (BFL's Flux control LoRAs) takes the same rows of the module's output as
    // its weight, on the bias beside each weight; a base without one refuses the module, never
    // drops the bias.
    let mut biases = Vec::with_capacity(weights.len());
    for w in weights.iter().filter(|_| m.bias.is_some()) {
        match bias_of(w, names) {
            Some(b) => biases.push(b),
            None => {
                return Some(Err(Unmatched::NotFound {
                    module: format!("{}.lora_B.bias", m.name),
                    expected: format!("{}.bias", w.strip_suffix(".weight").unwrap_or(w)),
                }))
            }
        }
    }
    let mut biases = biases.into_iter();
    let linear = matches!(m.kind, ModuleKind::Linear) && !m.base_transposed;
    if swap_of(orig, difs[0]).is_some() && !swaps_halves(names, false) {
        return Some(Err(unknown_order(m, &weights[0])));
    }
    // A whole tensor with its halves swapped takes a linear module of even rows.
    let swapped = whole_part((orig, difs[0]), m.out_features, || {
        in_last_block(difs[0], index, names)
    });
    let mut out = Vec::with_capacity(weights.len());
    let mut offset = 0usize;
    for w in weights {
        let (found, dtype) = logical(&w);
        let fits = if paths.len() == 1 {
            found == super::placement::expected_shape(m) && whole_fits(&swapped, linear, &found)
        } else {
            linear && found.len() == 2 && found[1] == m.in_features
        };
        let rows = found.first().copied().unwrap_or(0);
        if !fits || offset.saturating_add(rows) > m.out_features {
            return Some(Err(Unmatched::ShapeMismatch {
                module: m.name.clone(),
                tensor: w,
                expected: vec![m.out_features.saturating_sub(offset), m.in_features],
                found,
            }));
        }
        if !crate::dtype::is_float_compute(dtype) {
            return Some(Err(Unmatched::NotFloat {
                module: m.name.clone(),
                tensor: w,
                dtype: crate::dtype::name(dtype),
            }));
        }
        let part = RowSlice { offset, len: rows };
        offset += rows;
        out.push(Placement {
            module: mi,
            weight: w,
            bias: biases.next(),
            rows: None,
            // A module on one whole tensor is an ordinary placement, unless its halves swap.
            part: if paths.len() > 1 {
                Some(part.into())
            } else {
                swapped.clone().ok().flatten()
            },
        });
    }
    if offset != m.out_features {
        let last = out.pop().expect("at least one target");
        return Some(Err(Unmatched::ShapeMismatch {
            module: m.name.clone(),
            tensor: last.weight,
            expected: vec![m.out_features, m.in_features],
            found: vec![offset, m.in_features],
        }));
    }
    Some(Ok(out))
}

#[cfg(test)]
mod tests;
