//! The VLA policy: learnable action queries appended after the prompt, the FCDecoder head, the
//! action-chunk loss, and batched prediction.

pub mod head;
pub mod policy;

pub use head::{FcDecoder, HeadConfig, HeadOutput, ARM_DIMS};
pub use policy::{LatentCombine, PolicyConfig, PolicyLoss, VlaPolicy, ACTION_DIMS, ACTION_QUERY};
