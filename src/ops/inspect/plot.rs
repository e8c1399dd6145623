//! `inspect --plot`: the singular values of every module's `s·B·A`, drawn so that a spectrum
//! reads at a glance — one panel per module type (q/k/v/o, MLP, embeddings…), each module a
//! line coloured by its layer, the rank cut-offs marked and explained on the figure, and the
//! Eckart–Young cost of halving the rank written in each panel. SVG or PNG, by extension.
//!
//! Owns only the drawing; the numbers come from [`AdapterReport`] (computed by
//! `linalg::spectrum_of_factors`), so the plot never disagrees with `inspect --spectrum`.

use super::report::{AdapterReport, SpectrumRow};
use anyhow::{anyhow, Result};
use std::path::Path;

/// The panel a module is drawn in: the last component of a dotted name (`q_proj`,
/// `down_proj`, `embed_tokens`), or, for underscore names (kohya's `lora_unet_…`), what
/// follows the last block index (`…_attentions_0_proj_in` → `proj_in`).
pub fn module_type(name: &str) -> String {
    if let Some((_, last)) = name.rsplit_once('.') {
        return last.to_owned();
    }
    let parts: Vec<&str> = name.split('_').collect();
    match parts
        .iter()
        .rposition(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        Some(i) if i + 1 < parts.len() => parts[i + 1..].join("_"),
        _ => name.to_owned(),
    }
}

/// The layer a module belongs to: the first all-digit component of its name
/// (`model.layers.12.mlp.up_proj` → 12, `lora_unet_down_blocks_1_…` → 1).
pub fn layer_of(name: &str) -> Option<usize> {
    name.split(['.', '_'])
        .find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse().ok())
}

/// `‖M − M_k‖_F / ‖M‖_F` for the best rank-`k` approximation (Eckart–Young): the tail of the
/// spectrum.
fn optimal_rel_error(s: &SpectrumRow, k: usize) -> f64 {
    let total = crate::linalg::energy(&s.singular_values);
    if total == 0.0 {
        return 0.0;
    }
    (crate::linalg::tail_energy(&s.singular_values, k) / total).sqrt()
}

struct Line<'a> {
    spectrum: &'a SpectrumRow,
    layer: Option<usize>,
}

struct Panel<'a> {
    kind: String,
    rank: usize,
    lines: Vec<Line<'a>>,
    /// Median over the panel of the optimal relative error at half the stored rank.
    half_rank_error: f64,
}

fn panels(report: &AdapterReport) -> Vec<Panel<'_>> {
    let mut out: Vec<Panel> = Vec::new();
    for m in &report.modules {
        let Some(sp) = m.spectrum.as_ref() else {
            continue;
        };
        let kind = module_type(&m.name);
        let i = match out.iter().position(|p| p.kind == kind) {
            Some(i) => i,
            None => {
                out.push(Panel {
                    kind,
                    rank: 0,
                    lines: Vec::new(),
                    half_rank_error: 0.0,
                });
                out.len() - 1
            }
        };
        let p = &mut out[i];
        p.rank = p.rank.max(m.rank);
        p.lines.push(Line {
            spectrum: sp,
            layer: layer_of(&m.name),
        });
    }
    for p in &mut out {
        let k = (p.rank / 2).max(1);
        let mut e: Vec<f64> = p
            .lines
            .iter()
            .map(|l| optimal_rel_error(l.spectrum, k))
            .collect();
        e.sort_by(f64::total_cmp);
        p.half_rank_error = e[e.len() / 2];
    }
    out
}

/// Draws the spectra of `report` into `write_to` (the temporary file an
/// [`crate::io::Output`] commits to `path`), SVG or PNG after `path`'s extension.
pub fn plot_spectra(report: &AdapterReport, path: &Path, write_to: &Path) -> Result<()> {
    use plotters::prelude::*;
    let panels = panels(report);
    anyhow::ensure!(
        !panels.is_empty(),
        crate::error::OptionError::new(|o| format!(
            "no spectra to plot (use {})",
            o.opt(crate::error::Opt::Spectrum)
        ))
    );
    let hi = panels
        .iter()
        .flat_map(|p| &p.lines)
        .flat_map(|l| l.spectrum.singular_values.iter().copied())
        .fold(0f32, f32::max);
    anyhow::ensure!(hi > 0.0, "all singular values are zero: nothing to plot");
    let cols = panels.len().clamp(1, 3);
    let rows = panels.len().div_ceil(cols);
    // At least 920 px wide, so the notes under the panels fit.
    let size = ((cols as u32 * 460).max(920), 96 + rows as u32 * 330 + 74);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "svg" => draw(
            SVGBackend::new(write_to, size).into_drawing_area(),
            report,
            &panels,
            (rows, cols),
        ),
        "png" => {
            // Drawn into memory and encoded here: plotters' file backend picks the image
            // format from the path's extension, and `write_to` is a temporary name.
            let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
            draw(
                BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area(),
                report,
                &panels,
                (rows, cols),
            )?;
            let img = image::RgbImage::from_raw(size.0, size.1, rgb)
                .ok_or_else(|| anyhow!("plot buffer has the wrong size"))?;
            img.save_with_format(write_to, image::ImageFormat::Png)?;
            Ok(())
        }
        _ => anyhow::bail!("{}: plot file must end in .svg or .png", path.display()),
    }
}

/// Blue (first layer) to red (last layer); grey for modules without a layer index.
fn layer_colour(layer: Option<usize>, (lo, hi): (usize, usize)) -> plotters::style::RGBAColor {
    use plotters::style::{Color, HSLColor, RGBColor};
    match layer {
        None => RGBColor(110, 110, 110).to_rgba(),
        Some(l) => {
            let t = if hi > lo {
                (l - lo) as f64 / (hi - lo) as f64
            } else {
                0.0
            };
            HSLColor(0.66 * (1.0 - t), 0.85, 0.42).to_rgba()
        }
    }
}

fn draw<DB: plotters::prelude::DrawingBackend>(
    root: plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    report: &AdapterReport,
    panels: &[Panel],
    (rows, cols): (usize, usize),
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{x}");
    root.fill(&WHITE).map_err(e)?;
    let (_, h) = root.dim_in_pixel();
    let (header, rest) = root.split_vertically(96);
    let (body, footer) = rest.split_vertically(h - 96 - 74);

    let layers: Vec<usize> = panels
        .iter()
        .flat_map(|p| &p.lines)
        .filter_map(|l| l.layer)
        .collect();
    let span = (
        layers.iter().copied().min().unwrap_or(0),
        layers.iter().copied().max().unwrap_or(0),
    );
    let modules: usize = panels.iter().map(|p| p.lines.len()).sum();
    header
        .draw(&Text::new(
            format!(
                "singular values σᵢ of s·B·A — {modules} modules of {}",
                report.path
            ),
            (16, 12),
            ("sans-serif", 20).into_font(),
        ))
        .map_err(e)?;
    // The layer colour scale.
    if !layers.is_empty() {
        let (x0, y0, bar_w) = (16i32, 48i32, 260i32);
        for i in 0..bar_w {
            let l = span.0 + ((span.1 - span.0) as f64 * i as f64 / bar_w as f64).round() as usize;
            header
                .draw(&Rectangle::new(
                    [(x0 + i, y0), (x0 + i + 1, y0 + 14)],
                    layer_colour(Some(l), span).filled(),
                ))
                .map_err(e)?;
        }
        let font = ("sans-serif", 14).into_font();
        header
            .draw(&Text::new(
                format!("layer {}", span.0),
                (x0, y0 + 18),
                font.clone(),
            ))
            .map_err(e)?;
        header
            .draw(&Text::new(
                format!("layer {}", span.1),
                (x0 + bar_w - 50, y0 + 18),
                font.clone(),
            ))
            .map_err(e)?;
        header
            .draw(&Text::new(
                "line colour: the module's layer (grey: no layer index)",
                (x0 + bar_w + 16, y0),
                font,
            ))
            .map_err(e)?;
    }

    let areas = body.split_evenly((rows, cols));
    for (p, area) in panels.iter().zip(&areas) {
        let max_len = p
            .lines
            .iter()
            .map(|l| l.spectrum.singular_values.len())
            .max()
            .unwrap_or(1)
            .max(2);
        let positive = p
            .lines
            .iter()
            .flat_map(|l| l.spectrum.singular_values.iter().copied())
            .filter(|v| *v > 0.0);
        let (lo, top) = positive.fold((f32::MAX, 0f32), |(lo, top), v| (lo.min(v), top.max(v)));
        if top <= 0.0 {
            continue;
        }
        let (lo, top) = ((lo as f64 * 0.5).max(top as f64 * 1e-8), top as f64 * 2.0);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{} — {} module{}, stored rank {}",
                    p.kind,
                    p.lines.len(),
                    if p.lines.len() == 1 { "" } else { "s" },
                    p.rank
                ),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(60)
            .build_cartesian_2d(1usize..max_len, (lo..top).log_scale())
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("index i")
            .y_desc("σᵢ")
            .max_light_lines(2)
            .draw()
            .map_err(e)?;
        for l in &p.lines {
            let colour = layer_colour(l.layer, span);
            let pts: Vec<(usize, f64)> = l
                .spectrum
                .singular_values
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0.0)
                .map(|(j, v)| (j + 1, *v as f64))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(1)))
                .map_err(e)?;
            if let Some(&(x, y)) = pts.get(l.spectrum.rank90.saturating_sub(1)) {
                chart
                    .draw_series(std::iter::once(Circle::new((x, y), 3, colour.filled())))
                    .map_err(e)?;
            }
            if let Some(&(x, y)) = pts.get(l.spectrum.rank99.saturating_sub(1)) {
                chart
                    .draw_series(std::iter::once(Cross::new(
                        (x, y),
                        4,
                        colour.stroke_width(2),
                    )))
                    .map_err(e)?;
            }
        }
        let k = (p.rank / 2).max(1);
        chart
            .draw_series(std::iter::once(Text::new(
                format!(
                    "rank {k}: optimal rel. error {:.3} (median)",
                    p.half_rank_error
                ),
                (1 + max_len / 12, top / 1.6),
                ("sans-serif", 13).into_font(),
            )))
            .map_err(e)?;
    }
    let font = ("sans-serif", 14).into_font();
    let notes = [
        "● r90, × r99: the smallest rank keeping 90 % / 99 % of the module's ‖s·B·A‖²_F = Σσᵢ².",
        "rank k: optimal rel. error = ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F of the best rank-k approximation",
        "(Eckart–Young), k = half the stored rank: the least that resize --rank k can cost.",
    ];
    for (i, n) in notes.iter().enumerate() {
        footer
            .draw(&Text::new(*n, (16, 8 + 22 * i as i32), font.clone()))
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_types_and_layers_follow_the_names() {
        assert_eq!(module_type("model.layers.3.self_attn.q_proj"), "q_proj");
        assert_eq!(module_type("model.embed_tokens"), "embed_tokens");
        assert_eq!(
            module_type("lora_unet_down_blocks_0_attentions_1_proj_in"),
            "proj_in"
        );
        assert_eq!(
            module_type("lora_te1_text_model_encoder_layers_11_mlp_fc1"),
            "mlp_fc1"
        );
        assert_eq!(module_type("plain"), "plain");
        assert_eq!(layer_of("model.layers.12.mlp.up_proj"), Some(12));
        assert_eq!(layer_of("lora_unet_down_blocks_1_x"), Some(1));
        assert_eq!(layer_of("lm_head"), None);
    }

    #[test]
    fn the_half_rank_error_is_the_spectrum_tail() {
        let s = SpectrumRow {
            singular_values: vec![3.0, 2.0, 1.0, 0.0],
            fro_norm: 14f64.sqrt(),
            rank90: 2,
            rank99: 3,
        };
        // Σσ² = 14; keeping 2 leaves 1 → √(1/14).
        assert!((optimal_rel_error(&s, 2) - (1.0f64 / 14.0).sqrt()).abs() < 1e-12);
        assert_eq!(optimal_rel_error(&s, 3), 0.0);
        assert!((optimal_rel_error(&s, 0) - 1.0).abs() < 1e-12);
    }
}
