//! The loss curve as a PNG: step on x, loss on a log-scale y with a gridline and a label per
//! decade, the raw per-step loss in light blue and an exponential moving average in dark blue.
//! Drawn pixel by pixel (labels from a 3×5 bitmap font), so it needs nothing but `image`.

use image::{ImageFormat, Rgb, RgbImage};
use std::io::Cursor;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const RAW: Rgb<u8> = Rgb([160, 190, 235]);
const SMOOTH: Rgb<u8> = Rgb([20, 60, 170]);

const LEFT: i64 = 56;
const RIGHT: i64 = 16;
const TOP: i64 = 16;
const BOTTOM: i64 = 36;
const FONT_SCALE: i64 = 2;

/// 3×5 glyphs, one row per 3 bits (most significant bit on the left), top row first.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'e' => [0, 7, 7, 4, 7],
        '-' => [0, 0, 7, 0, 0],
        '.' => [0, 0, 0, 0, 2],
        's' => [0, 7, 4, 1, 7],
        't' => [2, 7, 2, 2, 3],
        'p' => [0, 7, 5, 7, 4],
        'l' => [6, 2, 2, 2, 7],
        'o' => [0, 7, 5, 5, 7],
        _ => [0; 5],
    }
}

struct Canvas {
    img: RgbImage,
}

impl Canvas {
    fn put(&mut self, x: i64, y: i64, c: Rgb<u8>) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, c);
        }
    }

    fn line(&mut self, (mut x0, mut y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.put(x0, y0, c);
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }

    /// Text whose top-left corner is at (x, y).
    fn text(&mut self, x: i64, y: i64, s: &str) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        for dy in 0..FONT_SCALE {
                            for dx in 0..FONT_SCALE {
                                let px = x + (i as i64 * 4 + col) * FONT_SCALE + dx;
                                self.put(px, y + row as i64 * FONT_SCALE + dy, BLACK);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn text_width(s: &str) -> i64 {
    (s.chars().count() as i64 * 4 - 1) * FONT_SCALE
}

/// Draw `points` (step, loss) into a `width × height` PNG. Non-finite or non-positive losses are
/// left out (the y axis is logarithmic); with no points left, only the axes are drawn.
pub fn loss_curve_png(points: &[(usize, f64)], width: u32, height: u32) -> Result<Vec<u8>, String> {
    let (w, h) = (width.max(160) as i64, height.max(120) as i64);
    let mut cv = Canvas { img: RgbImage::from_pixel(w as u32, h as u32, WHITE) };
    let (x0, x1, y0, y1) = (LEFT, w - RIGHT, TOP, h - BOTTOM);
    let pts: Vec<(f64, f64)> =
        points.iter().filter(|(_, l)| l.is_finite() && *l > 0.0).map(|&(s, l)| (s as f64, l.log10())).collect();

    let (smin, smax) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (smin, smax) = if pts.is_empty() { (0.0, 1.0) } else { (smin, if smax > smin { smax } else { smin + 1.0 }) };
    let (lmin, lmax) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (dmin, dmax) = if pts.is_empty() { (-1.0, 0.0) } else { (lmin.floor(), lmax.ceil()) };
    let dmax = if dmax > dmin { dmax } else { dmin + 1.0 };
    let px = |s: f64| x0 + ((s - smin) / (smax - smin) * (x1 - x0) as f64).round() as i64;
    let py = |l: f64| y1 - ((l - dmin) / (dmax - dmin) * (y1 - y0) as f64).round() as i64;

    let mut d = dmin as i64;
    while d as f64 <= dmax {
        let y = py(d as f64);
        cv.line((x0, y), (x1, y), GRID);
        cv.line((x0 - 4, y), (x0, y), BLACK);
        let label = format!("1e{d}");
        cv.text(x0 - 8 - text_width(&label), y - 5, &label);
        d += 1;
    }
    for i in 0..=4 {
        let s = smin + (smax - smin) * i as f64 / 4.0;
        let x = px(s);
        cv.line((x, y1), (x, y1 + 4), BLACK);
        let label = format!("{}", s.round() as i64);
        cv.text((x - text_width(&label) / 2).clamp(0, w - text_width(&label)), y1 + 10, &label);
    }
    cv.line((x0, y0), (x0, y1), BLACK);
    cv.line((x0, y1), (x1, y1), BLACK);
    cv.text(4, 2, "loss");
    cv.text(x1 - text_width("step"), h - 12, "step");

    let mut ema = pts.first().map_or(0.0, |p| p.1);
    let raw: Vec<(i64, i64)> = pts.iter().map(|&(s, l)| (px(s), py(l))).collect();
    let smooth: Vec<(i64, i64)> = pts
        .iter()
        .map(|&(s, l)| {
            ema = 0.9 * ema + 0.1 * l;
            (px(s), py(ema))
        })
        .collect();
    for (line, colour) in [(&raw, RAW), (&smooth, SMOOTH)] {
        if let [only] = line.as_slice() {
            cv.put(only.0, only.1, colour);
        }
        for seg in line.windows(2) {
            cv.line(seg[0], seg[1], colour);
        }
    }
    let mut bytes = Vec::new();
    cv.img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png).map_err(|e| e.to_string())?;
    Ok(bytes)
}
