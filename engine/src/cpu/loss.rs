//! CPU kernels for the loss family: row-wise cross-entropy (forward keeps each row's max and
//! softmax denominator for the backward) and the elementwise pair losses (mse, huber, bce_with_logits) with their
//! gradients for both operands computed in one pass.
//!
//! Sums accumulate in f64 over fixed-size chunks added in order, so results do not depend on the
//! number of threads.

use super::{out, Cpu, FloatVec, Floats, Reads};
use crate::dtype::Float;
use crate::kinds::{PairKind, Reduction};
use crate::{backend, DType, Error, Result, Tensor};
use rayon::prelude::*;

impl backend::Loss for Cpu {
    fn cross_entropy(
        &self,
        logits: &Tensor,
        _targets: &Tensor,
        t: &[i64],
        ignore_index: i64,
        reduction: Reduction,
        scale: f64,
    ) -> Result<(Tensor, Tensor)> {
        let (n, c) = (t.len(), logits.shape()[1]);
        let (dtype, compute) = (logits.dtype(), logits.dtype().compute());
        let r = Reads::new(&[logits]);
        let (losses, stats) = match r.floats(0)? {
            Floats::F32(x) => {
                let (a, b) = cross_entropy_forward(&x, t, c, ignore_index);
                (FloatVec::F32(a), FloatVec::F32(b))
            }
            Floats::F64(x) => {
                let (a, b) = cross_entropy_forward(&x, t, c, ignore_index);
                (FloatVec::F64(a), FloatVec::F64(b))
            }
        };
        let losses = match reduction {
            Reduction::None => out(losses, dtype, &[n]),
            Reduction::Sum | Reduction::Mean => {
                let sum = match &losses {
                    FloatVec::F32(v) => sum_f64(v),
                    FloatVec::F64(v) => sum_f64(v),
                };
                let v = match compute {
                    DType::F64 => FloatVec::F64(vec![sum * scale]),
                    _ => FloatVec::F32(vec![(sum * scale) as f32]),
                };
                out(v, dtype, &[])
            }
        };
        Ok((losses, out(stats, compute, &[n, 2])))
    }

    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        stats: &Tensor,
        g: &Tensor,
        ignore_index: i64,
        scale: f64,
    ) -> Result<Tensor> {
        let t = super::host_vec::<i64>(targets)?;
        let c = logits.shape()[1];
        let r = Reads::new(&[logits, stats, g]);
        let v = crate::float_zip!(
            "cross_entropy",
            (r.floats(0)?, r.floats(1)?, r.floats(2)?),
            (x, s, g) => cross_entropy_backward(&x, &t, &s, &g, c, ignore_index, scale)
        )?;
        Ok(out(v, logits.dtype(), logits.shape()))
    }

    fn pair_loss(
        &self,
        kind: PairKind,
        pred: &Tensor,
        target: &Tensor,
        reduction: Reduction,
        scale: f64,
    ) -> Result<Tensor> {
        let r = Reads::new(&[pred, target]);
        let (p, t) = (r.floats(0)?, r.floats(1)?);
        let op = kind.name();
        if kind == PairKind::BceWithLogits {
            let bad = match &t {
                Floats::F32(v) => v.iter().position(|x| !(0.0..=1.0).contains(x)).map(|i| (i, v[i] as f64)),
                Floats::F64(v) => v.iter().position(|x| !(0.0..=1.0).contains(x)).map(|i| (i, v[i])),
            };
            if let Some((i, v)) = bad {
                return Err(Error::invalid(op, format!("target {v} at flat index {i} is outside [0, 1]")));
            }
        }
        let (v, shape): (FloatVec, &[usize]) = match reduction {
            Reduction::None => (crate::float_zip!(op, (p, t), (a, b) => pair_forward(kind, &a, &b))?, pred.shape()),
            Reduction::Sum | Reduction::Mean => {
                (crate::float_zip!(op, (p, t), (a, b) => pair_reduce(kind, &a, &b, scale))?, &[])
            }
        };
        Ok(out(v, pred.dtype(), shape))
    }

    fn pair_loss_backward(
        &self,
        kind: PairKind,
        pred: &Tensor,
        target: &Tensor,
        g: &Tensor,
        scale: f64,
        (want_p, want_t): (bool, bool),
    ) -> Result<backend::Grad2> {
        let r = Reads::new(&[pred, target, g]);
        let (dp, dt) = match (r.floats(0)?, r.floats(1)?, r.floats(2)?) {
            (Floats::F32(p), Floats::F32(t), Floats::F32(g)) => {
                let (a, b) = pair_backward(kind, &p, &t, &g, scale, want_p, want_t);
                (FloatVec::F32(a), FloatVec::F32(b))
            }
            (Floats::F64(p), Floats::F64(t), Floats::F64(g)) => {
                let (a, b) = pair_backward(kind, &p, &t, &g, scale, want_p, want_t);
                (FloatVec::F64(a), FloatVec::F64(b))
            }
            _ => return Err(Error::invalid(kind.name(), "operands computed in different precisions")),
        };
        let dp = want_p.then(|| out(dp, pred.dtype(), pred.shape()));
        let dt = want_t.then(|| out(dt, target.dtype(), target.shape()));
        Ok((dp, dt))
    }
}

/// Below this many elements the kernels stay on one thread.
const PAR_MIN: usize = 1 << 15;
/// Chunk size of the parallel elementwise loops and of the ordered f64 sums.
const CHUNK: usize = 1 << 13;

/// Per-row losses of `x` (`[n, c]`, contiguous) against class indices `t` (already validated to
/// lie in `[0, c)` unless equal to `ignore`), and the row statistics the backward needs: `[n, 2]`
/// of `(max, 1 / Σ exp(x − max))`. Ignored rows give a loss of 0 and statistics `(0, 0)`.
///
/// The loss is `(max − x_t) + log Σ exp(x − max)`, never `logsumexp − x_t`: with ±1e4 logits in
/// f32 a rounded logsumexp would lose three decimal digits of small losses and of the softmax.
fn cross_entropy_forward<T: Float>(x: &[T], t: &[i64], c: usize, ignore: i64) -> (Vec<T>, Vec<T>) {
    let row = |i: usize| -> (T, [T; 2]) {
        if t[i] == ignore {
            return (T::ZERO, [T::ZERO; 2]);
        }
        let r = &x[i * c..(i + 1) * c];
        // Subtracting the row max keeps every exp in (0, 1], so ±1e4 logits stay finite.
        let m = r.iter().fold(T::NEG_INFINITY, |a, &b| a.max(b));
        let s: f64 = r.iter().map(|&v| (v - m).exp().to_f64()).sum();
        ((m - r[t[i] as usize]) + T::c(s.ln()), [m, T::c(1.0 / s)])
    };
    let (losses, stats): (Vec<T>, Vec<[T; 2]>) =
        if x.len() >= PAR_MIN { (0..t.len()).into_par_iter().map(row).unzip() } else { (0..t.len()).map(row).unzip() };
    (losses, stats.into_iter().flatten().collect())
}

/// `dx[i, j] = g_i · scale · (softmax(x_i)_j − [j = t_i])`, zero on ignored rows. `g` holds one
/// value (a reduced loss) or one per row; the softmax is rebuilt from the saved row statistics
/// `(max, 1 / Σ exp(x − max))`, so no buffer besides the output is needed.
fn cross_entropy_backward<T: Float>(
    x: &[T],
    t: &[i64],
    stats: &[T],
    g: &[T],
    c: usize,
    ignore: i64,
    scale: f64,
) -> Vec<T> {
    let mut dx = super::filled(x.len(), T::ZERO);
    let scale = T::c(scale);
    super::par_rows(&mut dx, c, |i, d| {
        if t[i] == ignore {
            return;
        }
        let gi = if g.len() == 1 { g[0] } else { g[i] } * scale;
        let (m, inv_s) = (stats[2 * i], stats[2 * i + 1]);
        let r = &x[i * c..(i + 1) * c];
        for (o, &v) in d.iter_mut().zip(r) {
            *o = (v - m).exp() * inv_s * gi;
        }
        d[t[i] as usize] = d[t[i] as usize] - gi;
    });
    dx
}

/// The sum of `v`, accumulated in f64.
fn sum_f64<T: Float>(v: &[T]) -> f64 {
    v.iter().map(|&x| x.to_f64()).sum()
}

#[inline(always)]
fn pair_loss<T: Float>(kind: PairKind, p: T, t: T) -> T {
    match kind {
        PairKind::Mse => {
            let d = p - t;
            d * d
        }
        PairKind::Huber(delta) => {
            let d = p - t;
            let a = d.abs();
            let delta = T::c(delta);
            if a < delta {
                T::c(0.5) * d * d
            } else {
                delta * (a - T::c(0.5) * delta)
            }
        }
        // max(x, 0) − x·t + log(1 + exp(−|x|)); log1p in f64 keeps tiny losses exact in f32.
        PairKind::BceWithLogits => p.max(T::ZERO) - p * t + T::c((-p.abs()).exp().to_f64().ln_1p()),
    }
}

/// `(∂l/∂p, ∂l/∂t)` of one element.
#[inline(always)]
fn pair_grad<T: Float>(kind: PairKind, p: T, t: T) -> (T, T) {
    match kind {
        PairKind::Mse => {
            let d = T::c(2.0) * (p - t);
            (d, -d)
        }
        PairKind::Huber(delta) => {
            let delta = T::c(delta);
            let d = (p - t).max(-delta).min(delta);
            (d, -d)
        }
        PairKind::BceWithLogits => {
            // sigmoid(x) − t; 1/(1 + exp(−x)) is exact at both extremes (exp overflows to inf → 0).
            let s = T::ONE / (T::ONE + (-p).exp());
            (s - t, -p)
        }
    }
}

/// Per-element losses.
fn pair_forward<T: Float>(kind: PairKind, p: &[T], t: &[T]) -> Vec<T> {
    if p.len() >= PAR_MIN {
        (p, t).into_par_iter().map(|(&a, &b)| pair_loss(kind, a, b)).collect()
    } else {
        p.iter().zip(t).map(|(&a, &b)| pair_loss(kind, a, b)).collect()
    }
}

/// `scale · Σ loss` as a one-element vector, without materialising the per-element losses.
fn pair_reduce<T: Float>(kind: PairKind, p: &[T], t: &[T], scale: f64) -> Vec<T> {
    let chunk = |(a, b): (&[T], &[T])| -> f64 { a.iter().zip(b).map(|(&x, &y)| pair_loss(kind, x, y).to_f64()).sum() };
    let partial: Vec<f64> = if p.len() >= PAR_MIN {
        p.par_chunks(CHUNK).zip(t.par_chunks(CHUNK)).map(chunk).collect()
    } else {
        p.chunks(CHUNK).zip(t.chunks(CHUNK)).map(chunk).collect()
    };
    vec![T::c(partial.iter().sum::<f64>() * scale)]
}

/// Gradients of both operands in one pass: `dp = g·scale·∂l/∂p`, `dt = g·scale·∂l/∂t`. `g` holds
/// one value (a reduced loss) or one per element. An operand that is not wanted gets an empty
/// vector.
fn pair_backward<T: Float>(
    kind: PairKind,
    p: &[T],
    t: &[T],
    g: &[T],
    scale: f64,
    want_p: bool,
    want_t: bool,
) -> (Vec<T>, Vec<T>) {
    let n = p.len();
    let mut dp = vec![T::ZERO; if want_p { n } else { 0 }];
    let mut dt = vec![T::ZERO; if want_t { n } else { 0 }];
    let scale = T::c(scale);
    let body = |start: usize, dp: &mut [T], dt: &mut [T]| {
        let len = dp.len().max(dt.len());
        for k in 0..len {
            let i = start + k;
            let gi = if g.len() == 1 { g[0] } else { g[i] } * scale;
            let (a, b) = pair_grad(kind, p[i], t[i]);
            if let Some(o) = dp.get_mut(k) {
                *o = a * gi;
            }
            if let Some(o) = dt.get_mut(k) {
                *o = b * gi;
            }
        }
    };
    let par = n >= PAR_MIN;
    match (want_p, want_t) {
        (true, true) if par => dp
            .par_chunks_mut(CHUNK)
            .zip(dt.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, (a, b))| body(c * CHUNK, a, b)),
        (true, false) if par => dp.par_chunks_mut(CHUNK).enumerate().for_each(|(c, a)| body(c * CHUNK, a, &mut [])),
        (false, true) if par => dt.par_chunks_mut(CHUNK).enumerate().for_each(|(c, b)| body(c * CHUNK, &mut [], b)),
        _ => body(0, &mut dp, &mut dt),
    }
    (dp, dt)
}
