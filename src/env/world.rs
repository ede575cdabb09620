//! The world state, its seeded generation and its (kinematic) dynamics, all in integer units.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::tasks::{Goal, Side, Task, TaskFamily};
use super::{invalid, Action, EnvConfig};
use crate::engine::Result;

/// World units per table side (and per full lift height). Positions are integers in `0..=UNITS`.
pub const UNITS: i32 = 4096;

const fn frac(num: i32, den: i32) -> i32 {
    UNITS * num / den
}

/// Half the side of a block, and the radius of a ball.
pub const OBJECT_HALF: i32 = frac(5, 100);
/// Radius of the plate.
pub const PLATE_RADIUS: i32 = frac(12, 100);
/// A closing gripper grasps the nearest object whose centre is this close (in x/y)...
pub const GRASP_RADIUS: i32 = frac(5, 100);
/// ...if the gripper is at most this high.
pub const GRASP_Z: i32 = frac(1, 4);
/// Object centres and the plate centre are drawn in `[SPAWN_MARGIN, UNITS - SPAWN_MARGIN]`.
pub const SPAWN_MARGIN: i32 = frac(20, 100);
/// The gripper starts in `[GRIPPER_MARGIN, UNITS - GRIPPER_MARGIN]`, fully lifted and open.
pub const GRIPPER_MARGIN: i32 = frac(15, 100);
/// The gripper starts at least this far (x/y) from every object centre (when it can within 200
/// draws), so its lifted fingers hide no object in the first frame.
pub const MIN_GRIPPER_GAP: i32 = frac(20, 100);
/// Smallest distance between two object centres at the start.
pub const MIN_OBJECT_GAP: i32 = frac(16, 100);
/// Smallest distance between an object centre and the plate centre at the start.
pub const MIN_PLATE_GAP: i32 = frac(20, 100);

/// Object colours: saturated and far apart, so they stay distinct at 56 px.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Cyan,
}

impl Colour {
    pub const ALL: [Colour; 6] =
        [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Purple, Colour::Cyan];

    /// The word instructions use.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Cyan => "cyan",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 30],
            Colour::Green => [30, 170, 50],
            Colour::Blue => [30, 70, 235],
            Colour::Yellow => [245, 215, 20],
            Colour::Purple => [150, 50, 200],
            Colour::Cyan => [20, 205, 220],
        }
    }

    pub fn from_word(word: &str) -> Option<Colour> {
        Colour::ALL.into_iter().find(|c| c.name() == word)
    }
}

/// Object shapes; the instruction's noun names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A square seen from above.
    Block,
    /// A disc seen from above.
    Ball,
}

impl Shape {
    pub fn noun(self) -> &'static str {
        match self {
            Shape::Block => "block",
            Shape::Ball => "ball",
        }
    }
}

/// A movable object: its centre and height in world units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub colour: Colour,
    pub shape: Shape,
    pub x: i32,
    pub y: i32,
    /// 0 when resting on the table; the gripper's height while held.
    pub z: i32,
}

impl Object {
    /// "red block".
    pub fn phrase(&self) -> String {
        format!("{} {}", self.colour.name(), self.shape.noun())
    }
}

/// The parallel gripper, seen from above.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gripper {
    pub x: i32,
    pub y: i32,
    /// 0 at the table, `UNITS` fully lifted.
    pub z: i32,
    pub open: bool,
    /// Index of the held object.
    pub held: Option<usize>,
}

impl Gripper {
    /// `[x, y, z, 0, 0, 0, ±1]` with positions in `[0, 1]`.
    pub fn proprio(&self) -> [f32; 7] {
        let u = UNITS as f32;
        let g = if self.open { 1.0 } else { -1.0 };
        [self.x as f32 / u, self.y as f32 / u, self.z as f32 / u, 0.0, 0.0, 0.0, g]
    }
}

/// The target plate (flat: objects rest on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plate {
    pub x: i32,
    pub y: i32,
}

/// Everything that moves or is drawn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct World {
    pub objects: Vec<Object>,
    pub plate: Plate,
    pub gripper: Gripper,
}

/// Squared x/y distance in world units.
pub fn dist2(ax: i32, ay: i32, bx: i32, by: i32) -> i64 {
    let dx = (ax - bx) as i64;
    let dy = (ay - by) as i64;
    dx * dx + dy * dy
}

/// True when two x/y points are at most `r` apart.
pub fn within(ax: i32, ay: i32, bx: i32, by: i32, r: i32) -> bool {
    dist2(ax, ay, bx, by) <= (r as i64) * (r as i64)
}

impl World {
    /// Checks a hand-built world: object count, unique colours, coordinates and the held index.
    pub fn validate(&self) -> Result<()> {
        let n = self.objects.len();
        if !(2..=Colour::ALL.len()).contains(&n) {
            return Err(invalid(format!("world: {n} objects, expected 2..={}", Colour::ALL.len())));
        }
        let inside = |v: i32| (0..=UNITS).contains(&v);
        for (i, o) in self.objects.iter().enumerate() {
            if !(inside(o.x) && inside(o.y) && inside(o.z)) {
                return Err(invalid(format!("world: object {i} at ({}, {}, {}) is off the table", o.x, o.y, o.z)));
            }
            if self.objects[..i].iter().any(|p| p.colour == o.colour) {
                return Err(invalid(format!("world: colour {} appears twice", o.colour.name())));
            }
        }
        let g = &self.gripper;
        if !(inside(g.x) && inside(g.y) && inside(g.z) && inside(self.plate.x) && inside(self.plate.y)) {
            return Err(invalid("world: gripper or plate is off the table"));
        }
        if let Some(h) = g.held {
            if h >= n || g.open {
                return Err(invalid(format!("world: gripper holds object {h} (open: {}, {n} objects)", g.open)));
            }
        }
        Ok(())
    }

    /// One step of kinematics: move the gripper (clipped deltas, rotations ignored), carry the held
    /// object, then open or close. Closing at most [`GRASP_Z`] high grasps the nearest object
    /// within [`GRASP_RADIUS`]; opening drops the held object onto the table where it is.
    pub fn apply(&mut self, action: &Action, cfg: &EnvConfig) -> Result<()> {
        if let Some(i) = action.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!("env step: action[{i}] is {} (actions must be finite)", action[i])));
        }
        let delta = |v: f32, step: i32| (v.clamp(-1.0, 1.0) * step as f32).round() as i32;
        let (xy, zs) = (cfg.xy_step_units(), cfg.z_step_units());
        let g = &mut self.gripper;
        g.x = (g.x + delta(action[0], xy)).clamp(OBJECT_HALF, UNITS - OBJECT_HALF);
        g.y = (g.y + delta(action[1], xy)).clamp(OBJECT_HALF, UNITS - OBJECT_HALF);
        g.z = (g.z + delta(action[2], zs)).clamp(0, UNITS);
        if let Some(h) = g.held {
            let o = &mut self.objects[h];
            (o.x, o.y, o.z) = (g.x, g.y, g.z);
        }
        let want_open = action[6] > 0.0;
        if g.open && !want_open {
            g.open = false;
            if g.z <= GRASP_Z {
                g.held = self
                    .objects
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| within(o.x, o.y, g.x, g.y, GRASP_RADIUS))
                    .min_by_key(|(i, o)| (dist2(o.x, o.y, g.x, g.y), *i))
                    .map(|(i, _)| i);
                if let Some(h) = g.held {
                    let o = &mut self.objects[h];
                    (o.x, o.y, o.z) = (g.x, g.y, g.z);
                }
            }
        } else if !g.open && want_open {
            g.open = true;
            if let Some(h) = g.held.take() {
                self.objects[h].z = 0;
            }
        }
        Ok(())
    }
}

/// Draws a scene and a task from `seed` (the family too when `family` is `None`).
pub fn generate(cfg: &EnvConfig, seed: u64, family: Option<TaskFamily>) -> (World, Task) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let family = family.unwrap_or_else(|| cfg.families[rng.gen_range(0..cfg.families.len())]);
    let n = rng.gen_range(cfg.min_objects..=cfg.max_objects);
    let mut colours = Colour::ALL;
    colours.shuffle(&mut rng);
    let shapes: Vec<Shape> =
        (0..n).map(|_| if cfg.mixed_shapes && rng.gen_bool(0.5) { Shape::Ball } else { Shape::Block }).collect();
    let spawn = SPAWN_MARGIN..=UNITS - SPAWN_MARGIN;
    let (plate, positions) = 'scene: loop {
        let plate = Plate { x: rng.gen_range(spawn.clone()), y: rng.gen_range(spawn.clone()) };
        let mut positions: Vec<(i32, i32)> = Vec::with_capacity(n);
        for _ in 0..n {
            let mut placed = false;
            for _ in 0..200 {
                let (x, y) = (rng.gen_range(spawn.clone()), rng.gen_range(spawn.clone()));
                let free = !within(x, y, plate.x, plate.y, MIN_PLATE_GAP - 1)
                    && positions.iter().all(|&(px, py)| !within(x, y, px, py, MIN_OBJECT_GAP - 1));
                if free {
                    positions.push((x, y));
                    placed = true;
                    break;
                }
            }
            if !placed {
                continue 'scene;
            }
        }
        break (plate, positions);
    };
    let objects = positions
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| Object { colour: colours[i], shape: shapes[i], x, y, z: 0 })
        .collect();
    let margin = GRIPPER_MARGIN..=UNITS - GRIPPER_MARGIN;
    let mut gripper = Gripper { x: 0, y: 0, z: UNITS, open: true, held: None };
    for _ in 0..200 {
        (gripper.x, gripper.y) = (rng.gen_range(margin.clone()), rng.gen_range(margin.clone()));
        if positions.iter().all(|&(x, y)| !within(x, y, gripper.x, gripper.y, MIN_GRIPPER_GAP - 1)) {
            break;
        }
    }
    let target = rng.gen_range(0..n);
    let goal = match family {
        TaskFamily::Reach => Goal::Reach,
        TaskFamily::Lift => Goal::Lift,
        TaskFamily::PlaceOnPlate => Goal::PlaceOnPlate,
        TaskFamily::MoveToSide => Goal::MoveToSide(Side::ALL[rng.gen_range(0..Side::ALL.len())]),
    };
    let template = rng.gen_range(0..goal.templates().len());
    (World { objects, plate, gripper }, Task { goal, target, template })
}
