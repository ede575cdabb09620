//! Fine-tuning any of the three backbones into a VLA policy on a LeRobot v3 dataset: the path
//! `vlm4vla train` takes for a config with a `[data]` table.
//!
//! - [`config`]: [`FinetuneConfig`] (a [`TrainConfig`](crate::train::TrainConfig) plus `dtype`,
//!   `device` and `[data]`);
//! - [`model`]: what `backbone = "…"` names (a built-in, a checkpoint directory, a hub id in the
//!   local cache), built on the device in the dtype, with the [`Encoder`] its files define;
//! - [`encoder`] and [`text`]: frames and instructions → backbone batches, per family;
//! - [`source`]: batches streamed from [`data::Loader`](crate::data::Loader) workers through an
//!   encoding thread;
//! - [`train()`](train::train) and [`FinetunedPolicy`]: training, and the checkpoint loaded back for
//!   `predict` and `eval`.

pub mod config;
pub mod encoder;
pub mod export;
pub mod model;
pub mod plan;
pub mod policy;
pub mod source;
pub mod text;
pub mod train;

pub use config::{DataConfig, FinetuneConfig, Normalization};
pub use encoder::{Encoder, Processor, DEFAULT_PROMPT};
pub use model::ModelSource;
pub use policy::{FinetunedPolicy, OfflineReport};
pub use train::{is_finetune_checkpoint, train, FinetuneExtra, FinetuneOutcome};
