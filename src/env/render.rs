//! Top-down rendering with integer arithmetic only: a pixel is covered by a shape when its
//! centre is, tested exactly in world units scaled by `2 * size`, so every machine draws the same
//! bytes.
//!
//! Draw order: table with a darker rim, the plate (white with a grey rim), resting objects (blocks
//! as squares, balls as discs, each with a darker outline), the held object (drawn larger the
//! higher it is), then the gripper: a dark "Π" of two fingers and a palm, fingers wide apart when
//! open and close together when closed, the whole drawn up to 1.5× larger as it lifts.

use super::world::{Object, Shape, World, OBJECT_HALF, PLATE_RADIUS, UNITS};

const TABLE: [u8; 3] = [206, 178, 138];
const TABLE_RIM: [u8; 3] = [150, 118, 82];
const PLATE_RIM: [u8; 3] = [150, 150, 150];
const PLATE: [u8; 3] = [246, 246, 246];
const GRIPPER: [u8; 3] = [40, 40, 40];

const RIM: i32 = UNITS * 2 / 100;
const PLATE_RIM_WIDTH: i32 = UNITS * 15 / 1000;
const OUTLINE: i32 = UNITS / 100;
const FINGER_HALF_WIDTH: i32 = UNITS * 18 / 1000;
const FINGER_HALF_LENGTH: i32 = UNITS * 45 / 1000;
const FINGER_OFFSET_OPEN: i32 = UNITS * 85 / 1000;
const FINGER_OFFSET_CLOSED: i32 = UNITS * 55 / 1000;
const PALM_HALF_HEIGHT: i32 = UNITS * 15 / 1000;

/// Renders `world` into `out` as `size * size * 3` RGB bytes (row 0 at the top of the table).
pub fn render(world: &World, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.resize(size * size * 3, 0);
    let mut c = Canvas { buf: out, size: size as i64 };
    let half = UNITS / 2;
    c.rect(half, half, half, half, TABLE_RIM);
    c.rect(half, half, half - RIM, half - RIM, TABLE);
    c.disc(world.plate.x, world.plate.y, PLATE_RADIUS, PLATE_RIM);
    c.disc(world.plate.x, world.plate.y, PLATE_RADIUS - PLATE_RIM_WIDTH, PLATE);
    let held = world.gripper.held;
    for (i, o) in world.objects.iter().enumerate() {
        if held != Some(i) {
            c.object(o, OBJECT_HALF);
        }
    }
    let g = &world.gripper;
    if let Some(h) = held {
        let o = &world.objects[h];
        c.object(o, scale(OBJECT_HALF, UNITS + o.z * 3 / 10));
    }
    let s = UNITS + g.z / 2;
    let offset = scale(if g.open { FINGER_OFFSET_OPEN } else { FINGER_OFFSET_CLOSED }, s);
    let (fw, fl, ph) = (scale(FINGER_HALF_WIDTH, s), scale(FINGER_HALF_LENGTH, s), scale(PALM_HALF_HEIGHT, s));
    c.rect(g.x - offset, g.y, fw, fl, GRIPPER);
    c.rect(g.x + offset, g.y, fw, fl, GRIPPER);
    c.rect(g.x, g.y - fl, offset + fw, ph, GRIPPER);
}

fn scale(v: i32, s: i32) -> i32 {
    ((v as i64 * s as i64) / UNITS as i64) as i32
}

fn darker(rgb: [u8; 3]) -> [u8; 3] {
    rgb.map(|v| (v as u16 * 3 / 5) as u8)
}

struct Canvas<'a> {
    buf: &'a mut Vec<u8>,
    size: i64,
}

impl Canvas<'_> {
    fn object(&mut self, o: &Object, half: i32) {
        let rgb = o.colour.rgb();
        match o.shape {
            Shape::Block => {
                self.rect(o.x, o.y, half, half, darker(rgb));
                self.rect(o.x, o.y, half - OUTLINE, half - OUTLINE, rgb);
            }
            Shape::Ball => {
                self.disc(o.x, o.y, half, darker(rgb));
                self.disc(o.x, o.y, half - OUTLINE, rgb);
            }
        }
    }

    /// Pixel index range whose centres may lie in `[c - h, c + h]` (world units).
    fn span(&self, c: i32, h: i32) -> std::ops::Range<i64> {
        let lo = ((c - h) as i64 * self.size).div_euclid(UNITS as i64).max(0);
        let hi = (((c + h) as i64 * self.size).div_euclid(UNITS as i64) + 1).min(self.size);
        lo..hi.max(lo)
    }

    /// Calls `inside(dx, dy)` with the pixel centre's offset from (cx, cy), both in world units
    /// times `2 * size`, and paints the pixel when it returns true.
    fn paint(&mut self, cx: i32, cy: i32, hx: i32, hy: i32, rgb: [u8; 3], inside: impl Fn(i64, i64) -> bool) {
        let two_s = 2 * self.size;
        let (cx2, cy2) = (cx as i64 * two_s, cy as i64 * two_s);
        for py in self.span(cy, hy) {
            let dy = (2 * py + 1) * UNITS as i64 - cy2;
            for px in self.span(cx, hx) {
                let dx = (2 * px + 1) * UNITS as i64 - cx2;
                if inside(dx, dy) {
                    let at = ((py * self.size + px) * 3) as usize;
                    self.buf[at..at + 3].copy_from_slice(&rgb);
                }
            }
        }
    }

    fn rect(&mut self, cx: i32, cy: i32, hx: i32, hy: i32, rgb: [u8; 3]) {
        let two_s = 2 * self.size;
        let covered =
            |c: i32, h: i32, p: i64| ((2 * p + 1) * UNITS as i64 - c as i64 * two_s).abs() <= h as i64 * two_s;
        let cols: Vec<i64> = self.span(cx, hx).filter(|&p| covered(cx, hx, p)).collect();
        let (Some(&x0), Some(&x1)) = (cols.first(), cols.last()) else { return };
        let row_bytes: Vec<u8> = (x0..=x1).flat_map(|_| rgb).collect();
        for py in self.span(cy, hy).filter(|&p| covered(cy, hy, p)) {
            let at = ((py * self.size + x0) * 3) as usize;
            self.buf[at..at + row_bytes.len()].copy_from_slice(&row_bytes);
        }
    }

    fn disc(&mut self, cx: i32, cy: i32, r: i32, rgb: [u8; 3]) {
        let r2 = r as i64 * 2 * self.size;
        let r2 = r2 * r2;
        self.paint(cx, cy, r, r, rgb, |dx, dy| dx * dx + dy * dy <= r2);
    }
}
