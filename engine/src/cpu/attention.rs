//! CPU kernels for attention: the reference the CUDA flash kernel is tested against.
//!
//! Inputs arrive heads-first and contiguous: q `[B, Hq, Lq, D]`, k `[B, Hkv, Lk, D]`,
//! v `[B, Hkv, Lk, Dv]`. Work is parallel over (batch, query head); each task walks blocks of
//! `BLOCK_Q` query rows, computes the block's scores against the union of the rows' key ranges
//! with one GEMM, applies the mask and a stable softmax per row, and multiplies by V with a second
//! GEMM. Outputs are written seq-first (`[B, L, H, X]`), the layout the op returns.

use super::{floats, out, sgemm, vmath, Cpu, FloatVec, Floats, Reads};
use crate::backend::{self, BackendState};
use crate::dtype::Float;
use crate::kinds::{AttentionMask, AttnDims, KeyMask};
use crate::{CpuStorage, Error, Layout, Result, Tensor};

const OP: &str = "attention";

/// The elements of a `[B, L, H, X]` tensor in `[B, H, L, X]` order, in compute precision.
fn heads_first<'a>((s, l): (&'a CpuStorage, &Layout)) -> Floats<'a> {
    floats(s, &l.permute(&[0, 2, 1, 3]))
}

impl backend::Attention for Cpu {
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _mask: &AttentionMask,
        keys: &KeyMask,
        dims: &AttnDims,
        scale: f64,
    ) -> Result<(Tensor, Tensor, Option<BackendState>)> {
        let r = Reads::new(&[q, k, v]);
        let (o, l) = match (heads_first(r.get(0)?), heads_first(r.get(1)?), heads_first(r.get(2)?)) {
            (Floats::F32(q), Floats::F32(k), Floats::F32(v)) => {
                let (o, l) = forward(&q, &k, &v, dims, keys, scale);
                (FloatVec::F32(o), FloatVec::F32(l))
            }
            (Floats::F64(q), Floats::F64(k), Floats::F64(v)) => {
                let (o, l) = forward(&q, &k, &v, dims, keys, scale);
                (FloatVec::F64(o), FloatVec::F64(l))
            }
            _ => return Err(Error::invalid(OP, "operands computed in different precisions")),
        };
        let dtype = q.dtype();
        let lse = out(l, dtype.compute(), &[dims.b, dims.hq, dims.lq]);
        Ok((out(o, dtype, &[dims.b, dims.lq, dims.hq, dims.dv]), lse, None))
    }

    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        g: &Tensor,
        lse: &Tensor,
        keys: &KeyMask,
        _state: Option<&BackendState>,
        dims: &AttnDims,
        scale: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        // The output and its gradient in q's compute precision (a bf16 output is read as f32).
        let compute = q.dtype().compute();
        let (o, g) = (o.to_dtype(compute)?, g.to_dtype(compute)?);
        let r = Reads::new(&[q, k, v, &o, &g, lse]);
        let all = (
            heads_first(r.get(0)?),
            heads_first(r.get(1)?),
            heads_first(r.get(2)?),
            heads_first(r.get(3)?),
            heads_first(r.get(4)?),
            r.floats(5)?,
        );
        let (dq, dk, dv) = match all {
            (Floats::F32(q), Floats::F32(k), Floats::F32(v), Floats::F32(o), Floats::F32(g), Floats::F32(l)) => {
                let (a, b, c) = backward(&q, &k, &v, &o, &g, &l, dims, keys, scale);
                (FloatVec::F32(a), FloatVec::F32(b), FloatVec::F32(c))
            }
            (Floats::F64(q), Floats::F64(k), Floats::F64(v), Floats::F64(o), Floats::F64(g), Floats::F64(l)) => {
                let (a, b, c) = backward(&q, &k, &v, &o, &g, &l, dims, keys, scale);
                (FloatVec::F64(a), FloatVec::F64(b), FloatVec::F64(c))
            }
            _ => return Err(Error::invalid(OP, "operands computed in different precisions")),
        };
        Ok((out(dq, q.dtype(), q.shape()), out(dk, k.dtype(), k.shape()), out(dv, v.dtype(), v.shape())))
    }
}

/// Query rows per block: the score block is `BLOCK_Q × Lk`.
const BLOCK_Q: usize = 64;

/// Below this many multiply-adds the (batch, head) loop runs on one thread.
const PAR_MIN_FLOPS: usize = 1 << 16;

/// `dst[m×n] (row stride dst_rs) = (accumulate ? dst : 0) + beta · a[m×k] · b[k×n]`, with `a` and `b`
/// given by row and column strides.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
    (a, a_rs, a_cs): (&[T], usize, usize),
    (b, b_rs, b_cs): (&[T], usize, usize),
    beta: T,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(m, n, dst_rs, 1) < dst.len(), "attention gemm: destination out of bounds");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(T::ZERO);
            }
        }
        return;
    }
    assert!(last(m, k, a_rs, a_cs) < a.len(), "attention gemm: lhs out of bounds");
    assert!(last(k, n, b_rs, b_cs) < b.len(), "attention gemm: rhs out of bounds");
    if T::DTYPE == crate::DType::F32 && sgemm::available() {
        // SAFETY: as below; `T` is f32, so the casts are identities.
        unsafe {
            sgemm::sgemm(
                (m, n, k),
                sgemm::Mat { ptr: a.as_ptr().cast(), rs: a_rs, cs: a_cs },
                sgemm::Mat { ptr: b.as_ptr().cast(), rs: b_rs, cs: b_cs },
                dst.as_mut_ptr().cast(),
                dst_rs,
                accumulate,
                beta.to_f64() as f32,
                false,
            );
        }
        return;
    }
    // SAFETY: the asserts above check that the last element each stride pattern touches lies
    // inside its slice (strides are non-negative, so every other element does too); `dst` is
    // borrowed exclusively.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::ONE,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `row[i] = e^(row[i] − shift)`, returning the sum (sixteen lanes at a time on AVX-512).
fn exp_shift<T: Float>(row: &mut [T], shift: T) -> T {
    if let Some(r) = vmath::f32s_mut(row) {
        // SAFETY: `f32s_mut` returned Some only with AVX-512 available.
        let sum = unsafe { vmath::exp_shift(r, shift.to_f64() as f32) };
        return T::from_f64(sum as f64);
    }
    let mut sum = T::ZERO;
    for x in row.iter_mut() {
        *x = (*x - shift).exp();
        sum += *x;
    }
    sum
}

/// The union `[lo, hi)` of the key ranges of rows `i0..i1` of batch row `b` (empty ranges skipped).
fn block_keys(keys: &KeyMask, dims: &AttnDims, b: usize, i0: usize, i1: usize) -> (usize, usize) {
    let rows = &keys.ranges[b * dims.lq + i0..b * dims.lq + i1];
    rows.iter().filter(|(lo, hi)| lo < hi).fold((usize::MAX, 0), |(l, h), &(lo, hi)| (l.min(lo), h.max(hi)))
}

/// Overwrite `row` (scores of keys `lo..`) with the mask's `-inf` for keys query `i` may not see.
fn mask_row<T: Float>(row: &mut [T], keys: &KeyMask, dims: &AttnDims, b: usize, i: usize, lo: usize) {
    let (rlo, rhi) = keys.ranges[b * dims.lq + i];
    let pad = keys.padding.as_ref().map(|p| &p[b * dims.lk..(b + 1) * dims.lk]);
    for (j, s) in row.iter_mut().enumerate() {
        let key = lo + j;
        if key < rlo || key >= rhi || pad.is_some_and(|p| !p[key]) {
            *s = T::NEG_INFINITY;
        }
    }
}

/// Run `f(b, h, chunks...)` for every (batch, query head) in parallel when the work is big enough.
fn for_each_head<T: Float>(dims: &AttnDims, chunks: Vec<(&mut [T], usize)>, f: impl Fn(usize, &mut [&mut [T]]) + Sync) {
    let n = dims.b * dims.hq;
    // Split each buffer into one chunk per (b, h), then regroup the chunks per task.
    let mut per_task: Vec<Vec<&mut [T]>> = (0..n).map(|_| Vec::with_capacity(chunks.len())).collect();
    for (buf, width) in chunks {
        if width == 0 {
            per_task.iter_mut().for_each(|t| t.push(&mut []));
            continue;
        }
        for (t, c) in per_task.iter_mut().zip(buf.chunks_mut(width)) {
            t.push(c);
        }
    }
    let flops = n * dims.lq * dims.lk * (dims.d + dims.dv);
    if flops >= PAR_MIN_FLOPS {
        super::threads::map_mut(&mut per_task, |bh, c| f(bh, c));
    } else {
        per_task.iter_mut().enumerate().for_each(|(bh, c)| f(bh, c));
    }
}

/// Reorder `[B, H, L, X]` into `[B, L, H, X]`.
fn seq_first<T: Copy>(x: &[T], b: usize, h: usize, l: usize, w: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(x.len());
    for bi in 0..b {
        for li in 0..l {
            for hi in 0..h {
                let at = ((bi * h + hi) * l + li) * w;
                out.extend_from_slice(&x[at..at + w]);
            }
        }
    }
    out
}

/// Forward: `(out [B, Lq, Hq, Dv], lse [B, Hq, Lq])`.
fn forward<T: Float>(q: &[T], k: &[T], v: &[T], dims: &AttnDims, keys: &KeyMask, scale: f64) -> (Vec<T>, Vec<T>) {
    let AttnDims { lq, lk, hq, hkv, d, dv, .. } = *dims;
    let group = hq / hkv;
    let scale = T::c(scale);
    let mut out = super::filled(dims.b * hq * lq * dv, T::ZERO);
    let mut lse = super::filled(dims.b * hq * lq, T::NEG_INFINITY);
    for_each_head(dims, vec![(&mut out, lq * dv), (&mut lse, lq)], |bh, bufs| {
        let (b, h) = (bh / hq, bh % hq);
        let kvh = b * hkv + h / group;
        let qs = &q[bh * lq * d..(bh + 1) * lq * d];
        let ks = &k[kvh * lk * d..(kvh + 1) * lk * d];
        let vs = &v[kvh * lk * dv..(kvh + 1) * lk * dv];
        let [o, l] = bufs else { unreachable!("two buffers per task") };
        let mut s = vec![T::ZERO; BLOCK_Q.min(lq) * lk];
        for i0 in (0..lq).step_by(BLOCK_Q) {
            let i1 = (i0 + BLOCK_Q).min(lq);
            let m = i1 - i0;
            let (lo, hi) = block_keys(keys, dims, b, i0, i1);
            if lo >= hi {
                continue;
            }
            let n = hi - lo;
            let s = &mut s[..m * n];
            // S = scale · Q_blk K[lo..hi]ᵀ
            gemm((m, n, d), s, n, false, (&qs[i0 * d..], d, 1), (&ks[lo * d..], 1, d), scale);
            for (r, row) in s.chunks_mut(n).enumerate() {
                mask_row(row, keys, dims, b, i0 + r, lo);
                let max = row.iter().fold(T::NEG_INFINITY, |a, &x| a.max(x));
                if max == T::NEG_INFINITY {
                    row.fill(T::ZERO);
                    continue;
                }
                let sum = exp_shift(row, max);
                let inv = T::ONE / sum;
                row.iter_mut().for_each(|x| *x *= inv);
                l[i0 + r] = max + sum.ln();
            }
            // O_blk = P V[lo..hi]
            gemm((m, dv, n), &mut o[i0 * dv..], dv, false, (s, n, 1), (&vs[lo * dv..], dv, 1), T::ONE);
        }
    });
    (seq_first(&out, dims.b, hq, lq, dv), lse)
}

/// Backward from the saved lse: `(dq [B, Lq, Hq, D], dk [B, Lk, Hkv, D], dv [B, Lk, Hkv, Dv])`.
/// `o` and `g` are the output and its gradient, heads-first `[B, Hq, Lq, Dv]`.
#[allow(clippy::too_many_arguments)]
fn backward<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    g: &[T],
    lse: &[T],
    dims: &AttnDims,
    keys: &KeyMask,
    scale: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let AttnDims { b: nb, lq, lk, hq, hkv, d, dv } = *dims;
    let group = hq / hkv;
    let scale = T::c(scale);
    let mut dq = super::filled(nb * hq * lq * d, T::ZERO);
    // Per query head dK/dV, summed over each group afterwards (every task owns its own slice).
    let mut dk_h = super::filled(nb * hq * lk * d, T::ZERO);
    let mut dv_h = super::filled(nb * hq * lk * dv, T::ZERO);
    for_each_head(dims, vec![(&mut dq, lq * d), (&mut dk_h, lk * d), (&mut dv_h, lk * dv)], |bh, bufs| {
        let (b, h) = (bh / hq, bh % hq);
        let kvh = b * hkv + h / group;
        let qs = &q[bh * lq * d..(bh + 1) * lq * d];
        let os = &o[bh * lq * dv..(bh + 1) * lq * dv];
        let gs = &g[bh * lq * dv..(bh + 1) * lq * dv];
        let ls = &lse[bh * lq..(bh + 1) * lq];
        let ks = &k[kvh * lk * d..(kvh + 1) * lk * d];
        let vs = &v[kvh * lk * dv..(kvh + 1) * lk * dv];
        let [dq, dk, dvv] = bufs else { unreachable!("three buffers per task") };
        let cap = BLOCK_Q.min(lq) * lk;
        let (mut p, mut ds) = (vec![T::ZERO; cap], vec![T::ZERO; cap]);
        for i0 in (0..lq).step_by(BLOCK_Q) {
            let i1 = (i0 + BLOCK_Q).min(lq);
            let m = i1 - i0;
            let (lo, hi) = block_keys(keys, dims, b, i0, i1);
            if lo >= hi {
                continue;
            }
            let n = hi - lo;
            let (p, ds) = (&mut p[..m * n], &mut ds[..m * n]);
            let q_blk = (&qs[i0 * d..], d, 1);
            let g_blk = (&gs[i0 * dv..], dv, 1);
            // P = exp(scale · Q Kᵀ − lse), zero where masked or where the row sees no key.
            gemm((m, n, d), p, n, false, q_blk, (&ks[lo * d..], 1, d), scale);
            for (r, row) in p.chunks_mut(n).enumerate() {
                let l = ls[i0 + r];
                mask_row(row, keys, dims, b, i0 + r, lo);
                if l == T::NEG_INFINITY {
                    row.fill(T::ZERO);
                } else {
                    exp_shift(row, l);
                }
            }
            // dV += Pᵀ dO
            gemm((n, dv, m), &mut dvv[lo * dv..], dv, true, (p, 1, n), g_blk, T::ONE);
            // dP = dO Vᵀ, then dS = P ∘ (dP − D) with Dᵢ = Σ dOᵢ·Oᵢ.
            gemm((m, n, dv), ds, n, false, g_blk, (&vs[lo * dv..], 1, dv), T::ONE);
            for r in 0..m {
                let i = i0 + r;
                let di: T = gs[i * dv..(i + 1) * dv].iter().zip(&os[i * dv..(i + 1) * dv]).map(|(&a, &b)| a * b).sum();
                for (s, &pv) in ds[r * n..(r + 1) * n].iter_mut().zip(&p[r * n..(r + 1) * n]) {
                    *s = pv * (*s - di);
                }
            }
            // dQ = scale · dS K ; dK += scale · dSᵀ Q
            gemm((m, d, n), &mut dq[i0 * d..], d, false, (ds, n, 1), (&ks[lo * d..], d, 1), scale);
            gemm((n, d, m), &mut dk[lo * d..], d, true, (ds, 1, n), q_blk, scale);
        }
    });
    let sum_groups = |x: Vec<T>, w: usize| -> Vec<T> {
        if group == 1 {
            return seq_first(&x, nb, hkv, lk, w);
        }
        let per = lk * w;
        let mut acc = super::filled(nb * hkv * per, T::ZERO);
        for (bh, chunk) in x.chunks(per.max(1)).enumerate().take(nb * hq) {
            let (b, h) = (bh / hq, bh % hq);
            let dst = &mut acc[(b * hkv + h / group) * per..][..per];
            dst.iter_mut().zip(chunk).for_each(|(a, &c)| *a += c);
        }
        seq_first(&acc, nb, hkv, lk, w)
    };
    (seq_first(&dq, nb, hq, lq, d), sum_groups(dk_h, d), sum_groups(dv_h, dv))
}
