//! Checkpoints: one directory per save, `<output_dir>/checkpoint-<step>/`, holding
//!
//! - `model.safetensors`: the trainable parameters by checkpoint name (backbone names as in the
//!   backbone's own files, a fused projection as its parts, `vla.*` for the action queries and
//!   head; see `VlaPolicy::checkpoint_tensors`);
//! - `optimizer.safetensors`: the AdamW state ([`AdamW::state_tensors`](crate::engine::AdamW)),
//!   under the same checkpoint names (a fused projection's state split like its weights);
//! - `config.toml`: the full [`TrainConfig`];
//! - `trainer_state.json`: [`TrainerState`] (step, samples seen, RNG state, data position, and
//!   the caller's `extra` value, e.g. the action normaliser's statistics).
//!
//! The directory is assembled under a temporary name (`.checkpoint-<step>.tmp-<pid>`), synced,
//! and renamed into place; an existing checkpoint of the same step is swapped out atomically
//! (`renameat2(RENAME_EXCHANGE)` on Linux) and only then deleted, so at every instant
//! `checkpoint-<step>` is complete or absent. `<output_dir>/latest` (written atomically) names
//! the newest complete one. Leftovers of a killed save are repaired by
//! [`rundir::recover`](super::rundir::recover) when the next run takes the directory.

use super::config::TrainConfig;
use crate::engine::io::write_atomic;
use crate::engine::{Error, Result};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const CONFIG_FILE: &str = "config.toml";
pub const STATE_FILE: &str = "trainer_state.json";
pub const LATEST_FILE: &str = "latest";
/// The largest step a checkpoint may claim (a billion optimizer steps).
pub const MAX_STEP: usize = 1_000_000_000;

/// A ChaCha8 generator's position, as JSON-safe strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte seed, hex.
    pub seed: String,
    pub stream: u64,
    /// The 128-bit word position, decimal.
    pub word_pos: String,
}

impl RngState {
    pub fn of(rng: &ChaCha8Rng) -> RngState {
        let seed = rng.get_seed().iter().map(|b| format!("{b:02x}")).collect();
        RngState { seed, stream: rng.get_stream(), word_pos: rng.get_word_pos().to_string() }
    }

    pub fn restore(&self, origin: &Path) -> Result<ChaCha8Rng> {
        use rand::SeedableRng;
        let bad = |what: &str| Error::file(origin, format!("rng.{what} is malformed"));
        if self.seed.len() != 64 {
            return Err(bad("seed"));
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.seed[2 * i..2 * i + 2], 16).map_err(|_| bad("seed"))?;
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse::<u128>().map_err(|_| bad("word_pos"))?);
        Ok(rng)
    }
}

/// `trainer_state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    pub format_version: u32,
    /// Optimizer steps taken.
    pub step: usize,
    /// Micro-batches consumed.
    pub micro_batches: u64,
    /// Training rows consumed.
    pub samples: u64,
    pub total_steps: usize,
    pub backbone_family: String,
    pub rng: RngState,
    /// The data source's position after the last consumed batch.
    pub data_position: serde_json::Value,
    /// The caller's slot (the action normaliser's statistics, ...).
    pub extra: serde_json::Value,
    /// The loss of every step so far (for the loss curve).
    pub losses: Vec<f64>,
}

/// A checkpoint directory read back.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: TrainConfig,
    pub state: TrainerState,
}

impl Checkpoint {
    /// Read `dir`'s config and trainer state (the weights are read by the trainer on resume).
    /// `dir` may also be an output directory with a `latest` file; should that name no complete
    /// checkpoint (a save killed on a filesystem without an atomic exchange, or damage), the
    /// newest complete one is read (the next run there repairs `latest`, saying so).
    pub fn open(dir: impl AsRef<Path>) -> Result<Checkpoint> {
        let dir = dir.as_ref();
        if !dir.join(STATE_FILE).exists() && dir.join(LATEST_FILE).exists() {
            let latest = dir.join(LATEST_FILE);
            let name =
                std::fs::read_to_string(&latest).map_err(|e| Error::io(format!("reading {}", latest.display()), e))?;
            let named = dir.join(name.trim());
            if named.parent() != Some(dir) || named.join(LATEST_FILE).exists() {
                return Err(Error::file(
                    &latest,
                    format!("names `{}`, which is not a checkpoint of this run", name.trim()),
                ));
            }
            return Self::open_dir(named.clone()).or_else(|e| match super::rundir::newest_complete(dir) {
                Some(n) => Self::open_dir(dir.join(n)),
                None => Err(e),
            });
        }
        Self::open_dir(dir.to_path_buf())
    }

    fn open_dir(dir: PathBuf) -> Result<Checkpoint> {
        // The optimizer state is only read on resume (which checks it), not by eval or predict.
        for f in [MODEL_FILE, CONFIG_FILE, STATE_FILE] {
            if !dir.join(f).is_file() {
                return Err(Error::file(dir.join(f), "missing from the checkpoint"));
            }
        }
        let config = TrainConfig::from_file(dir.join(CONFIG_FILE))?;
        let state_path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&state_path)
            .map_err(|e| Error::io(format!("reading {}", state_path.display()), e))?;
        let state: TrainerState =
            serde_json::from_str(&text).map_err(|e| Error::file(&state_path, format!("invalid trainer state: {e}")))?;
        if state.format_version != 1 {
            return Err(Error::file(
                &state_path,
                format!("format_version {} is not supported (1 is)", state.format_version),
            ));
        }
        if state.step > MAX_STEP {
            return Err(Error::file(
                &state_path,
                format!("`step` = {} is beyond any real run (at most {MAX_STEP})", state.step),
            ));
        }
        if state.losses.len() > state.step {
            return Err(Error::file(
                &state_path,
                format!("`losses` holds {} values, more than the {} steps taken", state.losses.len(), state.step),
            ));
        }
        Ok(Checkpoint { dir, config, state })
    }

    pub fn model_path(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }

    pub fn optimizer_path(&self) -> PathBuf {
        self.dir.join(OPTIMIZER_FILE)
    }
}

/// The directory name of the checkpoint after `step` steps.
pub fn dir_name(step: usize) -> String {
    format!("checkpoint-{step}")
}

/// Write a checkpoint directory atomically: `write_files(tmp)` fills a temporary directory,
/// which is synced and renamed to `output_dir/checkpoint-<step>` (an older one of that name is
/// swapped out first and deleted after), and `latest` is pointed at it.
pub fn write_dir(output_dir: &Path, step: usize, write_files: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let io = |what: &str, p: &Path, e| Error::io(format!("{what} {}", p.display()), e);
    std::fs::create_dir_all(output_dir).map_err(|e| io("creating", output_dir, e))?;
    let name = dir_name(step);
    let tmp = output_dir.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io("removing", &tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| io("creating", &tmp, e))?;
    if let Err(e) = write_files(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(&tmp);
    let dst = output_dir.join(&name);
    if dst.exists() {
        if exchange(&tmp, &dst).is_err() {
            // No atomic exchange here: move the old one aside, the new one in. A kill between
            // the two renames leaves both copies, which the next run's recovery puts back.
            let aside = output_dir.join(format!(".{name}.old-{}", std::process::id()));
            std::fs::rename(&dst, &aside).map_err(|e| io("moving aside", &dst, e))?;
            std::fs::rename(&tmp, &dst).map_err(|e| io("renaming into", &dst, e))?;
            std::fs::rename(&aside, &tmp).map_err(|e| io("renaming", &aside, e))?;
        }
        sync_dir(output_dir);
        write_atomic(output_dir.join(LATEST_FILE), format!("{name}\n").as_bytes())?;
        // `tmp` now holds the replaced checkpoint.
        std::fs::remove_dir_all(&tmp).map_err(|e| io("removing the replaced checkpoint", &tmp, e))?;
    } else {
        std::fs::rename(&tmp, &dst).map_err(|e| io("renaming into", &dst, e))?;
        sync_dir(output_dir);
        write_atomic(output_dir.join(LATEST_FILE), format!("{name}\n").as_bytes())?;
    }
    Ok(dst)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Swap two directories in one atomic step.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both paths are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}
