//! The packed projections (`qkv_proj` ← q/k/v_proj, `gate_up_proj` ← gate/up_proj) for
//! `check --fix`: a LoRA on a packed module the base lacks is split into the base's projections,
//! and LoRAs on projections a base packs are fused into one; both exact (split out of `fix.rs`
//! to keep it under 800 lines). Nothing here reads files or decides whether to run.

use super::fixing::set_unit_scale_lora;
use crate::adapter::{Data, Factors};
use std::sync::Arc;

/// Packed projections some stacks fuse (vLLM's `packed_modules_mapping` of Llama-family
/// models: `qkv_proj` ← q/k/v_proj, `gate_up_proj` ← gate/up_proj), in the order they are stacked.
const PACKED: &[(&str, &[&str])] = &[
    ("qkv_proj", &["q_proj", "k_proj", "v_proj"]),
    ("gate_up_proj", &["gate_proj", "up_proj"]),
];

/// Splits a LoRA on a packed projection the base does not have (`…qkv_proj`) into one LoRA per
/// projection the base does have, exactly: the packed weight is the row-wise stack of the parts,
/// so `ΔW_part = s·B[rows_part]·A` — each part keeps `A`, takes its rows of `B` (and of a
/// `lora_B.bias` or DoRA magnitude, both per output row), and the same rank, alpha and scale.
/// Applied only when every part exists in the base as `[rows_i, in]` with `Σ rows_i` = the
/// packed module's output size. Values must be loaded.
pub(super) fn split_packed(
    adapter: &mut crate::adapter::Adapter,
    base: &crate::io::Checkpoint,
) -> Vec<(String, Vec<String>)> {
    use crate::adapter::ModuleKind;
    let mut out = Vec::new();
    let mut modules = Vec::with_capacity(adapter.modules.len());
    for m in std::mem::take(&mut adapter.modules) {
        let leaf = m.name.rsplit('.').next().unwrap_or(&m.name).to_owned();
        let parts = PACKED
            .iter()
            .find(|(p, _)| *p == leaf)
            .map(|(_, parts)| *parts);
        let (Some(parts), ModuleKind::Linear, false, false) = (
            parts,
            &m.kind,
            m.base_transposed,
            base.contains(&format!("{}.weight", m.name)),
        ) else {
            modules.push(m);
            continue;
        };
        let parent = &m.name[..m.name.len() - leaf.len()];
        let rows: Option<Vec<usize>> = parts
            .iter()
            .map(|p| {
                let info = base.info(&format!("{parent}{p}.weight"))?;
                (info.shape.len() == 2 && info.shape[1] == m.in_features).then_some(info.shape[0])
            })
            .collect();
        let (
            Some(rows),
            Factors::Lora {
                a,
                b: Data::Owned(bv),
            },
        ) = (rows, &m.factors)
        else {
            modules.push(m);
            continue;
        };
        if rows.iter().sum::<usize>() != m.out_features {
            modules.push(m);
            continue;
        }
        let slice = |d: &Option<Data>, lo: usize, n: usize| -> Option<Data> {
            match d {
                Some(Data::Owned(v)) => Some(Data::Owned(Arc::new(v[lo..lo + n].to_vec()))),
                other => other.clone(),
            }
        };
        let mut names = Vec::new();
        let mut lo = 0;
        for (p, &n) in parts.iter().zip(&rows) {
            let mut part = m.clone();
            part.name = format!("{parent}{p}");
            part.out_features = n;
            part.factors = Factors::Lora {
                a: a.clone(),
                b: Data::Owned(Arc::new(bv[lo * m.rank..(lo + n) * m.rank].to_vec())),
            };
            part.bias = slice(&m.bias, lo, n);
            part.dora_magnitude = slice(&m.dora_magnitude, lo, n);
            names.push(part.name.clone());
            modules.push(part);
            lo += n;
        }
        out.push((m.name.clone(), names));
    }
    adapter.modules = modules;
    if !out.is_empty() {
        if let Some(serde_json::Value::Object(cfg)) = adapter.config.as_mut() {
            cfg.insert("target_modules".into(), serde_json::Value::Null);
        }
    }
    out
}

/// The converse of [`split_packed`], for a base whose projections are packed (Phi-3's
/// `qkv_proj`, `gate_up_proj`) and an adapter on the separate ones: the LoRAs of one block's
/// parts become one LoRA on the packed module, exactly. With parts `i` of `rows_i` output rows,
/// ranks `r_i` and scales `s_i`, `A = [A_1; …; A_n]` (Σr_i × in) and `B` block-diagonal with
/// `s_i·B_i` in rows `i` and columns `i` (a part the adapter lacks is zero rows), scale 1:
/// `B·A = [s_1·B_1·A_1; …; s_n·B_n·A_n]`, the packed ΔW row by row. Applied only when the base
/// has `{parent}{packed}.weight` `[Σ rows_i, in]` and none of the parts, and every part present
/// is a plain linear LoRA with no bias or DoRA magnitude. Values must be loaded.
pub(super) fn fuse_packed(
    adapter: &mut crate::adapter::Adapter,
    base: &crate::io::Checkpoint,
) -> Vec<(String, Vec<String>)> {
    use crate::adapter::ModuleKind;
    use std::collections::BTreeMap;
    // (parent, packed) → indices of the adapter's modules on its parts.
    let mut groups: BTreeMap<(String, &str), Vec<usize>> = BTreeMap::new();
    for (i, m) in adapter.modules.iter().enumerate() {
        let leaf = m.name.rsplit('.').next().unwrap_or(&m.name);
        let parent = &m.name[..m.name.len() - leaf.len()];
        if let Some((packed, _)) = PACKED.iter().find(|(_, parts)| parts.contains(&leaf)) {
            groups
                .entry((parent.to_owned(), packed))
                .or_default()
                .push(i);
        }
    }
    let mut out = Vec::new();
    let mut gone = std::collections::BTreeSet::new();
    // The fused module takes the place of its group's first part.
    let mut new_modules = BTreeMap::new();
    for ((parent, packed), members) in groups {
        let parts = PACKED.iter().find(|(p, _)| *p == packed).unwrap().1;
        let Some(info) = base.info(&format!("{parent}{packed}.weight")) else {
            continue;
        };
        if parts
            .iter()
            .any(|p| base.contains(&format!("{parent}{p}.weight")))
        {
            continue;
        }
        let first = &adapter.modules[members[0]];
        let k = first.in_features;
        let plain = members.iter().all(|&i| {
            let m = &adapter.modules[i];
            matches!(m.kind, ModuleKind::Linear)
                && !m.base_transposed
                && m.bias.is_none()
                && m.dora_magnitude.is_none()
                && m.in_features == k
                && matches!(
                    m.factors,
                    Factors::Lora {
                        a: Data::Owned(_),
                        b: Data::Owned(_)
                    }
                )
        });
        if !plain || info.shape.len() != 2 || info.shape[1] != k {
            continue;
        }
        let d = info.shape[0];
        // Rows per part: the adapter's own out_features where it has the part; the rest of the
        // packed rows split evenly over the missing parts only when there is one (else unknown).
        let by_leaf: BTreeMap<&str, usize> = members
            .iter()
            .map(|&i| {
                let m = &adapter.modules[i];
                (m.name.rsplit('.').next().unwrap_or(&m.name), i)
            })
            .collect();
        let known: usize = by_leaf
            .values()
            .map(|&i| adapter.modules[i].out_features)
            .sum();
        let missing = parts.len() - by_leaf.len();
        let rows: Vec<usize> = match missing {
            0 if known == d => parts
                .iter()
                .map(|p| adapter.modules[by_leaf[p]].out_features)
                .collect(),
            1 if known < d => parts
                .iter()
                .map(|p| {
                    by_leaf
                        .get(p)
                        .map_or(d - known, |&i| adapter.modules[i].out_features)
                })
                .collect(),
            _ => continue,
        };
        let big_r: usize = by_leaf.values().map(|&i| adapter.modules[i].rank).sum();
        let mut a_all = Vec::with_capacity(big_r * k);
        let mut b_all = vec![0f32; d * big_r];
        let (mut row0, mut col0) = (0, 0);
        let mut had = Vec::new();
        for (p, &n) in parts.iter().zip(&rows) {
            if let Some(&i) = by_leaf.get(p) {
                let m = &adapter.modules[i];
                let Factors::Lora {
                    a: Data::Owned(av),
                    b: Data::Owned(bv),
                } = &m.factors
                else {
                    unreachable!("checked above")
                };
                let r = m.rank;
                a_all.extend_from_slice(&av[..r * k]);
                for row in 0..n {
                    for j in 0..r {
                        b_all[(row0 + row) * big_r + col0 + j] =
                            (bv[row * r + j] as f64 * m.scale) as f32;
                    }
                }
                col0 += r;
                had.push(m.name.clone());
                gone.insert(i);
            }
            row0 += n;
        }
        let mut m = first.clone();
        m.name = format!("{parent}{packed}");
        m.out_features = d;
        set_unit_scale_lora(&mut m, a_all, b_all, big_r);
        out.push((m.name.clone(), had));
        new_modules.insert(members[0], m);
    }
    if out.is_empty() {
        return out;
    }
    let old = std::mem::take(&mut adapter.modules);
    for (i, m) in old.into_iter().enumerate() {
        if let Some(f) = new_modules.remove(&i) {
            adapter.modules.push(f);
        }
        if !gone.contains(&i) {
            adapter.modules.push(m);
        }
    }
    if let Some(serde_json::Value::Object(cfg)) = adapter.config.as_mut() {
        cfg.insert("target_modules".into(), serde_json::Value::Null);
    }
    out
}
