//! CPU kernels for the optimizer step: one fused pass per parameter tensor over the parameter (or
//! its f32 master copy), its gradient and the optimizer's buffers. For bf16/f16 parameters the
//! rounded low-precision copy is written in the same pass, chunk by chunk while the chunk is hot.
//!
//! The update rules follow PyTorch's single-tensor implementations operation for operation (same
//! order of rounding), so f64 results match `torch.optim` to the last few ulps. Gradient clipping
//! happens in the same pass: each gradient element is multiplied by the clip factor as it is read,
//! in the gradient's precision (and rounded to a bf16/f16 gradient's dtype), exactly as scaling the
//! gradient tensor before the step would.

use super::{Cpu, Floats, Reads};
use crate::backend::{self, Clip, OptimCache, OptimSlot, CLIP_EPS};
use crate::dtype::Float;
use crate::kinds::OptimRule;
use crate::{CpuStorage, DType, Device, Error, Result, Storage, Tensor, WithDType};
use half::{bf16, f16};
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

/// An elementwise update rule applied to matching chunks of the parameter, its gradient (each
/// element multiplied by `clip` first, when given) and the optimizer's buffers, writing the
/// updated chunk of `p` into `low` as well when given. All slices have `p.len()` elements.
fn fused_update<T: Float>(
    p: &mut [T],
    (g, clip): (&[T], Option<T>),
    bufs: &mut [&mut [T]],
    low: LowCopy<'_>,
    rule: &OptimRule,
) {
    let n = p.len();
    debug_assert!(g.len() == n && bufs.iter().all(|b| b.len() == n) && !matches!(low.len(), Some(l) if l != n));
    let mut buf_chunks: Vec<std::slice::ChunksMut<'_, T>> = bufs.iter_mut().map(|b| b.chunks_mut(CHUNK)).collect();
    let mut low_chunks: Box<dyn Iterator<Item = LowChunk<'_>> + '_> = match low {
        LowCopy::None => Box::new(std::iter::repeat_with(|| LowChunk::None)),
        LowCopy::Bf16(v) => Box::new(v.chunks_mut(CHUNK).map(LowChunk::Bf16)),
        LowCopy::F16(v) => Box::new(v.chunks_mut(CHUNK).map(LowChunk::F16)),
    };
    let mut jobs: Vec<_> = p
        .chunks_mut(CHUNK)
        .zip(g.chunks(CHUNK))
        .map(|(pc, gc)| {
            let bc: Vec<&mut [T]> = buf_chunks.iter_mut().filter_map(|it| it.next()).collect();
            let lc = low_chunks.next().unwrap_or(LowChunk::None);
            (pc, gc, bc, lc)
        })
        .collect();
    let run = |(pc, gc, bc, lc): &mut (&mut [T], &[T], Vec<&mut [T]>, LowChunk<'_>)| {
        apply(rule, pc, gc, clip, bc);
        lc.write(pc);
    };
    if n >= PAR_MIN {
        super::threads::map_mut(&mut jobs, |_, job| run(job));
    } else {
        jobs.iter_mut().for_each(run);
    }
}

/// The update of one chunk: `p`, `g` (times `clip`, when given) and the buffers' chunks of one
/// length. AdamW as `torch.optim.AdamW` (single-tensor path): `p *= 1 - lr·wd;
/// m = lerp(m, g, 1 - β1); v = β2·v + (1 - β2)·g²; p -= step_size·m / (√v / bc2 + eps)`.
fn apply<T: Float>(rule: &OptimRule, p: &mut [T], g: &[T], clip: Option<T>, bufs: &mut [&mut [T]]) {
    let clipped = |g: T| match clip {
        Some(c) => g * c,
        None => g,
    };
    match *rule {
        OptimRule::AdamW { decay, beta1, beta2, eps, step_size, bias_correction2_sqrt } => {
            let [m, v] = bufs else { return };
            let decay = T::c(decay);
            let w = T::c(1.0 - beta1);
            let one_minus_beta2 = T::c(1.0 - beta2);
            let (beta2, eps, step_size, bc2) = (T::c(beta2), T::c(eps), T::c(step_size), T::c(bias_correction2_sqrt));
            let lerp_low = beta1 > 0.5;
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = clipped(g);
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
                        let g = clipped(g);
                        let d = if with_wd { g + wd * *p } else { g };
                        *b = if first { d } else { *b * mu + d };
                        *p += neg_lr * *b;
                    }
                }
                _ => {
                    for (p, &g) in p.iter_mut().zip(g) {
                        let g = clipped(g);
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
        let chunks: Vec<&[T]> = x.chunks(CHUNK).collect();
        let partial = |c: usize| chunks[c].iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>();
        super::threads::map(chunks.len(), partial).into_iter().sum()
    } else {
        x.iter().map(|&v| v.to_f64() * v.to_f64()).sum()
    }
}

/// `x` rounded to a bf16/f16 gradient's dtype (as storing it there would), else unchanged.
fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_f32(x).to_f32(),
        DType::F16 => f16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// A gradient (of dtype `dtype`, read as `g`) for an f32 update, with the clip factor the update
/// pass still has to apply. A contiguous f32 gradient is borrowed and clipped in the pass; a
/// gradient that had to be converted is clipped during the conversion, in its own precision and
/// rounded to its dtype, exactly as clipping the gradient tensor first would.
fn grad_f32<'a>(g: Floats<'a>, dtype: DType, clip: Option<f64>) -> (Cow<'a, [f32]>, Option<f32>) {
    match g {
        Floats::F32(v) if dtype == DType::F32 => (v, clip.map(|c| c as f32)),
        Floats::F32(mut v) => {
            if let Some(c) = clip.map(|c| c as f32) {
                v.to_mut().iter_mut().for_each(|x| *x = round_to(dtype, *x * c));
            }
            (v, None)
        }
        Floats::F64(v) => (Cow::Owned(v.iter().map(|&x| clip.map_or(x, |c| x * c) as f32).collect()), None),
    }
}

/// A gradient for an f64 update (see [`grad_f32`]).
fn grad_f64<'a>(g: Floats<'a>, dtype: DType, clip: Option<f64>) -> (Cow<'a, [f64]>, Option<f64>) {
    match g {
        Floats::F64(v) => (v, clip),
        Floats::F32(v) => {
            let c = clip.map(|c| c as f32);
            (Cow::Owned(v.iter().map(|&x| c.map_or(x, |c| round_to(dtype, x * c)) as f64).collect()), None)
        }
    }
}

/// The factor the gradients are multiplied by (None: left as they are), from `Σ g²` on the CPU,
/// in f64 as `clip_grad_norm` computes it.
fn clip_factor(clip: &Clip<'_>) -> Result<Option<f64>> {
    let sum = super::host_vec::<f64>(clip.sum_sq)?;
    let &[sum] = &sum[..] else {
        return Err(Error::shapes_note("optimizer step", &[clip.sum_sq.shape()], "the clip norm must be one element"));
    };
    let coef = clip.max_norm / (sum.sqrt() + CLIP_EPS);
    Ok((coef < 1.0).then_some(coef))
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

/// One fused update of `slot.param` in place, its gradient multiplied by `clip` if given.
fn step_one(rule: &OptimRule, slot: &OptimSlot<'_>, clip: Option<f64>) -> Result<()> {
    let OptimSlot { name, param: p, grad: g, bufs, master } = *slot;
    let err = |msg: String| Error::tensor("optimizer step", name, msg);
    let range = p.layout().contiguous_range().ok_or_else(|| err("parameter must be contiguous".into()))?;
    // A gradient sharing the parameter's storage is copied first (we hold its write lock below).
    let g_copy;
    let g = if g.same_storage(p) {
        g_copy = Tensor::from_cpu(super::host_storage(g)?, g.shape(), None);
        &g_copy
    } else {
        g
    };
    let reads = Reads::new(&[g]);
    let (gf, g_dtype) = (reads.floats(0)?, g.dtype());
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
            let (g, c) = grad_f64(gf, g_dtype, clip);
            fused_update(&mut v[range], (&g, c), &mut slices::<f64>(&mut buf_guards)?, LowCopy::None, rule)
        }
        (CpuStorage::F32(v), None) => {
            let (g, c) = grad_f32(gf, g_dtype, clip);
            fused_update(&mut v[range], (&g, c), &mut slices::<f32>(&mut buf_guards)?, LowCopy::None, rule)
        }
        (CpuStorage::BF16(v), Some(m)) => {
            let (g, c) = grad_f32(gf, g_dtype, clip);
            fused_update(m, (&g, c), &mut slices::<f32>(&mut buf_guards)?, LowCopy::Bf16(&mut v[range]), rule)
        }
        (CpuStorage::F16(v), Some(m)) => {
            let (g, c) = grad_f32(gf, g_dtype, clip);
            fused_update(m, (&g, c), &mut slices::<f32>(&mut buf_guards)?, LowCopy::F16(&mut v[range]), rule)
        }
        (ps, _) => {
            return Err(err(format!("no update for a {} parameter with this state", ps.dtype())));
        }
    }
    Ok(())
}

impl backend::Optim for Cpu {
    fn optim_step(
        &self,
        rule: &OptimRule,
        slots: &[OptimSlot<'_>],
        clip: Option<&Clip<'_>>,
        _cache: &mut OptimCache,
    ) -> Result<()> {
        let clip = clip.map(clip_factor).transpose()?.flatten();
        slots.iter().try_for_each(|s| step_one(rule, s, clip))
    }

    fn sum_sq(&self, xs: &[&Tensor], _device: Device) -> Result<Tensor> {
        let r = Reads::new(xs);
        let mut total = 0.0;
        for i in 0..xs.len() {
            total += match r.floats(i)? {
                Floats::F32(v) => sum_sq(&v),
                Floats::F64(v) => sum_sq(&v),
            };
        }
        Ok(super::out_storage(CpuStorage::F64(vec![total]), &[1]))
    }
}
