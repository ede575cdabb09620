//! The Qwen2.5-VL language model (Qwen2 decoder with M-RoPE) and `get_rope_index` (mirrors
//! transformers 5.24.0 `modeling_qwen2_5_vl.py`: `Qwen2_5_VLTextModel`,
//! `Qwen2_5_VLRotaryEmbedding`, `Qwen2_5_VLModel.get_rope_index`).

use super::config::TextConfig;
use crate::common::fused;
use crate::common::last_rows::{keep_last, last_rows, LastRows};
use std::sync::Arc;
use vlm4vla_engine::nn::{self, linear_named, merge_heads, rms_norm_named};
use vlm4vla_engine::{AttentionKeys, AttentionMask, Device, Error, ParamStore, Result, RmsNormKind, Tensor};

const OP: &str = "qwen2_5_vl get_rope_index";

/// M-RoPE positions `(t, h, w)` for every token of every row (`[B][L]`), computed on the real
/// (unpadded) tokens only: a text run of `n` tokens takes `cur..cur+n` on all three axes; an image
/// with merged grid `(T, H, W)` takes `t = cur + frame`, `h = cur + row`, `w = cur + col` and
/// advances `cur` by `max(H, W)`. Padded slots get 0. Images are consumed from `grids` in batch
/// order; `token_type` is 1 on image pads.
pub fn rope_index(
    token_type: &[Vec<u8>],
    attention_mask: &[Vec<u8>],
    grids: &[[usize; 3]],
    spatial_merge_size: usize,
) -> Result<Vec<Vec<[i64; 3]>>> {
    let mut next_grid = 0usize;
    let mut out = Vec::with_capacity(token_type.len());
    for (b, (types, mask)) in token_type.iter().zip(attention_mask).enumerate() {
        let real: Vec<usize> = (0..types.len()).filter(|&i| mask[i] != 0).collect();
        let mut pos = vec![[0i64; 3]; types.len()];
        let mut cur = 0i64;
        let mut i = 0usize;
        while i < real.len() {
            if types[real[i]] == 0 {
                pos[real[i]] = [cur; 3];
                cur += 1;
                i += 1;
                continue;
            }
            let Some(&[t, h, w]) = grids.get(next_grid) else {
                return Err(Error::Invalid {
                    op: OP,
                    msg: format!("row {b} has more image-token runs than the {} images given", grids.len()),
                });
            };
            next_grid += 1;
            let (lh, lw) = (h / spatial_merge_size, w / spatial_merge_size);
            let n = t * lh * lw;
            let run = real[i..].iter().take_while(|&&j| types[j] != 0).count();
            if run < n {
                return Err(Error::Invalid {
                    op: OP,
                    msg: format!(
                        "row {b}: image {} (grid ({t}, {h}, {w})) needs {n} image tokens but the run has {run}",
                        next_grid - 1
                    ),
                });
            }
            let mut k = i;
            for ft in 0..t {
                for y in 0..lh {
                    for x in 0..lw {
                        pos[real[k]] = [cur + ft as i64, cur + y as i64, cur + x as i64];
                        k += 1;
                    }
                }
            }
            cur += lh.max(lw) as i64;
            i += n;
        }
        out.push(pos);
    }
    if next_grid != grids.len() {
        return Err(Error::Invalid {
            op: OP,
            msg: format!("{} images given but the token types hold {next_grid} image runs", grids.len()),
        });
    }
    Ok(out)
}

/// M-RoPE tables `[B, L, head_dim]` (f32, as transformers computes them): frequency `i` takes
/// its angle from the t, h or w position by `mrope_section`, and `cos/sin(cat(f, f))`.
pub fn mrope_tables(cfg: &TextConfig, positions: &[Vec<[i64; 3]>]) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let half = hd / 2;
    let inv: Vec<f32> = (0..half).map(|i| 1.0f32 / (cfg.rope_theta as f32).powf((2 * i) as f32 / hd as f32)).collect();
    let mut axis = Vec::with_capacity(half);
    for (a, &s) in cfg.mrope_section.iter().enumerate() {
        axis.extend(std::iter::repeat_n(a, s));
    }
    let b = positions.len();
    let l = positions.first().map_or(0, Vec::len);
    let mut cos = Vec::with_capacity(b * l * hd);
    let mut sin = Vec::with_capacity(b * l * hd);
    for row in positions {
        for p in row {
            let angles: Vec<f32> = (0..half).map(|i| p[axis[i]] as f32 * inv[i]).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
    }
    Ok((Tensor::from_vec(cos, &[b, l, hd], Device::Cpu)?, Tensor::from_vec(sin, &[b, l, hd], Device::Cpu)?))
}

/// Run the decoder over embeddings `[B, L, hidden]`: causal attention with key padding
/// (`[B, L]` u8), rope tables `[B, L, head_dim]`. Returns every layer's output (with
/// `keep_layers`) and the final normed hidden state; `recompute` checkpoints every layer
/// ([`nn::block`]). With `rows`, only the last `rows` rows of the final hidden state come out:
/// the last layer computes the rest of itself after its keys and values for those rows alone
/// (`common::last_rows`).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    cfg: &TextConfig,
    params: &ParamStore,
    embeds: &Tensor,
    key_padding: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    recompute: bool,
    keep_layers: bool,
    rows: Option<usize>,
) -> Result<(Vec<Tensor>, Tensor)> {
    let eps = cfg.rms_norm_eps;
    let mut x = embeds.clone();
    let mut layers = Vec::new();
    let keys = AttentionKeys::new(AttentionMask::Causal, Some(key_padding))?;
    let last = last_rows(&keys, x.shape()[1], rows);
    let ctx = Arc::new(LayerContext {
        cfg: cfg.clone(),
        params: params.clone(),
        cos: cos.clone(),
        sin: sin.clone(),
        keys,
        last,
    });
    for i in 0..cfg.num_hidden_layers {
        let c = ctx.clone();
        x = nn::block(recompute, x, move |x| c.layer(i, x))?;
        if keep_layers {
            layers.push(x.clone());
        }
    }
    let last = rms_norm_named(params, "model.norm", &keep_last(x, rows)?, eps, RmsNormKind::Plain)?;
    Ok((layers, last))
}

/// What every decoder layer of one forward reads besides its input.
struct LayerContext {
    cfg: TextConfig,
    params: ParamStore,
    cos: Tensor,
    sin: Tensor,
    keys: AttentionKeys,
    /// The rows the last layer computes after its keys and values, when not all.
    last: Option<LastRows>,
}

impl LayerContext {
    /// Layer `i` over `x` (the last one: see [`Self::last`]).
    fn layer(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let (cfg, params) = (&self.cfg, &self.params);
        let (cos, sin) = (&self.cos, &self.sin);
        let (hq, hkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim());
        let scale = (hd as f64).powf(-0.5);
        let eps = cfg.rms_norm_eps;
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let n = rms_norm_named(params, &p("input_layernorm"), x, eps, RmsNormKind::Plain)?;
        let qkv = linear_named(params, &p("self_attn.qkv_proj"), &n)?;
        let [q, k, v] = fused::split_heads(&qkv, [hq, hkv, hkv], hd)?;
        let k = k.rope(cos, sin)?;
        let (q, x, keys) = match self.last.as_ref().filter(|_| i + 1 == cfg.num_hidden_layers) {
            None => (q.rope(cos, sin)?, x.clone(), &self.keys),
            Some(r) => (r.of(&q, 1)?.rope(&r.of(cos, 1)?, &r.of(sin, 1)?)?, r.of(x, 1)?, &r.keys),
        };
        let a = merge_heads(&q.attention_with(&k, &v, keys, scale)?.out)?;
        let o = linear_named(params, &p("self_attn.o_proj"), &a)?;
        let w = params.get(&p("post_attention_layernorm.weight"))?;
        let (x, n) = o.rms_norm_residual(&x, Some(&w), eps, RmsNormKind::Plain)?;
        let g = linear_named(params, &p("mlp.gate_up_proj"), &n)?.swiglu()?;
        x.add(&linear_named(params, &p("mlp.down_proj"), &g)?)
    }
}
