//! CUDA launchers of `rope.cu`: rotate-half rope with caller-given cos/sin tables (read in fp32,
//! as the CPU does for bf16 inputs).

use super::launch::{ROPE_BWD, ROPE_FWD};
use super::{contig, dev_of, ptr, tensor, Cuda, CudaStorage, Geometry};
use crate::{backend, DType, Result, Tensor};
use vlm4vla_kernels::params::RopeParams;

/// Forward (`backward = false`: rotate x) or backward (rotate g by the transpose).
pub(crate) fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor, batched: bool, backward: bool) -> Result<CudaStorage> {
    let op = "rope";
    let x = contig(x)?;
    let dev = dev_of(op, &x)?;
    let (c, s) = (contig(&cos.to_dtype(DType::F32)?)?, contig(&sin.to_dtype(DType::F32)?)?);
    let sh = x.shape();
    let p = RopeParams {
        b: sh[0] as i64,
        l: sh[1] as i64,
        h: sh[2] as i64,
        d: sh[3] as i64,
        batched: batched as i32,
        pad: 0,
    };
    let out = dev.alloc(op, x.dtype(), x.elem_count())?;
    let kernel = if backward { ROPE_BWD } else { ROPE_FWD }.at(op, x.dtype())?;
    let pairs = x.elem_count() / 2;
    let ptrs = [ptr(op, &x)?, ptr(op, &c)?, ptr(op, &s)?, out.ptr_at(0)];
    // SAFETY: rope_{fwd,bwd}(p, x, cos, sin, out): x and out are contiguous [B, L, H, D] of one
    // dtype; the tables are contiguous f32 [L, D] or [B, L, D] (shapes checked by the op).
    unsafe { dev.launch(op, kernel, Geometry::elementwise(pairs), p, ptrs) }?;
    Ok(out)
}

impl backend::Rope for Cuda {
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, batched: bool, backward: bool) -> Result<Tensor> {
        Ok(tensor(apply(x, cos, sin, batched, backward)?, x.shape()))
    }
}
