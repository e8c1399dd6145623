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

/// TinyLoRA on `embed_tokens`, written back as LoRA (`resize` at its rank, `convert --to peft`):
/// PEFT's LoRA Embedding names (`lora_embedding_A` [r, vocab], `lora_embedding_B` [dim, r]), and
/// the written folder merges as PEFT merged the TinyLoRA folder. Before: `embed_tokens.lora_A/B`,
/// which PEFT's Embedding layer does not load (the embedding delta lost).
#[test]
fn tinylora_embedding_is_written_as_a_lora_embedding() {
    let base = fixture("llama/base");
    let adapter = fixture("review15/tinylora_emb/adapter");
    let want = fixture("review15/tinylora_emb/merged.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    for how in ["resize", "convert"] {
        let out = tmp.path().join(how);
        let mut args = match how {
            "resize" => vec!["resize", s(&adapter), "--rank", "2"],
            _ => vec!["convert", s(&adapter), "--to", "peft"],
        };
        args.extend(["--out", s(&out), "--quiet"]);
        run_ok(&args);
        let t = read(&out.join("adapter_model.safetensors"));
        let emb = "base_model.model.model.embed_tokens";
        assert_eq!(
            t[&format!("{emb}.lora_embedding_A")].shape,
            [2, 128],
            "{how}"
        );
        assert_eq!(
            t[&format!("{emb}.lora_embedding_B")].shape,
            [64, 2],
            "{how}"
        );
        assert!(!t.contains_key(&format!("{emb}.lora_A.weight")), "{how}");
        let merged = tmp.path().join(format!("{how}-merged"));
        run_ok(merge_args(
            &base,
            &out,
            &merged,
            &["--device", "cpu", "--quiet"],
        ));
        assert_eq!(
            assert_merged_matches(&merged, &base, &want, 1e-5),
            3,
            "{how}"
        );
    }
}

/// FRoD on a base other than its training base (the NVFP4 copy of fixtures/llama/base,
/// dequantized): PEFT rebuilds frod_U from a projection it recomputes on that base, so lorakit
/// refuses instead of merging U from the saved projection (up to 0.024 off PEFT before). The
/// training base still merges as PEFT (gaps13a's test).
#[test]
fn frod_on_another_base_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dq = tmp.path().join("dq");
    run_ok([
        "dequantize",
        s(&fixture("quant/ct_nvfp4")),
        "--out",
        s(&dq),
        "--dtype",
        "f32",
        "--quiet",
    ]);
    let out = tmp.path().join("merged");
    let line = merge_refused(&dq, &fixture("gaps13a/frod/adapter"), &out, &[]);
    assert_mentions(&line, &["base_model.frod_V.self_attn_", "training base"]);
    let ok = tmp.path().join("train");
    run_ok(merge_args(
        &fixture("llama/base"),
        &fixture("gaps13a/frod/adapter"),
        &ok,
        &["--quiet"],
    ));
}

/// A diffusers-saved PEFT LoKr on a Conv2d(4, 8, 3): at r = 1 PEFT decomposes w2 (lokr_w2_b
/// [1, in_n·kh·kw], 2-D) and the file merges as PEFT merges it; at r = 2 PEFT builds w2 whole
/// (r ≥ max(out_k 4, in_n 2)/2), so the decomposed file is refused. Before: lorakit compared 2r
/// with in_n·kh·kw = 18 and merged what PEFT cannot load.
#[test]
fn diffusers_lokr_layout_rule_on_a_conv_uses_in_channels() {
    merges_as_reference_on("review15/lokr_conv", "base.safetensors", "r1", false);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.safetensors");
    let line = merge_fixtures_refused(
        "review15/lokr_conv/base.safetensors",
        "review15/lokr_conv/r2.safetensors",
        &out,
        &[],
    );
    assert_mentions(&line, &["conv1", "in_n = 2", "would not load"]);
}
