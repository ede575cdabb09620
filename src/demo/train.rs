//! `vlm4vla train`: the pipeline's training config file and a training run on a collected
//! dataset.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{
    backbone_config, build_policy, invalid, normalizer, DemoSource, GroundingConfig, PipelineExtra, VOCAB_NAME,
};
use crate::data::LeRobotDataset;
use crate::engine::{Error, Result};
use crate::train::{Checkpoint, TrainConfig, Trainer};

/// A pipeline training config: the dataset, the optional [`GroundingConfig`] table, and the
/// [`TrainConfig`] tables.
///
/// ```toml
/// dataset = "runs/demo/data"   # written by `vlm4vla collect`
/// backbone = "paligemma-demo"
/// output_dir = "runs/demo/train"
/// [policy]
/// chunk = 4
/// state_dim = 7                # the gripper's proprioceptive state as an input row
/// [optim]
/// lr = 1e-3
/// decay_steps = 4000           # flat lr, then the cosine over the last 4000 steps
/// [run]
/// steps = 18000
/// [grounding]                  # "point at the red block" rows (see GroundingConfig)
/// steps = 2000
/// fraction = 0.25
/// ```
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub dataset: PathBuf,
    /// The optional `[grounding]` table (off by default).
    pub grounding: GroundingConfig,
    pub train: TrainConfig,
}

impl PipelineConfig {
    /// Read a TOML file: the top-level `dataset` key, everything else a [`TrainConfig`] (strict:
    /// unknown keys are errors naming the key and the file). A relative `dataset` is relative to
    /// the working directory.
    pub fn from_file(path: &Path) -> Result<PipelineConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        Self::from_toml_str(&text, path)
    }

    pub fn from_toml_str(text: &str, origin: &Path) -> Result<PipelineConfig> {
        let mut table: toml::Table = text.parse().map_err(|e| Error::file(origin, format!("invalid config: {e}")))?;
        let dataset = match table.remove("dataset") {
            Some(toml::Value::String(s)) => PathBuf::from(s),
            Some(other) => {
                return Err(Error::file(origin, format!("`dataset` must be a path string, found {}", other.type_str())))
            }
            None => return Err(Error::file(origin, "`dataset` is missing (the directory `vlm4vla collect` wrote)")),
        };
        let grounding = match table.remove("grounding") {
            Some(v) => {
                let g: GroundingConfig = v
                    .try_into()
                    .map_err(|e| Error::file(origin, format!("[grounding]: {e} (keys: steps, fraction)")))?;
                g.validate().map_err(|e| Error::file(origin, e.to_string()))?;
                g
            }
            None => GroundingConfig::default(),
        };
        let rest = match crate::train::config::blank_keys(text, &["dataset", "grounding"], &table) {
            Some(rest) => rest,
            None => toml::to_string(&table).map_err(|e| Error::file(origin, format!("invalid config: {e}")))?,
        };
        let train = TrainConfig::from_toml_str(&rest, origin)?;
        backbone_config(&train.backbone, 8).map_err(|e| Error::file(origin, format!("`backbone`: {e}")))?;
        Ok(PipelineConfig { dataset, grounding, train })
    }

    pub fn to_toml(&self) -> Result<String> {
        let mut text = format!(
            "dataset = {}\n{}",
            toml::Value::String(self.dataset.to_string_lossy().into_owned()),
            self.train.to_toml()?
        );
        if !self.grounding.is_off() {
            let mut t = toml::Table::new();
            t.insert(
                "grounding".into(),
                toml::Value::try_from(&self.grounding).map_err(|e| invalid(format!("encoding [grounding]: {e}")))?,
            );
            text.push('\n');
            text.push_str(&toml::to_string(&t).map_err(|e| invalid(format!("encoding [grounding]: {e}")))?);
        }
        Ok(text)
    }
}

/// How a training run went.
#[derive(Clone, Debug, Serialize)]
pub struct TrainOutcome {
    pub checkpoint: PathBuf,
    pub steps: usize,
    /// Mean loss of the first and of the last `min(20, steps / 10 + 1)` steps.
    pub first_loss: f64,
    pub last_loss: f64,
    /// Optimizer steps that saw grounding rows only (see [`GroundingConfig`]).
    pub grounding_only_steps: usize,
    pub stopped: bool,
    pub seconds: f64,
}

/// Train on the dataset `cfg.dataset` (fresh, or continuing the checkpoint `resume`).
pub fn train(cfg: &PipelineConfig, resume: Option<&Path>) -> Result<TrainOutcome> {
    let started = Instant::now();
    let dataset = LeRobotDataset::open(&cfg.dataset)?;
    let (h, _) = dataset.image_size();
    let (policy, encoder) = build_policy(&cfg.train, h)?;
    let norm = normalizer()?;
    let mut source = DemoSource::new(
        &dataset,
        encoder,
        &norm,
        cfg.train.policy.chunk,
        cfg.train.run.batch_size,
        cfg.train.seed,
        cfg.train.policy.state_dim,
    )?
    .with_grounding(cfg.grounding.clone(), cfg.train.run.grad_accum)?;
    let mut trainer = match resume {
        Some(dir) => {
            let ckpt = Checkpoint::open(dir)?;
            check_family(&ckpt, &cfg.train.backbone)?;
            Trainer::resume(cfg.train.clone(), policy, dir)?
        }
        None => Trainer::new(cfg.train.clone(), policy)?,
    };
    let extra =
        PipelineExtra { image_size: h, vocab: VOCAB_NAME.into(), normalizer: norm, dataset: cfg.dataset.clone() };
    trainer.set_extra(serde_json::to_value(&extra).map_err(|e| invalid(format!("encoding extra: {e}")))?);
    let summary = trainer.run(&mut source)?;
    let (first_loss, last_loss) = crate::finetune::train::loss_ends(trainer.losses());
    Ok(TrainOutcome {
        checkpoint: summary.last_checkpoint.unwrap_or_else(|| cfg.train.output_dir.clone()),
        steps: summary.steps,
        first_loss,
        last_loss,
        grounding_only_steps: source.grounding_only_steps(),
        stopped: summary.stopped,
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub(super) fn check_family(ckpt: &Checkpoint, backbone: &str) -> Result<()> {
    let path = ckpt.dir.join(crate::train::checkpoint::STATE_FILE);
    if ckpt.state.backbone_family != "paligemma" {
        return Err(Error::file(
            path,
            format!(
                "the checkpoint's backbone family is `{}`, but this pipeline builds `{backbone}` (paligemma)",
                ckpt.state.backbone_family
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grounding_config_parses_checks_and_round_trips() {
        let base = "dataset = \"d\"\nbackbone = \"paligemma-demo\"\noutput_dir = \"x\"\n[run]\nsteps = 10\n";
        let p = Path::new("cfg.toml");
        let off = PipelineConfig::from_toml_str(base, p).unwrap();
        assert!(off.grounding.is_off());
        assert!(!off.to_toml().unwrap().contains("grounding"));
        let text = format!("{base}[grounding]\nsteps = 7\nfraction = 0.5\nlr_scale_after = 0.5\n");
        let on = PipelineConfig::from_toml_str(&text, p).unwrap();
        assert_eq!(
            on.grounding,
            GroundingConfig { steps: 7, fraction: 0.5, until_loss: None, lr_scale_after: Some(0.5) }
        );
        let again = PipelineConfig::from_toml_str(&on.to_toml().unwrap(), p).unwrap();
        assert_eq!((again.grounding, again.train), (on.grounding, on.train));
        let err = |t: &str| PipelineConfig::from_toml_str(&format!("{base}{t}"), p).unwrap_err().to_string();
        let e = err("[grounding]\nstep = 7\n");
        assert!(e.contains("cfg.toml") && e.contains("step") && e.contains("fraction"), "{e}");
        let e = err("[grounding]\nfraction = 1.0\n");
        assert!(e.contains("cfg.toml") && e.contains("grounding.fraction"), "{e}");
        let e = err("[grounding]\nuntil_loss = 0.0\n");
        assert!(e.contains("cfg.toml") && e.contains("grounding.until_loss"), "{e}");
        let e = err("[grounding]\nlr_scale_after = 0.0\n");
        assert!(e.contains("cfg.toml") && e.contains("grounding.lr_scale_after"), "{e}");
        let e = err("[grounding]\nsteps = -1\n");
        assert!(e.contains("cfg.toml") && e.contains("grounding"), "{e}");
    }
}
