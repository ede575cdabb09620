//! CPU kernels for the gated activations: rows of a merged `gate|up` tensor (`2F` wide) map to
//! rows of `act(gate) · up` (`F` wide); the backward writes the whole `2F`-wide gradient row in
//! the same pass.

use super::{out, vmath, Cpu, Reads};
use crate::dtype::Float;
use crate::kinds::GateKind;
use crate::{backend, Result, Tensor};

impl backend::Activation for Cpu {
    fn gate(&self, x: &Tensor, kind: GateKind, f: usize) -> Result<Tensor> {
        let mut shape = x.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = f;
        }
        let r = Reads::new(&[x]);
        let v = crate::float_map!(r.floats(0)?, v => forward(kind, &v, f));
        Ok(out(v, x.dtype(), &shape))
    }

    fn gate_backward(&self, x: &Tensor, g: &Tensor, kind: GateKind, f: usize) -> Result<Tensor> {
        let r = Reads::new(&[x, g]);
        let v = crate::float_zip!(kind.name(), (r.floats(0)?, r.floats(1)?), (a, g) => backward(kind, &a, &g, f))?;
        Ok(out(v, x.dtype(), x.shape()))
    }
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;

/// `(act(x), act'(x))`.
#[inline(always)]
fn act<T: Float>(kind: GateKind, x: T) -> (T, T) {
    match kind {
        GateKind::Silu => {
            let s = T::ONE / (T::ONE + (-x).exp());
            (x * s, s * (T::ONE + x * (T::ONE - s)))
        }
        GateKind::GeluTanh => {
            let u = T::c(SQRT_2_OVER_PI) * (x + T::c(GELU_C) * x * x * x);
            let t = u.tanh();
            let du = T::c(SQRT_2_OVER_PI) * (T::ONE + T::c(3.0 * GELU_C) * x * x);
            (T::c(0.5) * x * (T::ONE + t), T::c(0.5) * (T::ONE + t) + T::c(0.5) * x * (T::ONE - t * t) * du)
        }
    }
}

/// `o[j] = act(gate[j]) · up[j]`, with the kind's `match` outside the loop.
#[inline(always)]
fn forward_row<T: Float>(kind: GateKind, o: &mut [T], gate: &[T], up: &[T]) {
    macro_rules! run {
        ($k:expr) => {
            for ((o, &a), &b) in o.iter_mut().zip(gate).zip(up) {
                *o = act($k, a).0 * b;
            }
        };
    }
    match kind {
        GateKind::Silu => run!(GateKind::Silu),
        GateKind::GeluTanh => run!(GateKind::GeluTanh),
    }
}

/// `dgate[j] = g[j] · up[j] · act'(gate[j])`, `dup[j] = g[j] · act(gate[j])`.
#[inline(always)]
fn backward_row<T: Float>(kind: GateKind, dgate: &mut [T], dup: &mut [T], gate: &[T], up: &[T], g: &[T]) {
    macro_rules! run {
        ($k:expr) => {
            for ((((dg, du), &x), &u), &g) in dgate.iter_mut().zip(dup.iter_mut()).zip(gate).zip(up).zip(g) {
                let (a, da) = act($k, x);
                *dg = g * u * da;
                *du = g * a;
            }
        };
    }
    match kind {
        GateKind::Silu => run!(GateKind::Silu),
        GateKind::GeluTanh => run!(GateKind::GeluTanh),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_row_avx2<T: Float>(kind: GateKind, o: &mut [T], gate: &[T], up: &[T]) {
    forward_row(kind, o, gate, up)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_row_avx2<T: Float>(kind: GateKind, dgate: &mut [T], dup: &mut [T], gate: &[T], up: &[T], g: &[T]) {
    backward_row(kind, dgate, dup, gate, up, g)
}

/// `out[r, j] = act(x[r, j]) · x[r, f + j]` for contiguous `x` of rows `2f` wide.
fn forward<T: Float>(kind: GateKind, x: &[T], f: usize) -> Vec<T> {
    let rows = if f == 0 { 0 } else { x.len() / (2 * f) };
    let simd = super::has_avx2();
    super::new_rows(rows * f, f, T::ZERO, |r, o| {
        let (gate, up) = x[r * 2 * f..(r + 1) * 2 * f].split_at(f);
        if let (Some(gf), Some(uf)) = (vmath::f32s(gate), vmath::f32s(up)) {
            let of = vmath::f32s_mut(o).expect("same dtype as x");
            // SAFETY: `f32s` returned Some only with AVX-512 available; the rows are `f` long.
            return unsafe { vmath::gate_forward(kind, of, gf, uf) };
        }
        super::dispatch_avx2!(simd, forward_row_avx2, forward_row(kind, o, gate, up))
    })
}

/// `dgate = g · up · act'(gate)`, `dup = g · act(gate)`, written side by side as the `2f`-wide
/// gradient of `x`.
fn backward<T: Float>(kind: GateKind, x: &[T], g: &[T], f: usize) -> Vec<T> {
    let simd = super::has_avx2();
    super::new_rows(x.len(), 2 * f, T::ZERO, |r, d| {
        let (gate, up) = x[r * 2 * f..(r + 1) * 2 * f].split_at(f);
        let g = &g[r * f..(r + 1) * f];
        let (dgate, dup) = d.split_at_mut(f);
        if let (Some(xf), Some(uf), Some(gf)) = (vmath::f32s(gate), vmath::f32s(up), vmath::f32s(g)) {
            let (dg, du) = (vmath::f32s_mut(dgate).expect("same dtype"), vmath::f32s_mut(dup).expect("same dtype"));
            // SAFETY: as in `forward`.
            return unsafe { vmath::gate_backward(kind, dg, du, xf, uf, gf) };
        }
        super::dispatch_avx2!(simd, backward_row_avx2, backward_row(kind, dgate, dup, gate, up, g))
    })
}
