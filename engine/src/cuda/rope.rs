//! CUDA launchers of `rope.cu`: rotate-half rope with caller-given cos/sin tables (converted to
//! the input's dtype: the kernel reads one element type).

use super::{contig, dev_of, ew_grid, float_name, launch, ptr, CudaStorage};
use crate::{Result, Tensor};
use vlm4vla_kernels::params::{RopeParams, EW_THREADS};

/// Forward (`backward = false`: rotate x) or backward (rotate g by the transpose).
pub(crate) fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor, batched: bool, backward: bool) -> Result<CudaStorage> {
    let op = "rope";
    let x = contig(x)?;
    let dev = dev_of(op, &x)?;
    let (c, s) = (contig(&cos.to_dtype(x.dtype())?)?, contig(&sin.to_dtype(x.dtype())?)?);
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
    let symbol = format!("rope_{}_{}", if backward { "bwd" } else { "fwd" }, float_name(op, x.dtype())?);
    let pairs = x.elem_count() / 2;
    // SAFETY: x and out are contiguous [B, L, H, D]; the tables are contiguous [L, D] or
    // [B, L, D] (checked by the op), all of one dtype.
    unsafe {
        launch!(
            dev,
            op,
            "rope",
            symbol,
            ew_grid(pairs),
            EW_THREADS,
            p,
            [ptr(op, &x)?, ptr(op, &c)?, ptr(op, &s)?, out.ptr_at(0)]
        )
    }?;
    Ok(out)
}
