//! Elementwise unary ops: neg, exp, log, sqrt, rsqrt, sqr, recip, powf, abs, clamp, affine, sin,
//! cos, tanh, sigmoid, relu, silu, gelu (erf), gelu (tanh), quick_gelu, softplus.
//!
//! Backward is one fused primitive per kind, `dx = g · f'(x, y)`, reading the input and/or the
//! output as the kind needs (exp keeps its output; log keeps its input).

use crate::autograd::{BackwardOp, Grads, Op};
use crate::kinds::UnaryKind;
use crate::{Error, Result, Tensor};

pub(crate) const NAMES: &[&str] = UnaryKind::NAMES;

pub(crate) struct UnaryOp {
    kind: UnaryKind,
    arg: Tensor,
}

impl Tensor {
    pub(crate) fn unary(&self, kind: UnaryKind) -> Result<Tensor> {
        if !self.dtype().is_float() {
            return Err(Error::dtype(kind.name(), self.dtype(), "expected a float tensor"));
        }
        let out = self.backend().unary(self, kind)?;
        Ok(out.recorded(&[self], || Op::Unary(UnaryOp { kind, arg: self.clone() })))
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Neg)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Sqrt)
    }
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Rsqrt)
    }
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Sqr)
    }
    pub fn recip(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Recip)
    }
    /// `x^e` (for x > 0 unless `e` is an integer).
    pub fn powf(&self, e: f64) -> Result<Tensor> {
        self.unary(UnaryKind::Powf(e))
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Abs)
    }
    /// Clamp into `[lo, hi]`; the gradient passes where `lo ≤ x ≤ hi`.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        if lo > hi {
            return Err(Error::invalid("clamp", format!("lo {lo} > hi {hi}")));
        }
        self.unary(UnaryKind::Clamp(lo, hi))
    }
    /// `x * mul + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.unary(UnaryKind::Affine(mul, add))
    }
    pub fn scale(&self, mul: f64) -> Result<Tensor> {
        self.affine(mul, 0.0)
    }
    pub fn add_scalar(&self, add: f64) -> Result<Tensor> {
        self.affine(1.0, add)
    }
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Sin)
    }
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Cos)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Tanh)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Sigmoid)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Relu)
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Silu)
    }
    /// Exact GELU, `x·Φ(x)` with the erf.
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Gelu)
    }
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`).
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary(UnaryKind::GeluTanh)
    }
    /// `x·sigmoid(1.702x)` (CLIP).
    pub fn quick_gelu(&self) -> Result<Tensor> {
        self.unary(UnaryKind::QuickGelu)
    }
    /// `ln(1 + eˣ)`, computed as `max(x, 0) + ln_1p(e^-|x|)` (no overflow); its derivative is
    /// `sigmoid(x)`.
    pub fn softplus(&self) -> Result<Tensor> {
        self.unary(UnaryKind::Softplus)
    }
}

impl BackwardOp for UnaryOp {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.arg]
    }

    fn backward(&self, out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        let x = &self.arg;
        grads.add(x, x.backend().unary_backward(self.kind, x, out, grad)?)
    }
}
