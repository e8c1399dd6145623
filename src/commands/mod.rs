//! One orchestrator per subcommand: turn parsed arguments into library plans, run them, and
//! print the report (stdout) — progress and warnings go to stderr.
//!
//! Must not hold library logic: what a Rust user of the library cannot do without this module is a
//! bug; words reach the terminal only through [`printer`].

pub mod check;
pub mod combine;
pub mod convert;
pub mod diff;
pub mod eval;
pub mod extract;
pub mod inspect;
pub mod merge;
mod options;
pub mod printer;
pub mod resize;
pub mod train;

use crate::cli::{Cli, Command};
use anyhow::Result;
use printer::print_always;
pub use printer::{print, print_json, print_report, status, warn};

/// The `operation` of the JSON a command line asked for with `--json` (the command's name, as
/// its report names it), or `None` without `--json`: a failed run then prints its error as that
/// one JSON object on stdout too ([`printer::print_error_json`]).
pub fn json_operation(cli: &Cli) -> Option<&'static str> {
    let (json, operation) = match &cli.command {
        Command::Inspect(a) => (a.json, "inspect"),
        Command::Merge(a) => (a.json, "merge"),
        Command::Dequantize(a) => (a.json, "dequantize"),
        Command::Extract(a) => (a.json, "extract"),
        Command::Resize(a) => (a.output.json, "resize"),
        Command::Combine(a) => (a.output.json, "combine"),
        Command::Convert(a) => (a.output.json, "convert"),
        Command::Eval(a) => (a.json, "eval"),
        Command::Train(a) => (a.json, "train"),
        Command::Diff(a) => (a.json, "diff"),
        Command::Check(a) => (a.json, "check"),
        Command::Finalize(a) => (a.json, "finalize"),
        Command::Run(a) => (a.json, "run"),
        Command::GpuInfo(a) => (a.json, "gpu"),
        Command::Completions(_) | Command::Man(_) => (false, ""),
    };
    json.then_some(operation)
}

/// Runs the parsed command line; the returned code is the process exit status on success
/// (1 = a check failed).
pub fn run(cli: Cli) -> Result<i32> {
    let quiet = cli.quiet;
    printer::set_quiet(quiet);
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Merge(a) => merge::run(a, quiet),
        Command::Dequantize(a) => merge::run_dequantize(a, quiet),
        Command::Extract(a) => extract::run(a, quiet),
        Command::Resize(a) => resize::run(a, quiet),
        Command::Combine(a) => combine::run(a, quiet),
        Command::Convert(a) => convert::run(a, quiet),
        Command::Eval(a) => eval::run(a, quiet),
        Command::Train(a) => train::run(a, quiet),
        Command::Diff(a) => diff::run(a),
        Command::Check(a) => check::run(a, quiet),
        Command::Run(a) => {
            let steps = crate::recipe::load(&a.recipe, &CliCommands)?;
            let rerun = crate::recipe::Rerun {
                force: a.force,
                trust_mtime: a.trust_mtime,
            };
            let plan = crate::recipe::plan(&steps, rerun, &CliCommands)?;
            if a.dry_run {
                print_report(a.json, "run", &plan, || {
                    crate::inspect::table_of(
                        &["step", "action", "reads", "writes", "command"],
                        &[false, false, true, true, false],
                        &plan,
                        |p| {
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
                        },
                    )
                })?;
                return Ok(0);
            }
            if !a.json {
                return crate::recipe::run(&steps, rerun, quiet, &CliCommands);
            }
            // One object on stdout: the plan and every step's report (none of them printed on
            // its own), or the error object when a step fails.
            let (code, reports) =
                printer::capture_reports(|| crate::recipe::run(&steps, rerun, quiet, &CliCommands));
            let code = code?;
            #[derive(serde::Serialize)]
            struct RunReport<'a, T: serde::Serialize> {
                items: &'a T,
                reports: Vec<serde_json::Value>,
                exit_code: i32,
            }
            let report = RunReport {
                items: &plan,
                reports,
                exit_code: code,
            };
            printer::print_json("run", &report)?;
            Ok(code)
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
            if !crate::merge::gguf_parts::find_manifests(&a.out).is_empty() {
                return merge::finalize_gguf(&a.out, a.json);
            }
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
            print_report(a.json, "finalize", &r, || {
                format!(
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
                )
            })?;
            Ok(0)
        }
        Command::GpuInfo(a) => gpu_info(a),
    }
}

fn gpu_info(a: crate::cli::GpuInfoArgs) -> Result<i32> {
    use crate::backend::gpu::{GpuContext, GpuError, GpuOptions};
    let ctx = match GpuContext::with_options(&GpuOptions {
        adapter: a.gpu_index,
        ..GpuOptions::default()
    }) {
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
    let adapters = crate::backend::gpu::list_adapters();
    if a.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            info: &'a crate::backend::gpu::GpuInfo,
            /// Every adapter, by the index `--gpu-index` takes.
            adapters: &'a [crate::backend::gpu::AdapterEntry],
        }
        print_json(
            "gpu",
            &Out {
                info: &info,
                adapters: &adapters,
            },
        )
    } else {
        let list: String = adapters
            .iter()
            .map(|e| {
                format!(
                    "  [{}] {} ({}, {}, vendor {:#06x}, pci {})\n",
                    e.index,
                    e.adapter.name,
                    e.adapter.backend,
                    e.adapter.device_type,
                    e.adapter.vendor,
                    match e.adapter.pci_bus_id.as_str() {
                        "" => "none reported",
                        id => id,
                    }
                )
            })
            .collect();
        print(&format!("adapters (--gpu-index)\n{list}"))?;
        let l = &info.limits;
        print(&format!(
            "adapter      {}\nbackend      {}\ndevice type  {}\ndriver       {} {}\nmax binding  {} (lorakit tiles above {})\nmax buffer   {}\nworkgroup    {} invocations, {} bytes shared\nfeatures     {}{}\nkernels      all compiled\n",
            info.adapter.name,
            info.adapter.backend,
            info.adapter.device_type,
            info.adapter.driver,
            info.driver_info,
            crate::inspect::human_bytes(l.max_storage_buffer_binding_size),
            crate::inspect::human_bytes(info.tile_binding_bytes),
            crate::inspect::human_bytes(l.max_buffer_size),
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_storage_size,
            if info.features.is_empty() {
                "none optional".to_owned()
            } else {
                info.features.join(", ")
            },
            info.subgroup_sizes
                .map(|[lo, hi]| format!(" (subgroup size {lo}–{hi})"))
                .unwrap_or_default(),
        ))
    }
    .map(|_| 0)
}

/// Recipe steps are command lines of this CLI: parsed by the same clap definitions and run by
/// [`run`], so a step is validated exactly as the command typed by hand would be.
struct CliCommands;

impl crate::recipe::Commands for CliCommands {
    fn positionals(&self, command: &str) -> Option<Vec<String>> {
        use clap::CommandFactory;
        let cli = Cli::command();
        let sub = cli.find_subcommand(command)?;
        Some(
            sub.get_positionals()
                .map(|a| a.get_id().to_string())
                .collect(),
        )
    }

    fn check(&self, argv: &[String]) -> Result<(), String> {
        use clap::Parser;
        Cli::try_parse_from(argv)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn bytes_written(&self, argv: &[String]) -> Result<Option<u64>> {
        use clap::Parser;
        match Cli::try_parse_from(argv) {
            // A safetensors merge, planned in full (which validates adapter ↔ base matching).
            Ok(Cli {
                command: Command::Merge(a),
                ..
            }) if !merge::writes_gguf(&a) => Ok(Some(merge::plan(&a, false)?.output_bytes())),
            // A merge into a GGUF base: planned (validated) in full, its size unknown until it
            // runs (the plan counts tensor bytes, not the header).
            Ok(Cli {
                command: Command::Merge(a),
                ..
            }) if crate::io::gguf::is_gguf(&a.base) => merge::gguf_check(&a).map(|()| None),
            _ => Ok(None),
        }
    }

    fn run(&self, argv: &[String], quiet: bool) -> Result<i32> {
        use clap::Parser;
        let mut cli = Cli::try_parse_from(argv)?;
        cli.quiet |= quiet;
        run(cli)
    }

    fn status(&self, line: &str) {
        printer::status(line);
    }
}
