//! CUDA launchers of `index.cu`: index_select, gather, scatter_add and masked_scatter, forward and
//! backward, for f32 and bf16 (indices are validated on the host by the ops and uploaded as i64).
//! Scatter-style backwards accumulate with atomics into zeroed buffers.

use super::launch::{
    GATHER_BWD, GATHER_FWD, INDEX_SELECT_BWD, INDEX_SELECT_FWD, MASKED_SCATTER_BWD, MASKED_SCATTER_FWD, SCATTER_ADD,
};
use super::{contig, dev_of, ptr, tensor, view, Cuda, CudaDevice, CudaStorage, Geometry};
use crate::backend;
use crate::{DType, Device, Layout, Result, Tensor};
use std::sync::Arc;
use vlm4vla_kernels::params::IndexParams;

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

fn upload_idx(dev: &Arc<CudaDevice>, op: &'static str, idx: &[usize]) -> Result<CudaStorage> {
    dev.upload_i64(op, idx.iter().map(|&i| i as i64).collect())
}

/// `out[o, j, i] = src[o, idx[j], i]` around `dim`.
pub(crate) fn index_select(src: &Tensor, dim: usize, idx: &[usize]) -> Result<CudaStorage> {
    let op = "index_select";
    let src = contig(src)?;
    let dev = dev_of(op, &src)?;
    let (outer, len, inner) = crate::shape::split_at_dim(src.shape(), dim);
    let p = idx_params(outer, len, idx.len(), inner);
    let n = p.n as usize;
    let out = dev.alloc(op, src.dtype(), n)?;
    let ids = upload_idx(&dev, op, idx)?;
    let kernel = INDEX_SELECT_FWD.at(op, src.dtype())?;
    // SAFETY: src contiguous [outer, len, inner], ids idx_len i64 in range, out [outer, idx_len, inner].
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, [ptr(op, &src)?, ids.ptr_at(0), out.ptr_at(0)]) }?;
    Ok(out)
}

/// The index_select backward: `g` scatter-added into zeros of `shape` (repeats accumulate).
pub(crate) fn index_add(g: &Tensor, shape: &[usize], dim: usize, idx: &[usize]) -> Result<CudaStorage> {
    let op = "index_select";
    if g.dtype() != DType::F32 {
        return in_f32(op, g, shape, |g32| index_add(g32, shape, dim, idx));
    }
    let g = contig(g)?;
    let dev = dev_of(op, &g)?;
    let (outer, len, inner) = crate::shape::split_at_dim(shape, dim);
    let p = idx_params(outer, len, idx.len(), inner);
    let n = p.n as usize;
    let out = dev.zeros(op, g.dtype(), outer * len * inner)?;
    let ids = upload_idx(&dev, op, idx)?;
    let kernel = INDEX_SELECT_BWD.at(op, g.dtype())?;
    // SAFETY: g contiguous [outer, idx_len, inner], out zeroed [outer, len, inner].
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, [ptr(op, &g)?, ids.ptr_at(0), out.ptr_at(0)]) }?;
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
pub(crate) fn gather(src: &Tensor, dim: usize, idx: &[usize], ishape: &[usize]) -> Result<CudaStorage> {
    let op = "gather";
    let src = contig(&region(src, ishape, dim)?)?;
    let dev = dev_of(op, &src)?;
    let (outer, len, inner) = crate::shape::split_at_dim(src.shape(), dim);
    let p = idx_params(outer, len, ishape[dim], inner);
    let n = p.n as usize;
    let out = dev.alloc(op, src.dtype(), n)?;
    let ids = upload_idx(&dev, op, idx)?;
    let kernel = GATHER_FWD.at(op, src.dtype())?;
    // SAFETY: src contiguous [outer, len, inner], ids and out [outer, idx_len, inner].
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, [ptr(op, &src)?, ids.ptr_at(0), out.ptr_at(0)]) }?;
    Ok(out)
}

/// The gather backward: `g` (shape `ishape`) scatter-added into zeros of `shape`.
pub(crate) fn gather_backward(
    g: &Tensor,
    shape: &[usize],
    dim: usize,
    idx: &[usize],
    ishape: &[usize],
) -> Result<CudaStorage> {
    let op = "gather";
    let g = contig(g)?;
    let dev = dev_of(op, &g)?;
    let mut rshape = ishape.to_vec();
    rshape[dim] = shape[dim];
    let (outer, len, inner) = crate::shape::split_at_dim(&rshape, dim);
    let p = idx_params(outer, len, ishape[dim], inner);
    let n = p.n as usize;
    let part = dev.zeros(op, g.dtype(), outer * len * inner)?;
    let ids = upload_idx(&dev, op, idx)?;
    let kernel = GATHER_BWD.at(op, g.dtype())?;
    // SAFETY: g and ids [outer, idx_len, inner], part zeroed [outer, len, inner].
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, [ptr(op, &g)?, ids.ptr_at(0), part.ptr_at(0)]) }?;
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
pub(crate) fn scatter_add(
    x: &Tensor,
    dim: usize,
    idx: &[usize],
    src: &Tensor,
    ishape: &[usize],
) -> Result<CudaStorage> {
    let op = "scatter_add";
    let dev = dev_of(op, x)?;
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
    let ids = upload_idx(&dev, op, idx)?;
    let kernel = SCATTER_ADD.at(op, x.dtype())?;
    // SAFETY: src and ids [outer, idx_len, inner], target [outer, len, inner].
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, [ptr(op, &src)?, ids.ptr_at(0), target.ptr_at(0)]) }?;
    if let Some(tmp) = tmp {
        view::convert_into(op, &tensor(tmp, &rshape), &out, &region_layout(x.shape(), &rshape))?;
    }
    Ok(out)
}

/// Per-element mask (u8) and source position (i64) of masked_scatter over `n = rows_total * w`.
fn row_tables(
    dev: &Arc<CudaDevice>,
    op: &'static str,
    n: usize,
    rows: &[usize],
    w: usize,
) -> Result<(CudaStorage, CudaStorage)> {
    let mut mask = vec![0u8; n];
    let mut pos = vec![0i64; n];
    for (k, &r) in rows.iter().enumerate() {
        for c in 0..w {
            mask[r * w + c] = 1;
            pos[r * w + c] = (k * w + c) as i64;
        }
    }
    Ok((dev.upload(op, &crate::CpuStorage::U8(mask))?, dev.upload_i64(op, pos)?))
}

/// Rows `rows` of `x` (`[..., w]`) replaced by the consecutive rows of `source` (`[M, w]`).
pub(crate) fn masked_scatter(x: &Tensor, source: &Tensor, rows: &[usize], w: usize) -> Result<CudaStorage> {
    let op = "masked_scatter";
    let (x, source) = (contig(x)?, contig(source)?);
    let dev = dev_of(op, &x)?;
    let n = x.elem_count();
    let out = dev.alloc(op, x.dtype(), n)?;
    let (mask, pos) = row_tables(&dev, op, n, rows, w)?;
    let p = IndexParams { src_len: source.elem_count() as i64, n: n as i64, ..Default::default() };
    let kernel = MASKED_SCATTER_FWD.at(op, x.dtype())?;
    // SAFETY: x, mask, pos, out hold n elements; positions index into source's M*w elements.
    unsafe {
        dev.launch(
            op,
            kernel,
            Geometry::elementwise(n),
            p,
            [ptr(op, &x)?, mask.ptr_at(0), pos.ptr_at(0), ptr(op, &source)?, out.ptr_at(0)],
        )
    }?;
    Ok(out)
}

/// (d input, d source), each only when asked for.
pub(crate) fn masked_scatter_backward(
    g: &Tensor,
    rows: &[usize],
    w: usize,
    want: (bool, bool),
) -> Result<(Option<CudaStorage>, Option<CudaStorage>)> {
    let op = "masked_scatter";
    let g = contig(g)?;
    let dev = dev_of(op, &g)?;
    let n = g.elem_count();
    let (mask, pos) = row_tables(&dev, op, n, rows, w)?;
    let ddst = if want.0 { Some(dev.alloc(op, g.dtype(), n)?) } else { None };
    let dsrc = if want.1 { Some(dev.zeros(op, g.dtype(), rows.len() * w)?) } else { None };
    let p = IndexParams { src_len: (rows.len() * w) as i64, n: n as i64, ..Default::default() };
    let kernel = MASKED_SCATTER_BWD.at(op, g.dtype())?;
    // SAFETY: g, mask, pos (and ddst) hold n elements; dsrc holds M*w elements.
    unsafe {
        dev.launch(
            op,
            kernel,
            Geometry::elementwise(n),
            p,
            [
                ptr(op, &g)?,
                mask.ptr_at(0),
                pos.ptr_at(0),
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

    fn index_select(&self, x: &Tensor, dim: usize, idx: &[usize], shape: &[usize]) -> Result<Tensor> {
        if !x.dtype().is_float() {
            return via_cpu(&[x], |h| backend::of(Device::Cpu).index_select(h[0], dim, idx, shape));
        }
        Ok(tensor(index_select(x, dim, idx)?, shape))
    }

    fn index_add(&self, g: &Tensor, shape: &[usize], dim: usize, idx: &[usize]) -> Result<Tensor> {
        Ok(tensor(index_add(g, shape, dim, idx)?, shape))
    }

    fn gather(&self, x: &Tensor, dim: usize, idx: &[usize], ishape: &[usize]) -> Result<Tensor> {
        if !x.dtype().is_float() {
            return via_cpu(&[x], |h| backend::of(Device::Cpu).gather(h[0], dim, idx, ishape));
        }
        Ok(tensor(gather(x, dim, idx, ishape)?, ishape))
    }

    fn gather_backward(
        &self,
        g: &Tensor,
        shape: &[usize],
        dim: usize,
        idx: &[usize],
        ishape: &[usize],
    ) -> Result<Tensor> {
        Ok(tensor(gather_backward(g, shape, dim, idx, ishape)?, shape))
    }

    fn scatter_add(&self, x: &Tensor, dim: usize, idx: &[usize], src: &Tensor, ishape: &[usize]) -> Result<Tensor> {
        Ok(tensor(scatter_add(x, dim, idx, src, ishape)?, x.shape()))
    }

    fn masked_scatter(&self, x: &Tensor, source: &Tensor, rows: &[usize], w: usize) -> Result<Tensor> {
        if !x.dtype().is_float() {
            return via_cpu(&[x, source], |h| backend::of(Device::Cpu).masked_scatter(h[0], h[1], rows, w));
        }
        Ok(tensor(masked_scatter(x, source, rows, w)?, x.shape()))
    }

    fn masked_scatter_backward(
        &self,
        g: &Tensor,
        rows: &[usize],
        w: usize,
        want: (bool, bool),
    ) -> Result<backend::Grad2> {
        let (dx, ds) = masked_scatter_backward(g, rows, w, want)?;
        Ok((dx.map(|d| tensor(d, g.shape())), ds.map(|d| tensor(d, &[rows.len(), w]))))
    }

    fn where_cond(&self, mask: &[bool], a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(tensor(view::where_cond(mask, a, b)?, a.shape()))
    }

    fn where_backward(&self, mask: &[bool], g: &Tensor, branch: bool) -> Result<Tensor> {
        let zero = Tensor::zeros(&[], g.dtype(), g.device())?.broadcast_as(g.shape())?;
        let (a, b) = if branch { (g, &zero) } else { (&zero, g) };
        self.where_cond(mask, a, b)
    }
}
