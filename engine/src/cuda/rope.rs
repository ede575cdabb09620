//! CUDA launchers of `rope.cu`: rotate-half rope with caller-given cos/sin tables (converted to
//! the input's dtype: the kernel reads one element type).

use super::{contig, dev_of, ew_grid, fast_kernels, float_name, launch, ptr, CudaStorage};
use crate::{DType, Result, Tensor};
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
    let pairs = x.elem_count() / 2;
    let ptrs = [ptr(op, &x)?, ptr(op, &c)?, ptr(op, &s)?, out.ptr_at(0)];
    // The 16-byte kernel for bf16 with D / 2 a multiple of 8 and aligned pointers.
    let vec = (x.dtype() == DType::BF16 && fast_kernels() && ptrs.iter().all(|p| p % 16 == 0))
        .then(|| {
            let rows = x.elem_count() / sh[3].max(1);
            vlm4vla_kernels::launch::rope_vec(backward, vlm4vla_kernels::Dtype::Bf16, rows, sh[3], 1 << 16).ok()
        })
        .flatten();
    let (symbol, grid) = match vec {
        Some(l) => (l.symbol, (l.grid[0], 1, 1)),
        None => {
            (format!("rope_{}_{}", if backward { "bwd" } else { "fwd" }, float_name(op, x.dtype())?), ew_grid(pairs))
        }
    };
    // SAFETY: x and out are contiguous [B, L, H, D]; the tables are contiguous [L, D] or
    // [B, L, D] (checked by the op), all of one dtype; the vectorised kernel only with 16-byte
    // aligned pointers and D / 2 a multiple of 8.
    unsafe { launch!(dev, op, "rope", symbol, grid, EW_THREADS, p, [ptrs[0], ptrs[1], ptrs[2], ptrs[3]]) }?;
    Ok(out)
}
