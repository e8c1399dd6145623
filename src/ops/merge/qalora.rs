//! `merge` of a `use_qalora` adapter onto a GPTQ base: refused (PEFT trains QALoRA there and has
//! no merge for it).
//!
//! Must not write; runs before anything is.

use super::model::{Action, MergePlan};
use crate::error::InputError;
use anyhow::Result;

impl MergePlan {
    /// `use_qalora` with a module on a GPTQ weight: PEFT trains QALoRA there, whose update acts
    /// on inputs pooled by `qalora_group_size` and which PEFT cannot merge
    /// ([`crate::adapter::formats::peft::qalora_group_size`]); merging its factors as a plain
    /// LoRA would not be what was trained, so the merge is refused before anything is written.
    pub(super) fn refuse_qalora_on_gptq(&self) -> Result<()> {
        use crate::io::quant::{gptq::Layout, Scheme};
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
            let gptq = quant
                .get(name)
                .is_some_and(|q| matches!(&q.scheme, Scheme::Gptq(p) if p.layout != Layout::Awq));
            if !gptq {
                continue;
            }
            if let Some(&(ai, mi)) = terms.iter().find(|(ai, _)| qalora[*ai].is_some()) {
                let a = &self.adapters[ai].adapter;
                return Err(InputError::invalid(
                    &a.path,
                    format!(
                        "module `{}`: `use_qalora` on the GPTQ weight `{name}`: PEFT trains QALoRA there (lora/gptq.py), whose lora_A reads inputs pooled by qalora_group_size {}, and has no merge for it (QALoraLinearVariant.merge_unsafe raises); lorakit refuses it too",
                        a.modules[mi].name,
                        qalora[ai].unwrap_or(16)
                    ),
                )
                .into());
            }
        }
        Ok(())
    }
}
