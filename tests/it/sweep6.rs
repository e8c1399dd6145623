//! What the sweeps with seeds 21/22 and wider draws found (fixtures/gen/sweep6_fixtures.py),
//! each against the real library's own output.

use super::common::*;

/// PEFT's `all-linear` on a Mixtral with `target_parameters` (the MoE expansion PEFT 0.21.2
/// writes: bare `down_proj`/`gate_up_proj` beside `gate.weight` and `mlp.experts.down_proj`)
/// merges as PEFT's merge_and_unload: the router's 2-D `mlp.gate.weight` wrapper lands on
/// `block_sparse_moe.gate.weight` (transformers saves Mixtral under `.block_sparse_moe.`), the
/// experts on their per-expert tensors, q/k/v/o as plain LoRA. Within 1e-6 relative (PEFT's
/// einsum fuses a multiply-add lorakit does not; tests/it/peft_moe.rs). Before the fix lorakit
/// refused the file: it read the bare targets as parameters of every module.
#[test]
fn mixtral_all_linear_target_parameters_match_peft() {
    let (_dir, out) = scratch("out");
    let base = fixture("moe/mixtral/base");
    let adapter = fixture("sweep6/mixtral_all_linear");
    run_ok(merge_args(&base, &adapter, &out, &["--device", "cpu"]));
    let peft = fixture("sweep6/mixtral_all_linear_merged.safetensors");
    let n = assert_merged_matches(&out, &base, &peft, 1e-6);
    // 4 experts × w1/w2/w3, the router, q/k/v/o.
    assert_eq!(n, 17);
}

/// A DoRA file in diffusers' older names (`convert_state_dict_to_diffusers`: factors
/// `.lora.down/.lora.up`, the magnitude still `lora_magnitude_vector`), which diffusers 0.42.1
/// loads whole and fuses: lorakit merges it to diffusers' fused weights (f32, within 1e-6
/// relative). Before the fix lorakit refused it ("mixes lora-dot-up and peft names").
#[test]
fn diffusers_old_names_with_dora_magnitude_match_diffusers() {
    let (_dir, out) = scratch("out");
    let base = fixture("sweep6/unet_old_dora/base");
    let adapter = fixture("sweep6/unet_old_dora/lora.safetensors");
    run_ok(merge_args(&base, &adapter, &out, &["--device", "cpu"]));
    let fused = fixture("sweep6/unet_old_dora/fused.safetensors");
    let n = assert_merged_matches(&out, &base, &fused, 1e-6);
    assert_eq!(n, read(&fused).len());
    assert!(n >= 16, "to_out.0 and conv2 of every block: {n}");
}

/// `trainable_token_indices` as a list targets the model's input embedding whatever it is called
/// (PEFT's `_get_input_embeddings_name`): on GPT-NeoX the file holds
/// `gpt_neox.embed_in.token_adapter.trainable_tokens_delta`, and PEFT's merge copies its rows
/// into `gpt_neox.embed_in.weight`. Before the fix lorakit took a list for `embed_tokens` only
/// and refused the file (the delta matched no base tensor). The copied rows are exact; the
/// LoRA on dense_4h_to_h within 1e-6 relative.
#[test]
fn trainable_tokens_list_on_another_embedding_name_match_peft() {
    let (_dir, out) = scratch("out");
    let base = fixture("sweep6/neox_tokens/base");
    let adapter = fixture("sweep6/neox_tokens/adapter");
    run_ok(merge_args(&base, &adapter, &out, &["--device", "cpu"]));
    let peft = read(&fixture("sweep6/neox_tokens/merged.safetensors"));
    let got = read_checkpoint(&out);
    assert_eq!(
        assert_matches_reference(&got, &read_checkpoint(&base), &peft, 1e-6),
        2
    );
    let emb = "gpt_neox.embed_in.weight";
    assert_eq!(
        got[emb].f32(),
        peft[emb].f32(),
        "{emb}: rows copied exactly"
    );
}
