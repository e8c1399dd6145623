//! Which modules a PEFT config selects: PEFT's `check_target_module_exists`
//! (`peft/tuners/tuners_utils.py`, PEFT 0.21.2) over `target_modules`, `exclude_modules`,
//! `modules_to_save`, `layers_to_transform` and `layers_pattern`, and `ensure_weight_tying`
//! (the module tied to the input embedding, [`Targets::tie_only`]).
//!
//! `PeftModel.from_pretrained` injects adapter layers only into the modules this predicate
//! selects and then loads the state dict; tensors of any other module are dropped without a
//! word (checked against PEFT 0.21.2: a `q_proj`+`v_proj` adapter whose config lists only
//! `q_proj` merges `q_proj` alone). An adapter whose config does not select its own tensors
//! therefore means two different things in PEFT and in a reader that trusts the tensors, so the
//! PEFT reader refuses it ([`untargeted`]) rather than pick one silently.
//!
//! Owns the predicate only; it does not read files. Where the config cannot be decided here —
//! `target_modules` absent (PEFT then fills in a per-architecture default from the base),
//! `"all-linear"` (resolved against the base's module types), `target_parameters` (MoE
//! parameter wrappers), or a regex the `regex` crate does not compile (Python-only syntax such
//! as look-around) — every module counts as selected: the check never refuses what it cannot
//! decide. A regex that Python's `re` refuses too (an unclosed group, …: [`python_refuses`]) is
//! an error, as PEFT's `re.fullmatch` raises on it when loading.

use regex::Regex;
use serde_json::Value;

/// PEFT's target selection, parsed from `adapter_config.json`.
#[derive(Debug, Clone)]
pub struct Targets {
    rule: Rule,
    /// `exclude_modules`: a regex (fullmatch) or names (exact or `.`-suffix).
    exclude: Names,
    /// `modules_to_save`, each as PEFT's `(^|.*\.){m}($|\..*)` (`re.match`).
    to_save: Vec<Regex>,
    /// `ensure_weight_tying` with an embedding layer name among `target_modules`: PEFT also
    /// wraps the modules tied to the input embedding (lm_head), their factors the embedding's.
    tie: bool,
    /// `ensure_weight_tying` without an embedding layer name among the targets (PEFT 0.21.2
    /// saves GPT-2's as `["c_attn", "transformer.wte", "wte"]`): PEFT's reload ties nothing.
    tie_unnamed: bool,
}

#[derive(Debug, Clone)]
enum Rule {
    /// Not decidable without the base (see the module header): everything is selected.
    All,
    /// `target_modules` as one regex, matched against the whole module name.
    Regex(Regex),
    /// `target_modules` as names, with the optional layer filter.
    Names {
        names: Vec<String>,
        layers: Option<Layers>,
    },
}

#[derive(Debug, Clone)]
enum Names {
    None,
    Regex(Regex),
    List(Vec<String>),
}

#[derive(Debug, Clone)]
struct Layers {
    /// `layers_to_transform`: one index or a list.
    indexes: Vec<u64>,
    /// The regexes that find the layer index (`layers_pattern`, or PEFT's default).
    finders: Vec<Regex>,
}

/// Why a config field cannot be read; the caller names the file.
pub type FieldError = String;

impl Targets {
    /// Reads the selection fields of a config object. Wrong JSON types are errors (PEFT itself
    /// fails on them at load time); Python-only regexes make the selection undecidable.
    pub fn parse(cfg: &serde_json::Map<String, Value>) -> Result<Targets, FieldError> {
        let get = |k: &str| cfg.get(k).filter(|v| !v.is_null());
        let strings = |k: &str, v: &Value| -> Result<Vec<String>, FieldError> {
            v.as_array()
                .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_owned)).collect())
                .ok_or_else(|| format!("`{k}` must be a string or a list of strings"))
        };
        let names = |k: &str| -> Result<Option<Names>, FieldError> {
            Ok(Some(match get(k) {
                None => Names::None,
                Some(Value::String(p)) => match fullmatch(p).filter(|_| python_accepts(p)) {
                    Some(re) => Names::Regex(re),
                    None => match python_refuses(p) {
                        Some(why) => {
                            return Err(format!("`{k}` {p:?} is not a valid regex: {why}"))
                        }
                        None => return Ok(None),
                    },
                },
                Some(v) => Names::List(strings(k, v)?),
            }))
        };
        let target = names("target_modules")?;
        let exclude = names("exclude_modules")?;
        let to_save: Option<Vec<Regex>> = match get("modules_to_save") {
            None => Some(Vec::new()),
            Some(v) => strings("modules_to_save", v)?
                .iter()
                .map(|m| Regex::new(&format!(r"^(?:(?:^|.*\.){m}(?:$|\..*))")).ok())
                .collect(),
        };
        let indexes = match get("layers_to_transform") {
            None => None,
            Some(v) => Some(match v {
                Value::Array(a) => a
                    .iter()
                    .map(Value::as_u64)
                    .collect::<Option<Vec<_>>>()
                    .ok_or("`layers_to_transform` must be an integer or a list of integers")?,
                v => vec![v
                    .as_u64()
                    .ok_or("`layers_to_transform` must be an integer or a list of integers")?],
            }),
        };
        let patterns = match get("layers_pattern") {
            None => Vec::new(),
            Some(Value::String(p)) => vec![p.clone()],
            Some(v) => strings("layers_pattern", v)?,
        };
        let all = Targets {
            rule: Rule::All,
            exclude: Names::None,
            to_save: Vec::new(),
            tie: false,
            tie_unnamed: false,
        };
        // PEFT's `_check_tied_modules` (`tuners/tuners_utils.py`): `ensure_weight_tying` acts
        // when a target is one of EMBEDDING_LAYER_NAMES (`embed_tokens`, `lm_head`; by last
        // name component, or a regex target that fullmatches one of them).
        let ensure = get("ensure_weight_tying").and_then(Value::as_bool) == Some(true);
        let tie = ensure
            && match get("target_modules") {
                Some(Value::String(p)) => fullmatch(p)
                    .is_some_and(|re| EMBEDDING_LAYER_NAMES.iter().any(|n| re.is_match(n))),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|m| EMBEDDING_LAYER_NAMES.contains(&m.rsplit('.').next().unwrap_or(m))),
                _ => false,
            };
        let has_parameters = get("target_parameters")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        let all_linear = get("target_modules")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case("all-linear"));
        let (Some(target), Some(exclude), Some(to_save)) = (target, exclude, to_save) else {
            return Ok(all);
        };
        if has_parameters || all_linear {
            return Ok(all);
        }
        let rule = match target {
            Names::None => Rule::All,
            Names::Regex(re) => Rule::Regex(re),
            Names::List(names) => {
                // PEFT's `is_using_layer_indexes`: an empty list means no filter.
                let layers = match indexes.filter(|i| !i.is_empty()) {
                    None => None,
                    Some(indexes) => {
                        let finders = if patterns.iter().all(String::is_empty) {
                            Regex::new(r"^.*?\.[^.]*\.(?P<idx>\d+)\.")
                                .ok()
                                .into_iter()
                                .collect()
                        } else {
                            let mut finders = Vec::new();
                            for p in &patterns {
                                let re = format!(r"^(?:(?:^|.*?\.){p}\.(?P<idx>\d+)\.)");
                                match Regex::new(&re) {
                                    Ok(f) => finders.push(f),
                                    // PEFT's `re.match` on it raises when loading.
                                    Err(_) => match python_refuses(p) {
                                        Some(why) => {
                                            return Err(format!(
                                                "`layers_pattern` {p:?} is not a valid regex: {why}"
                                            ))
                                        }
                                        None => {
                                            finders.clear();
                                            break;
                                        }
                                    },
                                }
                            }
                            finders
                        };
                        if finders.is_empty() {
                            return Ok(all);
                        }
                        Some(Layers { indexes, finders })
                    }
                };
                Rule::Names { names, layers }
            }
        };
        Ok(Targets {
            rule,
            exclude,
            to_save,
            tie,
            tie_unnamed: ensure && !tie,
        })
    }

    /// Whether `key` is in the adapter only through `ensure_weight_tying`: on a base whose
    /// lm_head is tied to the input embedding, PEFT 0.21.2 moves lm_head out of
    /// `target_modules` (`tuners/lora/model.py` `_add_targets_to_tie`, so a saved config does
    /// not list it) and wraps it anyway, before any exclusion (`inject_adapter`'s
    /// `_check_tied_module_exists`), with `lora_A = lora_embedding_B.T` and
    /// `lora_B = lora_embedding_A.T` of the embedding — the same Parameters (`_create_and_replace`,
    /// `layer.py` `update_layer` `tied_adapter`). On an untied base (`tie_word_embeddings`
    /// false) it wraps nothing and drops the file's lm_head tensors. The tied name is the
    /// base's `_tied_weights_keys`; lorakit takes `lm_head`, every transformers causal LM's.
    pub fn tie_only(&self, key: &str) -> bool {
        self.tie
            && (key == TIED_HEAD || key.ends_with(&format!(".{TIED_HEAD}")))
            && !self.selects_untied(key)
    }

    /// Whether `key` is an lm_head that `ensure_weight_tying` meant to tie but PEFT's reload
    /// does not: its `_check_tied_modules` looks for `embed_tokens` or `lm_head` among the saved
    /// targets by name, and a base whose embedding is called otherwise (GPT-2's `wte`) has
    /// neither there after `_add_targets_to_tie` removed lm_head (checked on PEFT 0.21.2:
    /// `fixtures/gen/gaps10_fixtures.py` `gpt2_ewt`).
    pub fn tie_dropped(&self, key: &str) -> bool {
        self.tie_unnamed && (key == TIED_HEAD || key.ends_with(&format!(".{TIED_HEAD}")))
    }

    /// Whether PEFT injects an adapter layer into the module called `key` (the module's path
    /// in the base model, `base_model.model.` stripped) on a base that ties lm_head to the input
    /// embedding where the config asks for it ([`Targets::tie_only`]).
    pub fn selects(&self, key: &str) -> bool {
        self.selects_untied(key) || self.tie_only(key)
    }

    /// Whether `key` is in `modules_to_save` (PEFT's `(^|.*\.){m}($|\..*)`, `re.match`).
    pub fn saves(&self, key: &str) -> bool {
        self.to_save.iter().any(|re| re.is_match(key))
    }

    /// [`Targets::selects`] without `ensure_weight_tying`'s tied modules.
    fn selects_untied(&self, key: &str) -> bool {
        let listed = |names: &[String]| {
            names.iter().any(|n| {
                key == n
                    || key
                        .strip_suffix(n.as_str())
                        .is_some_and(|p| p.ends_with('.'))
            })
        };
        let excluded = match &self.exclude {
            Names::None => false,
            Names::Regex(re) => re.is_match(key),
            Names::List(names) => listed(names),
        };
        if excluded || self.saves(key) {
            return false;
        }
        match &self.rule {
            Rule::All => true,
            Rule::Regex(re) => re.is_match(key),
            Rule::Names { names, .. } if names.iter().any(|n| n == key) => true,
            Rule::Names { names, layers } => {
                listed(names)
                    && layers.as_ref().is_none_or(|l| {
                        // The first finder that matches decides; no index means not selected.
                        l.finders
                            .iter()
                            .find_map(|re| re.captures(key))
                            .and_then(|c| c.name("idx"))
                            .and_then(|m| m.as_str().parse::<u64>().ok())
                            .is_some_and(|i| l.indexes.contains(&i))
                    })
            }
        }
    }
}

/// PEFT's `EMBEDDING_LAYER_NAMES` (`utils/constants.py`).
const EMBEDDING_LAYER_NAMES: [&str; 2] = ["embed_tokens", "lm_head"];

/// The module PEFT ties to the input embedding under `ensure_weight_tying`.
const TIED_HEAD: &str = "lm_head";

/// `re.fullmatch(pattern, key)`, or `None` where the `regex` crate cannot compile it.
fn fullmatch(pattern: &str) -> Option<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).ok()
}

/// Why Python's `re` refuses `pattern` too, for the syntax errors both refuse: a group
/// unclosed or never opened, a class unclosed, `*`/`+`/`?` with nothing to repeat, a count
/// range whose start passes its end, a trailing backslash. PEFT's `re.fullmatch` then raises
/// at load time. `None` for what only the `regex` crate refuses (look-around, backreferences,
/// a compiled size past its limit, `{` as a literal): undecidable, not an error.
fn python_refuses(pattern: &str) -> Option<String> {
    use regex_syntax::ast::ErrorKind as K;
    let e = match regex_syntax::ast::parse::Parser::new().parse(pattern) {
        Ok(ast) => {
            return python_only_error(pattern, &ast).or_else(|| misplaced_global_flags(&ast))
        }
        Err(e) => e,
    };
    let quantifier = || {
        matches!(
            pattern
                .get(e.span().start.offset..)
                .and_then(|s| s.chars().next()),
            Some('*' | '+' | '?')
        )
    };
    match e.kind() {
        K::GroupUnclosed
        | K::GroupUnopened
        | K::ClassUnclosed
        | K::RepetitionCountInvalid
        | K::EscapeUnexpectedEof => Some(e.kind().to_string()),
        K::RepetitionMissing if quantifier() => Some(e.kind().to_string()),
        // Flags Python's `_parse_flags` refuses too (hostile round 12): a letter it does not
        // know (it knows `aiLmsux`, `L` only for bytes; `P` opens its named groups), `-` with no
        // flag or twice, an unclosed `(?i`, a flag turned on and off (`(?i-i:…)`; `(?ii)` passes).
        K::FlagUnrecognized => {
            let c = pattern
                .get(e.span().start.offset..)
                .and_then(|s| s.chars().next());
            c.filter(|c| c.is_ascii_alphabetic() && !matches!(c, 'a' | 'P'))
                .map(|c| format!("unknown flag `{c}`"))
        }
        K::FlagDanglingNegation | K::FlagRepeatedNegation { .. } | K::FlagUnexpectedEof => {
            Some(e.kind().to_string())
        }
        K::FlagDuplicate { original } => pattern
            .get(original.start.offset..e.span().start.offset)
            .filter(|between| between.contains('-'))
            .map(|_| "flag turned on and off".to_owned()),
        _ => None,
    }
}

/// Python 3.11's `sre_parse` takes global flags (`(?i)`) only before anything else of the
/// pattern's first top-level alternative: after other global flags, and in verbose mode after
/// whitespace and comments, which the `regex` crate's AST does not hold either. Anywhere else (after
/// a literal, an assertion or `|`, inside a group) it raises "global flags not at the start of
/// the expression". Hostile round 12: a text test of what precedes the flags refused
/// `(?x) (?i)…`, which Python reads, and passed `m(?i)…` and `((?i)…)`, which it refuses.
fn misplaced_global_flags(ast: &regex_syntax::ast::Ast) -> Option<String> {
    use regex_syntax::ast::Ast;
    fn count(ast: &Ast) -> usize {
        match ast {
            Ast::Flags(_) => 1,
            Ast::Repetition(r) => count(&r.ast),
            Ast::Group(g) => count(&g.ast),
            Ast::Alternation(a) => a.asts.iter().map(count).sum(),
            Ast::Concat(c) => c.asts.iter().map(count).sum(),
            _ => 0,
        }
    }
    let first = match ast {
        Ast::Alternation(a) => a.asts.first(),
        other => Some(other),
    };
    let leading = match first {
        Some(Ast::Concat(c)) => c
            .asts
            .iter()
            .take_while(|a| matches!(a, Ast::Flags(_)))
            .count(),
        Some(Ast::Flags(_)) => 1,
        _ => 0,
    };
    (count(ast) > leading).then(|| "global flags not at the start of the expression".to_owned())
}

/// Whether Python's `re` compiles `pattern` as far as [`python_only_error`] can tell.
fn python_accepts(pattern: &str) -> bool {
    python_refuses(pattern).is_none()
}

/// Why Python's `re` (3.11, `sre_parse`) refuses syntax that the `regex` crate parses, each
/// checked with `re.compile`: a repetition of a repetition (`a{1}{1}`, `a**`, `.{1000}{1000}`:
/// "multiple repeat"; `a*+` is Python's possessive and passes), `\z`, `\pL`, `\x{71}` (bad or
/// incomplete escapes), `(?<n>…)` ("unknown extension"), the flags `U` and `R`, turning `u`
/// off, and flags set mid-pattern or negated outside a group. Found by the hostile round 11:
/// such a `target_modules` merged by the crate's reading where PEFT raises on load.
fn python_only_error(pattern: &str, ast: &regex_syntax::ast::Ast) -> Option<String> {
    use regex_syntax::ast::{AssertionKind, Ast, Flag, FlagsItemKind, GroupKind, LiteralKind};
    use regex_syntax::ast::{RepetitionKind, RepetitionOp};
    let flags = |f: &regex_syntax::ast::Flags| {
        let mut negated = false;
        for item in &f.items {
            match item.kind {
                FlagsItemKind::Negation => negated = true,
                FlagsItemKind::Flag(Flag::SwapGreed | Flag::CRLF) => {
                    return Some("unknown flag (`U`, `R`)".to_owned())
                }
                FlagsItemKind::Flag(Flag::Unicode) if negated => {
                    return Some("cannot turn off flag `u`".to_owned())
                }
                FlagsItemKind::Flag(_) => {}
            }
        }
        None
    };
    match ast {
        Ast::Empty(_) | Ast::Dot(_) | Ast::ClassPerl(_) | Ast::ClassBracketed(_) => None,
        Ast::Flags(set) => {
            if set
                .flags
                .items
                .iter()
                .any(|i| i.kind == FlagsItemKind::Negation)
            {
                return Some("global flags cannot be turned off (`(?-…)` without `:`)".to_owned());
            }
            flags(&set.flags)
        }
        Ast::Literal(l) => matches!(l.kind, LiteralKind::HexBrace(_))
            .then(|| "incomplete escape (`\\x{…}`)".to_owned()),
        Ast::Assertion(a) => match a.kind {
            AssertionKind::EndText => Some("bad escape `\\z`".to_owned()),
            AssertionKind::StartLine
            | AssertionKind::EndLine
            | AssertionKind::StartText
            | AssertionKind::WordBoundary
            | AssertionKind::NotWordBoundary => None,
            // `\<`, `\>`, `\b{start}`…: assertions to the regex crate, literal characters to
            // Python's re (`\<` is `<`, `\b{end}` is `\b` then `{end}`), which no module name
            // holds: PEFT finds no target.
            _ => Some(format!(
                "`{}` is an assertion to Rust's regex but literal characters to Python's re",
                pattern
                    .get(a.span.start.offset..a.span.end.offset)
                    .unwrap_or("?")
            )),
        },
        Ast::ClassUnicode(_) => Some("bad escape `\\p`/`\\P`".to_owned()),
        Ast::Repetition(r) => {
            if let Ast::Repetition(inner) = &*r.ast {
                // `a*+`, `a{2}+`: Python 3.11's possessive, one node there.
                let possessive = inner.greedy
                    && r.greedy
                    && matches!(
                        r.op,
                        RepetitionOp {
                            kind: RepetitionKind::OneOrMore,
                            ..
                        }
                    )
                    && pattern.get(r.op.span.start.offset..r.op.span.end.offset) == Some("+");
                if !possessive {
                    return Some("multiple repeat".to_owned());
                }
            }
            python_only_error(pattern, &r.ast)
        }
        Ast::Group(g) => match &g.kind {
            GroupKind::CaptureName {
                starts_with_p: false,
                ..
            } => Some("unknown extension `(?<name>`".to_owned()),
            GroupKind::NonCapturing(f) => flags(f).or_else(|| python_only_error(pattern, &g.ast)),
            _ => python_only_error(pattern, &g.ast),
        },
        Ast::Alternation(a) => a.asts.iter().find_map(|x| python_only_error(pattern, x)),
        Ast::Concat(c) => c.asts.iter().find_map(|x| python_only_error(pattern, x)),
    }
}

/// The adapter modules (by name) that `cfg` does not select, in the order given.
pub fn untargeted<'a>(
    targets: &Targets,
    modules: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    modules
        .into_iter()
        .filter(|m| !targets.selects(m))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case in `fixtures/peft_targets/cases.json` was decided by PEFT's own
    /// `check_target_module_exists` on a `LoraConfig` built from the case's config
    /// (`fixtures/gen/peft_targets_fixture.py`); lorakit must decide each the same way.
    #[test]
    fn selection_equals_peft_on_every_recorded_case() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/peft_targets/cases.json"
        );
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = doc["cases"].as_array().unwrap();
        assert!(
            cases.len() >= 20,
            "too few recorded configs: {}",
            cases.len()
        );
        let (mut yes, mut no, mut wrong) = (0, 0, Vec::new());
        for c in cases {
            let t = Targets::parse(c["config"].as_object().unwrap()).unwrap();
            for (key, want) in c["keys"].as_object().unwrap() {
                let want = want.as_bool().unwrap();
                if want {
                    yes += 1
                } else {
                    no += 1
                }
                if t.selects(key) != want {
                    wrong.push(format!("{} on {key}: PEFT {want}", c["config"]));
                }
            }
        }
        assert!(
            yes >= 20 && no >= 20,
            "cases must select and reject: {yes} / {no}"
        );
        assert!(
            wrong.is_empty(),
            "{} disagreements:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }

    #[test]
    fn wrong_json_types_are_errors_and_python_only_regexes_select_everything() {
        let cfg = |v: Value| v.as_object().unwrap().clone();
        assert!(Targets::parse(&cfg(serde_json::json!({"target_modules": 5}))).is_err());
        assert!(Targets::parse(&cfg(serde_json::json!({"target_modules": ["q", 1]}))).is_err());
        assert!(Targets::parse(&cfg(serde_json::json!({"layers_to_transform": "0"}))).is_err());
        // Look-ahead is Python-only: undecidable, so nothing is refused.
        let t = Targets::parse(&cfg(
            serde_json::json!({"target_modules": r".*(?!v_proj)q_proj"}),
        ))
        .unwrap();
        assert!(t.selects("model.layers.0.mlp.down_proj"));
        let t = Targets::parse(&cfg(serde_json::json!({"target_modules": ["q_proj"]}))).unwrap();
        assert!(!t.selects("model.layers.0.mlp.down_proj"));
        // What Python's `re` refuses too is an error (each checked with `re.compile`, Python
        // 3.11); a backreference and `{` as a literal are Python-valid.
        for bad in ["(q_proj", "q_proj)", "[q", "*q", "a{3,2}", "q\\"] {
            let e = Targets::parse(&cfg(serde_json::json!({ "target_modules": bad })));
            assert!(e.is_err_and(|e| e.contains("not a valid regex")), "{bad}");
        }
        // What the `regex` crate parses but Python's `re` refuses (round 11).
        for bad in [
            "q_proj{1}{1}",
            ".*q_proj**",
            ".*q_pro*?+j",
            ".*q_proj\\z",
            ".*\\pL_proj",
            ".*(?<n>q)_proj",
            "(?U).*q_proj",
            ".*(?-u:q)_proj",
            ".*\\x{71}_proj",
            ".{1000}{1000}",
            ".*(?i)q_proj",
            "(?-i).*q_proj",
            // Assertions to the crate, literal characters to Python (review of round 11).
            ".*\\<q_proj",
            ".*q_proj\\>",
            ".*q_proj\\b{end}",
            "\\b{start}.*q_proj",
        ] {
            let e = Targets::parse(&cfg(serde_json::json!({ "target_modules": bad })));
            assert!(e.is_err_and(|e| e.contains("not a valid regex")), "{bad}");
        }
        for ok in [
            r"(q)_proj\1",
            "{",
            "q_proj(?=x)",
            ".*q_proj*+",
            "(?i).*Q_PROJ",
            "(?P<n>q)_proj",
            "\\A.*q_proj{2}?",
            "(?s:.)*q_proj",
            "\\b.*q_proj\\b",
            "^.*\\Bq_proj$",
        ] {
            assert!(
                Targets::parse(&cfg(serde_json::json!({ "target_modules": ok }))).is_ok(),
                "{ok}"
            );
        }
    }
}
