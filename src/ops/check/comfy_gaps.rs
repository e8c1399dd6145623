//! The kohya/LyCORIS modules ComfyUI loads other than the trainer's forward applies them
//! ([`ComfyGap`]), each found by running ComfyUI's own `comfy/lora.py` `load_lora` and
//! `comfy/weight_adapter/*.py` on files lycoris-lora wrote (`fixtures/gen/check_comfy_sweep.py`,
//! `fixtures/gen/sweep15_fixtures.py`). Must not: judge PEFT folders (ComfyUI maps their
//! `base_model.model.` keys only for SD3 and HunyuanDiT: `comfy.peft_prefix`), or compute a weight.

use super::when::ComfyGap;
use crate::adapter::algo::{Factors, KronHalf};
use crate::adapter::{Adapter, DoraRule, Format};

/// The modules of `a` that `gap` describes, each as `name (what)`.
pub(super) fn items(a: &Adapter, gap: ComfyGap) -> Vec<String> {
    if a.format != Format::Kohya {
        return vec![];
    }
    a.modules
        .iter()
        .filter_map(|m| {
            let what = match gap {
                // `comfy/weight_adapter/__init__.py` @dc05edb: LoRA, LoHa, LoKr, GLoRA, OFT and
                // BOFT; `oft.py`/`boft.py` read `oft_blocks` only.
                ComfyGap::Unread => match &m.factors {
                    Factors::Ia3 { .. } => Some("IA3 `weight`/`on_input`"),
                    Factors::PeftOft { .. } => Some("OFT v2 `oft_R`"),
                    _ => None,
                },
                // `lokr.py` @e8f3bc5: `torch.kron(w1, w2)` of the non-contiguous einsum output.
                ComfyGap::PatchRaises => matches!(
                    m.factors,
                    Factors::Lokr {
                        w2: KronHalf::Tucker { .. },
                        ..
                    }
                )
                .then_some("LoKr with a Tucker core `lokr_t2`"),
                // `base.py` @9c0cf36 `weight_decompose`: the output-axis branch norms `weight`.
                ComfyGap::DoraOutputNorm => (m.dora_magnitude.is_some()
                    && m.dora_rule == DoraRule::Lycoris { per_input: false })
                .then_some("`dora_scale` per output row"),
                // `oft.py` @eadb911 `calculate_weight`: `rescale` is cast and never used.
                ComfyGap::OftRescaleDropped => matches!(
                    m.factors,
                    Factors::Oft {
                        rescale: Some(_),
                        ..
                    }
                )
                .then_some("diag-OFT `rescale`"),
            }?;
            Some(format!("{} ({what})", m.name))
        })
        .collect()
}
