//! PEFT's `adapter_config.json` as lorakit reads it ([`PeftConfig`]), the folder's file names and
//! key prefix, the `rank_pattern` / `alpha_pattern` rule, and trainable-token names. The leaf of
//! the PEFT format: the adapter model reads [`CONFIG_NAME`] from here.
//!
//! Must not depend on the adapter model or on the PEFT reader and writer (they depend on it).

use super::targets;
use crate::error::{InputError, InputResult};
use regex::Regex;
use serde_json::Value;
use std::path::Path;

pub const WEIGHTS_NAME: &str = "adapter_model.safetensors";
/// The weights file of a PEFT folder saved with `safe_serialization=False` (`torch.save`).
pub const PICKLE_WEIGHTS_NAME: &str = "adapter_model.bin";
pub const CONFIG_NAME: &str = "adapter_config.json";
/// Prefix PEFT puts before module paths on disk.
pub const PREFIX: &str = "base_model.model.";

/// The PEFT tuners lorakit reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftType {
    Lora,
    /// `tuners/loha`: LyCORIS' LoHa under PEFT names, `scaling = alpha / r`.
    Loha,
    /// `tuners/lokr`: LyCORIS' LoKr under PEFT names, `scaling = alpha / r` always (unlike
    /// LyCORIS, whose scale is 1 when both Kronecker halves are whole).
    Lokr,
    /// `tuners/ia3`: one vector `ia3_l` per module, `W' = W0 ⊙ l` on the output rows, or on
    /// the input side for `feedforward_modules`; the bias scaled too on the output side.
    Ia3,
    /// `tuners/oft`: `oft_R.weight` per module, `W' = W0·blockdiag(R)ᵀ`.
    Oft,
    /// `tuners/adalora`: `lora_A`, `lora_E`, `lora_B` per module, pruned per module
    /// (`peft/adalora.rs`).
    AdaLora,
    /// `tuners/vera`: shared `vera_A`/`vera_B` and per-module `vera_lambda_d`/`vera_lambda_b`
    /// (`peft/vera.rs`).
    Vera,
    /// `tuners/vblora`: a shared vector bank and per-module top-k logits (`peft/vblora.rs`).
    VbLora,
    /// `tuners/ln_tuning`: whole trained copies of norm layers (`peft/ln_tuning.rs`).
    LnTuning,
    /// `tuners/hra`: Householder reflections on the input side (`peft/hra.rs`).
    Hra,
    /// `tuners/boft`: butterfly OFT with one butterfly factor and a per-row scale
    /// (`peft/boft.rs`).
    Boft,
    /// `tuners/delora`: LoRA factors normalised per rank, `delora_lambda` and the base's
    /// column norms (`peft/delora.rs`).
    Delora,
    /// `tuners/miss`: one `miss_block` per module added to W0 by blocks, or (`bat`) mixed with
    /// it (`peft/miss.rs`).
    Miss,
    /// `tuners/bone` of older PEFT releases (gone from 0.21.2; MiSS is its successor): `bone_block`,
    /// merged by the same code as MiSS without `mini` (`peft/miss.rs`).
    Bone,
    /// `tuners/shira`: sparse values at saved positions (`peft/shira.rs`).
    Shira,
    /// `tuners/c3a`: block-circulant kernels (`peft/c3a.rs`).
    C3a,
    /// `tuners/gralora`: k×k blocks of low-rank products, plus an optional LoRA (`peft/gralora.rs`).
    Gralora,
    /// `tuners/randlora`: shared random bases and per-module λ/γ (`peft/randlora.rs`).
    RandLora,
    /// `tuners/road`: 2-D rotations and scales of the output rows (`peft/road.rs`).
    Road,
    /// `tuners/osf`: the trained low singular triplets of each weight (`peft/osf.rs`).
    Osf,
    /// `tuners/hira`: `W' = W0 + W0 ⊙ (B·A)` (`peft/hira.rs`).
    Hira,
    /// `tuners/glora`: `W' = W0 + W0 ⊙ A + B` (`peft/glora.rs`).
    Glora,
    /// `tuners/tinylora`: the base's saved SVD factors around `Σ vᵢ·Pᵢ` (`peft/tinylora.rs`).
    TinyLora,
    /// `tuners/pvera`: VeRA with a doubled `pvera_A` whose first half merges (`peft/pvera.rs`).
    Pvera,
    /// `tuners/unilora`: LoRA factors gathered from one shared vector (`peft/unilora.rs`).
    UniLora,
    /// `tuners/trainable_tokens`: rows of the embedding replaced (`peft/tokens.rs`).
    TrainableTokens,
    /// `tuners/frod`: `U·(S + diag λ)·Vᵀ`, `U` rebuilt from the base (`peft/frod.rs`).
    Frod,
    /// `tuners/beft`, `deft`, `peanut`, `supertuning`, `adamss` (one subspace): `peft/beft.rs`, ….
    Beft,
    Deft,
    Peanut,
    Supertuning,
    Adamss,
}

/// The lorakit-read PEFT types, as `peft_type` spells them, for the refusal of any other.
const READ_TYPES: &str = "LORA, ADALORA, LOHA, LOKR, IA3, OFT, VERA, VBLORA, LN_TUNING, HRA, BOFT, DELORA, MISS, BONE, SHIRA, C3A, GRALORA, RANDLORA, ROAD, OSF, HIRA, GLORA, TINYLORA, PVERA, UNILORA, TRAINABLE_TOKENS, FROD, BEFT, DEFT, PEANUT, SUPERTUNING and ADAMSS";

/// Every `peft_type` PEFT 0.21.2 defines (`utils/peft_types.py` `PeftType`).
const PEFT_TYPES: &[&str] = &[
    "ADALORA",
    "ADAMSS",
    "ADAPTION_PROMPT",
    "BEFT",
    "BOFT",
    "C3A",
    "CARTRIDGE",
    "CPT",
    "DEFT",
    "DELORA",
    "FOURIERFT",
    "FROD",
    "GLORA",
    "GRALORA",
    "HIRA",
    "HRA",
    "IA3",
    "LILY",
    "LN_TUNING",
    "LOHA",
    "LOKR",
    "LORA",
    "MISS",
    "MULTITASK_PROMPT_TUNING",
    "OFT",
    "OSF",
    "PEANUT",
    "POLY",
    "PREFIX_TUNING",
    "PROMPT_TUNING",
    "PSOFT",
    "PVERA",
    "P_TUNING",
    "RANDLORA",
    "ROAD",
    "SHADOW",
    "SHIRA",
    "SUPERTUNING",
    "TINYLORA",
    "TRAINABLE_TOKENS",
    "UNILORA",
    "VBLORA",
    "VERA",
    "WAVEFT",
    "XLORA",
];

/// The tuner a config's `peft_type` names, among those lorakit reads (absent is LORA, as PEFT
/// reads it); `None` for every other type and for seeded buffers not saved ([`unread_type`]
/// says why).
fn read_type(t: Option<&str>, obj: &serde_json::Map<String, Value>) -> Option<PeftType> {
    Some(match t {
        None | Some("LORA") => PeftType::Lora,
        Some("LOHA") => PeftType::Loha,
        Some("LOKR") => PeftType::Lokr,
        Some("IA3") => PeftType::Ia3,
        Some("OFT") => PeftType::Oft,
        Some("ADALORA") => PeftType::AdaLora,
        Some("VERA") => PeftType::Vera,
        Some("VBLORA") => PeftType::VbLora,
        Some("LN_TUNING") => PeftType::LnTuning,
        Some("HRA") => PeftType::Hra,
        Some("BOFT") => PeftType::Boft,
        Some("DELORA") => PeftType::Delora,
        Some("MISS") => PeftType::Miss,
        Some("BONE") => PeftType::Bone,
        Some("SHIRA") => PeftType::Shira,
        Some("C3A") => PeftType::C3a,
        Some("GRALORA") => PeftType::Gralora,
        Some("RANDLORA") => PeftType::RandLora,
        Some("ROAD") => PeftType::Road,
        Some("OSF") => PeftType::Osf,
        Some("HIRA") => PeftType::Hira,
        Some("GLORA") => PeftType::Glora,
        // Refused by `unread_type` where their seeded buffers are not saved.
        Some("TINYLORA") if !unsaved_buffers("TINYLORA", obj) => PeftType::TinyLora,
        Some("PVERA") if !unsaved_buffers("PVERA", obj) => PeftType::Pvera,
        Some("UNILORA") if !unsaved_buffers("UNILORA", obj) => PeftType::UniLora,
        Some("TRAINABLE_TOKENS") => PeftType::TrainableTokens,
        Some("FROD") if !unsaved_buffers("FROD", obj) => PeftType::Frod,
        Some("BEFT") => PeftType::Beft,
        Some("DEFT") => PeftType::Deft,
        Some("PEANUT") => PeftType::Peanut,
        Some("SUPERTUNING") => PeftType::Supertuning,
        Some("ADAMSS") => PeftType::Adamss,
        _ => return None,
    })
}

/// Why lorakit cannot read the weights of a PEFT folder that PEFT itself loads: its config
/// names a `peft_type` lorakit does not read ([`unread_type`]), or VeRA /
/// RandLoRA projections PEFT regenerates from a seed (`save_projection` false; what
/// [`saved_projections`] refuses). `check` judges such a folder from its config and tensor names
/// alone. `None` for a LoRA config, every type lorakit reads, and a config that is not a JSON
/// object (its reader says why).
pub fn unread_weights(config: &Value) -> Option<String> {
    let obj = config.as_object()?;
    let t = obj.get("peft_type")?.as_str()?;
    // A type PEFT does not define fails in PEFT too (`PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]`):
    // the reader's refusal stands.
    if !PEFT_TYPES.contains(&t) {
        return None;
    }
    if read_type(Some(t), obj).is_none() {
        return Some(format!("`peft_type` {}", unread_type(t, obj)));
    }
    let unsaved = obj.get("save_projection").and_then(Value::as_bool) == Some(false);
    (unsaved && matches!(t, "VERA" | "RANDLORA")).then(|| {
        format!(
            "`peft_type` is `{t}` with `save_projection` false: its saved folder holds no shared projections; PEFT regenerates them with torch's random generator seeded by `projection_prng_key`, which lorakit cannot reproduce, so it cannot merge it"
        )
    })
}

/// Why lorakit refuses a `peft_type` PEFT 0.21.2 defines (`utils/peft_types.py`) but lorakit
/// does not read: the saved folder cannot give PEFT's merge (a buffer regenerated from a seed by
/// torch's RNG, no weights at all, a per-input mixture), or the merge is not implemented yet.
fn unread_type(t: &str, cfg: &serde_json::Map<String, Value>) -> String {
    let unsaved = |_: &str| unsaved_buffers(t, cfg);
    let seeded = |field: &str, what: &str| {
        format!(
            "is `{t}`: its saved folder holds no {what}; PEFT regenerates them with torch's random generator seeded by `{field}`, which lorakit cannot reproduce, so it cannot merge it"
        )
    };
    match t {
        "FOURIERFT" | "WAVEFT" => seeded("random_loc_seed", "frequency locations (only the spectrum)"),
        // The indices come from numpy's generator (`UniLoraModel.generate_index`).
        "UNILORA" if unsaved("save_indices") => format!(
            "is `{t}`: its saved folder holds no parameter-sharing indices (`save_indices` is not true); PEFT regenerates them with numpy's default_rng seeded by `proj_seed` over the targeted modules in model order, which lorakit cannot reproduce, so it cannot merge it"
        ),
        "FROD" | "PVERA" if unsaved("save_projection") => seeded(
            "projection_prng_key",
            "shared projections (`save_projection` is false)",
        ),
        "TINYLORA" if unsaved("save_projection") => {
            seeded("projection_seed", "projections (`save_projection` is false)")
        }
        "PROMPT_TUNING" | "MULTITASK_PROMPT_TUNING" | "P_TUNING" | "PREFIX_TUNING"
        | "ADAPTION_PROMPT" | "CPT" | "CARTRIDGE" => format!(
            "is `{t}`: it learns virtual tokens or a prefix, not weight updates, so there is nothing to merge into a base"
        ),
        "POLY" | "XLORA" => format!(
            "is `{t}`: it mixes its adapters per input, so no merged weight computes it"
        ),
        "LILY" => format!(
            "is `{t}`: its router mixes the shared B experts by the softmax of each input averaged over the batch, so no merged weight computes it; PEFT's merge raises NotImplementedError and so does lorakit"
        ),
        "SHADOW" => format!(
            "is `{t}`: its shadow network adapts the hidden states per input along the decoder loop, not the weights, so no merged weight computes it (PEFT's merge raises NotImplementedError too)"
        ),
        "PSOFT" => format!(
            "is `{t}`: its saved folder holds only psoft_R; PEFT rebuilds the frozen A and B on load from an SVD of the base weight (`psoft_svd`, torch's RNG for \"lowrank\"), and ΔW = B·(R − I)·A changes with the signs LAPACK gives the singular vectors, which lorakit cannot reproduce, so it cannot merge it"
        ),
        _ => format!("is `{t}`; lorakit reads {READ_TYPES} adapters (not `{t}` yet)"),
    }
}

/// Whether the config of a tuner that saves its seeded buffers only when told to says they are
/// not saved: `save_projection` (default true) for PVeRA, TinyLoRA and FRoD, `save_indices`
/// (default false, `tuners/unilora/config.py`) for UniLoRA.
fn unsaved_buffers(t: &str, cfg: &serde_json::Map<String, Value>) -> bool {
    let flag = |f: &str| cfg.get(f).and_then(Value::as_bool);
    match t {
        "UNILORA" => flag("save_indices") != Some(true),
        "PVERA" | "TINYLORA" | "FROD" => flag("save_projection") == Some(false),
        _ => false,
    }
}

/// Whether `name` is a tensor of one of the PEFT tuners lorakit reads or refuses by type
/// (its last component's prefix, as their `layer.py` `adapter_layer_names` spell them), so a
/// folder holding only such tensors is read by the PEFT reader and refused or read by type.
pub fn tuner_tensor(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "vera_",
        "vblora_",
        "ln_tuning_layers",
        "hra_u",
        "boft_",
        "fourierft_",
        "waveft_",
        "miss_",
        "bone_",
        "shira_",
        "c3a_",
        "delora_",
        "randlora_",
        "gralora_",
        "road_",
        "osf_",
        "hira_",
        "tinylora_",
        "pvera_",
        "unilora_",
        "lily_",
        "frod_",
        "trainable_tokens_delta",
        "beft_",
        "deft_",
        "peanut_",
        "supertuning_",
        "adamss_",
        "psoft_",
    ];
    let last = name
        .rsplit('.')
        .find(|c| !matches!(*c, "weight" | "bias"))
        .unwrap_or(name);
    // OSF nests its tensors: `{module}.osf_svd_params.U_low`.
    // GLoRA nests them too (`{module}.glora_A.Xd`), TinyLoRA numbers its vectors
    // (`base_model.tinylora_v.0`).
    PREFIXES.iter().any(|p| last.starts_with(p))
        || name.contains(".osf_svd_params.")
        || name.contains(".glora_")
        || name.contains(".tinylora_v.")
}

/// The LoRA fields of `adapter_config.json` that lorakit reads (`alpha` for LoHa/LoKr).
#[derive(Debug, Clone)]
pub struct PeftConfig {
    pub peft_type: PeftType,
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub use_dora: bool,
    pub fan_in_fan_out: bool,
    pub rank_pattern: Vec<(String, usize)>,
    pub alpha_pattern: Vec<(String, f64)>,
    /// `rank_pattern` / `alpha_pattern` keys compiled once per adapter (same order).
    rank_re: Vec<PatternKey>,
    alpha_re: Vec<PatternKey>,
    pub target_modules: Value,
    pub modules_to_save: Vec<String>,
    /// Which modules PEFT injects layers into (`targets`): tensors of any other module are
    /// dropped by PEFT's loader.
    pub targets: targets::Targets,
    pub bias: String,
    pub base_model: Option<String>,
    pub raw: Value,
}

impl PeftConfig {
    /// Parses and checks the fields; `path` names the file in errors.
    pub fn parse(path: &Path, text: &[u8]) -> InputResult<PeftConfig> {
        let raw: Value = serde_json::from_slice(text)
            .map_err(|e| InputError::invalid(path, format!("not valid JSON: {e}")))?;
        let obj = raw
            .as_object()
            .ok_or_else(|| InputError::invalid(path, "not a JSON object"))?;
        let bad = |k: &str, why: &str| InputError::invalid(path, format!("`{k}` {why}"));
        // PEFT looks the type up by name (`PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]`): a number or
        // null there is no type; a missing key is read as LORA.
        let peft_type = match obj.get("peft_type") {
            None => None,
            Some(Value::String(t)) => Some(t.as_str()),
            Some(_) => return Err(bad("peft_type", "must be a string")),
        };
        let peft_type = match (peft_type, read_type(peft_type, obj)) {
            (_, Some(t)) => t,
            (t, None) => return Err(bad("peft_type", &unread_type(t.unwrap_or("LORA"), obj))),
        };
        // LoHa/LoKr configs call it `alpha` (`tuners/loha/config.py`, `tuners/lokr/config.py`).
        let alpha_key = match peft_type {
            PeftType::Lora | PeftType::AdaLora => "lora_alpha",
            // The other tuners have no alpha (`alpha` is read and unused).
            _ => "alpha",
        };
        let r = match obj.get("r") {
            // Super-Tuning's `r` is null without its LoRA (`supertuning.rs` reads it).
            Some(Value::Null) if peft_type == PeftType::Supertuning => 8,
            Some(v) => {
                v.as_u64()
                    // OFT's `r` may be 0 (then `oft_block_size` decides).
                    .filter(|&r| r > 0 || peft_type == PeftType::Oft)
                    .ok_or_else(|| bad("r", "must be a positive integer"))? as usize
            }
            None => 8,
        };
        // The scale multiplies f32 factors: an alpha past f32's range makes every ΔW infinite.
        let in_f32 = |x: &f64| x.abs() <= f32::MAX as f64;
        let lora_alpha = match obj.get(alpha_key) {
            // DEFT's `alpha` is null for "no scaling" (`deft.rs` reads it).
            Some(Value::Null) if peft_type == PeftType::Deft => 8.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(alpha_key, "must be a number"))
                .and_then(|a| {
                    Some(a)
                        .filter(in_f32)
                        .ok_or_else(|| bad(alpha_key, &format!("{a} is beyond the f32 range")))
                })?,
            None => 8.0,
        };
        let flag = |k: &str| -> InputResult<bool> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(bad(k, "must be true or false")),
            }
        };
        let pattern = |k: &str| -> InputResult<Vec<(String, f64)>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(key, v)| match v.as_f64() {
                        Some(x) if in_f32(&x) => Ok((key.clone(), x)),
                        Some(x) => Err(bad(
                            k,
                            &format!("value {x} for `{key}` is beyond the f32 range"),
                        )),
                        None => Err(bad(k, &format!("value for `{key}` is not a number"))),
                    })
                    .collect(),
                Some(_) => Err(bad(k, "must be an object")),
            }
        };
        // AdaLoRA's `rank_pattern` lists the kept triplets as booleans, OSF's the frozen
        // `effective_rank` per module (an int or a fraction of min(out, in)); the file's shapes
        // say the same (adalora.rs, osf.rs read them), so neither is a LoRA rank pattern.
        let rank_pattern = if matches!(peft_type, PeftType::AdaLora | PeftType::Osf) {
            Vec::new()
        } else {
            // A JSON integer, as `r`: PEFT passes the value to the layer's shape, where a
            // float (`8.0`) raises TypeError (`torch.empty`).
            if let Some(Value::Object(o)) = obj.get("rank_pattern") {
                if let Some((k, _)) = o.iter().find(|(_, v)| v.is_number() && !v.is_u64()) {
                    return Err(bad(
                        "rank_pattern",
                        &format!("rank for `{k}` is not a positive integer"),
                    ));
                }
            }
            pattern("rank_pattern")?
        }
        .into_iter()
        .map(|(k, v)| {
            if v >= 1.0 && v.fract() == 0.0 {
                Ok((k, v as usize))
            } else {
                Err(bad(
                    "rank_pattern",
                    &format!("rank for `{k}` is not a positive integer"),
                ))
            }
        })
        .collect::<InputResult<Vec<_>>>()?;
        let modules_to_save = match obj.get("modules_to_save") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad("modules_to_save", "must hold strings"))
                })
                .collect::<InputResult<_>>()?,
            Some(_) => return Err(bad("modules_to_save", "must be a list")),
        };
        let alpha_pattern = pattern("alpha_pattern")?;
        let compile = |k: &str, keys: Vec<&str>| -> InputResult<Vec<PatternKey>> {
            let regexes = keys.iter().filter(|key| !plain_key(key)).count();
            if regexes > MAX_REGEX_KEYS {
                return Err(bad(
                    k,
                    &format!(
                        "has {regexes} regex keys; at most {MAX_REGEX_KEYS} are read (each is compiled; plain module names are not counted)"
                    ),
                ));
            }
            keys.into_iter()
                .map(|key| {
                    compile_pattern(key).map_err(|e| {
                        InputError::invalid(
                            path,
                            format!(
                                "`{k}` key {key:?} is not a valid regex: {}",
                                one_line_regex_error(&e)
                            ),
                        )
                    })
                })
                .collect()
        };
        let rank_re = compile(
            "rank_pattern",
            rank_pattern.iter().map(|(k, _)| k.as_str()).collect(),
        )?;
        let alpha_re = compile(
            "alpha_pattern",
            alpha_pattern.iter().map(|(k, _)| k.as_str()).collect(),
        )?;
        Ok(PeftConfig {
            peft_type,
            r,
            lora_alpha,
            use_rslora: flag("use_rslora")?,
            use_dora: flag("use_dora")?,
            fan_in_fan_out: flag("fan_in_fan_out")?,
            rank_pattern,
            alpha_pattern,
            rank_re,
            alpha_re,
            target_modules: obj.get("target_modules").cloned().unwrap_or(Value::Null),
            modules_to_save,
            targets: targets::Targets::parse(obj).map_err(|e| InputError::invalid(path, e))?,
            bias: obj
                .get("bias")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_owned(),
            base_model: obj
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_owned),
            raw: raw.clone(),
        })
    }

    /// adapter_config.json's `r` where it is not `stored`, the rank the tensors hold: VeRA and
    /// HRA have no rank_pattern, PEFT builds their layers at `r` and refuses another (hostile
    /// round 11).
    pub(super) fn r_other_than(&self, stored: usize) -> Option<u64> {
        self.raw
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&c| c != stored as u64)
    }

    /// Rank configured for `module` (rank_pattern, else `r`).
    pub fn rank_for(&self, module: &str) -> InputResult<usize> {
        Ok(match first_match(&self.rank_re, module) {
            Some(i) => self.rank_pattern[i].1,
            None => self.r,
        })
    }

    /// Alpha configured for `module` (alpha_pattern, else `lora_alpha`).
    pub fn alpha_for(&self, module: &str) -> InputResult<f64> {
        Ok(match first_match(&self.alpha_re, module) {
            Some(i) => self.alpha_pattern[i].1,
            None => self.lora_alpha,
        })
    }
}

/// The most regex (not plain-name) `rank_pattern` / `alpha_pattern` keys a config may have:
/// each is a compiled regex of ~20 kB, and millions of them would take the machine's memory.
const MAX_REGEX_KEYS: usize = 50_000;

/// A `rank_pattern` / `alpha_pattern` key as PEFT's `get_pattern_key` matches it
/// (`re.match(rf"(.*\.)?({key})$", name)`): the whole module name, or a suffix of it starting
/// after a dot. A key of plain ASCII name characters (`.` still any character, as in the regex)
/// is matched without compiling one: lorakit writes one such key per module whose rank differs,
/// tens of thousands for an MoE model's experts.
#[derive(Debug, Clone)]
pub enum PatternKey {
    Plain(String),
    Regex(Regex),
}

impl PatternKey {
    pub fn is_match(&self, name: &str) -> bool {
        match self {
            PatternKey::Plain(key) if name.is_ascii() => {
                let (k, n) = (key.as_bytes(), name.as_bytes());
                if n.len() < k.len() {
                    return false;
                }
                let (head, tail) = n.split_at(n.len() - k.len());
                (head.is_empty() || head.ends_with(b"."))
                    && k.iter()
                        .zip(tail)
                        .all(|(&c, &x)| if c == b'.' { x != b'\n' } else { c == x })
            }
            PatternKey::Plain(key) => {
                Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).is_ok_and(|re| re.is_match(name))
            }
            PatternKey::Regex(re) => re.is_match(name),
        }
    }
}

fn plain_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

pub fn compile_pattern(key: &str) -> Result<PatternKey, regex::Error> {
    if plain_key(key) {
        return Ok(PatternKey::Plain(key.to_owned()));
    }
    Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).map(PatternKey::Regex)
}

/// The regex crate's errors span several lines (the pattern, a caret, the message); the last
/// line is the message.
pub(super) fn one_line_regex_error(e: &regex::Error) -> String {
    let s = e.to_string();
    s.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("invalid regex")
        .to_owned()
}

/// Index of the first compiled pattern matching `name` (first match wins, as in PEFT).
pub fn first_match(patterns: &[PatternKey], name: &str) -> Option<usize> {
    patterns.iter().position(|re| re.is_match(name))
}

/// The key suffix of PEFT's trainable-token rows: `{module}.token_adapter.trainable_tokens_delta`
/// holds the new values of the rows `trainable_token_indices` names, in that order (PEFT 0.21.2
/// `tuners/trainable_tokens/layer.py`, `TrainableTokensLayer.update_layer`: `[len(indices),
/// embed_dim]`; the key as `save_pretrained` writes it, checked on a PEFT-written folder).
pub const TOKENS_SUFFIX: &str = ".token_adapter.trainable_tokens_delta";

/// The module a trainable-token tensor belongs to.
pub fn tokens_module(name: &str) -> Option<&str> {
    name.strip_suffix(TOKENS_SUFFIX)
}

/// The token indices `trainable_token_indices` gives a module: a list targets the model's input
/// embedding, whatever it is called (PEFT 0.21.2 `utils/other.py` `_get_input_embeddings_name`:
/// `embed_tokens`, GPT-NeoX's `gpt_neox.embed_in`, GPT-2's `transformer.wte`), which is the
/// module the file's token adapter names; a dict maps a module name (PEFT matches it as a name
/// suffix) to its list (`tuners/lora/config.py` `LoraConfig.trainable_token_indices`).
///
/// A TRAINABLE_TOKENS adapter (`tuners/trainable_tokens/config.py`) gives every module it
/// targets the one list `token_indices`.
pub fn token_indices(cfg: Option<&Value>, module: &str) -> Option<Vec<u64>> {
    let cfg = cfg?;
    let list =
        |v: &Value| -> Option<Vec<u64>> { v.as_array()?.iter().map(|x| x.as_u64()).collect() };
    if cfg.get("peft_type").and_then(Value::as_str) == Some("TRAINABLE_TOKENS") {
        return list(cfg.get("token_indices")?);
    }
    let v = cfg.get("trainable_token_indices")?;
    match v {
        Value::Array(_) => list(v),
        Value::Object(o) => o.iter().find_map(|(k, ids)| {
            let hit = module == k
                || module
                    .strip_suffix(k.as_str())
                    .is_some_and(|p| p.ends_with('.'));
            if hit {
                list(ids)
            } else {
                None
            }
        }),
        _ => None,
    }
}

/// The shapes of the frozen random projections `a`/`b` that every layer of a VeRA, PVeRA or
/// RandLoRA adapter shares, saved when `save_projection` is true (the default). Without them PEFT
/// regenerates them with torch's generator seeded by `projection_prng_key`, which lorakit cannot
/// reproduce: refused, naming them as `what` ("VeRA's shared projections").
pub(super) fn saved_projections<'f>(
    file: &'f crate::io::SafetensorsFile,
    cfg: &PeftConfig,
    what: &str,
    [a, b]: [&str; 2],
) -> InputResult<(&'f [usize], &'f [usize])> {
    let saved = cfg
        .raw
        .get("save_projection")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    match (file.info(a), file.info(b)) {
        (Some(sa), Some(sb)) if saved => Ok((&sa.shape, &sb.shape)),
        _ => Err(InputError::invalid(
            file.path(),
            format!(
                "{what} `{a}`/`{b}` are not in the file (`save_projection` is {saved} in adapter_config.json): PEFT regenerates them with torch's random generator seeded by `projection_prng_key`, which lorakit cannot reproduce; save the adapter with save_projection=True"
            ),
        )),
    }
}

/// A stored tensor's values in f32, refused (naming file and tensor) unless float and finite.
pub(super) fn stored_f32(file: &crate::io::SafetensorsFile, key: &str) -> InputResult<Vec<f32>> {
    let err = |m: String| InputError::invalid(file.path(), format!("tensor `{key}`: {m}"));
    let view = file.view(key)?;
    if !crate::dtype::is_float_compute(view.dtype) {
        return Err(err(format!(
            "dtype {} is not a float type",
            crate::dtype::name(view.dtype)
        )));
    }
    let w = view.to_f32();
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(err(format!(
            "value {} at flat index {i} is not finite",
            w[i]
        )));
    }
    Ok(w)
}

/// A stored integer tensor's values, refused (naming file and tensor) unless of an integer dtype.
pub(super) fn stored_ints(file: &crate::io::SafetensorsFile, key: &str) -> InputResult<Vec<i64>> {
    use crate::dtype::Dtype;
    let view = file.view(key)?;
    let d = &view.data;
    let le = |c: &[u8]| {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        // Sign-extend from the width read.
        let shift = 64 - 8 * c.len() as u32;
        (i64::from_le_bytes(b) << shift) >> shift
    };
    Ok(match view.dtype {
        Dtype::U8 => d.iter().map(|&b| b as i64).collect(),
        Dtype::I8 | Dtype::I16 | Dtype::I32 | Dtype::I64 => {
            let w = view.dtype.bitsize() / 8;
            d.chunks_exact(w).map(le).collect()
        }
        t => {
            return Err(InputError::invalid(
                file.path(),
                format!(
                    "tensor `{key}`: dtype {} is not an integer type",
                    crate::dtype::name(t)
                ),
            ))
        }
    })
}
