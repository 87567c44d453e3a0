//! The run's timeline as a PNG: acknowledged sends and ok polls per second (top), every
//! send's latency on a log scale (bottom, ok blue, unknown orange, failed red), with the
//! fault windows shaded and named. A small raster, a 3×5 pixel font and a PNG encoder over
//! flate2, so the plot needs no font files and no image crates.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use weir_jepsen::history::{F, Op, Type};

use crate::run::Fault;

const WIDTH: usize = 1200;
const HEIGHT: usize = 640;
const LEFT: usize = 70;
const RIGHT: usize = 20;
const TOP_PANEL: (usize, usize) = (40, 270);
const BOTTOM_PANEL: (usize, usize) = (330, 600);

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [225, 225, 225];
const FAULT: Rgb = [255, 222, 222];
const BLUE: Rgb = [31, 119, 180];
const GREEN: Rgb = [44, 160, 44];
const ORANGE: Rgb = [255, 127, 14];
const RED: Rgb = [214, 39, 40];

struct Canvas {
    pixels: Vec<Rgb>,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas {
            pixels: vec![WHITE; WIDTH * HEIGHT],
        }
    }

    fn set(&mut self, x: usize, y: usize, c: Rgb) {
        if x < WIDTH && y < HEIGHT {
            self.pixels[y * WIDTH + x] = c;
        }
    }

    fn rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, c: Rgb) {
        for y in y0..y1.min(HEIGHT) {
            for x in x0..x1.min(WIDTH) {
                self.set(x, y, c);
            }
        }
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            if x >= 0 && y >= 0 {
                self.set(x as usize, y as usize, c);
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text in the 3×5 font, scaled by 2, top-left at (x, y).
    fn text(&mut self, x: usize, y: usize, text: &str, c: Rgb) {
        let mut cx = x;
        for ch in text.chars() {
            let rows = glyph(ch.to_ascii_lowercase());
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        self.rect(cx + col * 2, y + r * 2, cx + col * 2 + 2, y + r * 2 + 2, c);
                    }
                }
            }
            cx += 8;
        }
    }

    fn png(&self) -> anyhow::Result<Vec<u8>> {
        let mut raw = Vec::with_capacity(HEIGHT * (WIDTH * 3 + 1));
        for row in self.pixels.chunks(WIDTH) {
            raw.push(0); // filter: none
            for p in row {
                raw.extend_from_slice(p);
            }
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw)?;
        let idat = z.finish()?;
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(WIDTH as u32).to_be_bytes());
        ihdr.extend_from_slice(&(HEIGHT as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [(b"IHDR", &ihdr), (b"IDAT", &idat), (b"IEND", &Vec::new())] {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crc.sum().to_be_bytes());
        }
        Ok(out)
    }
}

/// A 3×5 glyph: five rows of three bits, high bit left.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 3, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'a' => [2, 5, 7, 5, 5],
        'b' => [6, 5, 6, 5, 6],
        'c' => [3, 4, 4, 4, 3],
        'd' => [6, 5, 5, 5, 6],
        'e' => [7, 4, 6, 4, 7],
        'f' => [7, 4, 6, 4, 4],
        'g' => [3, 4, 5, 5, 3],
        'h' => [5, 5, 7, 5, 5],
        'i' => [7, 2, 2, 2, 7],
        'j' => [1, 1, 1, 5, 2],
        'k' => [5, 5, 6, 5, 5],
        'l' => [4, 4, 4, 4, 7],
        'm' => [5, 7, 7, 5, 5],
        'n' => [6, 5, 5, 5, 5],
        'o' => [2, 5, 5, 5, 2],
        'p' => [6, 5, 6, 4, 4],
        'q' => [2, 5, 5, 6, 3],
        'r' => [6, 5, 6, 5, 5],
        's' => [3, 4, 2, 1, 6],
        't' => [7, 2, 2, 2, 2],
        'u' => [5, 5, 5, 5, 7],
        'v' => [5, 5, 5, 5, 2],
        'w' => [5, 5, 7, 7, 5],
        'x' => [5, 5, 2, 5, 5],
        'y' => [5, 5, 2, 2, 2],
        'z' => [7, 1, 2, 4, 7],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        '.' => [0, 0, 0, 0, 2],
        ',' => [0, 0, 0, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        '=' => [0, 7, 0, 7, 0],
        _ => [0, 0, 0, 0, 0],
    }
}

/// Draws the timeline of `ops` and `faults` (workload time `0..end_ns`) into `path`.
pub fn draw(path: &Path, ops: &[Op], faults: &[Fault], end_ns: u64) -> anyhow::Result<()> {
    let span_ns = ops
        .iter()
        .map(|o| o.time_ns)
        .max()
        .unwrap_or(0)
        .max(end_ns)
        .max(1);
    let secs = span_ns.div_ceil(1_000_000_000) as usize;
    let plot_w = WIDTH - LEFT - RIGHT;
    let x_of = |ns: u64| LEFT + ((ns as f64 / span_ns as f64) * plot_w as f64) as usize;

    // per-second throughput and per-send latency
    let mut sends = vec![0u64; secs + 1];
    let mut polls = vec![0u64; secs + 1];
    let mut invoked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut latencies: Vec<(u64, f64, Type)> = Vec::new();
    for op in ops {
        let sec = (op.time_ns / 1_000_000_000) as usize;
        match (op.f, op.kind) {
            (F::Send, Type::Invoke) => {
                invoked.insert(op.process, op.time_ns);
            }
            (F::Send, kind) => {
                if kind == Type::Ok {
                    sends[sec.min(secs)] += 1;
                }
                if let Some(start) = invoked.remove(&op.process) {
                    let ms = (op.time_ns.saturating_sub(start)) as f64 / 1e6;
                    latencies.push((start, ms.max(0.01), kind));
                }
            }
            (F::Poll, Type::Ok) if !op.polls.is_empty() => polls[sec.min(secs)] += 1,
            _ => {}
        }
    }

    let mut c = Canvas::new();
    for f in faults {
        let (x0, x1) = (
            x_of(f.start_ns),
            x_of(f.end_ns.max(f.start_ns)).max(x_of(f.start_ns) + 1),
        );
        c.rect(x0, TOP_PANEL.0, x1, TOP_PANEL.1, FAULT);
        c.rect(x0, BOTTOM_PANEL.0, x1, BOTTOM_PANEL.1, FAULT);
    }
    // fault names on the first of four rows with room for them; none where all are full
    let mut row_ends = [0usize; 4];
    for f in faults {
        let x = x_of(f.start_ns) + 2;
        if let Some(row) = row_ends.iter().position(|end| *end < x) {
            c.text(x, TOP_PANEL.0 + 4 + row * 12, &f.kind, RED);
            row_ends[row] = x + f.kind.len() * 8 + 4;
        }
    }

    // top: throughput
    let peak = sends
        .iter()
        .chain(&polls)
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let y_top = |v: u64| {
        TOP_PANEL.1 - ((v as f64 / peak as f64) * (TOP_PANEL.1 - TOP_PANEL.0 - 60) as f64) as usize
    };
    for step in 0..=4 {
        let v = peak * step / 4;
        let y = y_top(v);
        c.line(
            (LEFT as i64, y as i64),
            ((WIDTH - RIGHT) as i64, y as i64),
            GRID,
        );
        c.text(4, y.saturating_sub(5), &v.to_string(), BLACK);
    }
    for (series, colour) in [(&sends, BLUE), (&polls, GREEN)] {
        for s in 1..series.len().min(secs) {
            let a = (
                x_of((s as u64 - 1) * 1_000_000_000 + 500_000_000),
                y_top(series[s - 1]),
            );
            let b = (
                x_of(s as u64 * 1_000_000_000 + 500_000_000),
                y_top(series[s]),
            );
            c.line((a.0 as i64, a.1 as i64), (b.0 as i64, b.1 as i64), colour);
            c.line(
                (a.0 as i64, a.1 as i64 + 1),
                (b.0 as i64, b.1 as i64 + 1),
                colour,
            );
        }
    }
    c.text(LEFT, 12, "acknowledged sends/s", BLUE);
    c.text(LEFT + 200, 12, "ok polls with data/s", GREEN);
    c.text(LEFT + 400, 12, "shaded: faults", RED);

    // bottom: send latency, log scale 1 ms .. 10 s
    let (lo, hi) = (0.1f64.log10(), 10_000f64.log10());
    let y_bottom = |ms: f64| {
        let t = ((ms.log10() - lo) / (hi - lo)).clamp(0.0, 1.0);
        BOTTOM_PANEL.1 - (t * (BOTTOM_PANEL.1 - BOTTOM_PANEL.0) as f64) as usize
    };
    for (ms, label) in [
        (0.1, "0.1ms"),
        (1.0, "1ms"),
        (10.0, "10ms"),
        (100.0, "100ms"),
        (1000.0, "1s"),
        (10_000.0, "10s"),
    ] {
        let y = y_bottom(ms);
        c.line(
            (LEFT as i64, y as i64),
            ((WIDTH - RIGHT) as i64, y as i64),
            GRID,
        );
        c.text(4, y.saturating_sub(5), label, BLACK);
    }
    for (start, ms, kind) in &latencies {
        let colour = match kind {
            Type::Ok => BLUE,
            Type::Info => ORANGE,
            _ => RED,
        };
        let (x, y) = (x_of(*start), y_bottom(*ms));
        c.rect(x, y.saturating_sub(1), x + 2, y + 1, colour);
    }
    c.text(
        LEFT,
        BOTTOM_PANEL.0 - 20,
        "send latency (ok, unknown, failed)",
        BLACK,
    );

    // axes and time ticks
    for (y0, y1) in [TOP_PANEL, BOTTOM_PANEL] {
        c.line((LEFT as i64, y0 as i64), (LEFT as i64, y1 as i64), BLACK);
        c.line(
            (LEFT as i64, y1 as i64),
            ((WIDTH - RIGHT) as i64, y1 as i64),
            BLACK,
        );
    }
    let tick = [1usize, 2, 5, 10, 15, 30, 60, 120, 300]
        .into_iter()
        .find(|t| secs / t <= 20)
        .unwrap_or(600);
    for s in (0..=secs).step_by(tick) {
        let x = x_of(s as u64 * 1_000_000_000);
        for (_, y1) in [TOP_PANEL, BOTTOM_PANEL] {
            c.line((x as i64, y1 as i64), (x as i64, y1 as i64 + 4), BLACK);
        }
        c.text(
            x.saturating_sub(6),
            BOTTOM_PANEL.1 + 8,
            &format!("{s}s"),
            BLACK,
        );
    }
    std::fs::write(path, c.png()?).with_context(|| format!("write {}", path.display()))
}
