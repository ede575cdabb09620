//! Feature statistics as LeRobot stores them (`meta/stats.json` and the `stats/...` columns of
//! the episodes table): per dimension `min`, `max`, `mean`, `std` (population), `count` and the
//! quantiles `q01 q10 q50 q90 q99`.
//!
//! Differences from LeRobot's `compute_stats.py`, all in the direction of exactness: quantiles are
//! exact (sorted values, linear interpolation between closest ranks, numpy's default) instead of
//! read off a 5000-bin histogram; image statistics use every pixel of every frame (LeRobot samples
//! and downsamples frames) and are exact through a 256-bin histogram per channel; the dataset-wide
//! statistics are computed over all frames directly instead of being merged from per-episode
//! summaries (LeRobot's merged quantiles are an envelope, not quantiles). Image statistics are per
//! channel in [0, 1] with shape `[3, 1, 1]`, and their `count` is the number of frames.

use crate::engine::{Error, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The quantiles stored next to min/max/mean/std, with their keys.
pub const QUANTILES: [(&str, f64); 5] = [("q01", 0.01), ("q10", 0.10), ("q50", 0.50), ("q90", 0.90), ("q99", 0.99)];

/// The statistics of one feature, one value per dimension (per channel for images).
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureStats {
    pub min: Vec<f64>,
    pub max: Vec<f64>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Number of frames the statistics were computed over.
    pub count: u64,
    /// `q01 q10 q50 q90 q99`, in the order of [`QUANTILES`].
    pub quantiles: [Vec<f64>; 5],
}

/// Statistics per feature name.
pub type DatasetStats = BTreeMap<String, FeatureStats>;

impl FeatureStats {
    /// The quantile stored under `key` (`"q01"`, ..., `"q99"`).
    pub fn quantile(&self, key: &str) -> Option<&[f64]> {
        QUANTILES.iter().position(|(k, _)| *k == key).map(|i| self.quantiles[i].as_slice())
    }

    /// 1st percentile per dimension.
    pub fn q01(&self) -> &[f64] {
        &self.quantiles[0]
    }

    /// 99th percentile per dimension.
    pub fn q99(&self) -> &[f64] {
        &self.quantiles[4]
    }

    /// Statistics of `rows` vectors of `dim` values stored row-major in `values`.
    pub(crate) fn from_rows(values: &[f64], dim: usize) -> Self {
        let n = values.len().checked_div(dim).unwrap_or(0);
        let mut s = FeatureStats::empty(dim, n as u64);
        let mut col = Vec::with_capacity(n);
        for d in 0..dim {
            col.clear();
            col.extend((0..n).map(|r| values[r * dim + d]));
            col.sort_by(f64::total_cmp);
            if n == 0 {
                continue;
            }
            let mean = col.iter().sum::<f64>() / n as f64;
            let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
            s.min[d] = col[0];
            s.max[d] = col[n - 1];
            s.mean[d] = mean;
            s.std[d] = var.sqrt();
            for (qi, (_, q)) in QUANTILES.iter().enumerate() {
                s.quantiles[qi][d] = quantile_sorted(n, *q, |i| col[i]);
            }
        }
        s
    }

    /// Statistics of 8-bit channels from per-channel histograms, scaled to [0, 1].
    pub(crate) fn from_histograms(hist: &[[u64; 256]], frames: u64) -> Self {
        let mut s = FeatureStats::empty(hist.len(), frames);
        for (c, h) in hist.iter().enumerate() {
            let n: u64 = h.iter().sum();
            if n == 0 {
                continue;
            }
            let sum: f64 = h.iter().enumerate().map(|(v, &k)| v as f64 * k as f64).sum();
            let mean = sum / n as f64;
            let var = h.iter().enumerate().map(|(v, &k)| (v as f64 - mean).powi(2) * k as f64).sum::<f64>() / n as f64;
            let cum: Vec<u64> = h
                .iter()
                .scan(0u64, |acc, &k| {
                    *acc += k;
                    Some(*acc)
                })
                .collect();
            // Value at sorted position i: the first bin whose cumulative count exceeds i.
            let at = |i: usize| cum.partition_point(|&c| c <= i as u64) as f64;
            s.min[c] = at(0) / 255.0;
            s.max[c] = at(n as usize - 1) / 255.0;
            s.mean[c] = mean / 255.0;
            s.std[c] = var.sqrt() / 255.0;
            for (qi, (_, q)) in QUANTILES.iter().enumerate() {
                s.quantiles[qi][c] = quantile_sorted(n as usize, *q, at) / 255.0;
            }
        }
        s
    }

    fn empty(dim: usize, count: u64) -> Self {
        let z = vec![0.0; dim];
        FeatureStats {
            min: z.clone(),
            max: z.clone(),
            mean: z.clone(),
            std: z.clone(),
            count,
            quantiles: [z.clone(), z.clone(), z.clone(), z.clone(), z],
        }
    }

    /// The named statistics in LeRobot's key order: min, max, mean, std, then the quantiles
    /// (count is separate: it is an integer).
    pub(crate) fn float_entries(&self) -> Vec<(&'static str, &[f64])> {
        let mut v: Vec<(&'static str, &[f64])> =
            vec![("min", &self.min), ("max", &self.max), ("mean", &self.mean), ("std", &self.std)];
        for (i, (k, _)) in QUANTILES.iter().enumerate() {
            v.push((k, &self.quantiles[i]));
        }
        v
    }

    /// JSON as LeRobot writes it: vectors as lists, image statistics as `[C][1][1]`.
    pub(crate) fn to_json(&self, image: bool) -> Value {
        let wrap = |v: &[f64]| -> Value {
            if image {
                Value::Array(v.iter().map(|x| json!([[x]])).collect())
            } else {
                json!(v)
            }
        };
        let mut m = serde_json::Map::new();
        for (k, v) in self.float_entries().into_iter().take(4) {
            m.insert(k.into(), wrap(v));
        }
        m.insert("count".into(), json!([self.count]));
        for (i, (k, _)) in QUANTILES.iter().enumerate() {
            m.insert((*k).into(), wrap(&self.quantiles[i]));
        }
        Value::Object(m)
    }

    /// Parse one feature's entry of `stats.json`; nested arrays (image stats) are flattened.
    pub(crate) fn from_json(v: &Value, path: &Path, feature: &str) -> Result<Self> {
        let err = |msg: String| Error::file(path, format!("feature `{feature}`: {msg}"));
        let obj = v.as_object().ok_or_else(|| err("statistics are not a JSON object".into()))?;
        let get = |key: &str| -> Result<Vec<f64>> {
            let v = obj.get(key).ok_or_else(|| err(format!("missing statistic `{key}`")))?;
            let mut out = Vec::new();
            flatten_numbers(v, &mut out).map_err(|m| err(format!("statistic `{key}`: {m}")))?;
            Ok(out)
        };
        let min = get("min")?;
        let dim = min.len();
        let same = |key: &str, v: Vec<f64>| -> Result<Vec<f64>> {
            if v.len() == dim {
                Ok(v)
            } else {
                Err(err(format!("statistic `{key}` has {} values but `min` has {dim}", v.len())))
            }
        };
        let count = get("count")?;
        let count = match count.as_slice() {
            [c] if *c >= 0.0 && c.fract() == 0.0 => *c as u64,
            _ => return Err(err(format!("statistic `count` must be one non-negative integer, got {count:?}"))),
        };
        // Quantiles are optional in stats written before LeRobot added them; fall back to min/max
        // for the tails and the mean for the middle so readers always see all five.
        let max = same("max", get("max")?)?;
        let mean = same("mean", get("mean")?)?;
        let mut quantiles: [Vec<f64>; 5] = Default::default();
        for (i, (k, q)) in QUANTILES.iter().enumerate() {
            quantiles[i] = if obj.contains_key(*k) {
                same(k, get(k)?)?
            } else if *q < 0.5 {
                min.clone()
            } else if *q > 0.5 {
                max.clone()
            } else {
                mean.clone()
            };
        }
        Ok(FeatureStats { std: same("std", get("std")?)?, min, max, mean, count, quantiles })
    }
}

/// Linear interpolation between closest ranks (numpy's default `linear` method) over `n` sorted
/// values read through `at`.
fn quantile_sorted(n: usize, q: f64, at: impl Fn(usize) -> f64) -> f64 {
    let pos = q * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let frac = pos - lo as f64;
    let (a, b) = (at(lo), at(hi));
    a + (b - a) * frac
}

fn flatten_numbers(v: &Value, out: &mut Vec<f64>) -> std::result::Result<(), String> {
    match v {
        Value::Number(n) => {
            out.push(n.as_f64().ok_or("number out of range")?);
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(|x| flatten_numbers(x, out)),
        other => Err(format!("expected numbers, found {other}")),
    }
}

/// Accumulates what is needed for one feature's statistics.
pub(crate) enum StatsAccumulator {
    Rows { dim: usize, values: Vec<f64> },
    Image { hist: Box<[[u64; 256]; 3]>, frames: u64 },
}

impl StatsAccumulator {
    pub(crate) fn rows(dim: usize) -> Self {
        StatsAccumulator::Rows { dim, values: Vec::new() }
    }

    pub(crate) fn image() -> Self {
        StatsAccumulator::Image { hist: Box::new([[0u64; 256]; 3]), frames: 0 }
    }

    pub(crate) fn push_row(&mut self, row: impl IntoIterator<Item = f64>) {
        if let StatsAccumulator::Rows { values, .. } = self {
            values.extend(row);
        }
    }

    pub(crate) fn push_image(&mut self, rgb: &[u8]) {
        if let StatsAccumulator::Image { hist, frames } = self {
            for px in rgb.chunks_exact(3) {
                hist[0][px[0] as usize] += 1;
                hist[1][px[1] as usize] += 1;
                hist[2][px[2] as usize] += 1;
            }
            *frames += 1;
        }
    }

    pub(crate) fn merge(&mut self, other: &StatsAccumulator) {
        match (self, other) {
            (StatsAccumulator::Rows { values, .. }, StatsAccumulator::Rows { values: o, .. }) => {
                values.extend_from_slice(o)
            }
            (StatsAccumulator::Image { hist, frames }, StatsAccumulator::Image { hist: oh, frames: of }) => {
                for c in 0..3 {
                    for v in 0..256 {
                        hist[c][v] += oh[c][v];
                    }
                }
                *frames += of;
            }
            _ => {}
        }
    }

    pub(crate) fn finish(&self) -> FeatureStats {
        match self {
            StatsAccumulator::Rows { dim, values } => FeatureStats::from_rows(values, *dim),
            StatsAccumulator::Image { hist, frames } => FeatureStats::from_histograms(&hist[..], *frames),
        }
    }
}
