//! The QLoRA proof of issue #18 on a truly QLoRA-trained adapter (`fixtures/quant/qlora/
//! trained_nf4`: PEFT LoRA on all seven projections trained 40 steps on the bitsandbytes-NF4 tiny
//! Llama, CPU, `fixtures/gen/qlora_train_fixture.py`): lorakit's merges run through `lorakit
//! eval` (whose logits equal transformers' to float rounding) against the NF4 model running the
//! adapter in transformers + PEFT.

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
    run_ok([
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--input-ids",
        refs.to_str().unwrap(),
        "--logits",
        out.to_str().unwrap(),
        "-q",
    ]);
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
