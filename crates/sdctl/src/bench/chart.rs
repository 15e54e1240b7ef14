//! The SVG chart of `sdctl bench --svg`: the latencies per backend.
//!
//! One group of bars per latency (register, propagation, deregistration,
//! crash detection, initial sync, propagation under churn at the largest
//! scale row's N, lorem request), one bar per backend: the
//! bar is the p50, the whisker reaches the p99. The y axis is logarithmic,
//! since the latencies go from tenths of a millisecond to seconds.
//!
//! Drawn with plotters' SVG backend alone: without a font feature plotters
//! sizes text with its naive metrics and the backend writes `<text>`
//! elements, so no font or system library is needed.

use plotters::backend::SVGBackend;
use plotters::prelude::*;

use super::report::{BackendReport, Stat};
use super::{Report, round};
use crate::error::{Error, Result};

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 560;

/// One group of bars.
struct Metric {
    label: &'static str,
    of: fn(&BackendReport) -> Option<Stat>,
}

const METRICS: &[Metric] = &[
    Metric {
        label: "register",
        of: |r| r.register_ms,
    },
    Metric {
        label: "propagation",
        of: |r| r.propagation_ms,
    },
    Metric {
        label: "deregistration",
        of: |r| r.deregistration_ms,
    },
    Metric {
        label: "crash detection",
        of: |r| r.crash_detection_ms,
    },
    Metric {
        label: "initial sync",
        of: |r| r.initial_sync_ms,
    },
    Metric {
        label: "propagation under churn, largest N",
        of: |r| r.scale.last().and_then(|x| x.propagation_ms),
    },
    Metric {
        label: "lorem request",
        of: |r| {
            r.lorem.map(|l| Stat {
                p50: l.p50_ms,
                p99: l.p99_ms,
                n: usize::try_from(l.ok).unwrap_or(usize::MAX),
            })
        },
    },
];

/// The bar colour of each backend, by name.
fn colour(backend: &str) -> RGBColor {
    match backend {
        "memory" => RGBColor(0x8c, 0x8c, 0x8c),
        "etcd" => RGBColor(0x41, 0x9e, 0xda),
        "zookeeper" => RGBColor(0xe0, 0x8a, 0x1e),
        "consul" => RGBColor(0xca, 0x21, 0x71),
        _ => RGBColor(0x40, 0x40, 0x40),
    }
}

fn chart_error(error: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("cannot draw the chart: {error}"))
}

/// The chart as an SVG document.
///
/// # Errors
/// If plotters fails to draw (it should not: everything is in memory).
pub fn svg(report: &Report) -> Result<String> {
    let mut out = String::new();
    draw(report, &mut out).map_err(chart_error)?;
    Ok(out)
}

fn draw(report: &Report, out: &mut String) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let values: Vec<f64> = report
        .backends
        .iter()
        .flat_map(|r| METRICS.iter().filter_map(|m| (m.of)(r)))
        .flat_map(|s| [s.p50, s.p99])
        .filter(|v| *v > 0.0)
        .collect();
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(0.0, f64::max);
    // Whole decades around the data, so the axis reads 0.01, 0.1, 1, 10...
    let (low, high) = if values.is_empty() {
        (0.01, 10_000.0)
    } else {
        (
            10f64.powf(low.log10().floor()),
            10f64.powf((high * 1.01).log10().ceil()),
        )
    };
    let groups = METRICS.len();
    let labels: Vec<String> = METRICS
        .iter()
        .map(|m| match m.label {
            "initial sync" => format!("initial sync of {}", report.sizes.bulk),
            label => label.to_owned(),
        })
        .collect();
    let backends = report.backends.len().max(1);
    let slot = 0.8 / backends as f64;

    let root = SVGBackend::with_string(out, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let sizes = &report.sizes;
    let caption = format!(
        "sdctl bench: latency per backend in ms, bar p50, whisker p99 (log scale); TTL {}, {} CPUs{}",
        humantime::format_duration(sizes.ttl),
        report.machine.cpus,
        if report.machine.spawned_on_loopback {
            ", loopback"
        } else {
            ""
        }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..(groups as f64 - 0.5), (low..high).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{}", round(*y, 3))
            }
        })
        .y_desc("milliseconds")
        .label_style(("sans-serif", 13))
        .draw()?;

    for (b, row) in report.backends.iter().enumerate() {
        let colour = colour(row.backend);
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        for (g, metric) in METRICS.iter().enumerate() {
            let Some(stat) = (metric.of)(row) else {
                continue;
            };
            let x0 = g as f64 - 0.4 + b as f64 * slot;
            let (x1, centre) = (x0 + slot * 0.85, x0 + slot * 0.425);
            let p50 = stat.p50.max(low);
            let p99 = stat.p99.max(p50);
            bars.push(Rectangle::new([(x0, low), (x1, p50)], colour.filled()));
            whiskers.push(PathElement::new(vec![(centre, p50), (centre, p99)], BLACK));
            whiskers.push(PathElement::new(
                vec![(centre - slot * 0.2, p99), (centre + slot * 0.2, p99)],
                BLACK,
            ));
        }
        chart
            .draw_series(bars)?
            .label(row.backend)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
        chart.draw_series(whiskers)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_is_svg_with_a_label_per_backend_and_metric() {
        let report = super::super::report::tests::sample();
        let svg = svg(&report).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in [
            "etcd",
            "memory",
            "register",
            "crash detection",
            "milliseconds",
        ] {
            assert!(
                svg.contains(&format!(">{text}<")) || svg.contains(text),
                "{text} missing"
            );
        }
        assert!(svg.contains("<text"), "labels are SVG text");
        assert!(svg.contains("<rect"), "bars are rectangles");
    }
}
