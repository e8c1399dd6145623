//! Which last name components a loader adapts ([`super::rules::Supported`]): the fixed
//! Llama-family lists, or every 2-D linear weight of the base. Owns: when a fixed list applies.
//! Must not: judge a module (that is `facts.rs`), write or print anything.

use super::base::last_component;
use super::plan::Plan;
use super::rules::Supported;
use super::target::Kind;
use std::collections::BTreeSet;

/// The last name components a loader adapts, or `None` when it cannot be known.
pub(super) fn supported(plan: &Plan, s: Supported) -> Option<BTreeSet<String>> {
    let llama_family = llama_family(plan);
    match s {
        Supported::Fixed(_) if !llama_family => None,
        Supported::Fixed(list) => Some(list.iter().map(|s| s.to_string()).collect()),
        Supported::BaseLinear(fallback) => match &plan.base {
            Some(b) => {
                let mut names = super::base::linear_names(b);
                // A base that ties its embeddings stores no `lm_head.weight`, but vLLM's
                // model still has an `lm_head` module (Llama: a ParallelLMHead tied to
                // embed_tokens; Qwen3: `self.lm_head = self.model.embed_tokens`) and the
                // class declares it in `embedding_modules`, so an lm_head LoRA is expected
                // and applied to the logits (model_manager.py `_create_lora_modules` wraps
                // `lm_head` even when it is the embed_tokens module, then the
                // LogitsProcessorWithLoRA adds B·A·h). Read in vllm
                // model_executor/models/qwen3.py and lora/model_manager.py (2026).
                if llama_family
                    && plan
                        .base_facts
                        .as_ref()
                        .is_some_and(|f| f.tie_word_embeddings)
                {
                    names.insert("lm_head".to_string());
                }
                Some(names)
            }
            None if llama_family => Some(fallback.iter().map(|s| s.to_string()).collect()),
            None => None,
        },
    }
}

/// The fixed lists are the Llama-family model classes' (Llama, Mistral, Qwen2): for a base of
/// another family, or an adapter that is not a causal LM, they say nothing. Without a base's
/// model_type the family is known only from the names: a causal-LM adapter none of whose modules
/// ends in another family's linear layer name ([`OTHER_FAMILY_LINEAR`]). Such a name (Phi-3's
/// fused `qkv_proj`/`gate_up_proj`, OPT's `fc1`/`fc2`/`out_proj`) is another family's, whose
/// vLLM class adapts its own `LinearBase` layers (`get_supported_lora_modules`); the Llama list
/// cannot judge it.
fn llama_family(plan: &Plan) -> bool {
    // A name that is no layer of any family (`w_proj` beside Llama names) is still judged, and
    // fails, by the Llama list.
    match plan
        .base_facts
        .as_ref()
        .and_then(|b| b.model_type.as_deref())
    {
        Some(t) => matches!(t, "llama" | "mistral" | "qwen2"),
        None => {
            plan.kind == Kind::Llm
                && !plan
                    .adapter
                    .modules
                    .iter()
                    .any(|m| OTHER_FAMILY_LINEAR.contains(&last_component(&m.name)))
        }
    }
}

/// Linear layer names of causal-LM families other than Llama's (transformers 5.24 modeling
/// files): Phi-3's fused `qkv_proj`/`gate_up_proj`, OPT/BART-style `out_proj`/`fc1`/`fc2`,
/// GPT-NeoX/Falcon/Bloom `query_key_value`/`dense*`, Mixtral's experts `w1`/`w2`/`w3`, MPT's
/// `Wqkv`, GPT-2's `c_attn`/`c_proj`/`c_fc`.
const OTHER_FAMILY_LINEAR: &[&str] = &[
    "qkv_proj",
    "gate_up_proj",
    "out_proj",
    "fc1",
    "fc2",
    "query_key_value",
    "dense",
    "dense_h_to_4h",
    "dense_4h_to_h",
    "w1",
    "w2",
    "w3",
    "Wqkv",
    "c_attn",
    "c_proj",
    "c_fc",
];
