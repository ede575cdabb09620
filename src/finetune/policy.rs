//! A fine-tuned policy loaded from its checkpoint: predictions in raw action units, and offline
//! evaluation on a dataset (action error and gripper accuracy on recorded frames).

use super::model::ModelSource;
use super::source::{loader_config, BatchEncoder, StateNormalizer};
use super::train::{build_policy, open_dataset, read_extra, FinetuneExtra};
use super::FinetuneConfig;
use crate::data::{Loader, LoaderPosition, RgbImage};
use crate::engine::{Device, Error, Result, Tensor};
use crate::models::vla::{ActionNormalizer, GripperMode, VlaPolicy};
use crate::train::Checkpoint;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

/// A policy ready to act.
pub struct FinetunedPolicy {
    pub policy: VlaPolicy,
    pub batch: BatchEncoder,
    pub config: FinetuneConfig,
    pub extra: FinetuneExtra,
    pub step: usize,
    /// Where the backbone came from (its config and checkpoint directory).
    pub source: ModelSource,
}

impl FinetunedPolicy {
    /// Load a fine-tuning checkpoint (a `checkpoint-<step>` directory or a run's output
    /// directory): the backbone from its source (its checkpoint directory, or a built-in's seeded
    /// weights), the trained weights over it, the normalisers and the processor of the run.
    pub fn open(dir: &Path) -> Result<FinetunedPolicy> {
        if !dir.exists() {
            return Err(Error::file(dir, "no such checkpoint directory"));
        }
        let ckpt = Checkpoint::open(dir)?;
        let extra = read_extra(&ckpt)?;
        let state_path = ckpt.dir.join(crate::train::checkpoint::STATE_FILE);
        let spec = match &extra.backbone_dir {
            Some(d) => d.to_string_lossy().into_owned(),
            None => ckpt.config.backbone.clone(),
        };
        let source = ModelSource::resolve(&spec)
            .map_err(|e| Error::file(&state_path, format!("the run's backbone `{spec}` cannot be loaded: {e}")))?;
        if source.family() != extra.family {
            return Err(Error::file(
                &state_path,
                format!("the run trained a `{}` backbone, `{spec}` is a `{}` one", extra.family, source.family()),
            ));
        }
        let mut train = ckpt.config.clone();
        train.backbone = spec;
        let config = FinetuneConfig {
            dtype: extra.dtype.clone(),
            device: extra.device.clone(),
            data: extra.data.clone(),
            train,
            action_dim_unset: false,
        };
        let mut policy = build_policy(&config, &source)?;
        policy.set_trainable(&config.train.trainable())?;
        load_trained_weights(&policy, &ckpt)?;
        let encoder = source.encoder(&config.data.prompt, config.data.image_size)?;
        let processor = format!("{:?}", encoder.processor);
        if processor != extra.processor {
            return Err(Error::file(
                &state_path,
                format!(
                    "the backbone's processor files changed since training (now {processor}, then {})",
                    extra.processor
                ),
            ));
        }
        let batch = BatchEncoder {
            encoder,
            normalizer: extra.normalizer.clone(),
            state: extra.state.clone(),
            device: config.device()?,
        };
        Ok(FinetunedPolicy { policy, batch, config, extra, step: ckpt.state.step, source })
    }

    pub fn normalizer(&self) -> &ActionNormalizer {
        &self.batch.normalizer
    }

    /// Width of the state input (0: the policy takes none).
    pub fn state_dim(&self) -> usize {
        self.policy.config().state_dim
    }

    /// Raw action chunks (`chunk` rows of `policy.action_dim` values: the arm values, then with
    /// `policy.gripper = "last"` the gripper state) for samples of camera frames (any size; the
    /// processor resizes), instructions and, when the policy takes one, raw states.
    pub fn predict(
        &self,
        cameras: &[Vec<RgbImage>],
        instructions: &[&str],
        states: Option<&[Vec<f32>]>,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let want = self.config.data.cameras.len().max(1);
        if let Some(b) = cameras.iter().position(|c| c.len() != want) {
            return Err(Error::invalid(
                "predict",
                format!(
                    "sample {b} has {} camera frames; the policy reads {want} ({:?})",
                    cameras[b].len(),
                    self.config.data.cameras
                ),
            ));
        }
        let input = self.batch.encoder.encode(cameras, instructions)?.to_device(self.batch.device)?;
        let state = self.state_tensor(cameras.len(), states)?;
        let chunks = self.policy.predict_with_state(&input, state.as_ref())?;
        let arm_dims = self.normalizer().arm_dims;
        chunks
            .into_iter()
            .map(|chunk| {
                chunk
                    .into_iter()
                    .map(|a| {
                        let (arm, gripper) = a.split_at(arm_dims.min(a.len()));
                        self.normalizer().denormalize_actions(arm, gripper)
                    })
                    .collect()
            })
            .collect()
    }

    fn state_tensor(&self, n: usize, states: Option<&[Vec<f32>]>) -> Result<Option<Tensor>> {
        let d = self.state_dim();
        match (d, states, &self.batch.state) {
            (0, _, _) => Ok(None),
            (_, None, _) => Err(Error::invalid("state", format!("the policy takes a {d}-D state per sample"))),
            (_, Some(s), norm) => {
                if s.len() != n || s.iter().any(|v| v.len() != d) {
                    return Err(Error::invalid("state", format!("expected {n} states of {d} values")));
                }
                if let Some((i, x)) = s.iter().flatten().enumerate().find(|(_, x)| !x.is_finite()) {
                    return Err(Error::invalid("state", format!("value {i} is {x}")));
                }
                let flat: Vec<f32> = s.iter().flat_map(|v| apply(norm.as_ref(), v)).collect();
                Ok(Some(Tensor::from_vec(flat, &[n, d], Device::Cpu)?.to_device(self.batch.device)?))
            }
        }
    }

    /// Offline evaluation on the first `batches` batches (in index order) of a dataset (the
    /// run's own when `dataset` is None).
    pub fn evaluate(&self, dataset: Option<&Path>, batches: usize, batch_size: usize) -> Result<OfflineReport> {
        let mut data = self.config.data.clone();
        if let Some(d) = dataset {
            data.dataset = d.to_path_buf();
        }
        let ds = Arc::new(open_dataset(&data)?);
        let mut lc = loader_config(&data, batch_size.max(1), self.policy.config().chunk, 0);
        lc.shuffle = false;
        lc.shift = None;
        let loader = Loader::new(ds.clone(), lc)?;
        let n = (batches as u64).min(loader.batches_per_epoch());
        let mut report = OfflineReport { dataset: data.dataset.display().to_string(), ..OfflineReport::default() };
        let (arm_dims, gripper) = (self.normalizer().arm_dims, self.normalizer().gripper);
        let mut abs = vec![0f64; arm_dims];
        let mut sq = 0f64;
        let (mut grip_ok, mut steps) = (0usize, 0usize);
        for b in 0..n {
            let raw = loader.load_batch(LoaderPosition { epoch: 0, batch: b })?;
            let states: Option<Vec<Vec<f32>>> =
                (self.state_dim() > 0).then(|| raw.states.chunks(raw.state_dim.max(1)).map(<[f32]>::to_vec).collect());
            let cameras: Vec<Vec<RgbImage>> = (0..raw.len()).map(|i| raw.frames(i)).collect();
            let texts: Vec<&str> = raw.instructions.iter().map(String::as_str).collect();
            let pred = self.predict(&cameras, &texts, states.as_deref())?;
            for (i, chunk) in pred.iter().enumerate() {
                for (s, a) in chunk.iter().enumerate() {
                    if !raw.action_mask[i * raw.chunk + s] {
                        continue;
                    }
                    let truth = &raw.actions[(i * raw.chunk + s) * raw.action_dim..][..raw.action_dim];
                    for d in 0..arm_dims {
                        let e = (a[d] - truth[d]) as f64;
                        abs[d] += e.abs();
                        sq += e * e;
                    }
                    if gripper == GripperMode::Last {
                        let target = self.normalizer().gripper_target(truth[arm_dims]);
                        let predicted = self.normalizer().gripper_target(a[arm_dims]);
                        grip_ok += usize::from(target == predicted);
                    }
                    steps += 1;
                }
            }
            report.frames += raw.len();
        }
        if steps == 0 {
            return Err(Error::file(&data.dataset, "no frames to evaluate"));
        }
        report.action_steps = steps;
        report.arm_mae = abs.iter().map(|a| a / steps as f64).collect();
        report.arm_rmse = (sq / (steps * arm_dims) as f64).sqrt();
        report.gripper_accuracy = (gripper == GripperMode::Last).then(|| grip_ok as f64 / steps as f64);
        Ok(report)
    }
}

/// Load a checkpoint's trained weights into `policy` (built as the run built it, with the run's
/// trainable parts set): the file must hold exactly the parameters that train, under their
/// checkpoint names; anything else is an error naming the file and a few of the names.
pub fn load_trained_weights(policy: &VlaPolicy, ckpt: &Checkpoint) -> Result<()> {
    let file = crate::engine::io::SafeTensorsFile::open(ckpt.model_path())?;
    let saved: BTreeSet<String> = file.names().iter().map(|n| n.to_string()).collect();
    let expected: BTreeSet<String> =
        policy.checkpoint_tensors(&policy.trainable_params())?.into_iter().map(|(n, _)| n).collect();
    if saved != expected {
        let missing: Vec<&String> = expected.difference(&saved).take(3).collect();
        let unexpected: Vec<&String> = saved.difference(&expected).take(3).collect();
        return Err(Error::file(
            ckpt.model_path(),
            format!(
                "does not hold the parameters backbone `{}` trains with these train_modules (missing e.g. \
                 {missing:?}, unexpected e.g. {unexpected:?}): was it trained with another backbone?",
                ckpt.config.backbone
            ),
        ));
    }
    policy.load_weights(ckpt.model_path())?;
    Ok(())
}

fn apply(norm: Option<&StateNormalizer>, v: &[f32]) -> Vec<f32> {
    match norm {
        Some(n) => n.apply(v),
        None => v.to_vec(),
    }
}

/// Offline action error of a policy on recorded frames (raw action units).
#[derive(Clone, Debug, Default, Serialize)]
pub struct OfflineReport {
    pub dataset: String,
    pub frames: usize,
    /// Chunk steps compared (inside their episodes).
    pub action_steps: usize,
    /// Mean absolute error per arm dimension.
    pub arm_mae: Vec<f64>,
    /// Root mean squared error over all arm dimensions.
    pub arm_rmse: f64,
    /// Share of chunk steps whose gripper state is right (None, and left out of the JSON,
    /// without a gripper).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gripper_accuracy: Option<f64>,
}
