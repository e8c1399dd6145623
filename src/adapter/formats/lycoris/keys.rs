//! The key names of kohya-named files: every LyCORIS suffix lorakit reads ([`SUFFIXES`]), the
//! ones it refuses by name ([`UNSUPPORTED`]), how a file spells its factors ([`Naming`]), and
//! splitting a key into module, role and spelling. The leaf of the LyCORIS reader and writer.
//!
//! Must not depend on the adapter model (it records a file's [`Naming`]s).

/// How a file spells a module's LoRA factors. Every spelling ComfyUI's `LoRAAdapter.load`
/// accepts (`comfy/weight_adapter/lora.py`: `regular_lora`, `diffusers_lora`, `diffusers2_lora`,
/// `diffusers3_lora`, `mochi_lora`, `transformers_lora`, `qwen_default_lora`); LyCORIS algorithms
/// are always spelled the kohya way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Naming {
    /// `.lora_up.weight` / `.lora_down.weight` (`.lora_mid.weight`), and every LyCORIS suffix
    /// (kohya sd-scripts, LyCORIS, ai-toolkit, OneTrainer).
    Kohya,
    /// `{m}_lora.up.weight` / `{m}_lora.down.weight` (diffusers' old attention processors,
    /// `….processor.to_q_lora.up.weight`).
    AttnProcessor,
    /// `.lora.up.weight` / `.lora.down.weight`.
    LoraDotUp,
    /// `.lora_linear_layer.up.weight` / `.down.weight` (diffusers' `LoRACompatible` layers).
    LoraLinearLayer,
    /// `.lora_B.weight` / `.lora_A.weight` (PEFT names, diffusers' current format).
    Peft,
    /// `.lora_B.default.weight` / `.lora_A.default.weight` (PEFT state dicts saved with the
    /// adapter name, e.g. Qwen-Image trainers).
    PeftDefault,
    /// `.lora_B` / `.lora_A` without `.weight` (Mochi trainers).
    PeftBare,
    /// XLabs-AI x-flux's Flux processors: `double_blocks.N.processor.qkv_lora1.down.weight`
    /// ([`xlabs_module`]).
    XLabs,
}

impl std::fmt::Display for Naming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Naming::Kohya => "kohya",
            Naming::AttnProcessor => "attn-processor",
            Naming::LoraDotUp => "lora-dot-up",
            Naming::LoraLinearLayer => "lora-linear-layer",
            Naming::Peft => "peft",
            Naming::PeftDefault => "peft-default",
            Naming::PeftBare => "peft-bare",
            Naming::XLabs => "xlabs",
        })
    }
}

/// Every per-module suffix lorakit reads: the suffix on disk (with its separator), the role it
/// plays (the kohya/LyCORIS suffix, which [`module`](super::read::module) works with), and the naming it belongs to.
/// Where one suffix ends another, the longer comes first.
pub const SUFFIXES: &[(&str, &str, Naming)] = &[
    (".lora_down.weight", "lora_down.weight", Naming::Kohya),
    (".lora_up.weight", "lora_up.weight", Naming::Kohya),
    (".lora_mid.weight", "lora_mid.weight", Naming::Kohya),
    ("_lora.up.weight", "lora_up.weight", Naming::AttnProcessor),
    (
        "_lora.down.weight",
        "lora_down.weight",
        Naming::AttnProcessor,
    ),
    (".lora.up.weight", "lora_up.weight", Naming::LoraDotUp),
    (".lora.down.weight", "lora_down.weight", Naming::LoraDotUp),
    (
        ".lora_linear_layer.up.weight",
        "lora_up.weight",
        Naming::LoraLinearLayer,
    ),
    (
        ".lora_linear_layer.down.weight",
        "lora_down.weight",
        Naming::LoraLinearLayer,
    ),
    (
        ".lora_B.default.weight",
        "lora_up.weight",
        Naming::PeftDefault,
    ),
    (
        ".lora_A.default.weight",
        "lora_down.weight",
        Naming::PeftDefault,
    ),
    (".lora_B.weight", "lora_up.weight", Naming::Peft),
    (".lora_A.weight", "lora_down.weight", Naming::Peft),
    (".lora_B", "lora_up.weight", Naming::PeftBare),
    (".lora_A", "lora_down.weight", Naming::PeftBare),
    (".dora_scale", "dora_scale", Naming::Kohya),
    // PEFT's DoRA magnitude in a diffusers single file (OneTrainer @23df383 DIFFUSERS_LORA:
    // `convert_lora_util.convert_to_diffusers` renames a per-output `dora_scale` to it).
    (
        ".lora_magnitude_vector.weight",
        "lora_magnitude_vector",
        Naming::Peft,
    ),
    // The same as PEFT's `get_peft_model_state_dict` saves it (peft 0.21.2
    // `utils/save_and_load.py` drops the `.weight` of `lora_magnitude_vector`), hence what
    // diffusers' `save_lora_weights` writes (diffusers 0.42.1 `loaders/lora_base.py`).
    (
        ".lora_magnitude_vector",
        "lora_magnitude_vector",
        Naming::Peft,
    ),
    (".hada_w1_a", "hada_w1_a", Naming::Kohya),
    (".hada_w1_b", "hada_w1_b", Naming::Kohya),
    (".hada_w2_a", "hada_w2_a", Naming::Kohya),
    (".hada_w2_b", "hada_w2_b", Naming::Kohya),
    (".hada_t1", "hada_t1", Naming::Kohya),
    (".hada_t2", "hada_t2", Naming::Kohya),
    (".lokr_w1_a", "lokr_w1_a", Naming::Kohya),
    (".lokr_w1_b", "lokr_w1_b", Naming::Kohya),
    (".lokr_w2_a", "lokr_w2_a", Naming::Kohya),
    (".lokr_w2_b", "lokr_w2_b", Naming::Kohya),
    (".lokr_w1", "lokr_w1", Naming::Kohya),
    (".lokr_w2", "lokr_w2", Naming::Kohya),
    (".lokr_t2", "lokr_t2", Naming::Kohya),
    (".diff_b", "diff_b", Naming::Kohya),
    (".diff", "diff", Naming::Kohya),
    (".alpha", "alpha", Naming::Kohya),
    (".w_norm", "w_norm", Naming::Kohya),
    (".b_norm", "b_norm", Naming::Kohya),
    (".oft_blocks", "oft_blocks", Naming::Kohya),
    (".rescale", "rescale", Naming::Kohya),
    (".on_input", "on_input", Naming::Kohya),
    (".a1.weight", "a1.weight", Naming::Kohya),
    (".a2.weight", "a2.weight", Naming::Kohya),
    (".b1.weight", "b1.weight", Naming::Kohya),
    (".b2.weight", "b2.weight", Naming::Kohya),
    (".bm.weight", "bm.weight", Naming::Kohya),
    // OneTrainer's OFT v2 (`modules/module/LoRAModule.py` `OFTModule`: its `oft_R` submodule's
    // `weight` and, for Scaled OFT, the `scaled_oft` buffer).
    (".oft_R.weight", "oft_R.weight", Naming::Kohya),
    (".oft_R.scaled_oft", "oft_R.scaled_oft", Naming::Kohya),
];

/// The IA3 vector is stored as `{module}.weight` (LyCORIS `IA3Module.weight_list`), a suffix too
/// common to read on its own: it is IA3's only beside `{module}.on_input` (ComfyUI
/// `weight_adapter/ia3.py` reads the pair the same way).
pub const IA3_WEIGHT: &str = ".weight";

/// LyCORIS suffixes recognised but not applied, with the algorithm they belong to.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    ("q_layer.weight", "T-LoRA"),
    ("p_layer.weight", "T-LoRA"),
    ("lambda_layer", "T-LoRA"),
];

/// Splits `key` into `(module, role, naming)` when it ends in a known suffix. The module name of
/// an attention-processor key is the layer it adapts, as ComfyUI maps it (`comfy/lora.py`
/// `model_lora_keys_unet`: `.processor.to_q` ↔ `.to_q`, `.processor.to_out` ↔ `.to_out.0`).
pub fn split_key(key: &str) -> Option<(String, &'static str, Naming)> {
    if let Some(x) = xlabs_module(key) {
        return Some(x);
    }
    SUFFIXES.iter().find_map(|&(suffix, role, naming)| {
        let m = key.strip_suffix(suffix).filter(|m| !m.is_empty())?;
        let m = if naming == Naming::AttnProcessor {
            let m = m.replace(".processor.to_", ".to_");
            match m.strip_suffix(".to_out") {
                Some(head) => format!("{head}.to_out.0"),
                None => m,
            }
        } else {
            m.to_owned()
        };
        Some((m, role, naming))
    })
}

/// An XLabs-AI x-flux key (`src/flux/modules/layers.py` @1da87eb `DoubleStreamBlockLoraProcessor`:
/// `qkv_lora1`/`proj_lora1` are added to the image stream's `img_attn.qkv`/`img_attn.proj`
/// outputs, `qkv_lora2`/`proj_lora2` to the text stream's; each a `LoRALinearLayer` with `down`
/// and `up`, its `network_alpha` not saved) as the BFL module it adapts:
/// `[diffusion_model.]double_blocks.N.processor.qkv_lora1.down.weight` →
/// (`[diffusion_model.]double_blocks.N.img_attn.qkv`, `lora_down.weight`). diffusers reads the
/// same keys onto the same layers (`loaders/lora_conversion_utils.py` 0.42.1
/// `_convert_xlabs_flux_lora_to_diffusers`). USO's single-block `qkv_lora`/`proj_lora` are
/// ComfyUI's (`comfy/lora_convert.py` `convert_uso_lora`): `single_blocks.N.linear1_qkv`, the
/// q/k/v rows of `linear1`, and `single_blocks.N.linear2`.
fn xlabs_module(key: &str) -> Option<(String, &'static str, Naming)> {
    let (rest, role) = [
        (".down.weight", "lora_down.weight"),
        (".up.weight", "lora_up.weight"),
    ]
    .into_iter()
    .find_map(|(suffix, role)| key.strip_suffix(suffix).map(|r| (r, role)))?;
    let (head, proc) = rest.rsplit_once(".processor.")?;
    let layer = match proc {
        "qkv_lora1" => "img_attn.qkv",
        "proj_lora1" => "img_attn.proj",
        "qkv_lora2" => "txt_attn.qkv",
        "proj_lora2" => "txt_attn.proj",
        // USO's single-block processors (ComfyUI `comfy/lora_convert.py` `convert_uso_lora`).
        "qkv_lora" => "linear1_qkv",
        "proj_lora" => "linear2",
        _ => return None,
    };
    let blocks = if layer.starts_with("linear") {
        "single_blocks."
    } else {
        "double_blocks."
    };
    let block = head.rsplit_once(blocks).map(|(_, n)| n)?;
    if block.is_empty() || !block.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((format!("{head}.{layer}"), role, Naming::XLabs))
}

/// The algorithm an unsupported key belongs to.
pub fn unsupported(key: &str) -> Option<&'static str> {
    UNSUPPORTED.iter().find_map(|(s, algo)| {
        key.strip_suffix(s)
            .is_some_and(|m| m.ends_with('.'))
            .then_some(*algo)
    })
}

/// The key `role` would have in the spelling the module's other tensors use: the key of one of
/// its factors with that factor's suffix replaced (`….lora_B.weight` → `….lora_A.weight`,
/// `….processor.to_q_lora.up.weight` → `….processor.to_q_lora.down.weight`), so an error names
/// the tensor the file lacks as the file would spell it. `None` when no factor gives a spelling
/// that has `role`.
pub fn sibling_key(parts: &Parts, role: &str) -> Option<String> {
    parts
        .iter()
        .filter(|(r, _)| !matches!(**r, "alpha" | "dora_scale"))
        .find_map(|(r, (key, _))| {
            let (suffix, _, naming) = SUFFIXES
                .iter()
                .find(|(suffix, r2, _)| r2 == r && key.ends_with(suffix))?;
            let (wanted, _, _) = SUFFIXES
                .iter()
                .find(|(_, r2, n2)| *r2 == role && n2 == naming)?;
            Some(format!("{}{wanted}", key.strip_suffix(suffix)?))
        })
}

/// One module's tensors: role (kohya/LyCORIS suffix) → (key, shape).
pub type Parts = std::collections::BTreeMap<&'static str, (String, Vec<usize>)>;
