//! The training curves as a PNG: loss per step (with validation loss per epoch), validation F1
//! per epoch, and the learning rate per step.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::metrics::Record;
use crate::error::{Error, Result};

const WIDTH: u32 = 1000;
const PANEL_HEIGHT: u32 = 320;

/// plotters draws text with fonts registered by name; DejaVu Sans ships inside the binary so the
/// plot looks the same on machines without fonts installed.
fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A failure only loses the labels; the curves are still drawn.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::io(
        "drawing the metrics plot",
        std::io::Error::other(e.to_string()),
    )
}

fn range(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-12);
    (lo - pad, hi + pad)
}

/// Draws the curves of `records` to `path` (written beside it, then renamed into place).
pub fn plot_metrics(records: &[Record], path: &Path) -> Result<()> {
    register_fonts();
    let mut steps = Vec::new();
    let mut epochs = Vec::new();
    for r in records {
        match r {
            Record::Step { step, loss, lr, .. } => {
                steps.push((*step as f64, loss.map_or(f64::NAN, |l| l as f64), *lr))
            }
            Record::Epoch {
                step,
                epoch,
                validation_loss,
                validation_f1,
                train_loss,
                ..
            } => epochs.push((
                *step as f64,
                *epoch as f64,
                *validation_loss,
                *validation_f1,
                *train_loss,
            )),
        }
    }
    let max_step = steps.last().map_or(1.0, |s| s.0.max(1.0));
    let tmp = path.with_file_name(format!(
        ".{}.tmp.png",
        path.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("metrics")
    ));
    {
        let root = BitMapBackend::new(&tmp, (WIDTH, 3 * PANEL_HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let panels = root.split_evenly((3, 1));

        // Loss.
        let (lo, hi) = range(
            steps
                .iter()
                .map(|s| s.1)
                .filter(|l| l.is_finite())
                .chain(epochs.iter().filter_map(|e| e.2)),
        );
        let mut chart = ChartBuilder::on(&panels[0])
            .caption("loss", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_step, lo..hi)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("optimiser step")
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(
                steps.iter().filter(|s| s.1.is_finite()).map(|s| (s.0, s.1)),
                &BLUE,
            ))
            .map_err(plot_error)?
            .label("training (per step)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        let validation: Vec<(f64, f64)> = epochs
            .iter()
            .filter_map(|e| e.2.map(|v| (e.0, v)))
            .collect();
        if !validation.is_empty() {
            chart
                .draw_series(LineSeries::new(validation.clone(), RED.stroke_width(2)))
                .map_err(plot_error)?
                .label("validation (per epoch)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
            chart
                .draw_series(validation.iter().map(|&p| Circle::new(p, 3, RED.filled())))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;

        // Validation F1.
        let f1: Vec<(f64, f64)> = epochs
            .iter()
            .filter_map(|e| e.3.map(|v| (e.1, v)))
            .collect();
        let max_epoch = epochs.last().map_or(1.0, |e| e.1.max(1.0));
        let mut chart = ChartBuilder::on(&panels[1])
            .caption("validation F1 (masked-token accuracy)", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_epoch, 0.0..1.0)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(f1.clone(), GREEN.stroke_width(2)))
            .map_err(plot_error)?;
        chart
            .draw_series(f1.iter().map(|&p| Circle::new(p, 3, GREEN.filled())))
            .map_err(plot_error)?;

        // Learning rate.
        let (_, hi) = range(steps.iter().map(|s| s.2));
        let mut chart = ChartBuilder::on(&panels[2])
            .caption("learning rate", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_step, 0.0..hi.max(1e-12))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("optimiser step")
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(steps.iter().map(|s| (s.0, s.2)), &MAGENTA))
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("renaming into {}", path.display()), e))
}
