//! CUDA launchers of `activation.cu`: swiglu and geglu on a merged gate|up input.

use super::launch::{KernelSet, GEGLU_BWD, GEGLU_FWD, SWIGLU_BWD, SWIGLU_FWD};
use super::{contig, dev_of, fast_kernels, ptr, tensor, Cuda, CudaStorage, Geometry};
use crate::kinds::GateKind;
use crate::{backend, DType, Result, Tensor};
use vlm4vla_kernels::params::GateParams;
use vlm4vla_kernels::KernelId;

/// The 16-byte kernel and its geometry when it takes the call: bf16, F a multiple of 8, 16-byte
/// aligned pointers.
fn vec_gate(op: &str, backward: bool, x: &Tensor, rows: usize, f: usize, ptrs: &[u64]) -> Option<(KernelId, Geometry)> {
    if x.dtype() != DType::BF16 || !fast_kernels() || ptrs.iter().any(|p| p % 16 != 0) {
        return None;
    }
    let l = vlm4vla_kernels::launch::gate_vec(op, backward, vlm4vla_kernels::Dtype::Bf16, rows, f, 1 << 16).ok()?;
    Some((l.kernel, Geometry::from(&l)))
}

/// The simple kernel of `kind` (forward or backward).
fn simple(kind: GateKind, backward: bool) -> KernelSet {
    match (kind, backward) {
        (GateKind::Silu, false) => SWIGLU_FWD,
        (GateKind::Silu, true) => SWIGLU_BWD,
        (GateKind::GeluTanh, false) => GEGLU_FWD,
        (GateKind::GeluTanh, true) => GEGLU_BWD,
    }
}

/// `act(x[..., :F]) * x[..., F:]` as a contiguous `[..., F]` buffer.
pub(crate) fn forward(x: &Tensor, kind: GateKind, f: usize) -> Result<CudaStorage> {
    let op = kind.name();
    let x = contig(x)?;
    let dev = dev_of(op, &x)?;
    let rows = x.elem_count() / (2 * f).max(1);
    let out = dev.alloc(op, x.dtype(), rows * f)?;
    let (px, po) = (ptr(op, &x)?, out.ptr_at(0));
    let (kernel, geometry) = match vec_gate(op, false, &x, rows, f, &[px, po]) {
        Some(v) => v,
        None => (simple(kind, false).at(op, x.dtype())?, Geometry::elementwise(rows * f)),
    };
    let p = GateParams { rows: rows as i64, f: f as i64 };
    // SAFETY: {swiglu,geglu}[_vec]_fwd(p, x, out): x is contiguous [rows, 2F], out holds rows * F
    // elements of the same dtype; the vectorised kernel only with 16-byte aligned pointers and F
    // a multiple of 8.
    unsafe { dev.launch(op, kernel, geometry, p, [px, po]) }?;
    Ok(out)
}

/// The whole `[..., 2F]` input gradient from the output gradient `g` (`[..., F]`).
pub(crate) fn backward(x: &Tensor, g: &Tensor, kind: GateKind, f: usize) -> Result<CudaStorage> {
    let op = kind.name();
    let (x, g) = (contig(x)?, contig(g)?);
    let dev = dev_of(op, &x)?;
    let rows = x.elem_count() / (2 * f).max(1);
    let dx = dev.alloc(op, x.dtype(), x.elem_count())?;
    let (px, pg, pd) = (ptr(op, &x)?, ptr(op, &g)?, dx.ptr_at(0));
    let (kernel, geometry) = match vec_gate(op, true, &x, rows, f, &[px, pg, pd]) {
        Some(v) => v,
        None => (simple(kind, true).at(op, x.dtype())?, Geometry::elementwise(rows * f)),
    };
    let p = GateParams { rows: rows as i64, f: f as i64 };
    // SAFETY: {swiglu,geglu}[_vec]_bwd(p, x, g, dx): x and dx are contiguous [rows, 2F], g is
    // [rows, F], one dtype; the vectorised kernel only with 16-byte aligned pointers and F a
    // multiple of 8.
    unsafe { dev.launch(op, kernel, geometry, p, [px, pg, pd]) }?;
    Ok(dx)
}

impl backend::Activation for Cuda {
    fn gate(&self, x: &Tensor, kind: GateKind, f: usize) -> Result<Tensor> {
        let mut shape = x.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = f;
        }
        Ok(tensor(forward(x, kind, f)?, &shape))
    }

    fn gate_backward(&self, x: &Tensor, g: &Tensor, kind: GateKind, f: usize) -> Result<Tensor> {
        Ok(tensor(backward(x, g, kind, f)?, x.shape()))
    }
}
