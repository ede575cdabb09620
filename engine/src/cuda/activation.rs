//! CUDA launchers of `activation.cu`: swiglu and geglu on a merged gate|up input.

use super::{contig, dev_of, ew_grid, float_name, launch, ptr, CudaStorage};
use crate::ops::activation::GateKind;
use crate::{Result, Tensor};
use vlm4vla_kernels::params::{GateParams, EW_THREADS};

/// `act(x[..., :F]) * x[..., F:]` as a contiguous `[..., F]` buffer.
pub(crate) fn forward(x: &Tensor, kind: GateKind, f: usize) -> Result<CudaStorage> {
    let op = kind.name();
    let x = contig(x)?;
    let dev = dev_of(op, &x)?;
    let rows = x.elem_count() / (2 * f).max(1);
    let out = dev.alloc(op, x.dtype(), rows * f)?;
    let symbol = format!("{op}_fwd_{}", float_name(op, x.dtype())?);
    let p = GateParams { rows: rows as i64, f: f as i64 };
    // SAFETY: x is contiguous [rows, 2F], out holds rows * F elements of the same dtype.
    unsafe { launch!(dev, op, "activation", symbol, ew_grid(rows * f), EW_THREADS, p, [ptr(op, &x)?, out.ptr_at(0)]) }?;
    Ok(out)
}

/// The whole `[..., 2F]` input gradient from the output gradient `g` (`[..., F]`).
pub(crate) fn backward(x: &Tensor, g: &Tensor, kind: GateKind, f: usize) -> Result<CudaStorage> {
    let op = kind.name();
    let (x, g) = (contig(x)?, contig(g)?);
    let dev = dev_of(op, &x)?;
    let rows = x.elem_count() / (2 * f).max(1);
    let dx = dev.alloc(op, x.dtype(), x.elem_count())?;
    let symbol = format!("{op}_bwd_{}", float_name(op, x.dtype())?);
    let p = GateParams { rows: rows as i64, f: f as i64 };
    // SAFETY: x and dx are contiguous [rows, 2F], g is [rows, F], one dtype.
    unsafe {
        launch!(
            dev,
            op,
            "activation",
            symbol,
            ew_grid(rows * f),
            EW_THREADS,
            p,
            [ptr(op, &x)?, ptr(op, &g)?, dx.ptr_at(0)]
        )
    }?;
    Ok(dx)
}
