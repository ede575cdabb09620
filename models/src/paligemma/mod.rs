//! PaliGemma (`PaliGemmaForConditionalGeneration`: SigLIP + one linear projector + Gemma),
//! mirroring transformers 5.24.0 `models/paligemma/modeling_paligemma.py`; see
//! `shared/MODELS.md` §2 for the architecture sheet.
//!
//! - [`PaliGemmaConfig`] parses the checkpoint's `config.json`; built-ins
//!   `paligemma-3b-pt-224` and `tiny`.
//! - [`param_shapes`] lists the on-disk tensors; [`PaliGemma::from_params`],
//!   [`PaliGemma::load`] and [`PaliGemma::random`] build the model.
//! - [`PaliGemma::forward_trace`] runs the whole model and returns every intermediate the parity
//!   tests check; [`Backbone`] is what the VLA policy uses.
//! - [`PaliGemmaProcessor`] / [`preprocess`]: pixels and token layout.

mod config;
mod gemma;
pub mod names;
mod processor;
mod siglip;

pub use config::{Activation, PaliGemmaConfig, TextConfig, VisionConfig, NEWLINE_TOKEN};
pub use names::{canonical_name, fused_layout, group_of, num_params, param_shapes};
pub use processor::{preprocess, PaliGemmaProcessor, PromptTokens};

use crate::common::backbone::{Backbone, BackboneInput, BackboneOutput, ParamGroup};
use crate::common::fused::FusedLayout;
use names::{EMBED, LM_HEAD, PROJECTOR};
use std::collections::HashMap;
use std::path::Path;
use vlm4vla_engine::{nn, AttentionMask, DType, Device, Error, ParamStore, Result, Tensor};

const PARAMS: &str = "paligemma parameters";
const INPUT: &str = "paligemma input";

/// A PaliGemma model: its config and its parameters by hub name, the projections of
/// [`names::FUSED`] merged.
#[derive(Clone, Debug)]
pub struct PaliGemma {
    cfg: PaliGemmaConfig,
    params: ParamStore,
    fused: FusedLayout,
    /// Activation checkpointing per transformer block.
    recompute: bool,
}

/// Everything [`PaliGemma::forward_trace`] computes.
#[derive(Clone, Debug)]
pub struct PaliGemmaTrace {
    /// Each SigLIP encoder layer's output `[B, N, vision_hidden]`.
    pub vision_layers: Vec<Tensor>,
    /// The vision tower's last hidden state after `post_layernorm`.
    pub vision_hidden: Tensor,
    /// Projected image features `[B, N, hidden]`.
    pub image_features: Tensor,
    /// Each Gemma layer's output `[B, L, hidden]`.
    pub text_layers: Vec<Tensor>,
    /// After the final norm `[B, L, hidden]`.
    pub last_hidden: Tensor,
    /// `[B, L, vocab]`.
    pub logits: Tensor,
}

impl PaliGemma {
    /// Build from parameters named by any accepted spelling (see [`canonical_name`]). Every
    /// tensor of [`param_shapes`] must be present with its shape, nothing else may be, and all
    /// must share one float dtype; errors name the tensor with expected and found shapes.
    /// `requires_grad` flags are kept; storage is shared, not copied, except that the
    /// projections of [`names::FUSED`] are merged (a store that holds them fused already, as
    /// [`params`](Backbone::params) does, is taken as it is).
    pub fn from_params(cfg: PaliGemmaConfig, params: ParamStore) -> Result<Self> {
        cfg.validate()?;
        let fused = fused_layout(&cfg);
        let canonical: Vec<String> = params.names().iter().map(|n| canonical_name(n)).collect();
        let shapes = fused.expected_shapes(param_shapes(&cfg), canonical.iter().map(String::as_str));
        let expected: HashMap<String, Vec<usize>> = shapes.iter().cloned().collect();
        let mut found: HashMap<String, String> = HashMap::new();
        let mut dtype: Option<(DType, String)> = None;
        for (name, t) in params.iter() {
            let canon = canonical_name(name);
            let Some(shape) = expected.get(&canon) else {
                let why = if canon == format!("{LM_HEAD}.weight") {
                    "unexpected: the config ties the output layer to the embedding (tie_word_embeddings)".to_string()
                } else {
                    format!("unexpected: not a parameter of this PaliGemma config (as `{canon}`)")
                };
                return Err(Error::tensor(PARAMS, name, why));
            };
            if t.shape() != shape.as_slice() {
                return Err(Error::tensor(PARAMS, name, format!("expected shape {shape:?}, found {:?}", t.shape())));
            }
            if let Some(other) = found.insert(canon.clone(), name.to_string()) {
                return Err(Error::tensor(PARAMS, name, format!("given twice (also as `{other}`)")));
            }
            match &dtype {
                None if t.dtype().is_float() => dtype = Some((t.dtype(), name.to_string())),
                Some((d, _)) if *d == t.dtype() => {}
                Some((d, first)) => {
                    return Err(Error::tensor(
                        PARAMS,
                        name,
                        format!("dtype {} differs from `{first}` ({d}); convert the store to one dtype", t.dtype()),
                    ))
                }
                None => {
                    return Err(Error::tensor(PARAMS, name, format!("expected a float tensor, found {}", t.dtype())))
                }
            }
        }
        let mut store = ParamStore::new();
        for (canon, shape) in shapes {
            let Some(orig) = found.get(&canon) else {
                return Err(Error::tensor(PARAMS, &canon, format!("missing (expected shape {shape:?})")));
            };
            store.insert(canon.clone(), &params.get(orig)?)?;
            store.set_requires_grad(&canon, params.requires_grad(orig)?)?;
        }
        let params = fused.merge(store)?;
        Ok(PaliGemma { cfg, params, fused, recompute: false })
    }

    /// Random parameters in `dtype` (seeded): matrices and embeddings N(0, 0.02²), LayerNorm
    /// weights 1, biases 0, Gemma's zero-centred RMSNorm weights 0.
    pub fn random(cfg: PaliGemmaConfig, seed: u64, dtype: DType) -> Result<Self> {
        if !dtype.is_float() {
            return Err(Error::Invalid { op: "PaliGemma::random", msg: format!("dtype {dtype} is not a float dtype") });
        }
        let store = crate::common::init::random_store(param_shapes(&cfg), |i, name, shape| {
            if shape.len() >= 2 {
                Tensor::rand_normal(0.0, 0.02, shape, dtype, Device::Cpu, seed.wrapping_add(i as u64))
            } else if name.ends_with("bias") || name.starts_with(names::TEXT) {
                Tensor::zeros(shape, dtype, Device::Cpu)
            } else {
                Tensor::ones(shape, dtype, Device::Cpu)
            }
        })?;
        Self::from_params(cfg, store)
    }

    /// Load a checkpoint directory (`config.json` + `model.safetensors` or a sharded
    /// `model.safetensors.index.json`), or a model id found in the local Hugging Face cache
    /// (`google/paligemma-3b-pt-224`). Tensors are converted to `dtype` when given; otherwise all
    /// must share one float dtype. Shapes are checked before any data is read; errors name the
    /// file and tensor.
    pub fn load(dir_or_id: impl AsRef<Path>, dtype: Option<DType>) -> Result<Self> {
        let (cfg, params) = crate::common::checkpoint::read_checkpoint(
            dir_or_id.as_ref(),
            dtype,
            "PaliGemma",
            |p| PaliGemmaConfig::from_file(p),
            param_shapes,
            canonical_name,
        )?;
        Self::from_params(cfg, params)
    }

    pub fn config(&self) -> &PaliGemmaConfig {
        &self.cfg
    }

    /// The parameters, mutable (freezing, optimizer updates through the handles).
    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    /// The dtype the parameters (and so the activations) are in.
    pub fn dtype(&self) -> Result<DType> {
        Ok(self.params.get(&format!("{EMBED}.weight"))?.dtype())
    }

    /// Vision tower + projector: `[B, 3, S, S]` pixels → `[B, N, hidden]` image features.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let v = siglip::forward(&self.cfg.vision, &self.params, pixel_values, self.recompute, None)?;
        nn::linear_named(&self.params, PROJECTOR, &v)
    }

    /// The whole model over a batch, keeping every intermediate the parity tests compare.
    pub fn forward_trace(&self, input: &BackboneInput) -> Result<PaliGemmaTrace> {
        let mut vision_layers = Vec::new();
        let vision_hidden = siglip::forward(
            &self.cfg.vision,
            &self.params,
            &input.pixel_values,
            self.recompute,
            Some(&mut vision_layers),
        )?;
        let image_features = nn::linear_named(&self.params, PROJECTOR, &vision_hidden)?;
        let (x, mask, padding) = self.merge(input, &image_features, None)?;
        let mut text_layers = Vec::new();
        let last_hidden = gemma::decoder(
            &self.cfg.text,
            &self.params,
            x,
            &mask,
            Some(&padding),
            self.recompute,
            Some(&mut text_layers),
            None,
        )?;
        let logits = gemma::lm_head(&self.cfg, &self.params, &last_hidden)?;
        Ok(PaliGemmaTrace { vision_layers, vision_hidden, image_features, text_layers, last_hidden, logits })
    }

    /// The decoder input: scaled text embeddings with the image features scattered into the
    /// image-token rows, `extra` rows appended; the prefix-LM mask and the key padding.
    fn merge(
        &self,
        input: &BackboneInput,
        image_features: &Tensor,
        extra: Option<&Tensor>,
    ) -> Result<(Tensor, AttentionMask, Tensor)> {
        let ids_t = &input.input_ids;
        let s = ids_t.shape();
        if s.len() != 2 || s[0] == 0 || s[1] == 0 || ids_t.dtype() != DType::I64 {
            return Err(Error::tensor(
                INPUT,
                "input_ids",
                format!("expected a non-empty i64 [B, L] tensor, found {} {s:?}", ids_t.dtype()),
            ));
        }
        let (b, l) = (s[0], s[1]);
        let per_token = |t: &Tensor, name: &str| -> Result<Vec<i64>> {
            if t.shape() != [b, l] || t.dtype().is_float() {
                return Err(Error::tensor(
                    INPUT,
                    name,
                    format!(
                        "expected an integer [{b}, {l}] tensor like input_ids, found {} {:?}",
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
            t.to_vec::<i64>()
        };
        let ids = ids_t.to_vec::<i64>()?;
        let attn = per_token(&input.attention_mask, "attention_mask")?;
        let types = per_token(&input.token_type, "token_type_ids")?;
        let n = self.cfg.num_image_tokens();
        if image_features.shape()[0] != b {
            return Err(Error::tensor(
                INPUT,
                "pixel_values",
                format!("{} images for a batch of {b} prompts", image_features.shape()[0]),
            ));
        }

        // Prefix length per row (in padded coordinates): the prefix is every real token of type
        // 0 and must come before the suffix (type 1).
        let mut prefix = Vec::with_capacity(b);
        for r in 0..b {
            let row = r * l..(r + 1) * l;
            let mut end = l;
            for j in 0..l {
                if attn[row.start + j] == 0 {
                    continue;
                }
                let ty = types[row.start + j];
                if ty != 0 && end == l {
                    end = j;
                } else if ty == 0 && end < l {
                    return Err(Error::tensor(
                        INPUT,
                        "token_type_ids",
                        format!("row {r}: a prefix token (type 0) at {j} follows a suffix token (type 1) at {end}"),
                    ));
                }
            }
            let images = ids[row].iter().filter(|&&id| id == self.cfg.image_token_id).count();
            if images != n {
                return Err(Error::tensor(
                    INPUT,
                    "input_ids",
                    format!("row {r} has {images} image tokens ({}), expected {n}", self.cfg.image_token_id),
                ));
            }
            prefix.push(end);
        }

        let x = gemma::embed(&self.cfg, &self.params, &ids, b, l)?;
        let image_mask: Vec<u8> = ids.iter().map(|&id| u8::from(id == self.cfg.image_token_id)).collect();
        let image_mask = Tensor::from_vec(image_mask, &[b, l], x.device())?;
        let h = self.cfg.text.hidden_size;
        let feats = image_features.to_dtype(x.dtype())?.reshape(&[b * n, h])?;
        let mut x = x.masked_scatter(&image_mask, &feats)?;

        let mut padding: Vec<u8> = attn.iter().map(|&a| u8::from(a != 0)).collect();
        let mut total = l;
        if let Some(e) = extra {
            let es = e.shape();
            if es.len() != 3 || es[0] != b || es[2] != h {
                return Err(Error::tensor(INPUT, "extra", format!("expected [{b}, Q, {h}], found {es:?}")));
            }
            let q = es[1];
            x = Tensor::cat(&[&x, &e.to_dtype(x.dtype())?], 1)?;
            padding = (0..b)
                .flat_map(|r| padding[r * l..(r + 1) * l].iter().copied().chain(std::iter::repeat_n(1, q)))
                .collect();
            total += q;
        }
        // Host data: attention resolves the padding on the host, so it is never uploaded.
        let padding = Tensor::from_vec(padding, &[b, total], Device::Cpu)?;
        Ok((x, AttentionMask::PrefixLm(prefix), padding))
    }
}

impl Backbone for PaliGemma {
    fn family(&self) -> &'static str {
        "paligemma"
    }

    fn hidden_size(&self) -> usize {
        self.cfg.text.hidden_size
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    fn num_lm_layers(&self) -> usize {
        self.cfg.text.num_hidden_layers
    }

    fn group_of(&self, name: &str) -> ParamGroup {
        group_of(name)
    }

    fn fused(&self) -> &FusedLayout {
        &self.fused
    }

    fn set_checkpoint_activations(&mut self, on: bool) {
        self.recompute = on;
    }

    fn checkpoint_activations(&self) -> bool {
        self.recompute
    }

    /// Appended rows sit after the prompt like suffix tokens: causal among themselves, seeing
    /// every real prompt token; positions continue `L + 1, …`.
    fn forward(&self, input: &BackboneInput, extra: Option<&Tensor>) -> Result<BackboneOutput> {
        let feats = self.image_features(&input.pixel_values)?;
        let (x, mask, padding) = self.merge(input, &feats, extra)?;
        let l = input.input_ids.shape()[1];
        let total = x.shape()[1];
        let hidden =
            gemma::decoder(&self.cfg.text, &self.params, x, &mask, Some(&padding), self.recompute, None, None)?;
        Ok(BackboneOutput { hidden, appended: l..total })
    }

    fn forward_last_rows(&self, input: &BackboneInput, extra: Option<&Tensor>, rows: usize) -> Result<Tensor> {
        let feats = self.image_features(&input.pixel_values)?;
        let (x, mask, padding) = self.merge(input, &feats, extra)?;
        gemma::decoder(&self.cfg.text, &self.params, x, &mask, Some(&padding), self.recompute, None, Some(rows))
    }
}
