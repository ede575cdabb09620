//! CUDA launchers of `attention.cu` (the simple correct kernels: online softmax, never the score
//! matrix; a backward for dK/dV and one for dQ, recomputing probabilities from the saved lse).
//! Tensors stay `[B, L, H, X]` and reach the kernels through (batch, head, seq) strides.
//! bf16 calls whose shape the tensor-core kernels of `flash_attention.cu` take (head dim a
//! multiple of 8 up to 256, equal for q/k and v, 16-byte aligned rows) run those instead, with
//! the same semantics; f32 and every other shape run the simple kernels.

use super::launch::{ATTENTION_BWD, ATTENTION_DQ, ATTENTION_FWD};
use super::{contig, dev_of, fast_kernels, ptr, tensor, Cuda, CudaDevice, CudaStorage, Geometry};
use crate::backend::{self, BackendState};
use crate::kinds::{AttentionMask, AttnDims, KeyMask};
use crate::{DType, Error, Result, Tensor};
use std::sync::Arc;
use vlm4vla_kernels::launch::{self as geom, FlashShape, Launch};
use vlm4vla_kernels::params::{AttnParams, Strides, ATT_MAX_D, ATT_WARPS};

/// The flash kernels' shape when they take this call (bf16, supported head dim, aligned strides
/// and pointers), else None.
fn flash_shape(dtype: DType, p: &AttnParams, ptrs: &[u64]) -> Option<FlashShape> {
    if dtype != DType::BF16 || !fast_kernels() {
        return None;
    }
    let s = FlashShape::from_params(p, ptrs);
    geom::flash_supported(&s).then_some(s)
}

fn flash_geom(
    f: fn(&FlashShape) -> std::result::Result<Launch, vlm4vla_kernels::Error>,
    s: &FlashShape,
) -> Result<Launch> {
    f(s).map_err(|e| Error::invalid("attention", e.to_string()))
}

/// The mask as the kernels read it: a kind, its i64 table (prefix lengths or cumulative segment
/// lengths) and the u8 key padding, on the device.
pub(crate) struct MaskData {
    kind: i32,
    n_segments: i32,
    data: Option<CudaStorage>,
    padding: Option<CudaStorage>,
}

pub(crate) fn mask_data(dev: &Arc<CudaDevice>, mask: &AttentionMask, padding: Option<&[bool]>) -> Result<MaskData> {
    let op = "attention";
    let kind = mask.code();
    let table = match mask {
        AttentionMask::Full | AttentionMask::Causal => None,
        AttentionMask::PrefixLm(t) | AttentionMask::Segments(t) => Some(t),
    };
    let n_segments = match mask {
        AttentionMask::Segments(cu) => cu.len().saturating_sub(1) as i32,
        _ => 0,
    };
    let data = table.map(|t| dev.upload_i64(op, t.iter().map(|&x| x as i64).collect())).transpose()?;
    let padding =
        padding.map(|p| dev.upload(op, &crate::CpuStorage::U8(p.iter().map(|&x| x as u8).collect()))).transpose()?;
    Ok(MaskData { kind, n_segments, data, padding })
}

/// (batch, head, seq) strides of a `[B, L, H, X]` tensor with a contiguous last dim.
fn strides(t: &Tensor) -> Strides {
    let s = t.layout().strides();
    Strides { b: s[0] as i64, h: s[2] as i64, l: s[1] as i64 }
}

/// `t` with a unit-stride last dim (a copy only when needed).
fn rows(t: &Tensor) -> Result<Tensor> {
    if t.layout().strides()[3] == 1 || t.shape()[3] <= 1 {
        Ok(t.clone())
    } else {
        contig(t)
    }
}

fn base_params(dims: &AttnDims, mask: &MaskData, scale: f64) -> Result<AttnParams> {
    if dims.d > ATT_MAX_D || dims.dv > ATT_MAX_D {
        return Err(Error::invalid("attention", format!("the CUDA kernels take head dims up to {ATT_MAX_D}")));
    }
    let int = |v: usize| i32::try_from(v).map_err(|_| Error::invalid("attention", format!("size {v} is too large")));
    Ok(AttnParams {
        mask_data: mask.data.as_ref().map_or(0, |d| d.ptr_at(0)),
        key_padding: mask.padding.as_ref().map_or(0, |d| d.ptr_at(0)),
        b: int(dims.b)?,
        hq: int(dims.hq)?,
        hkv: int(dims.hkv)?,
        lq: int(dims.lq)?,
        lk: int(dims.lk)?,
        d: int(dims.d)?,
        dv_dim: int(dims.dv)?,
        mask: mask.kind,
        n_segments: mask.n_segments,
        scale: scale as f32,
        ..Default::default()
    })
}

/// (out `[B, Lq, Hq, Dv]`, lse f32 `[B, Hq, Lq]`).
pub(crate) fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &MaskData,
    dims: &AttnDims,
    scale: f64,
) -> Result<(CudaStorage, Tensor)> {
    let op = "attention";
    let (q, k, v) = (rows(q)?, rows(k)?, rows(v)?);
    let dev = dev_of(op, &q)?;
    let out_shape = [dims.b, dims.lq, dims.hq, dims.dv];
    let out = dev.alloc(op, q.dtype(), out_shape.iter().product())?;
    let lse = dev.alloc(op, DType::F32, dims.b * dims.hq * dims.lq)?;
    let mut p = base_params(dims, mask, scale)?;
    p.q = strides(&q);
    p.k = strides(&k);
    p.v = strides(&v);
    p.o = packed(out_shape);
    let (pq, pk, pv) = (ptr(op, &q)?, ptr(op, &k)?, ptr(op, &v)?);
    if let Some(s) = flash_shape(q.dtype(), &p, &[pq, pk, pv, out.ptr_at(0)]) {
        let l = geom::flash_fwd_with(&s, super::flash_long_min_lq())
            .map_err(|e| Error::invalid("attention", e.to_string()))?;
        let ptrs = [pq, pk, pv, out.ptr_at(0), lse.ptr_at(0)];
        // SAFETY: flash_attention_*_fwd(p, q, k, v, out, lse), as below; flash_supported checked
        // bf16, d == dv <= 256 a multiple of 8, strides multiples of 8 elements and 16-byte
        // aligned pointers; `l` sizes the dynamic smem.
        unsafe { dev.launch(op, l.kernel, Geometry::from(&l), p, ptrs) }?;
        return Ok((out, tensor(lse, &[dims.b, dims.hq, dims.lq])));
    }
    let grid = [dims.lq.div_ceil(ATT_WARPS as usize) as u32, (dims.b * dims.hq) as u32, 1];
    let kernel = ATTENTION_FWD.at(op, q.dtype())?;
    let ptrs = [pq, pk, pv, out.ptr_at(0), lse.ptr_at(0)];
    // SAFETY: attention_fwd(p, q, k, v, out, lse): q, k, v are [B, L, H, X] views with unit-stride
    // rows described by their strides; out is contiguous [B, Lq, Hq, Dv]; lse holds B*Hq*Lq
    // floats; the mask tables live in `mask`.
    unsafe { dev.launch(op, kernel, Geometry::new(grid, ATT_WARPS * 32), p, ptrs) }?;
    Ok((out, tensor(lse, &[dims.b, dims.hq, dims.lq])))
}

/// The strides of a contiguous `[B, L, H, X]` tensor, for outputs.
fn packed(shape: [usize; 4]) -> Strides {
    let s = crate::shape::contiguous_strides(&shape);
    Strides { b: s[0] as i64, h: s[2] as i64, l: s[1] as i64 }
}

/// (dq, dk, dv), contiguous, in the inputs' dtype.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    g: &Tensor,
    lse: &Tensor,
    mask: &MaskData,
    dims: &AttnDims,
    scale: f64,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let op = "attention";
    let (q, k, v) = (rows(q)?, rows(k)?, rows(v)?);
    let (o, g, lse) = (rows(&out.to_dtype(q.dtype())?)?, rows(&g.to_dtype(q.dtype())?)?, contig(lse)?);
    let dev = dev_of(op, &q)?;
    let dq = dev.alloc(op, q.dtype(), q.elem_count())?;
    let dk = dev.alloc(op, q.dtype(), k.elem_count())?;
    let dv = dev.alloc(op, q.dtype(), v.elem_count())?;
    let mut p = base_params(dims, mask, scale)?;
    p.q = strides(&q);
    p.k = strides(&k);
    p.v = strides(&v);
    p.o = strides(&o);
    p.g = strides(&g);
    p.dq = packed([dims.b, dims.lq, dims.hq, dims.d]);
    p.dk = packed([dims.b, dims.lk, dims.hkv, dims.d]);
    p.dv = packed([dims.b, dims.lk, dims.hkv, dims.dv]);
    let kv_grid = [dims.lk.div_ceil(ATT_WARPS as usize) as u32, (dims.b * dims.hkv) as u32, 1];
    let q_grid = [dims.lq.div_ceil(ATT_WARPS as usize) as u32, (dims.b * dims.hq) as u32, 1];
    let (pq, pk, pv, po, pg, pl) =
        (ptr(op, &q)?, ptr(op, &k)?, ptr(op, &v)?, ptr(op, &o)?, ptr(op, &g)?, ptr(op, &lse)?);
    let outs = [dq.ptr_at(0), dk.ptr_at(0), dv.ptr_at(0)];
    if let Some(s) = flash_shape(q.dtype(), &p, &[pq, pk, pv, po, pg, outs[0], outs[1], outs[2]]) {
        let delta = dev.alloc(op, DType::F32, dims.b * dims.hq * dims.lq)?;
        let (ld, lq) = (flash_geom(geom::flash_delta, &s)?, flash_geom(geom::flash_dq, &s)?);
        let kv = geom::flash_dkdv(&s, geom::FA_DKDV_MIN_BLOCKS).map_err(|e| Error::invalid(op, e.to_string()))?;
        // GQA/MQA groups split over blocks write fp32 partials, summed by a second kernel.
        let parts = match kv.sum {
            Some(_) => {
                Some((dev.alloc(op, DType::F32, kv.partial_elems)?, dev.alloc(op, DType::F32, kv.partial_elems)?))
            }
            None => None,
        };
        let (pk_part, pv_part) = parts.as_ref().map_or((0, 0), |(a, b)| (a.ptr_at(0), b.ptr_at(0)));
        let pd = delta.ptr_at(0);
        let dkdv = [pq, pk, pv, pg, pl, pd, outs[1], outs[2], pk_part, pv_part];
        // SAFETY: as below, with the flash kernels' conditions checked by flash_supported; the
        // arguments follow each kernel's signature in kernels/src/launch.rs; delta holds B*Hq*Lq
        // floats, written by the first kernel and read by the others; the partials hold
        // head_parts*B*Hkv*Lk*D floats each, written by the dK/dV kernel and read by the sum.
        unsafe {
            dev.launch(op, ld.kernel, Geometry::from(&ld), p, [po, pg, pd])?;
            dev.launch(op, kv.launch.kernel, Geometry::from(&kv.launch), p, dkdv)?;
            if let Some(sum) = &kv.sum {
                let ptrs = [pk_part, pv_part, kv.head_parts as u64, outs[1], outs[2]];
                dev.launch(op, sum.kernel, Geometry::from(sum), p, ptrs)?;
            }
            dev.launch(op, lq.kernel, Geometry::from(&lq), p, [pq, pk, pv, pg, pl, pd, outs[0]])
        }?;
        drop(parts);
        return Ok((dq, dk, dv));
    }
    let (kv_kernel, q_kernel) = (ATTENTION_BWD.at(op, q.dtype())?, ATTENTION_DQ.at(op, q.dtype())?);
    let threads = ATT_WARPS * 32;
    // SAFETY: attention_bwd(p, q, k, v, o, g, lse, dk, dv) and attention_dq_bwd(p, q, k, v, o, g,
    // lse, dq): inputs are [B, L, H, X] views with unit-stride rows described by their strides;
    // lse holds B*Hq*Lq floats; dq, dk, dv are contiguous and fully written by the two kernels.
    unsafe {
        let dkdv = [pq, pk, pv, po, pg, pl, dk.ptr_at(0), dv.ptr_at(0)];
        dev.launch(op, kv_kernel, Geometry::new(kv_grid, threads), p, dkdv)?;
        dev.launch(op, q_kernel, Geometry::new(q_grid, threads), p, [pq, pk, pv, po, pg, pl, dq.ptr_at(0)])
    }?;
    Ok((dq, dk, dv))
}

impl backend::Attention for Cuda {
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttentionMask,
        keys: &KeyMask,
        dims: &AttnDims,
        scale: f64,
    ) -> Result<(Tensor, Tensor, Option<BackendState>)> {
        let m = mask_data(&dev_of("attention", q)?, mask, keys.padding.as_deref())?;
        let (out, lse) = forward(q, k, v, &m, dims, scale)?;
        let state: BackendState = Arc::new(m);
        Ok((tensor(out, &[dims.b, dims.lq, dims.hq, dims.dv]), lse, Some(state)))
    }

    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        g: &Tensor,
        lse: &Tensor,
        _keys: &KeyMask,
        state: Option<&BackendState>,
        dims: &AttnDims,
        scale: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let m = state
            .and_then(|s| s.downcast_ref::<MaskData>())
            .ok_or_else(|| Error::invalid("attention", "the backward lost its forward's mask tables"))?;
        let (dq, dk, dv) = backward(q, k, v, out, g, lse, m, dims, scale)?;
        Ok((tensor(dq, q.shape()), tensor(dk, k.shape()), tensor(dv, v.shape())))
    }
}
