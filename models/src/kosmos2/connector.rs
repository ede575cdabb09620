//! The image-to-text connector (`image_to_text_projection.*`), mirroring
//! `Kosmos2ImageToTextProjection` in transformers 5.24.0 `models/kosmos2/modeling_kosmos2.py`:
//! `dense` to the text width, then the learned latent queries attend (`x_attn`, no mask, no
//! inner LayerNorm, biases on q/k/v/out) over the dense features **and themselves**; k|v read the
//! same rows and run as one fused projection (`x_attn.kv_proj`).

use super::config::Kosmos2Config;
use super::names::CONNECTOR;
use crate::common::fused;
use vlm4vla_engine::nn::{linear_named, merge_heads, split_heads};
use vlm4vla_engine::{AttentionMask, ParamStore, Result, Tensor};

/// `[B, 1 + N, vision hidden]` normalised vision features → `[B, latent_query_num, embed_dim]`.
pub(crate) fn forward(cfg: &Kosmos2Config, ps: &ParamStore, features: &Tensor) -> Result<Tensor> {
    let b = features.shape()[0];
    let (q_num, d, heads) = (cfg.latent_query_num, cfg.text.embed_dim, cfg.text.attention_heads);
    let h = linear_named(ps, &format!("{CONNECTOR}.dense"), features)?;
    let latent = ps.get(&format!("{CONNECTOR}.latent_query"))?.unsqueeze(0)?.broadcast_as(&[b, q_num, d])?;
    let kv = Tensor::cat(&[&h, &latent], 1)?;
    let q = split_heads(&linear_named(ps, &format!("{CONNECTOR}.x_attn.q_proj"), &latent)?, heads)?;
    let kv = linear_named(ps, &format!("{CONNECTOR}.x_attn.kv_proj"), &kv)?;
    let [k, v] = fused::split_heads(&kv, [heads; 2], cfg.text.head_dim())?;
    let scale = (cfg.text.head_dim() as f64).powf(-0.5);
    let a = merge_heads(&q.attention(&k, &v, &AttentionMask::Full, None, scale)?.out)?;
    linear_named(ps, &format!("{CONNECTOR}.x_attn.out_proj"), &a)
}
