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
use crate::kinds::RmsNormKind;
use crate::{Dim, Error, Result, Tensor};

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
        let out = self.backend().softmax(self, log)?;
        Ok(out.recorded(&[self], || Op::Norm(NormOp::Softmax { arg: self.clone(), log })))
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
        let mut inputs = vec![self];
        inputs.extend(weight);
        let (y, rstd) = self.backend().rms_norm(self, weight, eps, kind)?;
        Ok(y.recorded(&inputs, || Op::Norm(NormOp::RmsNorm { arg: self.clone(), weight: weight.cloned(), kind, rstd })))
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
        let mut inputs = vec![self];
        inputs.extend(weight);
        inputs.extend(bias);
        let (y, mean, rstd) = self.backend().layer_norm(self, weight, bias, eps)?;
        Ok(y.recorded(&inputs, || {
            Op::Norm(NormOp::LayerNorm { arg: self.clone(), weight: weight.cloned(), bias: bias.cloned(), mean, rstd })
        }))
    }

    /// `x / max(‖x‖₂, eps)` over the last dim (torch's `F.normalize(x, dim=-1, eps=eps)`).
    pub fn l2_normalize(&self, eps: f64) -> Result<Tensor> {
        const OP: &str = "l2_normalize";
        check_input(OP, self, eps)?;
        let (y, norm) = self.backend().l2_normalize(self, eps)?;
        Ok(y.recorded(&[self], || Op::Norm(NormOp::L2Normalize { arg: self.clone(), eps, norm })))
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
        match self {
            NormOp::Softmax { arg, log } => grads.add(arg, arg.backend().softmax_backward(out, grad, *log)?),
            NormOp::RmsNorm { arg, weight, kind, rstd } => {
                let want_dx = arg.tracks_grad();
                let want_dw = weight.as_ref().is_some_and(|w| w.tracks_grad());
                if !want_dx && !want_dw {
                    return Ok(());
                }
                let w = weight.as_ref();
                let (dx, dw) = arg.backend().rms_norm_backward(arg, w, rstd, grad, *kind, want_dx, want_dw)?;
                if let Some(dx) = dx {
                    grads.add(arg, dx)?;
                }
                if let (Some(w), Some(dw)) = (w, dw) {
                    grads.add(w, dw)?;
                }
                Ok(())
            }
            NormOp::LayerNorm { arg, weight, bias, mean, rstd } => {
                let want_dx = arg.tracks_grad();
                let want_params = weight.iter().chain(bias).any(|p| p.tracks_grad());
                if !want_dx && !want_params {
                    return Ok(());
                }
                let (w, b) = (weight.as_ref(), bias.as_ref());
                let (dx, dw, db) =
                    arg.backend().layer_norm_backward(arg, w, b, mean, rstd, grad, want_dx, want_params)?;
                if let Some(dx) = dx {
                    grads.add(arg, dx)?;
                }
                if let (Some(w), Some(dw)) = (w, dw) {
                    grads.add(w, dw)?;
                }
                if let (Some(b), Some(db)) = (b, db) {
                    grads.add(b, db)?;
                }
                Ok(())
            }
            NormOp::L2Normalize { arg, eps, norm } => {
                grads.add(arg, arg.backend().l2_normalize_backward(out, norm, grad, *eps)?)
            }
        }
    }
}
