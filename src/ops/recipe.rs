//! Recipes: a TOML file of named steps (any lorakit command: extract, resize, combine, convert,
//! merge, eval, diff, …) whose inputs are files or earlier steps' outputs, validated as a whole
//! before any work starts, and rerun incrementally.
//!
//! ```toml
//! [[step]]
//! name = "merged"
//! command = "merge"
//! base = "fixtures/llama/base"
//! adapter = ["fixtures/llama/adapters/qv_r8"]
//! out = "out/merged"
//!
//! [[step]]
//! name = "check"
//! command = "diff"
//! a = "${merged.out}"
//! b = "fixtures/llama/base"
//! tolerance = 10.0
//! ```
//!
//! Each step's keys are the command's options (`base` is `--base`, lists repeat the flag,
//! `true` is a bare flag) or its positional arguments by name (`a`, `b`, `path`, `adapter` for
//! commands that take it positionally); `${step.key}` refers to an earlier step's value.
//! Validation parses every step with the command's own argument parser, checks that every input
//! path exists or is produced by an earlier step, and, for merges whose inputs exist, builds the
//! whole merge plan (adapter ↔ base matching). A step is skipped when its output exists and its
//! provenance record (`OUT.lorakit-step.json`, or `OUT/.lorakit-step.json` for folders) matches:
//! the same command line, the same input files with the same BLAKE3 content hashes (so touching
//! or copying an input does not rerun, editing one does), and output files with the sizes and
//! mtimes recorded when the step finished (an edited output is rewritten). `--trust-mtime` takes
//! an input whose size and mtime match the record as unchanged without rehashing it (for very
//! large checkpoints); `--force` runs everything. Steps that share one output — the parts of a
//! `--part I/N` command and the `finalize` step that joins them — each keep their own record
//! (`.lorakit-step-part-I-of-N.json`, `.lorakit-step-finalize.json`) and own only the files they
//! created or rewrote; `finalize` reads its output (every file there but its own, the parts'
//! hidden manifests included), so parts that ran again make it run again.
//!
//! Must not print or parse a command line itself: steps are parsed, checked, run and reported
//! through the [`Commands`] the front end implements (the binary's runs every step through the same
//! parser and args → options code as a command typed by hand).

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod provenance;
mod step;
pub use provenance::Rerun;
use provenance::*;
pub use step::{Share, Step};

/// What a recipe needs from the command line whose steps it runs. `commands/` implements it
/// over clap; this module never sees clap, so recipes, commands and the parser form no cycle.
/// A step is validated and run through the same parser and the same args → options code as
/// the command typed by hand.
pub trait Commands {
    /// The ids of `command`'s positional arguments, in order; `None` when there is no such
    /// command.
    fn positionals(&self, command: &str) -> Option<Vec<String>>;
    /// Parses a whole command line (`lorakit CMD …`) as the command would; `Err` is the
    /// parser's message.
    fn check(&self, argv: &[String]) -> Result<(), String>;
    /// The bytes a step will write, where that is known before it runs (merges, by planning
    /// them in full, which also validates adapter ↔ base matching).
    fn bytes_written(&self, argv: &[String]) -> Result<Option<u64>>;
    /// Runs a command line, silenced when `quiet`; its exit status.
    fn run(&self, argv: &[String], quiet: bool) -> Result<i32>;
    /// Reports a step's progress (`[name] up to date, skipped`, …) where the front end puts
    /// status lines; this module never prints.
    fn status(&self, line: &str);
}

/// Option names that name inputs (checked to exist before anything runs).
const INPUT_KEYS: &[&str] = &[
    "base",
    "adapter",
    "tuned",
    "model",
    "a",
    "b",
    "path",
    "data",
    "eval-data",
    "text",
    "input-ids",
];

/// A step's line in `--dry-run`.
#[derive(Debug, Serialize)]
pub struct PlannedStep {
    pub name: String,
    pub command: String,
    pub argv: Vec<String>,
    /// `run`, or `skip` (output up to date).
    pub action: &'static str,
    /// Why a step runs (`no output yet`, `options changed`, `PATH changed`, …); `null` when
    /// skipped.
    pub reason: Option<String>,
    pub bytes_read: u64,
    /// Known for merges; `null` where it depends on the data.
    pub bytes_written: Option<u64>,
}

/// Parses and validates a recipe. Nothing is written.
pub fn load(path: &Path, commands: &dyn Commands) -> Result<Vec<Step>> {
    let text = String::from_utf8(crate::io::read_json_file(path)?)
        .map_err(|_| crate::error::InputError::invalid(path, "not UTF-8 text"))?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|r| text[..r.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        crate::error::InputError::invalid(
            path,
            format!("not valid TOML at line {line}: {}", e.message().trim()),
        )
    })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let steps = doc
        .get("step")
        .and_then(|v| v.as_array())
        .ok_or_else(|| crate::error::InputError::invalid(path, "no [[step]] tables"))?;
    let mut out: Vec<Step> = Vec::new();
    let mut values: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (i, s) in steps.iter().enumerate() {
        let t = s.as_table().ok_or_else(|| {
            crate::error::InputError::invalid(path, format!("step {}: not a table", i + 1))
        })?;
        let bad = |m: String| crate::error::InputError::invalid(path, m);
        let name = t
            .get("name")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(format!("step {}: missing `name`", i + 1)))?
            .to_owned();
        if values.contains_key(&name) || name.is_empty() || name.contains(['.', '$', '{', '}']) {
            bail!(bad(format!(
                "step `{name}`: names must be unique and plain"
            )));
        }
        let command = t
            .get("command")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(format!("step `{name}`: missing `command`")))?
            .to_owned();
        if command == "run" {
            bail!(bad(format!("step `{name}`: recipes cannot run recipes")));
        }
        let positional: Vec<String> = commands
            .positionals(&command)
            .ok_or_else(|| bad(format!("step `{name}`: unknown command `{command}`")))?;
        let mut flags: Vec<String> = Vec::new();
        let mut pos: BTreeMap<usize, String> = BTreeMap::new();
        let mut mine: BTreeMap<String, String> = BTreeMap::new();
        let mut inputs = Vec::new();
        for (k, v) in t {
            if k == "name" || k == "command" {
                continue;
            }
            let items: Vec<&toml::Value> = match v {
                toml::Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            let mut rendered = Vec::new();
            for item in items {
                let raw = match item {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(n) => n.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    _ => bail!(bad(format!(
                        "step `{name}`: `{k}` must be a string, number, boolean or a list of them"
                    ))),
                };
                rendered.push(
                    substitute(&raw, &values).map_err(|e| bad(format!("step `{name}`: {e}")))?,
                );
            }
            let flag = k.replace('_', "-");
            let is_input = INPUT_KEYS.contains(&flag.as_str());
            if let Some(p) = positional
                .iter()
                .position(|id| id == k || id.replace('_', "-") == flag)
            {
                let v = rendered.first().cloned().unwrap_or_default();
                if is_input || p == 0 {
                    inputs.push(resolve(&base_dir, &v));
                }
                pos.insert(p, resolve_if_path(&base_dir, &flag, &v));
                mine.insert(k.clone(), v);
                continue;
            }
            for r in &rendered {
                if r == "true" && matches!(v, toml::Value::Boolean(_)) {
                    flags.push(format!("--{flag}"));
                } else if r == "false" && matches!(v, toml::Value::Boolean(_)) {
                } else {
                    let val = resolve_if_path(&base_dir, &flag, r);
                    if is_input {
                        inputs.push(val.clone());
                    }
                    flags.push(format!("--{flag}"));
                    flags.push(val);
                }
            }
            mine.insert(k.clone(), rendered.join(","));
        }
        let mut argv = vec!["lorakit".to_string(), command.clone()];
        argv.extend(pos.into_values());
        argv.extend(flags);
        commands.check(&argv).map_err(|msg| {
            let first = msg
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim()
                .to_owned();
            bad(format!("step `{name}` ({command}): {first}"))
        })?;
        let out_val = mine.get("out").map(|o| resolve(&base_dir, o));
        if let Some(o) = &out_val {
            mine.insert("out".into(), o.clone());
        }
        values.insert(name.clone(), mine);
        let share = Share::of(&command, &argv);
        out.push(Step {
            name,
            command,
            argv,
            inputs,
            out: out_val,
            share,
        });
    }
    // Every input exists now or is an earlier step's output.
    for (i, s) in out.iter().enumerate() {
        for inp in &s.inputs {
            if !written_before(&out, i, inp) && !Path::new(inp).exists() {
                bail!(crate::error::InputError::invalid(
                    path,
                    format!(
                        "step `{}`: input `{inp}` does not exist and no earlier step writes it",
                        s.name
                    )
                ));
            }
        }
        if let (Some(o), false) = (&s.out, s.share == Share::Finalize) {
            if s.inputs.iter().any(|inp| inp == o) {
                bail!(crate::error::InputError::invalid(
                    path,
                    format!("step `{}`: output `{o}` is also an input", s.name)
                ));
            }
        }
    }
    check_outputs(path, &out)?;
    Ok(out)
}

/// Whether a step before step `i` writes `inp` (its output is `inp` or a folder holding it).
fn written_before(steps: &[Step], i: usize, inp: &str) -> bool {
    steps[..i].iter().any(|p| {
        p.out
            .as_deref()
            .is_some_and(|o| Path::new(inp).starts_with(o))
    })
}

/// Every step's output against the recipe's inputs (the recipe itself and every step's input
/// that no earlier step writes, whichever step reads it) and against the other steps'
/// outputs, by where each path resolves (`..`, symlinks). Each command refuses to write onto
/// its *own* inputs when it runs; this also refuses a later step overwriting a file an
/// earlier step read (the recipe could never be rerun), two steps writing one output, and a
/// path no file system can hold (a NUL byte), before any step runs and in `--dry-run` too.
fn check_outputs(path: &Path, steps: &[Step]) -> Result<()> {
    let bad = |m: String| crate::error::InputError::invalid(path, m);
    let place = |p: &Path| crate::io::writer::resolved_target(p);
    for s in steps {
        let nul = s.argv.iter().find(|a| a.contains('\0'));
        if let Some(a) = nul {
            bail!(bad(format!(
                "step `{}`: `{}` contains a NUL byte",
                s.name,
                a.escape_debug()
            )));
        }
    }
    let mut reads: Vec<(PathBuf, String)> = place(path)
        .map(|c| (c, path.display().to_string()))
        .into_iter()
        .collect();
    for (i, s) in steps.iter().enumerate() {
        for inp in &s.inputs {
            let produced = written_before(steps, i, inp);
            // `finalize OUT` reads the output it completes.
            let own = s.share == Share::Finalize && s.out.as_ref() == Some(inp);
            if let (false, false, Some(c)) = (produced, own, place(Path::new(inp))) {
                reads.push((c, inp.clone()));
            }
        }
    }
    // `--part I/N` of one step: parts I ≠ J of the same N write their own part files into
    // one output folder and one `finalize` joins them, so they share an output legitimately.
    let mut written: Vec<(PathBuf, &Step)> = Vec::new();
    for s in steps {
        let Some(c) = s.out.as_deref().and_then(|o| place(Path::new(o))) else {
            continue;
        };
        let o = s.out.as_deref().unwrap_or_default();
        if let Some((_, r)) = reads.iter().find(|(r, _)| *r == c) {
            bail!(bad(format!(
                "step `{}`: output `{o}` is also an input of the recipe (`{r}`)",
                s.name
            )));
        }
        // A step's record lists every file of its output folder, so a folder holding an input
        // (`out = "/"`, `"."`, a parent of the base) would record the inputs as its output and
        // walk everything below it on each run.
        let own_inputs = s
            .inputs
            .iter()
            .filter_map(|i| place(Path::new(i)).map(|p| (p, i)));
        if let Some((_, r)) = reads
            .iter()
            .map(|(p, r)| (p.clone(), r))
            .chain(own_inputs)
            .find(|(r, _)| r != &c && r.starts_with(&c))
        {
            bail!(bad(format!(
                "step `{}`: output `{o}` is a folder that holds an input (`{r}`); give the step a folder of its own",
                s.name
            )));
        }
        let other_parts = |t: &Step| match (t.share, s.share) {
            (Share::Part(i, n), Share::Part(j, m)) => n == m && i != j && t.command == s.command,
            (Share::Part(..), Share::Finalize) | (Share::Finalize, Share::Part(..)) => true,
            _ => false,
        };
        if let Some((_, other)) = written.iter().find(|(w, t)| *w == c && !other_parts(t)) {
            bail!(bad(format!(
                "steps `{}` and `{}` write the same output `{o}`",
                other.name, s.name
            )));
        }
        written.push((c, s));
    }
    Ok(())
}

/// `${step.key}` substitution.
fn substitute(
    raw: &str,
    values: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<String, String> {
    let mut s = raw.to_owned();
    while let Some(start) = s.find("${") {
        let end = s[start..]
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{raw}`"))?
            + start;
        let key = &s[start + 2..end];
        let (step, field) = key
            .split_once('.')
            .ok_or_else(|| format!("`${{{key}}}` must be `${{step.key}}`"))?;
        let v = values
            .get(step)
            .ok_or_else(|| {
                format!("`${{{key}}}` refers to `{step}`, which is not an earlier step")
            })?
            .get(field)
            .ok_or_else(|| format!("step `{step}` has no `{field}`"))?;
        s.replace_range(start..=end, v);
    }
    Ok(s)
}

/// `p` relative to the recipe's folder, made absolute so that a value passed on through
/// `${step.key}` resolves to the same path again.
fn resolve(base: &Path, p: &str) -> String {
    let pb = Path::new(p);
    let joined = if pb.is_absolute() {
        pb.to_path_buf()
    } else {
        base.join(pb)
    };
    std::path::absolute(&joined)
        .unwrap_or(joined)
        .display()
        .to_string()
}

/// Relative paths in a recipe are relative to the recipe's folder.
fn resolve_if_path(base: &Path, flag: &str, v: &str) -> String {
    if INPUT_KEYS.contains(&flag) || matches!(flag, "out" | "logits" | "plot") {
        resolve(base, v)
    } else {
        v.to_owned()
    }
}

/// The plan as `--dry-run` prints it. Merges whose inputs exist are fully planned (which also
/// validates adapter ↔ base matching).
pub fn plan(steps: &[Step], rerun: Rerun, commands: &dyn Commands) -> Result<Vec<PlannedStep>> {
    let mut v = Vec::new();
    let mut runs = vec![false; steps.len()];
    for (i, s) in steps.iter().enumerate() {
        let why = why_run(i, steps, rerun, &runs);
        runs[i] = why.is_some();
        if why.is_some() {
            finalize_has_parts(s, steps).with_context(|| format!("step `{}`", s.name))?;
        }
        let bytes_written = if s.inputs.iter().all(|i| Path::new(i).exists()) {
            commands
                .bytes_written(&s.argv)
                .with_context(|| format!("step `{}`", s.name))?
        } else {
            None
        };
        v.push(PlannedStep {
            name: s.name.clone(),
            command: s.command.clone(),
            argv: s.argv.clone(),
            action: if why.is_none() { "skip" } else { "run" },
            reason: why,
            bytes_read: bytes_of(&s.inputs),
            bytes_written,
        });
    }
    Ok(v)
}

/// A `finalize` step that will run on an existing output no step of the recipe writes parts
/// into: refused in the plan, as `finalize` refuses it when it runs, when that output holds no
/// part manifest or extract part file (a `--dry-run` said "run" for a step sure to fail).
fn finalize_has_parts(s: &Step, steps: &[Step]) -> Result<()> {
    use crate::parts::SplitOutput;
    let Some(o) = s.out.as_deref().map(Path::new) else {
        return Ok(());
    };
    let parts_here = |t: &Step| matches!(t.share, Share::Part(..)) && t.out == s.out;
    if s.share != Share::Finalize || !o.exists() || steps.iter().any(parts_here) {
        return Ok(());
    }
    if crate::parts::has_merge_manifests(o) || !crate::parts::find_extract_parts(o).is_empty() {
        return Ok(());
    }
    let parts = crate::parts::MergeParts { dir: o.into() };
    Err(parts.none_found().into())
}

/// Runs the steps in order, skipping up-to-date ones; stops at the first failure. A step whose
/// command exits 1 (a failed `diff`) stops the recipe with status 1.
pub fn run(steps: &[Step], rerun: Rerun, quiet: bool, commands: &dyn Commands) -> Result<i32> {
    let mut ran = vec![false; steps.len()];
    for (i, s) in steps.iter().enumerate() {
        let why = why_run(i, steps, rerun, &ran);
        let Some(why) = why else {
            if !quiet {
                commands.status(&format!("[{}] up to date, skipped", s.name));
            }
            continue;
        };
        if !quiet {
            commands.status(&format!("[{}] ({why}) {}", s.name, s.argv[1..].join(" ")));
        }
        let before: Vec<FileRecord> = match &s.out {
            Some(o) if s.share != Share::Whole => output_files(Path::new(o))
                .iter()
                .filter_map(|f| record(f, false).ok())
                .collect(),
            _ => Vec::new(),
        };
        let code = commands
            .run(&s.argv, quiet)
            .with_context(|| format!("step `{}` ({})", s.name, s.command))?;
        if code != 0 {
            if !quiet {
                commands.status(&format!("[{}] exited with status {code}; stopping", s.name));
            }
            return Ok(code);
        }
        ran[i] = true;
        if let Some(o) = &s.out {
            let o = Path::new(o);
            if o.exists() {
                let mut text = serde_json::to_string_pretty(&provenance(s, o, &before)?)?;
                text.push('\n');
                let p = provenance_path(s, o);
                let mut out = crate::io::Output::new();
                out.small_file(&p, text.as_bytes())?;
                out.commit()?;
            }
        }
    }
    Ok(0)
}
