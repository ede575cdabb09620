//! The Gemma (1) decoder as PaliGemma drives it, mirroring transformers 5.24.0
//! `models/gemma/modeling_gemma.py` and the embedding merge of `models/paligemma/modeling_paligemma.py`.
//!
//! Text embeddings are scaled by `sqrt(hidden)` (the scale first rounded to the weight dtype);
//! projected image features replace the image-token rows unscaled. Layers are pre-norm with
//! Gemma's `(1 + w)` RMSNorm, MQA/GQA attention with half-split RoPE (θ from the config,
//! positions 1-based), a tanh-GeGLU MLP and no biases; a final RMSNorm; `lm_head` is tied to the
//! embedding unless the config says otherwise.

use super::config::{Activation, PaliGemmaConfig, TextConfig};
use super::names::{EMBED, LM_HEAD, TEXT};
use super::siglip::activation;
use crate::common::fused;
use crate::common::last_rows::{keep_last, last_rows, LastRows};
use std::sync::Arc;
use vlm4vla_engine::nn::{self, embedding, linear, linear_named, merge_heads, rms_norm_named};
use vlm4vla_engine::{AttentionKeys, AttentionMask, DType, Device, Error, ParamStore, Result, RmsNormKind, Tensor};

/// `sqrt(hidden)` rounded to `dtype`, as `embed_scale.to(weight.dtype)` does.
fn embed_scale(hidden: usize, dtype: DType) -> Result<f64> {
    let s = (hidden as f64).sqrt();
    Ok(Tensor::full(s, &[1], dtype, Device::Cpu)?.to_vec::<f64>()?[0])
}

/// Token embeddings `[B, L, hidden]` of `ids` `[B, L]`, scaled; image tokens whose id is outside
/// the vocabulary look up row 0 (they are overwritten by image features anyway). Lookups of the
/// pad id pass no gradient to its row (`nn.Embedding(padding_idx=pad)`).
pub(crate) fn embed(cfg: &PaliGemmaConfig, ps: &ParamStore, ids: &[i64], b: usize, l: usize) -> Result<Tensor> {
    let t = &cfg.text;
    let table = ps.get(&format!("{EMBED}.weight"))?;
    let mut lookup = Vec::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        if id == cfg.image_token_id && id >= t.vocab_size as i64 {
            lookup.push(0);
        } else if id < 0 || id >= t.vocab_size as i64 {
            return Err(Error::tensor(
                "paligemma input",
                "input_ids",
                format!("id {id} at [{}, {}] is outside the vocabulary 0..{}", i / l, i % l, t.vocab_size),
            ));
        } else {
            lookup.push(id);
        }
    }
    let mut e = embedding(&table, &Tensor::from_vec(lookup, &[b, l], table.device())?)?;
    if let Some(pad) = t.pad_token_id {
        if e.tracks_grad() && ids.contains(&pad) {
            let m: Vec<u8> = ids.iter().map(|&id| u8::from(id == pad)).collect();
            let m = Tensor::from_vec(m, &[b, l, 1], table.device())?;
            e = Tensor::where_cond(&m, &e.detach(), &e)?;
        }
    }
    e.scale(embed_scale(t.hidden_size, table.dtype())?)
}

/// RoPE tables `[L, head_dim]` for positions `start, start + 1, …`, computed in f32 as
/// `GemmaRotaryEmbedding` does (`inv_freq = 1 / θ^(2i/d)`, `cat(freqs, freqs)`), cast to `dtype`.
fn rope_tables(t: &TextConfig, start: usize, len: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
    let d = t.head_dim;
    let half = d / 2;
    let theta = t.rope_theta as f32;
    let inv: Vec<f32> = (0..half).map(|i| 1.0f32 / theta.powf((2 * i) as f32 / d as f32)).collect();
    let mut cos = Vec::with_capacity(len * d);
    let mut sin = Vec::with_capacity(len * d);
    for p in start..start + len {
        for _ in 0..2 {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    let cos = Tensor::from_vec(cos, &[len, d], Device::Cpu)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, &[len, d], Device::Cpu)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// Run the decoder layers over `x` `[B, L, hidden]` (positions 1..=L) and the final norm.
/// Pushes every layer's output to `trace` when given; `recompute` checkpoints every layer
/// ([`nn::block`]). With `rows`, only the last `rows` rows come out (`[B, rows, hidden]`): the
/// last layer computes keys and values for every row, the rest of itself and the final norm for
/// those rows alone (see [`last_rows`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decoder(
    t: &TextConfig,
    ps: &ParamStore,
    mut x: Tensor,
    mask: &AttentionMask,
    key_padding: Option<&Tensor>,
    recompute: bool,
    mut trace: Option<&mut Vec<Tensor>>,
    rows: Option<usize>,
) -> Result<Tensor> {
    let l = x.shape()[1];
    let (cos, sin) = rope_tables(t, 1, l, x.dtype())?;
    let (cos, sin) = (cos.to_device(x.device())?, sin.to_device(x.device())?);
    let keys = AttentionKeys::new(mask.clone(), key_padding)?;
    let last = last_rows(&keys, l, rows);
    let ctx = Arc::new(LayerContext { t: t.clone(), ps: ps.clone(), cos, sin, keys, last });
    for i in 0..t.num_hidden_layers {
        let c = ctx.clone();
        x = nn::block(recompute, x, move |x| c.layer(i, x))?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.push(x.clone());
        }
    }
    let x = keep_last(x, rows)?;
    rms_norm_named(ps, &format!("{TEXT}norm"), &x, t.rms_norm_eps, RmsNormKind::Gemma)
}

/// What every decoder layer of one forward reads besides its input.
struct LayerContext {
    t: TextConfig,
    ps: ParamStore,
    cos: Tensor,
    sin: Tensor,
    keys: AttentionKeys,
    /// The rows the last layer computes after its keys and values, when not all.
    last: Option<LastRows>,
}

impl LayerContext {
    /// Layer `i` over `x`; the last layer computes only [`Self::last`]'s rows after its keys
    /// and values when set.
    fn layer(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let (t, ps) = (&self.t, &self.ps);
        let (hq, hkv, hd) = (t.num_attention_heads, t.num_key_value_heads, t.head_dim);
        let scale = (hd as f64).powf(-0.5);
        let p = format!("{TEXT}layers.{i}.");
        let a = rms_norm_named(ps, &format!("{p}input_layernorm"), x, t.rms_norm_eps, RmsNormKind::Gemma)?;
        let qkv = linear_named(ps, &format!("{p}self_attn.qkv_proj"), &a)?;
        let [q, k, v] = fused::split_heads(&qkv, [hq, hkv, hkv], hd)?;
        let k = k.rope(&self.cos, &self.sin)?;
        let (q, x, keys) = match self.last.as_ref().filter(|_| i + 1 == t.num_hidden_layers) {
            None => (q.rope(&self.cos, &self.sin)?, x.clone(), &self.keys),
            Some(r) => (r.of(&q, 1)?.rope(&r.of(&self.cos, 0)?, &r.of(&self.sin, 0)?)?, r.of(x, 1)?, &r.keys),
        };
        let o = merge_heads(&q.attention_with(&k, &v, keys, scale)?.out)?;
        let o = linear_named(ps, &format!("{p}self_attn.o_proj"), &o)?;
        let w = ps.get(&format!("{p}post_attention_layernorm.weight"))?;
        let (x, m) = o.rms_norm_residual(&x, Some(&w), t.rms_norm_eps, RmsNormKind::Gemma)?;
        let h = gated(&linear_named(ps, &format!("{p}mlp.gate_up_proj"), &m)?, t.hidden_act)?;
        x.add(&linear_named(ps, &format!("{p}mlp.down_proj"), &h)?)
    }
}

/// The gated MLP activation on a merged `gate|up` projection `[..., 2F]`: `act(gate) · up`, the
/// engine's fused GeGLU for the tanh GELU Gemma uses, the composite for the other activations.
fn gated(gate_up: &Tensor, act: Activation) -> Result<Tensor> {
    if act == Activation::GeluTanh {
        return gate_up.geglu();
    }
    let f = gate_up.shape().last().copied().unwrap_or(0) / 2;
    activation(&gate_up.narrow(-1, 0, f)?, act)?.mul(&gate_up.narrow(-1, f, f)?)
}

/// Logits `[B, L, vocab]` from the final hidden states (tied to the embedding unless untied).
pub(crate) fn lm_head(cfg: &PaliGemmaConfig, ps: &ParamStore, hidden: &Tensor) -> Result<Tensor> {
    let name = if cfg.tie_word_embeddings { format!("{EMBED}.weight") } else { format!("{LM_HEAD}.weight") };
    linear(hidden, &ps.get(&name)?, None)
}
