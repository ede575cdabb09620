//! Fine-tuning a [`VlaPolicy`](crate::models::vla::VlaPolicy) (DESIGN.md §5, "Training").
//!
//! - [`TrainConfig`]: the TOML configuration (strict: unknown keys and invalid values are errors
//!   naming the key or field);
//! - [`Trainer`]: the loop over a [`BatchSource`] (AdamW, warmup + cosine, gradient clipping,
//!   gradient accumulation, trainable-module selection), with JSON-lines metrics, a loss-curve
//!   PNG, a progress bar, atomic checkpoints and exact resume;
//! - [`rundir`]: one run per output directory (the lock, the guard, repairs after a kill);
//! - [`signal`]: SIGINT and SIGTERM as a stop flag;
//! - [`toy`]: a tiny backbone for tests and examples.
//!
//! ```
//! use vlm4vla::models::vla::{HeadConfig, PolicyConfig, VlaPolicy};
//! use vlm4vla::train::toy::{ToyBackbone, ToyConfig};
//! use vlm4vla::train::{TrainConfig, Trainer};
//! # let out = std::env::temp_dir().join(format!("vlm4vla-doc-train-{}", std::process::id()));
//! let mut cfg = TrainConfig::new("toy", &out, 1);
//! cfg.policy = PolicyConfig { chunk: 2, head: HeadConfig { trunk_hidden: None, trunk_out: 8, branch_hidden: vec![8] }, ..Default::default() };
//! let policy = VlaPolicy::new(Box::new(ToyBackbone::new(ToyConfig::default(), 0).unwrap()), cfg.policy.clone(), 0).unwrap();
//! let trainer = Trainer::new(cfg, policy).unwrap();
//! assert_eq!(trainer.step(), 0);
//! # std::fs::remove_dir_all(&out).unwrap();
//! ```

pub mod checkpoint;
pub mod config;
pub mod plot;
pub mod rundir;
pub mod signal;
pub mod toy;
pub mod trainer;

pub use checkpoint::Checkpoint;
pub use config::{OptimConfig, RunConfig, TrainConfig, TrainModule};
pub use trainer::{read_step, Batch, BatchSource, EvalFn, ReplaySource, RunSummary, StepMetrics, Trainer};
