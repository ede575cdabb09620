//! CUDA launchers of `index.cu`: index_select, gather, scatter_add and masked_scatter, forward and
//! backward, for f32 and bf16, and where_cond (`view.cu`). Indices and masks are device tensors
//! the kernels read in place (no host round trip; out-of-range indices are skipped in the
//! kernels). Scatter-style backwards accumulate with atomics into zeroed buffers.

use super::launch::{
    GATHER_BWD, GATHER_FWD, INDEX_SELECT_BWD, INDEX_SELECT_FWD, MASKED_SCATTER_BWD, MASKED_SCATTER_FWD, MASK_RANK,
    SCATTER_ADD,
};
use super::{contig, dev_of, ptr, tensor, view, Cuda, CudaDevice, CudaStorage, Geometry};
use crate::backend;
use crate::{DType, Device, Error, Layout, Result, Tensor};
use std::sync::Arc;
use vlm4vla_kernels::params::{IndexParams, EW_THREADS};

/// Run an atomic-accumulating launcher in f32 (exact order-independent sums up to fp32 rounding,
/// one rounding to the input's dtype at the end) and convert back.
fn in_f32(
    op: &'static str,
    t: &Tensor,
    out_shape: &[usize],
    f: impl FnOnce(&Tensor) -> Result<CudaStorage>,
) -> Result<CudaStorage> {
    let t32 = tensor(super::to_contiguous(op, t, DType::F32)?, t.shape());
    let out = tensor(f(&t32)?, out_shape);
    super::to_contiguous(op, &out, t.dtype())
}

fn idx_params(outer: usize, src_len: usize, idx_len: usize, inner: usize) -> IndexParams {
    IndexParams {
        outer: outer as i64,
        src_len: src_len as i64,
        idx_len: idx_len as i64,
        inner: inner as i64,
        n: (outer * idx_len * inner) as i64,
    }
}

/// The indices as a contiguous i64 tensor on `dev` (a copy only when `idx` is a strided view).
fn ids(op: &'static str, dev: &Arc<CudaDevice>, idx: &Tensor) -> Result<Tensor> {
    if dev_of(op, idx)?.ordinal != dev.ordinal {
        return Err(Error::DeviceMismatch { op, a: Device::Cuda(dev.ordinal), b: idx.device() });
    }
    contig(idx)
}

/// `out[o, j, i] = src[o, idx[j], i]` around `dim`.
pub(crate) fn index_select(src: &Tensor, dim: usize, idx: &Tensor) -> Result<CudaStorage> {
    let op = "index_select";
    let src = contig(src)?;
    let dev = dev_of(op, &src)?;
    let ids = ids(op, &dev, idx)?;
    let (outer, len, inner) = crate::shape::split_at_dim(src.shape(), dim);
    let p = idx_params(outer, len, ids.elem_count(), inner);
    let n = p.n as usize;
    let out = dev.alloc(op, src.dtype(), n)?;
    let kernel = INDEX_SELECT_FWD.at(op, src.dtype())?;
    // SAFETY: src contiguous [outer, len, inner], ids idx_len i64 (the kernel skips any outside
    // [0, len)), out [outer, idx_len, inner].
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, [ptr(op, &src)?, ptr(op, &ids)?, out.ptr_at(0)]) }?;
    Ok(out)
}

/// The index_select backward: `g` scatter-added into zeros of `shape` (repeats accumulate).
pub(crate) fn index_add(g: &Tensor, shape: &[usize], dim: usize, idx: &Tensor) -> Result<CudaStorage> {
    let op = "index_select";
    if g.dtype() != DType::F32 {
        return in_f32(op, g, shape, |g32| index_add(g32, shape, dim, idx));
    }
    let g = contig(g)?;
    let dev = dev_of(op, &g)?;
    let ids = ids(op, &dev, idx)?;
    let (outer, len, inner) = crate::shape::split_at_dim(shape, dim);
    let p = idx_params(outer, len, ids.elem_count(), inner);
    let n = p.n as usize;
    let out = dev.zeros(op, g.dtype(), outer * len * inner)?;
    let kernel = INDEX_SELECT_BWD.at(op, g.dtype())?;
    // SAFETY: g contiguous [outer, idx_len, inner], ids idx_len i64, out zeroed [outer, len, inner].
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, [ptr(op, &g)?, ptr(op, &ids)?, out.ptr_at(0)]) }?;
    Ok(out)
}

/// `t` narrowed from 0 to `shape` on every dim except `dim` (a view).
fn region(t: &Tensor, shape: &[usize], dim: usize) -> Result<Tensor> {
    let mut r = t.detach();
    for (i, &n) in shape.iter().enumerate() {
        if i != dim && n != t.shape()[i] {
            r = r.narrow(i, 0, n)?;
        }
    }
    Ok(r)
}

/// `out[o, j, i] = src[o, idx[o, j, i], i]` with `idx` of shape `ishape`.
pub(crate) fn gather(src: &Tensor, dim: usize, idx: &Tensor, ishape: &[usize]) -> Result<CudaStorage> {
    let op = "gather";
    let src = contig(&region(src, ishape, dim)?)?;
    let dev = dev_of(op, &src)?;
    let ids = ids(op, &dev, idx)?;
    let (outer, len, inner) = crate::shape::split_at_dim(src.shape(), dim);
    let p = idx_params(outer, len, ishape[dim], inner);
    let n = p.n as usize;
    let out = dev.alloc(op, src.dtype(), n)?;
    let kernel = GATHER_FWD.at(op, src.dtype())?;
    // SAFETY: src contiguous [outer, len, inner], ids and out [outer, idx_len, inner].
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, [ptr(op, &src)?, ptr(op, &ids)?, out.ptr_at(0)]) }?;
    Ok(out)
}

/// The gather backward: `g` (shape `ishape`) scatter-added into zeros of `shape`.
pub(crate) fn gather_backward(
    g: &Tensor,
    shape: &[usize],
    dim: usize,
    idx: &Tensor,
    ishape: &[usize],
) -> Result<CudaStorage> {
    let op = "gather";
    let g = contig(g)?;
    let dev = dev_of(op, &g)?;
    let ids = ids(op, &dev, idx)?;
    let mut rshape = ishape.to_vec();
    rshape[dim] = shape[dim];
    let (outer, len, inner) = crate::shape::split_at_dim(&rshape, dim);
    let p = idx_params(outer, len, ishape[dim], inner);
    let n = p.n as usize;
    let part = dev.zeros(op, g.dtype(), outer * len * inner)?;
    let kernel = GATHER_BWD.at(op, g.dtype())?;
    // SAFETY: g and ids [outer, idx_len, inner], part zeroed [outer, len, inner].
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, [ptr(op, &g)?, ptr(op, &ids)?, part.ptr_at(0)]) }?;
    if rshape == shape {
        return Ok(part);
    }
    let out = dev.zeros(op, g.dtype(), shape.iter().product())?;
    view::convert_into(op, &tensor(part, &rshape), &out, &region_layout(shape, &rshape))?;
    Ok(out)
}

/// The layout of the leading `part` block inside a contiguous `full` shape.
fn region_layout(full: &[usize], part: &[usize]) -> Layout {
    let c = Layout::contiguous(full);
    Layout::new(part.to_vec(), c.strides().to_vec(), 0)
}

/// `self` with `src[p]` added at `p with dim <- idx[p]` (`src` already narrowed to `ishape`).
pub(crate) fn scatter_add(x: &Tensor, dim: usize, idx: &Tensor, src: &Tensor, ishape: &[usize]) -> Result<CudaStorage> {
    let op = "scatter_add";
    let dev = dev_of(op, x)?;
    let ids = ids(op, &dev, idx)?;
    let out = super::to_contiguous(op, x, x.dtype())?;
    let mut rshape = ishape.to_vec();
    rshape[dim] = x.shape()[dim];
    let whole = rshape == x.shape();
    // The part of the output the indices reach, as its own contiguous buffer unless it is all.
    let tmp = if whole { None } else { Some(super::to_contiguous(op, &region(x, ishape, dim)?, x.dtype())?) };
    let target = tmp.as_ref().unwrap_or(&out);
    let src = contig(src)?;
    let (outer, len, inner) = crate::shape::split_at_dim(&rshape, dim);
    let p = idx_params(outer, len, ishape[dim], inner);
    let n = p.n as usize;
    let kernel = SCATTER_ADD.at(op, x.dtype())?;
    // SAFETY: src and ids [outer, idx_len, inner], target [outer, len, inner].
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, [ptr(op, &src)?, ptr(op, &ids)?, target.ptr_at(0)]) }?;
    if let Some(tmp) = tmp {
        view::convert_into(op, &tensor(tmp, &rshape), &out, &region_layout(x.shape(), &rshape))?;
    }
    Ok(out)
}

/// A mask (u8 or i64, any layout, of `shape`) as a contiguous u8 0/1 tensor on the device.
fn mask_u8(op: &'static str, mask: &Tensor) -> Result<Tensor> {
    match mask.dtype() {
        DType::U8 => contig(mask),
        DType::I64 => mask.ne(&Tensor::zeros(&[], DType::I64, mask.device())?.broadcast_as(mask.shape())?),
        other => Err(Error::dtype(op, other, "a mask must be u8 or i64")),
    }
}

/// The per-row mask (u8) of masked_scatter and each row's rank among the set rows (i64, the
/// exclusive prefix count, computed on the device).
fn row_tables(dev: &Arc<CudaDevice>, op: &'static str, mask: &Tensor) -> Result<(Tensor, CudaStorage)> {
    let mask = mask_u8(op, mask)?;
    let rows = mask.elem_count();
    let rank = dev.alloc(op, DType::I64, rows + 1)?;
    let p = IndexParams { n: rows as i64, ..Default::default() };
    let kernel = MASK_RANK.at(op, DType::F32)?;
    // SAFETY: mask_rank_fwd(p, mask, rank): one block; mask holds `rows` u8, rank rows + 1 i64.
    unsafe { dev.launch(op, kernel, Geometry::new([1, 1, 1], EW_THREADS), p, [ptr(op, &mask)?, rank.ptr_at(0)]) }?;
    Ok((mask, rank))
}

/// Rows of `x` (`[..., w]`) where `mask` is set replaced by the consecutive rows of `source`
/// (`[M, w]`); set rows past the M-th come out NaN.
pub(crate) fn masked_scatter(x: &Tensor, mask: &Tensor, source: &Tensor, w: usize) -> Result<CudaStorage> {
    let op = "masked_scatter";
    let (x, source) = (contig(x)?, contig(source)?);
    let dev = dev_of(op, &x)?;
    let n = x.elem_count();
    let out = dev.alloc(op, x.dtype(), n)?;
    let (mask, rank) = row_tables(&dev, op, mask)?;
    let p =
        IndexParams { src_len: source.shape()[0] as i64, inner: w.max(1) as i64, n: n as i64, ..Default::default() };
    let kernel = MASKED_SCATTER_FWD.at(op, x.dtype())?;
    // SAFETY: x and out hold n = rows * w elements, mask and rank one entry per row; the kernel
    // reads source rows only below src_len.
    unsafe {
        dev.launch(
            op,
            kernel,
            Geometry::elementwise(n),
            p,
            [ptr(op, &x)?, ptr(op, &mask)?, rank.ptr_at(0), ptr(op, &source)?, out.ptr_at(0)],
        )
    }?;
    Ok(out)
}

/// (d input, d source `[m, w]`), each only when asked for.
pub(crate) fn masked_scatter_backward(
    g: &Tensor,
    mask: &Tensor,
    m: usize,
    w: usize,
    want: (bool, bool),
) -> Result<(Option<CudaStorage>, Option<CudaStorage>)> {
    let op = "masked_scatter";
    let g = contig(g)?;
    let dev = dev_of(op, &g)?;
    let n = g.elem_count();
    let (mask, rank) = row_tables(&dev, op, mask)?;
    let ddst = if want.0 { Some(dev.alloc(op, g.dtype(), n)?) } else { None };
    let dsrc = if want.1 { Some(dev.zeros(op, g.dtype(), m * w)?) } else { None };
    let p = IndexParams { src_len: m as i64, inner: w.max(1) as i64, n: n as i64, ..Default::default() };
    let kernel = MASKED_SCATTER_BWD.at(op, g.dtype())?;
    // SAFETY: g (and ddst) hold n = rows * w elements, mask and rank one entry per row; dsrc
    // holds m * w elements and is written only below row m.
    unsafe {
        dev.launch(
            op,
            kernel,
            Geometry::elementwise(n),
            p,
            [
                ptr(op, &g)?,
                ptr(op, &mask)?,
                rank.ptr_at(0),
                ddst.as_ref().map_or(0, |d| d.ptr_at(0)),
                dsrc.as_ref().map_or(0, |d| d.ptr_at(0)),
            ],
        )
    }?;
    Ok((ddst, dsrc))
}

/// Data movement the kernels do not instantiate (ids and masks): through the CPU primitive.
fn via_cpu(ts: &[&Tensor], f: impl FnOnce(&[&Tensor]) -> Result<Tensor>) -> Result<Tensor> {
    let device = ts[0].device();
    let host = ts.iter().map(|t| t.to_device(Device::Cpu)).collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Tensor> = host.iter().collect();
    f(&refs)?.to_device(device)
}

impl backend::Index for Cuda {
    fn cat(&self, ts: &[&Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
        Ok(tensor(view::cat(ts, dim, shape)?, shape))
    }

    fn index_select(&self, x: &Tensor, dim: usize, idx: &Tensor, shape: &[usize]) -> Result<Tensor> {
        if !x.dtype().is_float() {
            return via_cpu(&[x, idx], |h| backend::of(Device::Cpu).index_select(h[0], dim, h[1], shape));
        }
        Ok(tensor(index_select(x, dim, idx)?, shape))
    }

    fn index_add(&self, g: &Tensor, shape: &[usize], dim: usize, idx: &Tensor) -> Result<Tensor> {
        Ok(tensor(index_add(g, shape, dim, idx)?, shape))
    }

    fn gather(&self, x: &Tensor, dim: usize, idx: &Tensor, ishape: &[usize]) -> Result<Tensor> {
        if !x.dtype().is_float() {
            return via_cpu(&[x, idx], |h| backend::of(Device::Cpu).gather(h[0], dim, h[1], ishape));
        }
        Ok(tensor(gather(x, dim, idx, ishape)?, ishape))
    }

    fn gather_backward(
        &self,
        g: &Tensor,
        shape: &[usize],
        dim: usize,
        idx: &Tensor,
        ishape: &[usize],
    ) -> Result<Tensor> {
        Ok(tensor(gather_backward(g, shape, dim, idx, ishape)?, shape))
    }

    fn scatter_add(&self, x: &Tensor, dim: usize, idx: &Tensor, src: &Tensor, ishape: &[usize]) -> Result<Tensor> {
        Ok(tensor(scatter_add(x, dim, idx, src, ishape)?, x.shape()))
    }

    fn masked_scatter(&self, x: &Tensor, mask: &Tensor, source: &Tensor, w: usize) -> Result<Tensor> {
        if !x.dtype().is_float() {
            return via_cpu(&[x, mask, source], |h| backend::of(Device::Cpu).masked_scatter(h[0], h[1], h[2], w));
        }
        Ok(tensor(masked_scatter(x, mask, source, w)?, x.shape()))
    }

    fn masked_scatter_backward(
        &self,
        g: &Tensor,
        mask: &Tensor,
        m: usize,
        w: usize,
        want: (bool, bool),
    ) -> Result<backend::Grad2> {
        let (dx, ds) = masked_scatter_backward(g, mask, m, w, want)?;
        Ok((dx.map(|d| tensor(d, g.shape())), ds.map(|d| tensor(d, &[m, w]))))
    }

    fn where_cond(&self, mask: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let mask = mask_u8("where_cond", mask)?;
        Ok(tensor(view::where_cond(&mask, a, b)?, a.shape()))
    }

    fn where_backward(&self, mask: &Tensor, g: &Tensor, branch: bool) -> Result<Tensor> {
        let zero = Tensor::zeros(&[], g.dtype(), g.device())?.broadcast_as(g.shape())?;
        let (a, b) = if branch { (g, &zero) } else { (&zero, g) };
        self.where_cond(mask, a, b)
    }
}
