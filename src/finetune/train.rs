//! `vlm4vla train` on a real backbone and a LeRobot dataset.

use super::model::ModelSource;
use super::source::{loader_config, BatchEncoder, LoaderSource, StateNormalizer};
use super::{DataConfig, FinetuneConfig};
use crate::data::{DatasetKeys, LeRobotDataset};
use crate::engine::{Error, Result};
use crate::models::vla::{ActionNormalizer, GripperMode, VlaPolicy};
use crate::train::{Checkpoint, Trainer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The `kind` of the record a fine-tuning run keeps in its checkpoints' `extra` slot.
pub const EXTRA_KIND: &str = "vlm4vla-finetune-v1";

/// What a fine-tuning checkpoint records besides the weights and the [`TrainConfig`]
/// (`crate::train::TrainConfig`): everything `predict`, `eval` and `export` need to rebuild the
/// policy and its input pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneExtra {
    pub kind: String,
    pub family: String,
    /// The resolved checkpoint directory of the backbone (None for a built-in).
    pub backbone_dir: Option<PathBuf>,
    pub dtype: String,
    pub device: String,
    pub data: DataConfig,
    pub normalizer: ActionNormalizer,
    pub state: Option<StateNormalizer>,
    /// The tokenizer and processor the run used (checked again on load).
    pub tokenizer: String,
    pub processor: String,
}

/// How a run went.
#[derive(Clone, Debug, Serialize)]
pub struct FinetuneOutcome {
    pub checkpoint: PathBuf,
    pub steps: usize,
    /// Mean loss of the first and the last `min(20, steps / 10 + 1)` steps.
    pub first_loss: f64,
    pub last_loss: f64,
    pub stopped: bool,
    pub seconds: f64,
}

/// The features `data` names.
pub fn dataset_keys(data: &DataConfig) -> DatasetKeys {
    DatasetKeys {
        cameras: data.cameras.clone(),
        state: data.state_key.clone(),
        action: data.action_key.clone(),
        ..DatasetKeys::default()
    }
}

/// The dataset of `data`: the cameras, state and action features it names.
pub fn open_dataset(data: &DataConfig) -> Result<LeRobotDataset> {
    let ds = LeRobotDataset::open_with(&data.dataset, &dataset_keys(data))?;
    if data.state_key.is_some() && ds.state_dim() == 0 {
        return Err(Error::file(
            &data.dataset,
            format!("`data.state_key`: `{}` has width 0", ds.state_key().unwrap_or("")),
        ));
    }
    Ok(ds)
}

/// With a `data.state_key`, `policy.state_dim` is the state's width: taken from the dataset
/// when 0, an error naming the field when it differs.
pub fn resolve_state_dim(cfg: &mut FinetuneConfig, ds: &LeRobotDataset) -> Result<()> {
    if cfg.data.state_key.is_some() {
        match cfg.train.policy.state_dim {
            0 => cfg.train.policy.state_dim = ds.state_dim(),
            d if d != ds.state_dim() => {
                return Err(Error::invalid(
                    "policy.state_dim",
                    format!("= {d}, but `{}` is {}-D", cfg.data.state_key.as_deref().unwrap_or(""), ds.state_dim()),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `policy.action_dim` is the width of the dataset's action feature: taken from the dataset when
/// the config leaves it out, an error naming the field and the feature when it differs.
pub fn resolve_action_dim(cfg: &mut FinetuneConfig, ds: &LeRobotDataset) -> Result<()> {
    let width = ds.action_dim();
    let policy = &mut cfg.train.policy;
    if cfg.action_dim_unset {
        policy.action_dim = width;
        cfg.action_dim_unset = false;
        return policy.validate().map_err(|e| {
            Error::invalid(
                "policy.action_dim",
                format!("from the dataset's `{}` ({width}-D): {e}", cfg.data.action_key),
            )
        });
    }
    if policy.action_dim != width {
        return Err(Error::invalid(
            "policy.action_dim",
            format!("= {}, but the dataset's `{}` is {width}-D", policy.action_dim, cfg.data.action_key),
        ));
    }
    Ok(())
}

/// The action normaliser of `data` on `ds`'s statistics, with the gripper of `gripper`
/// (`policy.gripper`).
pub fn normalizer(data: &DataConfig, ds: &LeRobotDataset, gripper: GripperMode) -> Result<ActionNormalizer> {
    ActionNormalizer::from_stats_with_gripper(data.mode(), &ds.action_stats(), gripper)
        .map_err(|e| Error::file(ds.root().join("meta/stats.json"), format!("`{}`: {e}", data.action_key)))
}

/// The state normaliser of `data` on `ds`'s statistics (None without a `state_key`).
pub fn state_normalizer(data: &DataConfig, ds: &LeRobotDataset) -> Result<Option<StateNormalizer>> {
    let Some(key) = &data.state_key else { return Ok(None) };
    let s = ds
        .stats()
        .get(key)
        .ok_or_else(|| Error::file(ds.root().join("meta/stats.json"), format!("no statistics for `{key}`")))?;
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let n = StateNormalizer { mean: f(&s.mean), std: f(&s.std) };
    n.validate(ds.state_dim()).map_err(|e| Error::file(ds.root().join("meta/stats.json"), format!("`{key}`: {e}")))?;
    Ok(Some(n))
}

/// Build the policy a config describes (backbone weights from the source or from `seed`, head
/// from `seed + 1`), on the config's device and in its dtype.
pub fn build_policy(cfg: &FinetuneConfig, source: &ModelSource) -> Result<VlaPolicy> {
    let t = &cfg.train;
    let backbone = source.backbone(cfg.dtype()?, cfg.device()?, t.seed)?;
    let mut policy = VlaPolicy::new(backbone, t.policy.clone(), t.seed.wrapping_add(1))?;
    policy.set_checkpoint_activations(t.run.checkpoint_activations);
    Ok(policy)
}

/// Mean loss of the first and of the last `min(20, steps / 10 + 1)` steps (NaN without steps).
pub fn loss_ends(losses: &[f64]) -> (f64, f64) {
    if losses.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let k = (losses.len() / 10 + 1).min(20);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    (mean(&losses[..k]), mean(&losses[losses.len() - k..]))
}

/// Fine-tune (fresh, or continuing the checkpoint `resume`).
pub fn train(cfg: &FinetuneConfig, resume: Option<&Path>) -> Result<FinetuneOutcome> {
    let started = Instant::now();
    let mut cfg = cfg.clone();
    let ds = open_dataset(&cfg.data)?;
    resolve_state_dim(&mut cfg, &ds)?;
    resolve_action_dim(&mut cfg, &ds)?;
    let source = ModelSource::resolve(&cfg.train.backbone)?;
    let encoder = source.encoder(&cfg.data.prompt, cfg.data.image_size)?;
    let norm = normalizer(&cfg.data, &ds, cfg.train.policy.gripper)?;
    let state = state_normalizer(&cfg.data, &ds)?;
    let extra = FinetuneExtra {
        kind: EXTRA_KIND.into(),
        family: source.family().into(),
        backbone_dir: source.dir.as_ref().map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone())),
        dtype: cfg.dtype.clone(),
        device: cfg.device.clone(),
        data: cfg.data.clone(),
        normalizer: norm.clone(),
        state: state.clone(),
        tokenizer: encoder.tokenizer.describe(),
        processor: format!("{:?}", encoder.processor),
    };
    let policy = build_policy(&cfg, &source)?;
    let batch_encoder = BatchEncoder { encoder, normalizer: norm, state, device: cfg.device()? };
    let loader = loader_config(&cfg.data, cfg.train.run.batch_size, cfg.train.policy.chunk, cfg.train.seed);
    let mut batches = LoaderSource::new(Arc::new(ds), loader, batch_encoder)?;
    let mut trainer = match resume {
        Some(dir) => {
            let ckpt = Checkpoint::open(dir)?;
            let old = read_extra(&ckpt)?;
            if old.family != extra.family {
                return Err(Error::file(
                    ckpt.dir.join(crate::train::checkpoint::STATE_FILE),
                    format!("the checkpoint trains a `{}` backbone, this config a `{}` one", old.family, extra.family),
                ));
            }
            Trainer::resume(cfg.train.clone(), policy, dir)?
        }
        None => Trainer::new(cfg.train.clone(), policy)?,
    };
    trainer
        .set_extra(serde_json::to_value(&extra).map_err(|e| Error::invalid("train", format!("encoding extra: {e}")))?);
    crate::engine::io::write_atomic(cfg.train.output_dir.join("finetune.toml"), cfg.to_toml()?.as_bytes())?;
    let summary = trainer.run(&mut batches)?;
    let (first_loss, last_loss) = loss_ends(trainer.losses());
    Ok(FinetuneOutcome {
        checkpoint: summary.last_checkpoint.unwrap_or_else(|| cfg.train.output_dir.clone()),
        steps: summary.steps,
        first_loss,
        last_loss,
        stopped: summary.stopped,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The fine-tuning record of a checkpoint; an error naming the file for anything else (e.g. a
/// tabletop demo checkpoint).
pub fn read_extra(ckpt: &Checkpoint) -> Result<FinetuneExtra> {
    let path = ckpt.dir.join(crate::train::checkpoint::STATE_FILE);
    let extra: FinetuneExtra = serde_json::from_value(ckpt.state.extra.clone())
        .map_err(|e| Error::file(&path, format!("`extra` is not a fine-tuning record ({e})")))?;
    if extra.kind != EXTRA_KIND {
        return Err(Error::file(&path, format!("`extra.kind` is `{}`, expected `{EXTRA_KIND}`", extra.kind)));
    }
    extra.normalizer.validate("checkpoint").map_err(|e| Error::file(&path, format!("`extra.normalizer`: {e}")))?;
    let policy = &ckpt.config.policy;
    if extra.normalizer.action_dim() != policy.action_dim || extra.normalizer.gripper != policy.gripper {
        return Err(Error::file(
            &path,
            format!(
                "`extra.normalizer` maps {}-D actions (gripper {:?}), the policy predicts {}-D (gripper {:?})",
                extra.normalizer.action_dim(),
                extra.normalizer.gripper,
                policy.action_dim,
                policy.gripper
            ),
        ));
    }
    if let Some(s) = &extra.state {
        let dim = ckpt.config.policy.state_dim;
        s.validate(dim).map_err(|e| Error::file(&path, format!("`extra.state` (`policy.state_dim` = {dim}): {e}")))?;
    }
    Ok(extra)
}

/// Whether a checkpoint was written by a fine-tuning run (rather than the tabletop pipeline).
pub fn is_finetune_checkpoint(dir: &Path) -> bool {
    Checkpoint::open(dir).is_ok_and(|c| c.state.extra.get("kind").and_then(|k| k.as_str()) == Some(EXTRA_KIND))
}
