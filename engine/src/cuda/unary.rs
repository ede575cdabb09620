//! CUDA launchers of `unary.cu`: every unary kind through one kernel per direction and dtype.

use super::launch::{UNARY_BWD, UNARY_FWD};
use super::{contig, dev_of, ptr, tensor, Cuda, CudaStorage, Geometry};
use crate::kinds::UnaryKind;
use crate::{backend, Result, Tensor};
use vlm4vla_kernels::params::UnaryParams;

fn params(_op: &'static str, kind: UnaryKind, n: usize) -> Result<UnaryParams> {
    let (a, b) = kind.args();
    Ok(UnaryParams { n: n as i64, op: kind.code(), a: a as f32, b: b as f32 })
}

/// `f(x)` elementwise, contiguous output.
pub(crate) fn forward(x: &Tensor, kind: UnaryKind) -> Result<CudaStorage> {
    let op = kind.name();
    let x = contig(x)?;
    let dev = dev_of(op, &x)?;
    let n = x.elem_count();
    let out = dev.alloc(op, x.dtype(), n)?;
    let p = params(op, kind, n)?;
    let kernel = UNARY_FWD.at(op, x.dtype())?;
    // SAFETY: unary_fwd(p, x, y): x is contiguous with n elements, out holds n elements of the
    // same dtype.
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, [ptr(op, &x)?, out.ptr_at(0)]) }?;
    Ok(out)
}

/// `g · f'(x, y)` elementwise (x the input, y the output, g the output's gradient).
pub(crate) fn backward(kind: UnaryKind, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<CudaStorage> {
    let op = kind.name();
    let (x, y, g) = (contig(x)?, contig(y)?, contig(g)?);
    let dev = dev_of(op, &x)?;
    let n = x.elem_count();
    let out = dev.alloc(op, x.dtype(), n)?;
    let p = params(op, kind, n)?;
    let kernel = UNARY_BWD.at(op, x.dtype())?;
    let ptrs = [ptr(op, &x)?, ptr(op, &y)?, ptr(op, &g)?, out.ptr_at(0)];
    // SAFETY: unary_bwd(p, x, y, g, dx): x, y, g are contiguous with n elements of one dtype; out
    // holds n elements.
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, ptrs) }?;
    Ok(out)
}

impl backend::Unary for Cuda {
    fn unary(&self, x: &Tensor, kind: UnaryKind) -> Result<Tensor> {
        Ok(tensor(forward(x, kind)?, x.shape()))
    }

    fn unary_backward(&self, kind: UnaryKind, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Tensor> {
        Ok(tensor(backward(kind, x, y, g)?, x.shape()))
    }
}
