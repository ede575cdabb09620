//! Matrix products. [`Tensor::matmul`]: batched `[..., m, k] @ [..., k, n]` with broadcasting over
//! the batch dims. [`Tensor::linear`]: a Linear layer `x Wᵀ + b` with every leading dim of `x`
//! folded into the GEMM's rows. Transposed or broadcast operands are passed to the GEMM as
//! strides, never copied.

use crate::autograd::{BackwardOp, Grads, Op};
use crate::{counters, shape, Error, Layout, Result, Tensor};

pub(crate) const NAMES: &[&str] = &["matmul", "linear"];

pub(crate) enum MatmulOp {
    Matmul { lhs: Tensor, rhs: Tensor },
    Linear { x: Tensor, w: Tensor, bias: Option<Tensor> },
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
        let out = self.backend().matmul(self, &la, rhs, &lb, None, &out_shape)?;
        counters::flops(2 * (out_shape.iter().product::<usize>() * k) as u64);
        Ok(out.recorded(&[self, rhs], || Op::Matmul(MatmulOp::Matmul { lhs: self.clone(), rhs: rhs.clone() })))
    }

    /// A Linear layer: `self Wᵀ (+ b)` for `self: [..., in]`, `w: [out, in]` (the stored layout),
    /// `b: [out]`, shaped `[..., out]`.
    ///
    /// One GEMM over all rows: the leading dims fold into the GEMM's M (a view when they are
    /// contiguous), the transposed weight is read through its strides and the bias is added in
    /// the GEMM's epilogue. The backward is one GEMM for the input's gradient (`G W`), one for the
    /// weight's (`Gᵀ X`, written in the weight's own `[out, in]` layout) and one row reduction for
    /// the bias.
    ///
    /// ```
    /// use vlm4vla_engine::{Device, Tensor};
    /// let x = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], &[1, 2, 3], Device::Cpu).unwrap();
    /// let w = Tensor::from_vec(vec![1f32, 0., 0., 0., 1., 1.], &[2, 3], Device::Cpu).unwrap();
    /// let b = Tensor::from_vec(vec![10f32, 20.], &[2], Device::Cpu).unwrap();
    /// let y = x.linear(&w, Some(&b)).unwrap();
    /// assert_eq!(y.shape(), &[1, 2, 2]);
    /// assert_eq!(y.to_vec::<f32>().unwrap(), [11., 25., 14., 31.]);
    /// ```
    pub fn linear(&self, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let mut all = vec![self, w];
        all.extend(bias);
        Tensor::same_dtype_device("linear", &all)?;
        if !self.dtype().is_float() {
            return Err(Error::dtype("linear", self.dtype(), "expected float tensors"));
        }
        let shapes: Vec<&[usize]> = all.iter().map(|t| t.shape()).collect();
        let (x, ws) = (self.shape(), w.shape());
        if ws.len() != 2 || x.last() != Some(&ws[1]) {
            return Err(Error::shapes_note("linear", &shapes, "expected x [..., in] and w [out, in]"));
        }
        let (out, k) = (ws[0], ws[1]);
        if bias.is_some_and(|b| b.shape() != [out]) {
            return Err(Error::shapes_note("linear", &shapes, format!("the bias must be [{out}]")));
        }
        let x2 = self.rows_view()?;
        let rows = x2.shape()[0];
        let wt = w.layout().permute(&[1, 0]);
        let y = self.backend().matmul(&x2, x2.layout(), w, &wt, bias, &[rows, out])?;
        counters::flops(2 * (rows * out * k) as u64);
        let mut out_shape = x[..x.len() - 1].to_vec();
        out_shape.push(out);
        let y = y.view_with(Layout::contiguous(&out_shape), None);
        Ok(y.recorded(&all, || Op::Matmul(MatmulOp::Linear { x: self.clone(), w: w.clone(), bias: bias.cloned() })))
    }

    /// `[..., k]` as `[rows, k]` without recording: a view where the leading dims fold, else a
    /// contiguous copy.
    fn rows_view(&self) -> Result<Tensor> {
        let s = self.shape();
        let (rows, k) = (s[..s.len().saturating_sub(1)].iter().product(), s.last().copied().unwrap_or(1));
        match self.layout().reshape_view(&[rows, k]) {
            Some(l) => Ok(self.view_with(l, None)),
            None => {
                let c = self.backend().convert(self, self.dtype())?;
                Ok(c.view_with(Layout::contiguous(&[rows, k]), None))
            }
        }
    }
}

impl BackwardOp for MatmulOp {
    fn name(&self) -> &'static str {
        match self {
            MatmulOp::Matmul { .. } => "matmul",
            MatmulOp::Linear { .. } => "linear",
        }
    }

    fn inputs(&self) -> Vec<&Tensor> {
        match self {
            MatmulOp::Matmul { lhs, rhs } => vec![lhs, rhs],
            MatmulOp::Linear { x, w, bias } => [Some(x), Some(w), bias.as_ref()].into_iter().flatten().collect(),
        }
    }

    fn backward(&self, _out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        match self {
            MatmulOp::Matmul { lhs, rhs } => {
                // dA = G Bᵀ, dB = Aᵀ G, each summed back over broadcast batch dims.
                if lhs.tracks_grad() {
                    let ga = grad.matmul(&rhs.t()?)?;
                    grads.add(lhs, ga.sum_to_shape(lhs.shape())?)?;
                }
                if rhs.tracks_grad() {
                    let gb = lhs.t()?.matmul(grad)?;
                    grads.add(rhs, gb.sum_to_shape(rhs.shape())?)?;
                }
            }
            MatmulOp::Linear { x, w, bias } => {
                // With X and G folded to rows: dX = G W, dW = Gᵀ X, db = Σ_rows G.
                let g = grad.rows_view()?;
                if x.tracks_grad() {
                    grads.add(x, g.matmul(w)?.reshape(x.shape())?)?;
                }
                if w.tracks_grad() {
                    grads.add(w, g.t()?.matmul(&x.rows_view()?)?)?;
                }
                if let Some(b) = bias.as_ref().filter(|b| b.tracks_grad()) {
                    grads.add(b, g.sum(0)?)?;
                }
            }
        }
        Ok(())
    }
}
