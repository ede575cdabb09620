//! The VLM4VLA policy: action query, FCDecoder head, losses and action normalisation.

pub mod normalize;

pub use normalize::{ActionNormalizer, ActionStats, NormalizationMode};
