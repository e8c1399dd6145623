//! How merged values are rounded: once from PEFT's f32 sum by default, correctly (exactly) with
//! `--exact-rounding`; unmerge.

use super::*;

/// bf16 base: every merged value equals round_bf16(f32(W0) + s·B·A), with the f32 sum computed
/// here independently (ascending k, no FMA) and rounded by bit arithmetic.
#[test]
fn bf16_merge_rounds_once_from_f32() {
    let (dir, out) = scratch("out");
    let out32 = dir.path().join("out32");
    let base = fixture("llama/base_bf16");
    let adapter = fixture("llama/adapters/qv_r8");
    merge_ok(&base, &adapter, &out, &[]);
    merge_ok(&base, &adapter, &out32, &["--dtype", "f32"]);
    let merged = read_checkpoint(&out);
    let merged32 = read_checkpoint(&out32);
    let rne = |x: f32| -> u16 {
        let b = x.to_bits();
        ((b.wrapping_add(0x7FFF + ((b >> 16) & 1))) >> 16) as u16
    };
    for (name, t) in &merged {
        assert_eq!(t.dtype, safetensors::Dtype::BF16, "{name}");
    }
    for_each_adapted(&merged, &base, &adapter, |name, t, m| {
        let Adapted { r, k, d, .. } = *m;
        let got: Vec<u16> = t
            .data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let got32 = merged32[name].f32();
        for i in 0..d {
            for j in 0..k {
                let mut acc = 0f32;
                for kk in 0..r {
                    acc += m.b[i * r + kk] * m.a[kk * k + j];
                }
                let v = m.w0[i * k + j] + m.scale * acc;
                assert_eq!(got[i * k + j], rne(v), "{name}[{i},{j}]");
                assert_eq!(
                    got[i * k + j],
                    rne(got32[i * k + j]),
                    "{name}[{i},{j}] vs f32 output"
                );
            }
        }
    });
}

/// One module a LoRA adapter (PEFT layout, one `lora_alpha / r` scale) adapts: the base weight
/// `w0` (`d × k`), `b` (`d × r`), `a` (`r × k`), all f32, and the scale.
struct Adapted {
    w0: Vec<f32>,
    b: Vec<f32>,
    a: Vec<f32>,
    r: usize,
    k: usize,
    d: usize,
    scale: f32,
}

/// Every tensor of `merged` (a merge of the PEFT `adapter` into `base`): one the adapter does not
/// touch must hold the base's bytes; `check` runs on each of the others, which must be 4.
fn for_each_adapted(
    merged: &std::collections::BTreeMap<String, T>,
    base: &Path,
    adapter: &Path,
    mut check: impl FnMut(&str, &T, &Adapted),
) {
    let base_t = read_checkpoint(base);
    let ad = read(&adapter.join("adapter_model.safetensors"));
    let cfg: serde_json::Value = read_json(adapter.join("adapter_config.json"));
    let scale = (cfg["lora_alpha"].as_f64().unwrap() / cfg["r"].as_f64().unwrap()) as f32;
    let mut checked = 0;
    for (name, t) in merged {
        let module = name.strip_suffix(".weight").unwrap();
        let Some(a) = ad.get(&format!("base_model.model.{module}.lora_A.weight")) else {
            assert_eq!(t.data, base_t[name].data, "{name} untouched");
            continue;
        };
        let b = &ad[&format!("base_model.model.{module}.lora_B.weight")];
        let m = Adapted {
            w0: base_t[name].f32(),
            b: b.f32(),
            a: a.f32(),
            r: a.shape[0],
            k: a.shape[1],
            d: b.shape[0],
            scale,
        };
        check(name, t, &m);
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn unmerge_restores_the_base() {
    let (dir, merged) = scratch("merged");
    let restored = dir.path().join("restored");
    let base = fixture("llama/base");
    for adapter in ["llama/adapters/rslora_all", "llama/adapters/bias"] {
        let base = if adapter.ends_with("bias") {
            fixture("llama/base_attn_bias")
        } else {
            base.clone()
        };
        let _ = std::fs::remove_dir_all(&merged);
        let _ = std::fs::remove_dir_all(&restored);
        let a = fixture(adapter);
        merge_ok(&base, &a, &merged, &[]);
        merge_ok(&merged, &a, &restored, &["--unmerge"]);
        let b = read_checkpoint(&base);
        let r = read_checkpoint(&restored);
        let m = read_checkpoint(&merged);
        let mut changed = 0;
        for (name, t) in &b {
            let (x, y) = (r[name].f32(), t.f32());
            if m[name].data != t.data {
                changed += 1;
            }
            for (p, q) in x.iter().zip(&y) {
                // The merged value was rounded to f32 once; subtracting the same delta returns
                // within a couple of ulps of the magnitudes involved.
                assert!(
                    (p - q).abs() <= 4.0 * f32::EPSILON * (1.0 + q.abs()) * 8.0,
                    "{name}: {p} vs {q}"
                );
            }
        }
        assert!(changed > 0, "{adapter}: the merge changed something");
    }
}

/// `x = m·2ᵉ` exactly (i128 `m`, odd or zero).
fn split(x: f64) -> (i128, i32) {
    if x == 0.0 {
        return (0, 0);
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = (bits & ((1 << 52) - 1)) as i128;
    let (m, e) = if exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1 << 52), exp - 1075)
    };
    let tz = m.trailing_zeros();
    ((if x < 0.0 { -1 } else { 1 }) * (m >> tz), e + tz as i32)
}

/// `w0 + s·Σₖ b[k]·a[k]` computed exactly in i128 fixed point and rounded to bf16 (nearest,
/// ties to even) with integer shifts: the bf16 bits.
fn exact_bf16(w0: f32, s: f32, b: &[f32], a: &[f32]) -> u16 {
    let mut parts = vec![split(w0 as f64)];
    for (&x, &y) in b.iter().zip(a) {
        let (ms, es) = split(s as f64);
        let (mb, eb) = split(x as f64);
        let (ma, ea) = split(y as f64);
        parts.push((ms * mb * ma, es + eb + ea));
    }
    parts.retain(|p| p.0 != 0);
    let lsb = parts.iter().map(|p| p.1).min().unwrap_or(0);
    let mut sum = 0i128;
    for (m, e) in parts {
        let shift = (e - lsb) as u32;
        assert!(
            shift < 120 && m.unsigned_abs() < 1u128 << (125 - shift),
            "fits i128"
        );
        sum += m << shift;
    }
    if sum == 0 {
        return 0;
    }
    let mag = sum.unsigned_abs();
    let top = 127 - mag.leading_zeros() as i32;
    // bf16: 8 significant bits, least normal exponent −126.
    let qe = (top + lsb).max(-126) - 7;
    let shift = qe - lsb;
    let n = if shift <= 0 {
        mag << (-shift)
    } else {
        let (fl, rem, half) = (mag >> shift, mag & ((1 << shift) - 1), 1u128 << (shift - 1));
        fl + u128::from(rem > half || (rem == half && fl & 1 == 1))
    };
    let v = (n as f64 * 2f64.powi(qe)) as f32;
    let v = if sum < 0 { -v } else { v };
    // Exact in f32 (≤ 8 bits): the top half is the bf16.
    assert_eq!(v.to_bits() & 0xffff, 0);
    (v.to_bits() >> 16) as u16
}

/// `--exact-rounding` on the bf16 Llama fixture: every merged value is the exactly computed
/// W0 + s·B·A rounded once to bf16 (an i128 reference here), untouched tensors are the base's
/// bytes, and the default (f32) output differs from it where PEFT's f32 sum lands on the other
/// side of a bf16 midpoint (counted, not required: this fixture may have none).
#[test]
fn exact_rounding_stores_the_correctly_rounded_value() {
    let (_dir, out) = scratch("out");
    let base = fixture("llama/base_bf16");
    let adapter = fixture("llama/adapters/qv_r8");
    merge_ok(&base, &adapter, &out, &["--exact-rounding"]);
    let merged = read_checkpoint(&out);
    for_each_adapted(&merged, &base, &adapter, |name, t, m| {
        let Adapted { r, k, d, .. } = *m;
        for i in 0..d {
            for j in 0..k {
                let col: Vec<f32> = (0..r).map(|kk| m.a[kk * k + j]).collect();
                let b_row = &m.b[i * r..(i + 1) * r];
                let want = exact_bf16(m.w0[i * k + j], m.scale, b_row, &col);
                let p = 2 * (i * k + j);
                let got = u16::from_le_bytes([t.data[p], t.data[p + 1]]);
                assert_eq!(got, want, "{name}[{i},{j}]");
            }
        }
    });
}

/// `--exact-rounding` refuses a DoRA adapter (its norm and division are outside the exact
/// contract) with one line naming the module, before anything is written.
#[test]
fn exact_rounding_refuses_dora() {
    let (_dir, out) = scratch("out");
    let exact = ["--exact-rounding"];
    let line = merge_fixtures_refused("llama/base", "llama/adapters/dora", &out, &exact);
    assert_mentions(&line, &["DoRA", "module `"]);
}
