//! Normalisations over the last dim: softmax, log_softmax, rms_norm (plain and Gemma's `1 + w`,
//! with an optional residual add), layer_norm, l2_normalize.
//!
//! Each is a fused op with a fused backward primitive that computes every input gradient in one
//! pass. What each keeps for backward: softmax and log_softmax their output (the node itself),
//! rms_norm the per-row rstd, layer_norm the per-row mean and rstd, l2_normalize its output and the
//! per-row norm. Statistics are kept in the compute precision (f32 for bf16/f16 inputs). Every op
//! also has a composite twin (`<op>_composite`) built from primitive ops, a second reference for
//! tests.

use crate::autograd::{BackwardOp, Grads, Op};
use crate::cpu::norm::{self as kernels, Compute};
use crate::cpu::{self, FloatVec, Floats};
use crate::{DType, Dim, Error, Result, Tensor};
use std::borrow::Cow;

pub(crate) const NAMES: &[&str] = &["softmax", "log_softmax", "rms_norm", "layer_norm", "l2_normalize"];

pub(crate) enum NormOp {
    /// Softmax (or log_softmax) over the last dim of a contiguous input; backward reads the output.
    Softmax {
        arg: Tensor,
        log: bool,
    },
    RmsNorm {
        arg: Tensor,
        weight: Option<Tensor>,
        kind: RmsNormKind,
        rstd: Tensor,
    },
    LayerNorm {
        arg: Tensor,
        weight: Option<Tensor>,
        bias: Option<Tensor>,
        mean: Tensor,
        rstd: Tensor,
    },
    L2Normalize {
        arg: Tensor,
        eps: f64,
        norm: Tensor,
    },
}

/// Which RMSNorm: `x̂·w` (Qwen, LLaMA) or Gemma's `x̂·(1 + w)` (zero-centred stored weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RmsNormKind {
    Plain,
    Gemma,
}

// ----- checks and data access ------------------------------------------------------------------

/// A float tensor of rank ≥ 1 with a finite, non-negative `eps`.
fn check_input(op: &'static str, x: &Tensor, eps: f64) -> Result<()> {
    if !x.dtype().is_float() {
        return Err(Error::dtype(op, x.dtype(), "expected a float tensor"));
    }
    if x.rank() == 0 {
        return Err(Error::shapes_note(op, &[x.shape()], "normalises over the last dim; got a scalar"));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(op, format!("eps must be finite and non-negative, got {eps}")));
    }
    Ok(())
}

/// A per-feature parameter (weight or bias) must be `[D]` for an input `[..., D]`, same dtype and
/// device.
fn check_param(op: &'static str, x: &Tensor, p: Option<&Tensor>, what: &str) -> Result<()> {
    let Some(p) = p else { return Ok(()) };
    let d = x.shape()[x.rank() - 1];
    if p.shape() != [d] {
        return Err(Error::shapes_note(op, &[x.shape(), p.shape()], format!("{what} must have shape [{d}]")));
    }
    Tensor::same_dtype_device(op, &[x, p])
}

/// A small tensor's elements in compute precision, owned (weights, biases, per-row statistics).
fn owned_floats(t: &Tensor) -> Result<Floats<'static>> {
    t.with_cpu(|s, l| {
        Ok(match cpu::floats(s, l) {
            Floats::F32(v) => Floats::F32(Cow::Owned(v.into_owned())),
            Floats::F64(v) => Floats::F64(Cow::Owned(v.into_owned())),
        })
    })
}

fn owned_opt(t: Option<&Tensor>) -> Result<Option<Floats<'static>>> {
    t.map(owned_floats).transpose()
}

/// The slice of `f` in the compute type `T` (operands always share it; a mismatch is a bug
/// reported as an error rather than a panic).
fn slice_of<'a, T: Compute>(op: &'static str, f: &'a Floats<'_>) -> Result<&'a [T]> {
    T::slice(f).ok_or_else(|| Error::invalid(op, "operands computed in different precisions"))
}

fn opt_slice<'a, T: Compute>(op: &'static str, f: Option<&'a Floats<'_>>) -> Result<Option<&'a [T]>> {
    f.map(|f| slice_of(op, f)).transpose()
}

/// Per-row statistics as a tensor in compute precision.
fn stats_tensor(v: FloatVec, rows: usize) -> Tensor {
    let dtype = match v {
        FloatVec::F32(_) => DType::F32,
        FloatVec::F64(_) => DType::F64,
    };
    Tensor::from_cpu(v.into_storage(dtype), &[rows], None)
}

/// A gradient in the dtype and shape of `like`.
fn grad_like(v: FloatVec, like: &Tensor) -> Tensor {
    Tensor::from_cpu(v.into_storage(like.dtype()), like.shape(), None)
}

// ----- public ops --------------------------------------------------------------------------------

impl Tensor {
    /// Softmax along `dim`, `exp(x − max) / Σ exp(x − max)` (numerically stable). Any shape; a
    /// dim other than the last is moved last, normalised and moved back.
    ///
    /// ```
    /// use vlm4vla_engine::{Device, Tensor};
    /// let x = Tensor::from_vec(vec![1f32, 2., 3., 1e4], &[2, 2], Device::Cpu).unwrap();
    /// let y = x.softmax(-1).unwrap().to_vec::<f32>().unwrap();
    /// assert!((y[0] + y[1] - 1.0).abs() < 1e-6 && y[3] == 1.0);
    /// ```
    pub fn softmax(&self, dim: impl Dim) -> Result<Tensor> {
        self.softmax_any("softmax", dim, false)
    }

    /// Log-softmax along `dim`, `x − max − ln Σ exp(x − max)`. Any shape.
    pub fn log_softmax(&self, dim: impl Dim) -> Result<Tensor> {
        self.softmax_any("log_softmax", dim, true)
    }

    fn softmax_any(&self, op: &'static str, dim: impl Dim, log: bool) -> Result<Tensor> {
        if !self.dtype().is_float() {
            return Err(Error::dtype(op, self.dtype(), "expected a float tensor"));
        }
        let d = dim.resolve(self.rank(), op, self.shape())?;
        let last = self.rank() - 1;
        if d != last {
            return self.transpose(d, last)?.contiguous()?.softmax_last(log)?.transpose(d, last);
        }
        self.softmax_last(log)
    }

    fn softmax_last(&self, log: bool) -> Result<Tensor> {
        let record = || Op::Norm(NormOp::Softmax { arg: self.clone(), log });
        #[cfg(feature = "cuda")]
        if self.device().is_cuda() {
            return Ok(Tensor::from_op(crate::cuda::norm::softmax(self, log)?, self.shape(), &[self], record));
        }
        let dtype = self.dtype();
        let (_, width) = cpu::rows_of(self.shape());
        let data = self.with_cpu(|s, l| {
            let x = cpu::floats(s, l);
            Ok(crate::float_map!(x, v => kernels::softmax_forward(&v, width, log)).into_storage(dtype))
        })?;
        Ok(Tensor::from_op(data, self.shape(), &[self], record))
    }

    /// RMSNorm over the last dim: `x / sqrt(mean(x²) + eps) · w` (`Plain`) or `· (1 + w)`
    /// (`Gemma`); `x: [..., D]`, `weight: [D]` (none: no scaling). bf16/f16 inputs compute in f32.
    ///
    /// ```
    /// use vlm4vla_engine::{Device, RmsNormKind, Tensor};
    /// let x = Tensor::from_vec(vec![3f32, 4.], &[1, 2], Device::Cpu).unwrap();
    /// let y = x.rms_norm(None, 0.0, RmsNormKind::Plain).unwrap().to_vec::<f32>().unwrap();
    /// let r = (12.5f32).sqrt();
    /// assert!((y[0] - 3. / r).abs() < 1e-6 && (y[1] - 4. / r).abs() < 1e-6);
    /// ```
    pub fn rms_norm(&self, weight: Option<&Tensor>, eps: f64, kind: RmsNormKind) -> Result<Tensor> {
        const OP: &str = "rms_norm";
        check_input(OP, self, eps)?;
        check_param(OP, self, weight, "weight")?;
        let (rows, width) = cpu::rows_of(self.shape());
        let mut inputs = vec![self];
        inputs.extend(weight);
        #[cfg(feature = "cuda")]
        if self.device().is_cuda() {
            let (y, rstd) = crate::cuda::norm::rms_norm(self, weight, eps, kind)?;
            return Ok(Tensor::from_op(y, self.shape(), &inputs, || {
                Op::Norm(NormOp::RmsNorm { arg: self.clone(), weight: weight.cloned(), kind, rstd })
            }));
        }
        let w = owned_opt(weight)?;
        let (y, rstd) = self.with_cpu(|s, l| {
            fn go<T: Compute>(
                x: &[T],
                w: Option<&Floats>,
                width: usize,
                eps: f64,
                kind: RmsNormKind,
            ) -> Result<(FloatVec, FloatVec)> {
                let (y, rstd) = kernels::rms_norm_forward(x, opt_slice(OP, w)?, width, eps, kind);
                Ok((T::wrap(y), T::wrap(rstd)))
            }
            match cpu::floats(s, l) {
                Floats::F32(x) => go(&x, w.as_ref(), width, eps, kind),
                Floats::F64(x) => go(&x, w.as_ref(), width, eps, kind),
            }
        })?;
        Ok(Tensor::from_op(y.into_storage(self.dtype()), self.shape(), &inputs, || {
            Op::Norm(NormOp::RmsNorm {
                arg: self.clone(),
                weight: weight.cloned(),
                kind,
                rstd: stats_tensor(rstd, rows),
            })
        }))
    }

    /// The pre-norm residual step: `(sum, rms_norm(sum))` with `sum = self + residual` (same
    /// shape `[..., D]`). The sum is the next residual stream; the normed value feeds the block.
    pub fn rms_norm_residual(
        &self,
        residual: &Tensor,
        weight: Option<&Tensor>,
        eps: f64,
        kind: RmsNormKind,
    ) -> Result<(Tensor, Tensor)> {
        if self.shape() != residual.shape() {
            return Err(Error::shapes_note(
                "rms_norm_residual",
                &[self.shape(), residual.shape()],
                "input and residual must have the same shape",
            ));
        }
        let sum = self.add(residual)?;
        let normed = sum.rms_norm(weight, eps, kind)?;
        Ok((sum, normed))
    }

    /// LayerNorm over the last dim: `(x − mean) / sqrt(var + eps) · w + b` with the biased
    /// variance (as torch); `x: [..., D]`, `weight`, `bias: [D]`, each optional.
    pub fn layer_norm(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        check_input(OP, self, eps)?;
        check_param(OP, self, weight, "weight")?;
        check_param(OP, self, bias, "bias")?;
        let (rows, width) = cpu::rows_of(self.shape());
        let mut inputs = vec![self];
        inputs.extend(weight);
        inputs.extend(bias);
        #[cfg(feature = "cuda")]
        if self.device().is_cuda() {
            let (y, mean, rstd) = crate::cuda::norm::layer_norm(self, weight, bias, eps)?;
            return Ok(Tensor::from_op(y, self.shape(), &inputs, || {
                Op::Norm(NormOp::LayerNorm {
                    arg: self.clone(),
                    weight: weight.cloned(),
                    bias: bias.cloned(),
                    mean,
                    rstd,
                })
            }));
        }
        let (w, b) = (owned_opt(weight)?, owned_opt(bias)?);
        let (y, mean, rstd) = self.with_cpu(|s, l| {
            fn go<T: Compute>(
                x: &[T],
                w: Option<&Floats>,
                b: Option<&Floats>,
                width: usize,
                eps: f64,
            ) -> Result<(FloatVec, FloatVec, FloatVec)> {
                let (y, mean, rstd) = kernels::layer_norm_forward(x, opt_slice(OP, w)?, opt_slice(OP, b)?, width, eps);
                Ok((T::wrap(y), T::wrap(mean), T::wrap(rstd)))
            }
            match cpu::floats(s, l) {
                Floats::F32(x) => go(&x, w.as_ref(), b.as_ref(), width, eps),
                Floats::F64(x) => go(&x, w.as_ref(), b.as_ref(), width, eps),
            }
        })?;
        Ok(Tensor::from_op(y.into_storage(self.dtype()), self.shape(), &inputs, || {
            Op::Norm(NormOp::LayerNorm {
                arg: self.clone(),
                weight: weight.cloned(),
                bias: bias.cloned(),
                mean: stats_tensor(mean, rows),
                rstd: stats_tensor(rstd, rows),
            })
        }))
    }

    /// `x / max(‖x‖₂, eps)` over the last dim (torch's `F.normalize(x, dim=-1, eps=eps)`).
    pub fn l2_normalize(&self, eps: f64) -> Result<Tensor> {
        const OP: &str = "l2_normalize";
        check_input(OP, self, eps)?;
        let (rows, width) = cpu::rows_of(self.shape());
        #[cfg(feature = "cuda")]
        if self.device().is_cuda() {
            let (y, norm) = crate::cuda::norm::l2_normalize(self, eps)?;
            return Ok(Tensor::from_op(y, self.shape(), &[self], || {
                Op::Norm(NormOp::L2Normalize { arg: self.clone(), eps, norm })
            }));
        }
        let (y, norm) = self.with_cpu(|s, l| {
            Ok(match cpu::floats(s, l) {
                Floats::F32(x) => {
                    let (y, n) = kernels::l2_normalize_forward(&x, width, eps);
                    (FloatVec::F32(y), FloatVec::F32(n))
                }
                Floats::F64(x) => {
                    let (y, n) = kernels::l2_normalize_forward(&x, width, eps);
                    (FloatVec::F64(y), FloatVec::F64(n))
                }
            })
        })?;
        Ok(Tensor::from_op(y.into_storage(self.dtype()), self.shape(), &[self], || {
            Op::Norm(NormOp::L2Normalize { arg: self.clone(), eps, norm: stats_tensor(norm, rows) })
        }))
    }

    // ----- composite twins (primitive ops only; references for tests) ---------------------------

    /// [`softmax`](Self::softmax) from max, sub, exp, sum and div.
    pub fn softmax_composite(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "softmax", self.shape())?;
        let e = self.sub(&self.max_keepdim(d)?)?.exp()?;
        e.div(&e.sum_keepdim(d)?)
    }

    /// [`log_softmax`](Self::log_softmax) from max, sub, exp, sum and log.
    pub fn log_softmax_composite(&self, dim: impl Dim) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "log_softmax", self.shape())?;
        let z = self.sub(&self.max_keepdim(d)?)?;
        z.sub(&z.exp()?.sum_keepdim(d)?.log()?)
    }

    /// [`rms_norm`](Self::rms_norm) from sqr, mean, rsqrt and mul (in compute precision).
    pub fn rms_norm_composite(&self, weight: Option<&Tensor>, eps: f64, kind: RmsNormKind) -> Result<Tensor> {
        check_input("rms_norm", self, eps)?;
        check_param("rms_norm", self, weight, "weight")?;
        let x = self.to_dtype(self.dtype().compute())?;
        let mut y = x.mul(&x.sqr()?.mean_keepdim(-1)?.add_scalar(eps)?.rsqrt()?)?;
        if let Some(w) = weight {
            let w = w.to_dtype(x.dtype())?;
            let w = match kind {
                RmsNormKind::Plain => w,
                RmsNormKind::Gemma => w.add_scalar(1.0)?,
            };
            y = y.mul(&w)?;
        }
        y.to_dtype(self.dtype())
    }

    /// [`layer_norm`](Self::layer_norm) from mean, sub, sqr, rsqrt, mul and add (in compute
    /// precision).
    pub fn layer_norm_composite(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        check_input("layer_norm", self, eps)?;
        check_param("layer_norm", self, weight, "weight")?;
        check_param("layer_norm", self, bias, "bias")?;
        let x = self.to_dtype(self.dtype().compute())?;
        let xc = x.sub(&x.mean_keepdim(-1)?)?;
        let mut y = xc.mul(&xc.sqr()?.mean_keepdim(-1)?.add_scalar(eps)?.rsqrt()?)?;
        if let Some(w) = weight {
            y = y.mul(&w.to_dtype(x.dtype())?)?;
        }
        if let Some(b) = bias {
            y = y.add(&b.to_dtype(x.dtype())?)?;
        }
        y.to_dtype(self.dtype())
    }

    /// [`l2_normalize`](Self::l2_normalize) from sqr, sum, sqrt, clamp and div.
    pub fn l2_normalize_composite(&self, eps: f64) -> Result<Tensor> {
        check_input("l2_normalize", self, eps)?;
        self.div(&self.sqr()?.sum_keepdim(-1)?.sqrt()?.clamp(eps, f64::INFINITY)?)
    }
}

// ----- backward ------------------------------------------------------------------------------------

impl BackwardOp for NormOp {
    fn name(&self) -> &'static str {
        match self {
            NormOp::Softmax { log: false, .. } => "softmax",
            NormOp::Softmax { log: true, .. } => "log_softmax",
            NormOp::RmsNorm { .. } => "rms_norm",
            NormOp::LayerNorm { .. } => "layer_norm",
            NormOp::L2Normalize { .. } => "l2_normalize",
        }
    }

    fn inputs(&self) -> Vec<&Tensor> {
        match self {
            NormOp::Softmax { arg, .. } | NormOp::L2Normalize { arg, .. } => vec![arg],
            NormOp::RmsNorm { arg, weight, .. } => std::iter::once(arg).chain(weight).collect(),
            NormOp::LayerNorm { arg, weight, bias, .. } => std::iter::once(arg).chain(weight).chain(bias).collect(),
        }
    }

    fn backward(&self, out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        let op = self.name();
        match self {
            NormOp::Softmax { arg, log } => {
                #[cfg(feature = "cuda")]
                if arg.device().is_cuda() {
                    let dx = crate::cuda::norm::softmax_backward(out, grad, *log)?;
                    return grads.add(arg, crate::cuda::tensor(dx, arg.shape()));
                }
                let (_, width) = cpu::rows_of(arg.shape());
                let dx = out.with_cpu(|ys, yl| {
                    grad.with_cpu(|gs, gl| {
                        crate::float_zip!(op, (cpu::floats(ys, yl), cpu::floats(gs, gl)), (y, g) =>
                            kernels::softmax_backward(&y, &g, width, *log))
                    })
                })?;
                grads.add(arg, grad_like(dx, arg))
            }
            NormOp::RmsNorm { arg, weight, kind, rstd } => {
                let want_dx = arg.tracks_grad();
                let want_dw = weight.as_ref().is_some_and(|w| w.tracks_grad());
                if !want_dx && !want_dw {
                    return Ok(());
                }
                #[cfg(feature = "cuda")]
                if arg.device().is_cuda() {
                    let (dx, dw) = crate::cuda::norm::rms_norm_backward(
                        arg,
                        weight.as_ref(),
                        rstd,
                        grad,
                        *kind,
                        want_dx,
                        want_dw,
                    )?;
                    if let Some(dx) = dx {
                        grads.add(arg, dx)?;
                    }
                    if let (Some(w), Some(dw)) = (weight, dw) {
                        grads.add(w, dw)?;
                    }
                    return Ok(());
                }
                let (_, width) = cpu::rows_of(arg.shape());
                let (w, rs) = (owned_opt(weight.as_ref())?, owned_floats(rstd)?);
                let (dx, dw) = arg.with_cpu(|xs, xl| {
                    grad.with_cpu(|gs, gl| {
                        #[allow(clippy::too_many_arguments)]
                        fn go<T: Compute>(
                            x: &[T],
                            g: &[T],
                            w: Option<&Floats>,
                            rs: &Floats,
                            width: usize,
                            kind: RmsNormKind,
                            want_dx: bool,
                            want_dw: bool,
                        ) -> Result<(FloatVec, FloatVec)> {
                            let (dx, dw) = kernels::rms_norm_backward(
                                x,
                                opt_slice("rms_norm", w)?,
                                slice_of("rms_norm", rs)?,
                                g,
                                width,
                                kind,
                                want_dx,
                                want_dw,
                            );
                            Ok((T::wrap(dx), T::wrap(dw)))
                        }
                        match (cpu::floats(xs, xl), cpu::floats(gs, gl)) {
                            (Floats::F32(x), Floats::F32(g)) => {
                                go(&x, &g, w.as_ref(), &rs, width, *kind, want_dx, want_dw)
                            }
                            (Floats::F64(x), Floats::F64(g)) => {
                                go(&x, &g, w.as_ref(), &rs, width, *kind, want_dx, want_dw)
                            }
                            _ => Err(Error::invalid(op, "operands computed in different precisions")),
                        }
                    })
                })?;
                if want_dx {
                    grads.add(arg, grad_like(dx, arg))?;
                }
                if let (Some(w), true) = (weight, want_dw) {
                    grads.add(w, grad_like(dw, w))?;
                }
                Ok(())
            }
            NormOp::LayerNorm { arg, weight, bias, mean, rstd } => {
                let want_dx = arg.tracks_grad();
                let want_params = weight.iter().chain(bias).any(|p| p.tracks_grad());
                if !want_dx && !want_params {
                    return Ok(());
                }
                #[cfg(feature = "cuda")]
                if arg.device().is_cuda() {
                    let (dx, dw, db) = crate::cuda::norm::layer_norm_backward(
                        arg,
                        weight.as_ref(),
                        bias.as_ref(),
                        mean,
                        rstd,
                        grad,
                        want_dx,
                        want_params,
                    )?;
                    if let Some(dx) = dx {
                        grads.add(arg, dx)?;
                    }
                    if let (Some(w), Some(dw)) = (weight.as_ref().filter(|w| w.tracks_grad()), dw) {
                        grads.add(w, dw)?;
                    }
                    if let (Some(b), Some(db)) = (bias.as_ref().filter(|b| b.tracks_grad()), db) {
                        grads.add(b, db)?;
                    }
                    return Ok(());
                }
                let (_, width) = cpu::rows_of(arg.shape());
                let (w, mu, rs) = (owned_opt(weight.as_ref())?, owned_floats(mean)?, owned_floats(rstd)?);
                let (dx, dw, db) = arg.with_cpu(|xs, xl| {
                    grad.with_cpu(|gs, gl| {
                        #[allow(clippy::too_many_arguments)]
                        fn go<T: Compute>(
                            x: &[T],
                            g: &[T],
                            w: Option<&Floats>,
                            mu: &Floats,
                            rs: &Floats,
                            width: usize,
                            want_dx: bool,
                            want_params: bool,
                        ) -> Result<(FloatVec, FloatVec, FloatVec)> {
                            let (dx, dw, db) = kernels::layer_norm_backward(
                                x,
                                opt_slice("layer_norm", w)?,
                                slice_of("layer_norm", mu)?,
                                slice_of("layer_norm", rs)?,
                                g,
                                width,
                                want_dx,
                                want_params,
                            );
                            Ok((T::wrap(dx), T::wrap(dw), T::wrap(db)))
                        }
                        match (cpu::floats(xs, xl), cpu::floats(gs, gl)) {
                            (Floats::F32(x), Floats::F32(g)) => {
                                go(&x, &g, w.as_ref(), &mu, &rs, width, want_dx, want_params)
                            }
                            (Floats::F64(x), Floats::F64(g)) => {
                                go(&x, &g, w.as_ref(), &mu, &rs, width, want_dx, want_params)
                            }
                            _ => Err(Error::invalid(op, "operands computed in different precisions")),
                        }
                    })
                })?;
                if want_dx {
                    grads.add(arg, grad_like(dx, arg))?;
                }
                if let Some(w) = weight.as_ref().filter(|w| w.tracks_grad()) {
                    grads.add(w, grad_like(dw, w))?;
                }
                if let Some(b) = bias.as_ref().filter(|b| b.tracks_grad()) {
                    grads.add(b, grad_like(db, b))?;
                }
                Ok(())
            }
            NormOp::L2Normalize { arg, eps, norm } => {
                #[cfg(feature = "cuda")]
                if arg.device().is_cuda() {
                    let dx = crate::cuda::norm::l2_normalize_backward(out, norm, grad, *eps)?;
                    return grads.add(arg, crate::cuda::tensor(dx, arg.shape()));
                }
                let (_, width) = cpu::rows_of(arg.shape());
                let n = owned_floats(norm)?;
                let dx = out.with_cpu(|ys, yl| {
                    grad.with_cpu(|gs, gl| match (cpu::floats(ys, yl), cpu::floats(gs, gl), &n) {
                        (Floats::F32(y), Floats::F32(g), Floats::F32(n)) => {
                            Ok(FloatVec::F32(kernels::l2_normalize_backward(&y, n, &g, width, *eps)))
                        }
                        (Floats::F64(y), Floats::F64(g), Floats::F64(n)) => {
                            Ok(FloatVec::F64(kernels::l2_normalize_backward(&y, n, &g, width, *eps)))
                        }
                        _ => Err(Error::invalid(op, "operands computed in different precisions")),
                    })
                })?;
                grads.add(arg, grad_like(dx, arg))
            }
        }
    }
}
