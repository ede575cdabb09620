//! The SigLIP vision tower as PaliGemma uses it, mirroring transformers 5.24.0
//! `models/siglip/modeling_siglip.py` (`SiglipVisionTransformer` without the pooling head).
//!
//! Patch embedding (a stride-`p` convolution with bias, done as one matmul over the flattened
//! patches) + learned positions, pre-LN encoder layers (MHA with biases, tanh-GELU MLP), then
//! `post_layernorm`; the whole `last_hidden_state` `[B, (S/p)², hidden]` is the output.

use super::config::{Activation, VisionConfig};
use super::names::VISION;
use crate::common::fused;
use std::sync::Arc;
use vlm4vla_engine::nn::{self, layer_norm_named, linear, linear_named, merge_heads};
use vlm4vla_engine::{AttentionMask, Error, ParamStore, Result, Tensor};

pub(crate) fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::GeluTanh => x.gelu_tanh(),
        Activation::Gelu => x.gelu(),
        Activation::QuickGelu => x.quick_gelu(),
    }
}

/// Check `pixel_values` is `[B, C, S, S]` for this tower.
pub(crate) fn check_pixels(cfg: &VisionConfig, pixels: &Tensor) -> Result<()> {
    let s = pixels.shape();
    let want = [cfg.num_channels, cfg.image_size, cfg.image_size];
    if s.len() != 4 || s[1..] != want || s[0] == 0 {
        return Err(Error::tensor(
            "paligemma input",
            "pixel_values",
            format!("expected shape [B, {}, {}, {}] with B ≥ 1, found {s:?}", want[0], want[1], want[2]),
        ));
    }
    if !pixels.dtype().is_float() {
        return Err(Error::tensor(
            "paligemma input",
            "pixel_values",
            format!("expected a float tensor (normalised pixels), found {}", pixels.dtype()),
        ));
    }
    Ok(())
}

/// Run the tower over `pixels` `[B, C, S, S]`; returns the post-LN last hidden state
/// `[B, N, hidden]` and pushes every encoder layer's output to `trace` when given.
pub(crate) fn forward(
    cfg: &VisionConfig,
    ps: &ParamStore,
    pixels: &Tensor,
    recompute: bool,
    mut trace: Option<&mut Vec<Tensor>>,
) -> Result<Tensor> {
    check_pixels(cfg, pixels)?;
    let (b, c, p, g) = (pixels.shape()[0], cfg.num_channels, cfg.patch_size, cfg.grid());
    let h = cfg.hidden_size;
    let conv_w = ps.get(&format!("{VISION}embeddings.patch_embedding.weight"))?;
    let conv_b = ps.get(&format!("{VISION}embeddings.patch_embedding.bias"))?;
    let pos = ps.get(&format!("{VISION}embeddings.position_embedding.weight"))?;
    // [B, C, g·p, g·p] → [B, g, g, C, p, p] → rows of C·p·p values in (c, py, px) order, the
    // conv weight's own order, patches row-major over the grid.
    let patches = pixels
        .to_dtype(conv_w.dtype())?
        .reshape(&[b, c, g, p, g, p])?
        .permute(&[0, 2, 4, 1, 3, 5])?
        .reshape(&[b, g * g, c * p * p])?;
    let w = conv_w.reshape(&[h, c * p * p])?;
    let mut x = linear(&patches, &w, Some(&conv_b))?.add(&pos)?;

    let ctx = Arc::new((cfg.clone(), ps.clone()));
    for i in 0..cfg.num_hidden_layers {
        let c = ctx.clone();
        x = nn::block(recompute, x, move |x| layer(&c.0, &c.1, i, x))?;
        if let Some(t) = trace.as_deref_mut() {
            t.push(x.clone());
        }
    }
    layer_norm_named(ps, &format!("{VISION}post_layernorm"), &x, cfg.layer_norm_eps)
}

/// Encoder layer `i` over `x` `[B, N, hidden]`.
fn layer(cfg: &VisionConfig, ps: &ParamStore, i: usize, x: &Tensor) -> Result<Tensor> {
    let heads = cfg.num_attention_heads;
    let scale = (cfg.head_dim() as f64).powf(-0.5);
    let l = format!("{VISION}encoder.layers.{i}.");
    let a = layer_norm_named(ps, &format!("{l}layer_norm1"), x, cfg.layer_norm_eps)?;
    let qkv = linear_named(ps, &format!("{l}self_attn.qkv_proj"), &a)?;
    let [q, k, v] = fused::split_heads(&qkv, [heads; 3], cfg.head_dim())?;
    let o = merge_heads(&q.attention(&k, &v, &AttentionMask::Full, None, scale)?.out)?;
    let x = x.add(&linear_named(ps, &format!("{l}self_attn.out_proj"), &o)?)?;
    let m = layer_norm_named(ps, &format!("{l}layer_norm2"), &x, cfg.layer_norm_eps)?;
    let m = activation(&linear_named(ps, &format!("{l}mlp.fc1"), &m)?, cfg.hidden_act)?;
    x.add(&linear_named(ps, &format!("{l}mlp.fc2"), &m)?)
}
