//! The merge's model: its options ([`MergeOptions`] and the policies in it), the plan
//! ([`MergePlan`]: what happens to each base tensor, and the output files), and the summaries it
//! reports, with the base-layout questions the planning asks (embedding and `lm_head` names,
//! tied embeddings). The leaf that `plan.rs`, `run.rs`, `tensor.rs` and the other merge files
//! share; must not plan, compute or write anything.

use crate::adapter::mapping::{Resolution, Unmatched};
use crate::adapter::Adapter;
use crate::backend::Rounding;
use crate::io::Checkpoint;
use crate::ops::output::DtypeChoice;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Options of a merge.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    pub dtype: DtypeChoice,
    /// Re-shard the output into files of at most this many bytes (Hugging Face names).
    pub max_shard_size: Option<u64>,
    /// Subtract instead of add.
    pub unmerge: bool,
    /// Warn about unmatched modules instead of failing.
    pub allow_unmatched: bool,
    /// Show a progress bar on stderr.
    pub progress: crate::progress::Reporter,
    /// Write only part `i` of `n` (1-based) of the output files; see [`crate::parts`].
    pub part: Option<(usize, usize)>,
    /// What happens to a quantized base's weights.
    pub quant: QuantOutput,
    /// QLoRA-correct merging into a float base: merge into `dequant(Q(W))`, the weights the
    /// adapter was trained against, instead of `W`.
    pub as_trained_on: Option<AsTrainedOn>,
    /// How merged values are rounded to the output dtype: f32 arithmetic as PEFT (the
    /// default), or exactly ([`Rounding::Exact`]; refused with DoRA modules, f64 outputs,
    /// quantized outputs and `as_trained_on`, checked by [`MergePlan::new`]).
    pub rounding: Rounding,
    /// What happens to an embedding an adapter changes when the base ties lm_head to it.
    pub tied_embeddings: TiedEmbeddings,
    /// What happens to a base weight narrower than an adapter's `lora_A` (a Flux control LoRA
    /// on a base whose `x_embedder` reads fewer channels).
    pub expand_base: ExpandBase,
}

/// What a merge does with a base weight `[out, in]` that an adapter module reads as
/// `[out, in′]`, `in′ > in`: a Flux control LoRA (FLUX.1 Depth/Canny "-lora", diffusers'
/// `train_control_lora_flux.py`) whose `x_embedder`/`img_in` takes the latents and the control
/// image's latents concatenated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpandBase {
    /// Refuse the module (a shape mismatch), naming the option that widens.
    #[default]
    Refuse,
    /// Widen the base weight with zero columns to `in′` before adding ΔW, as diffusers 0.42.1's
    /// Flux loader does (`FluxLoraLoaderMixin._maybe_expand_transformer_param_shape_or_error_`:
    /// a new `Linear(in′, out)` whose weight is `[W0 | 0]`, bias untouched), and write the
    /// widened `x_embedder`'s width as the base folder's config.json `in_channels`
    /// ([`super::widen`]).
    ZeroPad,
}

/// What a merge does with an adapter that changes the input embedding of a base whose lm_head
/// is tied to it (`tie_word_embeddings`, no `lm_head.weight` stored): the output keeps the tie,
/// so the change reaches the output layer too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TiedEmbeddings {
    /// Refuse the adapter, naming the tie: a change to one matrix silently changes the other
    /// (PEFT issue #2018), which an adapter trained on an untied copy did not intend.
    #[default]
    Refuse,
    /// Merge into the shared tensor and keep the tie: what PEFT's `merge_and_unload` does on a
    /// tied model (one Parameter serves both; `save_pretrained` stores it once), checked against
    /// PEFT by `fixtures/gen/tied_merge_fixture.py`. A base that stores `lm_head.weight` beside
    /// the tie is still refused (two tensors would have to stay equal).
    Shared,
}

/// How a quantized base is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QuantOutput {
    /// Merged weights quantized again in their format with fresh scales (bit-exact with the
    /// producer's quantizer); every other tensor, companions included, copied byte for byte;
    /// `quantization_config` kept.
    #[default]
    Keep,
    /// Every quantized weight written as float (`--dtype`), companions dropped,
    /// `quantization_config` removed.
    Dequantize,
}

/// The quantization a (Q)LoRA adapter was trained on, for [`MergeOptions::as_trained_on`]:
/// bitsandbytes 4-bit as `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind)`
/// quantizes each targeted weight (see [`crate::io::quant::bnb4`]).
///
/// Only the weights transformers 5.24's bitsandbytes quantizer converts are quantized (see
/// `bnb_scope.rs`: Linear/Conv1D layers, not the output embedding, the last module, tied keys,
/// the class's `_keep_in_fp32_modules` or `skip`); the others merge into W as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsTrainedOn {
    pub kind: crate::io::quant::bnb4::Kind,
    pub blocksize: usize,
    /// `bnb_4bit_use_double_quant`: the absmax vector is quantized again.
    pub double_quant: bool,
    /// `llm_int8_skip_modules`: module-name patterns left float. As in transformers, a list
    /// replaces the default skips (output embedding, last module, tied keys).
    pub skip: Option<Vec<String>>,
    /// The `dtype` the QLoRA model was loaded in (`from_pretrained(..., dtype=…)`): W is rounded
    /// to it before quantizing and the dequantization is rounded to it, as bitsandbytes returns
    /// it. `None`: transformers' `dtype="auto"`, config.json's `dtype`, else the tensor's own.
    pub dtype: Option<crate::dtype::Dtype>,
}

/// One tensor of a QLoRA-correct merge: how large the stray term `W − dequant(Q(W))` (which a
/// plain merge into `W` would add) is next to the adapter's own change `s·B·A`; for a weight
/// transformers does not quantize, `W − W as loaded` (0 unless the load dtype rounds it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct QloraTensor {
    pub name: String,
    /// ‖W − dequant(Q(W))‖_F.
    pub stray_norm: f64,
    /// ‖ΔW‖_F of the merged adapters.
    pub delta_norm: f64,
    /// stray_norm / delta_norm.
    pub ratio: f64,
    /// The dtype transformers loads the weight in (the merge starts from W rounded to it).
    pub load_dtype: String,
    /// Why transformers leaves the weight float (merged into W as loaded, not dequant(Q(W))).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_quantized: Option<String>,
}

/// One adapter and its weight.
#[derive(Debug)]
pub struct WeightedAdapter {
    pub adapter: Adapter,
    pub weight: f64,
}

/// What happens to one base tensor.
#[derive(Debug, Clone)]
pub(super) enum Action {
    Copy,
    /// Low-rank terms: (adapter, module).
    Merge(Vec<(usize, usize)>),
    /// Bias of modules with `lora_B.bias`: (adapter, module).
    Bias(Vec<(usize, usize)>),
    /// Full replacement: (adapter, full tensor).
    Replace(usize, usize),
}

/// One output file: name and the base tensors it holds, in order.
#[derive(Debug, Clone)]
pub(super) struct OutFile {
    pub(super) path: PathBuf,
    pub(super) tensors: Vec<String>,
}

/// Per-adapter counts reported after a merge.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    pub path: String,
    pub weight: f64,
    pub modules_merged: usize,
    pub tensors_replaced: usize,
    pub biases_updated: usize,
}

/// What every merge reports, whatever it writes (a safetensors checkpoint, a GGUF base's
/// merge, a Hugging Face base written as GGUF), with one meaning: flattened into
/// [`MergeSummary`] and the GGUF reports, so that one parser reads all three.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeRun {
    /// `merge` or `unmerge`.
    pub operation: &'static str,
    pub base: String,
    pub out: String,
    pub device: String,
    /// Per adapter, what the whole plan merges of it (with `--part` too).
    pub adapters: Vec<AdapterSummary>,
    pub tensors_merged_count: usize,
    /// Tensors written that no adapter changed.
    pub tensors_copied_count: usize,
    /// Every file written (shards, then the index, then the copied non-weight files); with
    /// `--part`, the shards this part wrote (`finalize` writes the index and copies).
    pub files: Vec<String>,
    /// `[I, N]` of `--part I/N`.
    pub part: Option<[usize; 2]>,
    pub bytes_written: u64,
    pub seconds: f64,
    pub gb_per_s: f64,
    /// Folders this run created for the output (missing parents of `--out`).
    pub created_folders: Vec<String>,
    /// Modules that land on no base tensor (left out under `--allow-unmatched`).
    pub unmatched: Vec<UnmatchedReport>,
}

/// A per-input LyCORIS `dora_scale` of a flattened conv (LoHa's `[r, in·kh·kw]`) could only
/// guess `in` from the file: its `magnitudes` must be the input columns of base tensor `tensor`
/// (`shape`). Checked by the safetensors and the GGUF merge alike.
pub(super) fn check_per_input_dora(
    a: &Adapter,
    m: &crate::adapter::LoraModule,
    magnitudes: usize,
    tensor: &str,
    shape: &[usize],
) -> crate::error::InputResult<()> {
    if m.dora_rule == (crate::adapter::DoraRule::Lycoris { per_input: true })
        && shape.get(1) != Some(&magnitudes)
    {
        return Err(crate::error::InputError::invalid(
            &a.path,
            format!(
                "module `{}`: dora_scale holds {magnitudes} input channels, base tensor `{tensor}` has shape {shape:?}",
                m.name
            ),
        ));
    }
    Ok(())
}

/// Gigabytes written per second of `seconds`.
pub(super) fn gb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e9 / seconds.max(1e-9)
}

/// What a merge into a safetensors checkpoint did (printed as a table, or as JSON with `--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeSummary {
    #[serde(flatten)]
    pub run: MergeRun,
    /// Quantized base tensors written as float (merged or not); their companions are dropped.
    #[serde(skip_serializing_if = "is_zero")]
    pub tensors_dequantized_count: usize,
    /// Merged weights of a quantized base written back quantized (`QuantOutput::Keep`).
    #[serde(skip_serializing_if = "is_zero")]
    pub tensors_requantized_count: usize,
    /// Merged tensors that streamed through the GPU in chunks (read from the memory map into
    /// the device's upload ring, read back into the writer), never whole on the host; the
    /// others merged by the GPU engine went whole (see `MergePlan::merge_tensor`).
    #[serde(skip_serializing_if = "is_zero")]
    pub tensors_streamed_count: usize,
    /// With `as_trained_on`: per merged tensor, the stray term removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub qlora: Vec<QloraTensor>,
}

pub(super) fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The plan of a merge, printed by `merge --dry-run`: nothing is written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRunSummary {
    pub operation: &'static str,
    pub dry_run: bool,
    pub base: String,
    pub out: String,
    /// The files this run (or this `--part`) would write.
    pub files: Vec<DryRunFile>,
    pub index: Option<String>,
    /// Non-weight files that would be copied.
    pub copied: Vec<String>,
    pub tensors_merged_count: usize,
    pub modules_matched_count: usize,
    pub unmatched: Vec<UnmatchedReport>,
    /// Tensor bytes of the whole output.
    pub bytes: u64,
}

/// One planned output file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRunFile {
    pub path: String,
    pub tensors_count: usize,
    pub bytes: u64,
}

/// An unmatched module with its adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnmatchedReport {
    pub adapter: String,
    #[serde(flatten)]
    pub detail: Unmatched,
}

/// A validated merge, ready to run.
#[derive(Debug)]
pub struct MergePlan {
    pub base: Checkpoint,
    pub adapters: Vec<WeightedAdapter>,
    pub out: PathBuf,
    pub options: MergeOptions,
    pub(super) actions: HashMap<String, Action>,
    /// Base tensors whose W0 comes from the adapter (`base_layer.weight`): (adapter, full).
    pub(super) base_override: HashMap<String, (usize, usize)>,
    /// Modules that update a row slice of their tensor, not all of it: (adapter, module).
    pub(super) rows: HashMap<(usize, usize), crate::adapter::mapping::RowSlice>,
    /// Modules whose tensors each receive given rows of the module's ΔW: (adapter, module) →
    /// tensor → those rows (a fused BFL Flux `img_attn.qkv` split over diffusers' `to_q`/…, or
    /// the final adaLN's halves swapped).
    pub(super) splits: HashMap<(usize, usize), HashMap<String, crate::adapter::mapping::Part>>,
    pub(super) files: Vec<OutFile>,
    /// Index file to write last (sharded output).
    pub(super) index: Option<PathBuf>,
    /// Non-weight files to copy: (source, destination).
    pub(super) extra_files: Vec<(PathBuf, PathBuf)>,
    pub unmatched: Vec<UnmatchedReport>,
    pub(super) resolutions: Vec<Resolution>,
    /// The base's quantized weights (empty for a float base).
    pub quant: crate::io::quant::QuantMap,
    /// `lorakit dequantize`: no adapters, every quantized weight written as float.
    pub(super) dequantize_only: bool,
    /// Base tensors written wider than stored ([`ExpandBase::ZeroPad`]): name → shape.
    pub(super) widened: HashMap<String, Vec<usize>>,
    /// The base folder's config.json as the widening rewrites it: (destination, bytes).
    pub(super) widened_config: Option<(PathBuf, Vec<u8>)>,
    /// With `as_trained_on`: what transformers' bitsandbytes quantizer does to each weight.
    pub(super) qlora_scope: Option<super::bnb_scope::QloraScope>,
}

/// What transformers' bitsandbytes quantizer does to the base's weights, with
/// `as_trained_on`: its default skips (`get_keys_to_not_convert`) read from the base here, where
/// the embedding and lm_head names are.
pub(super) fn qlora_scope(
    base: &Checkpoint,
    options: &MergeOptions,
) -> crate::error::InputResult<Option<super::bnb_scope::QloraScope>> {
    let Some(t) = &options.as_trained_on else {
        return Ok(None);
    };
    let tied = ties_embeddings(base, base.names().any(is_lm_head_name));
    let mut defaults: Vec<(String, &'static str)> = Vec::new();
    for n in base.names() {
        let Some(module) = n.strip_suffix(".weight") else {
            continue;
        };
        let two_d = base.info(n).is_some_and(|i| i.shape.len() == 2);
        if is_lm_head_name(n) {
            defaults.push((module.into(), "the output embedding"));
        } else if tied && is_embedding_name(n) {
            defaults.push((module.into(), "tied to lm_head (tie_word_embeddings)"));
        } else if two_d && !module.contains('.') && !is_embedding_name(n) {
            // A top-level weight beside the base model: a task head (`score`, `classifier`),
            // registered last, so `named_parameters()`' last.
            defaults.push((module.into(), "a top-level head, the model's last module"));
        }
    }
    defaults.sort();
    super::bnb_scope::QloraScope::new(base, t.skip.as_deref(), t.dtype, defaults).map(Some)
}

/// Names of input-embedding tensors that `tie_word_embeddings` ties to `lm_head`.
pub(super) fn is_embedding_name(name: &str) -> bool {
    [
        "embed_tokens.weight",
        "wte.weight",
        "word_embeddings.weight",
        "embed_in.weight",
        "shared.weight",
    ]
    .iter()
    .any(|s| name == *s || name.ends_with(&format!(".{s}")))
}

pub(crate) fn is_lm_head_name(name: &str) -> bool {
    name == "lm_head.weight" || name.ends_with(".lm_head.weight") || name == "embed_out.weight"
}

/// Reads `tie_word_embeddings` and `architectures` from the base's `config.json`, if any.
pub(super) fn tie_config(folder: &Path) -> Option<(Option<bool>, Vec<String>)> {
    let text = crate::io::read_json_file(&folder.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let tie = v
        .get("tie_word_embeddings")
        .and_then(|t| t.as_bool())
        .or_else(|| {
            v.get("text_config")
                .and_then(|c| c.get("tie_word_embeddings"))
                .and_then(|t| t.as_bool())
        });
    let archs = v
        .get("architectures")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some((tie, archs))
}

/// `--tied-embeddings shared` on a tied base that stores no lm_head tensor: an `lm_head` LoRA
/// (and the `lm_head.base_layer.weight` PEFT saves beside it) lands on the stored input
/// embedding. On the tied model `lm_head.weight` *is* that Parameter, and PEFT 0.21.2's
/// `merge_and_unload` adds the LoRA in place (`tuners/lora/layer.py` `Linear.merge`:
/// `base_layer.weight.data += delta_weight`), so the embedding changes, the tie survives and
/// `save_pretrained` stores the one tensor (fixtures/gen/gaps7_fixtures.py `tied_lm_head`).
/// lm_head's `[vocab, hidden]` ΔW has the embedding's layout: no transpose. A module whose
/// shape does not fit the embedding stays unmatched.
pub(super) fn land_lm_head_on_tied_embedding(a: &Adapter, base: &Checkpoint, res: &mut Resolution) {
    let mut embeddings = base.names().filter(|n| is_embedding_name(n));
    let (Some(emb), None) = (embeddings.next(), embeddings.next()) else {
        return;
    };
    let Some(info) = base.info(emb) else {
        return;
    };
    let (emb, shape) = (emb.to_owned(), info.shape.clone());
    res.unmatched.retain(|u| {
        let Unmatched::NotFound { module, expected } = u else {
            return true;
        };
        if !is_lm_head_name(expected) {
            return true;
        }
        let lora_fits = |name: &str| {
            a.modules.iter().position(|m| {
                m.name == name
                    && m.kind == crate::adapter::ModuleKind::Linear
                    && m.bias.is_none()
                    && crate::adapter::mapping::expected_shape(m) == shape
            })
        };
        if let Some(mi) = lora_fits(module) {
            res.modules.push(crate::adapter::mapping::Placement {
                module: mi,
                weight: emb.clone(),
                bias: None,
                rows: None,
                part: None,
            });
            return false;
        }
        // Only the `lm_head.base_layer.weight` saved beside that LoRA: a `modules_to_save`
        // lm_head is a copy PEFT unties from the embedding (its merge_and_unload keeps the
        // embedding and saves `lm_head.weight` apart, `tie_word_embeddings: false`), which
        // `shared` cannot write; it stays unmatched and refused.
        let beside_lora = module
            .strip_suffix(".weight")
            .is_some_and(|m| lora_fits(m).is_some());
        if let Some(fi) = a
            .full_tensors
            .iter()
            .position(|f| beside_lora && &f.name == module && f.rows.is_none() && f.fits(&shape))
        {
            res.full.push((fi, emb.clone()));
            return false;
        }
        // `modules_to_save=["embed_tokens", "lm_head"]` with `ensure_weight_tying`: PEFT wraps
        // both in one wrapper, saves the copy under both names and keeps the tie, so the lm_head
        // copy is the embedding's (dropped here; tied.rs lets `shared` write the embedding's).
        // Copies that differ stay unmatched and refused.
        !(ensures_weight_tying(a) && same_copy(a, module, &emb))
    });
}

/// Whether the whole tensors `x` and `y` of `a` both exist and hold the same values bit for bit.
fn same_copy(a: &Adapter, x: &str, y: &str) -> bool {
    let whole = |n: &str| {
        a.full_tensors
            .iter()
            .find(|f| f.name == n && f.rows.is_none())
    };
    let (Some(fx), Some(fy)) = (whole(x), whole(y)) else {
        return false;
    };
    match (a.values(&fx.data), a.values(&fy.data)) {
        (Ok(vx), Ok(vy)) => {
            fx.shape == fy.shape
                && vx.len() == vy.len()
                && vx
                    .iter()
                    .zip(vy.iter())
                    .all(|(p, q)| p.to_bits() == q.to_bits())
        }
        _ => false,
    }
}

/// `r` with an `lm_head` LoRA (and the base-layer copy PEFT saves beside it) placed on the input
/// embedding of a tied base that stores no lm_head tensor, as `merge --tied-embeddings shared`
/// places it ([`land_lm_head_on_tied_embedding`]); `None` where the base is not tied that way
/// or nothing moves. For `check`'s report: PEFT wraps lm_head on a tied model too, its base
/// weight being the embedding Parameter (peft 0.21.2 `tuners/tuners_utils.py`
/// `_check_tied_modules` only warns).
pub(crate) fn tied_lm_head_resolution(
    a: &Adapter,
    base: &Checkpoint,
    r: &Resolution,
) -> Option<Resolution> {
    let has_lm_head = base.names().any(is_lm_head_name);
    if has_lm_head || !ties_embeddings(base, has_lm_head) {
        return None;
    }
    let mut landed = r.clone();
    land_lm_head_on_tied_embedding(a, base, &mut landed);
    (landed.unmatched.len() != r.unmatched.len()).then_some(landed)
}

/// Whether the base's output embedding is the input embedding (so changing one changes both).
///
/// It follows the architecture, as transformers does: a tie exists only where the model has an
/// output embedding (`*ForCausalLM`, `*LMHeadModel`, `*ForMaskedLM`,
/// `*ForConditionalGeneration`, …) and `tie_word_embeddings` is true (transformers' default when
/// the config does not say). An encoder without an LM head (BertModel, sentence-transformers)
/// ties nothing, whatever `tie_word_embeddings` says. Without a config, a checkpoint with no
/// `lm_head` tensor is taken as tied only if it looks like a decoder LM (layer names of
/// Llama/GPT-2 families).
pub(super) fn ties_embeddings(base: &Checkpoint, has_lm_head: bool) -> bool {
    let has_embedding = base.names().any(is_embedding_name);
    if !has_embedding {
        return false;
    }
    match tie_config(base.folder()) {
        Some((tie, archs)) if !archs.is_empty() => {
            let has_head = archs.iter().any(|a| {
                [
                    "ForCausalLM",
                    "LMHeadModel",
                    "ForMaskedLM",
                    "ForConditionalGeneration",
                    "WithLMHead",
                ]
                .iter()
                .any(|s| a.ends_with(s))
            });
            has_head && tie.unwrap_or(!has_lm_head)
        }
        Some((Some(tie), _)) => tie,
        _ => {
            !has_lm_head
                && base.names().any(|n| {
                    n.contains(".self_attn.")
                        || n.starts_with("transformer.h.")
                        || n.contains(".attn.c_attn")
                })
        }
    }
}

/// PEFT's `ensure_weight_tying` (peft 0.21.2): the modules adapter `a` holds only through it
/// ([`crate::adapter::Adapter::tie_only_modules`], lm_head) are merged only into a base
/// that ties lm_head to the input embedding (`tied`), where PEFT wraps lm_head with the
/// embedding LoRA's own Parameters (`lora_A = lora_embedding_B.T`, `lora_B =
/// lora_embedding_A.T`), so merge_and_unload adds the same ΔE twice to the shared tensor:
/// E + 2·ΔE (fixtures/gen/gaps9_fixtures.py `ewt_llama`). The file's lm_head factors must be
/// those transposes (PEFT saves them so); others would make PEFT's result depend on the order
/// it loads the two, and are refused. On an untied base PEFT wraps no lm_head and drops its
/// tensors silently: refused too.
pub(super) fn check_weight_tying(a: &Adapter, tied: bool) -> crate::error::InputResult<()> {
    use crate::adapter::ModuleKind;
    use crate::error::InputError;
    for mi in a.tie_only_modules() {
        let m = &a.modules[mi];
        if !tied {
            return Err(InputError::invalid(
                &a.path,
                format!(
                    "module `{}` is in this adapter only through `ensure_weight_tying` (adapter_config.json), but the base does not tie lm_head to the input embedding (tie_word_embeddings), so PEFT loads the adapter without it, silently; merge into the tied base it was trained on, or remove its tensors",
                    m.name
                ),
            ));
        }
        let emb = a.modules.iter().find(|e| e.kind == ModuleKind::Embedding);
        let same = match (emb, m.factors.lora()) {
            (Some(e), Some((la, lb))) if e.rank == m.rank && m.kind == ModuleKind::Linear => {
                let (ea, eb) = e.factors.lora().expect("embedding LoRA factors");
                let (r, k, d) = (m.rank, m.in_features, m.out_features);
                let (la, lb, ea, eb) = (a.values(la)?, a.values(lb)?, a.values(ea)?, a.values(eb)?);
                // lm_head A [r, k] = (embedding B [k, r])ᵀ; lm_head B [d, r] = (embedding A [r, d])ᵀ.
                let t_eq = |x: &[f32], y: &[f32], rows: usize, cols: usize| {
                    x.len() == rows * cols
                        && y.len() == rows * cols
                        && (0..rows).all(|i| (0..cols).all(|j| x[i * cols + j] == y[j * rows + i]))
                };
                e.scale == m.scale && t_eq(&la, &eb, r, k) && t_eq(&lb, &ea, d, r)
            }
            _ => false,
        };
        if !same {
            return Err(InputError::invalid(
                &a.path,
                format!(
                    "module `{}` is tied to the embedding LoRA by `ensure_weight_tying` (adapter_config.json), but its lora_A/lora_B are not that LoRA's lora_embedding_B/lora_embedding_A transposed (or the file has no embedding LoRA); PEFT shares one Parameter between them, so its merge would depend on which it loads last",
                    m.name
                ),
            ));
        }
    }
    Ok(())
}

/// `ensure_weight_tying: true` in the adapter's config (PEFT 0.21).
pub(super) fn ensures_weight_tying(a: &Adapter) -> bool {
    a.config
        .as_ref()
        .and_then(|c| c.get("ensure_weight_tying"))
        .and_then(serde_json::Value::as_bool)
        == Some(true)
}
