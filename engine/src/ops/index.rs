//! Joining and indexing: cat, stack, split/chunk, index_select (embedding lookup), gather,
//! scatter_add, masked_scatter (image features into a token sequence) and where_cond.
//!
//! Data movement works on every dtype (token ids and masks included); the recorded ops route
//! gradients back along the same paths: cat narrows the gradient per input, index_select and
//! gather scatter-add it (repeated indices accumulate), scatter_add gathers it for `src`,
//! masked_scatter and where_cond split it by the mask. stack, split and chunk are compositions
//! of unsqueeze, cat and narrow and record no op of their own. Index tensors are i64; masks are
//! u8 or i64 (nonzero = set).
//!
//! Indices and masks stay on the data's device: no op reads them to the host. The CPU checks
//! every index as it uses it (an out-of-range index is an error naming the op and the index); a
//! GPU kernel never dereferences an out-of-range index (the forward writes NaN there, a scatter
//! drops it), so bad ids show up as NaN downstream instead of stalling every step to be checked.
//! Ids are validated where they are made, on the host, before they are uploaded.

use crate::autograd::{BackwardOp, Grads, Op};
use crate::{shape, DType, Dim, Error, Result, Tensor};

pub(crate) const NAMES: &[&str] = &["cat", "index_select", "gather", "scatter_add", "masked_scatter", "where_cond"];

pub(crate) enum IndexOp {
    Cat {
        args: Vec<Tensor>,
        dim: usize,
    },
    IndexSelect {
        arg: Tensor,
        dim: usize,
        indices: Tensor,
    },
    /// `indices` has the output's shape.
    Gather {
        arg: Tensor,
        dim: usize,
        indices: Tensor,
    },
    /// `src` is already narrowed to the index shape.
    ScatterAdd {
        arg: Tensor,
        src: Tensor,
        dim: usize,
        indices: Tensor,
    },
    /// `mask`: one entry per row of `arg` (all dims but the last).
    MaskedScatter {
        arg: Tensor,
        source: Tensor,
        mask: Tensor,
    },
    /// The mask and both branches are broadcast to the output shape.
    WhereCond {
        mask: Tensor,
        on_true: Tensor,
        on_false: Tensor,
    },
}

/// Indices must be i64 on the indexed tensor's device (their values are checked where they are
/// used: see the module docs).
fn check_indices(op: &'static str, indices: &Tensor, device: crate::Device) -> Result<()> {
    if indices.dtype() != DType::I64 {
        return Err(Error::dtype(op, indices.dtype(), "indices must be i64"));
    }
    if indices.device() != device {
        return Err(Error::DeviceMismatch { op, a: device, b: indices.device() });
    }
    Ok(())
}

/// A mask must be u8 or i64 (nonzero = set) on the data's device.
fn check_mask(op: &'static str, mask: &Tensor, device: crate::Device) -> Result<()> {
    if mask.device() != device {
        return Err(Error::DeviceMismatch { op, a: device, b: mask.device() });
    }
    match mask.dtype() {
        DType::U8 | DType::I64 => Ok(()),
        other => Err(Error::dtype(op, other, "a mask must be u8 or i64")),
    }
}

fn check_float(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::dtype(op, t.dtype(), "expected a float tensor"))
    }
}

impl Tensor {
    /// Concatenate tensors along `dim`. All share dtype, device and rank, and their shapes agree
    /// except on `dim`: `[a, n₁, b] ⧺ [a, n₂, b] → [a, n₁ + n₂, b]`. Inputs may be strided views.
    ///
    /// ```
    /// use vlm4vla_engine::{Device, Tensor};
    /// let a = Tensor::from_vec(vec![1i64, 2], &[1, 2], Device::Cpu).unwrap();
    /// let b = Tensor::from_vec(vec![3i64, 4, 5, 6], &[2, 2], Device::Cpu).unwrap();
    /// let c = Tensor::cat(&[&a, &b], 0).unwrap();
    /// assert_eq!(c.shape(), &[3, 2]);
    /// assert_eq!(c.to_vec::<i64>().unwrap(), vec![1, 2, 3, 4, 5, 6]);
    /// ```
    pub fn cat(tensors: &[&Tensor], dim: impl Dim) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::invalid("cat", "no tensors to concatenate"))?;
        let d = dim.resolve(first.rank(), "cat", first.shape())?;
        Tensor::same_dtype_device("cat", tensors)?;
        let rank = first.rank();
        if tensors.iter().any(|t| t.rank() != rank || (0..rank).any(|i| i != d && t.shape()[i] != first.shape()[i])) {
            let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.shape()).collect();
            return Err(Error::shapes_note("cat", &shapes, format!("shapes must agree except on dim {d}")));
        }
        let mut shape = first.shape().to_vec();
        shape[d] = tensors.iter().map(|t| t.shape()[d]).sum();
        let out = first.backend().cat(tensors, d, &shape)?;
        Ok(out.recorded(tensors, || {
            Op::Index(IndexOp::Cat { args: tensors.iter().map(|&t| t.clone()).collect(), dim: d })
        }))
    }

    /// Stack tensors of one shape along a new dim `dim` (`0..=rank`):
    /// `k × [a, b] → [a, k, b]` for `dim = 1`. Unsqueeze + cat.
    pub fn stack(tensors: &[&Tensor], dim: impl Dim) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::invalid("stack", "no tensors to stack"))?;
        let d = dim.resolve(first.rank() + 1, "stack", first.shape())?;
        if tensors.iter().any(|t| t.shape() != first.shape()) {
            let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.shape()).collect();
            return Err(Error::shapes_note("stack", &shapes, "all tensors must have the same shape"));
        }
        let parts = tensors.iter().map(|t| t.unsqueeze(d)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = parts.iter().collect();
        Tensor::cat(&refs, d)
    }

    /// Split `dim` into consecutive pieces of the given sizes (views; the sizes must sum to the
    /// dim's size).
    pub fn split(&self, sizes: &[usize], dim: impl Dim) -> Result<Vec<Tensor>> {
        let d = dim.resolve(self.rank(), "split", self.shape())?;
        let total: usize = sizes.iter().sum();
        if total != self.shape()[d] {
            return Err(Error::shapes_note(
                "split",
                &[self.shape(), sizes],
                format!("sizes sum to {total}, dim {d} has size {}", self.shape()[d]),
            ));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let t = self.narrow(d, start, len);
                start += len;
                t
            })
            .collect()
    }

    /// Split `dim` into `n` views like `torch.chunk`: each of size `ceil(len / n)`, the last one
    /// smaller, and fewer than `n` chunks when the sizes run out (`len = 5, n = 4 → 2, 2, 1`).
    pub fn chunk(&self, n: usize, dim: impl Dim) -> Result<Vec<Tensor>> {
        let d = dim.resolve(self.rank(), "chunk", self.shape())?;
        if n == 0 {
            return Err(Error::invalid("chunk", "cannot split into 0 chunks"));
        }
        let len = self.shape()[d];
        if len == 0 {
            return (0..n).map(|_| self.narrow(d, 0, 0)).collect();
        }
        let size = len.div_ceil(n);
        let sizes: Vec<usize> = (0..len).step_by(size).map(|s| size.min(len - s)).collect();
        self.split(&sizes, d)
    }

    /// Select entries of `dim` by i64 `indices` (1-D, repeats allowed):
    /// `[a, n, b]` with `k` indices → `[a, k, b]`. An embedding lookup is
    /// `table.index_select(0, &ids)`. Indices out of `0..n` are an error on the CPU and NaN
    /// rows on a GPU (see the module docs).
    ///
    /// ```
    /// use vlm4vla_engine::{Device, Tensor};
    /// let table = Tensor::from_vec(vec![0f32, 1., 10., 11., 20., 21.], &[3, 2], Device::Cpu).unwrap();
    /// let ids = Tensor::from_vec(vec![2i64, 0, 2], &[3], Device::Cpu).unwrap();
    /// let e = table.index_select(0, &ids).unwrap();
    /// assert_eq!(e.to_vec::<f32>().unwrap(), vec![20., 21., 0., 1., 20., 21.]);
    /// ```
    pub fn index_select(&self, dim: impl Dim, indices: &Tensor) -> Result<Tensor> {
        let op = "index_select";
        let d = dim.resolve(self.rank(), op, self.shape())?;
        if indices.rank() != 1 {
            return Err(Error::shapes_note(op, &[self.shape(), indices.shape()], "indices must be 1-D"));
        }
        check_indices(op, indices, self.device())?;
        let mut shape = self.shape().to_vec();
        shape[d] = indices.shape()[0];
        let out = self.backend().index_select(self, d, indices, &shape)?;
        Ok(out.recorded(&[self], || {
            Op::Index(IndexOp::IndexSelect { arg: self.clone(), dim: d, indices: indices.clone() })
        }))
    }

    /// `torch.gather`: `out[i][j][k] = self[i][indices[i][j][k]][k]` for `dim = 1`. `indices` is
    /// i64 of the same rank, no larger than `self` on dims other than `dim`; the output has the
    /// shape of `indices`.
    pub fn gather(&self, dim: impl Dim, indices: &Tensor) -> Result<Tensor> {
        let op = "gather";
        let d = dim.resolve(self.rank(), op, self.shape())?;
        let ishape = indices.shape();
        if ishape.len() != self.rank() || (0..self.rank()).any(|i| i != d && ishape[i] > self.shape()[i]) {
            return Err(Error::shapes_note(
                op,
                &[self.shape(), ishape],
                format!("indices must have the input's rank and be no larger on dims other than {d}"),
            ));
        }
        check_indices(op, indices, self.device())?;
        let out = self.backend().gather(self, d, indices, ishape)?;
        Ok(out.recorded(&[self], || Op::Index(IndexOp::Gather { arg: self.clone(), dim: d, indices: indices.clone() })))
    }

    /// `torch.scatter_add` out of place: a copy of `self` with `src[p]` added at
    /// `p with dim ← indices[p]` for every position `p` of `indices` (repeats accumulate).
    /// `indices` (i64) and `src` have `self`'s rank; `indices` is no larger than `src` on any dim
    /// and no larger than `self` on dims other than `dim`. Float tensors only.
    pub fn scatter_add(&self, dim: impl Dim, indices: &Tensor, src: &Tensor) -> Result<Tensor> {
        let op = "scatter_add";
        Tensor::same_dtype_device(op, &[self, src])?;
        check_float(op, self)?;
        let d = dim.resolve(self.rank(), op, self.shape())?;
        let ishape = indices.shape();
        let rank = self.rank();
        if ishape.len() != rank
            || src.rank() != rank
            || (0..rank).any(|i| ishape[i] > src.shape()[i] || (i != d && ishape[i] > self.shape()[i]))
        {
            return Err(Error::shapes_note(
                op,
                &[self.shape(), ishape, src.shape()],
                format!("indices must be no larger than src, and than the input on dims other than {d}"),
            ));
        }
        check_indices(op, indices, self.device())?;
        // Only the part of `src` the indices cover takes part (and gets a gradient).
        let mut part = src.clone();
        for (i, &n) in ishape.iter().enumerate() {
            part = part.narrow(i, 0, n)?;
        }
        let out = self.backend().scatter_add(self, d, indices, &part, ishape)?;
        Ok(out.recorded(&[self, &part], || {
            Op::Index(IndexOp::ScatterAdd { arg: self.clone(), src: part.clone(), dim: d, indices: indices.clone() })
        }))
    }

    /// Replace rows of `self` (`[..., N, D]`, rows = all dims but the last, flattened) where
    /// `mask` (u8 or i64 of shape `[..., N]`, nonzero = set) is set, in row-major order, by the
    /// consecutive rows of `source` (`[M, D]`, `M` = the number of set rows). This is how image
    /// features enter a token sequence. The mask stays on the device: the CPU checks that it
    /// sets `M` rows (an error otherwise); on a GPU, set rows past the `M`-th come out NaN.
    ///
    /// ```
    /// use vlm4vla_engine::{Device, Tensor};
    /// let x = Tensor::zeros(&[3, 2], vlm4vla_engine::DType::F32, Device::Cpu).unwrap();
    /// let mask = Tensor::from_vec(vec![1u8, 0, 1], &[3], Device::Cpu).unwrap();
    /// let img = Tensor::from_vec(vec![1f32, 2., 3., 4.], &[2, 2], Device::Cpu).unwrap();
    /// let y = x.masked_scatter(&mask, &img).unwrap();
    /// assert_eq!(y.to_vec::<f32>().unwrap(), vec![1., 2., 0., 0., 3., 4.]);
    /// ```
    pub fn masked_scatter(&self, mask: &Tensor, source: &Tensor) -> Result<Tensor> {
        let op = "masked_scatter";
        Tensor::same_dtype_device(op, &[self, source])?;
        let Some((&w, row_shape)) = self.shape().split_last() else {
            return Err(Error::shapes_note(op, &[self.shape()], "the input needs rank ≥ 1"));
        };
        if mask.shape() != row_shape {
            return Err(Error::shapes_note(
                op,
                &[self.shape(), mask.shape()],
                "the mask must have the input's shape without its last dim",
            ));
        }
        check_mask(op, mask, self.device())?;
        if source.rank() != 2 || source.shape()[1] != w {
            return Err(Error::shapes_note(op, &[self.shape(), source.shape()], format!("source must be [rows, {w}]")));
        }
        let out = self.backend().masked_scatter(self, mask, source, w)?;
        Ok(out.recorded(&[self, source], || {
            Op::Index(IndexOp::MaskedScatter { arg: self.clone(), source: source.clone(), mask: mask.clone() })
        }))
    }

    /// Elementwise `mask ? on_true : on_false`, broadcasting all three to a common shape. `mask`
    /// is u8 or i64 (nonzero = true); the branches share a dtype and both get gradients.
    ///
    /// ```
    /// use vlm4vla_engine::{Device, Tensor};
    /// let m = Tensor::from_vec(vec![1u8, 0], &[2, 1], Device::Cpu).unwrap();
    /// let a = Tensor::from_vec(vec![1f32, 2., 3.], &[3], Device::Cpu).unwrap();
    /// let b = Tensor::from_vec(vec![-1f32], &[1], Device::Cpu).unwrap();
    /// let y = Tensor::where_cond(&m, &a, &b).unwrap();
    /// assert_eq!(y.to_vec::<f32>().unwrap(), vec![1., 2., 3., -1., -1., -1.]);
    /// ```
    pub fn where_cond(mask: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        let op = "where_cond";
        Tensor::same_dtype_device(op, &[on_true, on_false])?;
        let shape = shape::broadcast_shape(op, mask.shape(), on_true.shape())
            .and_then(|s| shape::broadcast_shape(op, &s, on_false.shape()))
            .map_err(|_| {
                Error::shapes_note(op, &[mask.shape(), on_true.shape(), on_false.shape()], "cannot broadcast")
            })?;
        check_mask(op, mask, on_true.device())?;
        let keep = mask.broadcast_as(&shape)?;
        let (a, b) = (on_true.broadcast_as(&shape)?, on_false.broadcast_as(&shape)?);
        let out = a.backend().where_cond(&keep, &a, &b)?;
        Ok(out.recorded(&[&a, &b], || {
            Op::Index(IndexOp::WhereCond { mask: keep, on_true: a.clone(), on_false: b.clone() })
        }))
    }
}

impl BackwardOp for IndexOp {
    fn name(&self) -> &'static str {
        match self {
            IndexOp::Cat { .. } => "cat",
            IndexOp::IndexSelect { .. } => "index_select",
            IndexOp::Gather { .. } => "gather",
            IndexOp::ScatterAdd { .. } => "scatter_add",
            IndexOp::MaskedScatter { .. } => "masked_scatter",
            IndexOp::WhereCond { .. } => "where_cond",
        }
    }

    fn inputs(&self) -> Vec<&Tensor> {
        match self {
            IndexOp::Cat { args, .. } => args.iter().collect(),
            IndexOp::IndexSelect { arg, .. } | IndexOp::Gather { arg, .. } => vec![arg],
            IndexOp::ScatterAdd { arg, src, .. } => vec![arg, src],
            IndexOp::MaskedScatter { arg, source, .. } => vec![arg, source],
            IndexOp::WhereCond { on_true, on_false, .. } => vec![on_true, on_false],
        }
    }

    fn backward(&self, _out: &Tensor, grad: &Tensor, grads: &mut Grads) -> Result<()> {
        match self {
            IndexOp::Cat { args, dim } => {
                // Each input's gradient is its window of the output gradient.
                let mut start = 0;
                for a in args {
                    let len = a.shape()[*dim];
                    if a.tracks_grad() {
                        grads.add(a, grad.narrow(*dim, start, len)?.contiguous()?)?;
                    }
                    start += len;
                }
                Ok(())
            }
            IndexOp::IndexSelect { arg, dim, indices } => {
                if !arg.tracks_grad() {
                    return Ok(());
                }
                // Scatter-add the selected rows back: repeated indices accumulate.
                grads.add(arg, arg.backend().index_add(grad, arg.shape(), *dim, indices)?)
            }
            IndexOp::Gather { arg, dim, indices } => {
                if !arg.tracks_grad() {
                    return Ok(());
                }
                grads.add(arg, arg.backend().gather_backward(grad, arg.shape(), *dim, indices, indices.shape())?)
            }
            IndexOp::ScatterAdd { arg, src, dim, indices } => {
                // d(self) is the identity; d(src) gathers the gradient at the scatter targets.
                if arg.tracks_grad() {
                    grads.add(arg, grad.contiguous()?)?;
                }
                if src.tracks_grad() {
                    grads.add(src, src.backend().gather(grad, *dim, indices, src.shape())?)?;
                }
                Ok(())
            }
            IndexOp::MaskedScatter { arg, source, mask } => {
                // Overwritten rows pass no gradient to the input; they carry the source's.
                let w = arg.shape().last().copied().unwrap_or(1);
                let want = (arg.tracks_grad(), source.tracks_grad());
                let (da, ds) = arg.backend().masked_scatter_backward(grad, mask, source.shape()[0], w, want)?;
                if let Some(da) = da {
                    grads.add(arg, da)?;
                }
                if let Some(ds) = ds {
                    grads.add(source, ds)?;
                }
                Ok(())
            }
            IndexOp::WhereCond { mask, on_true, on_false } => {
                // The branches are broadcast views: their own backward sums over broadcast dims.
                for (t, branch) in [(on_true, true), (on_false, false)] {
                    if t.tracks_grad() {
                        grads.add(t, t.backend().where_backward(mask, grad, branch)?)?;
                    }
                }
                Ok(())
            }
        }
    }
}
