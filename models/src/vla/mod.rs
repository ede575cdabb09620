//! The VLM4VLA policy: learnable action queries appended after the prompt, the FCDecoder head, the
//! action-chunk loss, batched prediction, and action normalisation.

pub mod head;
pub mod normalize;
pub mod policy;

pub use head::{FcDecoder, GripperMode, HeadConfig, HeadOutput};
pub use normalize::{ActionNormalizer, ActionStats, NormalizationMode};
pub use policy::{
    LatentCombine, LossValues, PolicyConfig, PolicyLoss, TrainableParts, VlaPolicy, ACTION_QUERY, DEFAULT_ACTION_DIM,
};
