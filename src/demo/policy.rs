//! Inference and evaluation: [`LoadedPolicy`], a trained checkpoint read back (or an untrained
//! policy), with the batched closed-loop policy function [`evaluate`] needs.

use std::path::Path;

use super::{
    backbone_config, build_policy, invalid, normalizer, train::check_family, Encoder, PipelineExtra, VOCAB_NAME,
};
use super::{ACTION_DIMS, ARM_DIMS};
use crate::data::RgbImage;
use crate::engine::{Device, Error, Result, Tensor};
use crate::env::{evaluate, Action, EnvConfig, EpisodeSpec, EvalOptions, EvalReport, Observation, TaskFamily};
use crate::models::vla::{ActionNormalizer, VlaPolicy};
use crate::train::{Checkpoint, TrainConfig};

/// First seed of held-out evaluation episodes (training data is collected from seed 0 up).
pub const EVAL_FIRST_SEED: u64 = 1_000_000;

/// A policy ready to act: trained (from a checkpoint) or untrained.
pub struct LoadedPolicy {
    pub policy: VlaPolicy,
    pub encoder: Encoder,
    pub normalizer: ActionNormalizer,
    pub config: TrainConfig,
}

impl LoadedPolicy {
    /// Read a checkpoint written by [`train`](fn@super::train) (a `checkpoint-<step>` directory or
    /// the run's output directory).
    pub fn open(dir: &Path) -> Result<LoadedPolicy> {
        if !dir.exists() {
            return Err(Error::file(dir, "no such checkpoint directory"));
        }
        let ckpt = Checkpoint::open(dir)?;
        let state_path = ckpt.dir.join(crate::train::checkpoint::STATE_FILE);
        let extra: PipelineExtra = serde_json::from_value(ckpt.state.extra.clone()).map_err(|e| {
            Error::file(
                &state_path,
                format!("`extra` is not a tabletop pipeline record ({e}); was it written by `vlm4vla train`?"),
            )
        })?;
        extra
            .normalizer
            .validate("checkpoint")
            .map_err(|e| Error::file(&state_path, format!("`extra.normalizer`: {e}")))?;
        if extra.normalizer.arm_dims != super::ARM_DIMS {
            return Err(Error::file(
                &state_path,
                format!(
                    "`extra.normalizer.arm_dims` is {}, the policy predicts {}",
                    extra.normalizer.arm_dims,
                    super::ARM_DIMS
                ),
            ));
        }
        if extra.vocab != VOCAB_NAME {
            return Err(Error::file(&state_path, format!("vocabulary `{}` is not `{VOCAB_NAME}`", extra.vocab)));
        }
        let config_path = ckpt.dir.join(crate::train::checkpoint::CONFIG_FILE);
        if !super::BACKBONES.contains(&ckpt.config.backbone.as_str()) {
            return Err(Error::file(
                config_path,
                format!(
                    "`backbone` = `{}` is not a tabletop backbone ({})",
                    ckpt.config.backbone,
                    super::BACKBONES.join(", ")
                ),
            ));
        }
        // The image size is the trainer state's, not the config's.
        backbone_config(&ckpt.config.backbone, extra.image_size)
            .map_err(|e| Error::file(&state_path, format!("`extra.image_size`: {e}")))?;
        check_family(&ckpt, &ckpt.config.backbone)?;
        let (mut policy, encoder) = build_policy(&ckpt.config, extra.image_size)?;
        policy.set_trainable(&ckpt.config.trainable())?;
        crate::finetune::policy::load_trained_weights(&policy, &ckpt)?;
        Ok(LoadedPolicy { policy, encoder, normalizer: extra.normalizer, config: ckpt.config })
    }

    /// The policy `cfg` describes, before any training.
    pub fn untrained(cfg: &TrainConfig, image_size: usize) -> Result<LoadedPolicy> {
        let (policy, encoder) = build_policy(cfg, image_size)?;
        Ok(LoadedPolicy { policy, encoder, normalizer: normalizer()?, config: cfg.clone() })
    }

    pub fn image_size(&self) -> usize {
        super::model::image_size(&self.encoder)
    }

    /// Action chunks (raw actions) for images at the model size and their instructions.
    /// `states` (the environment's 7-D proprioception per image) is required by policies trained
    /// with `policy.state_dim = 7` and ignored by the others.
    pub fn predict(
        &self,
        images: &[&[u8]],
        instructions: &[&str],
        states: Option<&[[f32; 7]]>,
    ) -> Result<Vec<Vec<Action>>> {
        let size = self.image_size();
        let frames: Vec<Vec<RgbImage>> =
            images.iter().map(|d| vec![RgbImage { width: size, height: size, data: d.to_vec() }]).collect();
        let input = self.encoder.encode(&frames, instructions)?;
        let state = match (self.policy.config().state_dim, states) {
            (0, _) => None,
            (d, Some(s)) => {
                if d != 7 || s.len() != images.len() {
                    return Err(invalid(format!(
                        "the policy takes a {d}-D state per image; got {} states of 7 for {} images",
                        s.len(),
                        images.len()
                    )));
                }
                let flat: Vec<f32> = s.iter().flatten().copied().collect();
                Some(Tensor::from_vec(flat, &[s.len(), 7], Device::Cpu)?)
            }
            (d, None) => return Err(invalid(format!("the policy takes a {d}-D proprioceptive state"))),
        };
        let chunks = self.policy.predict_with_state(&input, state.as_ref())?;
        chunks
            .into_iter()
            .map(|chunk| {
                chunk
                    .into_iter()
                    .map(|a| {
                        let raw = self.normalizer.denormalize_actions(&a[..ARM_DIMS], &[a[ARM_DIMS]])?;
                        let mut out = [0f32; ACTION_DIMS];
                        out.copy_from_slice(&raw);
                        Ok(out)
                    })
                    .collect()
            })
            .collect()
    }

    /// The batched policy function of [`evaluate`].
    pub fn act(&self, obs: &[Observation]) -> Result<Vec<Vec<Action>>> {
        let images: Vec<&[u8]> = obs.iter().map(|o| o.image.as_slice()).collect();
        let texts: Vec<&str> = obs.iter().map(|o| o.instruction.as_str()).collect();
        let states: Vec<[f32; 7]> = obs.iter().map(|o| o.proprio).collect();
        self.predict(&images, &texts, Some(&states))
    }

    /// Closed-loop success on `per_family` episodes of each family from `first_seed`.
    pub fn evaluate(&self, first_seed: u64, per_family: usize, opts: &EvalOptions) -> Result<EvalReport> {
        let env = EnvConfig { image_size: self.image_size(), ..EnvConfig::default() };
        let specs = EpisodeSpec::balanced(&TaskFamily::ALL, first_seed, per_family);
        let mut f = |obs: &[Observation]| self.act(obs);
        evaluate(&env, &mut f, &specs, opts)
    }
}
