//! The end-to-end pipeline behind `vlm4vla collect / train / eval / predict / demo`: expert
//! demonstrations from the built-in tabletop environment written as a LeRobot dataset, a tiny
//! PaliGemma-family backbone trained from scratch as a VLA policy, and closed-loop evaluation.
//!
//! - [`Vocab`]: the tiny configs ship no `tokenizer.json`, so instructions are tokenized with a
//!   fixed word-level vocabulary covering every word of the environment's templates (ids below
//!   the tiny vocabulary size, clear of the special and image token ids);
//! - [`backbone_config`] / [`build_policy`]: the backbone by name (`paligemma-demo`, a smaller,
//!   faster variant of `paligemma-tiny`, or `paligemma-tiny` itself), at the dataset's image size;
//! - [`DemoSource`]: a resumable [`BatchSource`] over a whole dataset held in memory;
//! - [`LoadedPolicy`]: a trained checkpoint read back, with the batched closed-loop policy
//!   function [`evaluate`](crate::env::evaluate) needs;
//! - [`run_demo`]: collect → train → evaluate (trained, untrained, mismatched instructions) and a
//!   results table.

mod pipeline;

pub use pipeline::*;
