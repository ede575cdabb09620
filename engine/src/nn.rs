//! The building blocks the model families share, written over the public [`Tensor`] API only:
//! Linear layers, embedding lookup, the norms by parameter name, and the head plumbing around
//! [`Tensor::attention`].
//!
//! Every function is a fixed sequence of engine ops, so what a model computes (and its gradients)
//! is exactly that sequence. Parameters are addressed the way checkpoints spell them: a layer at
//! `prefix` owns `{prefix}.weight` and, when it has one, `{prefix}.bias`.

use crate::{Error, ParamStore, Result, RmsNormKind, Tensor};

/// `x Wᵀ (+ b)` for `x: [..., in]`, `w: [out, in]` (the stored Linear layout), `b: [out]`: the
/// engine's one-GEMM [`Tensor::linear`].
///
/// ```
/// use vlm4vla_engine::{nn, Device, DType, Tensor};
/// let x = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], &[1, 2, 3], Device::Cpu).unwrap();
/// let w = Tensor::from_vec(vec![1f32, 0., 0., 0., 1., 1.], &[2, 3], Device::Cpu).unwrap();
/// let b = Tensor::from_vec(vec![10f32, 20.], &[2], Device::Cpu).unwrap();
/// let y = nn::linear(&x, &w, Some(&b)).unwrap();
/// assert_eq!(y.shape(), &[1, 2, 2]);
/// assert_eq!(y.to_vec::<f32>().unwrap(), [11., 25., 14., 31.]);
/// ```
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    x.linear(w, bias)
}

/// `{prefix}.weight` and, when the store has it, `{prefix}.bias`.
pub fn linear_params(ps: &ParamStore, prefix: &str) -> Result<(Tensor, Option<Tensor>)> {
    let w = ps.get(&format!("{prefix}.weight"))?;
    let bias = format!("{prefix}.bias");
    let b = if ps.contains(&bias) { Some(ps.get(&bias)?) } else { None };
    Ok((w, b))
}

/// [`linear`] with the Linear layer at `prefix` of `ps` (`{prefix}.weight`, `{prefix}.bias` if
/// present).
pub fn linear_named(ps: &ParamStore, prefix: &str, x: &Tensor) -> Result<Tensor> {
    let (w, b) = linear_params(ps, prefix)?;
    linear(x, &w, b.as_ref())
}

/// Rows of `table: [vocab, dim]` picked by the integer `ids` of any shape: `[..ids, dim]`
/// (one `index_select` over the flattened ids). Ids are not range-checked here beyond what
/// `index_select` does; callers that take user input check them first with a better message.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if table.rank() != 2 {
        return Err(Error::shapes_note("embedding", &[table.shape(), ids.shape()], "the table must be [vocab, dim]"));
    }
    let mut out = ids.shape().to_vec();
    out.push(table.shape()[1]);
    table.index_select(0, &ids.reshape(&[ids.elem_count()])?)?.reshape(&out)
}

/// The RMSNorm at `prefix` of `ps` (`{prefix}.weight`), in the given variant: `Plain`
/// (Qwen/Llama, `w · x̂`) or `Gemma` (`(1 + w) · x̂`).
pub fn rms_norm_named(ps: &ParamStore, prefix: &str, x: &Tensor, eps: f64, kind: RmsNormKind) -> Result<Tensor> {
    let w = ps.get(&format!("{prefix}.weight"))?;
    x.rms_norm(Some(&w), eps, kind)
}

/// The LayerNorm at `prefix` of `ps` (`{prefix}.weight`, `{prefix}.bias`).
pub fn layer_norm_named(ps: &ParamStore, prefix: &str, x: &Tensor, eps: f64) -> Result<Tensor> {
    let w = ps.get(&format!("{prefix}.weight"))?;
    let b = ps.get(&format!("{prefix}.bias"))?;
    x.layer_norm(Some(&w), Some(&b), eps)
}

/// A projection `[B, L, H·D]` split into heads `[B, L, H, D]` (a view), the layout
/// [`Tensor::attention`] takes.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 3 || heads == 0 || !s[2].is_multiple_of(heads) {
        return Err(Error::shapes_note("split_heads", &[s], format!("expected [B, L, H·D] with H = {heads}")));
    }
    x.reshape(&[s[0], s[1], heads, s[2] / heads])
}

/// Attention output `[B, L, H, D]` merged back into `[B, L, H·D]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 4 {
        return Err(Error::shapes_note("merge_heads", &[s], "expected [B, L, H, D]"));
    }
    x.reshape(&[s[0], s[1], s[2] * s[3]])
}

/// One transformer block `f(x)`: called directly, or with `recompute` through
/// [`checkpoint`](crate::checkpoint) (activation checkpointing): the block's activations are
/// dropped once its output exists and recomputed during the backward pass, so a step keeps one
/// tensor per block instead of all of them, for one more forward per block. Gradients are the
/// same either way; without recording (`no_grad`) both paths are a plain call.
///
/// ```
/// use vlm4vla_engine::{nn, DType, Device, Tensor};
/// let w = Tensor::rand_uniform(-1.0, 1.0, &[4, 4], DType::F64, Device::Cpu, 1).unwrap().variable();
/// let x = Tensor::rand_uniform(-1.0, 1.0, &[3, 4], DType::F64, Device::Cpu, 2).unwrap();
/// let grad = |recompute: bool| {
///     let w2 = w.clone();
///     let y = nn::block(recompute, x.clone(), move |x| x.linear(&w2, None)?.tanh()).unwrap();
///     y.sum_all().unwrap().backward().unwrap().get(&w).unwrap().to_vec::<f64>().unwrap()
/// };
/// assert_eq!(grad(true), grad(false));
/// ```
pub fn block(
    recompute: bool,
    x: Tensor,
    f: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if recompute {
        crate::checkpoint(std::sync::Arc::new(move |xs: &[Tensor]| f(&xs[0])), &[x])
    } else {
        f(&x)
    }
}
