//! Integration tests: one target, each test in a fresh temp dir, driving the real binary.

mod it {
    /// `resize`, `combine`, `convert` against full SVDs and PEFT's add_weighted_adapter.
    pub mod algebra;
    /// Issue #14's structural rules on the source tree: no import cycle, no file over 800 lines.
    pub mod architecture;
    /// Malformed files: one-line errors naming file and tensor, exit 2, nothing written.
    pub mod bad_input;
    /// `check`: verdicts against PEFT and diffusers run on the fixtures, and the rules read from
    /// vLLM, SGLang, LoRAX, llama.cpp and ComfyUI; `--fix` merges to the same weights.
    pub mod check;
    /// `check --fix` of saved embeddings: trainable tokens (exact) and LoRA (measured), loaded
    /// by PEFT; the trainable-token rules of every loader.
    pub mod check_fix;
    /// `check` rules from the audit: dtypes against PEFT, SGLang bias/modules_to_save.
    pub mod check_rules;
    /// Shared helpers: running the binary, reading outputs with the independent `safetensors`
    /// crate, comparing tensors.
    pub mod common;
    /// Single-file LoRAs in every naming convention, merged as PEFT merges their factors.
    pub mod conventions;
    /// The merge-and-compare helper of the cross-layout tests (formats, layouts).
    pub mod conventions_common;
    /// kohya component prefixes stay on their own component (`lora_te2_` never on TE1).
    pub mod conventions_components;
    /// What the diffusers sweep found: a longer root's module, diffusers' lost kohya UNet keys.
    pub mod conventions_diffusers;
    /// Trainers' own layouts (kohya/XLabs Flux, musubi Wan) merged as diffusers converts them.
    pub mod conventions_formats;
    /// Original layouts beyond Flux/Wan (SD3, Flux.2, HunyuanVideo, Z-Image) merged across layouts.
    pub mod conventions_layouts;
    /// Row-slice merges: SDXL TE2 q/k/v onto OpenCLIP's fused `in_proj_weight`.
    pub mod conventions_slices;
    /// `diff`: exit status and figures.
    pub mod diff;
    /// LoKr on Flux.2 (ai-toolkit, LyCORIS, bare names): merges and `check` against diffusers.
    pub mod diffusion10;
    /// Anima, Z-Image LoKr, Krea 2, Ideogram 4, ACE-Step, MiniMax-H3 (diffusers' converters):
    /// merges and `check` against diffusers.
    pub mod diffusion11;
    /// Flux control LoRAs widened (`--expand-base`), Z-Image LoKr with metadata, loaders
    /// with no converter: merges and `check` against diffusers.
    pub mod diffusion12;
    /// ComfyUI's Flux key forms (`linear1_qkv`, USO, `lora_transformer_`/`lycoris_` on BFL):
    /// merges against a float64 transcription of ComfyUI's loader.
    pub mod diffusion13;
    /// Diffusion families diffusers converts itself (Qwen-Image, LTX-Video, HiDream, Lumina 2,
    /// fal Kontext, Flux/HunyuanVideo shared names): merges and `check` against diffusers.
    pub mod diffusion8;
    /// BFL Flux control LoRAs (`lora_B.bias`, q/k norm scales, the widened `x_embedder`) and
    /// Lumina 2 vs Z-Image: merges and `check` against diffusers.
    pub mod diffusion9;
    /// `extract`: randomized SVD of W − W0 against exact SVDs and PEFT fixtures.
    pub mod extract;
    /// kill -9 during a merge, full disk, reruns.
    pub mod faults;
    /// A new user's first hour: right refusals only, loadable outputs, one command line.
    pub mod first_hour;
    /// fix13: review fixes to the PEFT tuners (HRA/BOFT bias, OSF ranks, QALoRA on GPTQ).
    pub mod fix13;
    /// OneTrainer's Flux names (`lora_transformer_`): `check` against diffusers' Flux loader.
    pub mod flux_mixture;
    /// The PEFT tuners of gaps10: VeRA, VB-LoRA, LN tuning, HRA, BOFT merged as PEFT; seeded
    /// buffers refused; GPT-2's `ensure_weight_tying`.
    pub mod gaps10;
    /// The PEFT tuners of gaps11: MiSS, SHiRA, C3A, GraLoRA, RandLoRA merged as PEFT.
    pub mod gaps11;
    /// gaps12: PEFT RoAd, `use_qalora` on a float base, HRA and BOFT on Conv2d merged as PEFT.
    pub mod gaps12;
    /// gaps13a: PEFT HiRA, GLoRA, PVeRA, TinyLoRA, UniLoRA and TRAINABLE_TOKENS merged as PEFT.
    pub mod gaps13a;
    /// gaps13b: PEFT BEFT, DEFT, PEANuT, Super-Tuning, one-subspace AdaMSS merged as PEFT;
    /// PSOFT, ShadowPEFT and unsaved buffers refused.
    pub mod gaps13b;
    /// gaps14: diffusers shard names on re-sharding; VeRA/SHiRA/RandLoRA unmerged as PEFT.
    pub mod gaps14;
    /// The peer gaps of gaps7: DoRA embeddings, fan_in_fan_out per layer type, tied lm_head,
    /// part bytes_written.
    pub mod gaps7;
    /// The peer gaps of gaps8: tied embed_tokens + lm_head, tied lm_head into GGUF and in
    /// `check`, Linear layers named like Conv1D, `train --batch` past memory.
    pub mod gaps8;
    /// The peer gaps of gaps9: `ensure_weight_tying`, a tied lm_head into Q8_0 GGUF, an
    /// embed_tokens LoRA on a tied GGUF base.
    pub mod gaps9;
    /// GGUF (llama.cpp): inspect, diff, merge into GGUF bases, malformed files.
    pub mod gguf;
    /// Outputs byte-identical to the recorded hashes (refactors change no output).
    pub mod golden;
    /// `merge --device gpu` against `--device cpu`; `gpu-info`.
    pub mod gpu;
    /// The output contract under hostile use: outputs onto inputs, untrusted manifests,
    /// all-or-nothing commits, signals, locks, stored-dtype checks, special files, escaping.
    pub mod hardening;
    /// The tenth hostile round's findings: a NaN in a GGUF base, regexes Python refuses.
    pub mod hostile10;
    /// The eleventh hostile round's findings: mlx-lm num_layers, regexes only the regex crate
    /// reads, PEFT tuner configs against their tensors, resize past the f32 range.
    pub mod hostile11;
    /// The twelfth hostile round's findings: Python's global-flag rule, PEFT MiSS/C3A/GraLoRA/
    /// RandLoRA/SHiRA configs against their tensors, MLX scales beside an unpacked weight.
    pub mod hostile12;
    /// The thirteenth hostile round's findings: MLX packed widths past usize, zero-size MLX
    /// weights, PEFT OSF effective_rank and diffusers LoKr metadata r against the tensors.
    pub mod hostile13;
    /// The fourteenth hostile round's findings: NVFP4 global scale ±inf, FP4 config `type` and
    /// symmetry, a GLoRA half path (a panic), tuner configs contradicting the stored shapes.
    pub mod hostile14;
    /// The fifteenth hostile round's findings: ModelOpt configs and FP8 scales against the
    /// tensors, stale hf_quant_config.json, MXFP8 group scales, GLoRA C/D/E kinds, TinyLoRA and
    /// Super-Tuning config values, `--plot` formats.
    pub mod hostile15;
    /// The sixteenth hostile round's findings: inputs inside the output folder, an old index's
    /// non-shard files, ambiguous base folders, dense ΔW of small factor files, unbounded options.
    pub mod hostile16;
    /// The seventeenth hostile round's and the 2026-12-08 PEFT review's findings: trainable
    /// tokens on a wrapped module, eval configs transformers refuses, lying metadata.
    pub mod hostile17;
    /// The eighteenth hostile round's findings: part counts, BD-LoRA configs on dense factors,
    /// f64 diffs and merges, infinities in diff, float rank_pattern values.
    pub mod hostile18;
    /// The fifth hostile round's findings: GGUF adapters and parts, quantized configs.
    pub mod hostile5;
    /// The sixth hostile round's findings: LyCORIS DoRA/rescale shapes, PEFT config types, indexes.
    pub mod hostile6;
    /// The seventh hostile round's findings: allocations, svd weights, finalize indexes, tokenizers.
    pub mod hostile7;
    /// The eighth hostile round's findings: file-size limits, aborts.
    pub mod hostile8;
    /// The ninth hostile round's findings: failed allocations, inputs truncated while hashed.
    pub mod hostile9;
    /// `inspect` on checkpoints and adapters, header-only cost, spectra against exact SVD.
    pub mod inspect;
    /// A failed `--json` run: one JSON error object on stdout, stderr and exit status unchanged.
    pub mod json_errors;
    /// LyCORIS files from lycoris-lora: every algorithm merged as its forward computes it.
    pub mod lycoris;
    /// `merge` against PEFT's own merge_and_unload outputs and the other references.
    pub mod merge;
    /// mlx-lm adapters against mlx-lm's own trainer and fuse, and PEFT → mlx-lm.
    pub mod mlx;
    /// MLX-quantized bases (mlx_lm.convert -q) merged as mlx-lm's fuse, kept quantized or not.
    pub mod mlx_quant;
    pub mod mlx_quant_fp;
    /// `eval` and `train` against transformers + PEFT logits, losses and torch's AdamW.
    pub mod model;
    /// PEFT (Python) loads and merges what extract and train write, as lorakit merges it.
    pub mod peft_load;
    /// PEFT `target_parameters` on fused MoE experts, merged as PEFT's merge_and_unload.
    pub mod peft_moe;
    /// The binary as a process: progress bars on a terminal only, a merge's peak RSS.
    pub mod process;
    /// Quantized bases: `dequantize`, merges into and as-trained-on quantized weights, bad input.
    pub mod quant;
    /// ComfyUI's legacy scaled-FP8 bases: the scale applied in merges, refusals.
    pub mod quant_comfy;
    /// ComfyUI's `comfy_quant` layers (NVFP4, MXFP8, FP8) against comfy_kitchen, and refusals.
    pub mod quant_comfy_quant;
    /// compressed-tensors NVFP4/MXFP4 bases against its own compressors.
    pub mod quant_ct_fp4;
    /// Native GPTQ/AWQ bases against gptqmodel's and AutoAWQ's own packers and dequantization.
    pub mod quant_gptq;
    /// NVIDIA ModelOpt NVFP4 and FP8 bases against nvidia-modelopt's own export and dequantization.
    pub mod quant_modelopt;
    /// A truly QLoRA-trained adapter: merged logits against the NF4 model running it.
    pub mod quant_qlora;
    /// Quantized bases: `--part` merges, requantization of the remaining formats.
    pub mod quant_requant;
    /// Quantized bases the random sweep against the real libraries found wrong (fixtures/quant/sweep).
    pub mod quant_sweep;
    /// Recipes: validation, dry-run, references, incremental reruns.
    pub mod recipe;
    /// Independent float64 references (Jacobi SVD, best rank-r, relative errors).
    pub mod reference;
    /// Session 13's review findings: exact rounding of dense updates, C3A patterns, padded plain LoRAs.
    pub mod review13;
    /// Session 14's review findings: TinyLoRA/UniLoRA written as LoRA at their scale, trainable
    /// tokens without a LoRA module refused, an OSF module with nothing trained.
    pub mod review14;
    /// Session 15's review findings: ACE-Step 1.5 on ComfyUI's layout, a TinyLoRA embedding
    /// written as a LoRA embedding, FRoD on another base, the LoKr layout rule on a Conv2d.
    pub mod review15;
    /// Session 16's review findings on eval and check: trainable tokens on a tied base and on
    /// lm_head, a weight on a replaced tensor, T5/BART's tied lm_head, PiSSA, the llama.cpp
    /// converter's architectures, SEQ_CLS heads, QALoRA on GPTQ.
    pub mod review16c;
    /// Session 16's diffusion-conversion findings: diffusers-saved LoRAs to kohya names, rsLoRA kept
    /// by every convert, sd-scripts' SDXL names on a diffusers UNet, `--to peft` without a base.
    pub mod review16d;
    /// Session 16's merge-arithmetic findings: Conv1D weights quantized transposed (QLoRA,
    /// NF4/int8 GPT-2), 16-bit QLoRA and QDoRA rounding, PEFT's Embedding merge rounding.
    pub mod review16m;
    /// Session 16's PEFT-name and check findings: check without a base on non-Llama causal LMs,
    /// adapters under transformers 5's load-time names.
    pub mod review16p;
    /// Session 16's quantized-base review findings: compressed-tensors act-order g_idx, int8
    /// (`int-quantized`, `naive-quantized`) and `dense` checkpoints, `check` on quantized bases.
    pub mod review16q;
    /// Session 17's `--as-trained-on` findings: only the weights transformers' bitsandbytes
    /// quantizer converts are quantized (lm_head, embeddings, T5's `wo`, the skip list), in the
    /// dtype the QLoRA model was loaded in.
    pub mod review17a;
    /// Session 17's diffusion findings of rev16c: per-module kohya alphas diffusers applies at
    /// the most common one, `lora_unet_unet_…` names, 2-D factors on 1×1 convs, DoRA written
    /// to diffusers files.
    pub mod review17s;
    /// The 2026-12-08 reviews' findings: LyCORIS DyLoRA convs diffusers cannot load.
    pub mod review23;
    /// What the sweeps with seeds 61/62 and wider draws found (fixtures/sweep10).
    pub mod sweep10;
    /// What the sweeps with seeds 81/82 and wider draws found (fixtures/sweep12).
    pub mod sweep12;
    /// What the sweeps with seeds 91/92 and wider draws found (fixtures/sweep13).
    pub mod sweep13;
    /// What the sweeps with seeds 101/102 and wider draws found (fixtures/sweep14).
    pub mod sweep14;
    /// What the sweep against ComfyUI's own patcher with seeds 103/104 found (fixtures/sweep15).
    pub mod sweep15;
    /// What independent sweeps against PEFT 0.21.2 and LyCORIS 4.1.3 found: LoKr/LoHa on
    /// Conv1d, Tucker cores of Conv1d/Conv3d.
    pub mod sweep16;
    /// What the sweeps with seeds 21/22 and wider draws found (fixtures/sweep6).
    pub mod sweep6;
    /// What the sweeps with seeds 31/32 and wider draws found (fixtures/sweep7).
    pub mod sweep7;
    /// What the sweeps with seeds 41/42 and wider draws found (fixtures/sweep8).
    pub mod sweep8;
    /// What the sweeps with seeds 51/52 and wider draws found (fixtures/sweep9).
    pub mod sweep9;
    /// PyTorch `torch.save` archives (`adapter_model.bin`) read as adapters.
    pub mod torch_bin;
}
