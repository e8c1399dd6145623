//! Config parsing and pattern rules checked against PEFT's own.

use super::*;
use regex::Regex;

#[test]
fn pattern_matching_follows_peft() {
    let pattern_match = |keys: &[&str], n: &str| {
        let res: Vec<PatternKey> = keys.iter().map(|k| compile_pattern(k).unwrap()).collect();
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

/// A plain key (name characters only) is matched without a regex, exactly as the regex
/// `^(?:.*\.)?(?:KEY)$` PEFT's `re.match` uses: every key against every name, both ways.
#[test]
fn plain_keys_match_as_their_regex_does() {
    let keys = [
        "q_proj",
        "layers.1.self_attn.q_proj",
        "1.self_attn.q_proj",
        "layers.1",
        "a.b",
        "proj",
        "mlp.experts.7.up_proj",
        "x-y",
    ];
    let names = [
        "model.layers.1.self_attn.q_proj",
        "model.layers.11.self_attn.q_proj",
        "layers.1.self_attn.q_proj",
        "model.layersX1.self_attn.q_proj",
        "model.layers.1",
        "axb",
        "a.b",
        "c.axb",
        "cxa.b",
        "o_proj",
        "model.layers.0.mlp.experts.7.up_proj",
        "model.layers.0.mlp.experts.17.up_proj",
        "x-y",
        "zx-y",
        "",
    ];
    for k in keys {
        let plain = compile_pattern(k).unwrap();
        assert!(matches!(plain, PatternKey::Plain(_)), "{k}");
        let re = Regex::new(&format!(r"^(?:.*\.)?(?:{k})$")).unwrap();
        for n in names {
            assert_eq!(plain.is_match(n), re.is_match(n), "{k} on {n:?}");
        }
    }
    assert!(matches!(
        compile_pattern(r"layers\.\d+\.q").unwrap(),
        PatternKey::Regex(_)
    ));
}
