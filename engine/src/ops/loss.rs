//! Losses: `cross_entropy` (stable log-softmax + NLL over class logits, with an ignored class
//! index), and the elementwise pair losses `mse`, `huber` and `bce_with_logits`. Each is a fused
//! op with a fused backward kernel; each has a composite twin built from primitive ops that tests
//! use as an independent reference.
//!
//! Every loss takes a [`Reduction`]: `Mean` and `Sum` give a rank-0 tensor, `None` gives the
//! per-element (per-row for cross-entropy) losses, differentiable, so callers can mask them.
//!
//! What backward keeps: cross-entropy keeps its logits and two numbers per row (the max and the
//! softmax denominator, in compute precision); the pair losses keep both operands.

use crate::autograd::{BackwardOp, Grads, Op};
use crate::kinds::{PairKind, Reduction};
use crate::{DType, Error, Result, Tensor};

pub(crate) const NAMES: &[&str] = &["cross_entropy", "mse", "huber", "bce_with_logits"];

pub(crate) enum LossOp {
    CrossEntropy {
        logits: Tensor,
        /// `[N]` i64 class indices (validated in the forward).
        targets: Tensor,
        /// `[N, 2]` per-row `(max, 1 / Σ exp(x − max))` in the logits' compute dtype (0 on ignored
        /// rows).
        stats: Tensor,
        ignore_index: i64,
        reduction: Reduction,
        /// The number of rows whose target is not `ignore_index`.
        count: usize,
    },
    Pair {
        kind: PairKind,
        pred: Tensor,
        target: Tensor,
        reduction: Reduction,
    },
}

/// The factor a reduced loss's gradient is scaled by: `1/count` for a mean (0 when nothing was
/// counted), 1 otherwise.
fn grad_scale(reduction: Reduction, count: usize) -> f64 {
    match reduction {
        Reduction::Mean if count == 0 => 0.0,
        Reduction::Mean => 1.0 / count as f64,
        Reduction::Sum | Reduction::None => 1.0,
    }
}

/// that are not ignored.
fn cross_entropy_targets(logits: &Tensor, targets: &Tensor, ignore_index: i64) -> Result<(Vec<i64>, usize, usize)> {
    const OP: &str = "cross_entropy";
    if !logits.dtype().is_float() {
        return Err(Error::dtype(OP, logits.dtype(), "logits must be a float tensor"));
    }
    if targets.dtype() != DType::I64 {
        return Err(Error::dtype(OP, targets.dtype(), "targets must be i64 class indices"));
    }
    if logits.device() != targets.device() {
        return Err(Error::DeviceMismatch { op: OP, a: logits.device(), b: targets.device() });
    }
    if logits.rank() != 2 || targets.shape() != [logits.shape()[0]] {
        return Err(Error::shapes_note(
            OP,
            &[logits.shape(), targets.shape()],
            "expected logits [N, C] and targets [N]",
        ));
    }
    let c = logits.shape()[1];
    let t = targets.to_vec::<i64>()?;
    let mut count = 0;
    for (row, &v) in t.iter().enumerate() {
        if v == ignore_index {
            continue;
        }
        if v < 0 || v >= c as i64 {
            return Err(Error::invalid(
                OP,
                format!("target {v} at row {row} is out of range for {c} classes (ignore_index is {ignore_index})"),
            ));
        }
        count += 1;
    }
    Ok((t, c, count))
}

/// Cross-entropy of class logits `[N, C]` (float) against class indices `[N]` (i64): a stable
/// log-softmax over `C` followed by the negative log-likelihood of the target class.
///
/// Rows whose target equals `ignore_index` contribute 0 to the loss and to the gradient (also
/// when `ignore_index` lies in `[0, C)`). `Mean` divides by the number of rows that are not
/// ignored; when every row is ignored the mean is 0 with a zero gradient (PyTorch returns NaN).
/// `None` returns the `[N]` per-row losses (0 on ignored rows). A target outside `[0, C)` that is
/// not `ignore_index` is an error naming the row and the value.
///
/// ```
/// use vlm4vla_engine::{ops::{cross_entropy, Reduction}, Device, Tensor};
/// let logits = Tensor::from_vec(vec![0f64, 0., 5., 5.], &[2, 2], Device::Cpu).unwrap();
/// let targets = Tensor::from_vec(vec![1i64, -100], &[2], Device::Cpu).unwrap();
/// let l = cross_entropy(&logits, &targets, -100, Reduction::Mean).unwrap();
/// assert!((l.to_scalar::<f64>().unwrap() - 2f64.ln()).abs() < 1e-12);
/// ```
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, ignore_index: i64, reduction: Reduction) -> Result<Tensor> {
    let (t, _, count) = cross_entropy_targets(logits, targets, ignore_index)?;
    let scale = grad_scale(reduction, count);
    let (losses, stats) = logits.backend().cross_entropy(logits, targets, &t, ignore_index, reduction, scale)?;
    Ok(losses.recorded(&[logits], || {
        Op::Loss(LossOp::CrossEntropy {
            logits: logits.clone(),
            targets: targets.clone(),
            stats,
            ignore_index,
            reduction,
            count,
        })
    }))
}

/// Check a prediction and a target for a pair loss: float, same dtype, device and shape.
fn check_pair(kind: PairKind, pred: &Tensor, target: &Tensor) -> Result<()> {
    let op = kind.name();
    Tensor::same_dtype_device(op, &[pred, target])?;
    if !pred.dtype().is_float() {
        return Err(Error::dtype(op, pred.dtype(), "expected float tensors"));
    }
    if pred.shape() != target.shape() {
        return Err(Error::shapes_note(
            op,
            &[pred.shape(), target.shape()],
            "prediction and target must have one shape",
        ));
    }
    if let PairKind::Huber(delta) = kind {
        if !(delta > 0.0 && delta.is_finite()) {
            return Err(Error::invalid(op, format!("delta must be positive and finite, got {delta}")));
        }
    }
    Ok(())
}

/// The composite twins' check that bce targets lie in `[0, 1]` (a host read; the fused op's CPU
/// primitive checks as it computes).
fn check_bce_targets(target: &Tensor) -> Result<()> {
    let bad = target.to_vec::<f64>()?.into_iter().enumerate().find(|(_, v)| !(0.0..=1.0).contains(v));
    if let Some((i, v)) = bad {
        return Err(Error::invalid("bce_with_logits", format!("target {v} at flat index {i} is outside [0, 1]")));
    }
    Ok(())
}

fn pair(kind: PairKind, pred: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    check_pair(kind, pred, target)?;
    let scale = grad_scale(reduction, pred.elem_count());
    let out = pred.backend().pair_loss(kind, pred, target, reduction, scale)?;
    Ok(out.recorded(&[pred, target], || {
        Op::Loss(LossOp::Pair { kind, pred: pred.clone(), target: target.clone(), reduction })
    }))
}

/// Gradients flow to both operands. `Mean` of an empty tensor is 0.
pub fn mse(pred: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    pair(PairKind::Mse, pred, target, reduction)
}

/// Huber loss with PyTorch's semantics: with `d = pred − target`, `0.5·d²` where `|d| < delta`
/// and `delta·(|d| − 0.5·delta)` elsewhere (`delta > 0`). Gradients flow to both operands.
pub fn huber(pred: &Tensor, target: &Tensor, delta: f64, reduction: Reduction) -> Result<Tensor> {
    pair(PairKind::Huber(delta), pred, target, reduction)
}

/// Binary cross-entropy on logits with PyTorch's semantics, computed stably as
/// `max(x, 0) − x·t + log(1 + exp(−|x|))`; `logits` and `targets` share one shape and the
/// targets must lie in `[0, 1]` (soft labels allowed; anything else is an error on the CPU, which
/// checks as it computes; a GPU computes the formula for any target, as torch does, rather than
/// wait for the device to report one). Targets are normally constants; if one tracks a gradient
/// it receives `−x` (times the incoming gradient).
///
/// ```
/// use vlm4vla_engine::{ops::{bce_with_logits, Reduction}, Device, Tensor};
/// let x = Tensor::from_vec(vec![0f64, 1e4, -1e4], &[3], Device::Cpu).unwrap();
/// let t = Tensor::from_vec(vec![1f64, 1., 0.], &[3], Device::Cpu).unwrap();
/// let l = bce_with_logits(&x, &t, Reduction::None).unwrap().to_vec::<f64>().unwrap();
/// assert!((l[0] - 2f64.ln()).abs() < 1e-12 && l[1] == 0.0 && l[2] == 0.0);
/// ```
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor, reduction: Reduction) -> Result<Tensor> {
    pair(PairKind::BceWithLogits, logits, targets, reduction)
}

// ----- composite twins (references for tests) -----------------------------------------------------

/// Apply `reduction` to per-element losses with primitive ops (`Mean` divides by `count`, 0 when
/// nothing was counted).
fn reduce_composite(losses: Tensor, reduction: Reduction, count: usize) -> Result<Tensor> {
    match reduction {
        Reduction::None => Ok(losses),
        Reduction::Sum => losses.sum_all(),
        Reduction::Mean => losses.sum_all()?.scale(grad_scale(reduction, count)),
    }
}

/// [`cross_entropy`] from primitive ops: `−Σ_j onehot_ij · (z_ij − log Σ_k exp z_ik)` with
/// `z = x − max(x)` (the max detached), the one-hot built from the targets (all zero on ignored
/// rows).
pub fn cross_entropy_composite(
    logits: &Tensor,
    targets: &Tensor,
    ignore_index: i64,
    reduction: Reduction,
) -> Result<Tensor> {
    let (t, c, count) = cross_entropy_targets(logits, targets, ignore_index)?;
    let n = t.len();
    let mut onehot = vec![0f64; n * c];
    for (i, &v) in t.iter().enumerate() {
        if v != ignore_index {
            onehot[i * c + v as usize] = 1.0;
        }
    }
    let onehot = Tensor::from_vec(onehot, &[n, c], logits.device())?.to_dtype(logits.dtype())?;
    let m = logits.detach().max_keepdim(1)?;
    let z = logits.sub(&m)?;
    let logp = z.sub(&z.exp()?.sum_keepdim(1)?.log()?)?;
    let losses = logp.mul(&onehot)?.sum(1)?.neg()?;
    reduce_composite(losses, reduction, count)
}

/// [`mse`] from primitive ops: `(p − t)²`.
pub fn mse_composite(pred: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    check_pair(PairKind::Mse, pred, target)?;
    reduce_composite(pred.sub(target)?.sqr()?, reduction, pred.elem_count())
}

/// [`huber`] from primitive ops: with `a = |p − t|` and `c = clamp(a, 0, delta)`,
/// `0.5·c² + delta·(a − c)` (equal to both branches of the definition).
pub fn huber_composite(pred: &Tensor, target: &Tensor, delta: f64, reduction: Reduction) -> Result<Tensor> {
    check_pair(PairKind::Huber(delta), pred, target)?;
    let a = pred.sub(target)?.abs()?;
    let c = a.clamp(0.0, delta)?;
    let losses = c.sqr()?.scale(0.5)?.add(&a.sub(&c)?.scale(delta)?)?;
    reduce_composite(losses, reduction, pred.elem_count())
}

/// [`bce_with_logits`] from primitive ops: `relu(x) − x·t + log(1 + exp(−|x|))`.
pub fn bce_with_logits_composite(logits: &Tensor, targets: &Tensor, reduction: Reduction) -> Result<Tensor> {
    check_pair(PairKind::BceWithLogits, logits, targets)?;
    check_bce_targets(targets)?;
    let softplus = logits.abs()?.neg()?.softplus()?;
    let losses = logits.relu()?.sub(&logits.mul(targets)?)?.add(&softplus)?;
    reduce_composite(losses, reduction, logits.elem_count())
}

impl BackwardOp for LossOp {
    fn name(&self) -> &'static str {
        match self {
            LossOp::CrossEntropy { .. } => "cross_entropy",
            LossOp::Pair { kind, .. } => kind.name(),
        }
    }

    fn inputs(&self) -> Vec<&Tensor> {
        match self {
            LossOp::CrossEntropy { logits, .. } => vec![logits],
            LossOp::Pair { pred, target, .. } => vec![pred, target],
        }
    }

    fn backward(&self, _out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        match self {
            LossOp::CrossEntropy { logits, targets, stats, ignore_index, reduction, count } => {
                if !logits.tracks_grad() {
                    return Ok(());
                }
                // dx = (softmax(x) − onehot(t)) · g / count, one fused pass over the logits.
                let scale = grad_scale(*reduction, *count);
                let dx = logits.backend().cross_entropy_backward(logits, targets, stats, grad, *ignore_index, scale)?;
                grads.add(logits, dx)
            }
            LossOp::Pair { kind, pred, target, reduction } => {
                let (want_p, want_t) = (pred.tracks_grad(), target.tracks_grad());
                if !want_p && !want_t {
                    return Ok(());
                }
                // Both operand gradients in one pass: dp = g·∂l/∂p, dt = g·∂l/∂t (scaled for a mean).
                let scale = grad_scale(*reduction, pred.elem_count());
                let (dp, dt) = pred.backend().pair_loss_backward(*kind, pred, target, grad, scale, (want_p, want_t))?;
                if let Some(dp) = dp {
                    grads.add(pred, dp)?;
                }
                if let Some(dt) = dt {
                    grads.add(target, dt)?;
                }
                Ok(())
            }
        }
    }
}
