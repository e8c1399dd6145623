//! PEFT's answers to the operations' layout questions ([`crate::adapter::formats::Layout`]): a
//! folder of `adapter_model.safetensors` and `adapter_config.json`
//! (`PeftModel.save_pretrained`), module names that are dotted module paths, alphas in the
//! config, and the modules a PEFT folder can hold (LoRA, and LoHa/LoKr as PEFT's own
//! LOHA/LOKR, [`super::lycoris_plan`]).
//!
//! Must not: read a config (that is [`super::read`]) or know another format's names.

use super::config::{CONFIG_NAME, WEIGHTS_NAME};
use super::lycoris::plan as lycoris_plan;
use super::write::write_with;
use crate::adapter::algo::Factors;
use crate::adapter::formats::layout::{Facts, Holds, Layout, Shape, WriteArgs};
use crate::adapter::model::{Adapter, DoraRule};
use crate::error::{InputError, InputResult};
use crate::io::Output;
use std::path::{Path, PathBuf};

/// The PEFT format's [`Layout`].
pub struct Peft;

impl Layout for Peft {
    fn facts(&self) -> &'static Facts {
        &Facts {
            name: "peft",
            label: "PEFT",
            shape: Shape::Folder,
            names_are_paths: true,
            alpha_tensors: false,
            holds: Holds {
                full_tensors: true,
                embeddings: true,
                fan_in_fan_out: true,
            },
        }
    }

    fn files(&self, out: &Path) -> Vec<PathBuf> {
        vec![out.join(WEIGHTS_NAME), out.join(CONFIG_NAME)]
    }

    /// The config in the folder, or beside a lone tensor file.
    fn read_paths(&self, path: &Path) -> Vec<PathBuf> {
        if path.is_dir() {
            vec![path.join(CONFIG_NAME)]
        } else {
            path.parent()
                .map(|p| p.join(CONFIG_NAME))
                .into_iter()
                .collect()
        }
    }

    fn written_name(&self, name: &str, _prefix: &str) -> String {
        name.to_owned()
    }

    /// A PEFT folder holds LoRA, or LoHa/LoKr as PEFT's own LOHA/LOKR ([`lycoris_plan`]);
    /// anything else is refused by module.
    fn check_modules(&self, adapter: &Adapter) -> InputResult<()> {
        for m in &adapter.modules {
            let why = if m.factors.needs_base() {
                format!(
                    "{} (merge it into the base instead)",
                    m.factors.needs_base_why()
                )
            } else if m.dora_rule == (DoraRule::Lycoris { per_input: true })
                && m.dora_magnitude.is_some()
            {
                "its dora_scale normalises per input channel, and PEFT's DoRA only per output feature".to_owned()
            } else if matches!(
                m.factors,
                Factors::Lora { .. } | Factors::Loha { .. } | Factors::Lokr { .. }
            ) {
                continue;
            } else {
                "PEFT has no tuner for it; lower it to plain LoRA at a chosen rank first (lorakit resize), with the error reported per module".to_owned()
            };
            return Err(InputError::invalid(
                &adapter.path,
                format!(
                    "module `{}` is {}, which a PEFT folder cannot hold: {why}",
                    m.name,
                    m.factors.algo()
                ),
            ));
        }
        Ok(())
    }

    /// PEFT states every scale (`alpha / r`, `alpha / √r`, per-module patterns): nothing folds.
    fn fold_scales(&self, adapter: &mut Adapter) -> InputResult<Vec<Option<f64>>> {
        Ok(vec![None; adapter.modules.len()])
    }

    /// Each module's own rank and alpha, or for LoHa/LoKr the `r` and `alpha` PEFT is given.
    fn written_ranks_alphas(&self, adapter: &Adapter) -> InputResult<Vec<(usize, f64)>> {
        Ok(match lycoris_plan(adapter)? {
            Some(l) => l.ranks.into_iter().zip(l.alphas).collect(),
            None => adapter.modules.iter().map(|m| (m.rank, m.alpha)).collect(),
        })
    }

    /// Nothing: PEFT's writer sets its own `format` entry and the config holds the rest.
    fn stamp_metadata(&self, _: &Adapter, _: &str, _: &mut Vec<(String, String)>) {}

    fn write(&self, adapter: &Adapter, output: &mut Output, args: WriteArgs) -> InputResult<()> {
        write_with(adapter, args.out, output, args.dtype, args.metadata)
    }
}
