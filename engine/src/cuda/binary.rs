//! CUDA launchers of `binary.cu`: a contiguous fast path (16-byte vector loads inside the kernel)
//! and a strided fallback taking dims and strides by value, for broadcast and transposed views.

use super::launch::{BINARY, BINARY_STRIDED};
use super::{dev_of, ptr, strided_params, tensor, Cuda, CudaStorage, Geometry};
use crate::kinds::{BinaryKind, CmpKind};
use crate::{backend, Result, Tensor};
use vlm4vla_kernels::params::BinaryParams;

/// `a OP b` for two views of the same shape (broadcasting was done by the caller's views).
pub(crate) fn forward(a: &Tensor, b: &Tensor, kind: BinaryKind) -> Result<CudaStorage> {
    let op = kind.name();
    let dev = dev_of(op, a)?;
    let n = a.elem_count();
    let out = dev.alloc(op, a.dtype(), n)?;
    let s = strided_params(op, a.shape(), [a.layout(), b.layout()])?;
    let contiguous = a.is_contiguous() && b.is_contiguous();
    let p = BinaryParams {
        n: n as i64,
        op: kind.code(),
        rank: s.rank,
        dims: s.dims,
        a_strides: s.a_strides,
        b_strides: s.b_strides,
        a_offset: 0,
        b_offset: 0,
    };
    let kernel = if contiguous { BINARY } else { BINARY_STRIDED }.at(op, a.dtype())?;
    let ptrs = [ptr(op, a)?, ptr(op, b)?, out.ptr_at(0)];
    // SAFETY: binary[_strided]_fwd(p, a, b, out): a and b are views of the shape inside their
    // storages (base pointers carry the offsets), out holds n elements; the contiguous kernel is
    // used only for contiguous views.
    unsafe { dev.launch(op, kernel, Geometry::elementwise(n), p, ptrs) }?;
    Ok(out)
}

impl backend::Binary for Cuda {
    fn binary(&self, a: &Tensor, b: &Tensor, kind: BinaryKind) -> Result<Tensor> {
        Ok(tensor(forward(a, b, kind)?, a.shape()))
    }

    fn cmp(&self, a: &Tensor, b: &Tensor, kind: CmpKind) -> Result<Tensor> {
        Ok(tensor(super::view::cmp(a, b, kind)?, a.shape()))
    }
}
