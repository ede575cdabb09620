//! Normalisations: softmax, log_softmax, rms_norm, layer_norm, l2_normalize. (Stub.)

use crate::autograd::{BackwardOp, Grads};
use crate::{Result, Tensor};

pub(crate) const NAMES: &[&str] = &[];

pub(crate) enum NormOp {}

impl BackwardOp for NormOp {
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

/// Which RMSNorm: `x̂·w` (Qwen, LLaMA) or Gemma's `x̂·(1 + w)` (zero-centred stored weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RmsNormKind {
    Plain,
    Gemma,
}
