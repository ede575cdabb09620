//! A tiny [`Backbone`] for tests, examples and smoke runs of the training loop: no pretrained
//! weights, a few thousand parameters, and every part of the backbone contract (image tokens at
//! their placeholder positions, left padding, appended rows, parameter groups).
//!
//! - vision (`vision.*`): the image `[B, 3, H, W]` cut into `patch × patch` patches, a linear
//!   projection + GELU per patch, mean-pooled into one vector per image;
//! - connector (`connector.*`): a linear map of that vector into the language model's width;
//! - embeddings (`model.embed_tokens.weight`): token embeddings; rows whose `token_type` is 1 get
//!   the image vector instead;
//! - language model (`model.layers.0.*`, `model.norm.weight`): one pre-norm block (causal
//!   multi-head attention over prompt + appended rows with the padding masked, then a GELU MLP)
//!   and a final RMSNorm.

use vlm4vla_engine::nn::{self, embedding, linear_named, merge_heads, rms_norm_named, split_heads};
use vlm4vla_engine::{AttentionKeys, AttentionMask, DType, Device, Error, ParamStore, Result, RmsNormKind, Tensor};
use vlm4vla_models::{Backbone, BackboneInput, BackboneOutput, ParamGroup};

/// Sizes of a [`ToyBackbone`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToyConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub heads: usize,
    pub mlp: usize,
    /// Images are `[B, 3, image_size, image_size]`.
    pub image_size: usize,
    pub patch: usize,
}

impl Default for ToyConfig {
    fn default() -> Self {
        ToyConfig { vocab: 16, hidden: 32, heads: 2, mlp: 64, image_size: 8, patch: 4 }
    }
}

/// See the module docs.
pub struct ToyBackbone {
    cfg: ToyConfig,
    params: ParamStore,
    recompute: bool,
}

impl ToyBackbone {
    /// Random weights from `seed` (f32, CPU).
    pub fn new(cfg: ToyConfig, seed: u64) -> Result<ToyBackbone> {
        if cfg.hidden == 0 || cfg.heads == 0 || !cfg.hidden.is_multiple_of(cfg.heads) {
            return Err(Error::Invalid {
                op: "ToyBackbone",
                msg: format!("hidden {} and heads {}", cfg.hidden, cfg.heads),
            });
        }
        if cfg.patch == 0 || !cfg.image_size.is_multiple_of(cfg.patch) || cfg.vocab == 0 {
            return Err(Error::Invalid { op: "ToyBackbone", msg: format!("bad config {cfg:?}") });
        }
        let (h, dev, f32) = (cfg.hidden, Device::Cpu, DType::F32);
        let mut ps = ParamStore::new();
        let mut n = 0u64;
        let mut weight = |ps: &mut ParamStore, name: &str, out: usize, inp: usize, bias: bool| -> Result<()> {
            n += 1;
            let w = Tensor::rand_normal(0.0, 1.0 / (inp as f64).sqrt(), &[out, inp], f32, dev, seed.wrapping_add(n))?;
            ps.insert(format!("{name}.weight"), &w)?;
            if bias {
                ps.insert(format!("{name}.bias"), &Tensor::zeros(&[out], f32, dev)?)?;
            }
            Ok(())
        };
        weight(&mut ps, "vision.patch_embed", h, 3 * cfg.patch * cfg.patch, true)?;
        weight(&mut ps, "connector.proj", h, h, true)?;
        ps.insert(
            "model.embed_tokens.weight",
            &Tensor::rand_normal(0.0, 1.0, &[cfg.vocab, h], f32, dev, seed.wrapping_add(100))?,
        )?;
        for name in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            weight(&mut ps, &format!("model.layers.0.self_attn.{name}"), h, h, false)?;
        }
        weight(&mut ps, "model.layers.0.mlp.up_proj", cfg.mlp, h, false)?;
        weight(&mut ps, "model.layers.0.mlp.down_proj", h, cfg.mlp, false)?;
        for name in ["model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm", "model.norm"] {
            ps.insert(format!("{name}.weight"), &Tensor::ones(&[h], f32, dev)?)?;
        }
        Ok(ToyBackbone { cfg, params: ps, recompute: false })
    }

    pub fn config(&self) -> &ToyConfig {
        &self.cfg
    }

    /// `[B, 3, S, S]` → one vector per image, `[B, hidden]`.
    fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let (s, p) = (self.cfg.image_size, self.cfg.patch);
        if pixels.rank() != 4 || pixels.dim(1)? != 3 || pixels.dim(2)? != s || pixels.dim(3)? != s {
            return Err(Error::ShapeMismatch {
                op: "ToyBackbone",
                shapes: vec![pixels.shape().to_vec()],
                note: format!("pixel_values must be [batch, 3, {s}, {s}]"),
            });
        }
        let (b, g) = (pixels.dim(0)?, s / p);
        let patches = pixels
            .to_dtype(DType::F32)?
            .reshape(&[b, 3, g, p, g, p])?
            .permute(&[0, 2, 4, 1, 3, 5])?
            .reshape(&[b, g * g, 3 * p * p])?;
        let v = linear_named(&self.params, "vision.patch_embed", &patches)?.gelu()?.mean(1)?;
        linear_named(&self.params, "connector.proj", &v)
    }
}

impl Backbone for ToyBackbone {
    fn family(&self) -> &'static str {
        "toy"
    }

    fn hidden_size(&self) -> usize {
        self.cfg.hidden
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    fn group_of(&self, name: &str) -> ParamGroup {
        if name.starts_with("vision.") {
            ParamGroup::Vision
        } else if name.starts_with("connector.") {
            ParamGroup::Connector
        } else if name.starts_with("model.embed_tokens.") {
            ParamGroup::Embeddings
        } else {
            ParamGroup::LanguageModel
        }
    }

    fn set_checkpoint_activations(&mut self, on: bool) {
        self.recompute = on;
    }

    fn checkpoint_activations(&self) -> bool {
        self.recompute
    }

    fn forward(&self, input: &BackboneInput, extra: Option<&Tensor>) -> Result<BackboneOutput> {
        let ps = &self.params;
        let (h, heads) = (self.cfg.hidden, self.cfg.heads);
        let ids = &input.input_ids;
        if ids.rank() != 2 || input.attention_mask.shape() != ids.shape() || input.token_type.shape() != ids.shape() {
            return Err(Error::ShapeMismatch {
                op: "ToyBackbone",
                shapes: vec![
                    ids.shape().to_vec(),
                    input.attention_mask.shape().to_vec(),
                    input.token_type.shape().to_vec(),
                ],
                note: "input_ids, attention_mask and token_type must all be [batch, length]".into(),
            });
        }
        let (b, l) = (ids.dim(0)?, ids.dim(1)?);
        let image = self.image_features(&input.pixel_values)?;
        let text = embedding(&ps.get("model.embed_tokens.weight")?, ids)?;
        let mut x = Tensor::where_cond(&input.token_type.unsqueeze(2)?, &image.unsqueeze(1)?, &text)?;
        let mut keys = input.attention_mask.to_dtype(DType::U8)?;
        let q_rows = match extra {
            Some(e) => {
                if e.rank() != 3 || e.dim(0)? != b || e.dim(2)? != h {
                    return Err(Error::ShapeMismatch {
                        op: "ToyBackbone",
                        shapes: vec![e.shape().to_vec()],
                        note: format!("extra rows must be [{b}, Q, {h}]"),
                    });
                }
                let q = e.dim(1)?;
                x = Tensor::cat(&[&x, &e.to_dtype(DType::F32)?], 1)?;
                keys = Tensor::cat(&[&keys, &Tensor::ones(&[b, q], DType::U8, Device::Cpu)?], 1)?;
                q
            }
            None => 0,
        };
        let t = l + q_rows;
        let (ps2, keys) = (ps.clone(), AttentionKeys::new(AttentionMask::Causal, Some(&keys))?);
        let x = nn::block(self.recompute, x, move |x| layer(&ps2, h, heads, &keys, x))?;
        let x = rms_norm_named(ps, "model.norm", &x, 1e-6, RmsNormKind::Plain)?;
        Ok(BackboneOutput { hidden: x, appended: l..t })
    }
}

/// The one decoder layer over `x` `[B, T, hidden]`.
fn layer(ps: &ParamStore, h: usize, heads: usize, keys: &AttentionKeys, x: &Tensor) -> Result<Tensor> {
    let norm = |x: &Tensor, name: &str| rms_norm_named(ps, name, x, 1e-6, RmsNormKind::Plain);
    let a = norm(x, "model.layers.0.input_layernorm")?;
    let proj = |name: &str| -> Result<Tensor> {
        split_heads(&linear_named(ps, &format!("model.layers.0.self_attn.{name}"), &a)?, heads)
    };
    let scale = 1.0 / ((h / heads) as f64).sqrt();
    let att = proj("q_proj")?.attention_with(&proj("k_proj")?, &proj("v_proj")?, keys, scale)?;
    let att = linear_named(ps, "model.layers.0.self_attn.o_proj", &merge_heads(&att.out)?)?;
    let x = x.add(&att)?;
    let m = norm(&x, "model.layers.0.post_attention_layernorm")?;
    let m = linear_named(ps, "model.layers.0.mlp.up_proj", &m)?.gelu()?;
    x.add(&linear_named(ps, "model.layers.0.mlp.down_proj", &m)?)
}
