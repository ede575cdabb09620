//! CPU kernels for the optimizer step: one fused pass per parameter tensor over the parameter (or
//! its f32 master copy), its gradient and the optimizer's buffers. For bf16/f16 parameters the
//! rounded low-precision copy is written in the same pass, chunk by chunk while the chunk is hot.
//!
//! The update rules follow PyTorch's single-tensor implementations operation for operation (same
//! order of rounding), so f64 results match `torch.optim` to the last few ulps.

use super::{Cpu, Floats, Reads};
use crate::backend::{self, OptimCache, OptimSlot};
use crate::dtype::Float;
use crate::kinds::OptimRule;
use crate::{CpuStorage, Error, Result, Storage, Tensor, WithDType};
use half::{bf16, f16};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::RwLockWriteGuard;

/// Elements per chunk of work; tensors of fewer than `PAR_MIN` elements stay on this thread.
const CHUNK: usize = 1 << 14;
const PAR_MIN: usize = 1 << 15;

/// The low-precision parameter written from the master copy, if any.
enum LowCopy<'a> {
    None,
    Bf16(&'a mut [bf16]),
    F16(&'a mut [f16]),
}

impl LowCopy<'_> {
    fn len(&self) -> Option<usize> {
        match self {
            LowCopy::None => None,
            LowCopy::Bf16(v) => Some(v.len()),
            LowCopy::F16(v) => Some(v.len()),
        }
    }
}

/// One chunk of a low-precision copy.
enum LowChunk<'a> {
    None,
    Bf16(&'a mut [bf16]),
    F16(&'a mut [f16]),
}

impl LowChunk<'_> {
    fn write<T: Float>(&mut self, src: &[T]) {
        match self {
            LowChunk::None => {}
            LowChunk::Bf16(d) => d.iter_mut().zip(src).for_each(|(d, &s)| *d = bf16::from_f64(s.to_f64())),
            LowChunk::F16(d) => d.iter_mut().zip(src).for_each(|(d, &s)| *d = f16::from_f64(s.to_f64())),
        }
    }
}

/// An elementwise update rule applied to matching chunks of the parameter, its gradient and the
/// updated chunk of `p` into `low` as well when given. All slices have `p.len()` elements.
fn fused_update<T: Float>(p: &mut [T], g: &[T], bufs: &mut [&mut [T]], low: LowCopy<'_>, rule: &OptimRule) {
    let n = p.len();
    debug_assert!(g.len() == n && bufs.iter().all(|b| b.len() == n) && !matches!(low.len(), Some(l) if l != n));
    let mut buf_chunks: Vec<std::slice::ChunksMut<'_, T>> = bufs.iter_mut().map(|b| b.chunks_mut(CHUNK)).collect();
    let mut low_chunks: Box<dyn Iterator<Item = LowChunk<'_>> + '_> = match low {
        LowCopy::None => Box::new(std::iter::repeat_with(|| LowChunk::None)),
        LowCopy::Bf16(v) => Box::new(v.chunks_mut(CHUNK).map(LowChunk::Bf16)),
        LowCopy::F16(v) => Box::new(v.chunks_mut(CHUNK).map(LowChunk::F16)),
    };
    let jobs: Vec<_> = p
        .chunks_mut(CHUNK)
        .zip(g.chunks(CHUNK))
        .map(|(pc, gc)| {
            let bc: Vec<&mut [T]> = buf_chunks.iter_mut().filter_map(|it| it.next()).collect();
            let lc = low_chunks.next().unwrap_or(LowChunk::None);
            (pc, gc, bc, lc)
        })
        .collect();
    let run = |(pc, gc, mut bc, mut lc): (&mut [T], &[T], Vec<&mut [T]>, LowChunk<'_>)| {
        apply(rule, pc, gc, &mut bc);
        lc.write(pc);
    };
    if n >= PAR_MIN {
        jobs.into_par_iter().for_each(run);
    } else {
        jobs.into_iter().for_each(run);
    }
}

/// Decoupled-weight-decay Adam for one step of one tensor, as `torch.optim.AdamW` (single-tensor
/// path): `p *= 1 - lr·wd; m = lerp(m, g, 1 - β1); v = β2·v + (1 - β2)·g²;
/// The update of one chunk: `p`, `g` and the buffers' chunks of one length.
fn apply<T: Float>(rule: &OptimRule, p: &mut [T], g: &[T], bufs: &mut [&mut [T]]) {
    match *rule {
        OptimRule::AdamW { decay, beta1, beta2, eps, step_size, bias_correction2_sqrt } => {
            let [m, v] = bufs else { return };
            let decay = T::c(decay);
            let w = T::c(1.0 - beta1);
            let one_minus_beta2 = T::c(1.0 - beta2);
            let (beta2, eps, step_size, bc2) = (T::c(beta2), T::c(eps), T::c(step_size), T::c(bias_correction2_sqrt));
            let lerp_low = beta1 > 0.5;
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let decayed = *p * decay;
                // torch's lerp: start + w·(end − start) for |w| < 0.5, else end − (end − start)·(1 − w).
                *m = if lerp_low { *m + w * (g - *m) } else { g - (g - *m) * (T::ONE - w) };
                *v = *v * beta2 + one_minus_beta2 * g * g;
                let denom = v.sqrt() / bc2 + eps;
                *p = decayed - step_size * *m / denom;
            }
        }
        OptimRule::Sgd { lr, momentum, weight_decay, first } => {
            let neg_lr = T::c(-lr);
            let wd = T::c(weight_decay);
            let mu = T::c(momentum);
            let with_wd = weight_decay != 0.0;
            match bufs {
                [buf] => {
                    for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
                        let d = if with_wd { g + wd * *p } else { g };
                        *b = if first { d } else { *b * mu + d };
                        *p += neg_lr * *b;
                    }
                }
                _ => {
                    for (p, &g) in p.iter_mut().zip(g) {
                        let d = if with_wd { g + wd * *p } else { g };
                        *p += neg_lr * d;
                    }
                }
            }
        }
    }
}

/// `Σ x²` accumulated in f64.
fn sum_sq<T: Float>(x: &[T]) -> f64 {
    if x.len() >= PAR_MIN {
        x.par_chunks(CHUNK).map(|c| c.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>()).sum()
    } else {
        x.iter().map(|&v| v.to_f64() * v.to_f64()).sum()
    }
}

fn as_f32<'a>(g: &'a Floats<'_>) -> Cow<'a, [f32]> {
    match g {
        Floats::F32(v) => Cow::Borrowed(&v[..]),
        Floats::F64(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
    }
}

fn as_f64<'a>(g: &'a Floats<'_>) -> Cow<'a, [f64]> {
    match g {
        Floats::F64(v) => Cow::Borrowed(&v[..]),
        Floats::F32(v) => Cow::Owned(v.iter().map(|&x| x as f64).collect()),
    }
}

/// The elements of CPU buffers held under write guards, as `T` slices.
fn slices<'a, T: WithDType>(guards: &'a mut [RwLockWriteGuard<'_, Storage>]) -> Result<Vec<&'a mut [T]>> {
    guards
        .iter_mut()
        .map(|g| match &mut **g {
            Storage::Cpu(c) => c.as_mut_slice::<T>(),
            #[allow(unreachable_patterns)]
            _ => Err(Error::invalid("optimizer", "a CPU optimizer buffer is not on the CPU")),
        })
        .collect()
}

/// One fused update of `slot.param` in place.
fn step_one(rule: &OptimRule, slot: &OptimSlot<'_>) -> Result<()> {
    let OptimSlot { name, param: p, grad: g, bufs, master } = *slot;
    let err = |msg: String| Error::tensor("optimizer step", name, msg);
    let range = p.layout().contiguous_range().ok_or_else(|| err("parameter must be contiguous".into()))?;
    // A gradient sharing the parameter's storage is copied first (we hold its write lock below).
    let g_copy;
    let g = if g.same_storage(p) {
        g_copy = Tensor::from_cpu(g.to_cpu_storage()?, g.shape(), None);
        &g_copy
    } else {
        g
    };
    let reads = Reads::new(&[g]);
    let gf = reads.floats(0)?;
    let mut buf_guards: Vec<_> = bufs.iter().map(|b| b.write_storage()).collect();
    let mut master_guard = master.map(|m| m.write_storage());
    let mut guard = p.write_storage();
    #[allow(irrefutable_let_patterns)] // a CUDA arm exists with the `cuda` feature
    let Storage::Cpu(ps) = &mut *guard
    else {
        return Err(err("the parameter is not on the CPU".into()));
    };
    let master = match master_guard.as_deref_mut() {
        Some(Storage::Cpu(CpuStorage::F32(m))) => Some(m.as_mut_slice()),
        Some(_) => return Err(err("the master copy is not an f32 CPU buffer".into())),
        None => None,
    };
    match (ps, master) {
        (CpuStorage::F64(v), None) => {
            fused_update(&mut v[range], &as_f64(&gf), &mut slices::<f64>(&mut buf_guards)?, LowCopy::None, rule)
        }
        (CpuStorage::F32(v), None) => {
            fused_update(&mut v[range], &as_f32(&gf), &mut slices::<f32>(&mut buf_guards)?, LowCopy::None, rule)
        }
        (CpuStorage::BF16(v), Some(m)) => {
            fused_update(m, &as_f32(&gf), &mut slices::<f32>(&mut buf_guards)?, LowCopy::Bf16(&mut v[range]), rule)
        }
        (CpuStorage::F16(v), Some(m)) => {
            fused_update(m, &as_f32(&gf), &mut slices::<f32>(&mut buf_guards)?, LowCopy::F16(&mut v[range]), rule)
        }
        (ps, _) => {
            return Err(err(format!("no update for a {} parameter with this state", ps.dtype())));
        }
    }
    Ok(())
}

impl backend::Optim for Cpu {
    fn optim_step(&self, rule: &OptimRule, slots: &[OptimSlot<'_>], _cache: &mut OptimCache) -> Result<()> {
        slots.iter().try_for_each(|s| step_one(rule, s))
    }

    fn sum_sq(&self, xs: &[&Tensor]) -> Result<f64> {
        // The sum reaches the host: counted as the one read it is on a GPU.
        crate::counters::host_read();
        let r = Reads::new(xs);
        let mut total = 0.0;
        for i in 0..xs.len() {
            total += match r.floats(i)? {
                Floats::F32(v) => sum_sq(&v),
                Floats::F64(v) => sum_sq(&v),
            };
        }
        Ok(total)
    }
}
