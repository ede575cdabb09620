//! Scaled dot-product attention as one fused autograd op, with masks (full, causal, prefix-LM,
//! block-diagonal segments), optional key padding and GQA/MQA; plus its composite twin built from
//! primitive ops.
//!
//! Layout is `[batch, seq, heads, head_dim]`: q `[B, Lq, Hq, D]`, k `[B, Lk, Hkv, D]`,
//! v `[B, Lk, Hkv, Dv]`, out `[B, Lq, Hq, Dv]`, lse `[B, Hq, Lq]`. Query head `h` reads kv head
//! `h / (Hq / Hkv)`; repeated K/V are never materialised. Every mask kind gives each query row a
//! contiguous range of keys (then thinned by key padding), which is what the kernels consume.
//!
//! Backward is one fused primitive from the saved log-sum-exp: `P = exp(S·scale − lse)`,
//! `dV = Pᵀ dO`, `dP = dO Vᵀ`, `Dᵢ = Σ dOᵢ·Oᵢ`, `dS = P∘(dP − D)`, `dQ = scale·dS K`,
//! `dK = scale·dSᵀ Q`, with dK and dV summed over the query heads of a group.

use crate::autograd::{BackwardOp, Grads, Op};
use crate::backend::BackendState;
use crate::kinds::{AttentionMask, AttnDims, KeyMask};
use crate::{DType, Error, Result, Tensor};

pub(crate) const NAMES: &[&str] = &["attention"];

pub(crate) struct AttentionOp {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    keys: KeyMask,
    /// `[B, Hq, Lq]`, in compute precision (f32, or f64 for f64 inputs).
    lse: Tensor,
    scale: f64,
    /// What the backend's forward kept for its backward (the CUDA mask tables).
    state: Option<BackendState>,
}

/// The attention output and the per-row log-sum-exp of the scaled, masked scores (what the
/// backward needs); `lse` is `-inf` for rows that see no key, whose output is zero.
#[derive(Clone, Debug)]
pub struct AttentionOutput {
    pub out: Tensor,
    pub lse: Tensor,
}

const OP: &str = "attention";

/// A key-padding mask read to the host once: `[batch, kv_seq]`, true for real keys.
#[derive(Clone, Debug)]
struct KeyPadding {
    shape: [usize; 2],
    real: std::sync::Arc<[bool]>,
}

impl KeyPadding {
    fn read(p: &Tensor) -> Result<KeyPadding> {
        if !matches!(p.dtype(), DType::U8 | DType::I64) {
            return Err(Error::dtype(OP, p.dtype(), "key_padding must be u8 or i64 (nonzero = real key)"));
        }
        let &[b, l] = p.shape() else {
            return Err(Error::shapes_note(OP, &[p.shape()], "key_padding must be [batch, kv_seq]"));
        };
        let real: Vec<bool> = p.to_vec::<i64>()?.into_iter().map(|x| x != 0).collect();
        Ok(KeyPadding { shape: [b, l], real: real.into() })
    }
}

/// Which keys each query sees, resolved once for every attention call of a forward pass: the
/// mask kind and the key padding, read to the host here (one read) rather than in every layer.
///
/// ```
/// use vlm4vla_engine::{AttentionKeys, AttentionMask, Device, DType, Tensor};
/// let pad = Tensor::from_vec(vec![0u8, 1, 1], &[1, 3], Device::Cpu).unwrap();
/// let keys = AttentionKeys::new(AttentionMask::Causal, Some(&pad)).unwrap();
/// let q = Tensor::rand_normal(0., 1., &[1, 3, 2, 4], DType::F32, Device::Cpu, 0).unwrap();
/// let a = q.attention_with(&q, &q, &keys, 0.5).unwrap();
/// let b = q.attention(&q, &q, &AttentionMask::Causal, Some(&pad), 0.5).unwrap();
/// assert_eq!(a.out.to_vec::<f32>().unwrap(), b.out.to_vec::<f32>().unwrap());
/// ```
#[derive(Clone, Debug)]
pub struct AttentionKeys {
    mask: AttentionMask,
    padding: Option<KeyPadding>,
}

impl AttentionKeys {
    /// `key_padding` is `[batch, kv_seq]` u8 or i64, nonzero for real keys.
    pub fn new(mask: AttentionMask, key_padding: Option<&Tensor>) -> Result<AttentionKeys> {
        Ok(AttentionKeys { mask, padding: key_padding.map(KeyPadding::read).transpose()? })
    }

    pub fn mask(&self) -> &AttentionMask {
        &self.mask
    }

    /// These keys for the last `rows` query rows of a `len`-long self-attention only: keys for
    /// a `rows × len` attention (queries bottom-right aligned) giving each of those rows the
    /// keys it sees here, padding included. What a last layer that computes only the rows read
    /// after it needs. `None` where no mask kind expresses them: block-diagonal segments, or a
    /// prefix reaching past the first kept row, or `rows > len`.
    ///
    /// ```
    /// use vlm4vla_engine::{AttentionKeys, AttentionMask, Device, DType, Tensor};
    /// let pad = Tensor::from_vec(vec![0u8, 1, 1, 1], &[1, 4], Device::Cpu).unwrap();
    /// let keys = AttentionKeys::new(AttentionMask::PrefixLm(vec![3]), Some(&pad)).unwrap();
    /// let x = Tensor::rand_normal(0., 1., &[1, 4, 2, 4], DType::F32, Device::Cpu, 0).unwrap();
    /// let all = x.attention_with(&x, &x, &keys, 0.5).unwrap().out;
    /// let last = x.narrow(1, 2, 2).unwrap().attention_with(&x, &x, &keys.last_rows(4, 2).unwrap(), 0.5).unwrap().out;
    /// assert_eq!(last.to_vec::<f32>().unwrap(), all.narrow(1, 2, 2).unwrap().to_vec::<f32>().unwrap());
    /// assert!(keys.last_rows(4, 3).is_none()); // row 1 sees key 2, inside its prefix
    /// ```
    pub fn last_rows(&self, len: usize, rows: usize) -> Option<AttentionKeys> {
        let first = len.checked_sub(rows)?;
        let mask = match &self.mask {
            AttentionMask::Full => AttentionMask::Full,
            AttentionMask::Causal => AttentionMask::Causal,
            // Row `g` sees keys `j ≤ g` and `j < p`: the causal range wherever `p ≤ g + 1`.
            AttentionMask::PrefixLm(prefix) if prefix.iter().all(|&p| p <= first + 1) => AttentionMask::Causal,
            AttentionMask::PrefixLm(_) | AttentionMask::Segments(_) => return None,
        };
        Some(AttentionKeys { mask, padding: self.padding.clone() })
    }
}

/// Check shapes and dtypes; resolve the mask into per-row key ranges.
fn prepare(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    key_padding: Option<&KeyPadding>,
    scale: f64,
) -> Result<(AttnDims, KeyMask)> {
    Tensor::same_dtype_device(OP, &[q, k, v])?;
    if !q.dtype().is_float() {
        return Err(Error::dtype(OP, q.dtype(), "q, k and v must be float tensors"));
    }
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if qs.len() != 4 || ks.len() != 4 || vs.len() != 4 {
        return Err(Error::shapes_note(OP, &[qs, ks, vs], "q, k, v must be rank 4 [batch, seq, heads, head_dim]"));
    }
    let dims = AttnDims::of(qs, ks, vs);
    if ks[0] != dims.b || vs[0] != dims.b {
        return Err(Error::shapes_note(OP, &[qs, ks, vs], "batch sizes differ"));
    }
    if ks[3] != dims.d {
        return Err(Error::shapes_note(OP, &[qs, ks, vs], "q and k head dims differ"));
    }
    if vs[1] != dims.lk || vs[2] != dims.hkv {
        return Err(Error::shapes_note(OP, &[qs, ks, vs], "k and v differ in sequence length or heads"));
    }
    if dims.hkv == 0 || !dims.hq.is_multiple_of(dims.hkv) {
        return Err(Error::shapes_note(
            OP,
            &[qs, ks, vs],
            format!("query heads {} not a multiple of kv heads {}", dims.hq, dims.hkv),
        ));
    }
    if !scale.is_finite() {
        return Err(Error::invalid(OP, format!("scale {scale} is not finite")));
    }
    let padding = match key_padding {
        None => None,
        Some(p) => {
            if p.shape != [dims.b, dims.lk] {
                return Err(Error::shapes_note(OP, &[qs, ks, &p.shape], "key_padding must be [batch, kv_seq]"));
            }
            Some(p.real.clone())
        }
    };
    let ranges = key_ranges(mask, &dims, qs, ks)?;
    Ok((dims, KeyMask { ranges, padding }))
}

/// The key range `[lo, hi)` of every (batch, query) row, validating the mask's parameters.
fn key_ranges(mask: &AttentionMask, dims: &AttnDims, qs: &[usize], ks: &[usize]) -> Result<Vec<(usize, usize)>> {
    let (b, lq, lk) = (dims.b, dims.lq, dims.lk);
    let same_len = || {
        if lq == lk {
            Ok(())
        } else {
            Err(Error::shapes_note(OP, &[qs, ks], "this mask needs equal query and key lengths"))
        }
    };
    let mut ranges = Vec::with_capacity(b * lq);
    match mask {
        AttentionMask::Full => ranges.resize(b * lq, (0, lk)),
        AttentionMask::Causal => {
            for _ in 0..b {
                // Query i sees keys j ≤ i + lk − lq, i.e. j < i + 1 + lk − lq (empty when negative).
                ranges.extend((0..lq).map(|i| (0, (i + 1 + lk).saturating_sub(lq).min(lk))));
            }
        }
        AttentionMask::PrefixLm(prefix) => {
            same_len()?;
            if prefix.len() != b {
                return Err(Error::invalid(OP, format!("{} prefix lengths for batch {b}", prefix.len())));
            }
            if let Some(p) = prefix.iter().find(|&&p| p > lk) {
                return Err(Error::invalid(OP, format!("prefix length {p} exceeds sequence length {lk}")));
            }
            for &p in prefix {
                ranges.extend((0..lq).map(|i| (0, (i + 1).max(p))));
            }
        }
        AttentionMask::Segments(cu) => {
            same_len()?;
            let valid = cu.first() == Some(&0) && cu.last() == Some(&lq) && cu.windows(2).all(|w| w[0] <= w[1]);
            if !valid {
                return Err(Error::invalid(
                    OP,
                    format!("cumulative segment lengths {cu:?} must start at 0, not decrease and end at {lq}"),
                ));
            }
            let mut row = Vec::with_capacity(lq);
            for w in cu.windows(2) {
                row.extend((w[0]..w[1]).map(|_| (w[0], w[1])));
            }
            for _ in 0..b {
                ranges.extend_from_slice(&row);
            }
        }
    }
    Ok(ranges)
}

/// Fused scaled dot-product attention: `softmax(q kᵀ · scale + mask) v` per head, computed with a
/// stable softmax in f32 (f64 for f64 inputs).
///
/// Shapes: q `[B, Lq, Hq, D]`, k `[B, Lk, Hkv, D]`, v `[B, Lk, Hkv, Dv]` (any strided views) with
/// `Hq % Hkv == 0`; `key_padding` is `[B, Lk]` u8 or i64, nonzero for real keys. Returns out
/// `[B, Lq, Hq, Dv]` in q's dtype and lse `[B, Hq, Lq]` (f32, or f64 for f64 inputs; it has no
/// backward rule: a loss that uses it fails at `backward` with `Error::NoBackward`). Rows that see no key get a zero output, `lse = -inf` and zero gradients.
///
/// ```
/// use vlm4vla_engine::{AttentionMask, Device, DType, Tensor};
/// let q = Tensor::rand_normal(0., 1., &[1, 3, 2, 4], DType::F32, Device::Cpu, 0).unwrap();
/// let k = Tensor::rand_normal(0., 1., &[1, 3, 1, 4], DType::F32, Device::Cpu, 1).unwrap();
/// let a = q.attention(&k, &k, &AttentionMask::Causal, None, 0.5).unwrap();
/// assert_eq!(a.out.shape(), &[1, 3, 2, 4]);
/// assert_eq!(a.lse.shape(), &[1, 2, 3]);
/// ```
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    key_padding: Option<&Tensor>,
    scale: f64,
) -> Result<AttentionOutput> {
    attention_with(q, k, v, &AttentionKeys::new(mask.clone(), key_padding)?, scale)
}

/// [`attention`] with the mask and key padding resolved beforehand ([`AttentionKeys`]), so the
/// layers of one forward pass share one read of the padding.
pub fn attention_with(q: &Tensor, k: &Tensor, v: &Tensor, keys: &AttentionKeys, scale: f64) -> Result<AttentionOutput> {
    let mask = &keys.mask;
    let (dims, keys) = prepare(q, k, v, mask, keys.padding.as_ref(), scale)?;
    let (out, lse, state) = q.backend().attention(q, k, v, mask, &keys, &dims, scale)?;
    crate::counters::flops(attention_flops(&dims));
    let out = out.recorded(&[q, k, v], || {
        Op::Attention(AttentionOp { q: q.clone(), k: k.clone(), v: v.clone(), keys, lse: lse.clone(), scale, state })
    });
    Ok(AttentionOutput { out, lse: lse_output(lse, q, k, v) })
}

/// The forward's score and value products over every score, masked or not (as
/// `torch.utils.flop_counter` counts SDPA): `2·B·Hq·Lq·Lk·(D + Dv)`.
fn attention_flops(d: &AttnDims) -> u64 {
    2 * (d.b * d.hq * d.lq * d.lk * (d.d + d.dv)) as u64
}

/// The returned lse is recorded without a backward rule, so using it in a loss is an error at
/// backward time rather than a silently missing gradient.
fn lse_output(lse: Tensor, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    lse.view_with(
        lse.layout().clone(),
        crate::autograd::record(&[q, k, v], || {
            Op::NoBackward(crate::autograd::NoBackwardOp {
                name: "attention_lse",
                inputs: vec![q.clone(), k.clone(), v.clone()],
            })
        }),
    )
}

/// The composite twin of [`attention`], from primitive ops (permute, matmul, scale, an additive
/// and a 0/1 mask tensor, max_keepdim, exp, sum_keepdim, div; GQA by broadcasting K/V heads).
/// Rows that see no key come out as zeros, like the fused op. Returns only the output
/// `[B, Lq, Hq, Dv]`; tests compare it (forward and gradients) with the fused op.
pub fn attention_composite(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    key_padding: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let padding = key_padding.map(KeyPadding::read).transpose()?;
    let (dims, keys) = prepare(q, k, v, mask, padding.as_ref(), scale)?;
    let AttnDims { b, lq, lk, hq, hkv, d, dv } = dims;
    let group = hq / hkv;
    let dtype = q.dtype();
    // [B, L, H, X] → [B, H, L, X]; kv heads repeated per group by a broadcast (whose backward sums).
    let repeat = |t: &Tensor, x: usize| -> Result<Tensor> {
        t.permute(&[0, 2, 1, 3])?
            .reshape(&[b, hkv, 1, lk, x])?
            .broadcast_as(&[b, hkv, group, lk, x])?
            .reshape(&[b, hq, lk, x])
    };
    let qh = q.permute(&[0, 2, 1, 3])?;
    let kh = repeat(k, d)?;
    let vh = repeat(v, dv)?;
    let scores = qh.matmul(&kh.t()?)?.scale(scale)?;
    let mut additive = vec![0f64; b * lq * lk];
    let mut allowed = vec![0f64; b * lq * lk];
    let mut empty = vec![1f64; b * lq];
    for bi in 0..b {
        for i in 0..lq {
            for j in 0..lk {
                let at = (bi * lq + i) * lk + j;
                if keys.allows(&dims, bi, i, j) {
                    allowed[at] = 1.0;
                    empty[bi * lq + i] = 0.0;
                } else {
                    additive[at] = -1e30;
                }
            }
        }
    }
    let constant = |data: Vec<f64>, shape: &[usize]| -> Result<Tensor> {
        Tensor::from_vec(data, shape, q.device())?.to_dtype(dtype)
    };
    let additive = constant(additive, &[b, 1, lq, lk])?;
    let allowed = constant(allowed, &[b, 1, lq, lk])?;
    let empty = constant(empty, &[b, 1, lq, 1])?;
    let masked = scores.add(&additive)?;
    let max = masked.max_keepdim(3)?.detach();
    let e = masked.sub(&max)?.exp()?.mul(&allowed)?;
    // Empty rows: e is all zero; adding 1 to their denominator keeps them at 0 instead of NaN.
    let p = e.div(&e.sum_keepdim(3)?.add(&empty)?)?;
    p.matmul(&vh)?.permute(&[0, 2, 1, 3])
}

impl Tensor {
    /// Fused attention with `self` as the queries; see [`attention`].
    pub fn attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        mask: &AttentionMask,
        key_padding: Option<&Tensor>,
        scale: f64,
    ) -> Result<AttentionOutput> {
        attention(self, k, v, mask, key_padding, scale)
    }

    /// Fused attention with `self` as the queries and keys resolved beforehand; see
    /// [`attention_with`].
    pub fn attention_with(&self, k: &Tensor, v: &Tensor, keys: &AttentionKeys, scale: f64) -> Result<AttentionOutput> {
        attention_with(self, k, v, keys, scale)
    }

    /// The composite twin with `self` as the queries; see [`attention_composite`].
    pub fn attention_composite(
        &self,
        k: &Tensor,
        v: &Tensor,
        mask: &AttentionMask,
        key_padding: Option<&Tensor>,
        scale: f64,
    ) -> Result<Tensor> {
        attention_composite(self, k, v, mask, key_padding, scale)
    }
}

impl BackwardOp for AttentionOp {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn inputs(&self) -> Vec<&Tensor> {
        vec![&self.q, &self.k, &self.v]
    }

    fn backward(&self, out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        let (q, k, v) = (&self.q, &self.k, &self.v);
        let dims = AttnDims::of(q.shape(), k.shape(), v.shape());
        // Four products (dV, dP, dQ, dK) against the forward's two.
        crate::counters::flops(2 * attention_flops(&dims));
        let (dq, dk, dv) = q.backend().attention_backward(
            q,
            k,
            v,
            out,
            grad,
            &self.lse,
            &self.keys,
            self.state.as_ref(),
            &dims,
            self.scale,
        )?;
        for (t, d) in [(q, dq), (k, dk), (v, dv)] {
            if t.tracks_grad() {
                grads.add(t, d)?;
            }
        }
        Ok(())
    }
}
