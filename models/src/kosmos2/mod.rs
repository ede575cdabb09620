//! Kosmos-2 (`microsoft/kosmos-2-patch14-224`): a CLIP ViT-L/14 vision tower, a latent-query
//! connector and a Magneto-style decoder, mirroring `Kosmos2ForConditionalGeneration` in
//! transformers 5.24.0 (`models/kosmos2/modeling_kosmos2.py`), loaded by on-disk tensor name.
//!
//! ```
//! use vlm4vla_engine::DType;
//! use vlm4vla_models::kosmos2::{Kosmos2, Kosmos2Config, Kosmos2Processor};
//! let cfg = Kosmos2Config::tiny();
//! let model = Kosmos2::random(cfg.clone(), 0, DType::F32).unwrap();
//! let proc = Kosmos2Processor::new(&cfg);
//! let rgb = vec![128u8; 28 * 28 * 3];
//! let pixels = proc.preprocess(&rgb, 28, 28).unwrap();
//! let batch = proc.collate(&[pixels], &[vec![20, 21, 22]]).unwrap();
//! let trace = model.forward_trace(&batch).unwrap();
//! assert_eq!(trace.logits.shape(), &[1, 14, 128]);
//! ```

mod clip;
pub mod config;
mod connector;
pub mod names;
pub mod processor;
mod text;

pub use config::{Activation, Kosmos2Config, TextConfig, VisionConfig};
pub use names::{fused_layout, group_of, num_params, param_shapes};
pub use processor::Kosmos2Processor;

use crate::common::backbone::{Backbone, BackboneInput, BackboneOutput, ParamGroup};
use crate::common::fused::FusedLayout;
use names::{EMBED, LM_HEAD};
use std::collections::HashSet;
use std::path::Path;
use vlm4vla_engine::{DType, Device, Error, ParamStore, Result, Tensor};

const SOURCE: &str = "Kosmos2";

/// Everything one forward pass produces, for parity tests and inspection.
#[derive(Clone, Debug)]
pub struct Kosmos2Trace {
    /// Every vision encoder layer's output, `[B, 1 + N, vision hidden]`.
    pub vision_layers: Vec<Tensor>,
    /// The connector output, `[B, latent_query_num, embed_dim]`.
    pub image_features: Tensor,
    /// Every decoder block's output, `[B, T, embed_dim]`.
    pub layers: Vec<Tensor>,
    /// After the final LayerNorm, `[B, T, embed_dim]`.
    pub last_hidden: Tensor,
    /// `[B, T, vocab]`.
    pub logits: Tensor,
}

/// The Kosmos-2 model: a config and its parameters by on-disk name, the projections of
/// [`names::FUSED`] merged.
#[derive(Clone)]
pub struct Kosmos2 {
    cfg: Kosmos2Config,
    params: ParamStore,
    fused: FusedLayout,
    /// Activation checkpointing per transformer block.
    recompute: bool,
}

impl std::fmt::Debug for Kosmos2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kosmos2").field("cfg", &self.cfg).field("params", &self.params.len()).finish()
    }
}

impl Kosmos2 {
    /// Build from named parameters. Every name of [`param_shapes`] must be present with exactly
    /// that shape, and no other name may be (a `text_model.lm_head.weight` in a tied checkpoint
    /// is dropped: it equals the embeddings). All parameters must share one float dtype.
    /// `requires_grad` flags are kept. The projections of [`names::FUSED`] are merged (a store
    /// that holds them fused already, as [`params`](Backbone::params) does, is taken as it is).
    pub fn from_params(cfg: Kosmos2Config, params: ParamStore) -> Result<Kosmos2> {
        cfg.validate().map_err(|msg| Error::Invalid { op: "Kosmos2::from_params", msg })?;
        let fused = fused_layout(&cfg);
        let shapes = fused.expected_shapes(param_shapes(&cfg), params.names().iter().map(String::as_str));
        let expected: HashSet<&str> = shapes.iter().map(|(n, _)| n.as_str()).collect();
        for name in params.names() {
            let tied_copy = cfg.tie_word_embeddings && name == LM_HEAD;
            if !(expected.contains(name.as_str()) || tied_copy) {
                return Err(Error::tensor(
                    SOURCE,
                    name,
                    "unexpected tensor: Kosmos-2 with this config has no such parameter",
                ));
            }
        }
        let mut store = ParamStore::new();
        let mut dtype: Option<(DType, &str)> = None;
        for (name, shape) in &shapes {
            if !params.contains(name) {
                return Err(Error::tensor(SOURCE, name, format!("missing (expected shape {shape:?})")));
            }
            let t = params.get(name)?;
            if t.shape() != shape.as_slice() {
                return Err(Error::tensor(SOURCE, name, format!("expected shape {shape:?}, found {:?}", t.shape())));
            }
            if !t.dtype().is_float() {
                return Err(Error::tensor(SOURCE, name, format!("expected a float tensor, found {}", t.dtype())));
            }
            match dtype {
                None => dtype = Some((t.dtype(), name)),
                Some((d, first)) if d != t.dtype() => {
                    return Err(Error::tensor(
                        SOURCE,
                        name,
                        format!("dtype {} differs from `{first}` ({d}); convert the store first", t.dtype()),
                    ))
                }
                _ => {}
            }
            store.insert(name.clone(), &t)?;
            store.set_requires_grad(name, params.requires_grad(name)?)?;
        }
        let params = fused.merge(store)?;
        Ok(Kosmos2 { cfg, params, fused, recompute: false })
    }

    /// A randomly initialised model (seeded, reproducible): Linear and embedding weights
    /// N(0, 0.02²) (the checkpoint's `init_std`), latent queries N(0, 1), the class embedding
    /// N(0, 1/hidden), LayerNorms at identity, biases zero, the padding row of the embeddings zero.
    pub fn random(cfg: Kosmos2Config, seed: u64, dtype: DType) -> Result<Kosmos2> {
        if !dtype.is_float() {
            return Err(Error::Invalid { op: "Kosmos2::random", msg: format!("dtype {dtype} is not a float dtype") });
        }
        let ps = crate::common::init::random_store(param_shapes(&cfg), |i, name, shape| {
            let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64);
            let dev = Device::Cpu;
            let is_norm = name.contains("layer_norm")
                || name.contains("layrnorm")
                || name.contains("layernorm")
                || name.contains("inner_attn_ln");
            if name.ends_with("latent_query") {
                Tensor::rand_normal(0.0, 1.0, shape, dtype, dev, s)
            } else if name.ends_with("class_embedding") {
                Tensor::rand_normal(0.0, (shape[0] as f64).powf(-0.5), shape, dtype, dev, s)
            } else if is_norm && name.ends_with(".weight") {
                Tensor::ones(shape, dtype, dev)
            } else if shape.len() == 1 {
                Tensor::zeros(shape, dtype, dev)
            } else if name == EMBED {
                let mut v = Tensor::rand_normal(0.0, 0.02, shape, DType::F32, dev, s)?.to_vec::<f32>()?;
                let pad = cfg.text.pad_token_id as usize;
                v[pad * shape[1]..(pad + 1) * shape[1]].fill(0.0);
                Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)
            } else {
                Tensor::rand_normal(0.0, 0.02, shape, dtype, dev, s)
            }
        })?;
        Self::from_params(cfg, ps)
    }

    /// Load a checkpoint directory (`config.json` + `model.safetensors`, or the shards listed by
    /// `model.safetensors.index.json`) or a model id in the local Hugging Face cache
    /// (`microsoft/kosmos-2-patch14-224`). Tensors are converted to `dtype` when given; otherwise
    /// all must share one float dtype. Shapes are checked before any data is read; errors name
    /// the file and tensor.
    pub fn load(dir_or_id: impl AsRef<Path>, dtype: Option<DType>) -> Result<Kosmos2> {
        let (cfg, params) = crate::common::checkpoint::read_checkpoint(
            dir_or_id.as_ref(),
            dtype,
            "Kosmos-2",
            |p| Kosmos2Config::from_file(p),
            names::stored_shapes,
            str::to_string,
        )?;
        Self::from_params(cfg, params)
    }

    pub fn config(&self) -> &Kosmos2Config {
        &self.cfg
    }

    /// The parameters, by on-disk name (mutable for freezing and dtype changes).
    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    /// The image embeddings the decoder receives: `[B, latent_query_num, embed_dim]`.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let vis = clip::forward(&self.cfg.vision, &self.params, pixel_values, self.recompute)?;
        connector::forward(&self.cfg, &self.params, &vis.features)
    }

    /// The full forward pass with every intermediate the parity tests compare.
    pub fn forward_trace(&self, input: &BackboneInput) -> Result<Kosmos2Trace> {
        let (vision_layers, image_features, layers, last_hidden) = self.run(input, None, None)?;
        let logits = text::logits(&self.cfg, &self.params, &last_hidden)?;
        Ok(Kosmos2Trace { vision_layers, image_features, layers, last_hidden, logits })
    }

    /// The model over `input` (+ `extra` rows): vision layers, image features, text layers and
    /// the final hidden states (their last `rows` rows alone with `rows`: `text::decode`).
    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        input: &BackboneInput,
        extra: Option<&Tensor>,
        rows: Option<usize>,
    ) -> Result<(Vec<Tensor>, Tensor, Vec<Tensor>, Tensor)> {
        let ids = &input.input_ids;
        if ids.rank() != 2 || ids.dtype() != DType::I64 {
            return Err(Error::Invalid {
                op: SOURCE,
                msg: format!("input_ids must be [batch, len] i64, found {:?} {}", ids.shape(), ids.dtype()),
            });
        }
        let (b, l) = (ids.shape()[0], ids.shape()[1]);
        if input.pixel_values.rank() != 4 || input.pixel_values.shape()[0] != b {
            return Err(Error::Invalid {
                op: SOURCE,
                msg: format!(
                    "pixel_values must be [{b}, {}, {}, {}] (one image per sequence), found {:?}",
                    self.cfg.vision.num_channels,
                    self.cfg.vision.image_size,
                    self.cfg.vision.image_size,
                    input.pixel_values.shape()
                ),
            });
        }
        // The batch's own mask, host data: attention resolves the padding on the host.
        let attn = text::mask_u8("attention_mask", &input.attention_mask, b, l)?.to_vec::<u8>()?;
        let img_mask = text::mask_u8("image_embeds_position_mask", &input.token_type, b, l)?;
        let vis = clip::forward(&self.cfg.vision, &self.params, &input.pixel_values, self.recompute)?;
        let image = connector::forward(&self.cfg, &self.params, &vis.features)?;
        let h = text::embed(&self.cfg.text, &self.params, ids, &img_mask, &image, extra)?;
        let q = extra.map_or(0, |x| x.shape()[1]);
        let padding: Vec<u8> =
            attn.chunks(l.max(1)).flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(1, q))).collect();
        let key_padding = Tensor::from_vec(padding, &[b, l + q], Device::Cpu)?;
        let (layers, last) = text::decode(&self.cfg.text, &self.params, h, &key_padding, self.recompute, rows)?;
        Ok((vis.layers, image, layers, last))
    }
}

impl Backbone for Kosmos2 {
    fn family(&self) -> &'static str {
        "kosmos2"
    }

    fn hidden_size(&self) -> usize {
        self.cfg.text.embed_dim
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    fn num_lm_layers(&self) -> usize {
        self.cfg.text.layers
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

    /// The decoder's last hidden states (after the final LayerNorm). Appended rows are treated
    /// like token embeddings: scaled by `sqrt(embed_dim)`, given the positions that follow each
    /// row's last real token, causal among themselves and seeing every real prompt token.
    fn forward(&self, input: &BackboneInput, extra: Option<&Tensor>) -> Result<BackboneOutput> {
        let l = input.input_ids.shape().get(1).copied().unwrap_or(0);
        let q = extra.map_or(0, |x| x.shape().get(1).copied().unwrap_or(0));
        let (_, _, _, hidden) = self.run(input, extra, None)?;
        Ok(BackboneOutput { hidden, appended: l..l + q })
    }

    fn forward_last_rows(&self, input: &BackboneInput, extra: Option<&Tensor>, rows: usize) -> Result<Tensor> {
        Ok(self.run(input, extra, Some(rows))?.3)
    }
}
