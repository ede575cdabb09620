//! Views and layout ops: reshape, permute/transpose, narrow, broadcast, squeeze/unsqueeze,
//! contiguous, dtype conversion. Views share storage; only `contiguous` (on a strided tensor),
//! `reshape` of a strided tensor and `to_dtype` copy.
//!
//! Broadcasting lives here and only here: `broadcast_as` is a zero-stride view whose backward
//! sums over the broadcast dims, so no other backward rule reduces over broadcast dims.

use crate::autograd::{record, BackwardOp, Grads, Op};
use crate::{shape, DType, Dim, Error, Layout, Result, Tensor};

pub(crate) const NAMES: &[&str] = &["reshape", "permute", "narrow", "broadcast_as", "contiguous", "to_dtype"];

pub(crate) enum ViewOp {
    Reshape { arg: Tensor },
    Permute { arg: Tensor, perm: Vec<usize> },
    Narrow { arg: Tensor, dim: usize, start: usize },
    Broadcast { arg: Tensor },
    Contiguous { arg: Tensor },
    ToDType { arg: Tensor },
}

impl Tensor {
    /// A tensor with the same elements in row-major order and another shape. A view when this
    /// tensor is contiguous, a copy otherwise.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape::elem_count(shape) != self.elem_count() {
            return Err(Error::shapes_note("reshape", &[self.shape(), shape], "element counts differ"));
        }
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let src = self.contiguous()?;
        let layout = src.layout().reshape_view(shape).expect("contiguous tensors reshape as views");
        let op = record(&[&src], || Op::View(ViewOp::Reshape { arg: src.clone() }));
        Ok(src.view_with(layout, op))
    }

    /// Reorder dimensions (a view).
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let mut seen = vec![false; self.rank()];
        if perm.len() != self.rank() || perm.iter().any(|&p| p >= self.rank() || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::shapes_note("permute", &[self.shape(), perm], "not a permutation of the dims"));
        }
        let layout = self.layout().permute(perm);
        let op = record(&[self], || Op::View(ViewOp::Permute { arg: self.clone(), perm: perm.to_vec() }));
        Ok(self.view_with(layout, op))
    }

    /// Swap two dimensions (a view).
    pub fn transpose(&self, d0: impl Dim, d1: impl Dim) -> Result<Tensor> {
        let d0 = d0.resolve(self.rank(), "transpose", self.shape())?;
        let d1 = d1.resolve(self.rank(), "transpose", self.shape())?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(d0, d1);
        self.permute(&perm)
    }

    /// Transpose of the last two dims.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::shapes_note("t", &[self.shape()], "needs rank ≥ 2"));
        }
        self.transpose(-2, -1)
    }

    /// `len` entries of `dim` starting at `start` (a view).
    pub fn narrow(&self, dim: impl Dim, start: usize, len: usize) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "narrow", self.shape())?;
        if start + len > self.shape()[d] {
            return Err(Error::shapes_note(
                "narrow",
                &[self.shape()],
                format!("range {start}..{} out of bounds for dim {d}", start + len),
            ));
        }
        if start == 0 && len == self.shape()[d] {
            return Ok(self.clone());
        }
        let layout = self.layout().narrow(d, start, len);
        let op = record(&[self], || Op::View(ViewOp::Narrow { arg: self.clone(), dim: d, start }));
        Ok(self.view_with(layout, op))
    }

    /// Broadcast to `shape` (numpy rules) without copying: expanded dims get stride 0.
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Tensor> {
        let target = shape::broadcast_shape("broadcast_as", self.shape(), shape)?;
        if target != shape {
            return Err(Error::shapes_note("broadcast_as", &[self.shape(), shape], "cannot broadcast"));
        }
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let layout = self.layout().broadcast_to(shape);
        let op = record(&[self], || Op::View(ViewOp::Broadcast { arg: self.clone() }));
        Ok(self.view_with(layout, op))
    }

    /// Alias of [`broadcast_as`](Self::broadcast_as), as in PyTorch.
    pub fn expand(&self, shape: &[usize]) -> Result<Tensor> {
        self.broadcast_as(shape)
    }

    /// Remove a size-1 dimension.
    pub fn squeeze(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "squeeze", self.shape())?;
        if self.shape()[d] != 1 {
            return Err(Error::shapes_note("squeeze", &[self.shape()], format!("dim {d} is not of size 1")));
        }
        let mut shape = self.shape().to_vec();
        let mut strides = self.layout().strides().to_vec();
        shape.remove(d);
        strides.remove(d);
        self.reshape_view_unchecked(shape, strides)
    }

    /// Insert a size-1 dimension at `dim` (`dim` may equal the rank, or be negative).
    pub fn unsqueeze(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank() + 1, "unsqueeze", self.shape())?;
        let mut shape = self.shape().to_vec();
        let mut strides = self.layout().strides().to_vec();
        let st = if d < self.rank() { strides[d] * shape[d] } else { 1 };
        shape.insert(d, 1);
        strides.insert(d, st);
        self.reshape_view_unchecked(shape, strides)
    }

    /// Flatten dims `start..=end` into one.
    pub fn flatten(&self, start: impl Dim, end: impl Dim) -> Result<Tensor> {
        let s = start.resolve(self.rank(), "flatten", self.shape())?;
        let e = end.resolve(self.rank(), "flatten", self.shape())?;
        if s > e {
            return Err(Error::invalid("flatten", format!("start {s} after end {e}")));
        }
        let mut shape = self.shape()[..s].to_vec();
        shape.push(self.shape()[s..=e].iter().product());
        shape.extend_from_slice(&self.shape()[e + 1..]);
        self.reshape(&shape)
    }

    /// Flatten everything into one dimension.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(&[self.elem_count()])
    }

    fn reshape_view_unchecked(&self, shape: Vec<usize>, strides: Vec<usize>) -> Result<Tensor> {
        let layout = Layout::new(shape, strides, self.layout().offset());
        let op = record(&[self], || Op::View(ViewOp::Reshape { arg: self.clone() }));
        Ok(self.view_with(layout, op))
    }

    /// A row-major contiguous tensor with these elements (this tensor if already contiguous).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let out = self.backend().convert(self, self.dtype())?;
        Ok(out.recorded(&[self], || Op::View(ViewOp::Contiguous { arg: self.clone() })))
    }

    /// Convert element type (a copy; differentiable between float types).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let track = dtype.is_float() && self.dtype().is_float();
        let inputs: &[&Tensor] = if track { &[self] } else { &[] };
        let out = self.backend().convert(self, dtype)?;
        Ok(out.recorded(inputs, || Op::View(ViewOp::ToDType { arg: self.clone() })))
    }

    /// Sum `self` down to `shape`, the inverse of broadcasting (used by backward rules).
    pub fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let extra = self
            .rank()
            .checked_sub(shape.len())
            .ok_or_else(|| Error::shapes_note("sum_to_shape", &[self.shape(), shape], "target has higher rank"))?;
        let mut dims: Vec<usize> = (0..extra).collect();
        for (i, &d) in shape.iter().enumerate() {
            if d == 1 && self.shape()[extra + i] != 1 {
                dims.push(extra + i);
            } else if d != self.shape()[extra + i] {
                return Err(Error::shapes_note(
                    "sum_to_shape",
                    &[self.shape(), shape],
                    "not a broadcast of the target",
                ));
            }
        }
        self.sum_dims_keepdim(&dims)?.reshape(shape)
    }

    /// A zero tensor of `full` shape with `self` written at `start..start+len` along `dim`.
    pub(crate) fn pad_into(&self, full: &[usize], dim: usize, start: usize) -> Result<Tensor> {
        self.backend().pad_into(self, full, dim, start)
    }
}

impl BackwardOp for ViewOp {
    fn name(&self) -> &'static str {
        match self {
            ViewOp::Reshape { .. } => "reshape",
            ViewOp::Permute { .. } => "permute",
            ViewOp::Narrow { .. } => "narrow",
            ViewOp::Broadcast { .. } => "broadcast_as",
            ViewOp::Contiguous { .. } => "contiguous",
            ViewOp::ToDType { .. } => "to_dtype",
        }
    }

    fn inputs(&self) -> Vec<&Tensor> {
        match self {
            ViewOp::Reshape { arg }
            | ViewOp::Permute { arg, .. }
            | ViewOp::Narrow { arg, .. }
            | ViewOp::Broadcast { arg }
            | ViewOp::Contiguous { arg }
            | ViewOp::ToDType { arg } => vec![arg],
        }
    }

    fn backward(&self, _out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        match self {
            ViewOp::Reshape { arg } => grads.add(arg, grad.reshape(arg.shape())?),
            ViewOp::Permute { arg, perm } => {
                let mut inv = vec![0; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inv[p] = i;
                }
                grads.add(arg, grad.permute(&inv)?.contiguous()?)
            }
            ViewOp::Narrow { arg, dim, start } => grads.add_narrow(arg, grad.clone(), *dim, *start),
            ViewOp::Broadcast { arg } => grads.add(arg, grad.sum_to_shape(arg.shape())?),
            ViewOp::Contiguous { arg } => grads.add(arg, grad.clone()),
            ViewOp::ToDType { arg } => grads.add(arg, grad.to_dtype(arg.dtype())?),
        }
    }
}
