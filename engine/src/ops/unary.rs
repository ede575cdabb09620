//! Elementwise unary ops: neg, exp, log, sqrt, rsqrt, sqr, recip, powf, abs, clamp, affine, sin,
//! cos, tanh, sigmoid, relu, silu, gelu (erf), gelu (tanh), quick_gelu.
//!
//! Backward is one fused primitive per kind, `dx = g · f'(x, y)`, reading the input and/or the
//! output as the kind needs (exp keeps its output; log keeps its input).

use crate::autograd::{BackwardOp, Grads, Op};
use crate::{cpu, Error, Result, Tensor};

pub(crate) const NAMES: &[&str] = &[
    "neg",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "sqr",
    "recip",
    "powf",
    "abs",
    "clamp",
    "affine",
    "sin",
    "cos",
    "tanh",
    "sigmoid",
    "relu",
    "silu",
    "gelu",
    "gelu_tanh",
    "quick_gelu",
];

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum UnaryKind {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Sqr,
    Recip,
    Powf(f64),
    Abs,
    Clamp(f64, f64),
    Affine(f64, f64),
    Sin,
    Cos,
    Tanh,
    Sigmoid,
    Relu,
    Silu,
    Gelu,
    GeluTanh,
    QuickGelu,
}

impl UnaryKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            UnaryKind::Neg => "neg",
            UnaryKind::Exp => "exp",
            UnaryKind::Log => "log",
            UnaryKind::Sqrt => "sqrt",
            UnaryKind::Rsqrt => "rsqrt",
            UnaryKind::Sqr => "sqr",
            UnaryKind::Recip => "recip",
            UnaryKind::Powf(_) => "powf",
            UnaryKind::Abs => "abs",
            UnaryKind::Clamp(..) => "clamp",
            UnaryKind::Affine(..) => "affine",
            UnaryKind::Sin => "sin",
            UnaryKind::Cos => "cos",
            UnaryKind::Tanh => "tanh",
            UnaryKind::Sigmoid => "sigmoid",
            UnaryKind::Relu => "relu",
            UnaryKind::Silu => "silu",
            UnaryKind::Gelu => "gelu",
            UnaryKind::GeluTanh => "gelu_tanh",
            UnaryKind::QuickGelu => "quick_gelu",
        }
    }
}

pub(crate) struct UnaryOp {
    kind: UnaryKind,
    arg: Tensor,
}

impl Tensor {
    pub(crate) fn unary(&self, kind: UnaryKind) -> Result<Tensor> {
        if !self.dtype().is_float() {
            return Err(Error::dtype(kind.name(), self.dtype(), "expected a float tensor"));
        }
        let record = || Op::Unary(UnaryOp { kind, arg: self.clone() });
        #[cfg(feature = "cuda")]
        if self.device().is_cuda() {
            let data = crate::cuda::unary::forward(self, kind)?;
            return Ok(Tensor::from_op(data, self.shape(), &[self], record));
        }
        let dtype = self.dtype();
        let data = self.with_cpu(|s, l| {
            let x = cpu::floats(s, l);
            Ok(crate::float_map!(x, v => cpu::unary::forward(kind, &v)).into_storage(dtype))
        })?;
        Ok(Tensor::from_op(data, self.shape(), &[self], record))
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
}

impl BackwardOp for UnaryOp {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.arg]
    }

    fn backward(&self, out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        let kind = self.kind;
        let dtype = self.arg.dtype();
        let x = &self.arg;
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let data = crate::cuda::unary::backward(kind, x, out, grad)?;
            return grads.add(x, crate::cuda::tensor(data, x.shape()));
        }
        let data = x.with_cpu(|xs, xl| {
            out.with_cpu(|ys, yl| {
                grad.with_cpu(|gs, gl| {
                    crate::float_zip!(
                        kind.name(),
                        (cpu::floats(xs, xl), cpu::floats(ys, yl), cpu::floats(gs, gl)),
                        (a, b, c) => cpu::unary::backward(kind, &a, &b, &c)
                    )
                })
            })
        })?;
        grads.add(x, Tensor::from_cpu(data.into_storage(dtype), x.shape(), None))
    }
}
