//! Reader checks on small synthetic files: every refusal names the module and key.

use crate::adapter::model::Adapter;
use crate::linalg::rng::Xoshiro256PlusPlus as Rng;

/// Writes a safetensors file of f32 tensors `(name, shape)` with small values.
fn write(path: &std::path::Path, tensors: &[(String, Vec<usize>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let n: usize = shape.iter().product();
        let start = data.len();
        for j in 0..n {
            data.extend_from_slice(&(((i * 31 + j * 7) % 11) as f32 * 0.01 - 0.05).to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

/// Hostile module layouts: random subsets of every suffix of one family (plus alpha and
/// dora_scale) with random shapes of 0 to 4 dimensions. Reading must either refuse the file
/// (an error, never a panic) or give modules whose ΔW rebuilds to `out × in` values and
/// whose LoRA lowering does not panic either.
#[test]
fn random_layouts_are_refused_or_rebuilt_never_a_panic() {
    let families: Vec<&[&str]> = super::read::FAMILIES.iter().map(|(_, k)| *k).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::seed_from_u64(11);
    let mut pick = |n: usize| (rng.next_f64() * n as f64) as usize % n.max(1);
    let (mut read, mut refused) = (0, 0);
    for case in 0..3000 {
        let fam = families[pick(families.len())];
        let mut tensors = Vec::new();
        for s in fam.iter().chain(["alpha", "dora_scale"].iter()) {
            let skip = match *s {
                "dora_scale" => pick(4) != 0,
                _ => pick(4) == 0,
            };
            if skip {
                continue;
            }
            if *s == "alpha" {
                tensors.push((format!("lycoris_m.{s}"), vec![]));
                continue;
            }
            // Mostly 2-D and 4-D with dims of 1 or 2, so shapes often agree and valid
            // layouts are reached too; sometimes 0-, 1- or 3-D, or a dim of 3.
            let ndim = [0, 1, 2, 2, 2, 3, 4, 4][pick(8)];
            let shape: Vec<usize> = (0..ndim).map(|_| [1, 2, 2, 3][pick(4)]).collect();
            tensors.push((format!("lycoris_m.{s}"), shape));
        }
        let path = dir.path().join(format!("c{case}.safetensors"));
        write(&path, &tensors);
        let outcome = std::panic::catch_unwind(|| match Adapter::open(&path) {
            Err(_) => false,
            Ok(a) => {
                for m in &a.modules {
                    // Updates that need the base have no ΔW of their own (an error).
                    if let Ok(d) = a.delta(m) {
                        assert_eq!(d.len(), m.out_features * m.in_features, "{tensors:?}");
                    }
                    if m.factors.lora().is_none() {
                        let rule = crate::ops::rank::RankRule::Fixed(2);
                        let _ = crate::ops::resize::lower_module(&a, m, false, &rule);
                    }
                }
                true
            }
        });
        match outcome {
            Ok(true) => read += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("case {case} panicked: {tensors:?}"),
        }
    }
    // Both outcomes occur, so the generator reaches valid and invalid layouts.
    eprintln!("read {read}, refused {refused}");
    assert!(read > 50 && refused > 50, "read {read}, refused {refused}");
}
