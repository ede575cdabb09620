//! CUDA launcher of `optim.cu`: the fused AdamW / SGD step of one parameter tensor (a one-slot
//! table: fp32 master or parameter, gradient, fp32 moments, and the bf16 copy written in the same
//! pass).

use super::{contig, dev_of, launch, ptr, CudaStorage};
use crate::{DType, Error, Result, Tensor};
use vlm4vla_kernels::params::{OptimParams, EW_THREADS, OPTIM_CHUNK};

/// Update `param` in place from `grad`. `bufs` are the f32 optimizer buffers (`[m, v]` for AdamW,
/// `[momentum]` or none for SGD); `master` is the f32 master copy of a bf16 parameter (the
/// parameter then receives its rounding). `kernel` is `adamw` or `sgd`; `p` carries the
/// hyper-parameters of this step (its table pointers are filled in here).
pub(crate) fn step(
    kernel: &'static str,
    param: &Tensor,
    grad: &Tensor,
    bufs: &[CudaStorage],
    master: Option<&CudaStorage>,
    mut p: OptimParams,
) -> Result<()> {
    let op = kernel;
    let dev = dev_of(op, param)?;
    let g = contig(&grad.to_dtype(param.dtype())?)?;
    let n = param.elem_count();
    let (target, copy, dtype) = match (param.dtype(), master) {
        (DType::F32, None) => (ptr(op, param)?, 0, "f32"),
        (DType::BF16, Some(m)) => (m.ptr_at(0), ptr(op, param)?, "bf16"),
        (other, _) => {
            return Err(Error::dtype(
                op,
                other,
                "the CUDA optimizer steps f32 parameters and bf16 ones with an f32 master",
            ))
        }
    };
    let slot: Vec<i64> = vec![
        target as i64,
        ptr(op, &g)? as i64,
        bufs.first().map_or(0, |b| b.ptr_at(0)) as i64,
        bufs.get(1).map_or(0, |b| b.ptr_at(0)) as i64,
        copy as i64,
        n as i64,
    ];
    let chunks = n.div_ceil(OPTIM_CHUNK);
    let slots = dev.upload_i64(op, slot)?;
    let chunk_start = dev.upload_i64(op, vec![0, chunks as i64])?;
    p.slots = slots.ptr_at(0);
    p.chunk_start = chunk_start.ptr_at(0);
    p.n_slots = 1;
    let symbol = format!("{kernel}_fwd_{dtype}");
    let grid = (chunks.clamp(1, 65535) as u32, 1, 1);
    // SAFETY: the slot table (an OptimSlot: five device pointers and a length, 48 bytes) and the
    // chunk table live on this device until the stream-ordered frees after the launch; every
    // pointer in the slot addresses n elements (f32 target and buffers, gradient and copy in the
    // kernel's dtype).
    unsafe { launch!(dev, op, "optim", symbol, grid, EW_THREADS, p, []) }?;
    drop((slots, chunk_start));
    Ok(())
}
