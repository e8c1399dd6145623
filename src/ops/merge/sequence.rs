//! Applying terms one after another on one tensor, for base-dependent updates (OFT, BOFT, IA3,
//! GLoRA) that follow other terms: the running weight each of them is computed from. Owns only
//! that accumulation; the merge itself stays in [`super::run`].

/// `running += s·ΔW` of one term in the stored orientation (`rows × cols`): `s·B·A` from its
/// factors (`b` rows×rank, `a` rank×cols) or `s·dense`. Accumulated per element in f64 and
/// rounded once into the f32 running weight.
pub(super) fn accumulate(
    running: &mut [f32],
    (b, a): &(Vec<f32>, Vec<f32>),
    dense: Option<&[f32]>,
    rank: usize,
    s: f64,
) {
    if let Some(d) = dense {
        for (r, &x) in running.iter_mut().zip(d) {
            *r = (*r as f64 + s * x as f64) as f32;
        }
        return;
    }
    if rank == 0 || b.is_empty() {
        return;
    }
    let rows = b.len() / rank;
    let cols = a.len() / rank;
    for i in 0..rows {
        for j in 0..cols {
            let mut acc = 0f64;
            for t in 0..rank {
                acc += b[i * rank + t] as f64 * a[t * cols + j] as f64;
            }
            let r = &mut running[i * cols + j];
            *r = (*r as f64 + s * acc) as f32;
        }
    }
}
