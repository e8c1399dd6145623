//! `merge` of a `use_qalora` adapter onto a GPTQ base: refused (PEFT trains QALoRA there and has
//! no merge for it).
//!
//! Must not write; runs before anything is.

use super::model::{Action, MergePlan, UnmatchedReport, WeightedAdapter};
use crate::adapter::mapping::Unmatched;
use crate::error::InputError;
use crate::io::quant::QuantMap;
use anyhow::Result;

/// Whether base tensor `name` is a GPTQ weight (AWQ excluded: PEFT builds no QALoRA there).
fn is_gptq(quant: &QuantMap, name: &str) -> bool {
    use crate::io::quant::{gptq::Layout, Scheme};
    quant
        .get(name)
        .is_some_and(|q| matches!(&q.scheme, Scheme::Gptq(p) if p.layout != Layout::Awq))
}

fn refusal(module: &str, weight: &str, group: usize) -> String {
    format!(
        "module `{module}`: `use_qalora` on the GPTQ weight `{weight}`: PEFT trains QALoRA there (lora/gptq.py), whose lora_A reads inputs pooled by qalora_group_size {group}, and has no merge for it (QALoraLinearVariant.merge_unsafe raises); lorakit refuses it too"
    )
}

/// A `use_qalora` module the name matcher left unmatched on a GPTQ weight by its shape (PEFT's
/// pooled lora_A [r, in/group] is narrower than the layer): the QALoRA refusal of
/// [`MergePlan::refuse_qalora_on_gptq`], not a shape mismatch (rev16a F12).
pub(super) fn refuse_pooled(
    adapters: &[WeightedAdapter],
    unmatched: &[UnmatchedReport],
    quant: &QuantMap,
) -> Result<()> {
    for u in unmatched {
        let Unmatched::ShapeMismatch { module, tensor, .. } = &u.detail else {
            continue;
        };
        let Some(a) = adapters
            .iter()
            .map(|wa| &wa.adapter)
            .find(|a| a.path.display().to_string() == u.adapter)
        else {
            continue;
        };
        let Some(g) = a
            .config
            .as_ref()
            .and_then(crate::adapter::formats::peft::qalora_group_size)
        else {
            continue;
        };
        if is_gptq(quant, tensor) {
            return Err(InputError::invalid(&a.path, refusal(module, tensor, g)).into());
        }
    }
    Ok(())
}

impl MergePlan {
    /// `use_qalora` with a module on a GPTQ weight: PEFT trains QALoRA there, whose update acts
    /// on inputs pooled by `qalora_group_size` and which PEFT cannot merge
    /// ([`crate::adapter::formats::peft::qalora_group_size`]); merging its factors as a plain
    /// LoRA would not be what was trained, so the merge is refused before anything is written.
    pub(super) fn refuse_qalora_on_gptq(&self) -> Result<()> {
        let qalora: Vec<Option<usize>> = self
            .adapters
            .iter()
            .map(|wa| {
                wa.adapter
                    .config
                    .as_ref()
                    .and_then(crate::adapter::formats::peft::qalora_group_size)
            })
            .collect();
        if qalora.iter().all(Option::is_none) {
            return Ok(());
        }
        let quant = crate::io::quant::QuantMap::scan(&self.base)?;
        let mut names: Vec<&String> = self.actions.keys().collect();
        names.sort();
        for name in names {
            let Some(Action::Merge(terms)) = self.actions.get(name) else {
                continue;
            };
            if !is_gptq(&quant, name) {
                continue;
            }
            if let Some(&(ai, mi)) = terms.iter().find(|(ai, _)| qalora[*ai].is_some()) {
                let a = &self.adapters[ai].adapter;
                return Err(InputError::invalid(
                    &a.path,
                    refusal(&a.modules[mi].name, name, qalora[ai].unwrap_or(16)),
                )
                .into());
            }
        }
        Ok(())
    }
}
