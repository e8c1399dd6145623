//! `lorakit check`: args → options → plan → run (→ fix → check again) → print.
//!
//! It holds no rule: the peers' rules and the verdicts live in `ops/check/`; this file only
//! maps flags and prints.

use super::printer;
use crate::cli::CheckArgs;
use crate::ops::check::fix::{self, FixForm, FixOptions, FixReport};
use crate::ops::check::{Options, Plan, Report, Target, TargetReport};
use anyhow::Result;

/// The JSON of `check --fix`: the report of the input, what was written, and the report of the
/// fixed adapter.
#[derive(serde::Serialize)]
struct Fixed<'a> {
    #[serde(flatten)]
    before: &'a Report,
    fix: &'a FixReport,
    after: &'a Report,
}

pub fn run(a: CheckArgs, quiet: bool) -> Result<i32> {
    if a.drop_unmatched && a.base.is_none() {
        anyhow::bail!("--drop-unmatched needs --base (unmatched means: lands on no base tensor)");
    }
    let opts = Options {
        targets: a.targets.clone(),
        base: a.base.clone(),
    };
    let plan = Plan::new(&a.adapter, &opts)?;
    let report = plan.run();
    if !a.fix {
        printer::print_report(a.json, "check", &report, || render(&report))?;
        return Ok(if report.pass { 0 } else { 1 });
    }
    if let Some(why) = &report.unread {
        anyhow::bail!(
            "{}: --fix rewrites the adapter's weights, which lorakit cannot read: {why}",
            report.adapter
        );
    }
    let bundled = printer::bundled_warning(&plan.adapter);
    let out = a.out.clone().expect("clap: --fix requires --out");
    let fix_opts = FixOptions {
        out: out.clone(),
        drop_unmatched: a.drop_unmatched,
        dora_rank: a.dora_rank,
        saved: crate::ops::check::saved::SavedOptions {
            tokens: a.saved_tokens,
            rank: a.saved_rank,
        },
        // Only the diffusion loaders asked for: the kohya single file both read.
        form: if plan
            .targets
            .iter()
            .all(|t| matches!(t, Target::Diffusers | Target::Comfy))
        {
            FixForm::Kohya
        } else {
            FixForm::Peft
        },
        lower_rank: a.lower_rank,
        tolerance: a.tolerance,
    };
    fix_opts.validate()?;
    match fix_opts.form {
        FixForm::Peft if a.lower_rank.is_some() => anyhow::bail!(
            "--lower-rank applies when every --target is diffusers or comfy (the fix is then a kohya file)"
        ),
        FixForm::Kohya if a.saved_tokens || a.saved_rank.is_some() || a.dora_rank.is_some() => {
            anyhow::bail!(
                "--saved-tokens, --saved-rank and --dora-rank apply to PEFT fixes (a target other than diffusers and comfy)"
            )
        }
        _ => {}
    }
    let targets = plan.targets.clone();
    let fixed = fix::fix(plan, &report, &fix_opts)?;
    if let Some(w) = bundled {
        printer::warn(quiet, &w);
    }
    let reread = Plan::new(
        &out,
        &Options {
            targets,
            base: a.base.clone(),
        },
    );
    let after = match reread {
        Ok(p) => p.run(),
        Err(e) => {
            // The fix wrote something lorakit itself cannot read: a lorakit bug, and an
            // output nobody can use, so it does not stay behind.
            let format = match fix_opts.form {
                FixForm::Peft => crate::adapter::Format::Peft,
                FixForm::Kohya => crate::adapter::Format::Kohya,
            };
            for f in format.layout().files(&out) {
                let _ = std::fs::remove_file(f);
            }
            if format == crate::adapter::Format::Peft {
                let _ = std::fs::remove_dir(&out);
            }
            anyhow::bail!("{e} (the fixed adapter does not read back, so it was removed; please report this as a lorakit bug)");
        }
    };
    if a.json {
        printer::print_json(
            "check",
            &Fixed {
                before: &report,
                fix: &fixed,
                after: &after,
            },
        )?;
    } else {
        let mut s = render(&report);
        s.push_str(&format!(
            "\nfixed adapter written to {} ({} bytes):\n",
            fixed.out, fixed.written.bytes
        ));
        for act in &fixed.actions {
            s.push_str(&format!("  - {act}\n"));
        }
        for l in &fixed.lowered {
            s.push_str(&format!(
                "    {} ({}): rank {}, ‖ΔW − B′A′‖_F = {:.3e} ({:.3e} relative)\n",
                l.module, l.algo, l.rank, l.fro_error, l.rel_fro_error
            ));
        }
        for d in &fixed.dora_to_lora {
            s.push_str(&format!(
                "    {}: rank {}, ‖D − B′A′‖_F = {:.3e} ({:.3e} relative)\n",
                d.module, d.rank, d.fro_error, d.rel_fro_error
            ));
        }
        s.push_str("\nafter --fix:\n");
        s.push_str(&render(&after));
        printer::print(&s)?;
    }
    Ok(if after.pass { 0 } else { 1 })
}

const SHOWN: usize = 6;

fn render(r: &Report) -> String {
    let mut s = format!(
        "adapter {} ({}, {}, {} modules{})\n",
        r.adapter,
        match r.format {
            crate::adapter::Format::Peft => "PEFT",
            crate::adapter::Format::Kohya => "kohya/LyCORIS",
            crate::adapter::Format::Mlx => "mlx-lm",
        },
        match r.kind {
            crate::ops::check::Kind::Llm => "causal LM",
            crate::ops::check::Kind::Other => "not a causal LM",
        },
        r.modules_count,
        if r.full_tensors_count > 0 {
            format!(", {} full tensors", r.full_tensors_count)
        } else {
            String::new()
        }
    );
    if let Some(why) = &r.unread {
        s.push_str(&format!(
            "weights not read: {why}\n  the verdicts below come from the rules on its config and tensor names only (no module placed or judged)\n"
        ));
    }
    if let Some(b) = r.base.as_ref().filter(|_| r.unread.is_none()) {
        let off: Vec<_> = r
            .modules
            .iter()
            .filter(|p| !matches!(p.status, "exact" | "rows") || !p.not_applied_by.is_empty())
            .collect();
        if off.is_empty() {
            s.push_str(&format!(
                "base {}: all {} modules land on their exact base tensor (or its rows), and every target applies them\n",
                b.path,
                r.modules.len()
            ));
        } else {
            s.push_str(&format!(
                "base {}: {} of {} modules do not land on their exact base tensor or are not applied by some target:\n",
                b.path,
                off.len(),
                r.modules.len()
            ));
            for p in off.iter().take(SHOWN * 2) {
                s.push_str(&format!(
                    "  {:<14} {}{}{}\n",
                    p.status,
                    p.module,
                    p.base_tensor
                        .as_ref()
                        .map(|t| format!(" → {t}"))
                        .unwrap_or_default(),
                    if p.not_applied_by.is_empty() {
                        String::new()
                    } else {
                        format!("  [not applied: {}]", p.not_applied_by.join(", "))
                    }
                ));
            }
            if off.len() > SHOWN * 2 {
                s.push_str(&format!(
                    "  … {} more (--json lists all)\n",
                    off.len() - SHOWN * 2
                ));
            }
        }
    }
    let mut not_eval: Vec<&str> = Vec::new();
    for t in &r.targets {
        s.push_str(&target_lines(t));
        not_eval.extend(t.not_evaluated.iter().copied());
    }
    if !not_eval.is_empty() {
        s.push_str(&format!(
            "not evaluated ({}): {}\n",
            if r.unread.is_some() {
                "they need the adapter's modules, which were not read"
            } else {
                "needs --base, or a Llama-family base for module lists"
            },
            not_eval.join(", ")
        ));
    }
    s.push_str(if r.pass && r.unread.is_some() {
        "PASS for the rules on its config and tensor names (its modules were not read: see above)\n"
    } else if r.pass && !not_eval.is_empty() {
        "PASS for every rule evaluated (some were not: see above)\n"
    } else if r.pass {
        "PASS: every target loads and applies every tensor\n"
    } else {
        "FAIL: some target refuses the adapter or does not apply all of it\n"
    });
    s
}

fn target_lines(t: &TargetReport) -> String {
    let mut s = format!("{:<10} {}", t.target.name(), t.verdict.label());
    if t.loads && !t.applies_all {
        s.push_str(" (loads without an error, but does not apply everything)");
    }
    s.push('\n');
    for f in &t.findings {
        let sev = match f.severity {
            crate::ops::check::rules::Severity::Error => "error",
            crate::ops::check::rules::Severity::Silent => "silent",
            crate::ops::check::rules::Severity::Warning => "warning",
        };
        s.push_str(&format!("  {sev:<7} {}: {}\n", f.rule, f.why));
        let shown: Vec<&str> = f.items.iter().take(SHOWN).map(String::as_str).collect();
        let more = f.items.len().saturating_sub(SHOWN);
        s.push_str(&format!(
            "          {}{}\n",
            shown.join(", "),
            if more > 0 {
                format!(" (+{more} more)")
            } else {
                String::new()
            }
        ));
        s.push_str(&format!("          read from {}\n", f.source));
    }
    s
}
