//! One orchestrator per subcommand: turn parsed arguments into library plans, run them, and
//! print the report (stdout) — progress and warnings go to stderr.

pub mod combine;
pub mod convert;
pub mod diff;
pub mod eval;
pub mod extract;
pub mod inspect;
pub mod merge;
pub mod resize;
pub mod train;

use crate::cli::{Cli, Command};
use anyhow::Result;

/// Runs the parsed command line; the returned code is the process exit status on success
/// (1 = a check failed).
pub fn run(cli: Cli) -> Result<i32> {
    let quiet = cli.quiet;
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Merge(a) => merge::run(a, quiet),
        Command::Extract(a) => extract::run(a, quiet),
        Command::Resize(a) => resize::run(a, quiet),
        Command::Combine(a) => combine::run(a, quiet),
        Command::Convert(a) => convert::run(a, quiet),
        Command::Eval(a) => eval::run(a, quiet),
        Command::Train(a) => train::run(a, quiet),
        Command::Diff(a) => diff::run(a),
        Command::Run(a) => {
            let steps = crate::recipe::load(&a.recipe)?;
            let rerun = crate::recipe::Rerun {
                force: a.force,
                trust_mtime: a.trust_mtime,
            };
            let plan = crate::recipe::plan(&steps, rerun)?;
            if a.dry_run {
                if a.json {
                    print_json("run", &plan)?;
                } else {
                    let rows: Vec<Vec<String>> = plan
                        .iter()
                        .map(|p| {
                            vec![
                                p.name.clone(),
                                match &p.reason {
                                    Some(r) => format!("{} ({r})", p.action),
                                    None => p.action.to_string(),
                                },
                                crate::inspect::human_bytes(p.bytes_read),
                                p.bytes_written
                                    .map(crate::inspect::human_bytes)
                                    .unwrap_or_else(|| "?".into()),
                                p.argv[1..].join(" "),
                            ]
                        })
                        .collect();
                    print(&crate::inspect::table(
                        &["step", "action", "reads", "writes", "command"],
                        &rows,
                        &[false, false, true, true, false],
                    ))?;
                }
                return Ok(0);
            }
            crate::recipe::run(&steps, rerun, quiet)
        }
        Command::Completions(a) => {
            use clap::CommandFactory;
            let mut buf = Vec::new();
            clap_complete::generate(a.shell, &mut Cli::command(), "lorakit", &mut buf);
            print_always(&String::from_utf8_lossy(&buf))?;
            Ok(0)
        }
        Command::Man(m) => {
            use clap::CommandFactory;
            let mut buf = Vec::new();
            let top = Cli::command();
            let page = match &m.command {
                None => top,
                Some(name) => {
                    let sub = top.find_subcommand(name).cloned().ok_or_else(|| {
                        anyhow::anyhow!(
                            "no subcommand `{name}` (one of: {})",
                            top.get_subcommands()
                                .map(|c| c.get_name().to_owned())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?;
                    // clap names are 'static; this runs once per process.
                    sub.name(&*Box::leak(format!("lorakit-{name}").into_boxed_str()))
                }
            };
            clap_mangen::Man::new(page).render(&mut buf)?;
            print_always(&String::from_utf8_lossy(&buf))?;
            Ok(0)
        }
        Command::Finalize(a) => {
            let extract_parts = crate::parts::find_extract_parts(&a.out);
            if !extract_parts.is_empty() {
                if a.out.is_dir() && crate::parts::has_merge_manifests(&a.out) {
                    anyhow::bail!(crate::error::InputError::invalid(
                        &a.out,
                        "holds parts of both a merge and an extract; finalize them in separate folders"
                    ));
                }
                return extract::finalize(extract_parts, &a.out, a.json, quiet);
            }
            if !a.out.is_dir() {
                anyhow::bail!(crate::error::InputError::invalid(
                    &a.out,
                    "nothing to finalize: not a folder holding merge or extract parts, and no extract part files (.NAME.lorakit-extract-part-I-of-N.safetensors) beside it"
                ));
            }
            let r = crate::parts::finalize(&a.out)?;
            if a.json {
                print_json("finalize", &r)?;
            } else {
                print(&format!(
                    "finalized {}: {} parts, {} files checked ({}), index {}, copied {}\n",
                    r.out,
                    r.parts,
                    r.files_checked,
                    crate::inspect::human_bytes(r.bytes),
                    r.index.as_deref().unwrap_or("none"),
                    if r.copied.is_empty() {
                        "nothing".to_string()
                    } else {
                        r.copied.join(", ")
                    }
                ))?;
            }
            Ok(0)
        }
        Command::GpuInfo(a) => gpu_info(a),
    }
}

/// `-q/--quiet`: nothing but errors (and JSON a script asked for with `--json`).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes a text report to stdout, unless `--quiet`; a closed pipe (`| head`) is not an error.
pub fn print(s: &str) -> Result<()> {
    if QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    print_always(s)
}

/// Writes `s` to stdout whatever `--quiet` says (requested JSON, completions, man pages).
fn print_always(s: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Prints a report as JSON (always, even with `--quiet`). Every report is an object whose first
/// key is `operation` (the command that made it): a report that does not name its operation
/// gets `operation`, and a list becomes `{"operation": …, "items": […]}`. That key is the one
/// way a script tells reports apart; the README's JSON section lists the shared vocabulary.
pub fn print_json<T: serde::Serialize>(operation: &str, v: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(&with_operation(operation, serde_json::to_value(v)?))?;
    s.push('\n');
    print_always(&s)
}

fn with_operation(operation: &str, v: serde_json::Value) -> serde_json::Value {
    use serde_json::{Map, Value};
    let mut out = Map::new();
    match v {
        Value::Object(m) => {
            let own = m.get("operation").cloned();
            out.insert(
                "operation".into(),
                own.unwrap_or_else(|| Value::String(operation.into())),
            );
            out.extend(m.into_iter().filter(|(k, _)| k != "operation"));
        }
        other => {
            out.insert("operation".into(), Value::String(operation.into()));
            out.insert("items".into(), other);
        }
    }
    Value::Object(out)
}

/// A status line on stderr unless `--quiet`.
pub fn status(msg: &str) {
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{}", crate::error::one_line(msg));
    }
}

/// A warning on stderr unless quiet (one line, control characters escaped).
pub fn warn(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("warning: {}", crate::error::one_line(msg));
    }
}

fn gpu_info(a: crate::cli::GpuInfoArgs) -> Result<i32> {
    use crate::backend::gpu::{GpuContext, GpuError};
    let ctx = match GpuContext::new() {
        Ok(c) => c,
        Err(e @ GpuError::NoAdapter(_)) => {
            return Err(anyhow::Error::new(crate::error::InputError::invalid(
                "gpu",
                e.to_string(),
            )))
        }
        Err(e) => return Err(e.into()),
    };
    ctx.compile_all()?;
    let info = ctx.describe();
    if a.json {
        print_json("gpu", &info)
    } else {
        let l = &info.limits;
        print(&format!(
            "adapter      {}\nbackend      {}\ndevice type  {}\ndriver       {} {}\nmax binding  {} (lorakit tiles above {})\nmax buffer   {}\nworkgroup    {} invocations, {} bytes shared\nkernels      all compiled\n",
            info.name,
            info.backend,
            info.device_type,
            info.driver,
            info.driver_info,
            crate::inspect::human_bytes(l.max_storage_buffer_binding_size),
            crate::inspect::human_bytes(info.tile_binding_bytes),
            crate::inspect::human_bytes(l.max_buffer_size),
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_storage_size,
        ))
    }
    .map(|_| 0)
}
