//! Direct entry points to the CUDA primitives, bypassing autograd: exactly the launches the ops'
//! forwards and backwards make, for the kernel benchmarks (`benches/kernels.rs`) and GPU tests
//! that time or check one primitive alone. Not part of the modelling API.

use super::{attention as att, dev_of, drv, norm, ptr, tensor, CudaStorage};
use crate::kinds::{AttnDims, GateKind, PairKind};
use crate::{AttentionMask, DType, Error, Result, RmsNormKind, Tensor};
use cudarc::driver::result as cu;
use vlm4vla_kernels::params::{OptimParams, EW_THREADS, OPTIM_CHUNK};

/// The attention forward and backward primitives with the mask tables uploaded once.
pub struct AttentionKernels {
    mask: att::MaskData,
    dims: AttnDims,
    scale: f64,
}

impl AttentionKernels {
    /// For q `[B, Lq, Hq, D]`, k `[B, Lk, Hkv, D]`, v `[B, Lk, Hkv, Dv]` on one GPU.
    pub fn new(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttentionMask, scale: f64) -> Result<AttentionKernels> {
        let op = "attention";
        let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
        if qs.len() != 4 || ks.len() != 4 || vs.len() != 4 || ks[2] == 0 || qs[2] % ks[2] != 0 {
            return Err(Error::shapes_note(
                op,
                &[qs, ks, vs],
                "q, k, v must be [B, L, H, D] with Hq a multiple of Hkv",
            ));
        }
        let dims = AttnDims { b: qs[0], lq: qs[1], lk: ks[1], hq: qs[2], hkv: ks[2], d: qs[3], dv: vs[3] };
        let mask = att::mask_data(&dev_of(op, q)?, mask, None)?;
        Ok(AttentionKernels { mask, dims, scale })
    }

    /// (out `[B, Lq, Hq, Dv]`, lse f32 `[B, Hq, Lq]`).
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (out, lse) = att::forward(q, k, v, &self.mask, &self.dims, self.scale)?;
        let d = &self.dims;
        Ok((tensor(out, &[d.b, d.lq, d.hq, d.dv]), lse))
    }

    /// (dq, dk, dv) for the upstream gradient `g` of `out`.
    pub fn backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        g: &Tensor,
        lse: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (dq, dk, dv) = att::backward(q, k, v, out, g, lse, &self.mask, &self.dims, self.scale)?;
        Ok((tensor(dq, q.shape()), tensor(dk, k.shape()), tensor(dv, v.shape())))
    }
}

/// rms_norm over the last dim: (y, rstd f32 `[rows]`).
pub fn rms_norm(x: &Tensor, w: Option<&Tensor>, eps: f64, kind: RmsNormKind) -> Result<(Tensor, Tensor)> {
    let (y, rstd) = norm::rms_norm(x, w, eps, kind)?;
    Ok((tensor(y, x.shape()), rstd))
}

/// rms_norm's backward: (dx, dw) (dw when `w` is given).
pub fn rms_norm_backward(
    x: &Tensor,
    w: Option<&Tensor>,
    rstd: &Tensor,
    g: &Tensor,
    kind: RmsNormKind,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    norm::rms_norm_backward(x, w, rstd, g, kind, true, w.is_some())
}

/// layer_norm over the last dim: (y, mean, rstd).
pub fn layer_norm(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let (y, mean, rstd) = norm::layer_norm(x, w, b, eps)?;
    Ok((tensor(y, x.shape()), mean, rstd))
}

/// layer_norm's backward: (dx, dw, db).
pub fn layer_norm_backward(
    x: &Tensor,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
    mean: &Tensor,
    rstd: &Tensor,
    g: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    norm::layer_norm_backward(x, w, b, mean, rstd, g, true, true)
}

fn gate_kind(name: &str) -> Result<GateKind> {
    match name {
        "swiglu" => Ok(GateKind::Silu),
        "geglu" => Ok(GateKind::GeluTanh),
        other => Err(Error::invalid("gate", format!("no gated activation {other} (swiglu, geglu)"))),
    }
}

/// swiglu / geglu (`name`) of a merged gate|up `x [rows, 2F]`: `[rows, F]`.
pub fn gate(name: &str, x: &Tensor) -> Result<Tensor> {
    let f = x.shape().last().copied().unwrap_or(0) / 2;
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = f;
    }
    Ok(tensor(super::activation::forward(x, gate_kind(name)?, f)?, &shape))
}

/// The gated activation's backward: dx `[rows, 2F]`.
pub fn gate_backward(name: &str, x: &Tensor, g: &Tensor) -> Result<Tensor> {
    let f = x.shape().last().copied().unwrap_or(0) / 2;
    Ok(tensor(super::activation::backward(x, g, gate_kind(name)?, f)?, x.shape()))
}

/// rope (rotate-half) of x `[B, L, H, D]` with tables `[L, D]`; `backward` applies the transpose.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, backward: bool) -> Result<Tensor> {
    Ok(tensor(super::rope::apply(x, cos, sin, cos.rank() == 3, backward)?, x.shape()))
}

/// Cross-entropy per row of logits `[n, c]` with i64 targets `[n]`: (loss `[n]`, stats f32 `[n, 2]`).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, ignore: i64) -> Result<(Tensor, Tensor)> {
    super::loss::cross_entropy(logits, targets, ignore)
}

/// Cross-entropy's backward: dlogits `[n, c]` for g (one value or one per row) times `scale`.
pub fn cross_entropy_backward(
    logits: &Tensor,
    targets: &Tensor,
    stats: &Tensor,
    g: &Tensor,
    ignore: i64,
    scale: f64,
) -> Result<Tensor> {
    Ok(tensor(super::loss::cross_entropy_backward(logits, targets, stats, g, ignore, scale)?, logits.shape()))
}

fn pair_kind(name: &str, delta: f64) -> Result<PairKind> {
    match name {
        "mse" => Ok(PairKind::Mse),
        "huber" => Ok(PairKind::Huber(delta)),
        "bce" => Ok(PairKind::BceWithLogits),
        other => Err(Error::invalid("pair_loss", format!("no pair loss {other} (mse, huber, bce)"))),
    }
}

/// The elementwise loss `name` (mse, huber with `delta`, bce with logits) of pred and target.
pub fn pair_loss(name: &str, delta: f64, pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    super::loss::pair(pair_kind(name, delta)?, pred, target)
}

/// The pair loss's backward: (dpred, dtarget) for g (one value or one per element) times `scale`.
pub fn pair_loss_backward(
    name: &str,
    delta: f64,
    pred: &Tensor,
    target: &Tensor,
    g: &Tensor,
    scale: f64,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    super::loss::pair_backward(pair_kind(name, delta)?, pred, target, g, scale, (true, true))
}

/// Copy `src` into `dst` (same byte size, both contiguous on one GPU) with the driver's
/// device-to-device copy: the copy-bandwidth ceiling of the benchmarks.
pub fn copy(dst: &Tensor, src: &Tensor) -> Result<()> {
    let op = "copy";
    let bytes = src.elem_count() * src.dtype().size_in_bytes();
    if !dst.is_contiguous() || !src.is_contiguous() || bytes != dst.elem_count() * dst.dtype().size_in_bytes() {
        return Err(Error::shapes_note(op, &[dst.shape(), src.shape()], "contiguous tensors of one byte size"));
    }
    let dev = dev_of(op, src)?;
    dev.bind(op)?;
    // SAFETY: both addresses hold `bytes` bytes on this device (checked above); the copy is
    // ordered on the device's stream like every kernel.
    unsafe { cu::memcpy_dtod_async(ptr(op, dst)?, ptr(op, src)?, bytes, dev.stream()) }.map_err(drv(op))
}

/// A fused multi-tensor AdamW over many bf16 parameters: one `adamw_fwd_bf16` launch per step
/// updates every tensor's fp32 master and moments and writes its bf16 copy, through a device
/// table of slots built once.
pub struct AdamWMulti {
    params: Vec<Tensor>,
    _grads: Vec<Tensor>,
    bufs: Vec<CudaStorage>,
    slots: CudaStorage,
    chunk_start: CudaStorage,
    chunks: usize,
    step: i32,
}

impl AdamWMulti {
    /// For bf16 parameters and their gradients (same shapes, bf16, on one GPU); masters start as
    /// the parameters' values, moments as zeros.
    pub fn new(params: &[Tensor], grads: &[Tensor]) -> Result<AdamWMulti> {
        let op = "adamw";
        let first = params.first().ok_or_else(|| Error::invalid(op, "no parameters"))?;
        let dev = dev_of(op, first)?;
        let mut bufs = Vec::new();
        let mut table: Vec<i64> = Vec::new();
        let mut starts: Vec<i64> = vec![0];
        for (p, g) in params.iter().zip(grads) {
            if p.dtype() != DType::BF16 || g.dtype() != DType::BF16 || p.shape() != g.shape() {
                return Err(Error::shapes_note(
                    op,
                    &[p.shape(), g.shape()],
                    "bf16 parameter and gradient of one shape",
                ));
            }
            let n = p.elem_count();
            let master = super::to_contiguous(op, p, DType::F32)?;
            let (m, v) = (dev.zeros(op, DType::F32, n)?, dev.zeros(op, DType::F32, n)?);
            table.extend([
                master.ptr_at(0) as i64,
                ptr(op, g)? as i64,
                m.ptr_at(0) as i64,
                v.ptr_at(0) as i64,
                ptr(op, p)? as i64,
                n as i64,
            ]);
            starts.push(starts.last().copied().unwrap_or(0) + n.div_ceil(OPTIM_CHUNK) as i64);
            bufs.extend([master, m, v]);
        }
        let chunks = starts.last().copied().unwrap_or(0) as usize;
        Ok(AdamWMulti {
            params: params.to_vec(),
            _grads: grads.to_vec(),
            bufs,
            slots: dev.upload_i64(op, table)?,
            chunk_start: dev.upload_i64(op, starts)?,
            chunks,
            step: 0,
        })
    }

    /// One step (torch.optim.AdamW's update) of every tensor, in one launch.
    pub fn step(&mut self, lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32) -> Result<()> {
        let op = "adamw";
        self.step += 1;
        let t = self.step;
        let p = OptimParams {
            slots: self.slots.ptr_at(0),
            chunk_start: self.chunk_start.ptr_at(0),
            n_slots: self.params.len() as i32,
            first: 0,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step_size: lr / (1.0 - beta1.powi(t)),
            bc2_sqrt: (1.0 - beta2.powi(t)).sqrt(),
            pad: 0,
        };
        let dev = dev_of(op, &self.params[0])?;
        let grid = (self.chunks.clamp(1, 65535) as u32, 1, 1);
        let _ = &self.bufs;
        // SAFETY: the slot table holds, per parameter, an OptimSlot of device pointers to its fp32
        // master, bf16 gradient, fp32 moments and bf16 parameter (n elements each, all alive in
        // `self`), and chunk_start the cumulative chunk counts; both tables live in `self`.
        unsafe { super::launch!(dev, op, "optim", "adamw_fwd_bf16", grid, EW_THREADS, p, []) }
    }
}
