//! The fine-tuning config: a [`TrainConfig`] plus `dtype`, `device` and the `[data]` table.
//!
//! ```toml
//! backbone = "Qwen/Qwen2.5-VL-3B-Instruct"  # built-in name, checkpoint directory or hub id (local cache)
//! output_dir = "runs/qwen-libero"
//! dtype = "bf16"                            # parameters: f32 or bf16 (masters and moments stay f32)
//! device = "cuda:0"                         # cpu, cuda, cuda:N
//! train_modules = ["vision", "connector", "language_model", "embeddings", "head"]
//!
//! [data]
//! dataset = "data/libero_10"                # a LeRobot v3 dataset
//! cameras = ["observation.images.image"]    # camera features in order (default: the dataset's one);
//!                                           # video features need a build with --features video
//! state_key = "observation.state"           # optional: the state as an input row (policy.state_dim)
//! action_key = "action"
//! normalization = "fixed"                   # fixed (± clip, the paper's), q01_q99, min_max, mean_std
//! clip = 0.65
//! prompt = "What action should the robot take to {instruction}?"
//! image_size = 224                          # optional: frames resized to 224² first (the paper's)
//! workers = 2                               # decoding threads ahead of the step
//!
//! [policy]                                  # chunk = the action chunk length
//! chunk = 10
//! # action_dim = 7                          # optional: the dataset's action width when left out
//! gripper = "last"                          # last: the last dim is a binary gripper; none: all continuous
//! [optim]
//! lr = 2e-5
//! [run]
//! batch_size = 16
//! steps = 20000
//! ```

use super::encoder::DEFAULT_PROMPT;
use super::model::{parse_device, parse_dtype};
use crate::engine::{DType, Device, Error, Result};
use crate::models::vla::NormalizationMode;
use crate::train::TrainConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How actions are scaled into the head's [-1, 1] (a gripper, `policy.gripper = "last"`, is a
/// binary target instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Clip to `± clip`, divide by `clip` (the paper's CALVIN setting, `clip = 0.65`).
    #[default]
    Fixed,
    /// The dataset's 1st/99th percentiles (`stats.json` `q01`/`q99`) to ∓1, clipped.
    Q01Q99,
    /// The dataset's min/max to ∓1.
    MinMax,
    /// `(x − mean) / (sigmas · std)`, clipped.
    MeanStd,
}

fn default_action_key() -> String {
    "action".into()
}
fn default_prompt() -> String {
    DEFAULT_PROMPT.into()
}
fn default_clip() -> f32 {
    0.65
}
fn default_sigmas() -> f32 {
    3.0
}
fn default_two() -> usize {
    2
}
fn default_true() -> bool {
    true
}

/// The `[data]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A LeRobot v3 dataset directory.
    pub dataset: PathBuf,
    /// Image features to feed, in order; empty: the dataset's image feature.
    #[serde(default)]
    pub cameras: Vec<String>,
    /// The state feature fed as an input row (needs `policy.state_dim` = its width, or 0 to take
    /// the width from the dataset); none by default.
    #[serde(default)]
    pub state_key: Option<String>,
    #[serde(default = "default_action_key")]
    pub action_key: String,
    #[serde(default)]
    pub normalization: Normalization,
    /// `normalization = "fixed"`: the bound.
    #[serde(default = "default_clip")]
    pub clip: f32,
    /// `normalization = "mean_std"`: the band `mean ± sigmas · std` maps to ∓1.
    #[serde(default = "default_sigmas")]
    pub sigmas: f32,
    /// The prompt; `{instruction}` is replaced by the frame's task.
    #[serde(default = "default_prompt")]
    pub prompt: String,
    /// Resize every frame to this square first.
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Decoding threads.
    #[serde(default = "default_two")]
    pub workers: usize,
    /// Batches each worker builds ahead.
    #[serde(default = "default_two")]
    pub prefetch: usize,
    /// Random-shift augmentation: pad (pixels) of the shift; 0 is off.
    #[serde(default)]
    pub shift: usize,
    #[serde(default = "default_true")]
    pub shuffle: bool,
}

impl DataConfig {
    /// The normaliser mode of this table.
    pub fn mode(&self) -> NormalizationMode {
        match self.normalization {
            Normalization::Fixed => NormalizationMode::FixedBounds { clip: self.clip },
            Normalization::Q01Q99 => NormalizationMode::Percentile,
            Normalization::MinMax => NormalizationMode::MinMax,
            Normalization::MeanStd => NormalizationMode::MeanStd { sigmas: self.sigmas },
        }
    }

    fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |field: &str, msg: String| Error::file(origin, format!("`data.{field}` {msg}"));
        if self.dataset.as_os_str().is_empty() {
            return Err(bad("dataset", "must name a LeRobot v3 dataset directory".into()));
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return Err(bad("clip", format!("= {} must be a positive number", self.clip)));
        }
        if !(self.sigmas.is_finite() && self.sigmas > 0.0) {
            return Err(bad("sigmas", format!("= {} must be a positive number", self.sigmas)));
        }
        if self.prompt.chars().count() > 4096 {
            return Err(bad("prompt", format!("has {} characters; at most 4096", self.prompt.chars().count())));
        }
        if !self.prompt.contains("{instruction}") {
            return Err(bad("prompt", format!("= {:?} must contain `{{instruction}}`", self.prompt)));
        }
        if self.image_size == Some(0) || self.image_size.is_some_and(|s| s > 4096) {
            return Err(bad("image_size", format!("= {:?} must be in 1..=4096", self.image_size.unwrap_or(0))));
        }
        if self.workers == 0 || self.workers > 64 {
            return Err(bad("workers", format!("= {} must be in 1..=64", self.workers)));
        }
        if self.prefetch == 0 || self.prefetch > 64 {
            return Err(bad("prefetch", format!("= {} must be in 1..=64", self.prefetch)));
        }
        if self.shift > 256 {
            return Err(bad("shift", format!("= {} must be at most 256 pixels", self.shift)));
        }
        for (i, c) in self.cameras.iter().enumerate() {
            if self.cameras[..i].contains(c) {
                return Err(bad("cameras", format!("lists `{c}` twice")));
            }
        }
        Ok(())
    }
}

/// A fine-tuning config (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    pub dtype: String,
    pub device: String,
    pub data: DataConfig,
    pub train: TrainConfig,
    /// True when the TOML left `policy.action_dim` out: training then takes the dataset's action
    /// width ([`resolve_action_dim`](super::train::resolve_action_dim)); a config that sets it
    /// must match the dataset.
    #[serde(skip)]
    pub action_dim_unset: bool,
}

impl FinetuneConfig {
    /// Whether a TOML text is a fine-tuning config (it has a `[data]` table) rather than the
    /// tabletop pipeline's (a top-level `dataset`).
    pub fn is_finetune_toml(text: &str) -> bool {
        text.parse::<toml::Table>().is_ok_and(|t| t.contains_key("data"))
    }

    pub fn from_file(path: &Path) -> Result<FinetuneConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        Self::from_toml_str(&text, path)
    }

    /// Parse and validate; errors name `origin` and the key.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<FinetuneConfig> {
        let mut table: toml::Table = text.parse().map_err(|e| Error::file(origin, format!("invalid config: {e}")))?;
        let string = |table: &mut toml::Table, key: &str, default: &str| -> Result<String> {
            match table.remove(key) {
                None => Ok(default.to_string()),
                Some(toml::Value::String(s)) => Ok(s),
                Some(v) => Err(Error::file(origin, format!("`{key}` must be a string, found {}", v.type_str()))),
            }
        };
        let dtype = string(&mut table, "dtype", "f32")?;
        let device = string(&mut table, "device", "cpu")?;
        let data: DataConfig = match table.remove("data") {
            Some(v) => v.try_into().map_err(|e| Error::file(origin, format!("[data]: {e}")))?,
            None => return Err(Error::file(origin, "the [data] table is missing (at least `dataset = \"DIR\"`)")),
        };
        let action_dim_unset =
            table.get("policy").and_then(toml::Value::as_table).is_none_or(|p| !p.contains_key("action_dim"));
        let rest = match crate::train::config::blank_keys(text, &["dtype", "device", "data"], &table) {
            Some(rest) => rest,
            None => toml::to_string(&table).map_err(|e| Error::file(origin, format!("invalid config: {e}")))?,
        };
        let train = TrainConfig::from_toml_str(&rest, origin)?;
        let cfg = FinetuneConfig { dtype, device, data, train, action_dim_unset };
        cfg.validate_at(origin)?;
        Ok(cfg)
    }

    fn validate_at(&self, origin: &Path) -> Result<()> {
        parse_dtype(&self.dtype).map_err(|e| Error::file(origin, format!("`dtype`: {e}")))?;
        parse_device(&self.device).map_err(|e| Error::file(origin, format!("`device`: {e}")))?;
        self.data.validate(origin)
    }

    pub fn dtype(&self) -> Result<DType> {
        parse_dtype(&self.dtype)
    }

    pub fn device(&self) -> Result<Device> {
        parse_device(&self.device)
    }

    /// The TOML text of this config (what `from_toml_str` reads back).
    pub fn to_toml(&self) -> Result<String> {
        let mut top = toml::Table::new();
        top.insert("dtype".into(), toml::Value::String(self.dtype.clone()));
        top.insert("device".into(), toml::Value::String(self.device.clone()));
        let mut data = toml::Table::new();
        data.insert(
            "data".into(),
            toml::Value::try_from(&self.data).map_err(|e| Error::invalid("config", format!("encoding [data]: {e}")))?,
        );
        let enc = |t: &toml::Table| toml::to_string(t).map_err(|e| Error::invalid("config", e.to_string()));
        Ok(format!("{}{}\n{}", enc(&top)?, self.train.to_toml()?, enc(&data)?))
    }
}
