//! `check --base` on a GPTQ base with a `use_qalora` adapter: PEFT builds QALoRA on GPTQ layers
//! (`tuners/lora/gptq.py`, `QALoraLinearVariant.init`), so placement follows its pooled `lora_A`
//! width, not a plain LoRA's.
//!
//! And the LoRA variants PEFT's quantized-layer classes refuse on construction
//! ([`refused_variants`]).
//!
//! Must not decide verdicts (the rules do); only moves modules between placed and unmatched,
//! and lists the modules a rule is about.

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

/// The placed modules whose base weight is quantized in a format whose PEFT 0.21.2 LoRA layer
/// refuses the adapter's variant when it is built: `GPTQLoraLinear` (lora/gptq.py:39-42) and
/// `AwqLoraLinear` (lora/awq.py:36-39) raise for `use_dora` and for a `velora_config`; bitsandbytes'
/// `Linear8bitLt` and `Linear4bit` raise for a `velora_config` (lora/bnb.py:58-59 and 336-337,
/// `resolve_lora_variant`). Each item `module (format): variant`.
pub(super) fn refused_variants(
    a: &crate::adapter::Adapter,
    r: &mapping::Resolution,
    base: &crate::io::Checkpoint,
) -> Vec<String> {
    use crate::io::quant::{gptq::Layout, Scheme};
    let set = |k: &str| {
        a.config
            .as_ref()
            .and_then(|c| c.get(k))
            .is_some_and(|v| !v.is_null() && v != &serde_json::Value::Bool(false))
    };
    let (velora, dora_cfg) = (set("velora_config"), set("use_dora"));
    let Ok(quant) = crate::io::quant::QuantMap::scan(base) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in &r.modules {
        let Some(m) = a.modules.get(p.module) else {
            continue;
        };
        let dora = dora_cfg || m.dora_magnitude.is_some();
        let (class, refuses_dora) = match quant.get(&p.weight).map(|q| &q.scheme) {
            Some(Scheme::Gptq(g)) if g.layout == Layout::Awq => ("AwqLoraLinear", true),
            Some(Scheme::Gptq(_)) => ("GPTQLoraLinear", true),
            Some(Scheme::Bnb4(_)) => ("Linear4bit", false),
            Some(Scheme::BnbInt8) => ("Linear8bitLt", false),
            _ => continue,
        };
        if refuses_dora && dora {
            out.push(format!("{} ({class}): DoRA", m.name));
        } else if velora {
            out.push(format!("{} ({class}): VeLoRA", m.name));
        }
    }
    out
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
