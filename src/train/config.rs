//! The training configuration, read from TOML.
//!
//! ```toml
//! backbone = "paligemma-tiny"        # a built-in name or a checkpoint directory
//! output_dir = "runs/demo"
//! seed = 0
//! train_modules = ["vision", "connector", "language_model", "embeddings", "head"]
//! train_llm_last_layers = 2          # optional: of the language model only its last 2 decoder
//!                                    # layers (and its final norm) train
//!
//! [policy]                           # vlm4vla_models::vla::PolicyConfig
//! chunk = 10
//! latent = 1
//! gripper_loss_ratio = 0.01
//! huber_delta = 1.0
//! [policy.head]                      # FCDecoder widths (the paper's by default)
//! trunk_out = 1024
//! branch_hidden = [1024, 512, 256]
//!
//! [optim]
//! lr = 2e-5
//! weight_decay = 0.0
//! betas = [0.9, 0.999]
//! eps = 1e-8
//! warmup_steps = 0
//! min_lr_ratio = 0.01                # cosine decays to lr · min_lr_ratio
//! decay_steps = 4000                 # optional: flat lr, cosine over the last 4000 steps only
//! clip_grad_norm = 1.0
//!
//! [run]
//! batch_size = 8                     # rows per micro-batch (the data loader's)
//! grad_accum = 1                     # micro-batches per optimizer step
//! steps = 1000                       # or: epochs = 3 (exactly one of the two)
//! log_every = 1
//! eval_every = 0                     # 0: never
//! checkpoint_every = 500             # 0: only at the end (and on stop)
//! checkpoint_activations = false     # recompute each block's activations in the backward
//! progress = true
//! ```
//!
//! Every table rejects unknown keys (the error names the key and lists the allowed ones), and
//! [`TrainConfig::validate`] names the field of any invalid value.

use crate::engine::{AdamWConfig, Error, Result};
use crate::models::vla::{PolicyConfig, TrainableParts};
use crate::models::ParamGroup;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What trains: backbone parameter groups and the policy head (action queries + FCDecoder).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainModule {
    Vision,
    Connector,
    LanguageModel,
    Embeddings,
    Head,
}

impl TrainModule {
    /// The backbone group, or None for the head.
    pub fn group(self) -> Option<ParamGroup> {
        match self {
            TrainModule::Vision => Some(ParamGroup::Vision),
            TrainModule::Connector => Some(ParamGroup::Connector),
            TrainModule::LanguageModel => Some(ParamGroup::LanguageModel),
            TrainModule::Embeddings => Some(ParamGroup::Embeddings),
            TrainModule::Head => None,
        }
    }

    pub const ALL: [TrainModule; 5] = [
        TrainModule::Vision,
        TrainModule::Connector,
        TrainModule::LanguageModel,
        TrainModule::Embeddings,
        TrainModule::Head,
    ];
}

/// AdamW, schedule and clipping (the paper's values by default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    /// Linear warmup from 0 over this many optimizer steps.
    pub warmup_steps: usize,
    /// The cosine ends at `lr · min_lr_ratio` on the last step.
    pub min_lr_ratio: f64,
    /// When set, the rate stays flat after warmup and the cosine runs over only the last this
    /// many steps (warmup-stable-decay); by default it runs over every step after warmup.
    pub decay_steps: Option<usize>,
    /// Global gradient-norm clip.
    pub clip_grad_norm: f64,
}

impl OptimConfig {
    /// The AdamW hyperparameters of this table.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.lr,
            betas: (self.betas[0], self.betas[1]),
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 2e-5,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            warmup_steps: 0,
            min_lr_ratio: 0.01,
            decay_steps: None,
            clip_grad_norm: 1.0,
        }
    }
}

/// Batching, length and intervals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Rows per micro-batch (what the data loader batches; the trainer takes batches as given).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps to run (exclusive with `epochs`).
    pub steps: Option<usize>,
    /// Passes over the data (needs the data source to know its length).
    pub epochs: Option<usize>,
    pub log_every: usize,
    /// Call the evaluation hook every this many steps (0: never).
    pub eval_every: usize,
    /// Write a checkpoint every this many steps (0: only at the end and on stop).
    pub checkpoint_every: usize,
    /// Show a progress bar (only ever on a terminal).
    pub progress: bool,
    /// Activation checkpointing per transformer block: keep only each block's output in the
    /// forward pass and recompute its activations in the backward (less memory for about one
    /// more forward per step; the same gradients).
    pub checkpoint_activations: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            batch_size: 8,
            grad_accum: 1,
            steps: None,
            epochs: None,
            log_every: 1,
            eval_every: 0,
            checkpoint_every: 0,
            progress: true,
            checkpoint_activations: false,
        }
    }
}

/// The whole training configuration (see the module docs for the TOML layout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A built-in backbone name or a checkpoint path (resolved by the caller).
    pub backbone: String,
    pub output_dir: PathBuf,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "all_modules")]
    pub train_modules: Vec<TrainModule>,
    /// When `language_model` is in `train_modules`: train only its last this many decoder
    /// layers (layers `≥ num_layers − n`) and its final norm, the layers below frozen. None:
    /// every layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_llm_last_layers: Option<usize>,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub run: RunConfig,
}

fn all_modules() -> Vec<TrainModule> {
    TrainModule::ALL.to_vec()
}

/// The text of a config that wraps a [`TrainConfig`] with top-level `keys` of its own (e.g.
/// `dataset`, `[data]`), those keys and their tables blanked out line by line, so the errors of
/// parsing the rest name lines of the original text. `rest` is the parsed table without `keys`;
/// None when the blanked text does not read back to exactly `rest` (a value spread over several
/// lines, say): the caller then parses `rest` re-serialised.
pub fn blank_keys(text: &str, keys: &[&str], rest: &toml::Table) -> Option<String> {
    let first_key = |s: &str| -> String {
        let s = s.trim_start_matches('[').trim_start();
        let end = s.find(['.', ']', '=', ' ', '\t']).unwrap_or(s.len());
        s[..end].trim().trim_matches(['"', '\'']).to_string()
    };
    let mut out = String::with_capacity(text.len());
    let (mut at_root, mut in_removed) = (true, false);
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let blank = if t.starts_with('[') {
            at_root = false;
            in_removed = keys.contains(&first_key(t).as_str());
            in_removed
        } else if in_removed {
            true
        } else {
            at_root && !t.starts_with('#') && !t.is_empty() && keys.contains(&first_key(t).as_str())
        };
        if blank {
            out.extend(line.chars().filter(|&c| c == '\n' || c == '\r'));
        } else {
            out.push_str(line);
        }
    }
    (out.parse::<toml::Table>().ok()? == *rest).then_some(out)
}

/// The largest `run.batch_size` (and `run.grad_accum`).
pub const MAX_BATCH: usize = 1 << 16;
/// The largest `policy.chunk`, `policy.latent` and `policy.state_dim`.
pub const MAX_POLICY_SIZE: usize = 4096;

fn bad(origin: &Path, field: &str, msg: impl std::fmt::Display) -> Error {
    Error::file(origin, format!("`{field}` {msg}"))
}

impl TrainConfig {
    /// A config with the paper's defaults for everything but these.
    pub fn new(backbone: impl Into<String>, output_dir: impl Into<PathBuf>, steps: usize) -> TrainConfig {
        TrainConfig {
            backbone: backbone.into(),
            output_dir: output_dir.into(),
            seed: 0,
            train_modules: all_modules(),
            train_llm_last_layers: None,
            policy: PolicyConfig::default(),
            optim: OptimConfig::default(),
            run: RunConfig { steps: Some(steps), ..RunConfig::default() },
        }
    }

    /// Read and validate a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<TrainConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::from_toml_str(&text, path)
    }

    /// Parse and validate TOML text; `origin` names it in errors (a path, or e.g. `<config>`).
    pub fn from_toml_str(text: &str, origin: impl AsRef<Path>) -> Result<TrainConfig> {
        let origin = origin.as_ref();
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| Error::file(origin, format!("invalid config: {e}")))?;
        cfg.validate_at(origin)?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::file("<config>", format!("cannot write the config as TOML: {e}")))
    }

    /// Check every value; errors name the field.
    pub fn validate(&self) -> Result<()> {
        self.validate_at(Path::new("<config>"))
    }

    fn validate_at(&self, origin: &Path) -> Result<()> {
        let o = &self.optim;
        let r = &self.run;
        if self.backbone.trim().is_empty() {
            return Err(bad(origin, "backbone", "must name a built-in backbone or a checkpoint path"));
        }
        if self.output_dir.as_os_str().is_empty() {
            return Err(bad(origin, "output_dir", "must not be empty"));
        }
        if self.train_modules.is_empty() {
            return Err(bad(origin, "train_modules", "must list at least one module"));
        }
        for (i, m) in self.train_modules.iter().enumerate() {
            if self.train_modules[..i].contains(m) {
                return Err(bad(origin, "train_modules", format!("lists {m:?} twice")));
            }
        }
        match self.train_llm_last_layers {
            Some(0) => {
                return Err(bad(origin, "train_llm_last_layers", "must be at least 1 (or left out for every layer)"))
            }
            Some(_) if !self.train_modules.contains(&TrainModule::LanguageModel) => {
                return Err(bad(
                    origin,
                    "train_llm_last_layers",
                    "is set but `train_modules` does not list \"language_model\"",
                ))
            }
            _ => {}
        }
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(bad(origin, "optim.lr", format!("= {} must be a positive finite number", o.lr)));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(bad(origin, "optim.weight_decay", format!("= {} must be finite and ≥ 0", o.weight_decay)));
        }
        for (i, b) in o.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                return Err(bad(origin, &format!("optim.betas[{i}]"), format!("= {b} must be in [0, 1)")));
            }
        }
        if !(o.eps.is_finite() && o.eps >= 0.0) {
            return Err(bad(origin, "optim.eps", format!("= {} must be finite and ≥ 0", o.eps)));
        }
        if !(0.0..=1.0).contains(&o.min_lr_ratio) {
            return Err(bad(origin, "optim.min_lr_ratio", format!("= {} must be in [0, 1]", o.min_lr_ratio)));
        }
        if o.decay_steps == Some(0) {
            return Err(bad(
                origin,
                "optim.decay_steps",
                "must be at least 1 (or left out for a cosine over every step)",
            ));
        }
        if !(o.clip_grad_norm.is_finite() && o.clip_grad_norm > 0.0) {
            return Err(bad(origin, "optim.clip_grad_norm", format!("= {} must be positive", o.clip_grad_norm)));
        }
        if r.batch_size == 0 {
            return Err(bad(origin, "run.batch_size", "must be at least 1"));
        }
        if r.grad_accum == 0 {
            return Err(bad(origin, "run.grad_accum", "must be at least 1"));
        }
        // Sizes are bounded before anything is allocated from them.
        let p = &self.policy;
        for (field, value, max) in [
            ("run.batch_size", r.batch_size, MAX_BATCH),
            ("run.grad_accum", r.grad_accum, MAX_BATCH),
            ("run.steps", r.steps.unwrap_or(0), super::checkpoint::MAX_STEP),
            ("run.epochs", r.epochs.unwrap_or(0), super::checkpoint::MAX_STEP),
            ("policy.chunk", p.chunk, MAX_POLICY_SIZE),
            ("policy.latent", p.latent, MAX_POLICY_SIZE),
            ("policy.state_dim", p.state_dim, MAX_POLICY_SIZE),
        ] {
            if value > max {
                return Err(bad(origin, field, format!("= {value} is beyond the supported maximum {max}")));
            }
        }
        if r.log_every == 0 {
            return Err(bad(origin, "run.log_every", "must be at least 1"));
        }
        match (r.steps, r.epochs) {
            (Some(_), Some(_)) => return Err(bad(origin, "run.steps", "and `run.epochs` cannot both be set")),
            (None, None) => return Err(bad(origin, "run.steps", "(or `run.epochs`) must be set")),
            (Some(0), _) => return Err(bad(origin, "run.steps", "must be at least 1")),
            (_, Some(0)) => return Err(bad(origin, "run.epochs", "must be at least 1")),
            _ => {}
        }
        self.policy.validate().map_err(|e| Error::file(origin, e.to_string()))
    }

    /// Optimizer steps of the whole run: `run.steps`, or `epochs × batches_per_epoch /
    /// grad_accum` (rounded down, at least 1) when the data source knows its length.
    pub fn total_steps(&self, batches_per_epoch: Option<usize>) -> Result<usize> {
        match (self.run.steps, self.run.epochs, batches_per_epoch) {
            (Some(s), _, _) => Ok(s),
            (None, Some(e), Some(n)) => Ok((e * n / self.run.grad_accum).max(1)),
            (None, Some(_), None) => Err(bad(
                Path::new("<config>"),
                "run.epochs",
                "needs a data source that knows its length; set `run.steps` instead",
            )),
            (None, None, _) => Err(bad(Path::new("<config>"), "run.steps", "(or `run.epochs`) must be set")),
        }
    }

    /// What trains: the backbone groups of `train_modules`, whether the head trains, and
    /// `train_llm_last_layers`.
    pub fn trainable(&self) -> TrainableParts {
        let groups: Vec<ParamGroup> = self.train_modules.iter().filter_map(|m| m.group()).collect();
        TrainableParts {
            groups,
            head: self.train_modules.contains(&TrainModule::Head),
            llm_last_layers: self.train_llm_last_layers,
        }
    }
}
