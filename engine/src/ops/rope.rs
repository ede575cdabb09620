//! Rotary position embedding in the rotate-half form, with caller-given cos/sin tables (which
//! covers 1-D RoPE, Qwen's 2-D vision rope and M-RoPE: the caller builds the tables).
//!
//! `out = x·cos + rotate_half(x)·sin`, `rotate_half(x) = cat(−x[D/2:], x[:D/2])`, for x
//! `[B, L, H, D]` and cos/sin `[L, D]` or `[B, L, D]` broadcast over heads (and batch). The fused
//! backward is `dx = g·cos + rotate_halfᵀ(g·sin)` with `rotate_halfᵀ(y) = cat(y[D/2:], −y[:D/2])`;
//! cos and sin are constants.

use crate::autograd::{BackwardOp, Grads, Op};
use crate::{Device, Error, Result, Tensor};

pub(crate) const NAMES: &[&str] = &["rope"];

pub(crate) struct RopeOp {
    arg: Tensor,
    cos: Tensor,
    sin: Tensor,
}

const OP: &str = "rope";

/// Check shapes and dtypes; return cos and sin in x's compute precision and whether the tables
/// have a batch dim.
fn prepare(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<(Tensor, Tensor, bool)> {
    if !x.dtype().is_float() {
        return Err(Error::dtype(OP, x.dtype(), "x must be a float tensor"));
    }
    for t in [cos, sin] {
        if !t.dtype().is_float() {
            return Err(Error::dtype(OP, t.dtype(), "cos and sin must be float tensors"));
        }
        if t.device() != x.device() {
            return Err(Error::DeviceMismatch { op: OP, a: x.device(), b: t.device() });
        }
        if t.tracks_grad() {
            return Err(Error::invalid(OP, "cos and sin must be constants (they track gradients; detach them)"));
        }
    }
    let (xs, cs, ss) = (x.shape(), cos.shape(), sin.shape());
    if xs.len() != 4 || xs[3] % 2 != 0 {
        return Err(Error::shapes_note(
            OP,
            &[xs, cs, ss],
            "x must be [batch, seq, heads, head_dim] with even head_dim",
        ));
    }
    let table: &[usize] = match cs.len() {
        2 => &[xs[1], xs[3]],
        3 => &[xs[0], xs[1], xs[3]],
        _ => &[],
    };
    if cs != table || ss != cs {
        return Err(Error::shapes_note(
            OP,
            &[xs, cs, ss],
            "cos and sin must both be [seq, head_dim] or [batch, seq, head_dim]",
        ));
    }
    let compute = x.dtype().compute();
    Ok((cos.to_dtype(compute)?, sin.to_dtype(compute)?, cs.len() == 3))
}

impl Tensor {
    /// Rotary embedding (rotate-half form): `x·cos + rotate_half(x)·sin`.
    ///
    /// x is `[B, L, H, D]` with even `D`; cos and sin are `[L, D]` or `[B, L, D]` (any float dtype,
    /// used in x's compute precision), broadcast over heads. Only x gets a gradient: cos and sin
    /// must not track gradients.
    ///
    /// ```
    /// use vlm4vla_engine::{Device, DType, Tensor};
    /// let x = Tensor::rand_normal(0., 1., &[1, 3, 2, 4], DType::F32, Device::Cpu, 0).unwrap();
    /// let cos = Tensor::ones(&[3, 4], DType::F32, Device::Cpu).unwrap();
    /// let sin = Tensor::zeros(&[3, 4], DType::F32, Device::Cpu).unwrap();
    /// let y = x.rope(&cos, &sin).unwrap();
    /// assert_eq!(y.to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
    /// ```
    pub fn rope(&self, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (c, s, batched) = prepare(self, cos, sin)?;
        let out = self.backend().rope(self, &c, &s, batched, false)?;
        Ok(out.recorded(&[self], || Op::Rope(RopeOp { arg: self.clone(), cos: c.clone(), sin: s.clone() })))
    }

    /// The composite twin of [`rope`](Self::rope), from primitive ops: `rotate_half` is a matmul
    /// with a fixed ±1 permutation matrix, then `x·cos + rotate_half(x)·sin` with broadcasting.
    pub fn rope_composite(&self, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        rope_composite(self, cos, sin)
    }
}

/// The composite twin of [`Tensor::rope`]; see [`Tensor::rope_composite`].
pub fn rope_composite(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (c, s, batched) = prepare(x, cos, sin)?;
    let (l, d) = (x.shape()[1], x.shape()[3]);
    let half = d / 2;
    // rotate_half(x) = x R with R[j + D/2, j] = −1 and R[j, j + D/2] = 1.
    let mut r = vec![0f64; d * d];
    for j in 0..half {
        r[(j + half) * d + j] = -1.0;
        r[j * d + j + half] = 1.0;
    }
    let r = Tensor::from_vec(r, &[d, d], Device::Cpu)?.to_dtype(x.dtype())?.to_device(x.device())?;
    let table_shape: Vec<usize> = if batched { vec![x.shape()[0], l, 1, d] } else { vec![l, 1, d] };
    let c = c.to_dtype(x.dtype())?.reshape(&table_shape)?;
    let s = s.to_dtype(x.dtype())?.reshape(&table_shape)?;
    x.mul(&c)?.add(&x.matmul(&r)?.mul(&s)?)
}

impl BackwardOp for RopeOp {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.arg]
    }

    fn backward(&self, _out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        let x = &self.arg;
        grads.add(x, x.backend().rope(grad, &self.cos, &self.sin, self.cos.rank() == 3, true)?)
    }
}
