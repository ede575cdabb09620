//! The scripted expert: a stateless controller (the action is a function of the world and the
//! task only), so a demonstration can be regenerated from any state and two runs agree exactly.
//!
//! Pick routine: with the gripper open and lifted, fly straight at the target (x/y saturated at
//! the step limit, direction kept), start lowering once within [`DESCEND_RADIUS`], close when
//! centred at grasp height. Carry routine: lift while far from the goal point, lower once within
//! [`DESCEND_RADIUS`], open when centred at grasp height. The gripper command is `+1` (open) or
//! `-1` (closed) at every step; rotations are always 0.

use super::tasks::{Goal, Side, Task};
use super::world::{within, World, GRASP_Z, UNITS};
use super::{Action, EnvConfig};

/// Distance to the goal point (x/y) under which the expert lowers the gripper.
pub const DESCEND_RADIUS: i32 = UNITS * 12 / 100;
/// Where move-to-side drops the object: this far from the named edge.
pub const SIDE_DROP: i32 = UNITS * 8 / 100;

/// The expert's action for `task` in `world`.
pub fn expert_action(world: &World, task: &Task, cfg: &EnvConfig) -> Action {
    let g = &world.gripper;
    let o = &world.objects[task.target];
    let step = cfg.xy_step_units();
    let holding_target = g.held == Some(task.target);
    if task.goal == Goal::Reach {
        return approach(world, o.x, o.y, step, 1.0);
    }
    if !holding_target {
        if g.held.is_some() || !g.open {
            return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        }
        if (g.x, g.y) == (o.x, o.y) && g.z <= GRASP_Z {
            return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0];
        }
        return approach(world, o.x, o.y, step, 1.0);
    }
    let (tx, ty) = match task.goal {
        Goal::Reach => unreachable!("handled above"),
        Goal::Lift => return [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
        Goal::PlaceOnPlate => (world.plate.x, world.plate.y),
        Goal::MoveToSide(side) => match side {
            Side::Left => (SIDE_DROP, g.y),
            Side::Right => (UNITS - SIDE_DROP, g.y),
            Side::Top => (g.x, SIDE_DROP),
            Side::Bottom => (g.x, UNITS - SIDE_DROP),
        },
    };
    if (g.x, g.y) == (tx, ty) && g.z <= GRASP_Z {
        return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
    }
    approach(world, tx, ty, step, -1.0)
}

/// Fly towards (tx, ty): lift while far, lower when near.
fn approach(world: &World, tx: i32, ty: i32, step: i32, gripper: f32) -> Action {
    let g = &world.gripper;
    let (ax, ay) = toward(tx - g.x, ty - g.y, step);
    let dz = if within(g.x, g.y, tx, ty, DESCEND_RADIUS) {
        if g.z > 0 {
            -1.0
        } else {
            0.0
        }
    } else if g.z < UNITS {
        1.0
    } else {
        0.0
    };
    [ax, ay, dz, 0.0, 0.0, 0.0, gripper]
}

/// The x/y action that moves by (dx, dy), scaled down (direction kept) to the step limit.
fn toward(dx: i32, dy: i32, step: i32) -> (f32, f32) {
    let m = dx.abs().max(dy.abs());
    if m == 0 {
        return (0.0, 0.0);
    }
    let denom = m.max(step) as f32;
    (dx as f32 / denom, dy as f32 / denom)
}
