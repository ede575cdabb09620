//! CPU kernels for the optimizer step: one fused pass per parameter tensor over the parameter (or
//! its f32 master copy), its gradient and the optimizer's buffers. For bf16/f16 parameters the
//! rounded low-precision copy is written in the same pass, chunk by chunk while the chunk is hot.
//!
//! The update rules follow PyTorch's single-tensor implementations operation for operation (same
//! order of rounding), so f64 results match `torch.optim` to the last few ulps.

use crate::dtype::Float;
use half::{bf16, f16};
use rayon::prelude::*;

/// Elements per chunk of work; tensors of fewer than `PAR_MIN` elements stay on this thread.
const CHUNK: usize = 1 << 14;
const PAR_MIN: usize = 1 << 15;

/// The low-precision parameter written from the master copy, if any.
pub(crate) enum LowCopy<'a> {
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
/// rule's buffers (`bufs[k]` is the chunk of buffer `k`).
pub(crate) trait UpdateRule: Sync {
    fn apply<T: Float>(&self, p: &mut [T], g: &[T], bufs: &mut [&mut [T]]);
    /// The `optim.cu` kernel of this rule and its hyper-parameters for one step.
    #[cfg(feature = "cuda")]
    fn cuda_params(&self) -> (&'static str, vlm4vla_kernels::params::OptimParams);
}

/// Run `rule` over `p`, `g` and `bufs` in chunks (in parallel for large tensors), writing each
/// updated chunk of `p` into `low` as well when given. All slices have `p.len()` elements.
pub(crate) fn fused_update<T: Float, R: UpdateRule>(
    p: &mut [T],
    g: &[T],
    bufs: &mut [Vec<T>],
    low: LowCopy<'_>,
    rule: &R,
) {
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
        rule.apply(pc, gc, &mut bc);
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
/// p -= (lr / (1 - β1^t))·m / (√v / √(1 - β2^t) + ε)`. Buffers: `[m, v]`.
pub(crate) struct AdamWRule {
    pub decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub step_size: f64,
    pub bias_correction2_sqrt: f64,
}

impl UpdateRule for AdamWRule {
    #[cfg(feature = "cuda")]
    fn cuda_params(&self) -> (&'static str, vlm4vla_kernels::params::OptimParams) {
        // The kernel decays by 1 - lr·wd: lr 1 and wd 1 - decay give this step's factor.
        let p = vlm4vla_kernels::params::OptimParams {
            lr: 1.0,
            weight_decay: (1.0 - self.decay) as f32,
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            eps: self.eps as f32,
            step_size: self.step_size as f32,
            bc2_sqrt: self.bias_correction2_sqrt as f32,
            ..Default::default()
        };
        ("adamw", p)
    }

    fn apply<T: Float>(&self, p: &mut [T], g: &[T], bufs: &mut [&mut [T]]) {
        let [m, v] = bufs else { return };
        let decay = T::c(self.decay);
        let w = T::c(1.0 - self.beta1);
        let beta2 = T::c(self.beta2);
        let one_minus_beta2 = T::c(1.0 - self.beta2);
        let eps = T::c(self.eps);
        let step_size = T::c(self.step_size);
        let bc2 = T::c(self.bias_correction2_sqrt);
        let lerp_low = self.beta1 > 0.5;
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let decayed = *p * decay;
            // torch's lerp: start + w·(end − start) for |w| < 0.5, else end − (end − start)·(1 − w).
            *m = if lerp_low { *m + w * (g - *m) } else { g - (g - *m) * (T::ONE - w) };
            *v = *v * beta2 + one_minus_beta2 * g * g;
            let denom = v.sqrt() / bc2 + eps;
            *p = decayed - step_size * *m / denom;
        }
    }
}

/// SGD with momentum for one step of one tensor, as `torch.optim.SGD` with dampening 0 and no
/// Nesterov: `d = g + wd·p; buf = d` on the first step, else `buf = μ·buf + d`; `p -= lr·buf`.
/// Buffers: `[buf]` with momentum, none without (then `p -= lr·d`).
pub(crate) struct SgdRule {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub first: bool,
}

impl UpdateRule for SgdRule {
    #[cfg(feature = "cuda")]
    fn cuda_params(&self) -> (&'static str, vlm4vla_kernels::params::OptimParams) {
        let p = vlm4vla_kernels::params::OptimParams {
            lr: self.lr as f32,
            beta1: self.momentum as f32,
            weight_decay: self.weight_decay as f32,
            first: self.first as i32,
            ..Default::default()
        };
        ("sgd", p)
    }

    fn apply<T: Float>(&self, p: &mut [T], g: &[T], bufs: &mut [&mut [T]]) {
        let neg_lr = T::c(-self.lr);
        let wd = T::c(self.weight_decay);
        let mu = T::c(self.momentum);
        let with_wd = self.weight_decay != 0.0;
        match bufs {
            [buf] => {
                for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
                    let d = if with_wd { g + wd * *p } else { g };
                    *b = if self.first { d } else { *b * mu + d };
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

/// `Σ x²` accumulated in f64.
pub(crate) fn sum_sq<T: Float>(x: &[T]) -> f64 {
    if x.len() >= PAR_MIN {
        x.par_chunks(CHUNK).map(|c| c.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>()).sum()
    } else {
        x.iter().map(|&v| v.to_f64() * v.to_f64()).sum()
    }
}
