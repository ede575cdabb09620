//! vlm4vla: turn a vision-language model into a vision-language-action policy (the VLM4VLA
//! recipe) and fine-tune it on our own engine.
//!
//! The workspace crates are re-exported here: [`engine`] (tensors, autograd, backends,
//! optimizers, I/O) and [`models`] (backbones and the VLA policy).

pub use vlm4vla_engine as engine;
pub use vlm4vla_models as models;

pub mod data;
pub mod demo;
pub mod env;
pub mod finetune;
pub mod serve;
pub mod train;
