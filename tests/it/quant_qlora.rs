//! The QLoRA proof of issue #18 on a truly QLoRA-trained adapter (`fixtures/quant/qlora/
//! trained_nf4`: PEFT LoRA on all seven projections trained 40 steps on the bitsandbytes-NF4 tiny
//! Llama, CPU, `fixtures/gen/qlora_train_fixture.py`): lorakit's merges run through `lorakit
//! eval` (whose logits equal transformers' to float rounding) against the NF4 model running the
//! adapter in transformers + PEFT; and the per-tensor stray-term report of `--as-trained-on`
//! against PEFT's merge on the NF4 model.

use super::common::*;

/// ‖a − b‖ / ‖b‖ in f64.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += (*x as f64 - *y as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den).sqrt()
}

fn logits_of(model: &std::path::Path, out: &std::path::Path, refs: &std::path::Path) -> Vec<f32> {
    run_ok(eval_args(
        model,
        &["--input-ids", s(refs), "--logits", s(out), "-q"],
    ));
    read(out)["logits"].f32()
}

/// `merge --as-trained-on nf4` reproduces the function the adapter was trained on (the NF4
/// model's training path: dequantize_4bit + float matmul) to float rounding, where the plain
/// merge into W is 1.3e-1 off; against the NF4 model's no-grad logits (bitsandbytes' CPU
/// inference kernel, itself 4.9e-3 from its training path) it is still 25× closer.
#[test]
fn qlora_trained_adapter_merged_as_trained_on_reproduces_the_nf4_model() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture("quant/qlora/trained_nf4");
    let refs = fixture("quant/qlora/trained_nf4_logits.safetensors");
    let r = read(&refs);
    let (eval_ref, train_ref) = (r["logits"].f32(), r["logits_train_path"].f32());
    let plain = dir.path().join("plain");
    let qlora = dir.path().join("qlora");
    merge_ok(&fixture("llama/base"), &adapter, &plain, &["-q"]);
    merge_ok(
        &fixture("llama/base"),
        &adapter,
        &qlora,
        &["--as-trained-on", "nf4", "-q"],
    );
    let lp = logits_of(&plain, &dir.path().join("p.safetensors"), &refs);
    let lq = logits_of(&qlora, &dir.path().join("q.safetensors"), &refs);
    let (q_train, p_train) = (rel(&lq, &train_ref), rel(&lp, &train_ref));
    let (q_eval, p_eval) = (rel(&lq, &eval_ref), rel(&lp, &eval_ref));
    eprintln!(
        "vs NF4 training path: as-trained-on {q_train:e}, plain {p_train:e}; \
         vs NF4 no-grad: as-trained-on {q_eval:e}, plain {p_eval:e}"
    );
    assert!(q_train < 1e-5, "{q_train:e}");
    assert!(p_train > 1e-2, "{p_train:e}");
    assert!(q_eval < p_eval / 10.0, "{q_eval:e} vs {p_eval:e}");
}

/// The per-tensor report of `--as-trained-on nf4` states the stray term it removed and the
/// adapter's own change, measured here from PEFT's and bitsandbytes' tensors: ΔW = (alpha/r)·B·A
/// in f64 from the adapter file, bitsandbytes' dequant(NF4(W)) = PEFT's merge on the NF4 model
/// (`qlora/qv_r8_expected.safetensors`: dequantize_4bit + get_delta_weight) − ΔW, so
/// `stray_norm` must be ‖W − dequant(NF4(W))‖ and `delta_norm` ‖ΔW‖, and `ratio` their quotient.
/// Both sides store f32: a few ulps of W per element, far below 1e-5 of either norm here.
#[test]
fn as_trained_on_reports_the_stray_term_bitsandbytes_removes() {
    let (_dir, out) = scratch("m");
    let adapter = fixture("llama/adapters/qv_r8");
    let v: serde_json::Value = serde_json::from_str(&merge_ok(
        &fixture("llama/base"),
        &adapter,
        &out,
        &["--as-trained-on", "nf4", "--json"],
    ))
    .unwrap();
    let cfg: serde_json::Value = read_json(adapter.join("adapter_config.json"));
    assert!(cfg["alpha_pattern"]
        .as_object()
        .is_none_or(|p| p.is_empty()));
    let scale = cfg["lora_alpha"].as_f64().unwrap() / cfg["r"].as_f64().unwrap();
    let factors = read(&adapter.join("adapter_model.safetensors"));
    let base = read_checkpoint(&fixture("llama/base"));
    let peft = read(&fixture("quant/qlora/qv_r8_expected.safetensors"));
    let rows = v["qlora"].as_array().unwrap();
    assert_eq!(rows.len(), peft.len());
    for row in rows {
        let name = row["name"].as_str().unwrap();
        let module = format!("base_model.model.{}", name.strip_suffix(".weight").unwrap());
        let (a, b) = (
            &factors[&format!("{module}.lora_A.weight")],
            &factors[&format!("{module}.lora_B.weight")],
        );
        let (r, k) = (a.shape[0], a.shape[1]);
        let (av, bv) = (a.f32(), b.f32());
        let (w, merged) = (base[name].f32(), peft[name].f32());
        let (mut stray, mut delta) = (0f64, 0f64);
        for (p, (&w, &m)) in w.iter().zip(&merged).enumerate() {
            let dw = scale
                * (0..r)
                    .map(|q| bv[(p / k) * r + q] as f64 * av[q * k + p % k] as f64)
                    .sum::<f64>();
            stray += (w as f64 - (m as f64 - dw)).powi(2);
            delta += dw * dw;
        }
        let (stray, delta) = (stray.sqrt(), delta.sqrt());
        let (got_stray, got_delta) = (
            row["stray_norm"].as_f64().unwrap(),
            row["delta_norm"].as_f64().unwrap(),
        );
        assert!(
            (got_stray - stray).abs() <= 1e-5 * stray,
            "{name}: stray {got_stray:e}, measured {stray:e}"
        );
        assert!(
            (got_delta - delta).abs() <= 1e-5 * delta,
            "{name}: change {got_delta:e}, measured {delta:e}"
        );
        let ratio = row["ratio"].as_f64().unwrap();
        assert!(
            (ratio - got_stray / got_delta).abs() <= 1e-12 * ratio,
            "{name}"
        );
        eprintln!("{name}: stray {stray:.4e}, change {delta:.4e}, ratio {ratio:.3}");
    }
}
