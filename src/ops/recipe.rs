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
    fn of(command: &str, argv: &[String]) -> Share {
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
    fn record_tag(self) -> String {
        match self {
            Share::Whole => String::new(),
            Share::Part(i, n) => format!("-part-{i}-of-{n}"),
            Share::Finalize => "-finalize".into(),
        }
    }
}

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

/// The step's own provenance record: `OUT/.lorakit-step{tag}.json` for a folder,
/// `OUT.lorakit-step{tag}.json` beside a file, the tag naming a part (`-part-I-of-N`) or a
/// finalize (`-finalize`) so that steps sharing an output never read each other's record.
fn provenance_path(s: &Step, out: &Path) -> PathBuf {
    let name = format!(".lorakit-step{}.json", s.share.record_tag());
    if out.is_dir() {
        out.join(name)
    } else {
        let mut p = out.as_os_str().to_owned();
        p.push(&name[..]);
        PathBuf::from(p)
    }
}

/// A step's provenance record (of this or an older naming), never an input or output file.
fn is_record(f: &Path) -> bool {
    f.file_name()
        .is_some_and(|n| n.to_string_lossy().contains(".lorakit-step"))
}

/// Version of the provenance record.
const PROVENANCE_VERSION: u32 = 2;

/// What a finished step records beside its output: the command line, every input file with its
/// BLAKE3 content hash (and size and mtime, for `--trust-mtime`), and every output file's size
/// and mtime (an output edited since is rewritten).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
struct Provenance {
    version: u32,
    argv: Vec<String>,
    inputs: Vec<FileRecord>,
    outputs: Vec<FileRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
struct FileRecord {
    path: String,
    bytes: u64,
    mtime_ns: i128,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blake3: Option<String>,
}

/// How reruns decide that a step is up to date.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rerun {
    /// Run every step.
    pub force: bool,
    /// An input whose size and mtime match the record is taken as unchanged without hashing it.
    pub trust_mtime: bool,
}

fn stat(path: &Path) -> Result<(u64, i128)> {
    let m = std::fs::metadata(path).map_err(|e| crate::error::InputError::io(path, e))?;
    let mtime_ns = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    Ok((m.len(), mtime_ns))
}

/// BLAKE3 of a file's content, memory-mapped and hashed on the rayon pool.
fn content_hash(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path)
        .map_err(|e| crate::error::InputError::io(path, e))?;
    Ok(h.finalize().to_hex().to_string())
}

fn files_of(paths: &[String]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(Path::new(p), &mut files);
    }
    files.sort();
    files.dedup();
    files
}

fn record(path: &Path, hash: bool) -> Result<FileRecord> {
    let (bytes, mtime_ns) = stat(path)?;
    Ok(FileRecord {
        path: path.display().to_string(),
        bytes,
        mtime_ns,
        blake3: if hash {
            Some(content_hash(path)?)
        } else {
            None
        },
    })
}

/// The provenance of a step that has just run; `before`, its output's files as they were
/// before it ran.
fn provenance(s: &Step, out: &Path, before: &[FileRecord]) -> Result<Provenance> {
    let mut outputs: Vec<FileRecord> = output_files(out)
        .iter()
        .map(|f| record(f, false))
        .collect::<Result<_>>()?;
    if s.share != Share::Whole {
        // A step sharing its output owns the files it created or rewrote.
        outputs.retain(|r| !before.contains(r));
    }
    let own: Vec<&str> = outputs.iter().map(|r| r.path.as_str()).collect();
    let inputs = input_files(s, out, &own)
        .iter()
        .map(|f| record(f, true))
        .collect::<Result<_>>()?;
    Ok(Provenance {
        version: PROVENANCE_VERSION,
        argv: s.argv.clone(),
        inputs,
        outputs,
    })
}

/// The files of an output (a file, or a folder's visible files).
fn output_files(out: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    collect_files(out, &mut v);
    v.sort();
    v
}

/// The files a step reads. `finalize` reads its output: every file there, the parts' hidden
/// manifests and part files included (beside a file output: the hidden files next to it),
/// except the files it wrote itself (`own`) and provenance records, so that parts that ran
/// again since make it run again.
fn input_files(s: &Step, out: &Path, own: &[&str]) -> Vec<PathBuf> {
    if s.share != Share::Finalize {
        return files_of(&s.inputs);
    }
    let mut v = Vec::new();
    let beside = |d: &Path, v: &mut Vec<PathBuf>| {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let hidden = e.file_name().to_string_lossy().starts_with('.');
            if hidden && e.path().is_file() {
                v.push(e.path());
            }
        }
    };
    collect_files(out, &mut v);
    if out.is_dir() {
        beside(out, &mut v);
    } else if let Some(d) = out.parent() {
        beside(
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            &mut v,
        );
    }
    v.retain(|f| !is_record(f) && !own.contains(&f.display().to_string().as_str()));
    v.sort();
    v.dedup();
    v
}

/// Why step `i` must run ([`stale`]), where steps sharing one output (the parts of a
/// `--part I/N` command and their `finalize`) run together: `finalize` consumes the parts'
/// manifests, so a part run again alone (its record lost, corrupt or forged) would leave an
/// output its finalize can no longer join, and a finalize run again alone finds no parts.
/// `runs[j]` for `j < i`: whether step `j` ran (or, planning, will run); evaluated when the
/// step's turn comes, as an earlier step may just have rewritten its inputs.
fn why_run(i: usize, steps: &[Step], rerun: Rerun, runs: &[bool]) -> Option<String> {
    let s = &steps[i];
    stale(s, rerun).or_else(|| {
        let o = s.out.as_ref().filter(|_| s.share != Share::Whole)?;
        steps.iter().enumerate().find_map(|(j, t)| {
            let shared = j != i && t.share != Share::Whole && t.out.as_ref() == Some(o);
            let w = match j < i {
                true => runs[j].then(|| "runs".to_owned()),
                false => stale(t, rerun),
            };
            w.filter(|_| shared)
                .map(|w| format!("step `{}` of the same output {w}", t.name))
        })
    })
}

/// `None` when the step's output is up to date, else why it must run.
fn stale(s: &Step, rerun: Rerun) -> Option<String> {
    if rerun.force {
        return Some("forced".into());
    }
    let Some(o) = &s.out else {
        return Some("no output to check".into());
    };
    let o = Path::new(o);
    if !o.exists() {
        return Some("no output yet".into());
    }
    let Some(rec) = std::fs::read(provenance_path(s, o))
        .ok()
        .and_then(|t| serde_json::from_slice::<Provenance>(&t).ok())
        .filter(|p| p.version == PROVENANCE_VERSION)
    else {
        return Some("no provenance record".into());
    };
    if rec.argv != s.argv {
        return Some("options changed".into());
    }
    let own: Vec<&str> = rec.outputs.iter().map(|r| r.path.as_str()).collect();
    let files = input_files(s, o, &own);
    if files.len() != rec.inputs.len()
        || files
            .iter()
            .zip(&rec.inputs)
            .any(|(f, r)| f.display().to_string() != r.path)
    {
        return Some("the input files changed".into());
    }
    for (f, r) in files.iter().zip(&rec.inputs) {
        let Ok((bytes, mtime_ns)) = stat(f) else {
            return Some(format!("{} cannot be read", f.display()));
        };
        if bytes != r.bytes {
            return Some(format!("{} changed", f.display()));
        }
        if rerun.trust_mtime && mtime_ns == r.mtime_ns {
            continue;
        }
        match content_hash(f) {
            Ok(h) if Some(&h) == r.blake3.as_ref() => {}
            _ => return Some(format!("{} changed", f.display())),
        }
    }
    // A step sharing its output checks the files it wrote; any other, every file there.
    let outs = match s.share {
        Share::Whole => output_files(o),
        _ => rec.outputs.iter().map(|r| PathBuf::from(&r.path)).collect(),
    };
    if outs.len() != rec.outputs.len()
        || outs.iter().zip(&rec.outputs).any(|(f, r)| {
            f.display().to_string() != r.path || stat(f).ok() != Some((r.bytes, r.mtime_ns))
        })
    {
        return Some("the output was modified".into());
    }
    None
}

/// The visible files at or below `p`. A folder reached through a symlink below `p` is not
/// entered (a link to an ancestor would never end; a file reached through a link, as in a
/// Hugging Face cache snapshot, counts), and only regular files count (no FIFOs or devices,
/// which a stat or hash could block on).
fn collect_files(p: &Path, out: &mut Vec<PathBuf>) {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(p) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&path, out),
                Ok(t) if t.is_file() => out.push(path),
                Ok(t) if t.is_symlink() && path.metadata().is_ok_and(|m| m.is_file()) => {
                    out.push(path)
                }
                _ => {}
            }
        }
    }
    if p.is_dir() {
        walk(p, out);
    } else if p.metadata().is_ok_and(|m| m.is_file()) {
        out.push(p.to_path_buf());
    }
}

fn bytes_of(paths: &[String]) -> u64 {
    let mut files = Vec::new();
    for p in paths {
        collect_files(Path::new(p), &mut files);
    }
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
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
