//! Gated activations on a merged `gate|up` projection: `swiglu` (SiLU gate, LLaMA/Qwen MLPs) and
//! `geglu` (tanh-approximated GELU gate, Gemma/PaliGemma MLPs). Input `[..., 2F]`, output
//! `[..., F] = act(x[..., :F]) · x[..., F:]`.
//!
//! Fused forward and backward kernels; backward keeps only the input (the activation is
//! recomputed) and writes the whole `[..., 2F]` gradient in one pass. Composite twins from
//! `narrow`, `silu`/`gelu_tanh` and `mul` serve as test references.

use crate::autograd::{BackwardOp, Grads, Op};
use crate::kinds::GateKind;
use crate::{Error, Result, Tensor};

pub(crate) const NAMES: &[&str] = GateKind::NAMES;

pub(crate) struct ActivationOp {
    kind: GateKind,
    arg: Tensor,
}

impl Tensor {
    /// Check a merged `gate|up` input and return `F` (half its last dim).
    fn gate_width(&self, op: &'static str) -> Result<usize> {
        if !self.dtype().is_float() {
            return Err(Error::dtype(op, self.dtype(), "expected a float tensor"));
        }
        match self.shape().last() {
            Some(&w) if w % 2 == 0 => Ok(w / 2),
            Some(&w) => Err(Error::shapes_note(
                op,
                &[self.shape()],
                format!("last dim {w} is odd; expected a merged gate|up of size 2F"),
            )),
            None => Err(Error::shapes_note(op, &[self.shape()], "needs rank ≥ 1 (a merged gate|up last dim)")),
        }
    }

    fn gated(&self, kind: GateKind) -> Result<Tensor> {
        let f = self.gate_width(kind.name())?;
        let out = self.backend().gate(self, kind, f)?;
        Ok(out.recorded(&[self], || Op::Activation(ActivationOp { kind, arg: self.clone() })))
    }

    /// SwiGLU on a merged projection: `[..., 2F] → [..., F]`, `silu(x[..., :F]) · x[..., F:]`.
    /// An odd last dim is an error.
    ///
    /// ```
    /// use vlm4vla_engine::{Device, Tensor};
    /// let x = Tensor::from_vec(vec![0f64, 2., 3., 4.], &[1, 4], Device::Cpu).unwrap();
    /// let y = x.swiglu().unwrap().to_vec::<f64>().unwrap();
    /// assert_eq!(y[0], 0.0);
    /// assert!((y[1] - 4.0 * 2.0 / (1.0 + (-2f64).exp())).abs() < 1e-12);
    /// ```
    pub fn swiglu(&self) -> Result<Tensor> {
        self.gated(GateKind::Silu)
    }

    /// GeGLU on a merged projection: `[..., 2F] → [..., F]`, `gelu_tanh(x[..., :F]) · x[..., F:]`
    /// (`gelu_pytorch_tanh`). An odd last dim is an error.
    pub fn geglu(&self) -> Result<Tensor> {
        self.gated(GateKind::GeluTanh)
    }

    fn gated_composite(&self, kind: GateKind) -> Result<Tensor> {
        let f = self.gate_width(kind.name())?;
        let gate = self.narrow(-1, 0, f)?;
        let up = self.narrow(-1, f, f)?;
        let a = match kind {
            GateKind::Silu => gate.silu()?,
            GateKind::GeluTanh => gate.gelu_tanh()?,
        };
        a.mul(&up)
    }

    /// [`swiglu`](Self::swiglu) from primitive ops (`narrow`, `silu`, `mul`), a test reference.
    pub fn swiglu_composite(&self) -> Result<Tensor> {
        self.gated_composite(GateKind::Silu)
    }

    /// [`geglu`](Self::geglu) from primitive ops (`narrow`, `gelu_tanh`, `mul`), a test reference.
    pub fn geglu_composite(&self) -> Result<Tensor> {
        self.gated_composite(GateKind::GeluTanh)
    }
}

impl BackwardOp for ActivationOp {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.arg]
    }

    fn backward(&self, _out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        let x = &self.arg;
        if !x.tracks_grad() {
            return Ok(());
        }
        let f = x.shape().last().copied().unwrap_or(0) / 2;
        grads.add(x, x.backend().gate_backward(x, grad, self.kind, f)?)
    }
}
