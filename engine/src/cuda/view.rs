//! CUDA launchers of `view.cu`: strided copies with dtype conversion (`contiguous`, `to_dtype`,
//! writes into views for cat and the narrow backward), comparisons and `where_cond`.

use super::launch::{convert_to, CMP, WHERE_COND};
use super::{dev_of, ptr, strided_params, tensor, Cuda, CudaStorage, Geometry};
use crate::kinds::CmpKind;
use crate::{backend, DType, Error, Layout, Result, Tensor};

/// Write the elements of `src` (any layout) converted to `dst`'s dtype into the view `dst_layout`
/// of `dst` (same shape as `src`).
pub(crate) fn convert_into(op: &'static str, src: &Tensor, dst: &CudaStorage, dst_layout: &Layout) -> Result<()> {
    if dst_layout.shape() != src.shape() {
        return Err(Error::shapes(op, &[src.shape(), dst_layout.shape()]));
    }
    let dev = dev_of(op, src)?;
    if dev.ordinal != dst.ordinal() {
        return Err(Error::DeviceMismatch { op, a: src.device(), b: crate::Device::Cuda(dst.ordinal()) });
    }
    let mut p = strided_params(op, src.shape(), [src.layout(), dst_layout])?;
    // Offsets are applied through the base pointers below.
    let ptrs = [ptr(op, src)?, dst.ptr_at(dst_layout.offset())];
    p.a_offset = 0;
    p.b_offset = 0;
    let kernel = convert_to(op, dst.dtype())?.at(op, src.dtype())?;
    let n = p.n as usize;
    // SAFETY: to_{dst}_fwd_{src}(p, src, dst): the params describe `src`'s view (inside its
    // storage) and `dst_layout` (inside `dst`, checked by the callers' shapes); the kernel's
    // types are the two dtypes.
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, ptrs) }
}

/// `src` as a new contiguous tensor of `dtype` (no graph).
pub(crate) fn convert(op: &'static str, src: &Tensor, dtype: DType) -> Result<CudaStorage> {
    super::to_contiguous(op, src, dtype)
}

/// A zero tensor of shape `full` on `like`'s device with `src` written at `start..` along `dim`.
pub(crate) fn pad_into(src: &Tensor, full: &[usize], dim: usize, start: usize) -> Result<CudaStorage> {
    let op = "narrow";
    let dev = dev_of(op, src)?;
    let out = dev.zeros(op, src.dtype(), full.iter().product())?;
    let view = Layout::contiguous(full).narrow(dim, start, src.shape()[dim]);
    convert_into(op, src, &out, &view)?;
    Ok(out)
}

/// Concatenate `parts` (same dtype and device) along `dim` into a contiguous `shape`.
pub(crate) fn cat(parts: &[&Tensor], dim: usize, shape: &[usize]) -> Result<CudaStorage> {
    let op = "cat";
    let dev = dev_of(op, parts[0])?;
    let out = dev.alloc(op, parts[0].dtype(), shape.iter().product())?;
    let full = Layout::contiguous(shape);
    let mut start = 0;
    for t in parts {
        let len = t.shape()[dim];
        if len > 0 {
            convert_into(op, t, &out, &full.narrow(dim, start, len))?;
        }
        start += len;
    }
    Ok(out)
}

/// `a OP b` (same shape, any layouts, same dtype) as a contiguous u8 mask.
pub(crate) fn cmp(a: &Tensor, b: &Tensor, kind: CmpKind) -> Result<CudaStorage> {
    let op = "cmp";
    let dev = dev_of(op, a)?;
    let out = dev.alloc(op, DType::U8, a.elem_count())?;
    let mut p = strided_params(op, a.shape(), [a.layout(), b.layout()])?;
    p.op = kind.code();
    p.a_offset = 0;
    p.b_offset = 0;
    let ptrs = [ptr(op, a)?, ptr(op, b)?, out.ptr_at(0)];
    let kernel = CMP.at(op, a.dtype())?;
    let n = p.n as usize;
    // SAFETY: cmp_fwd(p, a, b, out): a and b are views of the logical shape inside their
    // storages; out holds n bytes.
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, ptrs) }?;
    Ok(out)
}

/// `mask ? a : b` elementwise; `mask` is a contiguous u8 tensor of the output shape on the
/// device, `a` and `b` views of that shape.
pub(crate) fn where_cond(mask: &Tensor, a: &Tensor, b: &Tensor) -> Result<CudaStorage> {
    let op = "where_cond";
    let dev = dev_of(op, a)?;
    if mask.dtype() != DType::U8 || !mask.is_contiguous() || mask.shape() != a.shape() {
        return Err(Error::invalid(op, "the mask must be a contiguous u8 tensor of the output's shape"));
    }
    let out = dev.alloc(op, a.dtype(), a.elem_count())?;
    let mut p = strided_params(op, a.shape(), [a.layout(), b.layout()])?;
    p.a_offset = 0;
    p.b_offset = 0;
    let ptrs = [ptr(op, mask)?, ptr(op, a)?, ptr(op, b)?, out.ptr_at(0)];
    let kernel = WHERE_COND.at(op, a.dtype())?;
    let n = p.n as usize;
    // SAFETY: where_cond_fwd(p, mask, a, b, out): mask and out hold n elements; a and b are views
    // of the logical shape.
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, ptrs) }?;
    Ok(out)
}

impl backend::View for Cuda {
    fn convert(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        Ok(tensor(convert("convert", x, dtype)?, x.shape()))
    }

    fn pad_into(&self, x: &Tensor, full: &[usize], dim: usize, start: usize) -> Result<Tensor> {
        Ok(tensor(pad_into(x, full, dim, start)?, full))
    }
}
