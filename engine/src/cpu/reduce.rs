//! CPU kernels for reductions.

use super::{out, out_storage, Cpu, FloatVec, Floats, Reads};
use crate::dtype::Float;
use crate::{backend, CpuStorage, Result, Tensor};

impl backend::Reduce for Cpu {
    fn sum_dims(&self, x: &Tensor, dims: &[usize], out_shape: &[usize]) -> Result<Tensor> {
        // Reduce one dim at a time on contiguous data.
        let mut shape = x.shape().to_vec();
        let r = Reads::new(&[x]);
        let v = crate::float_map!(r.floats(0)?, v => {
            // The first reduction reads the input in place (no copy of it).
            let mut cur = v;
            for &d in dims {
                cur = std::borrow::Cow::Owned(sum_dim(&cur, &shape, d));
                shape[d] = 1;
            }
            cur.into_owned()
        });
        Ok(out(v, x.dtype(), out_shape))
    }

    fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor> {
        let r = Reads::new(&[x]);
        let v = crate::float_map!(r.floats(0)?, v => scale(&v, s));
        Ok(out(v, x.dtype(), x.shape()))
    }

    fn select(&self, x: &Tensor, dim: usize, is_max: bool) -> Result<(Tensor, Tensor)> {
        let mut out_shape = x.shape().to_vec();
        out_shape[dim] = 1;
        let r = Reads::new(&[x]);
        let (vals, idx) = match r.floats(0)? {
            Floats::F32(v) => {
                let (vals, i) = select_dim(&v, x.shape(), dim, is_max);
                (FloatVec::F32(vals), i)
            }
            Floats::F64(v) => {
                let (vals, i) = select_dim(&v, x.shape(), dim, is_max);
                (FloatVec::F64(vals), i)
            }
        };
        Ok((out(vals, x.dtype(), &out_shape), out_storage(CpuStorage::I64(idx), &out_shape)))
    }

    fn select_backward(
        &self,
        g: &Tensor,
        indices: &Tensor,
        shape: &[usize],
        dim: usize,
        _is_max: bool,
    ) -> Result<Tensor> {
        let indices = super::host_vec::<i64>(indices)?;
        let r = Reads::new(&[g]);
        let v = crate::float_map!(r.floats(0)?, v => select_backward(&v, &indices, shape, dim));
        Ok(out(v, g.dtype(), shape))
    }

    fn norm_l2(&self, x: &Tensor) -> Result<Tensor> {
        let r = Reads::new(&[x]);
        let v = crate::float_map!(r.floats(0)?, v => vec![norm_l2(&v)]);
        Ok(out(v, x.dtype(), &[]))
    }
}

/// Sum over `dim` of a contiguous tensor of `shape`.
fn sum_dim<T: Float>(x: &[T], shape: &[usize], dim: usize) -> Vec<T> {
    let (outer, d, inner) = crate::shape::split_at_dim(shape, dim);
    let mut out = super::filled(outer * inner, T::ZERO);
    if outer == 1 && d * inner >= 1 << 17 && inner >= 64 {
        // A leading-dim sum (a bias gradient): column blocks on the backend's threads.
        let block = inner.div_ceil(super::threads::count() * 4).next_multiple_of(16);
        super::threads::for_chunks_mut(&mut out, block, |b, dst| {
            let c0 = b * block;
            for k in 0..d {
                let src = &x[k * inner + c0..k * inner + c0 + dst.len()];
                dst.iter_mut().zip(src).for_each(|(a, &v)| *a += v);
            }
        });
        return out;
    }
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

fn scale<T: Float>(x: &[T], s: f64) -> Vec<T> {
    let s = T::c(s);
    x.iter().map(|&v| v * s).collect()
}

/// Max (or min) over `dim` with the index of the first extreme element.
fn select_dim<T: Float>(x: &[T], shape: &[usize], dim: usize, is_max: bool) -> (Vec<T>, Vec<i64>) {
    let (outer, d, inner) = crate::shape::split_at_dim(shape, dim);
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

fn select_backward<T: Float>(g: &[T], idx: &[i64], shape: &[usize], dim: usize) -> Vec<T> {
    let (outer, d, inner) = crate::shape::split_at_dim(shape, dim);
    let mut out = super::filled(outer * d * inner, T::ZERO);
    for o in 0..outer {
        for i in 0..inner {
            let k = idx[o * inner + i] as usize;
            out[(o * d + k) * inner + i] = g[o * inner + i];
        }
    }
    out
}

fn norm_l2<T: Float>(x: &[T]) -> T {
    // Accumulate in f64 for accuracy on long vectors.
    x.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>().sqrt().pipe(T::c)
}

trait Pipe: Sized {
    fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
}
impl Pipe for f64 {}
