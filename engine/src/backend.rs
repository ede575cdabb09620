//! The seam between the ops and the devices: the primitives every backend implements, one trait
//! per op family, mirrored file for file by `cpu/<family>.rs` and `cuda/<family>.rs`.
//!
//! `ops/*.rs` hold the checks, graph recording and backward rules and call these primitives
//! through [`Tensor::backend`]; the device is chosen once, here ([`of`]), and nowhere above.
//! A primitive reads its inputs (each a storage and its layout, as a [`Tensor`] handle) and
//! returns fresh, contiguous tensors that record no graph; the op attaches its record.
//!
//! Adding an op touches five places (see the engine's README): its kind in `kinds.rs` (if it has
//! one), its op entry with the backward rule in `ops/`, the CPU primitive, the CUDA primitive, and
//! its gradcheck plus GPU property test.

use crate::kinds::{AttentionMask, AttnDims, BinaryKind, CmpKind, GateKind, KeyMask, OptimRule, PairKind, Reduction};
use crate::kinds::{RmsNormKind, UnaryKind};
use crate::{CpuStorage, DType, Device, Layout, Result, Tensor};
use std::sync::Arc;

/// Per-backend data a forward hands to its backward (the CUDA attention keeps its mask tables on
/// the device); opaque above the backend.
pub(crate) type BackendState = Arc<dyn std::any::Any + Send + Sync>;

/// Optional gradients of a fused backward that computes several at once.
pub(crate) type Grad2 = (Option<Tensor>, Option<Tensor>);

/// Elementwise unary ops (`ops/unary.rs`).
pub(crate) trait Unary {
    /// `f(x)` elementwise.
    fn unary(&self, x: &Tensor, kind: UnaryKind) -> Result<Tensor>;
    /// `g · f'(x, y)` elementwise (x the input, y the output, g the output's gradient).
    fn unary_backward(&self, kind: UnaryKind, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Tensor>;
}

/// Elementwise binary ops and comparisons on views of one shape (`ops/binary.rs`).
pub(crate) trait Binary {
    fn binary(&self, a: &Tensor, b: &Tensor, kind: BinaryKind) -> Result<Tensor>;
    /// A u8 mask, 1 where `a kind b` holds (any dtype).
    fn cmp(&self, a: &Tensor, b: &Tensor, kind: CmpKind) -> Result<Tensor>;
}

/// Reductions (`ops/reduce.rs`).
pub(crate) trait Reduce {
    /// Sum over `dims` (sorted, deduplicated), keeping them as size 1: shaped `out_shape`.
    fn sum_dims(&self, x: &Tensor, dims: &[usize], out_shape: &[usize]) -> Result<Tensor>;
    /// `x · s` (the mean's division).
    fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor>;
    /// Max (or min) over `dim` with the i64 index of the first extreme element, both shaped like
    /// `x` with `dim` of size 1.
    fn select(&self, x: &Tensor, dim: usize, is_max: bool) -> Result<(Tensor, Tensor)>;
    /// `g` (shaped like the reduced output) routed to the selected `indices`, shaped `shape`.
    fn select_backward(
        &self,
        g: &Tensor,
        indices: &Tensor,
        shape: &[usize],
        dim: usize,
        is_max: bool,
    ) -> Result<Tensor>;
    /// `sqrt(Σ x²)` as a rank-0 tensor of `x`'s dtype.
    fn norm_l2(&self, x: &Tensor) -> Result<Tensor>;
}

/// Matrix products (`ops/matmul.rs`).
pub(crate) trait Matmul {
    /// `a @ b` read through the (broadcast) layouts `la` `[..., m, k]` and `lb` `[..., k, n]`,
    /// plus `bias` `[n]` on every row when given (the GEMM's epilogue).
    fn matmul(
        &self,
        a: &Tensor,
        la: &Layout,
        b: &Tensor,
        lb: &Layout,
        bias: Option<&Tensor>,
        out_shape: &[usize],
    ) -> Result<Tensor>;
}

/// Normalisations over the last dim (`ops/norm.rs`). Statistics come back in compute precision.
pub(crate) trait Norm {
    fn softmax(&self, x: &Tensor, log: bool) -> Result<Tensor>;
    fn softmax_backward(&self, y: &Tensor, g: &Tensor, log: bool) -> Result<Tensor>;
    /// (y, rstd `[rows]`).
    fn rms_norm(&self, x: &Tensor, w: Option<&Tensor>, eps: f64, kind: RmsNormKind) -> Result<(Tensor, Tensor)>;
    /// (dx, dw), each only when wanted.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_backward(
        &self,
        x: &Tensor,
        w: Option<&Tensor>,
        rstd: &Tensor,
        g: &Tensor,
        kind: RmsNormKind,
        want_dx: bool,
        want_dw: bool,
    ) -> Result<Grad2>;
    /// (y, mean `[rows]`, rstd `[rows]`).
    fn layer_norm(
        &self,
        x: &Tensor,
        w: Option<&Tensor>,
        b: Option<&Tensor>,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)>;
    /// (dx, dw, db), dx only when wanted, dw/db (for the parameters given) when `want_params`.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward(
        &self,
        x: &Tensor,
        w: Option<&Tensor>,
        b: Option<&Tensor>,
        mean: &Tensor,
        rstd: &Tensor,
        g: &Tensor,
        want_dx: bool,
        want_params: bool,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)>;
    /// (y, norm `[rows]`).
    fn l2_normalize(&self, x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)>;
    fn l2_normalize_backward(&self, y: &Tensor, norm: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor>;
}

/// Gated activations on a merged `gate|up` input `[..., 2F]` (`ops/activation.rs`).
pub(crate) trait Activation {
    /// `act(x[..., :F]) · x[..., F:]`, shaped `[..., F]`.
    fn gate(&self, x: &Tensor, kind: GateKind, f: usize) -> Result<Tensor>;
    /// The whole `[..., 2F]` input gradient.
    fn gate_backward(&self, x: &Tensor, g: &Tensor, kind: GateKind, f: usize) -> Result<Tensor>;
}

/// Rotary embedding (`ops/rope.rs`).
pub(crate) trait Rope {
    /// `x·cos + rotate_half(x)·sin`, or with `backward` its transpose applied to a gradient.
    /// `cos`/`sin` are in x's compute precision, `[L, D]` or (`batched`) `[B, L, D]`.
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, batched: bool, backward: bool) -> Result<Tensor>;
}

/// Fused attention (`ops/attention.rs`).
pub(crate) trait Attention {
    /// (out `[B, Lq, Hq, Dv]`, lse `[B, Hq, Lq]` in compute precision, state for the backward).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttentionMask,
        keys: &KeyMask,
        dims: &AttnDims,
        scale: f64,
    ) -> Result<(Tensor, Tensor, Option<BackendState>)>;
    /// (dq, dk, dv).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        g: &Tensor,
        lse: &Tensor,
        keys: &KeyMask,
        state: Option<&BackendState>,
        dims: &AttnDims,
        scale: f64,
    ) -> Result<(Tensor, Tensor, Tensor)>;
}

/// Losses (`ops/loss.rs`); `scale` is the mean's `1 / count` (1 for sums).
pub(crate) trait Loss {
    /// (losses: `[N]`, or reduced to a scalar; stats `[N, 2]` in compute precision). `t` holds the
    /// targets as validated on the host.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        t: &[i64],
        ignore_index: i64,
        reduction: Reduction,
        scale: f64,
    ) -> Result<(Tensor, Tensor)>;
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_backward(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        stats: &Tensor,
        g: &Tensor,
        ignore_index: i64,
        scale: f64,
    ) -> Result<Tensor>;
    /// The per-element losses (shaped like `pred`), or reduced to a scalar.
    fn pair_loss(
        &self,
        kind: PairKind,
        pred: &Tensor,
        target: &Tensor,
        reduction: Reduction,
        scale: f64,
    ) -> Result<Tensor>;
    /// (d pred, d target), each only when wanted.
    fn pair_loss_backward(
        &self,
        kind: PairKind,
        pred: &Tensor,
        target: &Tensor,
        g: &Tensor,
        scale: f64,
        want: (bool, bool),
    ) -> Result<Grad2>;
}

/// Joining and indexing (`ops/index.rs`). Indices (i64) and masks (u8 or i64, nonzero = set)
/// are tensors on the data's device, never read to the host: the CPU checks each index as it
/// uses it (an error naming the op and the index); a GPU kernel skips an out-of-range index (NaN
/// in a forward's output, nothing in a scatter).
pub(crate) trait Index {
    fn cat(&self, ts: &[&Tensor], dim: usize, shape: &[usize]) -> Result<Tensor>;
    /// `idx` is 1-D.
    fn index_select(&self, x: &Tensor, dim: usize, idx: &Tensor, shape: &[usize]) -> Result<Tensor>;
    /// The index_select backward: `g` scatter-added into zeros of `shape` (repeats accumulate).
    fn index_add(&self, g: &Tensor, shape: &[usize], dim: usize, idx: &Tensor) -> Result<Tensor>;
    /// `idx` has shape `ishape`, the output's.
    fn gather(&self, x: &Tensor, dim: usize, idx: &Tensor, ishape: &[usize]) -> Result<Tensor>;
    fn gather_backward(
        &self,
        g: &Tensor,
        shape: &[usize],
        dim: usize,
        idx: &Tensor,
        ishape: &[usize],
    ) -> Result<Tensor>;
    fn scatter_add(&self, x: &Tensor, dim: usize, idx: &Tensor, src: &Tensor, ishape: &[usize]) -> Result<Tensor>;
    /// `x` (rows of width `w`) with the rows `mask` sets (one entry per row) replaced by
    /// `source`'s rows (`[M, w]`) in order.
    fn masked_scatter(&self, x: &Tensor, mask: &Tensor, source: &Tensor, w: usize) -> Result<Tensor>;
    /// (d x: `g` with the set rows zeroed, d source `[m, w]`: the set rows taken), each only when
    /// wanted.
    fn masked_scatter_backward(
        &self,
        g: &Tensor,
        mask: &Tensor,
        m: usize,
        w: usize,
        want: (bool, bool),
    ) -> Result<Grad2>;
    /// `mask ? a : b`, the mask a view of the output's shape.
    fn where_cond(&self, mask: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `g` where the mask picks `branch`, zero elsewhere.
    fn where_backward(&self, mask: &Tensor, g: &Tensor, branch: bool) -> Result<Tensor>;
}

/// Copies and conversions (`ops/view.rs`).
pub(crate) trait View {
    /// `x`'s elements, contiguous, in `dtype`.
    fn convert(&self, x: &Tensor, dtype: DType) -> Result<Tensor>;
    /// Zeros of shape `full` with `x` written at `start..` along `dim` (the narrow backward).
    fn pad_into(&self, x: &Tensor, full: &[usize], dim: usize, start: usize) -> Result<Tensor>;
}

/// One parameter tensor of an optimizer step: the parameter (updated in place), its gradient, its
/// optimizer buffers (f32, or f64 for an f64 parameter; on the parameter's device; updated in
/// place) and, for a bf16/f16 parameter, its f32 master (the parameter receives its rounding).
pub(crate) struct OptimSlot<'a> {
    /// The parameter's name (errors name it).
    pub name: &'a str,
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub bufs: &'a [Tensor],
    pub master: Option<&'a Tensor>,
}

/// What a backend keeps from one optimizer step to the next (the CUDA launch tables), owned by
/// the optimizer and opaque above the backend.
pub(crate) type OptimCache = Option<Box<dyn std::any::Any + Send + Sync>>;

/// Gradient clipping inside an optimizer step, as `torch.nn.utils.clip_grad_norm_` before it:
/// with `norm = √sum_sq`, every gradient is multiplied by `max_norm / (norm + 1e-6)` when that
/// is below 1 (and left as it is otherwise, a non-finite norm included). The backend reads
/// `sum_sq` (a one-element tensor on its device, from [`Optim::sum_sq`]) where it runs: no host
/// read, no scaled copy of a gradient.
pub(crate) struct Clip<'a> {
    pub sum_sq: &'a Tensor,
    pub max_norm: f64,
}

/// The epsilon added to the norm in the clip factor (torch's).
pub(crate) const CLIP_EPS: f64 = 1e-6;

/// The optimizer step and the gradient norm (`optim.rs`).
pub(crate) trait Optim {
    /// Update every slot in place by `rule`, the gradients clipped by `clip` if given (on the
    /// CPU one fused pass per tensor; on a GPU one multi-tensor launch per dtype).
    fn optim_step(
        &self,
        rule: &OptimRule,
        slots: &[OptimSlot<'_>],
        clip: Option<&Clip<'_>>,
        cache: &mut OptimCache,
    ) -> Result<()>;
    /// `Σ x²` over every element of every tensor of `xs` (all on this backend's device) as a
    /// one-element tensor `[1]` on that device, with no host read: on the CPU f64, accumulated
    /// tensor by tensor in order; on a GPU f32. An empty `xs` gives 0.
    fn sum_sq(&self, xs: &[&Tensor], device: Device) -> Result<Tensor>;
}

/// Memory: making, reading and overwriting a device's buffers (`tensor.rs`).
pub(crate) trait Memory {
    /// Zeros of `shape` on `device` (one of this backend's).
    fn zeros(&self, device: Device, shape: &[usize], dtype: DType) -> Result<Tensor>;
    /// Row-major host elements placed on `device` (one of this backend's).
    fn upload(&self, host: CpuStorage, shape: &[usize], device: Device) -> Result<Tensor>;
    /// Call `f` with `x`'s elements on the host: its own storage and layout on the CPU, a
    /// downloaded contiguous copy on a GPU (which waits for the device).
    fn with_host(&self, x: &Tensor, f: &mut dyn FnMut(&CpuStorage, &Layout)) -> Result<()>;
    /// Overwrite the contiguous `dst` with `src` (same shape, any layout, converted to `dst`'s
    /// dtype).
    fn assign(&self, dst: &Tensor, src: &Tensor) -> Result<()>;
}

/// Everything a device provides.
pub(crate) trait Backend:
    Unary + Binary + Reduce + Matmul + Norm + Activation + Rope + Attention + Loss + Index + View + Memory + Optim + Sync
{
}

impl<T> Backend for T where
    T: Unary
        + Binary
        + Reduce
        + Matmul
        + Norm
        + Activation
        + Rope
        + Attention
        + Loss
        + Index
        + View
        + Memory
        + Optim
        + Sync
{
}

/// The backend of a tensor on `device`: the one place the device is chosen.
pub(crate) fn of(device: Device) -> &'static dyn Backend {
    match device {
        Device::Cpu => {
            crate::cpu::memory::keep_freed_memory();
            &crate::cpu::Cpu
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => &crate::cuda::Cuda,
        // Without the `cuda` feature no storage lives on a GPU, so no tensor asks for one.
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => &crate::cpu::Cpu,
    }
}

/// The backend that makes tensors on `device`: an error naming the device where this build has
/// none for it.
pub(crate) fn placing(device: Device) -> Result<&'static dyn Backend> {
    crate::counters::primitive();
    match device {
        Device::Cpu => {
            crate::cpu::memory::keep_freed_memory();
            Ok(&crate::cpu::Cpu)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => Ok(&crate::cuda::Cuda),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(crate::Error::DeviceUnavailable { device, reason: crate::cuda_unavailable_reason() }),
    }
}

impl Tensor {
    /// The backend this tensor's storage lives on.
    pub(crate) fn backend(&self) -> &'static dyn Backend {
        crate::counters::primitive();
        of(self.device())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn sources(dir: &str) -> Vec<(PathBuf, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
        let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                (p, text)
            })
            .collect();
        out.sort();
        out
    }

    /// The seam holds: ops (and the optimizer, autograd, tensor and nn files) choose no backend,
    /// and neither backend imports an op file. Only the storage enum, the device list, the module
    /// list and `backend::of` name the CUDA backend outside `cuda/`.
    #[test]
    fn ops_know_no_backend_and_backends_know_no_op() {
        let chooses_the_device = ["lib.rs", "storage.rs", "device.rs", "backend.rs"];
        let device_free = sources("ops")
            .into_iter()
            .chain(sources("").into_iter().filter(|(p, _)| !chooses_the_device.iter().any(|f| p.ends_with(f))));
        for (path, text) in device_free {
            for banned in ["cfg(feature = \"cuda\")", "is_cuda()", "crate::cuda", "crate::cpu"] {
                assert!(!text.contains(banned), "{} contains `{banned}`", path.display());
            }
        }
        for (dir, other) in [("cpu", "crate::cuda"), ("cuda", "crate::cpu")] {
            for (path, text) in sources(dir) {
                assert!(!text.contains("crate::ops"), "{} imports from ops/", path.display());
                assert!(!text.contains(other), "{} reaches into the other backend (`{other}`)", path.display());
            }
        }
    }

    /// Every backend file mirrors an op family or a backend-wide job, and no engine file grows
    /// past the size where it should be split.
    #[test]
    fn engine_files_stay_small() {
        for dir in ["", "ops", "cpu", "cuda"] {
            for (path, text) in sources(dir) {
                let lines = text.lines().count();
                assert!(lines <= 800, "{} has {lines} lines (split it by job)", path.display());
            }
        }
    }
}
