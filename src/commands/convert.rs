//! `lorakit convert`: flags → [`ConvertOptions`] → the target's plan ([`ConvertPlan`], or
//! [`DiffusersPlan`] / [`GgufPlan`] for the single files with their own writers) → run →
//! printed report. `resize` and `combine` borrow its printing helpers (`files_line`, `num`,
//! `name_base_flag`).
//!
//! Must not: decide a conversion (the library does) or print outside `commands::printer`'s rules.

use super::printer;
use crate::adapter::Format;
use crate::cli::ConvertArgs;
use crate::inspect::{human_bytes, table_of};
use crate::ops::convert::{
    self, ConvertOptions, ConvertPlan, ConvertReport, ConvertTo, DiffusersPlan, GgufPlan,
    NameSource,
};
use crate::ops::output::Written;
use anyhow::Result;
use std::time::Instant;

/// `lorakit convert`: args → [`ConvertOptions`] → [`ConvertPlan`] → run → print. GGUF and
/// diffusers single files have their own plans.
pub fn run(a: ConvertArgs, quiet: bool) -> Result<i32> {
    let start = Instant::now();
    match a.to {
        ConvertTo::Diffusers | ConvertTo::Gguf => {
            let adapter = a.adapter.clone();
            let done = if a.to == ConvertTo::Gguf {
                gguf(a)
            } else {
                diffusers(a)
            };
            // After the run, so that a failed run's stderr stays its one error line.
            if done.is_ok() {
                printer::warn_bundled_at(quiet, std::slice::from_ref(&adapter));
            }
            return done;
        }
        _ => {}
    }
    let plan = ConvertPlan::new(options(&a)).map_err(name_base_flag)?;
    printer::warn_bundled(quiet, std::iter::once(plan.adapter()));
    let report = plan.run()?;
    if report.from == Format::Kohya && a.to == ConvertTo::Kohya
        || report.from == Format::Peft && a.to == ConvertTo::Peft
        || report.from == Format::Mlx && a.to == ConvertTo::Mlx
    {
        printer::warn(
            quiet,
            &format!(
                "{} is already {}; rewrote it",
                a.adapter.display(),
                report.from
            ),
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    if a.output.json {
        #[derive(serde::Serialize)]
        struct WithTime<'a> {
            #[serde(flatten)]
            report: &'a ConvertReport,
            seconds: f64,
        }
        printer::print_json(
            "convert",
            &WithTime {
                report: &report,
                seconds,
            },
        )?;
    } else {
        printer::print(&render(&report, seconds))?;
    }
    Ok(0)
}

/// The library options `a` asks for (every target takes the same).
fn options(a: &ConvertArgs) -> ConvertOptions {
    ConvertOptions {
        adapter: a.adapter.clone(),
        to: a.to,
        out: a.output.out.clone(),
        base: a.output.base.clone(),
        dtype: a.output.dtype,
        prefix: a.output.prefix.clone(),
    }
}

fn render(s: &ConvertReport, seconds: f64) -> String {
    let names = match s.names_from {
        NameSource::Adapter => String::new(),
        NameSource::Metadata => ", module paths from lorakit metadata".into(),
        NameSource::Base => format!(
            ", module paths from {}",
            s.base.as_deref().unwrap_or("the base")
        ),
    };
    let mut out = format!(
        "converted {} ({}) → {} ({}){names}{}\n\n",
        s.input,
        s.from,
        s.out,
        to_name(s.to),
        if s.config_restored {
            ", PEFT config restored"
        } else {
            ""
        }
    );
    let head_from = format!("module ({})", s.from);
    let head_to = format!("module ({})", to_name(s.to));
    out.push_str(&table_of(
        &[
            &head_from,
            &head_to,
            "algo",
            "rank",
            "alpha in",
            "alpha out",
            "scale",
        ],
        &[false, false, false, true, true, true, true],
        s.modules.iter(),
        |m| {
            vec![
                m.from.clone(),
                m.to.clone(),
                m.algo.to_string(),
                m.rank.to_string(),
                num(m.alpha_in),
                num(m.alpha_out),
                match m.folded {
                    // kohya folds a whole LoKr's scale into w1, mlx-lm a module's own scale
                    // into lora_b (its file has one scale).
                    Some(f) => format!(
                        "{} (folded into {})",
                        num(f),
                        if m.algo == crate::adapter::Algo::Lora {
                            "B"
                        } else {
                            "w1"
                        }
                    ),
                    None => num(m.scale),
                },
            ]
        },
    ));
    out.push_str(&format!(
        "\n{} modules, {} metadata entries kept, {} files, {} written in {:.2} s\n",
        s.modules.len(),
        s.metadata_kept_count,
        s.written.files.len(),
        human_bytes(s.written.bytes),
        seconds
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// Shared by resize, combine and convert.

/// The library's "the base model … is needed" error, with the flag that gives it named (the
/// library never names flags).
pub(crate) fn name_base_flag(e: crate::error::InputError) -> anyhow::Error {
    if e.to_string().ends_with(convert::NEEDS_BASE) {
        anyhow::anyhow!("{e} (give --base)")
    } else {
        e.into()
    }
}

/// [`name_base_flag`] for an error of any kind (an [`InputError`] among them).
///
/// [`InputError`]: crate::error::InputError
pub(crate) fn name_base_flag_any(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<crate::error::InputError>() {
        Ok(e) => name_base_flag(e),
        Err(e) => e,
    }
}

/// The target's name as `--to` spells it.
fn to_name(t: ConvertTo) -> &'static str {
    match t {
        ConvertTo::Peft => "peft",
        ConvertTo::Kohya => "kohya",
        ConvertTo::Gguf => "gguf",
        ConvertTo::Diffusers => "diffusers",
        ConvertTo::Lycoris => "lycoris",
        ConvertTo::Comfy => "comfy",
        ConvertTo::Mlx => "mlx",
    }
}

/// A number as in the tables: integers plainly, others with up to 6 significant digits.
pub(crate) fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        let s = format!("{x:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The files line of the text reports.
pub(crate) fn files_line(w: &Written, seconds: f64) -> String {
    format!(
        "{} files, {} written in {:.2} s",
        w.files.len(),
        human_bytes(w.bytes),
        seconds
    )
}

/// `convert --to diffusers`: [`DiffusersPlan`] → run → print.
fn diffusers(a: ConvertArgs) -> Result<i32> {
    let plan = DiffusersPlan::new(options(&a)).map_err(name_base_flag_any)?;
    let s = plan.run()?;
    if a.output.json {
        printer::print_json("convert", &s)?;
    } else {
        printer::print(&format!(
            "{} modules, {} written to {} in {:.2} s\n",
            s.module_count,
            human_bytes(s.written.bytes),
            s.out,
            s.seconds
        ))?;
    }
    Ok(0)
}

/// `convert --to gguf`: [`GgufPlan`] → run → print.
fn gguf(a: ConvertArgs) -> Result<i32> {
    let s = GgufPlan::new(options(&a))?.run()?;
    if a.output.json {
        printer::print_json("convert", &s)?;
    } else {
        let mut out = format!(
            "wrote {} (llama.cpp LoRA adapter, {}, alpha {}, {})\n\n",
            s.out, s.architecture, s.alpha, s.dtype
        );
        out.push_str(&table_of(
            &[
                "module",
                "tensor",
                "rank",
                "scale",
                "folded into B",
                "permuted",
            ],
            &[false, false, true, true, true, false],
            s.modules.iter(),
            |m| {
                vec![
                    m.from.clone(),
                    m.to.clone(),
                    m.rank.to_string(),
                    format!("{}", m.scale),
                    if m.folded == 1.0 {
                        "-".into()
                    } else {
                        format!("{:.6}", m.folded)
                    },
                    if m.permuted {
                        "q/k rows".into()
                    } else {
                        "-".into()
                    },
                ]
            },
        ));
        out.push_str(&format!(
            "\n{} modules, {} written in {:.2} s\n",
            s.modules.len(),
            human_bytes(s.written.bytes),
            s.seconds
        ));
        printer::print(&out)?;
    }
    Ok(0)
}
