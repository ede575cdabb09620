//! Vision-language backbones (Qwen2.5-VL, PaliGemma, Kosmos-2) on the vlm4vla engine, loaded from
//! their Hugging Face checkpoints by on-disk tensor name, and the VLM4VLA policy built on them.
//!
//! Models call engine ops only (attention, rms_norm, rope, ...), never a backend.

pub mod common;
pub mod export;
pub mod kosmos2;
pub mod paligemma;
pub mod plan;
pub mod qwen2_5_vl;
pub mod registry;
pub mod vla;

pub use common::backbone::{Backbone, BackboneInput, BackboneOutput, ParamGroup};
