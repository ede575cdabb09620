//! Training batches from a LeRobot dataset: [`data::Loader`](crate::data::Loader) workers decode
//! and augment frames; one encoding thread turns each of their batches into a backbone batch
//! (resize, normalise, patchify, tokenise, lay out, normalise actions and state) while the step
//! runs. At most `workers × prefetch` raw batches and `prefetch` encoded ones are held ahead, so
//! memory is bounded whatever the dataset's length.

use super::encoder::Encoder;
use crate::data::{LeRobotDataset, Loader, LoaderConfig, LoaderPosition, RandomShift};
use crate::engine::{Device, Error, Result, Tensor};
use crate::models::vla::ActionNormalizer;
use crate::train::{Batch, BatchSource};
use serde::{Deserialize, Serialize};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Per-dimension z-scoring of the state input (`(x − mean) / std`; a dimension with
/// `std < 1e-6` maps to 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateNormalizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl StateNormalizer {
    /// Check the statistics: one mean and one std per dimension, all finite.
    pub fn validate(&self, dim: usize) -> Result<()> {
        if self.mean.len() != dim || self.std.len() != dim {
            return Err(Error::invalid(
                "state normaliser",
                format!("{} means and {} stds for a {dim}-D state", self.mean.len(), self.std.len()),
            ));
        }
        if let Some(d) = (0..dim).find(|&d| !(self.mean[d].is_finite() && self.std[d].is_finite())) {
            return Err(Error::invalid(
                "state normaliser",
                format!("dimension {d}: mean {} std {}", self.mean[d], self.std[d]),
            ));
        }
        Ok(())
    }

    /// Rows of states (any number, each of the normaliser's width) z-scored.
    pub fn apply(&self, states: &[f32]) -> Vec<f32> {
        let dim = self.mean.len().max(1);
        states
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let d = i % dim;
                if self.std[d] < 1e-6 {
                    0.0
                } else {
                    (x - self.mean[d]) / self.std[d]
                }
            })
            .collect()
    }
}

/// What turns a raw data batch into a training batch (shared by the source and evaluation).
#[derive(Clone, Debug)]
pub struct BatchEncoder {
    pub encoder: Encoder,
    pub normalizer: ActionNormalizer,
    /// Set when the policy takes the state as an input row.
    pub state: Option<StateNormalizer>,
    pub device: Device,
}

impl BatchEncoder {
    /// Encode one loader batch.
    pub fn encode(&self, b: &crate::data::Batch) -> Result<Batch> {
        let n = b.len();
        let width = self.normalizer.action_dim();
        if b.action_dim != width {
            return Err(Error::invalid(
                "policy.action_dim",
                format!("the dataset's actions are {}-D; the policy predicts {width}-D actions", b.action_dim),
            ));
        }
        let cameras: Vec<Vec<_>> = (0..n).map(|i| b.frames(i)).collect();
        let texts: Vec<&str> = b.instructions.iter().map(String::as_str).collect();
        let input = self.encoder.encode(&cameras, &texts)?;
        let targets = self.normalizer.normalize_actions(&b.actions).map_err(|e| frame_error(b, e))?;
        let mask: Vec<u8> = b.action_mask.iter().map(|&m| u8::from(m)).collect();
        let state = match &self.state {
            None => None,
            Some(s) => {
                if let Some(i) = b.states.iter().position(|x| !x.is_finite()) {
                    return Err(Error::invalid(
                        "data",
                        format!("frame {}: state value {} is {}", b.indices[i / b.state_dim.max(1)], i, b.states[i]),
                    ));
                }
                Some(Tensor::from_vec(s.apply(&b.states), &[n, b.state_dim], Device::Cpu)?)
            }
        };
        let dev = self.device;
        Ok(Batch {
            input: input.to_device(dev)?,
            actions: Tensor::from_vec(targets, &[n, b.chunk, width], Device::Cpu)?.to_device(dev)?,
            mask: Tensor::from_vec(mask, &[n, b.chunk], Device::Cpu)?.to_device(dev)?,
            state: state.map(|s| s.to_device(dev)).transpose()?,
        })
    }
}

fn frame_error(b: &crate::data::Batch, e: Error) -> Error {
    Error::invalid("data", format!("frames {:?}: {e}", b.indices))
}

/// The loader settings of a fine-tuning run.
pub fn loader_config(data: &super::DataConfig, batch_size: usize, chunk: usize, seed: u64) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        chunk,
        workers: data.workers,
        prefetch: data.prefetch,
        seed,
        shuffle: data.shuffle,
        drop_last: false,
        shift: (data.shift > 0).then_some(RandomShift { pad: data.shift }),
    }
}

/// A resumable [`BatchSource`] over a dataset (see the [module docs](self)). Its position is the
/// loader's `(epoch, batch)` of the next batch.
pub struct LoaderSource {
    loader: Loader,
    encoder: Arc<BatchEncoder>,
    prefetch: usize,
    next: LoaderPosition,
    pipe: Option<Pipe>,
}

struct Pipe {
    rx: Receiver<Result<(Batch, LoaderPosition)>>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // Dropping the receiver makes the thread's next send fail; it then drops the loader
        // iterator, which stops and joins the workers.
        let (_, rx) = sync_channel(1);
        drop(std::mem::replace(&mut self.rx, rx));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl LoaderSource {
    pub fn new(dataset: Arc<LeRobotDataset>, config: LoaderConfig, encoder: BatchEncoder) -> Result<LoaderSource> {
        let prefetch = config.prefetch;
        Ok(LoaderSource {
            loader: Loader::new(dataset, config)?,
            encoder: Arc::new(encoder),
            prefetch,
            next: LoaderPosition::default(),
            pipe: None,
        })
    }

    fn start(&self, from: LoaderPosition) -> Result<Pipe> {
        let (tx, rx) = sync_channel(self.prefetch);
        let loader = self.loader.clone();
        let encoder = self.encoder.clone();
        let handle = std::thread::Builder::new()
            .name("vlm4vla-encode".into())
            .spawn(move || {
                for raw in loader.iter_from(from) {
                    let item = raw.and_then(|b| Ok((encoder.encode(&b)?, b.next_position)));
                    let failed = item.is_err();
                    if tx.send(item).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("starting the batch encoding thread", e))?;
        Ok(Pipe { rx, handle: Some(handle) })
    }
}

impl BatchSource for LoaderSource {
    fn next_batch(&mut self) -> Option<Result<Batch>> {
        if self.pipe.is_none() {
            match self.start(self.next) {
                Ok(p) => self.pipe = Some(p),
                Err(e) => return Some(Err(e)),
            }
        }
        let pipe = self.pipe.as_ref().expect("started above");
        match pipe.rx.recv() {
            Ok(Ok((batch, next))) => {
                self.next = next;
                Some(Ok(batch))
            }
            Ok(Err(e)) => {
                self.pipe = None;
                Some(Err(e))
            }
            Err(_) => {
                self.pipe = None;
                Some(Err(Error::invalid("data", "the batch encoding thread stopped unexpectedly")))
            }
        }
    }

    fn position(&self) -> serde_json::Value {
        serde_json::json!({ "epoch": self.next.epoch, "batch": self.next.batch })
    }

    fn restore(&mut self, position: &serde_json::Value) -> Result<()> {
        let pos: LoaderPosition = serde_json::from_value(position.clone())
            .map_err(|e| Error::invalid("data", format!("data position {position} is not a loader position: {e}")))?;
        if pos.batch >= self.loader.batches_per_epoch() {
            return Err(Error::invalid(
                "data",
                format!(
                    "data position {position}: an epoch of this dataset has {} batches",
                    self.loader.batches_per_epoch()
                ),
            ));
        }
        self.pipe = None;
        self.next = pos;
        Ok(())
    }

    fn batches_per_epoch(&self) -> Option<usize> {
        Some(self.loader.batches_per_epoch() as usize)
    }
}
