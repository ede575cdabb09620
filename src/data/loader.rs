//! [`Loader`]: seeded, resumable batches of decoded frames and action chunks, built ahead of the
//! consumer by worker threads.
//!
//! - **Order.** Epoch `e` visits the frames in a permutation drawn from a ChaCha8 stream keyed by
//!   `(seed, e)` (or in index order with `shuffle: false`); batch `b` of the epoch is the slice
//!   `b * batch_size ..` of it. The order depends only on the seed and the epoch, never on the
//!   number of workers.
//! - **Workers.** Worker `w` of `n` builds batches `w, w + n, w + 2n, ...` (counted from the start
//!   position) and hands each to its own bounded channel; the consumer takes them round-robin, so
//!   batches arrive in order and at most `workers × prefetch` are built ahead.
//! - **Augmentation.** [`RandomShift`] pads by `pad` pixels with edge replication and crops back
//!   at a random offset (DrQ / RT-1's random shift); the offset of each sample is drawn from a
//!   stream keyed by `(seed, epoch, position in the epoch)`, so it is reproducible too.
//! - **Resuming.** A [`LoaderPosition`] (epoch, batch) names the next batch; every [`Batch`]
//!   carries its own position and [`Batch::next_position`], which a checkpoint stores so that a
//!   resumed run sees exactly the batches it would have seen.

use super::{LeRobotDataset, RgbImage};
use crate::engine::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Random-shift augmentation: pad by `pad` pixels (edge replication), crop back to the original
/// size at an offset drawn uniformly from `[0, 2 * pad]²`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandomShift {
    pub pad: usize,
}

/// How the loader batches a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Actions per sample (the action chunk length).
    pub chunk: usize,
    /// Worker threads decoding and assembling batches (at least 1).
    pub workers: usize,
    /// Batches each worker may build ahead of the consumer.
    pub prefetch: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Drop the last, smaller batch of each epoch.
    pub drop_last: bool,
    pub shift: Option<RandomShift>,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 8,
            chunk: 10,
            workers: 2,
            prefetch: 2,
            seed: 0,
            shuffle: true,
            drop_last: false,
            shift: None,
        }
    }
}

/// Where a loader stands: the next batch to produce is batch `batch` of epoch `epoch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LoaderPosition {
    pub epoch: u64,
    pub batch: u64,
}

/// A batch, row-major throughout.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Which batch this is.
    pub position: LoaderPosition,
    /// The position after this batch (store it in a checkpoint to resume after it).
    pub next_position: LoaderPosition,
    /// Global frame indices of the samples.
    pub indices: Vec<usize>,
    /// One entry per camera the dataset reads, in its order.
    pub cameras: Vec<CameraImages>,
    pub state_dim: usize,
    /// `[B, state_dim]`.
    pub states: Vec<f32>,
    pub instructions: Vec<String>,
    pub chunk: usize,
    pub action_dim: usize,
    /// `[B, chunk, action_dim]`; rows past an episode's end repeat its last action.
    pub actions: Vec<f32>,
    /// `[B, chunk]`: `false` past an episode's end.
    pub action_mask: Vec<bool>,
    /// `(dx, dy)` applied to each sample's images (every camera alike): output pixel `(x, y)`
    /// shows input `(x + dx, y + dy)` (clamped to the image); `(0, 0)` without augmentation.
    pub shifts: Vec<(i32, i32)>,
}

/// One camera's frames of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct CameraImages {
    pub key: String,
    pub height: usize,
    pub width: usize,
    /// `[B, height, width, 3]` RGB bytes (after augmentation).
    pub images: Vec<u8>,
}

impl CameraImages {
    /// Sample `b`'s frame.
    pub fn image(&self, b: usize) -> RgbImage {
        let n = self.height * self.width * 3;
        RgbImage { width: self.width, height: self.height, data: self.images[b * n..(b + 1) * n].to_vec() }
    }
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Sample `b`'s image of the first camera.
    pub fn image(&self, b: usize) -> RgbImage {
        self.cameras[0].image(b)
    }

    /// Sample `b`'s images, one per camera.
    pub fn frames(&self, b: usize) -> Vec<RgbImage> {
        self.cameras.iter().map(|c| c.image(b)).collect()
    }
}

/// Batches a [`LeRobotDataset`]; see the [module docs](self).
#[derive(Clone)]
pub struct Loader {
    dataset: Arc<LeRobotDataset>,
    config: LoaderConfig,
    per_epoch: u64,
}

impl Loader {
    pub fn new(dataset: Arc<LeRobotDataset>, config: LoaderConfig) -> Result<Self> {
        let op = "Loader::new";
        if config.batch_size == 0 || config.chunk == 0 {
            return Err(Error::Invalid { op, msg: "batch_size and chunk must be positive".into() });
        }
        let n = dataset.len() as u64;
        let b = config.batch_size as u64;
        let per_epoch = if config.drop_last { n / b } else { n.div_ceil(b) };
        if per_epoch == 0 {
            return Err(Error::Invalid {
                op,
                msg: format!("a dataset of {n} frames gives no batch of {b} (drop_last = {})", config.drop_last),
            });
        }
        if let Some(s) = config.shift {
            let (h, w) = dataset.image_size();
            if s.pad > h.max(w) {
                return Err(Error::Invalid {
                    op,
                    msg: format!("random shift pad {} exceeds the {w}x{h} image", s.pad),
                });
            }
        }
        Ok(Loader { dataset, config, per_epoch })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    pub fn dataset(&self) -> &Arc<LeRobotDataset> {
        &self.dataset
    }

    pub fn batches_per_epoch(&self) -> u64 {
        self.per_epoch
    }

    /// The position `steps` batches after `pos`.
    pub fn advance(&self, pos: LoaderPosition, steps: u64) -> LoaderPosition {
        let b = pos.batch + steps;
        LoaderPosition { epoch: pos.epoch + b / self.per_epoch, batch: b % self.per_epoch }
    }

    /// The order in which epoch `epoch` visits the frames.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let n = self.dataset.len();
        let mut order: Vec<usize> = (0..n).collect();
        if self.config.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
            rng.set_stream(epoch);
            for i in (1..n).rev() {
                let j = rng.gen_range(0..=i);
                order.swap(i, j);
            }
        }
        order
    }

    /// Frame indices of the batch at `pos` (its epoch's order must be given).
    fn slice<'a>(&self, order: &'a [usize], pos: LoaderPosition) -> &'a [usize] {
        let b = self.config.batch_size;
        let start = (pos.batch as usize * b).min(order.len());
        &order[start..(start + b).min(order.len())]
    }

    /// Build the batch at `pos` on the calling thread (the workers run exactly this).
    pub fn load_batch(&self, pos: LoaderPosition) -> Result<Batch> {
        if pos.batch >= self.per_epoch {
            return Err(Error::Invalid {
                op: "Loader::load_batch",
                msg: format!("batch {} out of range: an epoch has {} batches", pos.batch, self.per_epoch),
            });
        }
        let order = self.epoch_order(pos.epoch);
        self.build(&order, pos)
    }

    fn build(&self, order: &[usize], pos: LoaderPosition) -> Result<Batch> {
        let ds = &*self.dataset;
        let cfg = &self.config;
        let indices = self.slice(order, pos).to_vec();
        let cameras = ds
            .camera_keys()
            .iter()
            .enumerate()
            .map(|(c, key)| {
                let (height, width) = ds.camera_size(c);
                let images = Vec::with_capacity(indices.len() * height * width * 3);
                CameraImages { key: key.to_string(), height, width, images }
            })
            .collect();
        let mut batch = Batch {
            position: pos,
            next_position: self.advance(pos, 1),
            indices: indices.clone(),
            cameras,
            state_dim: ds.state_dim(),
            states: Vec::with_capacity(indices.len() * ds.state_dim()),
            instructions: Vec::with_capacity(indices.len()),
            chunk: cfg.chunk,
            action_dim: ds.action_dim(),
            actions: Vec::with_capacity(indices.len() * cfg.chunk * ds.action_dim()),
            action_mask: Vec::with_capacity(indices.len() * cfg.chunk),
            shifts: Vec::with_capacity(indices.len()),
        };
        for (slot, &i) in indices.iter().enumerate() {
            let (dx, dy) = match cfg.shift {
                Some(s) if s.pad > 0 => {
                    let k = s.pad as i64;
                    let mut rng = ChaCha8Rng::seed_from_u64(splitmix(
                        cfg.seed ^ splitmix(pos.epoch ^ splitmix(pos.batch * cfg.batch_size as u64 + slot as u64)),
                    ));
                    let dx = rng.gen_range(0..=2 * k) - k;
                    let dy = rng.gen_range(0..=2 * k) - k;
                    (dx, dy)
                }
                _ => (0, 0),
            };
            for (c, cam) in batch.cameras.iter_mut().enumerate() {
                let img = ds.decode_camera(i, c)?;
                if (dx, dy) == (0, 0) {
                    cam.images.extend_from_slice(&img.data);
                } else {
                    shift_into(&img, dx, dy, &mut cam.images);
                }
            }
            batch.shifts.push((dx as i32, dy as i32));
            batch.states.extend_from_slice(ds.state(i).unwrap_or_default());
            batch.instructions.push(ds.instruction(i).unwrap_or_default().to_string());
            ds.action_chunk_into(i, cfg.chunk, &mut batch.actions, &mut batch.action_mask)?;
        }
        Ok(batch)
    }

    /// Batches from `start` on, across epochs, without end.
    pub fn iter_from(&self, start: LoaderPosition) -> LoaderIter {
        self.spawn(start, None)
    }

    /// The batches of one epoch.
    pub fn epoch(&self, epoch: u64) -> LoaderIter {
        self.spawn(LoaderPosition { epoch, batch: 0 }, Some(self.per_epoch))
    }

    fn spawn(&self, start: LoaderPosition, limit: Option<u64>) -> LoaderIter {
        let start = self.advance(start, 0);
        let n = self.config.workers.max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for w in 0..n {
            let (tx, rx) = sync_channel(self.config.prefetch.max(1));
            receivers.push(rx);
            let loader = self.clone();
            let stop = stop.clone();
            handles.push(std::thread::spawn(move || loader.worker(w as u64, n as u64, start, limit, tx, stop)));
        }
        LoaderIter { receivers, handles, stop, next: 0, limit }
    }

    fn worker(
        &self,
        w: u64,
        n: u64,
        start: LoaderPosition,
        limit: Option<u64>,
        tx: SyncSender<Result<Batch>>,
        stop: Arc<AtomicBool>,
    ) {
        let mut cached: Option<(u64, Vec<usize>)> = None;
        let mut job = w;
        while !stop.load(Ordering::Relaxed) && limit.is_none_or(|l| job < l) {
            let pos = self.advance(start, job);
            if cached.as_ref().is_none_or(|(e, _)| *e != pos.epoch) {
                cached = Some((pos.epoch, self.epoch_order(pos.epoch)));
            }
            let order = cached.as_ref().map(|(_, o)| o.as_slice()).unwrap_or_default();
            if tx.send(self.build(order, pos)).is_err() {
                return;
            }
            job += n;
        }
    }
}

/// The iterator a [`Loader`] returns; dropping it stops and joins the workers.
pub struct LoaderIter {
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    next: u64,
    limit: Option<u64>,
}

impl Iterator for LoaderIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.limit.is_some_and(|l| self.next >= l) {
            return None;
        }
        let w = (self.next % self.receivers.len() as u64) as usize;
        self.next += 1;
        match self.receivers[w].recv() {
            Ok(b) => Some(b),
            Err(_) => {
                Some(Err(Error::Invalid { op: "Loader", msg: format!("loader worker {w} stopped unexpectedly") }))
            }
        }
    }
}

impl Drop for LoaderIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Pad `img` by edge replication and crop at offset `(dx, dy)` from the centre: output pixel
/// `(x, y)` is input pixel `(clamp(x + dx), clamp(y + dy))`.
pub fn shift_into(img: &RgbImage, dx: i64, dy: i64, out: &mut Vec<u8>) {
    let (w, h) = (img.width as i64, img.height as i64);
    for y in 0..h {
        let sy = (y + dy).clamp(0, h - 1) as usize;
        let row = &img.data[sy * img.width * 3..(sy + 1) * img.width * 3];
        for x in 0..w {
            let sx = (x + dx).clamp(0, w - 1) as usize * 3;
            out.extend_from_slice(&row[sx..sx + 3]);
        }
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
