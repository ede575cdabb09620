//! CPU kernels for joining and indexing. Data movement (cat, index_select, gather,
//! masked_scatter, where_cond and their row/element-routing backwards) is generic over every
//! element type, so token ids and masks move exactly; the accumulating kernels (index_add,
//! scatter_add) are generic over the compute floats.
//!
//! Shapes are split around the indexed dim as `[outer, d, inner]` (see `split_at_dim`). Index and
//! mask tensors are read from their own storage here (the backend's memory, not a host read), and
//! every index is checked against `0..d` before it is used: an error naming the op and the index.

use super::{host_vec, out, out_storage, Cpu, Reads};
use crate::dtype::Float;
use crate::shape::contiguous_strides;
use crate::shape::split_at_dim;
use crate::{backend, CpuStorage, DType, Error, Layout, Result, Tensor, WithDType};
use std::borrow::Cow;

/// The indices of `idx` (row-major) as `usize`s in `0..size`; an index outside is an error.
fn indices(op: &'static str, idx: &Tensor, dim: usize, size: usize) -> Result<Vec<usize>> {
    host_vec::<i64>(idx)?
        .into_iter()
        .map(|i| {
            usize::try_from(i)
                .ok()
                .filter(|&u| u < size)
                .ok_or_else(|| Error::invalid(op, format!("index {i} is out of range for dim {dim} of size {size}")))
        })
        .collect()
}

/// A mask (u8 or i64, any layout) as booleans, row-major.
fn mask_of(mask: &Tensor) -> Result<Vec<bool>> {
    Ok(host_vec::<i64>(mask)?.into_iter().map(|m| m != 0).collect())
}

/// The rows a mask sets, in order.
fn set_rows(mask: &Tensor) -> Result<Vec<usize>> {
    Ok(mask_of(mask)?.into_iter().enumerate().filter_map(|(i, m)| m.then_some(i)).collect())
}

impl backend::Index for Cpu {
    fn cat(&self, ts: &[&Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
        let first = ts[0];
        let (outer, _, inner) = split_at_dim(first.shape(), dim);
        let widths: Vec<usize> = ts.iter().map(|t| t.shape()[dim] * inner).collect();
        let r = Reads::new(ts);
        let parts = (0..ts.len()).map(|i| r.get(i)).collect::<Result<Vec<_>>>()?;
        Ok(out_storage(cat(&parts, first.dtype(), outer, &widths)?, shape))
    }

    fn index_select(&self, x: &Tensor, dim: usize, idx: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let idx = indices("index_select", idx, dim, x.shape()[dim])?;
        let r = Reads::new(&[x]);
        let (s, l) = r.get(0)?;
        Ok(out_storage(index_select(s, l, x.dtype(), split_at_dim(x.shape(), dim), &idx)?, shape))
    }

    fn index_add(&self, g: &Tensor, shape: &[usize], dim: usize, idx: &Tensor) -> Result<Tensor> {
        let idx = indices("index_select", idx, dim, shape[dim])?;
        let split = split_at_dim(shape, dim);
        let r = Reads::new(&[g]);
        let v = crate::float_map!(r.floats(0)?, g => index_add(&g, split, &idx));
        Ok(out(v, g.dtype(), shape))
    }

    fn gather(&self, x: &Tensor, dim: usize, idx: &Tensor, ishape: &[usize]) -> Result<Tensor> {
        let idx = indices("gather", idx, dim, x.shape()[dim])?;
        let r = Reads::new(&[x]);
        let (s, l) = r.get(0)?;
        Ok(out_storage(gather(s, l, x.dtype(), &idx, ishape, dim)?, ishape))
    }

    fn gather_backward(
        &self,
        g: &Tensor,
        shape: &[usize],
        dim: usize,
        idx: &Tensor,
        ishape: &[usize],
    ) -> Result<Tensor> {
        let idx = indices("gather", idx, dim, shape[dim])?;
        let r = Reads::new(&[g]);
        let v = crate::float_map!(r.floats(0)?, g => gather_backward(&g, shape, &idx, ishape, dim));
        Ok(out(v, g.dtype(), shape))
    }

    fn scatter_add(&self, x: &Tensor, dim: usize, idx: &Tensor, src: &Tensor, ishape: &[usize]) -> Result<Tensor> {
        let idx = indices("scatter_add", idx, dim, x.shape()[dim])?;
        let r = Reads::new(&[x, src]);
        let v = crate::float_zip!(
            "scatter_add",
            (r.floats(0)?, r.floats(1)?),
            (a, s) => scatter_add(&a, x.shape(), &s, &idx, ishape, dim)
        )?;
        Ok(out(v, x.dtype(), x.shape()))
    }

    fn masked_scatter(&self, x: &Tensor, mask: &Tensor, source: &Tensor, w: usize) -> Result<Tensor> {
        let rows = set_rows(mask)?;
        if source.shape()[0] != rows.len() {
            return Err(Error::shapes_note(
                "masked_scatter",
                &[x.shape(), source.shape()],
                format!("the mask sets {} rows but source has {} rows", rows.len(), source.shape()[0]),
            ));
        }
        let r = Reads::new(&[x, source]);
        Ok(out_storage(masked_scatter(r.get(0)?, r.get(1)?, x.dtype(), &rows, w)?, x.shape()))
    }

    fn masked_scatter_backward(
        &self,
        g: &Tensor,
        mask: &Tensor,
        m: usize,
        w: usize,
        (want_x, want_source): (bool, bool),
    ) -> Result<backend::Grad2> {
        let rows = set_rows(mask)?;
        if rows.len() != m {
            return Err(Error::invalid("masked_scatter", format!("the mask sets {} rows, not {m}", rows.len())));
        }
        let r = Reads::new(&[g]);
        let (s, l) = r.get(0)?;
        let dx = want_x.then(|| zero_rows(s, l, g.dtype(), &rows, w).map(|d| out_storage(d, g.shape()))).transpose()?;
        let ds = want_source
            .then(|| take_rows(s, l, g.dtype(), &rows, w).map(|d| out_storage(d, &[rows.len(), w])))
            .transpose()?;
        Ok((dx, ds))
    }

    fn where_cond(&self, mask: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let mask = mask_of(mask)?;
        let r = Reads::new(&[a, b]);
        Ok(out_storage(where_cond(&mask, r.get(0)?, r.get(1)?, a.dtype())?, a.shape()))
    }

    fn where_backward(&self, mask: &Tensor, g: &Tensor, branch: bool) -> Result<Tensor> {
        let mask = mask_of(mask)?;
        let r = Reads::new(&[g]);
        let (s, l) = r.get(0)?;
        Ok(out_storage(where_backward(&mask, s, l, g.dtype(), branch)?, g.shape()))
    }
}

/// A tensor's elements as a contiguous `[T]`, borrowed when the layout is already contiguous.
fn elems<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<Cow<'a, [T]>> {
    Ok(super::borrow(s.as_slice::<T>()?, l))
}

/// Run `$body` (a `Vec<$T>`) with `$T` bound to the element type of `$dtype`; wrap it as storage.
macro_rules! by_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::U8 => {
                type $T = u8;
                CpuStorage::U8($body)
            }
            DType::I64 => {
                type $T = i64;
                CpuStorage::I64($body)
            }
            DType::F16 => {
                type $T = half::f16;
                CpuStorage::F16($body)
            }
            DType::BF16 => {
                type $T = half::bf16;
                CpuStorage::BF16($body)
            }
            DType::F32 => {
                type $T = f32;
                CpuStorage::F32($body)
            }
            DType::F64 => {
                type $T = f64;
                CpuStorage::F64($body)
            }
        }
    };
}

/// Concatenate along a dim: part `i` contributes `widths[i]` (= its dim size × inner) contiguous
/// elements to each of the `outer` output rows.
fn cat(parts: &[(&CpuStorage, &Layout)], dtype: DType, outer: usize, widths: &[usize]) -> Result<CpuStorage> {
    fn go<T: WithDType>(parts: &[Cow<'_, [T]>], outer: usize, widths: &[usize]) -> Vec<T> {
        let total: usize = widths.iter().sum();
        let mut out = Vec::with_capacity(outer * total);
        for o in 0..outer {
            for (p, &w) in parts.iter().zip(widths) {
                out.extend_from_slice(&p[o * w..(o + 1) * w]);
            }
        }
        out
    }
    Ok(by_dtype!(dtype, T => {
        let parts = parts.iter().map(|(s, l)| elems::<T>(s, l)).collect::<Result<Vec<_>>>()?;
        go(&parts, outer, widths)
    }))
}

/// `out[o, j, :] = x[o, idx[j], :]` for `x: [outer, d, inner]`, `out: [outer, idx.len(), inner]`.
fn index_select(
    s: &CpuStorage,
    l: &Layout,
    dtype: DType,
    (outer, d, inner): (usize, usize, usize),
    idx: &[usize],
) -> Result<CpuStorage> {
    fn go<T: WithDType>(x: &[T], outer: usize, d: usize, inner: usize, idx: &[usize]) -> Vec<T> {
        let n = idx.len();
        let mut out = vec![T::from_f64(0.0); outer * n * inner];
        super::par_rows(&mut out, inner, |r, row| {
            let src = ((r / n) * d + idx[r % n]) * inner;
            row.copy_from_slice(&x[src..src + inner]);
        });
        out
    }
    Ok(by_dtype!(dtype, T => go(&elems::<T>(s, l)?, outer, d, inner, idx)))
}

/// Backward of index_select: `out[o, idx[j], :] += g[o, j, :]` into zeros of `[outer, d, inner]`
/// (repeated indices accumulate).
fn index_add<T: Float>(g: &[T], (outer, d, inner): (usize, usize, usize), idx: &[usize]) -> Vec<T> {
    let n = idx.len();
    let mut out = super::filled(outer * d * inner, T::ZERO);
    super::par_rows(&mut out, d * inner, |o, block| {
        for (j, &k) in idx.iter().enumerate() {
            let src = &g[(o * n + j) * inner..(o * n + j + 1) * inner];
            for (a, &b) in block[k * inner..(k + 1) * inner].iter_mut().zip(src) {
                *a += b;
            }
        }
    });
    out
}

/// For each position `p` of an index tensor of `ishape` (row-major), the storage offset in a
/// contiguous tensor of `xshape` of `p` with its `dim` coordinate set to 0; plus the stride of
/// `dim` in that tensor. The target of `p` is `base + idx[p] · stride`.
fn index_bases(xshape: &[usize], ishape: &[usize], dim: usize) -> (Layout, usize) {
    let mut strides = contiguous_strides(xshape);
    let stride = strides[dim];
    strides[dim] = 0;
    (Layout::new(ishape.to_vec(), strides, 0), stride)
}

/// torch.gather: `out[p] = x[p with dim ← idx[p]]`, `out` of `ishape`.
fn gather(s: &CpuStorage, l: &Layout, dtype: DType, idx: &[usize], ishape: &[usize], dim: usize) -> Result<CpuStorage> {
    fn go<T: WithDType>(x: &[T], xshape: &[usize], idx: &[usize], ishape: &[usize], dim: usize) -> Vec<T> {
        let (bases, stride) = index_bases(xshape, ishape, dim);
        bases.offsets().zip(idx).map(|(b, &k)| x[b + k * stride]).collect()
    }
    Ok(by_dtype!(dtype, T => go(&elems::<T>(s, l)?, l.shape(), idx, ishape, dim)))
}

/// `out[p with dim ← idx[p]] += src[p]` over the positions `p` of `ishape`; `out` has `xshape`.
fn scatter_add_into<T: Float>(out: &mut [T], xshape: &[usize], src: &[T], idx: &[usize], ishape: &[usize], dim: usize) {
    let (bases, stride) = index_bases(xshape, ishape, dim);
    for ((b, &k), &v) in bases.offsets().zip(idx).zip(src) {
        out[b + k * stride] += v;
    }
}

/// torch.scatter_add (out of place): a copy of `x` with `src` (of `ishape`) added at the indices.
fn scatter_add<T: Float>(x: &[T], xshape: &[usize], src: &[T], idx: &[usize], ishape: &[usize], dim: usize) -> Vec<T> {
    let mut out = x.to_vec();
    scatter_add_into(&mut out, xshape, src, idx, ishape, dim);
    out
}

/// Backward of gather: `g` (of `ishape`) scattered-added into zeros of `xshape`.
fn gather_backward<T: Float>(g: &[T], xshape: &[usize], idx: &[usize], ishape: &[usize], dim: usize) -> Vec<T> {
    let mut out = super::filled(xshape.iter().product(), T::ZERO);
    scatter_add_into(&mut out, xshape, g, idx, ishape, dim);
    out
}

/// Rows `rows[m]` (of width `w`) of `x` replaced by row `m` of `src`.
fn masked_scatter(
    (xs, xl): (&CpuStorage, &Layout),
    (ss, sl): (&CpuStorage, &Layout),
    dtype: DType,
    rows: &[usize],
    w: usize,
) -> Result<CpuStorage> {
    fn go<T: WithDType>(x: &[T], src: &[T], rows: &[usize], w: usize) -> Vec<T> {
        let mut out = x.to_vec();
        for (m, &r) in rows.iter().enumerate() {
            out[r * w..(r + 1) * w].copy_from_slice(&src[m * w..(m + 1) * w]);
        }
        out
    }
    Ok(by_dtype!(dtype, T => go(&elems::<T>(xs, xl)?, &elems::<T>(ss, sl)?, rows, w)))
}

/// The rows `rows` (of width `w`) of `x`, stacked: `[rows.len(), w]`.
fn take_rows(s: &CpuStorage, l: &Layout, dtype: DType, rows: &[usize], w: usize) -> Result<CpuStorage> {
    fn go<T: WithDType>(x: &[T], rows: &[usize], w: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(rows.len() * w);
        for &r in rows {
            out.extend_from_slice(&x[r * w..(r + 1) * w]);
        }
        out
    }
    Ok(by_dtype!(dtype, T => go(&elems::<T>(s, l)?, rows, w)))
}

/// A copy of `x` with the rows `rows` (of width `w`) zeroed.
fn zero_rows(s: &CpuStorage, l: &Layout, dtype: DType, rows: &[usize], w: usize) -> Result<CpuStorage> {
    fn go<T: WithDType>(x: &[T], rows: &[usize], w: usize) -> Vec<T> {
        let mut out = x.to_vec();
        for &r in rows {
            out[r * w..(r + 1) * w].fill(T::from_f64(0.0));
        }
        out
    }
    Ok(by_dtype!(dtype, T => go(&elems::<T>(s, l)?, rows, w)))
}

/// `out[i] = if mask[i] { a[i] } else { b[i] }` (all of one shape).
fn where_cond(
    mask: &[bool],
    (sa, la): (&CpuStorage, &Layout),
    (sb, lb): (&CpuStorage, &Layout),
    dtype: DType,
) -> Result<CpuStorage> {
    fn go<T: WithDType>(mask: &[bool], a: &[T], b: &[T]) -> Vec<T> {
        mask.iter().zip(a.iter().zip(b)).map(|(&m, (&x, &y))| if m { x } else { y }).collect()
    }
    Ok(by_dtype!(dtype, T => go(mask, &elems::<T>(sa, la)?, &elems::<T>(sb, lb)?)))
}

/// Backward of where_cond for one branch: `g` where `mask == branch`, zero elsewhere.
fn where_backward(mask: &[bool], s: &CpuStorage, l: &Layout, dtype: DType, branch: bool) -> Result<CpuStorage> {
    fn go<T: WithDType>(mask: &[bool], g: &[T], branch: bool) -> Vec<T> {
        let zero = T::from_f64(0.0);
        mask.iter().zip(g).map(|(&m, &v)| if m == branch { v } else { zero }).collect()
    }
    Ok(by_dtype!(dtype, T => go(mask, &elems::<T>(s, l)?, branch)))
}
