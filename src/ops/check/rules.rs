//! The loaders' rules, as data: one [`Rule`] per (target, condition), each with the file and
//! version of the loader it was read from. The engine in [`super`] evaluates every [`When`] once and
//! fires the rules of the requested targets; nothing here computes anything.
//!
//! Severity says what the loader does when the condition holds:
//! [`Severity::Error`] — it refuses the adapter (an exception, a non-zero exit);
//! [`Severity::Silent`] — it loads, but part of the adapter is not applied, or applied with another
//! scale, without failing (the no-op case); [`Severity::Warning`] — it loads and applies
//! everything, given a server setting or a note the user must know about.
//!
//! The tables: `rules/serving.rs` (vLLM, SGLang) and `rules/others.rs` (the rest), split to keep
//! files under 800 lines; what one rule is, `rules/rule.rs`, which both tables import.
//!
//! Versions: vLLM 0.34.0 (commit 62d4bc3c7) and SGLang 0.5.23, the released packages (see
//! `rules/serving.rs` for why not a stored GitHub copy); LoRAX at `predibase/lorax` a7394ba
//! (2026-05-28); llama.cpp as vendored by the llama-cpp-python 0.3.36 sdist (`vendor/llama.cpp`);
//! diffusers 0.42.1 and PEFT 0.21.2
//! are the installed packages the fixtures were made with (`fixtures/gen/requirements.txt`),
//! and their verdicts on the fixtures are recorded by `fixtures/gen/check_fixtures.py`;
//! ComfyUI `comfy/lora.py` at 41444b5, `comfy/weight_adapter/lora.py` at 6fd406f.

use super::target::Target;

pub use super::when::{ScaleRule, Severity, Supported, When};
pub(crate) use rule::LLAMA_LINEAR;
pub use rule::{Rule, Source};

mod diffusers;
mod llamacpp_archs;
mod others;
mod rule;
mod serving;

/// Every rule lorakit knows, in report order (per target, errors first).
pub const RULES: &[&[Rule]] = &[serving::RULES, others::RULES, diffusers::RULES];

/// The rules of one target, in table order.
pub fn for_target(t: Target) -> impl Iterator<Item = &'static Rule> {
    RULES
        .iter()
        .flat_map(|table| table.iter())
        .filter(move |r| r.target == t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are unique and spelled `{target}.{what}`; every rule says where it was read; every
    /// target has rules.
    #[test]
    fn the_table_is_well_formed() {
        let mut ids = std::collections::BTreeSet::new();
        for r in RULES.iter().flat_map(|table| table.iter()) {
            assert!(ids.insert(r.id), "duplicate rule id {}", r.id);
            let (t, what) = r.id.rsplit_once('.').unwrap();
            assert_eq!(t, r.target.name(), "{}", r.id);
            assert!(!what.is_empty());
            assert!(!r.why.is_empty() && !r.why.ends_with('.'), "{}", r.id);
            let s = r.source;
            assert!(
                s.repo.contains('/')
                    && !s.file.is_empty()
                    && !s.version.is_empty()
                    && !s.at.is_empty(),
                "{}",
                r.id
            );
        }
        for t in Target::ALL {
            assert!(for_target(t).count() > 0, "{t:?} has no rules");
        }
        // The serving stacks and llama.cpp were re-read from pinned sources: every rule cites
        // a `file.py:line` (or `.cpp`/`.h`), not only a function.
        let cites_a_line = |at: &str| {
            at.split([' ', ';', ',', '(']).any(|w| {
                w.split_once(':').is_some_and(|(file, line)| {
                    file.contains('.') && line.starts_with(|c: char| c.is_ascii_digit())
                })
            })
        };
        for t in [
            Target::Vllm,
            Target::Sglang,
            Target::Lorax,
            Target::LlamaCpp,
        ] {
            for r in for_target(t) {
                assert!(cites_a_line(r.source.at), "{}: {}", r.id, r.source.at);
            }
        }
    }
}
