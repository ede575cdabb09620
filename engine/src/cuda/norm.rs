//! CUDA launchers of `norm.cu`: softmax / log_softmax, rms_norm, layer_norm and l2_normalize over
//! the last dim, forward and backward. Per-row statistics are f32 `[rows]` tensors; parameter
//! gradients come from per-block partials summed in a fixed order. bf16 rms_norm / layer_norm
//! rows whose width is a multiple of 8 with 16-byte aligned pointers run the vectorised
//! `*_rows` / `*_wide` kernels (same semantics, same partials layout).

use super::launch::{
    L2_NORMALIZE_BWD, L2_NORMALIZE_FWD, LAYER_NORM_BWD, LAYER_NORM_FWD, RMS_NORM_BWD, RMS_NORM_FWD, SOFTMAX_BWD,
    SOFTMAX_FWD,
};
use super::{contig, dev_of, fast_kernels, opt_ptr, ptr, tensor, Cuda, CudaStorage, Geometry};
use crate::backend;
use crate::kinds::RmsNormKind;
use crate::{DType, Error, Result, Tensor};
use vlm4vla_kernels::launch::{norm_vec, NormLaunch};
use vlm4vla_kernels::params::{NormParams, NORM_MAX_WIDTH, ROW_THREADS};
use vlm4vla_kernels::Dtype;

/// The vectorised kernel for this call (`op` rms_norm or layer_norm) when it takes it: bf16, every
/// pointer 16-byte aligned (0 = null is), width a multiple of 8 up to 8192.
fn vec_norm(op: &str, backward: bool, x: &Tensor, ptrs: &[u64], max_blocks: usize) -> Option<NormLaunch> {
    if x.dtype() != DType::BF16 || !fast_kernels() || ptrs.iter().any(|p| p % 16 != 0) {
        return None;
    }
    let (rows, width) = dims(x);
    norm_vec(op, backward, Dtype::Bf16, rows, width, max_blocks).ok()
}

/// Blocks of the backward kernels that write parameter-gradient partials `[blocks, width]`.
const PARTIAL_BLOCKS: usize = 264;

fn dims(x: &Tensor) -> (usize, usize) {
    crate::shape::rows_of(x.shape())
}

fn params(x: &Tensor, eps: f64, flag: i32) -> NormParams {
    let (rows, width) = dims(x);
    NormParams { rows: rows as i64, width: width as i64, eps: eps as f32, flag }
}

fn check_width(op: &'static str, x: &Tensor) -> Result<()> {
    let (_, width) = dims(x);
    if width > NORM_MAX_WIDTH {
        return Err(Error::shapes_note(
            op,
            &[x.shape()],
            format!("the CUDA kernel takes rows of at most {NORM_MAX_WIDTH}"),
        ));
    }
    Ok(())
}

/// A parameter gradient from f32 partials: summed over blocks, converted to `dtype`.
fn param_grad(
    dev: &std::sync::Arc<super::CudaDevice>,
    part: &CudaStorage,
    blocks: usize,
    width: usize,
    dtype: DType,
) -> Result<Tensor> {
    let sum = super::reduce::sum_partials(dev, part, blocks, width)?;
    let t = tensor(sum, &[width]);
    Ok(if dtype == DType::F32 { t } else { tensor(super::to_contiguous("norm", &t, dtype)?, &[width]) })
}

pub(crate) fn softmax(x: &Tensor, log: bool) -> Result<CudaStorage> {
    let op = if log { "log_softmax" } else { "softmax" };
    let x = contig(x)?;
    let dev = dev_of(op, &x)?;
    let y = dev.alloc(op, x.dtype(), x.elem_count())?;
    let kernel = SOFTMAX_FWD.at(op, x.dtype())?;
    // SAFETY: x and y are contiguous [rows, width] of one dtype.
    unsafe {
        dev.launch(op, kernel, Geometry::rows(dims(&x).0), params(&x, 0.0, log as i32), [ptr(op, &x)?, y.ptr_at(0)])
    }?;
    Ok(y)
}

pub(crate) fn softmax_backward(y: &Tensor, g: &Tensor, log: bool) -> Result<CudaStorage> {
    let op = if log { "log_softmax" } else { "softmax" };
    let (y, g) = (contig(y)?, contig(g)?);
    let dev = dev_of(op, &y)?;
    let dx = dev.alloc(op, y.dtype(), y.elem_count())?;
    let kernel = SOFTMAX_BWD.at(op, y.dtype())?;
    // SAFETY: y, g, dx are contiguous [rows, width] of one dtype.
    unsafe {
        dev.launch(
            op,
            kernel,
            Geometry::rows(dims(&y).0),
            params(&y, 0.0, log as i32),
            [ptr(op, &y)?, ptr(op, &g)?, dx.ptr_at(0)],
        )
    }?;
    Ok(dx)
}

fn rms_flag(kind: RmsNormKind) -> i32 {
    kind.code()
}

/// (y, rstd f32 [rows]).
pub(crate) fn rms_norm(x: &Tensor, w: Option<&Tensor>, eps: f64, kind: RmsNormKind) -> Result<(CudaStorage, Tensor)> {
    let op = "rms_norm";
    check_width(op, x)?;
    let x = contig(x)?;
    let w = w.map(contig).transpose()?;
    let dev = dev_of(op, &x)?;
    let (rows, _) = dims(&x);
    let y = dev.alloc(op, x.dtype(), x.elem_count())?;
    let rstd = dev.alloc(op, DType::F32, rows)?;
    let ptrs = [ptr(op, &x)?, 0, opt_ptr(op, w.as_ref())?, y.ptr_at(0), 0, rstd.ptr_at(0)];
    let (kernel, geometry) = match vec_norm(op, false, &x, &ptrs[..4], 65535) {
        Some(v) => (v.launch.kernel, Geometry::from(&v.launch)),
        None => (RMS_NORM_FWD.at(op, x.dtype())?, Geometry::rows(rows)),
    };
    // SAFETY: x, y contiguous [rows, width]; w [width] or null; no residual (null) so h is unused;
    // rstd holds rows floats; the vectorised kernel only with 16-byte aligned x, w, y.
    unsafe { dev.launch(op, kernel, geometry, params(&x, eps, rms_flag(kind)), ptrs) }?;
    Ok((y, tensor(rstd, &[rows])))
}

/// (dx, dw), each only when asked for.
pub(crate) fn rms_norm_backward(
    x: &Tensor,
    w: Option<&Tensor>,
    rstd: &Tensor,
    g: &Tensor,
    kind: RmsNormKind,
    want_dx: bool,
    want_dw: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let op = "rms_norm";
    let (x, g, rstd) = (contig(x)?, contig(g)?, contig(rstd)?);
    let w = w.map(contig).transpose()?;
    let dev = dev_of(op, &x)?;
    let (rows, width) = dims(&x);
    let max_blocks = if want_dw { PARTIAL_BLOCKS } else { 65535 };
    let dx = if want_dx { Some(dev.alloc(op, x.dtype(), x.elem_count())?) } else { None };
    let vec = vec_norm(
        op,
        true,
        &x,
        &[ptr(op, &x)?, opt_ptr(op, w.as_ref())?, ptr(op, &g)?, dx.as_ref().map_or(0, |d| d.ptr_at(0))],
        max_blocks,
    );
    let (kernel, blocks) = match vec {
        Some(v) => (v.launch.kernel, v.partials),
        None => (RMS_NORM_BWD.at(op, x.dtype())?, rows.clamp(1, max_blocks)),
    };
    let part = if want_dw { Some(dev.alloc(op, DType::F32, blocks * width)?) } else { None };
    // SAFETY: x, g (and dx) contiguous [rows, width]; w [width] or null; rstd rows floats; the
    // partials [blocks, width] floats for a grid of `blocks`; the vectorised kernel only with
    // 16-byte aligned rows.
    unsafe {
        dev.launch(
            op,
            kernel,
            Geometry::new([blocks as u32, 1, 1], ROW_THREADS),
            params(&x, 0.0, rms_flag(kind)),
            [
                ptr(op, &x)?,
                opt_ptr(op, w.as_ref())?,
                ptr(op, &rstd)?,
                ptr(op, &g)?,
                0,
                dx.as_ref().map_or(0, |d| d.ptr_at(0)),
                part.as_ref().map_or(0, |p| p.ptr_at(0)),
            ],
        )
    }?;
    let dx = dx.map(|d| tensor(d, x.shape()));
    let dw = match (part, w) {
        (Some(part), Some(w)) => Some(param_grad(&dev, &part, blocks, width, w.dtype())?),
        _ => None,
    };
    Ok((dx, dw))
}

/// (y, mean, rstd), statistics f32 [rows].
pub(crate) fn layer_norm(
    x: &Tensor,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
    eps: f64,
) -> Result<(CudaStorage, Tensor, Tensor)> {
    let op = "layer_norm";
    check_width(op, x)?;
    let x = contig(x)?;
    let (w, b) = (w.map(contig).transpose()?, b.map(contig).transpose()?);
    let dev = dev_of(op, &x)?;
    let (rows, _) = dims(&x);
    let y = dev.alloc(op, x.dtype(), x.elem_count())?;
    let mean = dev.alloc(op, DType::F32, rows)?;
    let rstd = dev.alloc(op, DType::F32, rows)?;
    let vec = vec_norm(
        op,
        false,
        &x,
        &[ptr(op, &x)?, opt_ptr(op, w.as_ref())?, opt_ptr(op, b.as_ref())?, y.ptr_at(0)],
        65535,
    );
    let (kernel, geometry) = match vec {
        Some(v) => (v.launch.kernel, Geometry::from(&v.launch)),
        None => (LAYER_NORM_FWD.at(op, x.dtype())?, Geometry::rows(rows)),
    };
    // SAFETY: x, y contiguous [rows, width]; w, b [width] or null; mean, rstd rows floats; the
    // vectorised kernel only with 16-byte aligned rows.
    unsafe {
        dev.launch(
            op,
            kernel,
            geometry,
            params(&x, eps, 0),
            [
                ptr(op, &x)?,
                opt_ptr(op, w.as_ref())?,
                opt_ptr(op, b.as_ref())?,
                y.ptr_at(0),
                mean.ptr_at(0),
                rstd.ptr_at(0),
            ],
        )
    }?;
    Ok((y, tensor(mean, &[rows]), tensor(rstd, &[rows])))
}

/// (dx, dw, db), each only when asked for.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_backward(
    x: &Tensor,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
    mean: &Tensor,
    rstd: &Tensor,
    g: &Tensor,
    want_dx: bool,
    want_params: bool,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let op = "layer_norm";
    let (x, g, mean, rstd) = (contig(x)?, contig(g)?, contig(mean)?, contig(rstd)?);
    let w = w.map(contig).transpose()?;
    let dev = dev_of(op, &x)?;
    let (rows, width) = dims(&x);
    let max_blocks = if want_params { PARTIAL_BLOCKS } else { 65535 };
    let dx = if want_dx { Some(dev.alloc(op, x.dtype(), x.elem_count())?) } else { None };
    let vec = vec_norm(
        op,
        true,
        &x,
        &[ptr(op, &x)?, opt_ptr(op, w.as_ref())?, ptr(op, &g)?, dx.as_ref().map_or(0, |d| d.ptr_at(0))],
        max_blocks,
    );
    let (kernel, blocks) = match vec {
        Some(v) => (v.launch.kernel, v.partials),
        None => (LAYER_NORM_BWD.at(op, x.dtype())?, rows.clamp(1, max_blocks)),
    };
    let dw_part = if want_params && w.is_some() { Some(dev.alloc(op, DType::F32, blocks * width)?) } else { None };
    let db_part = if want_params && b.is_some() { Some(dev.alloc(op, DType::F32, blocks * width)?) } else { None };
    // SAFETY: x, g (and dx) contiguous [rows, width]; w [width] or null; mean, rstd rows floats;
    // partials [blocks, width] floats for a grid of `blocks`; the vectorised kernel only with
    // 16-byte aligned rows.
    unsafe {
        dev.launch(
            op,
            kernel,
            Geometry::new([blocks as u32, 1, 1], ROW_THREADS),
            params(&x, 0.0, 0),
            [
                ptr(op, &x)?,
                opt_ptr(op, w.as_ref())?,
                ptr(op, &mean)?,
                ptr(op, &rstd)?,
                ptr(op, &g)?,
                dx.as_ref().map_or(0, |d| d.ptr_at(0)),
                dw_part.as_ref().map_or(0, |p| p.ptr_at(0)),
                db_part.as_ref().map_or(0, |p| p.ptr_at(0)),
            ],
        )
    }?;
    let dx = dx.map(|d| tensor(d, x.shape()));
    let dw = match (&dw_part, &w) {
        (Some(p), Some(w)) => Some(param_grad(&dev, p, blocks, width, w.dtype())?),
        _ => None,
    };
    let db = match (&db_part, b) {
        (Some(p), Some(b)) => Some(param_grad(&dev, p, blocks, width, b.dtype())?),
        _ => None,
    };
    Ok((dx, dw, db))
}

/// (y, norm f32 [rows]).
pub(crate) fn l2_normalize(x: &Tensor, eps: f64) -> Result<(CudaStorage, Tensor)> {
    let op = "l2_normalize";
    let x = contig(x)?;
    let dev = dev_of(op, &x)?;
    let (rows, _) = dims(&x);
    let y = dev.alloc(op, x.dtype(), x.elem_count())?;
    let norm = dev.alloc(op, DType::F32, rows)?;
    let kernel = L2_NORMALIZE_FWD.at(op, x.dtype())?;
    // SAFETY: x, y contiguous [rows, width]; norm rows floats.
    unsafe {
        dev.launch(op, kernel, Geometry::rows(rows), params(&x, eps, 0), [ptr(op, &x)?, y.ptr_at(0), norm.ptr_at(0)])
    }?;
    Ok((y, tensor(norm, &[rows])))
}

pub(crate) fn l2_normalize_backward(y: &Tensor, norm: &Tensor, g: &Tensor, eps: f64) -> Result<CudaStorage> {
    let op = "l2_normalize";
    let (y, norm, g) = (contig(y)?, contig(norm)?, contig(g)?);
    let dev = dev_of(op, &y)?;
    let dx = dev.alloc(op, y.dtype(), y.elem_count())?;
    let kernel = L2_NORMALIZE_BWD.at(op, y.dtype())?;
    // SAFETY: y, g, dx contiguous [rows, width] of one dtype; norm rows floats.
    unsafe {
        dev.launch(
            op,
            kernel,
            Geometry::rows(dims(&y).0),
            params(&y, eps, 0),
            [ptr(op, &y)?, ptr(op, &norm)?, ptr(op, &g)?, dx.ptr_at(0)],
        )
    }?;
    Ok(dx)
}

impl backend::Norm for Cuda {
    fn softmax(&self, x: &Tensor, log: bool) -> Result<Tensor> {
        Ok(tensor(softmax(x, log)?, x.shape()))
    }

    fn softmax_backward(&self, y: &Tensor, g: &Tensor, log: bool) -> Result<Tensor> {
        Ok(tensor(softmax_backward(y, g, log)?, y.shape()))
    }

    fn rms_norm(&self, x: &Tensor, w: Option<&Tensor>, eps: f64, kind: RmsNormKind) -> Result<(Tensor, Tensor)> {
        let (y, rstd) = rms_norm(x, w, eps, kind)?;
        Ok((tensor(y, x.shape()), rstd))
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
        rms_norm_backward(x, w, rstd, g, kind, want_dx, want_dw)
    }

    fn layer_norm(
        &self,
        x: &Tensor,
        w: Option<&Tensor>,
        b: Option<&Tensor>,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (y, mean, rstd) = layer_norm(x, w, b, eps)?;
        Ok((tensor(y, x.shape()), mean, rstd))
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
        layer_norm_backward(x, w, b, mean, rstd, g, want_dx, want_params)
    }

    fn l2_normalize(&self, x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        let (y, norm) = l2_normalize(x, eps)?;
        Ok((tensor(y, x.shape()), norm))
    }

    fn l2_normalize_backward(&self, y: &Tensor, norm: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor> {
        Ok(tensor(l2_normalize_backward(y, norm, g, eps)?, y.shape()))
    }
}
