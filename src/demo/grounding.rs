//! Grounding co-training rows ("point at the red block"): their config table and how one row is
//! generated.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::invalid;
use crate::engine::Result;
use crate::env::EnvConfig;

/// The instruction of a grounding row; `{obj}` is the object phrase ("red block").
pub const GROUNDING_TEMPLATE: &str = "point at the {obj}";
/// Grounding scenes use seeds from here on (never the training or evaluation episodes' seeds).
pub const GROUNDING_FIRST_SEED: u64 = 1 << 40;

/// Grounding co-training: the tiny backbone's stand-in for the VLM pretraining a real one
/// brings. A grounding row is a freshly generated scene (gripper anywhere) with the instruction
/// "point at the {colour} {shape}"; its target "action" holds the offset from the gripper to the
/// named object (x, y, in table widths, unsaturated) in the first two arm dimensions, zero motion
/// elsewhere and the gripper open, on every chunk step. It teaches exactly what a from-scratch
/// model lacks: which object the colour word names (a referring-expression grounding task, as
/// PaliGemma's detection pretraining), measured from the gripper as the actions are.
///
/// Pointing at the absolute position instead was tried and is a trap: the query's attention
/// locks onto the named object, and the demonstrations (which also need the gripper) then stop
/// improving (loss flat for 9,000 steps).
///
/// TOML:
///
/// ```toml
/// [grounding]
/// steps = 6000        # optimizer steps of grounding rows only, before any demonstration...
/// until_loss = 0.001  # ...or fewer: until the pointing loss is this low
/// fraction = 0.25     # then this share of every batch stays grounding rows
/// lr_scale_after = 0.5 # and the learning rate is scaled by this (default 1)
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroundingConfig {
    /// Optimizer steps of grounding rows only (with `until_loss`: at most this many).
    pub steps: usize,
    pub fraction: f64,
    /// End the grounding-only phase as soon as the mean training loss of its last
    /// [`GROUNDING_WINDOW`] steps is below this. The pointing task is learned in a sudden
    /// transition whose step varies from run to run (1,500 to past 2,500 steps); demonstrations
    /// that start before it completes were learned far more slowly (0–7.5% success against
    /// 62–85% in runs of the same length).
    pub until_loss: Option<f64>,
    /// Scale the learning rate by this once the grounding-only phase is over (None: 1). The
    /// pointing task is learned fastest at a high rate; the demonstrations after it bound the
    /// instruction to its object more reliably at a lower one.
    pub lr_scale_after: Option<f64>,
}

/// Steps whose mean loss `until_loss` is compared with.
pub const GROUNDING_WINDOW: usize = 50;

impl GroundingConfig {
    pub fn is_off(&self) -> bool {
        self.steps == 0 && self.fraction == 0.0
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.fraction.is_finite() && (0.0..1.0).contains(&self.fraction)) {
            return Err(invalid(format!("grounding.fraction = {} must be in [0, 1)", self.fraction)));
        }
        if let Some(l) = self.until_loss {
            if !(l.is_finite() && l > 0.0) {
                return Err(invalid(format!("grounding.until_loss = {l} must be a positive number")));
            }
        }
        if let Some(l) = self.lr_scale_after {
            if !(l.is_finite() && l > 0.0 && l <= 10.0) {
                return Err(invalid(format!("grounding.lr_scale_after = {l} must be in (0, 10]")));
            }
        }
        Ok(())
    }
}

/// One grounding row (see [`GroundingConfig`]).
pub(super) struct GroundingRow {
    pub(super) image: Vec<u8>,
    pub(super) instruction: String,
    /// From the gripper to the named object, in table widths (x, y).
    pub(super) point: [f32; 2],
    pub(super) state: [f32; 7],
}

impl GroundingRow {
    pub(super) fn sample(env: &EnvConfig, rng: &mut ChaCha8Rng) -> GroundingRow {
        Self::sample_with_world(env, rng).0
    }

    fn sample_with_world(env: &EnvConfig, rng: &mut ChaCha8Rng) -> (GroundingRow, crate::env::World) {
        let seed = GROUNDING_FIRST_SEED + rng.gen_range(0..1u64 << 32);
        let (mut world, _) = crate::env::world::generate(env, seed, None);
        let u = crate::env::UNITS;
        world.gripper.x = rng.gen_range(0..=u);
        world.gripper.y = rng.gen_range(0..=u);
        world.gripper.z = rng.gen_range(0..=u);
        let o = world.objects[rng.gen_range(0..world.objects.len())];
        let mut image = Vec::new();
        crate::env::render(&world, env.image_size, &mut image);
        let g = world.gripper;
        let row = GroundingRow {
            image,
            instruction: GROUNDING_TEMPLATE.replace("{obj}", &o.phrase()),
            point: [(o.x - g.x) as f32 / u as f32, (o.y - g.y) as f32 / u as f32],
            state: g.proprio(),
        };
        (row, world)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    use crate::demo::Vocab;

    #[test]
    fn grounding_rows_point_from_the_gripper_to_the_named_object() {
        let env = EnvConfig { image_size: 32, ..EnvConfig::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let u = crate::env::UNITS as f32;
        for _ in 0..50 {
            let (row, world) = GroundingRow::sample_with_world(&env, &mut rng);
            let named: Vec<_> =
                world.objects.iter().filter(|o| row.instruction == format!("point at the {}", o.phrase())).collect();
            assert_eq!(named.len(), 1, "{} names one object of the scene", row.instruction);
            let (o, g) = (named[0], world.gripper);
            assert_eq!(row.point, [(o.x - g.x) as f32 / u, (o.y - g.y) as f32 / u]);
            assert_eq!(row.state, g.proprio());
            assert!(g.held.is_none() && g.open);
            let mut image = Vec::new();
            crate::env::render(&world, 32, &mut image);
            assert_eq!(row.image, image);
            assert!(Vocab::tabletop().unknown_words(&row.instruction).is_empty(), "{}", row.instruction);
        }
    }
}
