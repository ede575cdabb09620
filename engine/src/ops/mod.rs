//! Every op family in one file each: the public functions, their shape and dtype checks, the
//! graph record and the backward rule. The work itself is the backend's primitives
//! ([`crate::backend`]), reached through `Tensor::backend`; nothing here knows a device.

pub(crate) mod activation;
pub(crate) mod attention;
pub(crate) mod binary;
pub(crate) mod index;
pub(crate) mod loss;
pub(crate) mod matmul;
pub(crate) mod norm;
pub(crate) mod reduce;
pub(crate) mod rope;
pub(crate) mod unary;
pub(crate) mod view;

pub use crate::kinds::{AttentionMask, Reduction, RmsNormKind};
pub use attention::{attention, attention_composite, attention_with, AttentionKeys, AttentionOutput};
pub use loss::{
    bce_with_logits, bce_with_logits_composite, cross_entropy, cross_entropy_composite, huber, huber_composite, mse,
    mse_composite,
};
pub use rope::rope_composite;

/// The names of every op the graph can record, by family. Tests use this list: each
/// differentiable op needs a gradcheck entry and a property test.
pub fn op_names() -> Vec<&'static str> {
    [
        view::NAMES,
        unary::NAMES,
        binary::NAMES,
        reduce::NAMES,
        matmul::NAMES,
        index::NAMES,
        norm::NAMES,
        activation::NAMES,
        rope::NAMES,
        attention::NAMES,
        loss::NAMES,
        &["checkpoint"],
    ]
    .concat()
}
