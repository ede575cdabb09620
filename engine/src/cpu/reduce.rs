//! CPU kernels for reductions.

use crate::dtype::Float;

/// Sum over `dim` of a contiguous tensor of `shape`.
pub(crate) fn sum_dim<T: Float>(x: &[T], shape: &[usize], dim: usize) -> Vec<T> {
    let (outer, d, inner) = super::split_at_dim(shape, dim);
    let mut out = vec![T::ZERO; outer * inner];
    for o in 0..outer {
        let dst = &mut out[o * inner..(o + 1) * inner];
        for k in 0..d {
            let src = &x[(o * d + k) * inner..(o * d + k + 1) * inner];
            for (a, &b) in dst.iter_mut().zip(src) {
                *a += b;
            }
        }
    }
    out
}

pub(crate) fn scale<T: Float>(x: &[T], s: f64) -> Vec<T> {
    let s = T::c(s);
    x.iter().map(|&v| v * s).collect()
}

/// Max (or min) over `dim` with the index of the first extreme element.
pub(crate) fn select_dim<T: Float>(x: &[T], shape: &[usize], dim: usize, is_max: bool) -> (Vec<T>, Vec<i64>) {
    let (outer, d, inner) = super::split_at_dim(shape, dim);
    let mut vals = Vec::with_capacity(outer * inner);
    let mut idx = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let mut best = x[o * d * inner + i];
            let mut bi = 0;
            for k in 1..d {
                let v = x[(o * d + k) * inner + i];
                let better = if is_max { v > best } else { v < best };
                // NaN propagates: once seen it is kept.
                if better || (v.is_nan() && !best.is_nan()) {
                    best = v;
                    bi = k;
                }
            }
            vals.push(best);
            idx.push(bi as i64);
        }
    }
    (vals, idx)
}

pub(crate) fn select_backward<T: Float>(g: &[T], idx: &[i64], shape: &[usize], dim: usize) -> Vec<T> {
    let (outer, d, inner) = super::split_at_dim(shape, dim);
    let mut out = vec![T::ZERO; outer * d * inner];
    for o in 0..outer {
        for i in 0..inner {
            let k = idx[o * inner + i] as usize;
            out[(o * d + k) * inner + i] = g[o * inner + i];
        }
    }
    out
}

pub(crate) fn norm_l2<T: Float>(x: &[T]) -> T {
    // Accumulate in f64 for accuracy on long vectors.
    x.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>().sqrt().pipe(T::c)
}

trait Pipe: Sized {
    fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
}
impl Pipe for f64 {}
