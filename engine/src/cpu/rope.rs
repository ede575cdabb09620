//! CPU kernels for rotary position embedding (rotate-half form).
//!
//! x and its gradient are contiguous `[B, L, H, D]` rows of `D`; the tables are contiguous
//! `[L, D]` or `[B, L, D]`. Each row reads the table row of its (batch, position).

use super::{out, Cpu, Reads};
use crate::dtype::Float;
use crate::{backend, Result, Tensor};

impl backend::Rope for Cpu {
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, batched: bool, backward: bool) -> Result<Tensor> {
        let sh = x.shape();
        let dims = RopeDims { b: sh[0], l: sh[1], h: sh[2], d: sh[3], batched };
        let r = Reads::new(&[x, cos, sin]);
        let v = crate::float_zip!(
            "rope",
            (r.floats(0)?, r.floats(1)?, r.floats(2)?),
            (x, c, s) => if backward { self::backward(&x, &c, &s, dims) } else { forward(&x, &c, &s, dims) }
        )?;
        Ok(out(v, x.dtype(), sh))
    }
}

/// Sizes of one rope call; `batched` when the tables carry a batch dim.
#[derive(Clone, Copy, Debug)]
struct RopeDims {
    pub b: usize,
    pub l: usize,
    pub h: usize,
    pub d: usize,
    pub batched: bool,
}

/// Apply `f(row, table_offset, out_row)` to every `[D]` row, in parallel when big.
fn rows<T: Float>(dims: RopeDims, f: impl Fn(usize, usize, &mut [T]) + Sync + Send) -> Vec<T> {
    let RopeDims { b, l, h, d, batched } = dims;
    super::new_rows(b * l * h * d, d, T::ZERO, |r, row| {
        let pos = r / h; // (batch, position) index
        let t = if batched { pos } else { pos % l };
        f(r * d, t * d, row)
    })
}

/// `out = x·cos + rotate_half(x)·sin`: for `j < D/2`, `out[j] = x[j]c[j] − x[j+D/2]s[j]` and
/// `out[j+D/2] = x[j+D/2]c[j+D/2] + x[j]s[j+D/2]`.
fn forward<T: Float>(x: &[T], cos: &[T], sin: &[T], dims: RopeDims) -> Vec<T> {
    let half = dims.d / 2;
    rows(dims, |xo, to, out| {
        let (x, c, s) = (&x[xo..xo + dims.d], &cos[to..to + dims.d], &sin[to..to + dims.d]);
        for j in 0..half {
            let (a, b) = (x[j], x[j + half]);
            out[j] = a * c[j] - b * s[j];
            out[j + half] = b * c[j + half] + a * s[j + half];
        }
    })
}

/// `dx = g·cos + rotate_halfᵀ(g·sin)`: for `j < D/2`, `dx[j] = g[j]c[j] + g[j+D/2]s[j+D/2]` and
/// `dx[j+D/2] = g[j+D/2]c[j+D/2] − g[j]s[j]`.
fn backward<T: Float>(g: &[T], cos: &[T], sin: &[T], dims: RopeDims) -> Vec<T> {
    let half = dims.d / 2;
    rows(dims, |go, to, out| {
        let (g, c, s) = (&g[go..go + dims.d], &cos[to..to + dims.d], &sin[to..to + dims.d]);
        for j in 0..half {
            let (a, b) = (g[j], g[j + half]);
            out[j] = a * c[j] + b * s[j + half];
            out[j + half] = b * c[j + half] - a * s[j];
        }
    })
}
