//! CPU kernels for the norm family: softmax, log_softmax, rms_norm, layer_norm, l2_normalize.
//!
//! Every kernel works on contiguous `[rows, width]` data, one row at a time, rows in parallel when
//! the tensor is big. Forward kernels return the per-row statistics their backward needs (rstd,
//! mean, norm); backward kernels compute every input gradient in one pass over the rows, with
//! parameter gradients summed per block of rows and the block partials added in a fixed order
//! (deterministic whatever the thread count).

use super::{new_rows, out, Cpu, FloatVec, Floats, Reads};
use crate::dtype::Float;
use crate::kinds::RmsNormKind;
use crate::shape::rows_of;
use crate::{backend, DType, Error, Result, Tensor};

/// Below this many elements rows run on the calling thread.
const PAR_MIN: usize = 1 << 15;
/// Rows per block for parameter-gradient partial sums: about this many elements.
const BLOCK_ELEMS: usize = 1 << 14;

/// The compute types, with access to the matching variant of [`Floats`] / [`FloatVec`].
trait Compute: Float {
    fn slice<'a>(f: &'a Floats<'_>) -> Option<&'a [Self]>;
    fn wrap(v: Vec<Self>) -> FloatVec;
}

impl Compute for f32 {
    fn slice<'a>(f: &'a Floats<'_>) -> Option<&'a [f32]> {
        match f {
            Floats::F32(v) => Some(v),
            Floats::F64(_) => None,
        }
    }
    fn wrap(v: Vec<f32>) -> FloatVec {
        FloatVec::F32(v)
    }
}

impl Compute for f64 {
    fn slice<'a>(f: &'a Floats<'_>) -> Option<&'a [f64]> {
        match f {
            Floats::F64(v) => Some(v),
            Floats::F32(_) => None,
        }
    }
    fn wrap(v: Vec<f64>) -> FloatVec {
        FloatVec::F64(v)
    }
}

/// Run `f(row, out_row)` over the rows of `out`, in parallel when big, collecting what each row
/// returns (its statistics).
fn map_rows<T: Send, S: Send>(out: &mut [T], width: usize, f: impl Fn(usize, &mut [T]) -> S + Sync + Send) -> Vec<S> {
    if width == 0 {
        return Vec::new();
    }
    if out.len() >= PAR_MIN {
        let mut rows: Vec<&mut [T]> = out.chunks_mut(width).collect();
        super::threads::map_mut(&mut rows, |i, row| f(i, row))
    } else {
        out.chunks_mut(width).enumerate().map(|(i, row)| f(i, row)).collect()
    }
}

/// Run `f(row, dx_row, acc)` over `rows` rows of `width`, blocks of rows in parallel when big;
/// `dx` is either `rows × width` (written row by row) or empty (no input gradient wanted, `f`
/// gets `None`). Each block sums into its own `acc` of `acc_len`; the partials are added in block
/// order.
fn rows_with_acc<T: Float>(
    rows: usize,
    width: usize,
    dx: &mut [T],
    acc_len: usize,
    f: impl Fn(usize, Option<&mut [T]>, &mut [T]) + Sync + Send,
) -> Vec<T> {
    let mut total = vec![T::ZERO; acc_len];
    if rows == 0 || width == 0 {
        return total;
    }
    let block_rows = (BLOCK_ELEMS / width).max(1);
    let n_blocks = rows.div_ceil(block_rows);
    let chunks: Vec<&mut [T]> = if dx.is_empty() {
        (0..n_blocks).map(|_| Default::default()).collect()
    } else {
        dx.chunks_mut(block_rows * width).collect()
    };
    let run = |(b, chunk): (usize, &mut [T])| {
        let mut acc = vec![T::ZERO; acc_len];
        let start = b * block_rows;
        let end = (start + block_rows).min(rows);
        for r in start..end {
            let j = r - start;
            let row = if chunk.is_empty() { None } else { Some(&mut chunk[j * width..(j + 1) * width]) };
            f(r, row, &mut acc);
        }
        acc
    };
    let partials: Vec<Vec<T>> = if rows * width >= PAR_MIN {
        let mut chunks = chunks;
        super::threads::map_mut(&mut chunks, |b, chunk| run((b, &mut **chunk)))
    } else {
        chunks.into_iter().enumerate().map(run).collect()
    };
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

// ----- softmax / log_softmax ----------------------------------------------------------------

/// `y = exp(x − max) / Σ exp(x − max)` per row (`log`: `y = (x − max) − ln Σ exp(x − max)`).
fn softmax_forward<T: Float>(x: &[T], width: usize, log: bool) -> Vec<T> {
    let y = new_rows(x.len(), width, T::ZERO, |r, yr| {
        let xr = &x[r * width..(r + 1) * width];
        let m = xr.iter().fold(T::NEG_INFINITY, |a, &v| a.max(v));
        let mut sum = T::ZERO;
        for (o, &v) in yr.iter_mut().zip(xr) {
            let e = (v - m).exp();
            *o = e;
            sum += e;
        }
        if log {
            // (x − max) − ln Σ: never forms max + ln Σ, which loses ln Σ to rounding when |max| is big.
            let ln_sum = sum.ln();
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = (v - m) - ln_sum;
            }
        } else {
            let inv = T::ONE / sum;
            for o in yr.iter_mut() {
                *o *= inv;
            }
        }
    });
    y
}

/// Softmax: `dx = y·(g − Σ g·y)`; log_softmax: `dx = g − exp(y)·Σ g`. `y` is the forward output.
fn softmax_backward<T: Float>(y: &[T], g: &[T], width: usize, log: bool) -> Vec<T> {
    let dx = new_rows(y.len(), width, T::ZERO, |r, dr| {
        let yr = &y[r * width..(r + 1) * width];
        let gr = &g[r * width..(r + 1) * width];
        if log {
            let s: T = gr.iter().copied().sum();
            for ((d, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                *d = gv - yv.exp() * s;
            }
        } else {
            let s: T = yr.iter().zip(gr).map(|(&a, &b)| a * b).sum();
            for ((d, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                *d = yv * (gv - s);
            }
        }
    });
    dx
}

// ----- rms_norm ------------------------------------------------------------------------------

/// The factor a weight element applies: `w` (plain), `1 + w` (Gemma), 1 without a weight.
#[inline(always)]
fn scale_of<T: Float>(w: Option<&[T]>, j: usize, kind: RmsNormKind) -> T {
    match (w, kind) {
        (None, _) => T::ONE,
        (Some(w), RmsNormKind::Plain) => w[j],
        (Some(w), RmsNormKind::Gemma) => T::ONE + w[j],
    }
}

/// `y = x·rstd·w'` with `rstd = 1/sqrt(mean(x²) + eps)` per row; returns `(y, rstd)`.
fn rms_norm_forward<T: Float>(x: &[T], w: Option<&[T]>, width: usize, eps: f64, kind: RmsNormKind) -> (Vec<T>, Vec<T>) {
    let mut y = super::filled(x.len(), T::ZERO);
    let inv_d = T::c(1.0 / width.max(1) as f64);
    let rstd = map_rows(&mut y, width, |r, yr| {
        let xr = &x[r * width..(r + 1) * width];
        let ms: T = xr.iter().map(|&v| v * v).sum::<T>() * inv_d;
        let rstd = T::ONE / (ms + T::c(eps)).sqrt();
        for (j, (o, &v)) in yr.iter_mut().zip(xr).enumerate() {
            *o = v * rstd * scale_of(w, j, kind);
        }
        rstd
    });
    (y, rstd)
}

/// Gradients of rms_norm: `dx = rstd·(g·w' − x̂·mean(g·w'·x̂))` (when `want_dx`) and
/// `dw = Σ_rows g·x̂` (when `want_dw`; the same for both kinds since `d(1 + w)/dw = 1`).
#[allow(clippy::too_many_arguments)]
fn rms_norm_backward<T: Float>(
    x: &[T],
    w: Option<&[T]>,
    rstd: &[T],
    g: &[T],
    width: usize,
    kind: RmsNormKind,
    want_dx: bool,
    want_dw: bool,
) -> (Vec<T>, Vec<T>) {
    let rows = rstd.len();
    let mut dx = if want_dx { super::filled(x.len(), T::ZERO) } else { Vec::new() };
    let inv_d = T::c(1.0 / width.max(1) as f64);
    let dw = rows_with_acc(rows, width, &mut dx, if want_dw { width } else { 0 }, |r, dr, acc| {
        let xr = &x[r * width..(r + 1) * width];
        let gr = &g[r * width..(r + 1) * width];
        let rs = rstd[r];
        if let Some(dr) = dr {
            let mut dot = T::ZERO;
            for (j, (&xv, &gv)) in xr.iter().zip(gr).enumerate() {
                dot += gv * scale_of(w, j, kind) * xv * rs;
            }
            let c = dot * inv_d;
            for (j, (d, (&xv, &gv))) in dr.iter_mut().zip(xr.iter().zip(gr)).enumerate() {
                *d = rs * (gv * scale_of(w, j, kind) - xv * rs * c);
            }
        }
        for ((a, &xv), &gv) in acc.iter_mut().zip(xr).zip(gr) {
            *a += gv * xv * rs;
        }
    });
    (dx, dw)
}

// ----- layer_norm ----------------------------------------------------------------------------

/// `y = (x − mean)·rstd·w + b` with the biased variance; returns `(y, mean, rstd)`.
fn layer_norm_forward<T: Float>(
    x: &[T],
    w: Option<&[T]>,
    b: Option<&[T]>,
    width: usize,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut y = super::filled(x.len(), T::ZERO);
    let inv_d = T::c(1.0 / width.max(1) as f64);
    let stats = map_rows(&mut y, width, |r, yr| {
        let xr = &x[r * width..(r + 1) * width];
        // Two passes (mean, then centred squares): stable when |mean| ≫ std.
        let mean = xr.iter().copied().sum::<T>() * inv_d;
        let var = xr.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() * inv_d;
        let rstd = T::ONE / (var + T::c(eps)).sqrt();
        for (j, (o, &v)) in yr.iter_mut().zip(xr).enumerate() {
            let mut h = (v - mean) * rstd;
            if let Some(w) = w {
                h *= w[j];
            }
            if let Some(b) = b {
                h += b[j];
            }
            *o = h;
        }
        (mean, rstd)
    });
    let (mean, rstd) = stats.into_iter().unzip();
    (y, mean, rstd)
}

/// Gradients of layer_norm: `dx = rstd·(g·w − mean(g·w) − x̂·mean(g·w·x̂))` (when `want_dx`),
/// `dw = Σ_rows g·x̂`, `db = Σ_rows g` (when `want_params`). Returns `(dx, dw, db)`.
#[allow(clippy::too_many_arguments)]
fn layer_norm_backward<T: Float>(
    x: &[T],
    w: Option<&[T]>,
    mean: &[T],
    rstd: &[T],
    g: &[T],
    width: usize,
    want_dx: bool,
    want_params: bool,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows = rstd.len();
    let mut dx = if want_dx { super::filled(x.len(), T::ZERO) } else { Vec::new() };
    let inv_d = T::c(1.0 / width.max(1) as f64);
    // One accumulator holds dw then db.
    let acc_len = if want_params { 2 * width } else { 0 };
    let acc = rows_with_acc(rows, width, &mut dx, acc_len, |r, dr, acc| {
        let xr = &x[r * width..(r + 1) * width];
        let gr = &g[r * width..(r + 1) * width];
        let (mu, rs) = (mean[r], rstd[r]);
        let wj = |j: usize| w.map_or(T::ONE, |w| w[j]);
        if let Some(dr) = dr {
            let (mut s1, mut s2) = (T::ZERO, T::ZERO);
            for (j, (&xv, &gv)) in xr.iter().zip(gr).enumerate() {
                let gh = gv * wj(j);
                s1 += gh;
                s2 += gh * (xv - mu) * rs;
            }
            let (c1, c2) = (s1 * inv_d, s2 * inv_d);
            for (j, (d, (&xv, &gv))) in dr.iter_mut().zip(xr.iter().zip(gr)).enumerate() {
                *d = rs * (gv * wj(j) - c1 - (xv - mu) * rs * c2);
            }
        }
        if !acc.is_empty() {
            let (dw, db) = acc.split_at_mut(width);
            for (((a, b), &xv), &gv) in dw.iter_mut().zip(db.iter_mut()).zip(xr).zip(gr) {
                *a += gv * (xv - mu) * rs;
                *b += gv;
            }
        }
    });
    if want_params {
        let mut dw = acc;
        let db = dw.split_off(width);
        (dx, dw, db)
    } else {
        (dx, Vec::new(), Vec::new())
    }
}

// ----- l2_normalize --------------------------------------------------------------------------

/// `y = x / max(‖x‖₂, eps)` per row; returns `(y, ‖x‖₂)`.
fn l2_normalize_forward<T: Float>(x: &[T], width: usize, eps: f64) -> (Vec<T>, Vec<T>) {
    let mut y = super::filled(x.len(), T::ZERO);
    let norms = map_rows(&mut y, width, |r, yr| {
        let xr = &x[r * width..(r + 1) * width];
        let n = xr.iter().map(|&v| v * v).sum::<T>().sqrt();
        // Divide (as torch does) rather than multiply by a rounded reciprocal: a one-element
        // row then gives exactly ±1, and its gradient exactly 0.
        let denom = n.max(T::c(eps));
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = v / denom;
        }
        n
    });
    (y, norms)
}

/// Gradient of l2_normalize: `dx = (g − y·Σ g·y) / ‖x‖` where `‖x‖ ≥ eps`, and `dx = g / eps` in
/// the clamped region (the norm is then a constant), matching torch's `clamp_min`.
fn l2_normalize_backward<T: Float>(y: &[T], norms: &[T], g: &[T], width: usize, eps: f64) -> Vec<T> {
    let eps = T::c(eps);
    let dx = new_rows(y.len(), width, T::ZERO, |r, dr| {
        let yr = &y[r * width..(r + 1) * width];
        let gr = &g[r * width..(r + 1) * width];
        let n = norms[r];
        if n >= eps {
            let s: T = yr.iter().zip(gr).map(|(&a, &b)| a * b).sum();
            let inv = T::ONE / n;
            for ((d, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                *d = (gv - yv * s) * inv;
            }
        } else {
            let inv = T::ONE / eps;
            for (d, &gv) in dr.iter_mut().zip(gr) {
                *d = gv * inv;
            }
        }
    });
    dx
}

// ----- the backend primitives ---------------------------------------------------------------------

fn mixed(op: &'static str) -> Error {
    Error::invalid(op, "operands computed in different precisions")
}

fn slice_of<'a, T: Compute>(op: &'static str, f: &'a Floats<'_>) -> Result<&'a [T]> {
    T::slice(f).ok_or_else(|| mixed(op))
}

fn opt_slice<'a, T: Compute>(op: &'static str, f: Option<&'a Floats<'_>>) -> Result<Option<&'a [T]>> {
    f.map(|f| slice_of(op, f)).transpose()
}

/// Per-row statistics as a `[rows]` tensor in their compute precision.
fn stats(v: FloatVec, rows: usize) -> Tensor {
    let dtype = match v {
        FloatVec::F32(_) => DType::F32,
        FloatVec::F64(_) => DType::F64,
    };
    out(v, dtype, &[rows])
}

/// The tensors of `ts` that are present, and where each optional one landed.
fn present<'a>(ts: &[Option<&'a Tensor>]) -> (Vec<&'a Tensor>, Vec<Option<usize>>) {
    let mut list = Vec::new();
    let at = ts
        .iter()
        .map(|t| {
            t.map(|t| {
                list.push(t);
                list.len() - 1
            })
        })
        .collect();
    (list, at)
}

impl backend::Norm for Cpu {
    fn softmax(&self, x: &Tensor, log: bool) -> Result<Tensor> {
        let (_, width) = rows_of(x.shape());
        let r = Reads::new(&[x]);
        let v = crate::float_map!(r.floats(0)?, v => softmax_forward(&v, width, log));
        Ok(out(v, x.dtype(), x.shape()))
    }

    fn softmax_backward(&self, y: &Tensor, g: &Tensor, log: bool) -> Result<Tensor> {
        let (_, width) = rows_of(y.shape());
        let r = Reads::new(&[y, g]);
        let v =
            crate::float_zip!("softmax", (r.floats(0)?, r.floats(1)?), (y, g) => softmax_backward(&y, &g, width, log))?;
        Ok(out(v, y.dtype(), y.shape()))
    }

    fn rms_norm(&self, x: &Tensor, w: Option<&Tensor>, eps: f64, kind: RmsNormKind) -> Result<(Tensor, Tensor)> {
        const OP: &str = "rms_norm";
        let (rows, width) = rows_of(x.shape());
        let (ts, at) = present(&[Some(x), w]);
        let r = Reads::new(&ts);
        let wf = at[1].map(|i| r.floats(i)).transpose()?;
        fn go<T: Compute>(
            x: &[T],
            w: Option<&Floats>,
            width: usize,
            eps: f64,
            kind: RmsNormKind,
        ) -> Result<(FloatVec, FloatVec)> {
            let (y, rstd) = rms_norm_forward(x, opt_slice(OP, w)?, width, eps, kind);
            Ok((T::wrap(y), T::wrap(rstd)))
        }
        let (y, rstd) = match r.floats(0)? {
            Floats::F32(v) => go(&v, wf.as_ref(), width, eps, kind)?,
            Floats::F64(v) => go(&v, wf.as_ref(), width, eps, kind)?,
        };
        Ok((out(y, x.dtype(), x.shape()), stats(rstd, rows)))
    }

    fn rms_norm_backward(
        &self,
        x: &Tensor,
        w: Option<&Tensor>,
        rstd: &Tensor,
        g: &Tensor,
        kind: RmsNormKind,
        want_dx: bool,
        want_dw: bool,
    ) -> Result<backend::Grad2> {
        const OP: &str = "rms_norm";
        let (_, width) = rows_of(x.shape());
        let (ts, at) = present(&[Some(x), Some(g), Some(rstd), w]);
        let r = Reads::new(&ts);
        let (rs, wf) = (r.floats(2)?, at[3].map(|i| r.floats(i)).transpose()?);
        #[allow(clippy::too_many_arguments)]
        fn go<T: Compute>(
            x: &[T],
            g: &[T],
            w: Option<&Floats>,
            rs: &Floats,
            width: usize,
            kind: RmsNormKind,
            want_dx: bool,
            want_dw: bool,
        ) -> Result<(FloatVec, FloatVec)> {
            let (dx, dw) = rms_norm_backward(x, opt_slice(OP, w)?, slice_of(OP, rs)?, g, width, kind, want_dx, want_dw);
            Ok((T::wrap(dx), T::wrap(dw)))
        }
        let (dx, dw) = match (r.floats(0)?, r.floats(1)?) {
            (Floats::F32(x), Floats::F32(g)) => go(&x, &g, wf.as_ref(), &rs, width, kind, want_dx, want_dw)?,
            (Floats::F64(x), Floats::F64(g)) => go(&x, &g, wf.as_ref(), &rs, width, kind, want_dx, want_dw)?,
            _ => return Err(mixed(OP)),
        };
        let dx = want_dx.then(|| out(dx, x.dtype(), x.shape()));
        let dw = w.filter(|_| want_dw).map(|w| out(dw, w.dtype(), w.shape()));
        Ok((dx, dw))
    }

    fn layer_norm(
        &self,
        x: &Tensor,
        w: Option<&Tensor>,
        b: Option<&Tensor>,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "layer_norm";
        let (rows, width) = rows_of(x.shape());
        let (ts, at) = present(&[Some(x), w, b]);
        let r = Reads::new(&ts);
        let wf = at[1].map(|i| r.floats(i)).transpose()?;
        let bf = at[2].map(|i| r.floats(i)).transpose()?;
        fn go<T: Compute>(
            x: &[T],
            w: Option<&Floats>,
            b: Option<&Floats>,
            width: usize,
            eps: f64,
        ) -> Result<(FloatVec, FloatVec, FloatVec)> {
            let (y, mean, rstd) = layer_norm_forward(x, opt_slice(OP, w)?, opt_slice(OP, b)?, width, eps);
            Ok((T::wrap(y), T::wrap(mean), T::wrap(rstd)))
        }
        let (y, mean, rstd) = match r.floats(0)? {
            Floats::F32(v) => go(&v, wf.as_ref(), bf.as_ref(), width, eps)?,
            Floats::F64(v) => go(&v, wf.as_ref(), bf.as_ref(), width, eps)?,
        };
        Ok((out(y, x.dtype(), x.shape()), stats(mean, rows), stats(rstd, rows)))
    }

    fn layer_norm_backward(
        &self,
        x: &Tensor,
        w: Option<&Tensor>,
        b: Option<&Tensor>,
        mean: &Tensor,
        rstd: &Tensor,
        g: &Tensor,
        want_dx: bool,
        want_params: bool,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        const OP: &str = "layer_norm";
        let (_, width) = rows_of(x.shape());
        let (ts, at) = present(&[Some(x), Some(g), Some(mean), Some(rstd), w]);
        let r = Reads::new(&ts);
        let (mu, rs) = (r.floats(2)?, r.floats(3)?);
        let wf = at[4].map(|i| r.floats(i)).transpose()?;
        #[allow(clippy::too_many_arguments)]
        fn go<T: Compute>(
            x: &[T],
            g: &[T],
            w: Option<&Floats>,
            mu: &Floats,
            rs: &Floats,
            width: usize,
            want_dx: bool,
            want_params: bool,
        ) -> Result<(FloatVec, FloatVec, FloatVec)> {
            let (dx, dw, db) = layer_norm_backward(
                x,
                opt_slice(OP, w)?,
                slice_of(OP, mu)?,
                slice_of(OP, rs)?,
                g,
                width,
                want_dx,
                want_params,
            );
            Ok((T::wrap(dx), T::wrap(dw), T::wrap(db)))
        }
        let (dx, dw, db) = match (r.floats(0)?, r.floats(1)?) {
            (Floats::F32(x), Floats::F32(g)) => go(&x, &g, wf.as_ref(), &mu, &rs, width, want_dx, want_params)?,
            (Floats::F64(x), Floats::F64(g)) => go(&x, &g, wf.as_ref(), &mu, &rs, width, want_dx, want_params)?,
            _ => return Err(mixed(OP)),
        };
        let dx = want_dx.then(|| out(dx, x.dtype(), x.shape()));
        let dw = w.filter(|_| want_params).map(|w| out(dw, w.dtype(), w.shape()));
        let db = b.filter(|_| want_params).map(|b| out(db, b.dtype(), b.shape()));
        Ok((dx, dw, db))
    }

    fn l2_normalize(&self, x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        let (rows, width) = rows_of(x.shape());
        let r = Reads::new(&[x]);
        let (y, n) = match r.floats(0)? {
            Floats::F32(x) => {
                let (y, n) = l2_normalize_forward(&x, width, eps);
                (FloatVec::F32(y), FloatVec::F32(n))
            }
            Floats::F64(x) => {
                let (y, n) = l2_normalize_forward(&x, width, eps);
                (FloatVec::F64(y), FloatVec::F64(n))
            }
        };
        Ok((out(y, x.dtype(), x.shape()), stats(n, rows)))
    }

    fn l2_normalize_backward(&self, y: &Tensor, norm: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor> {
        let (_, width) = rows_of(y.shape());
        let r = Reads::new(&[y, norm, g]);
        let v = crate::float_zip!(
            "l2_normalize",
            (r.floats(0)?, r.floats(1)?, r.floats(2)?),
            (y, n, g) => l2_normalize_backward(&y, &n, &g, width, eps)
        )?;
        Ok(out(v, y.dtype(), y.shape()))
    }
}
