//! Reductions along dimensions (with or without keepdim): sum, mean, max, min, argmax; and the
//! global L2 norm of a whole tensor.

use crate::autograd::{BackwardOp, Grads, Op};
use crate::{Dim, Error, Result, Tensor};

pub(crate) const NAMES: &[&str] = &["sum", "mean", "max", "min", "norm_l2"];

pub(crate) enum ReduceOp {
    Sum {
        arg: Tensor,
    },
    Mean {
        arg: Tensor,
        count: usize,
    },
    /// Max/min route the gradient to the selected index (the first one on ties).
    Select {
        arg: Tensor,
        dim: usize,
        /// i64, shaped like the output, on the input's device.
        indices: Tensor,
        is_max: bool,
    },
    NormL2 {
        arg: Tensor,
    },
}

impl Tensor {
    fn check_float(&self, op: &'static str) -> Result<()> {
        if self.dtype().is_float() {
            Ok(())
        } else {
            Err(Error::dtype(op, self.dtype(), "expected a float tensor"))
        }
    }

    /// Sum over the given dims, keeping them as size 1.
    pub fn sum_dims_keepdim(&self, dims: &[usize]) -> Result<Tensor> {
        self.check_float("sum")?;
        for &d in dims {
            d.resolve(self.rank(), "sum", self.shape())?;
        }
        let mut out_shape = self.shape().to_vec();
        for &d in dims {
            out_shape[d] = 1;
        }
        if out_shape == self.shape() {
            return Ok(self.clone());
        }
        let mut sorted = dims.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let out = self.backend().sum_dims(self, &sorted, &out_shape)?;
        Ok(out.recorded(&[self], || Op::Reduce(ReduceOp::Sum { arg: self.clone() })))
    }

    pub fn sum_keepdim(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "sum", self.shape())?;
        self.sum_dims_keepdim(&[d])
    }

    pub fn sum(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "sum", self.shape())?;
        self.sum_dims_keepdim(&[d])?.squeeze(d)
    }

    /// Sum of all elements as a rank-0 tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        let dims: Vec<usize> = (0..self.rank()).collect();
        self.sum_dims_keepdim(&dims)?.reshape(&[])
    }

    /// Mean over the given dims, keeping them as size 1.
    pub fn mean_dims_keepdim(&self, dims: &[usize]) -> Result<Tensor> {
        let s = crate::no_grad(|| self.sum_dims_keepdim(dims))?;
        let count = self.elem_count() / s.elem_count().max(1);
        let out = self.backend().scale(&s, 1.0 / count.max(1) as f64)?;
        Ok(out.recorded(&[self], || Op::Reduce(ReduceOp::Mean { arg: self.clone(), count })))
    }

    pub fn mean_keepdim(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "mean", self.shape())?;
        self.mean_dims_keepdim(&[d])
    }

    pub fn mean(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "mean", self.shape())?;
        self.mean_keepdim(d)?.squeeze(d)
    }

    pub fn mean_all(&self) -> Result<Tensor> {
        let dims: Vec<usize> = (0..self.rank()).collect();
        self.mean_dims_keepdim(&dims)?.reshape(&[])
    }

    /// (values, i64 indices), both shaped like the input with `dim` of size 1.
    fn select_reduce(&self, dim: usize, is_max: bool) -> Result<(Tensor, Tensor)> {
        let op = if is_max { "max" } else { "min" };
        self.check_float(op)?;
        if self.shape()[dim] == 0 {
            return Err(Error::shapes_note(op, &[self.shape()], format!("cannot reduce empty dim {dim}")));
        }
        let (vals, indices) = self.backend().select(self, dim, is_max)?;
        let t = vals.recorded(&[self], || {
            Op::Reduce(ReduceOp::Select { arg: self.clone(), dim, indices: indices.clone(), is_max })
        });
        Ok((t, indices))
    }

    pub fn max_keepdim(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "max", self.shape())?;
        Ok(self.select_reduce(d, true)?.0)
    }
    pub fn max(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "max", self.shape())?;
        self.max_keepdim(d)?.squeeze(d)
    }
    pub fn min_keepdim(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "min", self.shape())?;
        Ok(self.select_reduce(d, false)?.0)
    }
    pub fn min(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "min", self.shape())?;
        self.min_keepdim(d)?.squeeze(d)
    }

    /// Index of the largest element along `dim` (first on ties), as i64, keeping `dim` as size 1.
    pub fn argmax_keepdim(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "argmax", self.shape())?;
        let (_, idx) = crate::no_grad(|| self.detach().select_reduce(d, true))?;
        Ok(idx)
    }

    pub fn argmax(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "argmax", self.shape())?;
        self.argmax_keepdim(d)?.squeeze(d)
    }

    /// The L2 norm of all elements, `sqrt(Σ x²)`, as a rank-0 tensor.
    pub fn norm_l2(&self) -> Result<Tensor> {
        self.check_float("norm_l2")?;
        let out = self.backend().norm_l2(self)?;
        Ok(out.recorded(&[self], || Op::Reduce(ReduceOp::NormL2 { arg: self.clone() })))
    }
}

impl BackwardOp for ReduceOp {
    fn name(&self) -> &'static str {
        match self {
            ReduceOp::Sum { .. } => "sum",
            ReduceOp::Mean { .. } => "mean",
            ReduceOp::Select { is_max: true, .. } => "max",
            ReduceOp::Select { is_max: false, .. } => "min",
            ReduceOp::NormL2 { .. } => "norm_l2",
        }
    }

    fn inputs(&self) -> Vec<&Tensor> {
        match self {
            ReduceOp::Sum { arg }
            | ReduceOp::Mean { arg, .. }
            | ReduceOp::Select { arg, .. }
            | ReduceOp::NormL2 { arg } => {
                vec![arg]
            }
        }
    }

    fn backward(&self, out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        match self {
            ReduceOp::Sum { arg } => grads.add(arg, grad.broadcast_as(arg.shape())?.contiguous()?),
            ReduceOp::Mean { arg, count } => {
                grads.add(arg, grad.scale(1.0 / (*count).max(1) as f64)?.broadcast_as(arg.shape())?.contiguous()?)
            }
            ReduceOp::Select { arg, dim, indices, is_max } => {
                grads.add(arg, arg.backend().select_backward(grad, indices, arg.shape(), *dim, *is_max)?)
            }
            ReduceOp::NormL2 { arg } => {
                // d‖x‖/dx = x / ‖x‖ (zero at x = 0).
                let n = out.to_scalar::<f64>()?;
                let factor = if n > 0.0 { grad.to_scalar::<f64>()? / n } else { 0.0 };
                grads.add(arg, arg.scale(factor)?.contiguous()?)
            }
        }
    }
}
