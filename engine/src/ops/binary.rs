//! Elementwise binary ops with broadcasting: add, sub, mul, div, maximum, minimum; and the
//! comparisons eq, ne, lt, le, gt, ge that produce u8 masks (not differentiable).
//!
//! Operands of different shapes are first broadcast with [`Tensor::broadcast_as`] (whose backward
//! does the summing), so the kernels and backward rules here only see equal shapes.

use crate::autograd::{BackwardOp, Grads, Op};
use crate::kinds::{BinaryKind, CmpKind};
use crate::{shape, Error, Result, Tensor};

pub(crate) const NAMES: &[&str] = BinaryKind::NAMES;

pub(crate) struct BinaryOp {
    kind: BinaryKind,
    lhs: Tensor,
    rhs: Tensor,
}

impl Tensor {
    /// Broadcast both operands to their common shape.
    pub fn broadcast_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
        if a.shape() == b.shape() {
            return Ok((a.clone(), b.clone()));
        }
        let shape = shape::broadcast_shape(op, a.shape(), b.shape())?;
        Ok((a.broadcast_as(&shape)?, b.broadcast_as(&shape)?))
    }

    fn binary(&self, rhs: &Tensor, kind: BinaryKind) -> Result<Tensor> {
        let op = kind.name();
        Tensor::same_dtype_device(op, &[self, rhs])?;
        if !self.dtype().is_float() {
            return Err(Error::dtype(op, self.dtype(), "expected float tensors"));
        }
        let (a, b) = Tensor::broadcast_pair(op, self, rhs)?;
        let out = a.backend().binary(&a, &b, kind)?;
        Ok(out.recorded(&[&a, &b], || Op::Binary(BinaryOp { kind, lhs: a.clone(), rhs: b.clone() })))
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryKind::Add)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryKind::Sub)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryKind::Mul)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryKind::Div)
    }
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryKind::Maximum)
    }
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryKind::Minimum)
    }

    /// Elementwise comparison with broadcasting; a u8 mask (1 where true). Works on every dtype.
    pub fn cmp(&self, rhs: &Tensor, kind: CmpKind) -> Result<Tensor> {
        Tensor::same_dtype_device("cmp", &[self, rhs])?;
        let (a, b) = Tensor::broadcast_pair("cmp", self, rhs)?;
        a.backend().cmp(&a, &b, kind)
    }

    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpKind::Eq)
    }
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpKind::Ne)
    }
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpKind::Lt)
    }
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpKind::Le)
    }
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpKind::Gt)
    }
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpKind::Ge)
    }

    /// Compare with a scalar, e.g. `ids.cmp_scalar(151655.0, CmpKind::Eq)`.
    pub fn cmp_scalar(&self, v: f64, kind: CmpKind) -> Result<Tensor> {
        let s = Tensor::full(v, &[], self.dtype(), self.device())?;
        self.cmp(&s, kind)
    }
}

impl BackwardOp for BinaryOp {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.lhs, &self.rhs]
    }

    fn backward(&self, _out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        let (a, b) = (&self.lhs, &self.rhs);
        match self.kind {
            BinaryKind::Add => {
                grads.add(a, grad.clone())?;
                grads.add(b, grad.clone())
            }
            BinaryKind::Sub => {
                grads.add(a, grad.clone())?;
                if b.tracks_grad() {
                    grads.add(b, grad.neg()?)?;
                }
                Ok(())
            }
            BinaryKind::Mul => {
                if a.tracks_grad() {
                    grads.add(a, grad.mul(b)?)?;
                }
                if b.tracks_grad() {
                    grads.add(b, grad.mul(a)?)?;
                }
                Ok(())
            }
            BinaryKind::Div => {
                if a.tracks_grad() {
                    grads.add(a, grad.div(b)?)?;
                }
                if b.tracks_grad() {
                    grads.add(b, grad.mul(a)?.div(&b.sqr()?)?.neg()?)?;
                }
                Ok(())
            }
            BinaryKind::Maximum | BinaryKind::Minimum => {
                // Ties go to the left operand, matching the forward's choice.
                let take_a = if self.kind == BinaryKind::Maximum { a.ge(b)? } else { a.le(b)? };
                let mask_a = take_a.to_dtype(grad.dtype())?;
                let mask_b = mask_a.affine(-1.0, 1.0)?;
                if a.tracks_grad() {
                    grads.add(a, grad.mul(&mask_a)?)?;
                }
                if b.tracks_grad() {
                    grads.add(b, grad.mul(&mask_b)?)?;
                }
                Ok(())
            }
        }
    }
}
