//! PNG plots drawn with plotters' bitmap backend. Text uses the public-domain 8×8 bitmap font
//! from `font8x8`, drawn pixel by pixel, so nothing depends on system fonts or FreeType.

use std::path::Path;

use anyhow::{anyhow, Result};
use font8x8::UnicodeFonts;
use plotters::prelude::*;

use crate::report::Report;
use crate::target::Kind;

pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

pub(crate) const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
];

fn color_of(kind: Kind) -> RGBColor {
    match kind {
        Kind::Quiver => PALETTE[0],
        Kind::QuiverSingleStream => PALETTE[4],
        Kind::QuiverCubic => PALETTE[5],
        Kind::QuiverWs => PALETTE[6],
        Kind::Bare => PALETTE[1],
        Kind::Nats => PALETTE[2],
        Kind::Socketio => PALETTE[3],
        Kind::NatsTls => PALETTE[7],
    }
}

pub(crate) fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

/// Draws `text` with its top-left corner at (x, y), each font pixel `scale`×`scale`.
pub(crate) fn text(
    area: &Area,
    x: i32,
    y: i32,
    s: &str,
    scale: i32,
    color: &RGBColor,
) -> Result<()> {
    for (i, ch) in s.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        let gx = x + i as i32 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let px = gx + col * scale + dx;
                            let py = y + row as i32 * scale + dy;
                            area.draw_pixel((px, py), color).map_err(err)?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 8 * scale
}

/// A bar chart in `area`: one bar per (label, value, color), value printed above each bar.
fn bars(
    area: &Area,
    title: &str,
    items: &[(String, f64, RGBColor)],
    fmt: fn(f64) -> String,
) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    text(area, 10, 8, title, 2, &BLACK)?;
    let top = 50;
    let bottom = h - 40;
    let left = 20;
    let max = items.iter().map(|i| i.1).fold(0.0_f64, f64::max).max(1e-9);
    let slot = (w - 2 * left) / items.len().max(1) as i32;
    for (i, (label, value, color)) in items.iter().enumerate() {
        let x0 = left + i as i32 * slot + slot / 6;
        let x1 = left + (i as i32 + 1) * slot - slot / 6;
        let bar_h = ((bottom - top - 20) as f64 * value / max) as i32;
        area.draw(&Rectangle::new(
            [(x0, bottom - bar_h), (x1, bottom)],
            color.filled(),
        ))
        .map_err(err)?;
        let v = fmt(*value);
        let cx = (x0 + x1) / 2;
        text(
            area,
            cx - text_width(&v, 1) / 2,
            bottom - bar_h - 12,
            &v,
            1,
            &BLACK,
        )?;
        text(
            area,
            cx - text_width(label, 1) / 2,
            bottom + 8,
            label,
            1,
            &BLACK,
        )?;
    }
    area.draw(&PathElement::new(
        vec![(left, bottom), (w - left, bottom)],
        BLACK,
    ))
    .map_err(err)?;
    Ok(())
}

fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M/s", v / 1e6)
    } else {
        format!("{:.0}k/s", v / 1e3)
    }
}

fn micros(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0} us")
    }
}

/// Fan-out: maximum deliveries/s per target, and p99 latency at half of each one's maximum.
pub fn fanout(r: &Report, path: &Path) -> Result<()> {
    let n = r.fanout.first().map_or(0, |f| f.subscribers);
    let runs: Vec<_> = r.fanout.iter().filter(|f| f.subscribers == n).collect();
    let root = BitMapBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(550);
    let through: Vec<(String, f64, RGBColor)> = runs
        .iter()
        .map(|f| {
            (
                f.target.label().to_owned(),
                f.max.deliveries_per_sec,
                color_of(f.target),
            )
        })
        .collect();
    bars(&left, &format!("max deliveries/s, n={n}"), &through, rate)?;
    let p99: Vec<(String, f64, RGBColor)> = runs
        .iter()
        .filter_map(|f| {
            f.fixed
                .iter()
                .find(|x| (x.fraction - 0.5).abs() < 1e-9)
                .map(|x| {
                    (
                        f.target.label().to_owned(),
                        x.result.latency.p99_us,
                        color_of(f.target),
                    )
                })
        })
        .collect();
    if !p99.is_empty() {
        bars(&right, "p99 at 50% of own max", &p99, micros)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Head-of-line: the quiet room's p99 against loss, one line per variant.
pub fn hol(r: &Report, path: &Path) -> Result<()> {
    let root = BitMapBackend::new(path, (900, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    text(
        &root,
        10,
        8,
        "quiet room p99 vs packet loss (log)",
        2,
        &BLACK,
    )?;
    // The plain veth runs only; relayed runs are in the report's second table.
    let runs: Vec<&crate::report::HolRun> = r.hol.iter().filter(|h| h.rtt_ms.is_none()).collect();
    let mut losses: Vec<u32> = runs.iter().map(|h| h.loss_pct).collect();
    losses.sort_unstable();
    losses.dedup();
    let mut kinds: Vec<Kind> = runs.iter().map(|h| h.target).collect();
    kinds.sort_by_key(|k| k.label());
    kinds.dedup();
    // Log scale: TCP's retransmission timeouts are hundreds of times QUIC's recovery.
    let max = runs
        .iter()
        .map(|h| h.result.quiet.p99_us)
        .fold(0.0_f64, f64::max)
        .max(1000.0)
        .log10()
        .ceil();
    let min = runs
        .iter()
        .map(|h| h.result.quiet.p99_us)
        .fold(f64::MAX, f64::min)
        .clamp(1.0, 1e9)
        .log10()
        .floor()
        .min(max - 1.0);
    let (left, right, top, bottom) = (90, 600, 50, 400);
    let x_of = |i: usize| left + (right - left) * i as i32 / (losses.len().max(2) - 1) as i32;
    let y_of = |v: f64| {
        let l = v.max(1.0).log10().clamp(min, max);
        bottom - ((bottom - top) as f64 * (l - min) / (max - min)) as i32
    };
    root.draw(&PathElement::new(
        vec![(left, top), (left, bottom), (right, bottom)],
        BLACK,
    ))
    .map_err(err)?;
    for (i, loss) in losses.iter().enumerate() {
        let label = format!("{loss}%");
        text(
            &root,
            x_of(i) - text_width(&label, 1) / 2,
            bottom + 8,
            &label,
            1,
            &BLACK,
        )?;
    }
    text(&root, right - 80, bottom + 24, "packet loss", 1, &BLACK)?;
    // A label and a light grid line per decade.
    let mut decade = min;
    while decade <= max {
        let v = 10f64.powf(decade);
        let label = micros(v);
        text(
            &root,
            left - 8 - text_width(&label, 1),
            y_of(v) - 4,
            &label,
            1,
            &BLACK,
        )?;
        root.draw(&PathElement::new(
            vec![(left + 1, y_of(v)), (right, y_of(v))],
            RGBColor(220, 220, 220),
        ))
        .map_err(err)?;
        decade += 1.0;
    }
    for (k, kind) in kinds.iter().enumerate() {
        let color = color_of(*kind);
        let points: Vec<(i32, i32)> = losses
            .iter()
            .enumerate()
            .filter_map(|(i, loss)| {
                runs.iter()
                    .find(|h| h.target == *kind && h.loss_pct == *loss)
                    .map(|h| (x_of(i), y_of(h.result.quiet.p99_us)))
            })
            .collect();
        root.draw(&PathElement::new(points.clone(), color.stroke_width(3)))
            .map_err(err)?;
        for p in points {
            root.draw(&Circle::new(p, 5, color.filled())).map_err(err)?;
        }
        let ly = top + 10 + k as i32 * 22;
        root.draw(&Rectangle::new(
            [(right + 20, ly), (right + 36, ly + 10)],
            color.filled(),
        ))
        .map_err(err)?;
        text(&root, right + 44, ly + 1, kind.label(), 1, &BLACK)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
