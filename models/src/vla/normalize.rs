//! Action normalisation for the VLA head: the arm dimensions are mapped into [-1, 1] (the range of
//! the FCDecoder's final tanh), the gripper becomes a binary target for BCE-with-logits.
//!
//! Modes, per arm dimension:
//! - [`NormalizationMode::FixedBounds`]: clip to `±clip` and divide by `clip` (the paper's CALVIN
//!   setting, `clip = 0.65`);
//! - [`NormalizationMode::MinMax`]: `2 (x - min) / (max - min) - 1` from the dataset statistics;
//! - [`NormalizationMode::Percentile`]: the same with the 1st and 99th percentiles, clipped to
//!   [-1, 1] (values outside the central 98% saturate);
//! - [`NormalizationMode::MeanStd`]: the z-score divided by `sigmas`, clipped to [-1, 1]: the
//!   same map with bounds `mean ± sigmas · std` (LeRobot's `MEAN_STD` is `sigmas = 1`; the head's
//!   tanh cannot reach past ±1, so a wider band keeps the tails reachable).
//!
//! In the statistics modes a dimension whose range is below `eps` (a constant dimension) maps to
//! 0 and de-normalises to its mean. De-normalisation is the exact inverse on the unclipped range.
//! With [`GripperMode::Last`] (the default) the gripper (the last action dimension) is not
//! scaled: in training the target is 1 when the recorded value is above the midpoint of its two
//! states and 0 otherwise; at inference a logit above 0 (probability above 0.5) gives the high
//! state, otherwise the low one (±1 by default, CALVIN's open/close convention). With
//! [`GripperMode::None`] every dimension is an arm dimension and scaled as above.
//!
//! ```
//! use vlm4vla_models::vla::{ActionNormalizer, GripperMode};
//! let n = ActionNormalizer::fixed_bounds(0.65, 6).unwrap();
//! let norm = n.normalize_actions(&[0.65, -0.13, 0.0, 0.0, 1.0, 0.0, 1.0]).unwrap();
//! assert!((norm[0] - 1.0).abs() < 1e-6 && (norm[1] + 0.2).abs() < 1e-6 && norm[4] == 1.0);
//! assert_eq!(norm[6], 1.0); // gripper target
//! let back = n.denormalize_actions(&norm[..6], &[3.2]).unwrap();
//! assert!((back[1] + 0.13).abs() < 1e-6 && back[6] == 1.0);
//!
//! // Without a gripper all 6 dims are scaled and there are no gripper logits.
//! let n = n.with_gripper(GripperMode::None);
//! assert_eq!(n.action_dim(), 6);
//! assert_eq!(n.normalize_actions(&[0.65, -0.13, 0.0, 0.0, 1.0, 0.0]).unwrap()[5], 0.0);
//! assert!((n.denormalize_actions(&[1.0; 6], &[]).unwrap()[5] - 0.65).abs() < 1e-6);
//! ```

use super::head::GripperMode;
use serde::{Deserialize, Serialize};
use vlm4vla_engine::{Error, Result};

/// How the arm dimensions are scaled.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum NormalizationMode {
    /// Clip to `±clip`, then scale to ±1.
    FixedBounds { clip: f32 },
    /// Per-dimension min/max from the dataset statistics.
    MinMax,
    /// Per-dimension 1st/99th percentiles from the dataset statistics.
    Percentile,
    /// Per-dimension `mean ± sigmas · std` from the dataset statistics.
    MeanStd { sigmas: f32 },
}

/// Per-dimension statistics of the action feature (all vectors of the action length, gripper
/// last), as in LeRobot's `meta/stats.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionStats {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub q01: Vec<f32>,
    pub q99: Vec<f32>,
}

impl ActionStats {
    /// Read the statistics of `feature` (usually `"action"`) from a LeRobot `stats.json` value.
    /// Without `q01`/`q99` (older datasets) the percentiles fall back to min/max.
    pub fn from_stats_json(stats: &serde_json::Value, feature: &str) -> Result<Self> {
        let op = "ActionStats::from_stats_json";
        let f = stats
            .get(feature)
            .ok_or_else(|| Error::Invalid { op, msg: format!("no statistics for feature `{feature}`") })?;
        let get = |key: &str| -> Result<Option<Vec<f32>>> {
            match f.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_array()
                    .and_then(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect::<Option<Vec<_>>>())
                    .map(Some)
                    .ok_or_else(|| Error::Invalid { op, msg: format!("`{feature}.{key}` is not a list of numbers") }),
            }
        };
        let need = |key: &str| -> Result<Vec<f32>> {
            get(key)?.ok_or_else(|| Error::Invalid { op, msg: format!("`{feature}` has no `{key}` statistic") })
        };
        let (min, max) = (need("min")?, need("max")?);
        let q01 = get("q01")?.unwrap_or_else(|| min.clone());
        let q99 = get("q99")?.unwrap_or_else(|| max.clone());
        let s = ActionStats { mean: need("mean")?, std: need("std")?, min, max, q01, q99 };
        s.validate(op)?;
        Ok(s)
    }

    pub fn dim(&self) -> usize {
        self.min.len()
    }

    fn validate(&self, op: &'static str) -> Result<()> {
        let n = self.min.len();
        for (name, v) in [
            ("min", &self.min),
            ("max", &self.max),
            ("mean", &self.mean),
            ("std", &self.std),
            ("q01", &self.q01),
            ("q99", &self.q99),
        ] {
            if v.len() != n {
                return Err(Error::Invalid {
                    op,
                    msg: format!("statistic `{name}` has {} values, `min` has {n}", v.len()),
                });
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::Invalid { op, msg: format!("statistic `{name}`[{i}] is {}", v[i]) });
            }
        }
        Ok(())
    }
}

/// Maps raw actions (`arm_dims` arm values, then with [`GripperMode::Last`] the gripper) to
/// training targets and policy outputs back to raw actions. Serialisable, so a checkpoint stores exactly the mapping it was
/// trained with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionNormalizer {
    pub mode: NormalizationMode,
    pub arm_dims: usize,
    /// Per arm dimension: the raw values that map to -1 and +1.
    pub low: Vec<f32>,
    pub high: Vec<f32>,
    /// Per arm dimension: what a constant dimension de-normalises to.
    pub mean: Vec<f32>,
    /// Ranges `high - low` below this count as constant.
    pub eps: f32,
    /// The gripper's two raw states (closed, open); the training threshold is their midpoint.
    /// Unused without a gripper.
    pub gripper_low: f32,
    pub gripper_high: f32,
    /// Whether a gripper follows the arm dims (absent in normalisers saved before it existed:
    /// `last`).
    #[serde(default)]
    pub gripper: GripperMode,
}

/// Default guard for near-constant dimensions.
pub const DEFAULT_EPS: f32 = 1e-6;

impl ActionNormalizer {
    /// The paper's CALVIN setting with `clip = 0.65`: clip to ±0.65, scale to ±1.
    pub fn fixed_bounds(clip: f32, arm_dims: usize) -> Result<Self> {
        if !(clip.is_finite() && clip > 0.0) {
            return Err(Error::Invalid {
                op: "ActionNormalizer::fixed_bounds",
                msg: format!("clip must be > 0, got {clip}"),
            });
        }
        Ok(ActionNormalizer {
            mode: NormalizationMode::FixedBounds { clip },
            arm_dims,
            low: vec![-clip; arm_dims],
            high: vec![clip; arm_dims],
            mean: vec![0.0; arm_dims],
            eps: DEFAULT_EPS,
            gripper_low: -1.0,
            gripper_high: 1.0,
            gripper: GripperMode::Last,
        })
    }

    /// The same mapping of the arm dims with `gripper` after them (or none).
    pub fn with_gripper(self, gripper: GripperMode) -> Self {
        ActionNormalizer { gripper, ..self }
    }

    /// Build a normaliser for `mode` from dataset statistics of the whole action (arm dims, then
    /// the gripper). The gripper's two states are the statistics' min and max of its dimension
    /// (±1 if they coincide).
    pub fn from_stats(mode: NormalizationMode, stats: &ActionStats) -> Result<Self> {
        Self::from_stats_with_gripper(mode, stats, GripperMode::Last)
    }

    /// [`from_stats`](Self::from_stats) for actions with a gripper last ([`GripperMode::Last`])
    /// or without one ([`GripperMode::None`]: every dimension is scaled).
    pub fn from_stats_with_gripper(mode: NormalizationMode, stats: &ActionStats, gripper: GripperMode) -> Result<Self> {
        let op = "ActionNormalizer::from_stats";
        stats.validate(op)?;
        let dims = stats.dim();
        let least = 1 + gripper.dims();
        if dims < least {
            let what = match gripper {
                GripperMode::Last => "arm dims and a gripper",
                GripperMode::None => "at least one dim",
            };
            return Err(Error::Invalid { op, msg: format!("actions need {what}, got {dims} dims") });
        }
        let arm = dims - gripper.dims();
        let (low, high) = match mode {
            NormalizationMode::FixedBounds { .. } => (Vec::new(), Vec::new()),
            NormalizationMode::MinMax => (stats.min[..arm].to_vec(), stats.max[..arm].to_vec()),
            NormalizationMode::Percentile => (stats.q01[..arm].to_vec(), stats.q99[..arm].to_vec()),
            NormalizationMode::MeanStd { sigmas } => {
                if !(sigmas.is_finite() && sigmas > 0.0) {
                    return Err(Error::Invalid { op, msg: format!("mean_std: sigmas must be > 0, got {sigmas}") });
                }
                let band = |sign: f32| (0..arm).map(|d| stats.mean[d] + sign * sigmas * stats.std[d]).collect();
                (band(-1.0), band(1.0))
            }
        };
        let (gl, gh) = match gripper {
            GripperMode::Last => (stats.min[arm], stats.max[arm]),
            GripperMode::None => (-1.0, 1.0),
        };
        let (gripper_low, gripper_high) = if gh > gl { (gl, gh) } else { (-1.0, 1.0) };
        let n = match mode {
            NormalizationMode::FixedBounds { clip } => {
                let mut n = Self::fixed_bounds(clip, arm)?;
                n.mean = stats.mean[..arm].to_vec();
                n
            }
            _ => ActionNormalizer {
                mode,
                arm_dims: arm,
                low,
                high,
                mean: stats.mean[..arm].to_vec(),
                eps: DEFAULT_EPS,
                gripper_low,
                gripper_high,
                gripper,
            },
        };
        Ok(ActionNormalizer { gripper_low, gripper_high, gripper, ..n })
    }

    /// Length of a full action: the arm dims and the gripper, if any.
    pub fn action_dim(&self) -> usize {
        self.arm_dims + self.gripper.dims()
    }

    fn is_constant(&self, d: usize) -> bool {
        !matches!(self.mode, NormalizationMode::FixedBounds { .. }) && self.high[d] - self.low[d] < self.eps
    }

    /// One raw arm value of dimension `d` → [-1, 1].
    pub fn normalize_arm_value(&self, d: usize, x: f32) -> f32 {
        if self.is_constant(d) {
            return 0.0;
        }
        let (lo, hi) = (self.low[d], self.high[d]);
        let y = 2.0 * (x - lo) / (hi - lo) - 1.0;
        y.clamp(-1.0, 1.0)
    }

    /// One normalised arm value of dimension `d` → raw.
    pub fn denormalize_arm_value(&self, d: usize, y: f32) -> f32 {
        if self.is_constant(d) {
            return self.mean[d];
        }
        let (lo, hi) = (self.low[d], self.high[d]);
        (y + 1.0) * 0.5 * (hi - lo) + lo
    }

    /// Gripper training target: 1 above the midpoint of the two gripper states, else 0.
    pub fn gripper_target(&self, raw: f32) -> f32 {
        if raw > 0.5 * (self.gripper_low + self.gripper_high) {
            1.0
        } else {
            0.0
        }
    }

    /// Gripper command from the head's logit: the high state when `sigmoid(logit) > 0.5`.
    pub fn gripper_from_logit(&self, logit: f32) -> f32 {
        if logit > 0.0 {
            self.gripper_high
        } else {
            self.gripper_low
        }
    }

    /// Gripper command from a probability and a threshold.
    pub fn gripper_from_probability(&self, p: f32, threshold: f32) -> f32 {
        if p > threshold {
            self.gripper_high
        } else {
            self.gripper_low
        }
    }

    /// Raw actions (rows of `action_dim()`: arm, gripper if any) → training targets (rows of the
    /// same length: normalised arm, gripper target in {0, 1}).
    pub fn normalize_actions(&self, actions: &[f32]) -> Result<Vec<f32>> {
        let a = self.action_dim();
        if !actions.len().is_multiple_of(a) {
            return Err(Error::Invalid {
                op: "ActionNormalizer::normalize_actions",
                msg: format!("{} values are not whole actions of {a}", actions.len()),
            });
        }
        let mut out = Vec::with_capacity(actions.len());
        for row in actions.chunks_exact(a) {
            out.extend(row[..self.arm_dims].iter().enumerate().map(|(d, &x)| self.normalize_arm_value(d, x)));
            if self.gripper == GripperMode::Last {
                out.push(self.gripper_target(row[self.arm_dims]));
            }
        }
        Ok(out)
    }

    /// Normalised arm values only (rows of `arm_dims`).
    pub fn normalize_arm(&self, arm: &[f32]) -> Result<Vec<f32>> {
        self.check_arm("ActionNormalizer::normalize_arm", arm)?;
        Ok(arm.iter().enumerate().map(|(i, &x)| self.normalize_arm_value(i % self.arm_dims, x)).collect())
    }

    /// Raw arm values from normalised ones (rows of `arm_dims`).
    pub fn denormalize_arm(&self, arm: &[f32]) -> Result<Vec<f32>> {
        self.check_arm("ActionNormalizer::denormalize_arm", arm)?;
        Ok(arm.iter().enumerate().map(|(i, &y)| self.denormalize_arm_value(i % self.arm_dims, y)).collect())
    }

    /// Policy outputs → raw actions: `arm` holds rows of `arm_dims` normalised values and
    /// `gripper_logits` one logit per row (none without a gripper); the result has rows of
    /// `action_dim()`.
    pub fn denormalize_actions(&self, arm: &[f32], gripper_logits: &[f32]) -> Result<Vec<f32>> {
        let op = "ActionNormalizer::denormalize_actions";
        self.check_arm(op, arm)?;
        let rows = arm.len() / self.arm_dims.max(1);
        if self.gripper == GripperMode::None {
            if !gripper_logits.is_empty() {
                return Err(Error::Invalid {
                    op,
                    msg: format!("{} gripper logits for actions without a gripper", gripper_logits.len()),
                });
            }
            return Ok(arm
                .iter()
                .enumerate()
                .map(|(i, &y)| self.denormalize_arm_value(i % self.arm_dims, y))
                .collect());
        }
        if gripper_logits.len() != rows {
            return Err(Error::Invalid {
                op,
                msg: format!("{rows} arm rows but {} gripper logits", gripper_logits.len()),
            });
        }
        let mut out = Vec::with_capacity(rows * self.action_dim());
        for (row, &g) in arm.chunks_exact(self.arm_dims.max(1)).zip(gripper_logits) {
            out.extend(row.iter().enumerate().map(|(d, &y)| self.denormalize_arm_value(d, y)));
            out.push(self.gripper_from_logit(g));
        }
        Ok(out)
    }

    fn check_arm(&self, op: &'static str, arm: &[f32]) -> Result<()> {
        if self.arm_dims == 0 || !arm.len().is_multiple_of(self.arm_dims) {
            return Err(Error::Invalid {
                op,
                msg: format!("{} values are not whole rows of {} arm dims", arm.len(), self.arm_dims),
            });
        }
        Ok(())
    }

    /// JSON for a checkpoint.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Read and validate a normaliser saved with [`to_json`](Self::to_json).
    pub fn from_json(text: &str) -> Result<Self> {
        let op = "ActionNormalizer::from_json";
        let n: ActionNormalizer = serde_json::from_str(text)
            .map_err(|e| Error::Invalid { op, msg: format!("malformed normaliser JSON: {e}") })?;
        n.validate(op)?;
        Ok(n)
    }

    /// Check lengths and values (used after deserialising).
    pub fn validate(&self, op: &'static str) -> Result<()> {
        for (name, v) in [("low", &self.low), ("high", &self.high), ("mean", &self.mean)] {
            if v.len() != self.arm_dims {
                return Err(Error::Invalid {
                    op,
                    msg: format!("`{name}` has {} values for {} arm dims", v.len(), self.arm_dims),
                });
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::Invalid { op, msg: format!("`{name}`[{i}] is {}", v[i]) });
            }
        }
        if let Some(d) = (0..self.arm_dims).find(|&d| self.high[d] < self.low[d]) {
            return Err(Error::Invalid {
                op,
                msg: format!("`high`[{d}] = {} is below `low`[{d}] = {}", self.high[d], self.low[d]),
            });
        }
        if self.arm_dims > 0 && (0..self.arm_dims).all(|d| self.is_constant(d)) {
            return Err(Error::Invalid {
                op,
                msg: format!(
                    "every arm dimension has `high` - `low` below eps = {}: every predicted arm action would be \
                     the mean",
                    self.eps
                ),
            });
        }
        if let NormalizationMode::FixedBounds { clip } = self.mode {
            if !(clip.is_finite() && clip > 0.0) {
                return Err(Error::Invalid { op, msg: format!("clip must be > 0, got {clip}") });
            }
        }
        if !(self.eps >= 0.0 && self.gripper_low.is_finite() && self.gripper_high.is_finite()) {
            return Err(Error::Invalid { op, msg: "eps must be >= 0 and the gripper states finite".into() });
        }
        Ok(())
    }
}
