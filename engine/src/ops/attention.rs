//! Scaled dot-product attention with masks and GQA. (Stub.)

use crate::autograd::{BackwardOp, Grads};
use crate::{Result, Tensor};

pub(crate) const NAMES: &[&str] = &[];

pub(crate) enum AttentionOp {}

impl BackwardOp for AttentionOp {
    fn name(&self) -> &'static str {
        match *self {}
    }
    fn inputs(&self) -> Vec<&Tensor> {
        match *self {}
    }
    fn backward(&self, _out: &Tensor, _grad: &Tensor, _grads: &mut Grads) -> Result<()> {
        match *self {}
    }
}

/// Which keys each query may see (combined with an optional key-padding mask).
#[derive(Clone, Debug, PartialEq)]
pub enum AttentionMask {
    /// Every query sees every key.
    Full,
    /// Query `i` sees keys `j ≤ i + (Lk − Lq)` (bottom-right aligned).
    Causal,
    /// Per batch row `b`, a prefix length `p[b]`: query `i` sees key `j` if `j ≤ i` or `j < p[b]`.
    PrefixLm(Vec<usize>),
    /// Block-diagonal segments given by cumulative lengths over the sequence (`[0, l1, l1+l2, …, L]`),
    /// shared by all batch rows: a query sees the keys of its own segment.
    Segments(Vec<usize>),
}

/// The attention output and the per-row log-sum-exp of the scaled, masked scores (what the
/// backward needs); `lse` is `-inf` for rows that see no key, whose output is zero.
pub struct AttentionOutput {
    pub out: Tensor,
    pub lse: Tensor,
}
