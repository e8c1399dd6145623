//! `check --base` on a GPTQ base with a `use_qalora` adapter: PEFT builds QALoRA on GPTQ layers
//! (`tuners/lora/gptq.py`, `QALoraLinearVariant.init`), so placement follows its pooled `lora_A`
//! width, not a plain LoRA's.
//!
//! Must not decide verdicts (the rules do); only moves modules between placed and unmatched.

use crate::adapter::mapping::{self, Unmatched};
use crate::adapter::ModuleKind;

/// `mapping::resolve` of `a` on `base`, with [`on_gptq`] applied.
pub(super) fn resolve(
    a: &crate::adapter::Adapter,
    base: &crate::io::Checkpoint,
) -> mapping::Resolution {
    let mut r = mapping::resolve(a, base);
    on_gptq(a, base, &mut r);
    r
}

/// `use_qalora` on a GPTQ base ([`crate::adapter::formats::peft::qalora_group_size`]): PEFT
/// builds QALoRA there, `lora_A` [r, in/group], so a plain module ([r, in]) is a size mismatch
/// on load and a pooled one ([r, in/group], which the name matcher sees as one) fits.
fn on_gptq(a: &crate::adapter::Adapter, base: &crate::io::Checkpoint, r: &mut mapping::Resolution) {
    use crate::io::quant::{gptq::Layout, Scheme};
    let Some(g) = a
        .config
        .as_ref()
        .and_then(crate::adapter::formats::peft::qalora_group_size)
    else {
        return;
    };
    let Ok(quant) = crate::io::quant::QuantMap::scan(base) else {
        return;
    };
    let gptq = |t: &str| {
        quant
            .get(t)
            .is_some_and(|q| matches!(&q.scheme, Scheme::Gptq(p) if p.layout != Layout::Awq))
    };
    let pooled_tensor =
        |t: &str| format!("{t} (GPTQ: PEFT's QALoRA lora_A reads in/{g} pooled inputs)");
    let plain = |m: &crate::adapter::LoraModule| {
        m.kind == ModuleKind::Linear && m.factors.lora().is_some() && !m.base_transposed
    };
    let mut kept = Vec::with_capacity(r.modules.len());
    for p in std::mem::take(&mut r.modules) {
        let m = &a.modules[p.module];
        if plain(m) && p.whole_in_order() && gptq(&p.weight) && g > 0 {
            r.unmatched.push(Unmatched::ShapeMismatch {
                module: m.name.clone(),
                tensor: pooled_tensor(&p.weight),
                expected: vec![m.out_features, m.in_features],
                found: vec![m.out_features, m.in_features / g],
            });
        } else {
            kept.push(p);
        }
    }
    r.modules = kept;
    r.unmatched.retain(|u| {
        let Some((mi, tensor, expected, found)) = u.shape_mismatch_in(&a.modules) else {
            return true;
        };
        let m = &a.modules[mi];
        let fits = g > 0
            && plain(m)
            && m.bias.is_none()
            && gptq(tensor)
            && found.len() == 2
            && expected.len() == 2
            && found[0] == expected[0]
            && found[1] % g == 0
            && found[1] / g == expected[1];
        if fits {
            r.modules.push(mapping::Placement {
                module: mi,
                weight: tensor.clone(),
                bias: None,
                rows: None,
                part: None,
            });
        }
        !fits
    });
}

/// The modules of `r` (a [`resolve`] result) that sit pooled on GPTQ weights: QALoRA's
/// `lora_A` [r, in/group], which only PEFT's QALoRA variant reads. Loaders that read a plain
/// LoRA (SGLang, LoRAX) copy it into [r, in] buffers and fail.
pub(super) fn pooled_on_gptq(
    a: &crate::adapter::Adapter,
    base: &crate::io::Checkpoint,
    r: &mapping::Resolution,
) -> Vec<String> {
    use crate::io::quant::{gptq::Layout, Scheme};
    let Some(g) = a
        .config
        .as_ref()
        .and_then(crate::adapter::formats::peft::qalora_group_size)
        .filter(|&g| g > 0)
    else {
        return Vec::new();
    };
    let Ok(quant) = crate::io::quant::QuantMap::scan(base) else {
        return Vec::new();
    };
    r.modules
        .iter()
        .filter(|p| {
            quant
                .get(&p.weight)
                .is_some_and(|q| matches!(&q.scheme, Scheme::Gptq(p) if p.layout != Layout::Awq))
        })
        .map(|p| {
            let m = &a.modules[p.module];
            format!(
                "{} (lora_A [{}, {}]: inputs pooled by qalora_group_size {g})",
                m.name, m.rank, m.in_features
            )
        })
        .collect()
}
