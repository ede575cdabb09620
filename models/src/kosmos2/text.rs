//! The Magneto-style text decoder (`text_model.*`), mirroring `Kosmos2TextTransformer` and
//! `Kosmos2TextForCausalLM` in transformers 5.24.0 `models/kosmos2/modeling_kosmos2.py`:
//! token embeddings with the image embeddings written at the marked rows, everything scaled by
//! `sqrt(embed_dim)`, fairseq sinusoidal positions (offset 2, padding row zero, sin and cos
//! halves concatenated), pre-LN blocks with `inner_attn_ln` before `out_proj` and
//! `ffn_layernorm` inside the FFN, a final LayerNorm and a (tied) `lm_head`.

use super::config::{Kosmos2Config, TextConfig};
use super::names::{EMBED, LM_HEAD, TEXT};
use crate::common::fused;
use crate::common::last_rows::{keep_last, last_rows, LastRows};
use std::sync::Arc;
use vlm4vla_engine::nn::{self, embedding, layer_norm_named, linear, linear_named, merge_heads};
use vlm4vla_engine::{AttentionKeys, AttentionMask, DType, Device, Error, ParamStore, Result, Tensor};

/// Position ids per row, `[B, L + extra]` row-major: `cumsum(ids != pad) · (ids != pad) + pad`
/// over the prompt (so the first real token gets `pad + 1` = 2 and padding gets `pad` = 1),
/// and the `extra` appended rows continue after the row's last real token.
pub(crate) fn position_ids(ids: &[i64], b: usize, l: usize, pad: i64, extra: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(b * (l + extra));
    for row in ids.chunks(l.max(1)).take(b) {
        let mut count = 0i64;
        for &id in row {
            if id != pad {
                count += 1;
                out.push(count + pad);
            } else {
                out.push(pad);
            }
        }
        out.extend((1..=extra as i64).map(|q| count + q + pad));
    }
    out
}

/// The sinusoidal embeddings of `positions` as `[positions.len(), dim]`, computed in f32 the
/// way `Kosmos2TextSinusoidalPositionalEmbedding.get_embedding` builds its table (rows are
/// `[sin(p·f), cos(p·f)]` with `f_k = exp(−k·ln(10000)/(half − 1))`, a zero column appended for
/// odd `dim`, and the `padding_idx` row zero).
pub(crate) fn sinusoid(positions: &[i64], dim: usize, padding_idx: i64) -> Vec<f32> {
    let half = dim / 2;
    let step = (10000f64.ln() / (half as f64 - 1.0)) as f32;
    let freqs: Vec<f32> = (0..half).map(|k| (k as f32 * -step).exp()).collect();
    let mut out = vec![0f32; positions.len() * dim];
    for (row, &p) in out.chunks_mut(dim).zip(positions) {
        if p == padding_idx {
            continue;
        }
        let pf = p as f32;
        for (k, &f) in freqs.iter().enumerate() {
            let a = pf * f;
            row[k] = a.sin();
            row[half + k] = a.cos();
        }
    }
    out
}

/// The decoder input: embeddings (image rows replaced), appended rows, scale, positions.
///
/// `ids`: `[B, L]` i64; `image_mask`: `[B, L]`, set on exactly `B · latent_query_num` rows;
/// `image`: `[B, Q, D]`; `extra`: `[B, Q', D]` rows appended after the prompt (treated like
/// token embeddings: scaled, and given the positions that follow the prompt).
pub(crate) fn embed(
    cfg: &TextConfig,
    ps: &ParamStore,
    ids: &Tensor,
    image_mask: &Tensor,
    image: &Tensor,
    extra: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, l) = (ids.shape()[0], ids.shape()[1]);
    let d = cfg.embed_dim;
    let table = ps.get(EMBED)?;
    let ids_v = ids.to_vec::<i64>()?;
    if let Some((i, &bad)) = ids_v.iter().enumerate().find(|(_, &t)| t < 0 || t as usize >= cfg.vocab_size) {
        return Err(Error::Invalid {
            op: "Kosmos2 text",
            msg: format!("input_ids[{}][{}] = {bad} is outside the vocabulary (size {})", i / l, i % l, cfg.vocab_size),
        });
    }
    let e = embedding(&table, ids)?;
    let img_rows = image.reshape(&[image.shape()[0] * image.shape()[1], d])?.to_dtype(e.dtype())?;
    let marked = image_mask.to_vec::<i64>()?.iter().filter(|&&m| m != 0).count();
    if marked != img_rows.shape()[0] {
        return Err(Error::Invalid {
            op: "Kosmos2 text",
            msg: format!(
                "image_embeds_position_mask marks {marked} rows, but the batch has {} image embeddings ({} images × {} latent queries)",
                img_rows.shape()[0],
                image.shape()[0],
                image.shape()[1]
            ),
        });
    }
    let mut h = e.masked_scatter(image_mask, &img_rows)?;
    let mut q = 0;
    if let Some(x) = extra {
        if x.rank() != 3 || x.shape()[0] != b || x.shape()[2] != d {
            return Err(Error::Invalid {
                op: "Kosmos2 text",
                msg: format!("appended rows must be [{b}, Q, {d}], found {:?}", x.shape()),
            });
        }
        q = x.shape()[1];
        h = Tensor::cat(&[&h, &x.to_dtype(h.dtype())?], 1)?;
    }
    if cfg.scale_embedding {
        h = h.scale((d as f64).sqrt())?;
    }
    let pos = position_ids(&ids_v, b, l, cfg.pad_token_id, q);
    let table = sinusoid(&pos, d, cfg.pad_token_id);
    let pos = Tensor::from_vec(table, &[b, l + q, d], Device::Cpu)?.to_dtype(h.dtype())?.to_device(h.device())?;
    h.add(&pos)
}

/// The decoder blocks and the final LayerNorm over `h` (`[B, T, D]`), causal with `key_padding`
/// (`[B, T]` u8, 1 = real). Returns every block's output and the final-LN output; with `rows`,
/// only the last `rows` rows of the latter, the last block computing the rest of itself after
/// its keys and values for those rows alone (`common::last_rows`).
pub(crate) fn decode(
    cfg: &TextConfig,
    ps: &ParamStore,
    h: Tensor,
    key_padding: &Tensor,
    recompute: bool,
    rows: Option<usize>,
) -> Result<(Vec<Tensor>, Tensor)> {
    let eps = cfg.layer_norm_eps;
    let mut x = h;
    let mut layers = Vec::with_capacity(cfg.layers);
    let keys = AttentionKeys::new(AttentionMask::Causal, Some(key_padding))?;
    let last = last_rows(&keys, x.shape()[1], rows);
    let ctx = Arc::new(Layers { cfg: cfg.clone(), ps: ps.clone(), keys, last });
    for i in 0..cfg.layers {
        let c = ctx.clone();
        x = nn::block(recompute, x, move |x| c.layer(i, x))?;
        layers.push(x.clone());
    }
    let last = layer_norm_named(ps, &format!("{TEXT}.layer_norm"), &keep_last(x, rows)?, eps)?;
    Ok((layers, last))
}

/// What every decoder block of one forward reads besides its input.
struct Layers {
    cfg: TextConfig,
    ps: ParamStore,
    keys: AttentionKeys,
    /// The rows the last block computes after its keys and values, when not all.
    last: Option<LastRows>,
}

impl Layers {
    /// Decoder block `i` over `x` `[B, T, D]` (the last one: see [`Self::last`]).
    fn layer(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let (cfg, ps) = (&self.cfg, &self.ps);
        let eps = cfg.layer_norm_eps;
        let heads = cfg.attention_heads;
        let scale = (cfg.head_dim() as f64).powf(-0.5);
        let l = format!("{TEXT}.layers.{i}");
        let a = layer_norm_named(ps, &format!("{l}.self_attn_layer_norm"), x, eps)?;
        let qkv = linear_named(ps, &format!("{l}.self_attn.qkv_proj"), &a)?;
        let [q, k, v] = fused::split_heads(&qkv, [heads; 3], cfg.head_dim())?;
        let (q, x, keys) = match self.last.as_ref().filter(|_| i + 1 == cfg.layers) {
            None => (q, x.clone(), &self.keys),
            Some(r) => (r.of(&q, 1)?, r.of(x, 1)?, &r.keys),
        };
        let o = merge_heads(&q.attention_with(&k, &v, keys, scale)?.out)?;
        let o = layer_norm_named(ps, &format!("{l}.self_attn.inner_attn_ln"), &o, eps)?;
        let x = x.add(&linear_named(ps, &format!("{l}.self_attn.out_proj"), &o)?)?;
        let f = layer_norm_named(ps, &format!("{l}.final_layer_norm"), &x, eps)?;
        let f = cfg.activation_function.apply(&linear_named(ps, &format!("{l}.ffn.fc1"), &f)?)?;
        let f = layer_norm_named(ps, &format!("{l}.ffn.ffn_layernorm"), &f, eps)?;
        x.add(&linear_named(ps, &format!("{l}.ffn.fc2"), &f)?)
    }
}

/// `lm_head` over the last hidden states: `embed_tokens` when tied.
pub(crate) fn logits(cfg: &Kosmos2Config, ps: &ParamStore, last: &Tensor) -> Result<Tensor> {
    let w = if cfg.tie_word_embeddings { ps.get(EMBED)? } else { ps.get(LM_HEAD)? };
    linear(last, &w, None)
}

/// A `[B, L]` 0/1 mask (u8 or i64) as u8, checking its shape; `name` is the input's name.
pub(crate) fn mask_u8(name: &str, m: &Tensor, b: usize, l: usize) -> Result<Tensor> {
    if m.shape() != [b, l] {
        return Err(Error::Invalid { op: "Kosmos2", msg: format!("{name} must be [{b}, {l}], found {:?}", m.shape()) });
    }
    match m.dtype() {
        DType::U8 => Ok(m.clone()),
        DType::I64 => {
            let v: Vec<u8> = m.to_vec::<i64>()?.into_iter().map(|x| u8::from(x != 0)).collect();
            Tensor::from_vec(v, &[b, l], Device::Cpu)?.to_device(m.device())
        }
        other => Err(Error::Invalid { op: "Kosmos2", msg: format!("{name} must be u8 or i64, found {other}") }),
    }
}
