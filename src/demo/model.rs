//! The pipeline's backbone and policy: the backbone config by name, the image-and-instruction
//! encoder, a fresh policy with the from-scratch initialisation ([`demo_init`]), and what a
//! pipeline checkpoint stores besides the weights (its `extra` record and action normaliser).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, Vocab};
use super::{ACTION_DIMS, ARM_DIMS};
use crate::engine::{DType, Device, Result, Tensor};
use crate::models::paligemma::{PaliGemma, PaliGemmaConfig, PaliGemmaProcessor};
use crate::models::vla::{ActionNormalizer, GripperMode, VlaPolicy};
use crate::train::TrainConfig;

/// The backbone `vlm4vla demo` trains: a narrower, shallower `paligemma-tiny` (see
/// [`backbone_config`]).
pub const DEMO_BACKBONE: &str = "paligemma-demo";
/// Backbone names this pipeline can build.
pub const BACKBONES: &[&str] = &["paligemma-demo", "paligemma-tiny"];

/// The largest image side the tabletop pipeline takes, in pixels.
pub const MAX_IMAGE_SIZE: usize = 1024;

/// The PaliGemma config of a pipeline backbone name at `image_size` pixels.
///
/// - `paligemma-tiny`: the registry's tiny config (SigLIP 32 wide × 2 layers, Gemma 64 wide × 2
///   layers), with the image size replaced;
/// - `paligemma-demo`: the same widths, one SigLIP layer, patches of 8 pixels.
pub fn backbone_config(name: &str, image_size: usize) -> Result<PaliGemmaConfig> {
    let mut cfg = match name {
        "paligemma-tiny" => PaliGemmaConfig::tiny(),
        "paligemma-demo" => {
            let mut c = PaliGemmaConfig::tiny();
            c.vision.num_hidden_layers = 1;
            c
        }
        other => {
            return Err(invalid(format!(
                "backbone `{other}` is not supported by the tabletop pipeline (supported: {})",
                BACKBONES.join(", ")
            )))
        }
    };
    if image_size > MAX_IMAGE_SIZE {
        return Err(invalid(format!(
            "image size {image_size} is beyond the tabletop pipeline's maximum {MAX_IMAGE_SIZE}"
        )));
    }
    if image_size == 0 || !image_size.is_multiple_of(cfg.vision.patch_size) {
        return Err(invalid(format!(
            "image size {image_size} is not a positive multiple of backbone `{name}`'s patch size {}",
            cfg.vision.patch_size
        )));
    }
    cfg.vision.image_size = image_size;
    cfg.validate()?;
    let vocab = Vocab::tabletop();
    if vocab.max_id() >= cfg.text.vocab_size as i64 {
        return Err(invalid(format!(
            "the instruction vocabulary needs ids up to {}, but `{name}` has {} tokens",
            vocab.max_id(),
            cfg.text.vocab_size
        )));
    }
    Ok(cfg)
}

/// Images and instructions → a backbone batch: the shared [`finetune::Encoder`] with the
/// PaliGemma processor of the demo's config, the word vocabulary as its tokenizer and the bare
/// instruction as the prompt.
///
/// [`finetune::Encoder`]: crate::finetune::Encoder
pub type Encoder = crate::finetune::Encoder;

/// The demo preset's [`Encoder`] for `cfg`.
pub fn tabletop_encoder(cfg: &PaliGemmaConfig) -> Encoder {
    crate::finetune::Encoder {
        processor: crate::finetune::Processor::PaliGemma(PaliGemmaProcessor::new(cfg)),
        tokenizer: std::sync::Arc::new(Vocab::tabletop()),
        prompt: "{instruction}".into(),
        image_size: None,
    }
}

/// The model's square input size.
pub fn image_size(encoder: &Encoder) -> usize {
    encoder.model_image_size().unwrap_or(0)
}

/// A fresh (untrained) policy for `cfg` at `image_size`: backbone weights from `cfg.seed`, head
/// weights from `cfg.seed + 1`.
pub fn build_policy(cfg: &TrainConfig, image_size: usize) -> Result<(VlaPolicy, Encoder)> {
    if cfg.policy.action_dim != ACTION_DIMS || cfg.policy.gripper != GripperMode::Last {
        return Err(invalid(format!(
            "tabletop actions are {ACTION_DIMS}-D with the gripper last: policy.action_dim = {} and policy.gripper = {:?} do not fit",
            cfg.policy.action_dim, cfg.policy.gripper
        )));
    }
    let bb_cfg = backbone_config(&cfg.backbone, image_size)?;
    let encoder = tabletop_encoder(&bb_cfg);
    let mut backbone = PaliGemma::random(bb_cfg, cfg.seed, DType::F32)?;
    demo_init(&mut backbone, cfg.seed)?;
    let mut policy = VlaPolicy::new(Box::new(backbone), cfg.policy.clone(), cfg.seed.wrapping_add(1))?;
    policy.set_checkpoint_activations(cfg.run.checkpoint_activations);
    Ok((policy, encoder))
}

/// Re-initialise a randomly built backbone for training from scratch on a small CPU budget:
/// every weight matrix N(0, 1/fan_in) (instead of the checkpoint-style N(0, 0.02²), which starts
/// tiny models almost silent), and the SigLIP position embeddings as a fixed-amplitude 2-D
/// sine/cosine code of each patch's column and row (so "where" is available from step 0).
pub fn demo_init(backbone: &mut PaliGemma, seed: u64) -> Result<()> {
    use crate::models::paligemma::param_shapes;
    use crate::models::Backbone;
    let cfg = backbone.config().clone();
    let pos_name = "vision_tower.vision_model.embeddings.position_embedding.weight";
    let fused = backbone.fused().clone();
    let store = backbone.params_mut();
    for (i, (name, shape)) in param_shapes(&cfg).into_iter().enumerate() {
        if shape.len() < 2 {
            continue;
        }
        let t = fused.get(store, &name)?;
        let new = if name == pos_name {
            let grid = cfg.vision.grid();
            let (n, d) = (shape[0], shape[1]);
            let quarter = (d / 4).max(1);
            let mut v = vec![0f32; n * d];
            for p in 0..n {
                let (row, col) = ((p / grid) as f32, (p % grid) as f32);
                for k in 0..quarter {
                    let freq =
                        std::f32::consts::PI / grid as f32 * (1 << k.min(4)) as f32 * (1.0 + (k / 5) as f32 * 0.5);
                    let base = p * d + 4 * k;
                    for (j, val) in [(col * freq).sin(), (col * freq).cos(), (row * freq).sin(), (row * freq).cos()]
                        .into_iter()
                        .enumerate()
                    {
                        if 4 * k + j < d {
                            v[base + j] = val;
                        }
                    }
                }
            }
            Tensor::from_vec(v, &shape, Device::Cpu)?
        } else if name.contains("embed_tokens") {
            Tensor::rand_normal(
                0.0,
                1.0 / (shape[1] as f64).sqrt(),
                &shape,
                DType::F32,
                Device::Cpu,
                seed ^ (i as u64 + 7919),
            )?
        } else {
            let fan_in: usize = shape[1..].iter().product();
            Tensor::rand_normal(
                0.0,
                1.0 / (fan_in as f64).sqrt(),
                &shape,
                DType::F32,
                Device::Cpu,
                seed ^ (i as u64 + 7919),
            )?
        };
        t.assign(&new.to_dtype(t.dtype())?)?;
    }
    Ok(())
}

/// What the pipeline stores in a checkpoint's `extra` slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineExtra {
    pub image_size: usize,
    pub vocab: String,
    pub normalizer: ActionNormalizer,
    /// The dataset the run was trained on (for `--resume`).
    pub dataset: PathBuf,
}

/// The action normaliser of the pipeline: the expert's actions already lie in [-1, 1], so the
/// arm is clipped to ±1 and not scaled; the gripper is ±1 (open when positive).
pub fn normalizer() -> Result<ActionNormalizer> {
    ActionNormalizer::fixed_bounds(1.0, ARM_DIMS)
}
