//! Batched matrix multiplication `[..., m, k] @ [..., k, n]` with broadcasting over the batch
//! dims. Transposed or broadcast operands are passed to the GEMM as strides, never copied.

use crate::autograd::{BackwardOp, Grads, Op};
use crate::{shape, Error, Result, Tensor};

pub(crate) const NAMES: &[&str] = &["matmul"];

pub(crate) struct MatmulOp {
    lhs: Tensor,
    rhs: Tensor,
}

impl Tensor {
    /// Matrix product over the last two dims; batch dims broadcast. A rank-1 operand is not
    /// promoted: use `unsqueeze` explicitly.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        Tensor::same_dtype_device("matmul", &[self, rhs])?;
        if !self.dtype().is_float() {
            return Err(Error::dtype("matmul", self.dtype(), "expected float tensors"));
        }
        let (a, b) = (self.shape(), rhs.shape());
        if a.len() < 2 || b.len() < 2 {
            return Err(Error::shapes_note("matmul", &[a, b], "operands need rank ≥ 2"));
        }
        let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
        let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
        if k != k2 {
            return Err(Error::shapes_note("matmul", &[a, b], format!("inner dims differ ({k} vs {k2})")));
        }
        let batch = shape::broadcast_shape("matmul", &a[..a.len() - 2], &b[..b.len() - 2])?;
        let mut la_shape = batch.clone();
        la_shape.extend([m, k]);
        let mut lb_shape = batch.clone();
        lb_shape.extend([k, n]);
        let la = self.layout().broadcast_to(&la_shape);
        let lb = rhs.layout().broadcast_to(&lb_shape);
        let mut out_shape = batch.clone();
        out_shape.extend([m, n]);
        let out = self.backend().matmul(self, &la, rhs, &lb, &out_shape)?;
        crate::counters::flops(2 * (out_shape.iter().product::<usize>() * k) as u64);
        Ok(out.recorded(&[self, rhs], || Op::Matmul(MatmulOp { lhs: self.clone(), rhs: rhs.clone() })))
    }
}

impl BackwardOp for MatmulOp {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.lhs, &self.rhs]
    }

    fn backward(&self, _out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        // dA = G Bᵀ, dB = Aᵀ G, each summed back over broadcast batch dims.
        if self.lhs.tracks_grad() {
            let ga = grad.matmul(&self.rhs.t()?)?;
            grads.add(&self.lhs, ga.sum_to_shape(self.lhs.shape())?)?;
        }
        if self.rhs.tracks_grad() {
            let gb = self.lhs.t()?.matmul(grad)?;
            grads.add(&self.rhs, gb.sum_to_shape(self.rhs.shape())?)?;
        }
        Ok(())
    }
}
