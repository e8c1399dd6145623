//! Session 15's review findings fixed on branch fix15 (fixtures/gen/review15_fixtures.py): ACE-Step
//! 1.5 files on ComfyUI's layout mapped as ComfyUI's key map maps them, a TinyLoRA embedding
//! written as PEFT's LoRA Embedding, FRoD refused on a base other than its training base, and the
//! diffusers-LoKr layout rule judged on a Conv2d as PEFT judges it.

use super::common::*;
use super::conventions_common::merges_as_reference_on;

/// An MLP and an attention projection of the ACE-Step 1.5 decoder, named as ComfyUI's ACEStep15
/// branch maps every `diffusion_model.decoder.{k}.weight` (`base_model.model.{k}`, `lycoris_{k}`),
/// land where ComfyUI patches them. Before: the MLP refused (only 8 attention rows were mapped),
/// a `lycoris_` name ambiguous with the lyric encoder's module of the same path.
#[test]
fn ace_step15_comfy_keys_land_on_every_decoder_weight() {
    for case in ["peft", "lycoris"] {
        merges_as_reference_on("review15/ace_step15_comfy", "base.safetensors", case, false);
    }
}
