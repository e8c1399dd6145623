//! A validated check ([`Plan`]): the adapter and base opened, the adapter's [`Kind`] decided and
//! the targets chosen from [`Options`]; nothing evaluated yet (the engine in `check/mod.rs` runs
//! it).
//!
//! Must not evaluate a rule, write or print.

use super::base::{base_facts, kind_of, read_added_tokens};
use super::report::BaseFacts;
use super::target::{Kind, Target};
use crate::adapter::formats::peft::params;
use crate::adapter::Adapter;
use crate::error::InputResult;
use crate::io::Checkpoint;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Options of a check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Loaders to check; empty = [`Kind::default_targets`].
    pub targets: Vec<Target>,
    /// Base model (file or folder) to resolve every module against.
    pub base: Option<PathBuf>,
}

/// A validated check: the adapter and base are open, targets chosen; nothing is evaluated yet.
pub struct Plan {
    pub adapter: Adapter,
    pub base: Option<Checkpoint>,
    pub base_facts: Option<BaseFacts>,
    pub kind: Kind,
    pub targets: Vec<Target>,
    /// `added_tokens.json` beside the adapter: (token, id).
    pub added_tokens: Vec<(String, u64)>,
    /// The adapter as `merge` places it on the base, where that differs: PEFT
    /// `target_parameters` experts fitted to the base's layout ([`fitted_to_base`]). Module
    /// placement reads this one; the rules and `--fix` read [`Plan::adapter`].
    pub placed: Option<Adapter>,
    /// Why lorakit could not read the adapter's weights although PEFT loads it
    /// ([`Adapter::open_unread`]): `adapter` then has no module, and only the rules on its
    /// config and tensor names can fire.
    pub unread: Option<String>,
}

impl Plan {
    /// Opens the adapter and base and chooses the targets.
    pub fn new(adapter_path: &Path, opts: &Options) -> InputResult<Plan> {
        let (mut adapter, unread) = match Adapter::open_for_check(adapter_path) {
            Ok(a) => (a, None),
            Err(e) => match Adapter::open_unread(adapter_path)? {
                Some((a, why)) => (a, Some(why)),
                None => return Err(e),
            },
        };
        // Every loader would load and apply a NaN or ±∞ as it is, and the model's outputs would
        // be NaN: bad input, refused as the operations that read the values refuse it.
        adapter.check_finite()?;
        if unread.is_some() {
            adapter.check_source_finite()?;
        }
        // A1111 would load a bundled embedding's NaN as well (`bundle_emb.…`).
        let bundled: Vec<&str> = adapter
            .bundled_embeddings
            .iter()
            .map(String::as_str)
            .collect();
        adapter.check_stored_finite(&bundled)?;
        let base = opts.base.as_ref().map(Checkpoint::open).transpose()?;
        // The layout PEFT gives each module on this base (`fan_in_fan_out` reset on nn.Linear,
        // forced on Conv1D), as `merge` reads it.
        if let Some(b) = &base {
            params::fan_in_fan_out_as_peft(&mut adapter, b);
        }
        let base_facts = match &base {
            Some(b) => Some(base_facts(b)?),
            None => None,
        };
        let kind = kind_of(&adapter, base_facts.as_ref());
        let mut targets = if opts.targets.is_empty() {
            kind.default_targets(adapter.format)
        } else {
            opts.targets.clone()
        };
        let mut seen = BTreeSet::new();
        targets.retain(|t| seen.insert(*t));
        let added_tokens = read_added_tokens(&adapter)?;
        let placed = base.as_ref().and_then(|b| fitted_to_base(&adapter, b));
        Ok(Plan {
            adapter,
            base,
            base_facts,
            kind,
            targets,
            added_tokens,
            placed,
            unread,
        })
    }
}

/// `adapter` with its PEFT `target_parameters` experts fitted to `base` as a merge fits them
/// (`params::fit_to_base`), and its names transformers loads from other base tensors on their
/// on-disk names (`mapping::to_disk_names`): on a base saved one tensor per expert (Qwen2/3-MoE's
/// `experts.{e}.gate_proj`, Mixtral's `block_sparse_moe.experts.{e}.w1`, and Mixtral's router
/// `block_sparse_moe.gate`) the modules of those tensors. transformers fuses and renames them on
/// load, so PEFT finds every such module; without this they read as names the base lacks
/// (sweep7: PEFT seed 31, Mixtral `all-linear` and Qwen2-MoE `target_parameters`). None where
/// nothing would change, or where the fit itself fails (the unfitted placement reports why).
fn fitted_to_base(adapter: &Adapter, base: &Checkpoint) -> Option<Adapter> {
    use crate::adapter::formats::peft::params;
    let expert = |m: &crate::adapter::LoraModule| params::parse_expert(&m.name).is_some();
    // A name the base lacks: Mixtral's `.mlp.` router, or a name transformers gives a base
    // tensor at load (`mapping::to_disk_names`, conversion_mapping.py).
    let renamed = |m: &crate::adapter::LoraModule| !base.contains(&format!("{}.weight", m.name));
    let full_renamed = adapter.full_tensors.iter().any(|f| !base.contains(&f.name));
    if !full_renamed && !adapter.modules.iter().any(|m| expert(m) || renamed(m)) {
        return None;
    }
    let mut view = Adapter {
        format: adapter.format,
        path: adapter.path.clone(),
        source: None,
        modules: adapter.modules.clone(),
        full_tensors: adapter.full_tensors.clone(),
        base_model: adapter.base_model.clone(),
        use_rslora: adapter.use_rslora,
        use_dora: adapter.use_dora,
        modules_to_save: adapter.modules_to_save.clone(),
        config: adapter.config.clone(),
        metadata: Vec::new(),
        namings: adapter.namings.clone(),
        untargeted: adapter.untargeted.clone(),
        bundled_embeddings: adapter.bundled_embeddings.clone(),
    };
    crate::adapter::mapping::to_disk_names(&mut view, base).ok()?;
    params::fit_to_base(&mut view, base).ok()?;
    let names = |a: &Adapter| {
        let modules = a.modules.iter().map(|m| m.name.clone());
        modules
            .chain(a.full_tensors.iter().map(|f| f.name.clone()))
            .collect::<Vec<_>>()
    };
    (names(&view) != names(adapter)).then_some(view)
}
