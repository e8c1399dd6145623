//! The text form of an `inspect` report: aligned tables for people (the JSON form is the
//! report's `Serialize`). Must not compute anything the report does not hold: every figure
//! comes from [`Report`], built by the library's [`crate::inspect::InspectPlan`].

use crate::inspect::gguf::GgufReport;
use crate::inspect::{
    human_bytes, human_count, table_of, DtypeStats, QuantReport, Report, TensorRow,
};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The `--tensors` table of a checkpoint or a GGUF file; `kind` heads the type column.
fn render_tensors(s: &mut String, kind: &str, list: &[TensorRow]) {
    s.push('\n');
    s.push_str(&table_of(
        &["name", kind, "shape", "bytes", "file"],
        &[false, false, false, true, false],
        list.iter(),
        |t| {
            vec![
                t.name.clone(),
                t.dtype.clone(),
                format!("{:?}", t.shape),
                t.bytes.to_string(),
                t.file.clone(),
            ]
        },
    ));
}

/// The totals lines (tensors, parameters, bytes) and the per-type table that a checkpoint
/// and a GGUF file report alike; `kind` heads the type column ("dtype" or "type").
fn render_totals(
    s: &mut String,
    kind: &str,
    (tensors, parameters, bytes): (usize, u64, u64),
    dtypes: &BTreeMap<String, DtypeStats>,
) {
    let _ = writeln!(s, "tensors     {tensors}");
    let _ = writeln!(
        s,
        "parameters  {} ({})",
        parameters,
        human_count(parameters)
    );
    let _ = writeln!(s, "bytes       {} ({})", bytes, human_bytes(bytes));
    s.push('\n');
    s.push_str(&table_of(
        &[kind, "tensors", "parameters", "bytes"],
        &[false, true, true, true],
        dtypes.iter(),
        |(d, st)| {
            vec![
                d.clone(),
                st.tensor_count.to_string(),
                st.parameters.to_string(),
                human_bytes(st.bytes),
            ]
        },
    ));
}

/// The `layout      LAYOUT (N files)` line of a checkpoint or a GGUF model.
fn render_layout(s: &mut String, layout: &str, files: usize) {
    let _ = writeln!(
        s,
        "layout      {layout} ({files} file{})",
        if files == 1 { "" } else { "s" }
    );
}

fn render_quant(s: &mut String, q: &QuantReport) {
    let _ = writeln!(
        s,
        "\nquantized   {} weight{} ({} companion tensors)",
        q.tensors.len(),
        if q.tensors.len() == 1 { "" } else { "s" },
        q.companion_tensors
    );
    if let Some(cfg) = &q.config {
        let _ = writeln!(s, "quantization_config {cfg}");
    }
    for u in &q.unreadable {
        let _ = writeln!(s, "not read    {}", crate::error::one_line(u));
    }
    if !q.tensors.is_empty() {
        s.push('\n');
        s.push_str(&table_of(
            &["weight", "method", "bits", "blocks", "shape", "dequantized"],
            &[false, false, true, false, false, false],
            q.tensors.iter(),
            |t| {
                vec![
                    t.name.clone(),
                    t.method.clone(),
                    t.bits.to_string(),
                    t.blocks.clone(),
                    format!("{:?}", t.shape),
                    t.dtype.clone(),
                ]
            },
        ));
    }
}

/// Human-readable rendering: aligned tables.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    match r {
        Report::Checkpoint(c) => {
            let _ = writeln!(s, "checkpoint  {}", c.path);
            render_layout(&mut s, c.layout, c.files.len());
            render_totals(
                &mut s,
                "dtype",
                (c.tensor_count, c.parameters, c.bytes),
                &c.dtypes,
            );
            if !c.metadata.is_empty() {
                s.push_str("\nmetadata\n");
                for (k, v) in &c.metadata {
                    let _ = writeln!(s, "  {k} = {v}");
                }
            }
            if let Some(q) = &c.quantization {
                render_quant(&mut s, q);
            }
            if let Some(list) = &c.tensors {
                render_tensors(&mut s, "dtype", list);
            }
        }
        Report::Gguf(g) => s.push_str(&render_gguf(g)),
        Report::Adapter(a) => {
            let _ = writeln!(s, "adapter     {}", a.path);
            let _ = writeln!(s, "format      {}", a.format);
            if let Some(t) = &a.peft_type {
                let _ = writeln!(s, "peft type   {t}");
            }
            let c = &a.convention;
            let mut conv = c.naming.join(", ");
            if !c.prefixes.is_empty() {
                let _ = write!(conv, " names, prefixes {}", c.prefixes.join(", "));
            }
            let _ = writeln!(s, "convention  {conv}");
            if let Some(f) = c.family {
                let _ = writeln!(s, "family      {f}");
            }
            if let Some(b) = &a.base_model {
                let _ = writeln!(s, "base model  {b}");
            }
            let _ = writeln!(s, "modules     {}", a.modules.len());
            let _ = writeln!(
                s,
                "parameters  {} ({})",
                a.parameters,
                human_count(a.parameters as u64)
            );
            let _ = writeln!(s, "bytes       {} ({})", a.bytes, human_bytes(a.bytes));
            let _ = writeln!(s, "rslora      {}", a.use_rslora);
            let _ = writeln!(s, "dora        {}", a.dora);
            if !a.modules_to_save.is_empty() || !a.full_tensors.is_empty() {
                let _ = writeln!(s, "modules_to_save  {}", a.modules_to_save.join(", "));
                let _ = writeln!(s, "full tensors     {}", a.full_tensors.join(", "));
            }
            if !a.bundled_embeddings.is_empty() {
                let _ = writeln!(
                    s,
                    "bundled embeddings (not weight updates: left out by merge/convert)  {}",
                    a.bundled_embeddings.join(", ")
                );
            }
            let spectrum = a.modules.iter().any(|m| m.spectrum.is_some());
            let mut head = vec!["module", "algo", "kind", "rank", "alpha", "scale", "out×in"];
            if spectrum {
                head.extend(["‖ΔW‖F", "r90", "r99", "σ1", "σmin"]);
            }
            s.push('\n');
            let right: Vec<bool> = head.iter().enumerate().map(|(i, _)| i >= 3).collect();
            s.push_str(&table_of(&head, &right, a.modules.iter(), |m| {
                let mut flags = String::new();
                if m.fan_in_fan_out {
                    flags.push_str(" fifo");
                }
                if m.dora {
                    flags.push_str(" dora");
                }
                if m.bias {
                    flags.push_str(" bias");
                }
                let mut row = vec![
                    m.name.clone(),
                    m.algo.to_string(),
                    format!("{}{flags}", m.kind),
                    m.rank.to_string(),
                    format!("{}", m.alpha),
                    format!("{:.4}", m.scale),
                    // 0: a side the file does not give (OFT, IA3: taken from the base).
                    {
                        let side = |n: usize| {
                            if n == 0 {
                                "?".to_string()
                            } else {
                                n.to_string()
                            }
                        };
                        format!("{}×{}", side(m.shape[0]), side(m.shape[1]))
                    },
                ];
                if let Some(sp) = &m.spectrum {
                    row.push(format!("{:.4e}", sp.fro_norm));
                    row.push(sp.rank90.to_string());
                    row.push(sp.rank99.to_string());
                    row.push(format!(
                        "{:.3e}",
                        sp.singular_values.first().copied().unwrap_or(0.0)
                    ));
                    row.push(format!(
                        "{:.3e}",
                        sp.singular_values.last().copied().unwrap_or(0.0)
                    ));
                }
                row
            }));
        }
    }
    s
}

/// Aligned tables for people.
fn render_gguf(g: &GgufReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "gguf        {}", g.path);
    render_layout(&mut s, g.layout, g.files.len());
    let _ = writeln!(
        s,
        "arch        {}",
        g.architecture.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(s, "version     {} (alignment {})", g.version, g.alignment);
    render_totals(
        &mut s,
        "type",
        (g.tensor_count, g.parameters, g.bytes),
        &g.dtypes,
    );
    if !g.unsupported_types.is_empty() {
        let _ = writeln!(
            s,
            "\nnot dequantizable by lorakit: {}",
            g.unsupported_types.join(", ")
        );
    }
    if !g.metadata.is_empty() {
        s.push_str("\nmetadata\n");
        for (k, r) in &g.metadata {
            let v = match (
                r.value.as_ref().or(r.values.as_ref()),
                r.element_type,
                r.element_count,
            ) {
                (Some(v), _, _) => crate::error::one_line(&v.to_string()),
                (None, Some(et), Some(n)) => format!("[{et} × {n}]"),
                _ => String::new(),
            };
            let _ = writeln!(s, "  {k} ({}) = {v}", r.ty);
        }
    }
    if let Some(list) = &g.tensors {
        render_tensors(&mut s, "type", list);
    }
    s
}
