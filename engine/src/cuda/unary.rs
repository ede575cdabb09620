//! CUDA launchers of `unary.cu`: every unary kind through one kernel per direction and dtype.

use super::{contig, dev_of, float_name, ptr, tensor, Cuda, CudaStorage};
use crate::kinds::UnaryKind;
use crate::{backend, Result, Tensor};
use std::ffi::c_void;
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
    let mut p = params(op, kind, n)?;
    let (mut px, mut py) = (ptr(op, &x)?, out.ptr_at(0));
    let symbol = format!("unary_fwd_{}", float_name(op, x.dtype())?);
    let mut args =
        [&mut p as *mut _ as *mut c_void, &mut px as *mut _ as *mut c_void, &mut py as *mut _ as *mut c_void];
    // SAFETY: x is contiguous with n elements, out holds n elements of the same dtype.
    unsafe { dev.launch_ew(op, "unary", &symbol, n, &mut args) }?;
    Ok(out)
}

/// `g · f'(x, y)` elementwise (x the input, y the output, g the output's gradient).
pub(crate) fn backward(kind: UnaryKind, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<CudaStorage> {
    let op = kind.name();
    let (x, y, g) = (contig(x)?, contig(y)?, contig(g)?);
    let dev = dev_of(op, &x)?;
    let n = x.elem_count();
    let out = dev.alloc(op, x.dtype(), n)?;
    let mut p = params(op, kind, n)?;
    let (mut px, mut py, mut pg, mut pd) = (ptr(op, &x)?, ptr(op, &y)?, ptr(op, &g)?, out.ptr_at(0));
    let symbol = format!("unary_bwd_{}", float_name(op, x.dtype())?);
    let mut args = [
        &mut p as *mut _ as *mut c_void,
        &mut px as *mut _ as *mut c_void,
        &mut py as *mut _ as *mut c_void,
        &mut pg as *mut _ as *mut c_void,
        &mut pd as *mut _ as *mut c_void,
    ];
    // SAFETY: x, y, g are contiguous with n elements of one dtype; out holds n elements.
    unsafe { dev.launch_ew(op, "unary", &symbol, n, &mut args) }?;
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
