//! A recipe's step as parsed ([`Step`]) and how it shares its output with other steps
//! ([`Share`]). Must not: read files or run anything.

use serde::Serialize;

/// One parsed step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: String,
    pub command: String,
    /// The command line, as run.
    pub argv: Vec<String>,
    pub inputs: Vec<String>,
    pub out: Option<String>,
    /// Whether the step writes its output alone or shares it.
    pub share: Share,
}

/// How a step shares its output with other steps of the recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Share {
    /// The step writes its whole output.
    Whole,
    /// `--part I/N`: the parts of one command write their files into one output.
    Part(usize, usize),
    /// `finalize OUT`: joins the parts in their output (which it also reads).
    Finalize,
}

impl Share {
    pub(super) fn of(command: &str, argv: &[String]) -> Share {
        if command == "finalize" {
            return Share::Finalize;
        }
        let v = argv.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix("--part=")
                .map(str::to_owned)
                .or_else(|| (a == "--part").then(|| argv.get(i + 1).cloned()).flatten())
        });
        match v.map(|v| crate::parts::parse_part(&v)) {
            Some(Ok((i, n))) => Share::Part(i, n),
            _ => Share::Whole,
        }
    }

    /// The tag of the step's own provenance record (`.lorakit-step{tag}.json`).
    pub(super) fn record_tag(self) -> String {
        match self {
            Share::Whole => String::new(),
            Share::Part(i, n) => format!("-part-{i}-of-{n}"),
            Share::Finalize => "-finalize".into(),
        }
    }
}
