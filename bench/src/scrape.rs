//! `quiver-bench scrape`: reads a Quiver server's `/metrics` at a fixed interval for a while,
//! then draws the main panels of the Grafana dashboard (`deploy/grafana/quiver.json`) from
//! those samples as one PNG, computed the way Prometheus would (`rate()` over each interval,
//! `histogram_quantile()` over bucket increases). For a picture of a real run where no Grafana
//! and no Prometheus can be installed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::plot::{err, text, text_width, Area, PALETTE};

#[derive(clap::Args)]
pub struct ScrapeArgs {
    /// The server's HTTP listener, host:port (`/metrics` is read from it).
    #[arg(long)]
    pub http: String,
    /// How long to scrape at most; it also stops when stdin closes.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Time between scrapes.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// The PNG to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// One scrape: every series (`name{labels}`) and its value.
type Sample = BTreeMap<String, f64>;

async fn fetch(http: &str) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(http).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {http}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    match body.split_once("\r\n\r\n") {
        Some((head, page))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(page.to_owned())
        }
        _ => bail!("unexpected answer from {http}/metrics"),
    }
}

fn parse(page: &str) -> Sample {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn name_of(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

fn label<'a>(series: &'a str, key: &str) -> Option<&'a str> {
    let labels = series.split_once('{')?.1.trim_end_matches('}');
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.trim_matches('"'))
    })
}

/// Sum of `name`'s series whose labels include `labels`.
fn sum(s: &Sample, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.iter()
        .filter(|(k, _)| name_of(k) == name)
        .filter(|(k, _)| labels.iter().all(|(l, v)| label(k, l) == Some(v)))
        .map(|(_, v)| v)
        .sum()
}

/// The values a label takes on `name` over every sample.
fn values(samples: &[(f64, Sample)], name: &str, key: &str) -> BTreeSet<String> {
    samples
        .iter()
        .flat_map(|(_, s)| s.keys())
        .filter(|k| name_of(k) == name)
        .filter_map(|k| label(k, key).map(str::to_owned))
        .collect()
}

/// Prometheus's `histogram_quantile(q, increase(name_bucket[interval]))`: linear within the
/// bucket the rank falls in; `None` without observations in the interval.
fn quantile(q: f64, a: &Sample, b: &Sample, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = b
        .iter()
        .filter(|(k, _)| name_of(k) == bucket)
        .filter(|(k, _)| labels.iter().all(|(l, v)| label(k, l) == Some(v)))
        .filter_map(|(k, v)| {
            let le = label(k, "le")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v - a.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = (count - below).max(1e-12);
            return Some(lower + (le - lower) * (rank - below) / within);
        }
        (lower, below) = (le, count);
    }
    None
}

struct Line {
    label: String,
    points: Vec<(f64, f64)>,
}

struct Panel {
    title: &'static str,
    unit: &'static str,
    lines: Vec<Line>,
}

/// A line over every interval between consecutive samples.
fn per_interval(
    samples: &[(f64, Sample)],
    label: impl Into<String>,
    f: impl Fn(&Sample, &Sample, f64) -> Option<f64>,
) -> Line {
    let points = samples
        .windows(2)
        .filter_map(|w| {
            let ((t0, a), (t1, b)) = (&w[0], &w[1]);
            f(a, b, t1 - t0).map(|v| (*t1, v))
        })
        .collect();
    Line {
        label: label.into(),
        points,
    }
}

fn rate(
    samples: &[(f64, Sample)],
    name: &'static str,
    labels: Vec<(&'static str, String)>,
    legend: String,
    scale: f64,
) -> Line {
    per_interval(samples, legend, move |a, b, dt| {
        let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Some((sum(b, name, &l) - sum(a, name, &l)).max(0.0) / dt * scale)
    })
}

fn panels(samples: &[(f64, Sample)]) -> Vec<Panel> {
    let gauge = |name: &'static str, legend: &str, scale: f64| Line {
        label: legend.to_owned(),
        points: samples
            .iter()
            .map(|(t, s)| (*t, sum(s, name, &[]) * scale))
            .collect(),
    };
    let by = |name: &'static str, key: &'static str, scale: f64| -> Vec<Line> {
        values(samples, name, key)
            .into_iter()
            .map(|v| rate(samples, name, vec![(key, v.clone())], v, scale))
            .filter(|l| l.points.iter().any(|p| p.1 > 0.0))
            .collect()
    };
    let q =
        |quant: f64, name: &'static str, labels: Vec<(&'static str, String)>, legend: String| {
            per_interval(samples, legend, move |a, b, _| {
                let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                quantile(quant, a, b, name, &l).map(|s| s * 1e3)
            })
        };
    vec![
        Panel {
            title: "sessions open",
            unit: "",
            lines: vec![gauge("quiver_sessions_active", "sessions", 1.0)],
        },
        Panel {
            title: "deliveries/s by namespace",
            unit: "/s",
            lines: by("quiver_deliveries_total", "namespace", 1.0),
        },
        Panel {
            title: "publications/s",
            unit: "/s",
            lines: vec![
                rate(
                    samples,
                    "quiver_publications_total",
                    vec![],
                    "accepted".into(),
                    1.0,
                ),
                rate(
                    samples,
                    "quiver_hub_publications_total",
                    vec![],
                    "fanned out".into(),
                    1.0,
                ),
            ],
        },
        Panel {
            title: "delivery latency (ms)",
            unit: "ms",
            lines: vec![
                q(0.5, "quiver_delivery_latency_seconds", vec![], "p50".into()),
                q(
                    0.99,
                    "quiver_delivery_latency_seconds",
                    vec![],
                    "p99".into(),
                ),
            ],
        },
        Panel {
            title: "command latency p99 (ms)",
            unit: "ms",
            lines: ["publish", "subscribe"]
                .into_iter()
                .map(|c| {
                    q(
                        0.99,
                        "quiver_command_duration_seconds",
                        vec![("command", c.into())],
                        c.into(),
                    )
                })
                .collect(),
        },
        Panel {
            title: "bytes out (MB/s)",
            unit: "MB/s",
            lines: vec![rate(
                samples,
                "quiver_delivery_bytes_total",
                vec![],
                "bytes".into(),
                1e-6,
            )],
        },
        Panel {
            title: "session ends/s by reason",
            unit: "/s",
            lines: by("quiver_sessions_closed_total", "reason", 1.0),
        },
        Panel {
            title: "process CPU (%)",
            unit: "%",
            lines: vec![rate(
                samples,
                "process_cpu_seconds_total",
                vec![],
                "cpu".into(),
                100.0,
            )],
        },
        Panel {
            title: "resident memory (MiB)",
            unit: "MiB",
            lines: vec![gauge(
                "process_resident_memory_bytes",
                "rss",
                1.0 / (1024.0 * 1024.0),
            )],
        },
    ]
}

fn fmt(v: f64, unit: &str) -> String {
    let n = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    format!("{n} {unit}").trim_end().to_owned()
}

/// Cuts a line where an interval has no value (no observation), instead of bridging the gap.
fn segments(points: &[(f64, f64)], step: f64) -> Vec<&[(f64, f64)]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=points.len() {
        if i == points.len() || points[i].0 - points[i - 1].0 > step * 1.5 {
            out.push(&points[start..i]);
            start = i;
        }
    }
    out
}

fn draw(area: &Area, panel: &Panel, span: f64, step: f64) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    text(area, 10, 8, panel.title, 2, &BLACK)?;
    let (left, right, top, bottom) = (70, w - 15, 36, h - 50);
    let max = panel
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x_of = |t: f64| left + ((right - left) as f64 * t / span.max(1e-9)) as i32;
    let y_of = |v: f64| bottom - ((bottom - top) as f64 * v / max) as i32;
    for frac in [0.0, 0.5, 1.0] {
        let y = y_of(max * frac);
        area.draw(&PathElement::new(
            vec![(left, y), (right, y)],
            RGBColor(220, 220, 220),
        ))
        .map_err(err)?;
        let label = fmt(max * frac, panel.unit);
        text(
            area,
            left - 6 - text_width(&label, 1),
            y - 4,
            &label,
            1,
            &BLACK,
        )?;
    }
    area.draw(&PathElement::new(
        vec![(left, top), (left, bottom), (right, bottom)],
        BLACK,
    ))
    .map_err(err)?;
    let end = format!("{span:.0} s");
    text(
        area,
        right - text_width(&end, 1),
        bottom + 6,
        &end,
        1,
        &BLACK,
    )?;
    text(area, left, bottom + 6, "0", 1, &BLACK)?;
    let mut legend_x = left;
    for (i, line) in panel.lines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        for segment in segments(&line.points, step) {
            let points: Vec<(i32, i32)> =
                segment.iter().map(|(t, v)| (x_of(*t), y_of(*v))).collect();
            if let [(x, y)] = points[..] {
                area.draw(&Circle::new((x, y), 2, color.filled()))
                    .map_err(err)?;
            } else {
                area.draw(&PathElement::new(points, color.stroke_width(2)))
                    .map_err(err)?;
            }
        }
        text(area, legend_x, bottom + 24, &line.label, 1, &color)?;
        legend_x += text_width(&line.label, 1) + 16;
    }
    if panel.lines.iter().all(|l| l.points.is_empty()) {
        text(area, left + 10, (top + bottom) / 2, "no data", 1, &BLACK)?;
    }
    Ok(())
}

fn render(samples: &[(f64, Sample)], path: &Path) -> Result<()> {
    let panels = panels(samples);
    let span = samples.last().map_or(1.0, |s| s.0);
    let step = span / (samples.len().max(2) - 1) as f64;
    let root = BitMapBackend::new(path, (1500, 840)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    for (area, panel) in root.split_evenly((3, 3)).iter().zip(&panels) {
        draw(area, panel, span, step)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

pub async fn run(args: &ScrapeArgs) -> Result<()> {
    let started = Instant::now();
    let interval = Duration::from_millis(args.interval_ms.max(100));
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(interval);
    // Stdin closing (the script driving the load is done) ends the scrape early.
    let stdin_closed = tokio_util::sync::CancellationToken::new();
    let closed = stdin_closed.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 256];
        let mut stdin = tokio::io::stdin();
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        closed.cancel();
    });
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stdin_closed.cancelled() => break,
        }
        let page = fetch(&args.http)
            .await
            .with_context(|| format!("scraping {}", args.http))?;
        samples.push((started.elapsed().as_secs_f64(), parse(&page)));
    }
    if samples.len() < 2 {
        bail!("fewer than two scrapes: nothing to plot");
    }
    render(&samples, &args.out)?;
    eprintln!(
        "scrape: {} samples, plotted to {}",
        samples.len(),
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket_as_prometheus_does() {
        let page = |a: f64, b: f64, inf: f64| {
            parse(&format!(
                "h_bucket{{le=\"0.1\"}} {a}\nh_bucket{{le=\"1\"}} {b}\nh_bucket{{le=\"+Inf\"}} {inf}\n"
            ))
        };
        let (before, after) = (page(10.0, 10.0, 10.0), page(20.0, 30.0, 30.0));
        // 20 new observations: 10 up to 0.1, 10 in (0.1, 1]. The median is the top of the first.
        assert!((quantile(0.5, &before, &after, "h", &[]).unwrap() - 0.1).abs() < 1e-9);
        // p75: halfway into the second bucket.
        assert!((quantile(0.75, &before, &after, "h", &[]).unwrap() - 0.55).abs() < 1e-9);
        assert_eq!(quantile(0.5, &after, &after, "h", &[]), None);
        assert_eq!(label(r#"x{a="1",b="two"}"#, "b"), Some("two"));
        assert_eq!(
            sum(&parse("x{a=\"1\"} 2\nx{a=\"2\"} 3\nxy 7\n"), "x", &[]),
            5.0
        );
        let points = [(1.0, 0.0), (2.0, 0.0), (5.0, 0.0), (6.0, 0.0)];
        assert_eq!(segments(&points, 1.0).len(), 2);
    }
}
