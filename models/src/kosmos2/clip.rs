//! The CLIP ViT vision tower (`vision_model.model.*`), mirroring `Kosmos2VisionTransformer` in
//! transformers 5.24.0 `models/kosmos2/modeling_kosmos2.py`, followed by what
//! `Kosmos2ForConditionalGeneration.get_image_features` does with its output: `post_layernorm`
//! on **every** token (not just the class token) and a per-token L2 normalisation.

use super::config::VisionConfig;
use super::names::VISION;
use crate::common::fused;
use std::sync::Arc;
use vlm4vla_engine::nn::{self, layer_norm_named, linear, linear_named, merge_heads};
use vlm4vla_engine::{AttentionMask, Error, ParamStore, Result, Tensor};

/// What the tower produces: every encoder layer's output (`[B, 1 + N, hidden]`) and the
/// post-LN, L2-normalised features the connector reads.
pub(crate) struct VisionOutput {
    pub layers: Vec<Tensor>,
    pub features: Tensor,
}

/// `[B, C, H, W]` pixels → `[B, N, C·p·p]` patch rows, each in (c, py, px) order, patches in
/// row-major grid order: the Conv2d(k = s = p, no bias) becomes one matmul.
fn patchify(pixels: &Tensor, p: usize) -> Result<Tensor> {
    let s = pixels.shape();
    let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
    let (gh, gw) = (h / p, w / p);
    pixels.reshape(&[b, c, gh, p, gw, p])?.permute(&[0, 2, 4, 1, 3, 5])?.reshape(&[b, gh * gw, c * p * p])
}

pub(crate) fn check_pixels(cfg: &VisionConfig, pixels: &Tensor) -> Result<()> {
    let s = pixels.shape();
    let want = [cfg.num_channels, cfg.image_size, cfg.image_size];
    if s.len() != 4 || s[1..] != want {
        return Err(Error::Invalid {
            op: "Kosmos2 vision",
            msg: format!(
                "pixel_values must be [batch, {}, {}, {}], found {s:?}",
                cfg.num_channels, cfg.image_size, cfg.image_size
            ),
        });
    }
    if s[0] == 0 {
        return Err(Error::Invalid { op: "Kosmos2 vision", msg: "pixel_values has an empty batch".into() });
    }
    if !pixels.dtype().is_float() {
        return Err(Error::Invalid {
            op: "Kosmos2 vision",
            msg: format!("pixel_values must be a float tensor, found {}", pixels.dtype()),
        });
    }
    Ok(())
}

pub(crate) fn forward(cfg: &VisionConfig, ps: &ParamStore, pixels: &Tensor, recompute: bool) -> Result<VisionOutput> {
    check_pixels(cfg, pixels)?;
    let p = |n: &str| ps.get(&format!("{VISION}.{n}"));
    let (b, d) = (pixels.shape()[0], cfg.hidden_size);
    let patch_w = p("embeddings.patch_embedding.weight")?;
    let pixels = pixels.to_dtype(patch_w.dtype())?;
    let rows = patchify(&pixels, cfg.patch_size)?;
    let k = rows.shape()[2];
    let patches = linear(&rows, &patch_w.reshape(&[d, k])?, None)?;
    let cls = p("embeddings.class_embedding")?.reshape(&[1, 1, d])?.broadcast_as(&[b, 1, d])?;
    let mut x = Tensor::cat(&[&cls, &patches], 1)?.add(&p("embeddings.position_embedding.weight")?)?;
    x = layer_norm_named(ps, &format!("{VISION}.pre_layrnorm"), &x, cfg.layer_norm_eps)?;

    let eps = cfg.layer_norm_eps;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    let ctx = Arc::new((cfg.clone(), ps.clone()));
    for i in 0..cfg.num_hidden_layers {
        let c = ctx.clone();
        x = nn::block(recompute, x, move |x| layer(&c.0, &c.1, i, x))?;
        layers.push(x.clone());
    }
    let features = layer_norm_named(ps, &format!("{VISION}.post_layernorm"), &x, eps)?.l2_normalize(1e-12)?;
    Ok(VisionOutput { layers, features })
}

/// Encoder layer `i` over `x` `[B, N, D]`.
fn layer(cfg: &VisionConfig, ps: &ParamStore, i: usize, x: &Tensor) -> Result<Tensor> {
    let eps = cfg.layer_norm_eps;
    let scale = (cfg.head_dim() as f64).powf(-0.5);
    let heads = cfg.num_attention_heads;
    let l = format!("{VISION}.encoder.layers.{i}");
    let h = layer_norm_named(ps, &format!("{l}.layer_norm1"), x, eps)?;
    let qkv = linear_named(ps, &format!("{l}.self_attn.qkv_proj"), &h)?;
    let [q, k, v] = fused::split_heads(&qkv, [heads; 3], cfg.head_dim())?;
    let a = merge_heads(&q.attention(&k, &v, &AttentionMask::Full, None, scale)?.out)?;
    let x = x.add(&linear_named(ps, &format!("{l}.self_attn.out_proj"), &a)?)?;
    let h = layer_norm_named(ps, &format!("{l}.layer_norm2"), &x, eps)?;
    let h = cfg.hidden_act.apply(&linear_named(ps, &format!("{l}.mlp.fc1"), &h)?)?;
    x.add(&linear_named(ps, &format!("{l}.mlp.fc2"), &h)?)
}
