//! The rope family. (Stub: to be filled in.)

use crate::autograd::{BackwardOp, Grads};
use crate::{Result, Tensor};

pub(crate) const NAMES: &[&str] = &[];

pub(crate) enum RopeOp {}

impl BackwardOp for RopeOp {
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
