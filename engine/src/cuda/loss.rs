//! CUDA launchers of `loss.cu`: cross-entropy per row (with its softmax statistics) and the pair
//! losses (mse, huber, bce_with_logits), forward and backward. Reductions over the per-row or
//! per-element losses run as engine sum ops on the device.

use super::launch::{CROSS_ENTROPY_BWD, CROSS_ENTROPY_FWD, PAIR_LOSS_BWD, PAIR_LOSS_FWD};
use super::{contig, dev_of, ptr, tensor, Cuda, CudaStorage, Geometry};
use crate::kinds::{PairKind, Reduction};
use crate::{backend, DType, Result, Tensor};
use vlm4vla_kernels::params::LossParams;

/// Per-row losses `[n]` (logits' dtype) and statistics `[n, 2]` (f32: row max, 1 / sum exp).
pub(crate) fn cross_entropy(logits: &Tensor, targets: &Tensor, ignore: i64) -> Result<(Tensor, Tensor)> {
    let op = "cross_entropy";
    let (x, t) = (contig(logits)?, contig(targets)?);
    let dev = dev_of(op, &x)?;
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let loss = dev.alloc(op, x.dtype(), n)?;
    let stats = dev.alloc(op, DType::F32, 2 * n)?;
    let p = LossParams { n: n as i64, c: c as i64, ignore, ..Default::default() };
    let kernel = CROSS_ENTROPY_FWD.at(op, x.dtype())?;
    // SAFETY: x contiguous [n, c], t i64 [n], loss [n] of x's dtype, stats 2n floats.
    unsafe {
        dev.launch(op, kernel, Geometry::rows(n), p, [ptr(op, &x)?, ptr(op, &t)?, loss.ptr_at(0), stats.ptr_at(0)])
    }?;
    Ok((tensor(loss, &[n]), tensor(stats, &[n, 2])))
}

/// `dx = g * scale * (softmax(x) - onehot(t))`, zero on ignored rows; `g` is one value (a reduced
/// loss) or one per row.
pub(crate) fn cross_entropy_backward(
    logits: &Tensor,
    targets: &Tensor,
    stats: &Tensor,
    g: &Tensor,
    ignore: i64,
    scale: f64,
) -> Result<CudaStorage> {
    let op = "cross_entropy";
    let (x, t, s, g) = (contig(logits)?, contig(targets)?, contig(stats)?, contig(&g.to_dtype(logits.dtype())?)?);
    let dev = dev_of(op, &x)?;
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let dx = dev.alloc(op, x.dtype(), n * c)?;
    let g_stride = if g.elem_count() == 1 { 0 } else { 1 };
    let p = LossParams { n: n as i64, c: c as i64, ignore, g_stride, scale: scale as f32, ..Default::default() };
    let kernel = CROSS_ENTROPY_BWD.at(op, x.dtype())?;
    // SAFETY: x, dx contiguous [n, c]; t i64 [n]; stats 2n floats; g one element or n.
    unsafe {
        dev.launch(
            op,
            kernel,
            Geometry::rows(n),
            p,
            [ptr(op, &x)?, ptr(op, &t)?, ptr(op, &s)?, ptr(op, &g)?, dx.ptr_at(0)],
        )
    }?;
    Ok(dx)
}

fn pair_params(kind: PairKind, n: usize) -> LossParams {
    let delta = if let PairKind::Huber(d) = kind { d as f32 } else { 0.0 };
    LossParams { n: n as i64, delta, op: kind.code(), ..Default::default() }
}

/// Per-element losses, contiguous, shaped like `pred`.
pub(crate) fn pair(kind: PairKind, pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let op = kind.name();
    let (x, t) = (contig(pred)?, contig(target)?);
    let dev = dev_of(op, &x)?;
    let n = x.elem_count();
    let out = dev.alloc(op, x.dtype(), n)?;
    let kernel = PAIR_LOSS_FWD.at(op, x.dtype())?;
    // SAFETY: x, t, out contiguous with n elements of one dtype.
    unsafe {
        dev.launch(
            op,
            kernel,
            Geometry::elementwise(n),
            pair_params(kind, n),
            [ptr(op, &x)?, ptr(op, &t)?, out.ptr_at(0)],
        )
    }?;
    Ok(tensor(out, x.shape()))
}

/// (dpred, dtarget), each only when asked for; `g` is one value or one per element.
pub(crate) fn pair_backward(
    kind: PairKind,
    pred: &Tensor,
    target: &Tensor,
    g: &Tensor,
    scale: f64,
    want: (bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let op = kind.name();
    let (x, t, g) = (contig(pred)?, contig(target)?, contig(g)?);
    let dev = dev_of(op, &x)?;
    let n = x.elem_count();
    let dp = if want.0 { Some(dev.alloc(op, x.dtype(), n)?) } else { None };
    let dt = if want.1 { Some(dev.alloc(op, x.dtype(), n)?) } else { None };
    let mut p = pair_params(kind, n);
    p.g_stride = if g.elem_count() == 1 { 0 } else { 1 };
    p.scale = scale as f32;
    let kernel = PAIR_LOSS_BWD.at(op, x.dtype())?;
    // SAFETY: x, t (and dp, dt when present) contiguous with n elements; g one element or n.
    unsafe {
        dev.launch(
            op,
            kernel,
            Geometry::elementwise(n),
            p,
            [
                ptr(op, &x)?,
                ptr(op, &t)?,
                ptr(op, &g)?,
                dp.as_ref().map_or(0, |d| d.ptr_at(0)),
                dt.as_ref().map_or(0, |d| d.ptr_at(0)),
            ],
        )
    }?;
    Ok((dp.map(|d| tensor(d, x.shape())), dt.map(|d| tensor(d, x.shape()))))
}

/// `losses` reduced to a scalar in f32 on the device and rounded once to `dtype` (or as they are).
fn reduce(losses: Tensor, reduction: Reduction, scale: f64, dtype: DType) -> Result<Tensor> {
    let data = match reduction {
        Reduction::None => losses,
        Reduction::Sum | Reduction::Mean => {
            crate::no_grad(|| losses.to_dtype(DType::F32)?.sum_all()?.scale(scale)?.to_dtype(dtype))?
        }
    };
    Ok(tensor(super::view::convert("loss", &data, dtype)?, data.shape()))
}

impl backend::Loss for Cuda {
    fn cross_entropy(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _t: &[i64],
        ignore_index: i64,
        reduction: Reduction,
        scale: f64,
    ) -> Result<(Tensor, Tensor)> {
        let (losses, stats) = cross_entropy(logits, targets, ignore_index)?;
        Ok((reduce(losses, reduction, scale, logits.dtype())?, stats))
    }

    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        stats: &Tensor,
        g: &Tensor,
        ignore_index: i64,
        scale: f64,
    ) -> Result<Tensor> {
        Ok(tensor(cross_entropy_backward(logits, targets, stats, g, ignore_index, scale)?, logits.shape()))
    }

    fn pair_loss(
        &self,
        kind: PairKind,
        pred: &Tensor,
        target: &Tensor,
        reduction: Reduction,
        scale: f64,
    ) -> Result<Tensor> {
        reduce(pair(kind, pred, target)?, reduction, scale, pred.dtype())
    }

    fn pair_loss_backward(
        &self,
        kind: PairKind,
        pred: &Tensor,
        target: &Tensor,
        g: &Tensor,
        scale: f64,
        want: (bool, bool),
    ) -> Result<backend::Grad2> {
        pair_backward(kind, pred, target, g, scale, want)
    }
}
