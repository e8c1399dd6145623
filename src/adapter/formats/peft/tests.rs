//! Config parsing and pattern rules checked against PEFT's own.

use super::*;
use regex::Regex;

#[test]
fn pattern_matching_follows_peft() {
    let pattern_match = |keys: &[&str], n: &str| {
        let res: Vec<Regex> = keys.iter().map(|k| compile_pattern(k).unwrap()).collect();
        first_match(&res, n)
    };
    let keys = ["k_proj", "layers.1.self_attn.q_proj"];
    let m = |n: &str| pattern_match(&keys, n);
    assert_eq!(m("model.layers.0.self_attn.k_proj"), Some(0));
    assert_eq!(m("model.layers.1.self_attn.q_proj"), Some(1));
    assert_eq!(m("model.layers.0.self_attn.q_proj"), None);
    // Suffix must sit on a dot boundary: `xk_proj` is not `k_proj`.
    assert_eq!(m("model.layers.0.self_attn.xk_proj"), None);
    // First match wins.
    assert_eq!(
        pattern_match(&["q_proj", "self_attn.q_proj"], "a.self_attn.q_proj"),
        Some(0)
    );
}
