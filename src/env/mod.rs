//! The built-in tabletop manipulation environment: a small, deterministic, seeded world seen from
//! above and rendered to RGB, with language instructions, a scripted expert and a closed-loop
//! evaluator. It is what `vlm4vla demo` collects demonstrations from and evaluates on.
//!
//! - **World** ([`world`]): a unit table with 3–4 coloured objects (blocks and balls, colours
//!   unique per scene so the instruction's colour word decides the target), one white plate, and a
//!   parallel gripper that moves in x/y, lifts in z, opens and closes. All positions are integers
//!   in [`UNITS`] per table side, so stepping and rendering are bit-exact on every machine.
//! - **Actions** are 7-D `[dx, dy, dz, droll, dpitch, dyaw, gripper]` in `[-1, 1]` (clipped), as
//!   in the paper. `dx`/`dy`/`dz` scale to at most [`EnvConfig::max_xy_step`] /
//!   [`EnvConfig::max_z_step`] of the table per step (x grows to the right of the image, y grows
//!   towards the bottom of the image, z grows upwards); the rotation deltas exist but the world
//!   ignores them (the expert outputs 0). The gripper follows the CALVIN convention: `> 0` opens,
//!   `<= 0` closes (the expert emits exactly `+1` / `-1`).
//! - **Tasks** ([`tasks`]): four families with several language templates each: reach ("touch the
//!   red block"), lift ("pick up the red block"), place on the plate ("put the red block on the
//!   plate") and move to a side ("move the red block to the left side of the table"); the last
//!   three need the gripper.
//! - **Expert** ([`expert`]): a stateless scripted controller (its action is a function of the
//!   world and the task only) that solves essentially every episode.
//! - **Evaluation** ([`eval`]): batched closed-loop rollouts with action chunks, success per
//!   family; baselines (random, zero) and the mismatched-instruction control.
//!
//! ```
//! use vlm4vla::env::{EnvConfig, TabletopEnv, TaskFamily};
//! let mut env = TabletopEnv::new(EnvConfig { image_size: 64, ..EnvConfig::default() }).unwrap();
//! let obs = env.reset(7, Some(TaskFamily::Lift)).unwrap();
//! assert_eq!(obs.image.len(), 64 * 64 * 3);
//! while !env.done() {
//!     let a = env.expert_action();
//!     env.step(&a).unwrap();
//! }
//! assert!(env.is_success());
//! ```

pub mod eval;
pub mod expert;
pub mod render;
pub mod tasks;
pub mod world;

use serde::{Deserialize, Serialize};

use crate::engine::{Error, Result};

pub use eval::{
    collect_demonstrations, evaluate, random_policy, zero_policy, Demonstration, EpisodeResult, EpisodeSpec,
    EvalOptions, EvalReport, FamilyStats, InstructionMode,
};
pub use expert::expert_action;
pub use render::render;
pub use tasks::{colour_in_instruction, swap_colour_word, Goal, Side, Task, TaskFamily};
pub use world::{Colour, Gripper, Object, Plate, Shape, World, UNITS};

/// The 7-D action: `[dx, dy, dz, droll, dpitch, dyaw, gripper]`, each in `[-1, 1]`.
pub type Action = [f32; 7];

/// Settings of the environment. Every field has a default; `validate` names the bad one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnvConfig {
    /// Side of the square RGB observation in pixels.
    pub image_size: usize,
    /// Steps before an episode ends without success.
    pub horizon: usize,
    /// Fewest objects in a scene (at least 2: the instruction must choose).
    pub min_objects: usize,
    /// Most objects in a scene (at most the number of colours, 6).
    pub max_objects: usize,
    /// Task families drawn from when `reset` is not given one.
    pub families: Vec<TaskFamily>,
    /// Draw balls as well as blocks (otherwise every object is a block).
    pub mixed_shapes: bool,
    /// Largest x or y move per step, as a fraction of the table side (action 1.0).
    pub max_xy_step: f32,
    /// Largest lift or lower per step, as a fraction of the full lift height (action 1.0).
    pub max_z_step: f32,
}

impl Default for EnvConfig {
    fn default() -> Self {
        EnvConfig {
            image_size: 224,
            horizon: 50,
            min_objects: 3,
            max_objects: 4,
            families: TaskFamily::ALL.to_vec(),
            mixed_shapes: true,
            max_xy_step: 0.06,
            max_z_step: 0.25,
        }
    }
}

impl EnvConfig {
    /// Checks every field and names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| Err(invalid(format!("env config `{field}`: {msg}")));
        if !(16..=1024).contains(&self.image_size) {
            return bad("image_size", format!("{} is outside 16..=1024", self.image_size));
        }
        if self.horizon == 0 || self.horizon > 10_000 {
            return bad("horizon", format!("{} is outside 1..=10000", self.horizon));
        }
        if self.min_objects < 2 || self.min_objects > self.max_objects {
            return bad(
                "min_objects",
                format!("{} must be in 2..=max_objects ({})", self.min_objects, self.max_objects),
            );
        }
        if self.max_objects > Colour::ALL.len() {
            return bad("max_objects", format!("{} exceeds the {} colours", self.max_objects, Colour::ALL.len()));
        }
        if self.families.is_empty() {
            return bad("families", "is empty".into());
        }
        for (field, v, lo, hi) in
            [("max_xy_step", self.max_xy_step, 0.005, 0.5), ("max_z_step", self.max_z_step, 0.05, 1.0)]
        {
            if !(v.is_finite() && (lo..=hi).contains(&v)) {
                return bad(field, format!("{v} is outside {lo}..={hi}"));
            }
        }
        Ok(())
    }

    pub(crate) fn xy_step_units(&self) -> i32 {
        (self.max_xy_step * UNITS as f32).round() as i32
    }

    pub(crate) fn z_step_units(&self) -> i32 {
        (self.max_z_step * UNITS as f32).round() as i32
    }
}

/// What the policy sees at one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// RGB, row-major `[size, size, 3]`, row 0 at the top of the table.
    pub image: Vec<u8>,
    /// Side of the image in pixels.
    pub size: usize,
    /// The instruction in words.
    pub instruction: String,
    /// Gripper state in action layout: `[x, y, z, roll, pitch, yaw, gripper]`, x and y in `[0, 1]`
    /// across the table, z in `[0, 1]` of the lift height, rotations 0, gripper `+1` open / `-1`
    /// closed.
    pub proprio: [f32; 7],
    /// The task family (for bookkeeping; a policy should not need it).
    pub family: TaskFamily,
    /// Steps taken so far in the episode.
    pub step: usize,
}

impl Observation {
    /// Saves the image as a PNG file.
    pub fn save_png(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        save_png(&self.image, self.size, path)
    }
}

/// Saves a square RGB buffer (`size * size * 3` bytes) as a PNG file.
pub fn save_png(rgb: &[u8], size: usize, path: impl AsRef<std::path::Path>) -> Result<()> {
    let path = path.as_ref();
    let img = image::RgbImage::from_raw(size as u32, size as u32, rgb.to_vec()).ok_or_else(|| {
        Error::file(path, format!("image buffer has {} bytes, expected {}", rgb.len(), size * size * 3))
    })?;
    img.save(path).map_err(|e| Error::file(path, format!("cannot write PNG: {e}")))
}

/// What happened in one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepOutcome {
    /// The task is solved (it stays solved: the episode ends on success).
    pub success: bool,
    /// The episode is over (success or horizon reached).
    pub done: bool,
}

/// One tabletop episode at a time: `reset`, then `step` until `done`.
#[derive(Clone, Debug)]
pub struct TabletopEnv {
    cfg: EnvConfig,
    world: World,
    task: Task,
    seed: u64,
    steps: usize,
    success: bool,
}

impl TabletopEnv {
    /// Checks the configuration and builds the environment with an episode from seed 0.
    pub fn new(cfg: EnvConfig) -> Result<Self> {
        cfg.validate()?;
        let family = cfg.families[0];
        let (world, task) = world::generate(&cfg, 0, Some(family));
        Ok(TabletopEnv { cfg, world, task, seed: 0, steps: 0, success: false })
    }

    /// Builds an environment in a given state (hand-built scenes for tests and tools).
    pub fn from_state(cfg: EnvConfig, world: World, task: Task) -> Result<Self> {
        cfg.validate()?;
        world.validate()?;
        task.validate(&world)?;
        let success = task.is_success(&world);
        Ok(TabletopEnv { cfg, world, task, seed: 0, steps: 0, success })
    }

    /// Starts a new episode: the scene, the target and the wording all follow from `seed`;
    /// `family` picks the task family (`None`: drawn from the configured families by the seed).
    pub fn reset(&mut self, seed: u64, family: Option<TaskFamily>) -> Result<Observation> {
        let (world, task) = world::generate(&self.cfg, seed, family);
        self.world = world;
        self.task = task;
        self.seed = seed;
        self.steps = 0;
        self.success = false;
        Ok(self.observe())
    }

    /// Applies one action. Values are clipped to `[-1, 1]`; a non-finite value is an error.
    pub fn step(&mut self, action: &Action) -> Result<StepOutcome> {
        if self.done() {
            return Err(invalid(format!("env step: episode (seed {}) is over; call reset", self.seed)));
        }
        self.world.apply(action, &self.cfg)?;
        self.steps += 1;
        self.success = self.task.is_success(&self.world);
        Ok(StepOutcome { success: self.success, done: self.done() })
    }

    /// The current observation, rendered at the configured size.
    pub fn observe(&self) -> Observation {
        self.observe_with(self.instruction())
    }

    /// The current observation with another instruction in place of the true one.
    pub fn observe_with(&self, instruction: String) -> Observation {
        let mut image = Vec::new();
        render(&self.world, self.cfg.image_size, &mut image);
        Observation {
            image,
            size: self.cfg.image_size,
            instruction,
            proprio: self.world.gripper.proprio(),
            family: self.task.family(),
            step: self.steps,
        }
    }

    /// The true instruction of this episode.
    pub fn instruction(&self) -> String {
        self.task.instruction(&self.world)
    }

    /// The same sentence naming another object of the scene (its colour and noun) instead of the
    /// target; which one follows from the seed. Following it fails the true task.
    pub fn mismatched_instruction(&self) -> String {
        let n = self.world.objects.len();
        let k = 1 + (self.seed % (n as u64 - 1)) as usize;
        let other = (self.task.target + k) % n;
        self.task.instruction_for(&self.world, other)
    }

    /// The scripted expert's action in the current state.
    pub fn expert_action(&self) -> Action {
        expert_action(&self.world, &self.task, &self.cfg)
    }

    pub fn config(&self) -> &EnvConfig {
        &self.cfg
    }
    pub fn world(&self) -> &World {
        &self.world
    }
    pub fn task(&self) -> &Task {
        &self.task
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    pub fn steps(&self) -> usize {
        self.steps
    }
    pub fn is_success(&self) -> bool {
        self.success
    }
    pub fn done(&self) -> bool {
        self.success || self.steps >= self.cfg.horizon
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid { op: "env", msg: msg.into() }
}
