//! The end-to-end pipeline behind `vlm4vla collect / train / eval / predict / demo`: expert
//! demonstrations from the built-in tabletop environment written as a LeRobot dataset, a tiny
//! PaliGemma-family backbone trained from scratch as a VLA policy, and closed-loop evaluation.
//!
//! - [`Vocab`]: the tiny configs ship no `tokenizer.json`, so instructions are tokenized with a
//!   fixed word-level vocabulary covering every word of the environment's templates (ids below
//!   the tiny vocabulary size, clear of the special and image token ids);
//! - [`backbone_config`] / [`build_policy`]: the backbone by name (`paligemma-demo`, a smaller,
//!   faster variant of `paligemma-tiny`, or `paligemma-tiny` itself), at the dataset's image size;
//! - [`DemoSource`]: a resumable [`BatchSource`](crate::train::BatchSource) over a whole dataset
//!   held in memory;
//! - [`LoadedPolicy`]: a trained checkpoint read back, with the batched closed-loop policy
//!   function [`evaluate`](crate::env::evaluate) needs;
//! - [`run_demo`]: collect → train → evaluate (trained, untrained, mismatched instructions) and a
//!   results table.
//!
//! One file per job: `vocab.rs` (the word vocabulary), `model.rs` (backbone, encoder, policy,
//! checkpoint record), `collect.rs` (expert rollouts → dataset), `grounding.rs` (grounding
//! rows), `source.rs` (training batches), `train.rs` (config file and training run),
//! `policy.rs` (inference and evaluation), `run.rs` (the demo and its results table).

mod collect;
mod grounding;
mod model;
mod policy;
mod run;
mod source;
mod train;
mod vocab;

pub use collect::{collect, CollectOptions, CollectSummary, DEFAULT_PLAN_STEPS, FPS, ROBOT_TYPE};
pub use grounding::{GroundingConfig, GROUNDING_FIRST_SEED, GROUNDING_TEMPLATE, GROUNDING_WINDOW};
pub use model::{
    backbone_config, build_policy, demo_init, normalizer, tabletop_encoder, Encoder, PipelineExtra, BACKBONES,
    DEMO_BACKBONE,
};
pub use policy::{LoadedPolicy, EVAL_FIRST_SEED};
pub use run::{results_table, run_demo, DemoOptions, DemoReport, HELDOUT_DEMO_FIRST_SEED};
pub use source::DemoSource;
pub use train::{train, PipelineConfig, TrainOutcome};
pub use vocab::{Vocab, UNK_ID, VOCAB_NAME};

use crate::engine::Error;

/// Values per tabletop action: 6 arm values (x, y, z deltas and three rotations the world
/// ignores), then the gripper (±1): the policy's `action_dim`, with `gripper = "last"`.
pub const ACTION_DIMS: usize = 7;
/// The arm values of a tabletop action.
pub const ARM_DIMS: usize = ACTION_DIMS - 1;

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid { op: "demo", msg: msg.into() }
}
