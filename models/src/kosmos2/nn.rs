//! The few layer helpers the Kosmos-2 modules share (there is no nn module in the engine).

use vlm4vla_engine::{ParamStore, Result, Tensor};

/// `x Wᵀ + b` over the last dim of `x` (`[..., in]`), as one GEMM over all leading dims.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let shape = x.shape().to_vec();
    let (&k, lead) = shape.split_last().ok_or_else(|| vlm4vla_engine::Error::Invalid {
        op: "kosmos2::linear",
        msg: "the input needs rank ≥ 1".into(),
    })?;
    let rows: usize = lead.iter().product();
    let mut y = x.reshape(&[rows, k])?.matmul(&w.t()?)?;
    if let Some(b) = b {
        y = y.add(b)?;
    }
    let mut out = lead.to_vec();
    out.push(w.shape()[0]);
    y.reshape(&out)
}

/// The `{prefix}.weight` / `{prefix}.bias` Linear of `ps`.
pub(crate) fn linear_named(ps: &ParamStore, prefix: &str, x: &Tensor) -> Result<Tensor> {
    let w = ps.get(&format!("{prefix}.weight"))?;
    let b = ps.get(&format!("{prefix}.bias"))?;
    linear(x, &w, Some(&b))
}

/// The `{prefix}.weight` / `{prefix}.bias` LayerNorm of `ps`.
pub(crate) fn layer_norm_named(ps: &ParamStore, prefix: &str, x: &Tensor, eps: f64) -> Result<Tensor> {
    let w = ps.get(&format!("{prefix}.weight"))?;
    let b = ps.get(&format!("{prefix}.bias"))?;
    x.layer_norm(Some(&w), Some(&b), eps)
}

/// `[B, L, H·D]` → `[B, L, H, D]` (a view).
pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let s = x.shape();
    x.reshape(&[s[0], s[1], heads, s[2] / heads])
}

/// `[B, L, H, D]` → `[B, L, H·D]`.
pub(crate) fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    x.reshape(&[s[0], s[1], s[2] * s[3]])
}
