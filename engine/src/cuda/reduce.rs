//! CUDA launchers of `reduce.cu`: sums over runs of adjacent dims, max/min with their indices,
//! and the max/min backward.

use super::launch::{REDUCE_BWD, REDUCE_FWD};
use super::{contig, dev_of, ptr, tensor, Cuda, CudaStorage, Geometry};
use crate::kinds::{ReduceKind, UnaryKind};
use crate::{backend, DType, Result, Tensor};
use vlm4vla_kernels::params::{ReduceParams, EW_THREADS};

/// Reduce contiguous `x` viewed as `[outer, len, inner]` into `out` (`[outer, inner]`) and/or
/// `idx` (i64, 0 = none).
fn launch(
    op: &'static str,
    x: u64,
    dtype: DType,
    p: ReduceParams,
    out: u64,
    idx: u64,
    dev: &super::CudaDevice,
) -> Result<()> {
    let n_out = (p.outer * p.inner) as usize;
    if n_out == 0 {
        return Ok(());
    }
    let kernel = REDUCE_FWD.at(op, dtype)?;
    // One warp per output row when inner == 1, else one thread per output element.
    let per_block = if p.inner == 1 { (EW_THREADS / 32) as usize } else { EW_THREADS as usize };
    let blocks = n_out.div_ceil(per_block).clamp(1, 1 << 16) as u32;
    // SAFETY: reduce_fwd(p, x, out, idx): x holds outer*len*inner elements, out (when not null)
    // and idx (when not null) hold outer*inner elements of the kernel's dtype and i64.
    unsafe { dev.launch(op, kernel, Geometry::new([blocks, 1, 1], EW_THREADS), p, [x, out, idx]) }
}

/// Sum over `dims` (sorted, deduplicated), keeping them as size 1. bf16 sums in f32 throughout
/// and rounds once.
pub(crate) fn sum_dims(x: &Tensor, dims: &[usize]) -> Result<CudaStorage> {
    let op = "sum";
    let dev = dev_of(op, x)?;
    let dtype = x.dtype();
    let mut cur = if dtype == DType::F32 {
        contig(x)?
    } else {
        super::tensor(super::to_contiguous(op, x, DType::F32)?, x.shape())
    };
    let mut shape = x.shape().to_vec();
    let mut last: Option<CudaStorage> = None;
    // Runs of adjacent reduced dims collapse into one launch.
    let mut i = 0;
    while i < dims.len() {
        let mut j = i;
        while j + 1 < dims.len() && dims[j + 1] == dims[j] + 1 {
            j += 1;
        }
        let (d0, d1) = (dims[i], dims[j]);
        let p = ReduceParams {
            outer: shape[..d0].iter().product::<usize>() as i64,
            len: shape[d0..=d1].iter().product::<usize>() as i64,
            inner: shape[d1 + 1..].iter().product::<usize>() as i64,
            op: ReduceKind::Sum.code(),
            pad: 0,
        };
        let out = dev.alloc(op, DType::F32, (p.outer * p.inner) as usize)?;
        launch(op, ptr(op, &cur)?, DType::F32, p, out.ptr_at(0), 0, &dev)?;
        for s in &mut shape[d0..=d1] {
            *s = 1;
        }
        if j + 1 == dims.len() && dtype == DType::F32 {
            last = Some(out);
        } else {
            cur = super::tensor(out, &shape);
        }
        i = j + 1;
    }
    match last {
        Some(out) => Ok(out),
        None => super::to_contiguous(op, &cur, dtype),
    }
}

/// Max (or min) over `dim` with the index of the first extreme element: (values, i64 indices),
/// both shaped like `x` with `dim` of size 1.
pub(crate) fn select(x: &Tensor, dim: usize, is_max: bool) -> Result<(CudaStorage, CudaStorage)> {
    let op = if is_max { "max" } else { "min" };
    let x = contig(x)?;
    let dev = dev_of(op, &x)?;
    let (outer, len, inner) = crate::shape::split_at_dim(x.shape(), dim);
    let vals = dev.alloc(op, x.dtype(), outer * inner)?;
    let idx = dev.alloc(op, DType::I64, outer * inner)?;
    let p = ReduceParams {
        outer: outer as i64,
        len: len as i64,
        inner: inner as i64,
        op: if is_max { ReduceKind::Max } else { ReduceKind::Min }.code(),
        pad: 0,
    };
    launch(op, ptr(op, &x)?, x.dtype(), p, vals.ptr_at(0), idx.ptr_at(0), &dev)?;
    Ok((vals, idx))
}

/// The max/min backward: `g` (shaped like the reduced output) routed to the selected indices.
pub(crate) fn select_backward(
    g: &Tensor,
    idx: &Tensor,
    shape: &[usize],
    dim: usize,
    is_max: bool,
) -> Result<CudaStorage> {
    let op = if is_max { "max" } else { "min" };
    let (g, idx) = (contig(g)?, contig(idx)?);
    let dev = dev_of(op, &g)?;
    let (outer, len, inner) = crate::shape::split_at_dim(shape, dim);
    let n = outer * len * inner;
    let dx = dev.alloc(op, g.dtype(), n)?;
    let p = ReduceParams { outer: outer as i64, len: len as i64, inner: inner as i64, op: 0, pad: 0 };
    let kernel = REDUCE_BWD.at(op, g.dtype())?;
    let ptrs = [ptr(op, &g)?, ptr(op, &idx)?, dx.ptr_at(0)];
    // SAFETY: reduce_bwd(p, g, idx, dx): g and idx hold outer*inner elements, dx holds
    // outer*len*inner.
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, ptrs) }?;
    Ok(dx)
}

/// Column sums of an f32 `[blocks, width]` buffer of per-block partials (parameter gradients of
/// the norms): an f32 `[width]` buffer, in a fixed order (deterministic).
pub(crate) fn sum_partials(
    dev: &std::sync::Arc<super::CudaDevice>,
    part: &CudaStorage,
    blocks: usize,
    width: usize,
) -> Result<CudaStorage> {
    let op = "sum_partials";
    let out = dev.alloc(op, DType::F32, width)?;
    let p = ReduceParams { outer: 1, len: blocks as i64, inner: width as i64, op: ReduceKind::Sum.code(), pad: 0 };
    launch(op, part.ptr_at(0), DType::F32, p, out.ptr_at(0), 0, dev)?;
    Ok(out)
}

impl backend::Reduce for Cuda {
    fn sum_dims(&self, x: &Tensor, dims: &[usize], out_shape: &[usize]) -> Result<Tensor> {
        Ok(tensor(sum_dims(x, dims)?, out_shape))
    }

    fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor> {
        Ok(tensor(super::unary::forward(x, UnaryKind::Affine(s, 0.0))?, x.shape()))
    }

    fn select(&self, x: &Tensor, dim: usize, is_max: bool) -> Result<(Tensor, Tensor)> {
        let mut out_shape = x.shape().to_vec();
        out_shape[dim] = 1;
        let (vals, idx) = select(x, dim, is_max)?;
        Ok((tensor(vals, &out_shape), tensor(idx, &out_shape)))
    }

    fn select_backward(
        &self,
        g: &Tensor,
        indices: &Tensor,
        shape: &[usize],
        dim: usize,
        is_max: bool,
    ) -> Result<Tensor> {
        Ok(tensor(select_backward(g, indices, shape, dim, is_max)?, shape))
    }

    fn norm_l2(&self, x: &Tensor) -> Result<Tensor> {
        // sqrt(sum(x^2)) in f32 on the device, rounded once to the dtype.
        let dtype = x.dtype();
        let n = crate::no_grad(|| -> Result<Tensor> {
            x.detach().to_dtype(DType::F32)?.sqr()?.sum_all()?.sqrt()?.to_dtype(dtype)
        })?;
        Ok(tensor(super::view::convert("norm_l2", &n, dtype)?, &[]))
    }
}
