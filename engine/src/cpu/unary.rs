//! CPU kernels for elementwise unary ops and their derivatives.

use super::{out, vmath, Cpu, Reads};
use crate::dtype::Float;
use crate::kinds::{GateKind, UnaryKind};
use crate::{backend, Result, Tensor};

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;

#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

#[inline(always)]
fn f<T: Float>(kind: UnaryKind, x: T) -> T {
    match kind {
        UnaryKind::Neg => -x,
        UnaryKind::Exp => x.exp(),
        UnaryKind::Log => x.ln(),
        UnaryKind::Sqrt => x.sqrt(),
        UnaryKind::Rsqrt => T::ONE / x.sqrt(),
        UnaryKind::Sqr => x * x,
        UnaryKind::Recip => T::ONE / x,
        UnaryKind::Powf(e) => x.powf(T::c(e)),
        UnaryKind::Abs => x.abs(),
        UnaryKind::Clamp(lo, hi) => x.max(T::c(lo)).min(T::c(hi)),
        UnaryKind::Affine(m, a) => x * T::c(m) + T::c(a),
        UnaryKind::Sin => x.sin(),
        UnaryKind::Cos => x.cos(),
        UnaryKind::Tanh => x.tanh(),
        UnaryKind::Sigmoid => sigmoid(x),
        UnaryKind::Relu => x.max(T::ZERO),
        UnaryKind::Silu => x * sigmoid(x),
        UnaryKind::Gelu => T::c(0.5) * x * (T::ONE + (x * T::c(std::f64::consts::FRAC_1_SQRT_2)).erf()),
        UnaryKind::GeluTanh => {
            let u = T::c(SQRT_2_OVER_PI) * (x + T::c(GELU_C) * x * x * x);
            T::c(0.5) * x * (T::ONE + u.tanh())
        }
        UnaryKind::QuickGelu => x * sigmoid(T::c(1.702) * x),
        UnaryKind::Softplus => x.max(T::ZERO) + (-x.abs()).exp().ln_1p(),
    }
}

/// `f'(x)`, given the input `x` and the output `y`.
#[inline(always)]
fn df<T: Float>(kind: UnaryKind, x: T, y: T) -> T {
    match kind {
        UnaryKind::Neg => -T::ONE,
        UnaryKind::Exp => y,
        UnaryKind::Log => T::ONE / x,
        UnaryKind::Sqrt => T::c(0.5) / y,
        UnaryKind::Rsqrt => T::c(-0.5) * y * y * y,
        UnaryKind::Sqr => T::c(2.0) * x,
        UnaryKind::Recip => -(y * y),
        UnaryKind::Powf(e) => T::c(e) * x.powf(T::c(e - 1.0)),
        UnaryKind::Abs => {
            if x > T::ZERO {
                T::ONE
            } else if x < T::ZERO {
                -T::ONE
            } else {
                T::ZERO
            }
        }
        UnaryKind::Clamp(lo, hi) => {
            if x >= T::c(lo) && x <= T::c(hi) {
                T::ONE
            } else {
                T::ZERO
            }
        }
        UnaryKind::Affine(m, _) => T::c(m),
        UnaryKind::Sin => x.cos(),
        UnaryKind::Cos => -x.sin(),
        UnaryKind::Tanh => T::ONE - y * y,
        UnaryKind::Sigmoid => y * (T::ONE - y),
        UnaryKind::Relu => {
            if x > T::ZERO {
                T::ONE
            } else {
                T::ZERO
            }
        }
        UnaryKind::Silu => {
            let s = sigmoid(x);
            s * (T::ONE + x * (T::ONE - s))
        }
        UnaryKind::Gelu => {
            let cdf = T::c(0.5) * (T::ONE + (x * T::c(std::f64::consts::FRAC_1_SQRT_2)).erf());
            let pdf = (T::c(-0.5) * x * x).exp() * T::c(0.398_942_280_401_432_7);
            cdf + x * pdf
        }
        UnaryKind::GeluTanh => {
            let u = T::c(SQRT_2_OVER_PI) * (x + T::c(GELU_C) * x * x * x);
            let t = u.tanh();
            let du = T::c(SQRT_2_OVER_PI) * (T::ONE + T::c(3.0 * GELU_C) * x * x);
            T::c(0.5) * (T::ONE + t) + T::c(0.5) * x * (T::ONE - t * t) * du
        }
        UnaryKind::QuickGelu => {
            let s = sigmoid(T::c(1.702) * x);
            s + T::c(1.702) * x * s * (T::ONE - s)
        }
        UnaryKind::Softplus => sigmoid(x),
    }
}

/// `body` with `$k` bound to `kind` as a constant in one arm per unit kind, so every loop the
/// body holds is compiled for one kind (the per-element `match` folds away and the loop can
/// vectorise); kinds with parameters share one generic arm.
macro_rules! per_kind {
    ($kind:expr, $k:ident => $body:expr) => {
        match $kind {
            UnaryKind::GeluTanh => {
                let $k = UnaryKind::GeluTanh;
                $body
            }
            UnaryKind::Gelu => {
                let $k = UnaryKind::Gelu;
                $body
            }
            UnaryKind::Silu => {
                let $k = UnaryKind::Silu;
                $body
            }
            UnaryKind::QuickGelu => {
                let $k = UnaryKind::QuickGelu;
                $body
            }
            UnaryKind::Sigmoid => {
                let $k = UnaryKind::Sigmoid;
                $body
            }
            UnaryKind::Tanh => {
                let $k = UnaryKind::Tanh;
                $body
            }
            UnaryKind::Relu => {
                let $k = UnaryKind::Relu;
                $body
            }
            UnaryKind::Exp => {
                let $k = UnaryKind::Exp;
                $body
            }
            UnaryKind::Sqr => {
                let $k = UnaryKind::Sqr;
                $body
            }
            UnaryKind::Neg => {
                let $k = UnaryKind::Neg;
                $body
            }
            other => {
                let $k = other;
                $body
            }
        }
    };
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `out` computed chunk by chunk by `fill(out_chunk, start)`, over rayon's threads when large.
fn build<T: Float>(n: usize, fill: impl Fn(&mut [T], usize) + Sync) -> Vec<T> {
    super::new_rows(n, CHUNK, T::ZERO, |i, o| fill(o, i * CHUNK))
}

#[inline(always)]
fn forward_loop<T: Float>(kind: UnaryKind, o: &mut [T], x: &[T]) {
    per_kind!(kind, k => {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = f(k, x);
        }
    })
}

#[inline(always)]
fn backward_loop<T: Float>(kind: UnaryKind, o: &mut [T], x: &[T], y: &[T], g: &[T]) {
    per_kind!(kind, k => {
        for (o, ((&x, &y), &g)) in o.iter_mut().zip(x.iter().zip(y).zip(g)) {
            *o = g * df(k, x, y);
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2<T: Float>(kind: UnaryKind, o: &mut [T], x: &[T]) {
    forward_loop(kind, o, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_avx2<T: Float>(kind: UnaryKind, o: &mut [T], x: &[T], y: &[T], g: &[T]) {
    backward_loop(kind, o, x, y, g)
}

/// The gated-activation kind computing the same function as `kind`, for the AVX-512 path.
fn as_gate(kind: UnaryKind) -> Option<GateKind> {
    match kind {
        UnaryKind::GeluTanh => Some(GateKind::GeluTanh),
        UnaryKind::Silu => Some(GateKind::Silu),
        _ => None,
    }
}

pub(crate) fn forward<T: Float>(kind: UnaryKind, x: &[T]) -> Vec<T> {
    let simd = super::has_avx2();
    build(x.len(), |o, start| {
        let x = &x[start..start + o.len()];
        if let (Some(gk), Some(xf)) = (as_gate(kind), vmath::f32s(x)) {
            let of = vmath::f32s_mut(o).expect("same dtype as x");
            // SAFETY: `f32s` returned Some only with AVX-512 available; the slices have one length.
            return unsafe { vmath::act_map(gk, of, xf, None) };
        }
        super::dispatch_avx2!(simd, forward_avx2, forward_loop(kind, o, x))
    })
}

pub(crate) fn backward<T: Float>(kind: UnaryKind, x: &[T], y: &[T], g: &[T]) -> Vec<T> {
    let simd = super::has_avx2();
    build(x.len(), |o, start| {
        let r = start..start + o.len();
        let (x, y, g) = (&x[r.clone()], &y[r.clone()], &g[r]);
        if let (Some(gk), Some(xf), Some(gf)) = (as_gate(kind), vmath::f32s(x), vmath::f32s(g)) {
            let of = vmath::f32s_mut(o).expect("same dtype as x");
            // SAFETY: as in `forward`.
            return unsafe { vmath::act_map(gk, of, xf, Some(gf)) };
        }
        super::dispatch_avx2!(simd, backward_avx2, backward_loop(kind, o, x, y, g))
    })
}

impl backend::Unary for Cpu {
    fn unary(&self, x: &Tensor, kind: UnaryKind) -> Result<Tensor> {
        let r = Reads::new(&[x]);
        let v = crate::float_map!(r.floats(0)?, v => forward(kind, &v));
        Ok(out(v, x.dtype(), x.shape()))
    }

    fn unary_backward(&self, kind: UnaryKind, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Tensor> {
        let r = Reads::new(&[x, y, g]);
        let v = crate::float_zip!(kind.name(), (r.floats(0)?, r.floats(1)?, r.floats(2)?), (a, b, c) => backward(kind, &a, &b, &c))?;
        Ok(out(v, x.dtype(), x.shape()))
    }
}
