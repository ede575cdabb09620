//! Task families, their language templates and success checks.

use serde::{Deserialize, Serialize};

use super::invalid;
use super::world::{within, Colour, World, GRASP_Z, OBJECT_HALF, PLATE_RADIUS, UNITS};
use crate::engine::Result;

/// Reach succeeds when the gripper is at most this far (x/y) from the target's centre...
pub const REACH_RADIUS: i32 = UNITS * 5 / 100;
/// ...and at most this high.
pub const REACH_Z: i32 = GRASP_Z;
/// Lift succeeds when the target is held at least this high.
pub const LIFT_Z: i32 = UNITS * 3 / 4;
/// Place succeeds when the resting target's centre is this close to the plate's centre (the
/// whole object footprint then lies on the plate).
pub const PLATE_SUCCESS_RADIUS: i32 = PLATE_RADIUS - OBJECT_HALF;
/// Move-to-side succeeds when the resting target's centre is inside the strip of this width
/// along the named edge (objects start at least 0.2 from every edge).
pub const SIDE_STRIP: i32 = UNITS * 15 / 100;

/// A family of tasks (what the success rate is reported per).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskFamily {
    /// Lower the gripper onto the named object.
    Reach,
    /// Grasp the named object and lift it.
    Lift,
    /// Pick the named object and put it on the plate (pick and place).
    PlaceOnPlate,
    /// Carry the named object to a side of the table.
    MoveToSide,
}

impl TaskFamily {
    pub const ALL: [TaskFamily; 4] =
        [TaskFamily::Reach, TaskFamily::Lift, TaskFamily::PlaceOnPlate, TaskFamily::MoveToSide];

    pub fn name(self) -> &'static str {
        match self {
            TaskFamily::Reach => "reach",
            TaskFamily::Lift => "lift",
            TaskFamily::PlaceOnPlate => "place_on_plate",
            TaskFamily::MoveToSide => "move_to_side",
        }
    }

    pub fn from_name(name: &str) -> Option<TaskFamily> {
        TaskFamily::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A side of the table (as seen in the image).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Left,
    Right,
    Top,
    Bottom,
}

impl Side {
    pub const ALL: [Side; 4] = [Side::Left, Side::Right, Side::Top, Side::Bottom];

    pub fn name(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
            Side::Top => "top",
            Side::Bottom => "bottom",
        }
    }

    /// True when (x, y) lies in this side's strip.
    pub fn contains(self, x: i32, y: i32) -> bool {
        match self {
            Side::Left => x <= SIDE_STRIP,
            Side::Right => x >= UNITS - SIDE_STRIP,
            Side::Top => y <= SIDE_STRIP,
            Side::Bottom => y >= UNITS - SIDE_STRIP,
        }
    }
}

/// What must be achieved, with its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Goal {
    Reach,
    Lift,
    PlaceOnPlate,
    MoveToSide(Side),
}

const REACH_TEMPLATES: &[&str] =
    &["touch the {obj}", "go to the {obj}", "move the gripper to the {obj}", "reach for the {obj}"];
const LIFT_TEMPLATES: &[&str] =
    &["pick up the {obj}", "lift the {obj}", "grasp the {obj} and lift it", "raise the {obj} off the table"];
const PLACE_TEMPLATES: &[&str] = &[
    "put the {obj} on the plate",
    "place the {obj} on the plate",
    "pick up the {obj} and place it on the plate",
    "move the {obj} onto the plate",
];
const SIDE_TEMPLATES: &[&str] = &[
    "move the {obj} to the {side} of the table",
    "put the {obj} on the {side} side of the table",
    "carry the {obj} to the {side} edge",
    "place the {obj} at the {side} of the table",
];

impl Goal {
    pub fn family(self) -> TaskFamily {
        match self {
            Goal::Reach => TaskFamily::Reach,
            Goal::Lift => TaskFamily::Lift,
            Goal::PlaceOnPlate => TaskFamily::PlaceOnPlate,
            Goal::MoveToSide(_) => TaskFamily::MoveToSide,
        }
    }

    /// The sentence templates: `{obj}` is the object phrase ("red block"), `{side}` the side word.
    pub fn templates(self) -> &'static [&'static str] {
        match self {
            Goal::Reach => REACH_TEMPLATES,
            Goal::Lift => LIFT_TEMPLATES,
            Goal::PlaceOnPlate => PLACE_TEMPLATES,
            Goal::MoveToSide(_) => SIDE_TEMPLATES,
        }
    }
}

/// A goal about one object of the scene, worded with one of its templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub goal: Goal,
    /// Index of the target object in `World::objects`.
    pub target: usize,
    /// Index into `goal.templates()`.
    pub template: usize,
}

impl Task {
    pub fn family(&self) -> TaskFamily {
        self.goal.family()
    }

    /// Checks the target and template indices against a world.
    pub fn validate(&self, world: &World) -> Result<()> {
        if self.target >= world.objects.len() {
            return Err(invalid(format!("task: target {} but {} objects", self.target, world.objects.len())));
        }
        if self.template >= self.goal.templates().len() {
            return Err(invalid(format!("task: template {} out of range", self.template)));
        }
        Ok(())
    }

    /// The instruction naming the target.
    pub fn instruction(&self, world: &World) -> String {
        self.instruction_for(world, self.target)
    }

    /// The same sentence naming object `object` instead.
    pub fn instruction_for(&self, world: &World, object: usize) -> String {
        let templates = self.goal.templates();
        let text = templates[self.template % templates.len()].replace("{obj}", &world.objects[object].phrase());
        match self.goal {
            Goal::MoveToSide(side) => text.replace("{side}", side.name()),
            _ => text,
        }
    }

    /// The success check of the goal on a world state.
    pub fn is_success(&self, world: &World) -> bool {
        let g = &world.gripper;
        let o = &world.objects[self.target];
        let held = g.held == Some(self.target);
        let resting = !held && o.z == 0;
        match self.goal {
            Goal::Reach => g.z <= REACH_Z && within(g.x, g.y, o.x, o.y, REACH_RADIUS),
            Goal::Lift => held && g.z >= LIFT_Z,
            Goal::PlaceOnPlate => resting && within(o.x, o.y, world.plate.x, world.plate.y, PLATE_SUCCESS_RADIUS),
            Goal::MoveToSide(side) => resting && side.contains(o.x, o.y),
        }
    }
}

/// The single colour word of an instruction (`None` when there is none or more than one).
pub fn colour_in_instruction(text: &str) -> Option<Colour> {
    let mut found = text.split(|c: char| !c.is_ascii_alphabetic()).filter_map(Colour::from_word);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Replaces the colour word `from` with `to` (whole words only); `None` when `from` is absent.
pub fn swap_colour_word(text: &str, from: Colour, to: Colour) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut swapped = false;
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String, swapped: &mut bool| {
        if word == from.name() {
            out.push_str(to.name());
            *swapped = true;
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphabetic() {
            word.push(c);
        } else {
            flush(&mut word, &mut out, &mut swapped);
            out.push(c);
        }
    }
    flush(&mut word, &mut out, &mut swapped);
    swapped.then_some(out)
}
