//! Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`, transformers 5.24.0): the windowed
//! 2-D-rope vision tower with its 2×2 merger, and the Qwen2 language model with M-RoPE, loaded by
//! the checkpoint's on-disk tensor names (`visual.*`, `model.*`, `lm_head.weight` when untied).
//!
//! ```
//! use vlm4vla_engine::DType;
//! use vlm4vla_models::qwen2_5_vl::{num_params, Qwen25Vl, Qwen25VlConfig};
//! assert_eq!(num_params(&Qwen25VlConfig::qwen2_5_vl_3b()), 3_754_622_976);
//! let model = Qwen25Vl::random(Qwen25VlConfig::tiny(), 0, DType::F32).unwrap();
//! assert_eq!(model.params().num_params(), num_params(model.config()));
//! # use vlm4vla_models::Backbone;
//! ```

pub mod config;
pub mod names;
pub mod processor;
pub mod text;
pub mod vision;

pub use config::{Qwen25VlConfig, TextConfig, VisionConfig};
pub use names::{fused_layout, group_of, hub_name, num_params, param_shapes};
pub use processor::{
    chat_layout, collate, patchify, preprocess, smart_resize, ChatTokens, ProcessedImage, PromptLayout,
    Qwen25VlProcessor,
};

use crate::common::fused::FusedLayout;
use crate::{Backbone, BackboneInput, BackboneOutput, ParamGroup};
use std::collections::HashMap;
use std::path::Path;
use vlm4vla_engine::{nn, DType, Device, Error, ParamStore, Result, Tensor};

const STORE: &str = "qwen2_5_vl parameters";

/// A Qwen2.5-VL model: its config and its parameters by hub name, the projections of
/// [`names::FUSED`] merged.
pub struct Qwen25Vl {
    cfg: Qwen25VlConfig,
    params: ParamStore,
    fused: FusedLayout,
    /// Activation checkpointing per transformer block.
    recompute: bool,
}

/// Everything a parity check looks at, from one forward pass.
#[derive(Clone, Debug)]
pub struct Qwen25VlTrace {
    /// `[Σ image tokens, hidden]` merged image features in raster order (none without images).
    pub image_features: Option<Tensor>,
    /// Each vision block's output `[Σ patches, vision hidden]`, in the tower's window order.
    pub vision_blocks: Vec<Tensor>,
    /// Each decoder layer's output `[B, L, hidden]` (before the final norm).
    pub layers: Vec<Tensor>,
    /// `[B, L, hidden]` after the final norm.
    pub last_hidden: Tensor,
    /// `[B, L, vocab]`.
    pub logits: Tensor,
}

impl Qwen25Vl {
    /// Wrap loaded parameters. Every tensor of [`param_shapes`] must be present with its shape;
    /// other tensors are an error. transformers 5.x in-memory names are accepted too, and a
    /// stored `lm_head.weight` of a tied config is dropped (the embeddings are used, as
    /// transformers does). The projections of [`names::FUSED`] are merged (a store that holds
    /// them fused already, as [`params`](Backbone::params) does, is taken as it is).
    pub fn from_params(cfg: Qwen25VlConfig, params: ParamStore) -> Result<Self> {
        cfg.validate().map_err(|m| Error::file("qwen2_5_vl config", m))?;
        let params = canonicalize(&cfg, params)?;
        let fused = fused_layout(&cfg);
        let expected = fused.expected_shapes(param_shapes(&cfg), params.names().iter().map(String::as_str));
        let mut dtype: Option<(DType, String)> = None;
        for (name, shape) in &expected {
            if !params.contains(name) {
                return Err(Error::tensor(STORE, name, format!("missing (expected shape {shape:?})")));
            }
            let t = params.get(name)?;
            if t.shape() != shape.as_slice() {
                return Err(Error::tensor(
                    STORE,
                    name,
                    format!("shape mismatch: expected {shape:?}, found {:?}", t.shape()),
                ));
            }
            match &dtype {
                None => {
                    if !t.dtype().is_float() {
                        return Err(Error::tensor(
                            STORE,
                            name,
                            format!("expected a float tensor, found {}", t.dtype()),
                        ));
                    }
                    dtype = Some((t.dtype(), name.clone()));
                }
                Some((d, first)) if *d != t.dtype() => {
                    return Err(Error::tensor(
                        STORE,
                        name,
                        format!("dtype {} differs from `{first}` ({d}); convert the store to one dtype", t.dtype()),
                    ))
                }
                _ => {}
            }
        }
        if params.len() != expected.len() {
            let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
            if let Some(extra) = params.names().iter().find(|n| !known.contains(n.as_str())) {
                return Err(Error::tensor(STORE, extra, "unexpected tensor for this config"));
            }
        }
        let params = fused.merge(params)?;
        Ok(Qwen25Vl { cfg, params, fused, recompute: false })
    }

    /// A randomly initialised model for training from scratch or benchmarks (transformers'
    /// `_init_weights`): matrices N(0, 0.02²), biases 0, norm weights 1; seeded and reproducible.
    pub fn random(cfg: Qwen25VlConfig, seed: u64, dtype: DType) -> Result<Self> {
        cfg.validate().map_err(|m| Error::file("qwen2_5_vl config", m))?;
        if !dtype.is_float() {
            return Err(Error::Invalid {
                op: "Qwen25Vl::random",
                msg: format!("parameters must be float, got {dtype}"),
            });
        }
        let params = crate::common::init::random_store(param_shapes(&cfg), |i, name, shape| {
            if shape.len() >= 2 {
                let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64);
                Tensor::rand_normal(0.0, 0.02, shape, dtype, Device::Cpu, s)
            } else if name.ends_with(".bias") {
                Tensor::zeros(shape, dtype, Device::Cpu)
            } else {
                Tensor::ones(shape, dtype, Device::Cpu)
            }
        })?;
        Self::from_params(cfg, params)
    }

    /// Load a checkpoint directory (`config.json` plus `model.safetensors` or the shards listed in
    /// `model.safetensors.index.json`) or a model id in the local Hugging Face cache
    /// (`Qwen/Qwen2.5-VL-3B-Instruct`). Tensors are converted to `dtype` when given (checkpoints
    /// store bf16); otherwise all must share one float dtype. Shapes are checked before any data
    /// is read; errors name the file and tensor.
    pub fn load(dir_or_id: impl AsRef<Path>, dtype: Option<DType>) -> Result<Self> {
        let (cfg, params) = crate::common::checkpoint::read_checkpoint(
            dir_or_id.as_ref(),
            dtype,
            "Qwen2.5-VL",
            |p| Qwen25VlConfig::from_file(p),
            names::stored_shapes,
            hub_name,
        )?;
        Self::from_params(cfg, params)
    }

    pub fn config(&self) -> &Qwen25VlConfig {
        &self.cfg
    }

    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    /// The vision tower alone: merged image features `[Σ tokens, hidden]` for patch rows
    /// `[Σ patches, 1176]` and their grids.
    pub fn image_features(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        Ok(vision::forward(&self.cfg.vision, &self.params, pixel_values, grids, self.recompute, false)?.features)
    }

    /// The full forward with every intermediate a parity test compares, and the logits.
    pub fn forward_trace(&self, input: &BackboneInput) -> Result<Qwen25VlTrace> {
        let run = self.run(input, None, true, None)?;
        let logits = self.logits(&run.last_hidden)?;
        Ok(Qwen25VlTrace {
            image_features: run.image_features,
            vision_blocks: run.vision_blocks,
            layers: run.layers,
            last_hidden: run.last_hidden,
            logits,
        })
    }

    /// `hidden · lm_headᵀ` (the embedding matrix when tied).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let name = if self.cfg.tie_word_embeddings { names::EMBED } else { names::LM_HEAD };
        nn::linear(hidden, &self.params.get(name)?, None)
    }

    /// The model over `input` (+ `extra` rows); `trace` keeps the intermediates, `rows` keeps
    /// only the last rows of the final hidden states (`text::forward`).
    fn run(&self, input: &BackboneInput, extra: Option<&Tensor>, trace: bool, rows: Option<usize>) -> Result<Run> {
        let cfg = &self.cfg;
        let op = "qwen2_5_vl forward";
        let ids = &input.input_ids;
        if ids.rank() != 2 || ids.dtype() != DType::I64 {
            return Err(Error::Invalid {
                op,
                msg: format!("input_ids must be [batch, len] i64, got {:?} {}", ids.shape(), ids.dtype()),
            });
        }
        let (b, l) = (ids.shape()[0], ids.shape()[1]);
        for (name, t) in [("attention_mask", &input.attention_mask), ("token_type", &input.token_type)] {
            if t.shape() != [b, l] || t.dtype().is_float() {
                return Err(Error::Invalid {
                    op,
                    msg: format!("{name} must be [{b}, {l}] integer (u8), got {:?} {}", t.shape(), t.dtype()),
                });
            }
        }
        let id_vec = ids.to_vec::<i64>()?;
        let mask_vec: Vec<u8> = input.attention_mask.to_vec::<i64>()?.iter().map(|&x| u8::from(x != 0)).collect();
        let type_vec: Vec<u8> = input.token_type.to_vec::<i64>()?.iter().map(|&x| u8::from(x != 0)).collect();
        if let Some(bad) = id_vec.iter().find(|&&t| t < 0 || t as usize >= cfg.text.vocab_size) {
            return Err(Error::Invalid {
                op,
                msg: format!("token id {bad} outside the vocabulary 0..{}", cfg.text.vocab_size),
            });
        }
        for i in 0..b * l {
            if mask_vec[i] != 0 && (id_vec[i] == cfg.image_token_id) != (type_vec[i] != 0) {
                return Err(Error::Invalid {
                    op,
                    msg: format!(
                        "row {}, position {}: mm_token_type_ids must be 1 exactly on image_token_id {} tokens",
                        i / l,
                        i % l,
                        cfg.image_token_id
                    ),
                });
            }
        }
        let image_mask: Vec<u8> = id_vec.iter().map(|&t| u8::from(t == cfg.image_token_id)).collect();
        let n_image_tokens: usize = image_mask.iter().map(|&m| m as usize).sum();
        let grids: Vec<[usize; 3]> = input.image_grid_thw.clone().unwrap_or_default();
        let expected_tokens: usize = grids.iter().map(|&g| cfg.image_tokens(g)).sum();
        if n_image_tokens != expected_tokens {
            return Err(Error::Invalid {
                op,
                msg: format!(
                    "{n_image_tokens} image tokens in input_ids but the images ({grids:?}) give {expected_tokens} features"
                ),
            });
        }

        let embed = self.params.get(names::EMBED)?;
        let h = cfg.text.hidden_size;
        let mut x = nn::embedding(&embed, &Tensor::from_vec(id_vec.clone(), &[b, l], embed.device())?)?;
        let (mut image_features, mut vision_blocks) = (None, Vec::new());
        if !grids.is_empty() {
            let out = vision::forward(&cfg.vision, &self.params, &input.pixel_values, &grids, self.recompute, trace)?;
            let feats = out.features.to_dtype(x.dtype())?;
            let mask = Tensor::from_vec(image_mask, &[b, l], x.device())?;
            x = x.masked_scatter(&mask, &feats)?;
            image_features = Some(out.features);
            vision_blocks = out.blocks;
        }

        let per_row = |v: &[u8]| -> Vec<Vec<u8>> { v.chunks(l.max(1)).map(<[u8]>::to_vec).take(b).collect() };
        let (types, masks) = (per_row(&type_vec), per_row(&mask_vec));
        let mut positions = text::rope_index(&types, &masks, &grids, cfg.vision.spatial_merge_size)?;
        let mut key_padding = mask_vec.clone();
        let mut total = l;
        if let Some(e) = extra {
            if e.rank() != 3 || e.shape()[0] != b || e.shape()[2] != h {
                return Err(Error::Invalid {
                    op,
                    msg: format!("extra rows must be [{b}, Q, {h}], got {:?}", e.shape()),
                });
            }
            let q = e.shape()[1];
            total = l + q;
            // Appended rows continue each row's text positions on all three axes.
            for (row, m) in positions.iter_mut().zip(&masks) {
                let start = row
                    .iter()
                    .zip(m)
                    .filter(|(_, &m)| m != 0)
                    .map(|(p, _)| p.iter().copied().max().unwrap_or(0))
                    .max()
                    .map_or(0, |x| x + 1);
                row.extend((0..q as i64).map(|j| [start + j; 3]));
            }
            key_padding = (0..b)
                .flat_map(|r| mask_vec[r * l..(r + 1) * l].iter().copied().chain(std::iter::repeat_n(1u8, q)))
                .collect();
            x = Tensor::cat(&[&x, &e.to_dtype(x.dtype())?], 1)?;
        }
        let (cos, sin) = text::mrope_tables(&cfg.text, &positions)?;
        let (cos, sin) = (cos.to_device(x.device())?, sin.to_device(x.device())?);
        // Host data: attention resolves the padding on the host, so it is never uploaded.
        let key_padding = Tensor::from_vec(key_padding, &[b, total], Device::Cpu)?;
        let (layers, last_hidden) =
            text::forward(&cfg.text, &self.params, &x, &key_padding, (&cos, &sin), self.recompute, trace, rows)?;
        Ok(Run { image_features, vision_blocks, layers, last_hidden })
    }
}

struct Run {
    image_features: Option<Tensor>,
    vision_blocks: Vec<Tensor>,
    layers: Vec<Tensor>,
    last_hidden: Tensor,
}

/// Rename transformers 5.x names to hub names and drop a tied config's stored `lm_head.weight`;
/// the store is rebuilt (sharing storage, keeping flags) only when something changes.
fn canonicalize(cfg: &Qwen25VlConfig, params: ParamStore) -> Result<ParamStore> {
    let drop_head = |n: &str| cfg.tie_word_embeddings && n == names::LM_HEAD;
    let needs = params.names().iter().any(|n| hub_name(n) != *n || drop_head(n));
    if !needs {
        return Ok(params);
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut out = ParamStore::new();
    for (name, t) in params.iter() {
        if drop_head(name) {
            let want = [cfg.text.vocab_size, cfg.text.hidden_size];
            if t.shape() != want {
                return Err(Error::tensor(
                    STORE,
                    name,
                    format!("shape mismatch: expected {want:?}, found {:?}", t.shape()),
                ));
            }
            continue;
        }
        let hub = hub_name(name);
        if let Some(prev) = seen.insert(hub.clone(), name.to_string()) {
            return Err(Error::tensor(STORE, name, format!("duplicates `{prev}` (both are `{hub}` on disk)")));
        }
        out.insert(hub.clone(), t)?;
        out.set_requires_grad(&hub, params.requires_grad(name)?)?;
    }
    Ok(out)
}

impl Backbone for Qwen25Vl {
    fn family(&self) -> &'static str {
        "qwen2_5_vl"
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

    fn forward(&self, input: &BackboneInput, extra: Option<&Tensor>) -> Result<BackboneOutput> {
        let l = input.input_ids.dim(1)?;
        let q = extra.map_or(0, |e| e.shape().get(1).copied().unwrap_or(0));
        let run = self.run(input, extra, false, None)?;
        Ok(BackboneOutput { hidden: run.last_hidden, appended: l..l + q })
    }

    fn forward_last_rows(&self, input: &BackboneInput, extra: Option<&Tensor>, rows: usize) -> Result<Tensor> {
        Ok(self.run(input, extra, false, Some(rows))?.last_hidden)
    }
}
