//! The training loop.

use super::checkpoint::{self, Checkpoint, RngState, TrainerState};
use super::config::TrainConfig;
use super::plot::loss_curve_png;
use super::rundir::{self, RunLock};
use super::signal;
use crate::engine::io::{save, write_atomic, SafeTensorsFile};
use crate::engine::{AdamW, Error, GradNorm, GradStore, LoadOptions, LrSchedule, Result, Tensor};
use crate::models::vla::{LossValues, PolicyLoss, VlaPolicy};
use crate::models::BackboneInput;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The one host read of an optimizer step: the values of every micro-batch's loss
/// ([`PolicyLoss::stats`]) and the gradient norm, read together in the norm's dtype (f64 on the
/// CPU: every value exact).
pub fn read_step(parts: &[PolicyLoss], norm: &GradNorm) -> Result<(Vec<LossValues>, f64)> {
    let dtype = norm.sum_sq().dtype();
    let mut packed = parts.iter().map(|pl| pl.stats()?.to_dtype(dtype)).collect::<Result<Vec<_>>>()?;
    packed.push(norm.sum_sq().clone());
    let values = Tensor::cat(&packed.iter().collect::<Vec<_>>(), 0)?.to_vec::<f64>()?;
    let (stats, sum_sq) = values.split_at(values.len() - 1);
    let losses = parts.iter().zip(stats.chunks(4)).map(|(pl, s)| pl.values_from(s)).collect::<Result<Vec<_>>>()?;
    Ok((losses, sum_sq[0].sqrt()))
}

/// The metrics log in the output directory, one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The loss curve in the output directory.
pub const LOSS_PLOT_FILE: &str = "loss.png";

/// One micro-batch.
#[derive(Clone, Debug)]
pub struct Batch {
    pub input: BackboneInput,
    /// `[B, chunk, 7]`: normalised arm actions and the gripper in {0, 1}.
    pub actions: Tensor,
    /// `[B, chunk]`, nonzero where the chunk step lies inside the episode.
    pub mask: Tensor,
    /// `[B, state_dim]` proprioceptive state, for policies that take one (`policy.state_dim`).
    pub state: Option<Tensor>,
}

impl Batch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.actions.shape().first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where training batches come from, resumably.
pub trait BatchSource {
    /// The next micro-batch, or None when the data is exhausted (training then ends).
    fn next_batch(&mut self) -> Option<Result<Batch>>;
    /// The position after the last batch handed out, stored in checkpoints.
    fn position(&self) -> serde_json::Value;
    /// Continue from a position [`position`](Self::position) returned.
    fn restore(&mut self, position: &serde_json::Value) -> Result<()>;
    /// Micro-batches per epoch, if known (needed for `run.epochs`).
    fn batches_per_epoch(&self) -> Option<usize> {
        None
    }
    /// Told the loss of every optimizer step (1-based `step`) after it is taken, for sources
    /// whose mixture follows training progress. State it keeps must be in
    /// [`position`](Self::position) for resumes to stay exact.
    fn observe_loss(&mut self, _step: usize, _loss: f64) {}
    /// A factor on the scheduled learning rate for the step about to be taken (asked after its
    /// micro-batches are handed out), for sources whose phases want different rates. It must
    /// follow from the position alone for resumes to stay exact.
    fn lr_scale(&self) -> f64 {
        1.0
    }
}

/// A [`BatchSource`] over any deterministic iterator: `make()` builds the iterator from the
/// start; the position is the number of batches consumed, and restoring rebuilds the iterator
/// and skips that many.
pub struct ReplaySource<F, I> {
    make: F,
    iter: I,
    consumed: u64,
    per_epoch: Option<usize>,
}

impl<F, I> ReplaySource<F, I>
where
    F: FnMut() -> I,
    I: Iterator<Item = Result<Batch>>,
{
    pub fn new(mut make: F) -> Self {
        let iter = make();
        ReplaySource { make, iter, consumed: 0, per_epoch: None }
    }

    /// Declare the epoch length (for `run.epochs`).
    pub fn with_batches_per_epoch(mut self, n: usize) -> Self {
        self.per_epoch = Some(n);
        self
    }
}

impl<F, I> BatchSource for ReplaySource<F, I>
where
    F: FnMut() -> I,
    I: Iterator<Item = Result<Batch>>,
{
    fn next_batch(&mut self) -> Option<Result<Batch>> {
        let b = self.iter.next();
        if b.is_some() {
            self.consumed += 1;
        }
        b
    }

    fn position(&self) -> serde_json::Value {
        serde_json::json!({ "batches": self.consumed })
    }

    fn restore(&mut self, position: &serde_json::Value) -> Result<()> {
        let n = position.get("batches").and_then(|v| v.as_u64()).ok_or_else(|| Error::Invalid {
            op: "ReplaySource::restore",
            msg: format!("position {position} has no `batches` count"),
        })?;
        self.iter = (self.make)();
        for i in 0..n {
            match self.iter.next() {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(Error::Invalid {
                        op: "ReplaySource::restore",
                        msg: format!("the data ended after {i} batches, before the saved position {n}"),
                    })
                }
            }
        }
        self.consumed = n;
        Ok(())
    }

    fn batches_per_epoch(&self) -> Option<usize> {
        self.per_epoch
    }
}

/// The metrics of one optimizer step (also a line of `metrics.jsonl`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StepMetrics {
    /// Steps taken, this one included (1-based).
    pub step: usize,
    pub loss: f64,
    pub arm: f64,
    pub gripper: f64,
    pub gripper_acc: f64,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    pub samples_per_s: f64,
    pub samples: u64,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Steps taken in total (including those before a resume).
    pub steps: usize,
    /// The loss of every step taken in this call.
    pub losses: Vec<f64>,
    /// Ended by [`Trainer::request_stop`] or Ctrl-C rather than by reaching the last step.
    pub stopped: bool,
    /// Ended because the data source ran out.
    pub data_exhausted: bool,
    pub last_checkpoint: Option<PathBuf>,
}

/// Evaluation hook: called every `run.eval_every` steps with the policy and the step; what it
/// returns is logged as `{"step": s, "eval": value}`.
pub type EvalFn<'a> = dyn FnMut(&VlaPolicy, usize) -> Result<serde_json::Value> + 'a;

/// Fine-tunes a [`VlaPolicy`] as its [`TrainConfig`] says.
pub struct Trainer {
    config: TrainConfig,
    policy: VlaPolicy,
    optimizer: AdamW,
    step: usize,
    micro_batches: u64,
    samples: u64,
    rng: ChaCha8Rng,
    extra: serde_json::Value,
    losses: Vec<f64>,
    pending_position: Option<serde_json::Value>,
    last_checkpoint: Option<PathBuf>,
    /// The step whose checkpoint in the output directory is current (no need to save it again).
    saved_step: Option<usize>,
    stop: Arc<AtomicBool>,
    _lock: RunLock,
}

impl Trainer {
    /// A fresh run. `policy` must have been built with `config.policy`; the modules
    /// `config.train_modules` names are made trainable and everything else frozen.
    ///
    /// The output directory is locked for the trainer's life ([`RunLock`]); one that already
    /// holds a run is refused (resume it, or clear it first with [`rundir::clear_run`]).
    pub fn new(config: TrainConfig, policy: VlaPolicy) -> Result<Trainer> {
        config.validate()?;
        let lock = claim(&config.output_dir)?;
        rundir::refuse_if_holds_run(&config.output_dir)?;
        Self::build(config, policy, lock)
    }

    fn build(config: TrainConfig, mut policy: VlaPolicy, lock: RunLock) -> Result<Trainer> {
        config.validate()?;
        if policy.config() != &config.policy {
            return Err(Error::Invalid {
                op: "Trainer",
                msg: format!(
                    "the policy was built with {:?}, but the config's [policy] is {:?}",
                    policy.config(),
                    config.policy
                ),
            });
        }
        policy.set_trainable(&config.trainable())?;
        let optimizer = AdamW::new(config.optim.adamw())?;
        let out = &config.output_dir;
        std::fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
        Ok(Trainer {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            policy,
            optimizer,
            step: 0,
            micro_batches: 0,
            samples: 0,
            extra: serde_json::Value::Null,
            losses: Vec::new(),
            pending_position: None,
            last_checkpoint: None,
            saved_step: None,
            stop: Arc::new(AtomicBool::new(false)),
            _lock: lock,
        })
    }

    /// Continue a run from a checkpoint (a `checkpoint-<step>` directory, or an output directory
    /// whose `latest` names one). `policy` must be built as for the original run (same backbone
    /// weights, same `[policy]`); the trainable weights, optimizer state, step, RNG and `extra`
    /// come from the checkpoint, and [`run`](Self::run) restores the data position. `config` is
    /// normally [`Checkpoint::open`]`(dir)?.config`, possibly with more steps.
    ///
    /// The output directory is locked as for [`new`](Self::new); it must be the checkpoint's own
    /// run directory or hold no other run.
    pub fn resume(config: TrainConfig, policy: VlaPolicy, dir: impl AsRef<Path>) -> Result<Trainer> {
        config.validate()?;
        let lock = claim(&config.output_dir)?;
        let ckpt = Checkpoint::open(dir)?;
        let own = same_dir(ckpt.dir.parent().unwrap_or(Path::new(".")), &config.output_dir);
        if !own {
            rundir::refuse_if_holds_run(&config.output_dir)?;
        }
        if !ckpt.optimizer_path().is_file() {
            return Err(Error::file(ckpt.optimizer_path(), "missing from the checkpoint (needed to resume training)"));
        }
        let mut t = Trainer::build(config, policy, lock)?;
        let trainable = t.policy.trainable_params();
        let file = SafeTensorsFile::open(ckpt.model_path())?;
        let mut saved: Vec<&str> = file.names();
        saved.sort_unstable();
        let on_disk = t.policy.checkpoint_tensors(&trainable)?;
        let mut expected: Vec<&str> = on_disk.iter().map(|(n, _)| n.as_str()).collect();
        expected.sort_unstable();
        if saved != expected {
            let missing: Vec<&&str> = expected.iter().filter(|n| !saved.contains(n)).take(3).collect();
            let extra: Vec<&&str> = saved.iter().filter(|n| !expected.contains(n)).take(3).collect();
            return Err(Error::file(
                ckpt.model_path(),
                format!(
                    "holds other trainable parameters than this config trains (missing e.g. {missing:?}, \
                     unexpected e.g. {extra:?}): were `train_modules` changed?"
                ),
            ));
        }
        t.policy.load_weights(ckpt.model_path())?;
        let state = SafeTensorsFile::open(ckpt.optimizer_path())?.load(&LoadOptions::default())?;
        let state = t.policy.backbone().fused().merge_state(state)?;
        t.optimizer.load_state(&trainable, &state)?;
        let s = ckpt.state;
        t.step = s.step;
        t.micro_batches = s.micro_batches;
        t.samples = s.samples;
        t.rng = s.rng.restore(&ckpt.dir.join(checkpoint::STATE_FILE))?;
        t.extra = s.extra;
        t.losses = s.losses;
        t.losses.truncate(t.step);
        t.pending_position = Some(s.data_position);
        t.saved_step = own.then_some(t.step);
        t.last_checkpoint = Some(ckpt.dir);
        t.truncate_metrics()?;
        Ok(t)
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    pub fn policy(&self) -> &VlaPolicy {
        &self.policy
    }

    pub fn into_policy(self) -> VlaPolicy {
        self.policy
    }

    /// Optimizer steps taken so far.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The loss of every step so far (restored ones included).
    pub fn losses(&self) -> &[f64] {
        &self.losses
    }

    /// The run's random generator (seeded from `config.seed`, saved in checkpoints), for
    /// callers that augment data inside the loop.
    pub fn rng_mut(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// The opaque value saved with every checkpoint (e.g. the action normaliser's statistics).
    pub fn extra(&self) -> &serde_json::Value {
        &self.extra
    }

    pub fn set_extra(&mut self, extra: serde_json::Value) {
        self.extra = extra;
    }

    pub fn last_checkpoint(&self) -> Option<&Path> {
        self.last_checkpoint.as_deref()
    }

    /// Ask the loop to write a checkpoint and return before its next step.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The flag behind [`request_stop`](Self::request_stop), for another thread.
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    fn schedule(&self, total: usize) -> LrSchedule {
        let o = &self.config.optim;
        LrSchedule::WarmupStableCosine {
            warmup_steps: o.warmup_steps,
            decay_start: o.decay_steps.map_or(0, |d| total.saturating_sub(d)),
            total_steps: total,
            min_ratio: o.min_lr_ratio,
        }
    }

    /// Train until the configured number of steps, the end of the data, a stop request or
    /// SIGINT/SIGTERM (see [`signal::install_handlers`]). Writes metrics, the loss curve and
    /// checkpoints (always one at the end). A non-finite loss or gradient norm ends the run with
    /// an error naming the step and the last good checkpoint.
    pub fn run(&mut self, source: &mut dyn BatchSource) -> Result<RunSummary> {
        self.run_with_eval(source, None)
    }

    /// [`run`](Self::run) with an evaluation hook called every `run.eval_every` steps.
    pub fn run_with_eval(&mut self, source: &mut dyn BatchSource, mut eval: Option<&mut EvalFn>) -> Result<RunSummary> {
        if let Some(pos) = self.pending_position.take() {
            source.restore(&pos)?;
        }
        let total = self.config.total_steps(source.batches_per_epoch())?;
        let schedule = self.schedule(total);
        let bar = self.progress_bar(total);
        let mut summary = RunSummary {
            steps: self.step,
            losses: Vec::new(),
            stopped: false,
            data_exhausted: false,
            last_checkpoint: None,
        };
        let run = self.config.run.clone();
        while self.step < total {
            if self.stop.load(Ordering::SeqCst) || signal::interrupted() {
                summary.stopped = true;
                break;
            }
            let started = Instant::now();
            let mut micro = Vec::with_capacity(run.grad_accum);
            while micro.len() < run.grad_accum {
                match source.next_batch() {
                    Some(b) => micro.push(b?),
                    None => break,
                }
            }
            if micro.len() < run.grad_accum {
                summary.data_exhausted = true;
                break;
            }
            let lr = self.config.optim.lr * schedule.factor(self.step) * source.lr_scale();
            let mut m = self.train_step(&micro, lr)?;
            self.micro_batches += micro.len() as u64;
            m.samples_per_s = micro.iter().map(Batch::len).sum::<usize>() as f64 / started.elapsed().as_secs_f64();
            self.losses.push(m.loss);
            summary.losses.push(m.loss);
            source.observe_loss(self.step, m.loss);
            bar.set_position(self.step as u64);
            bar.set_message(format!("loss {:.4} lr {:.2e} {:.1} samples/s", m.loss, m.lr, m.samples_per_s));
            if self.step.is_multiple_of(run.log_every) || self.step == total {
                self.append_metrics(&serde_json::to_value(&m).map_err(json_err)?)?;
            }
            if let Some(f) = eval.as_mut() {
                if run.eval_every > 0 && self.step.is_multiple_of(run.eval_every) {
                    let value = f(&self.policy, self.step)?;
                    self.append_metrics(&serde_json::json!({ "step": self.step, "eval": value }))?;
                }
            }
            if run.checkpoint_every > 0 && self.step.is_multiple_of(run.checkpoint_every) && self.step < total {
                self.save_checkpoint(source, total)?;
            }
        }
        bar.finish_and_clear();
        summary.steps = self.step;
        summary.last_checkpoint = match (&self.last_checkpoint, self.saved_step) {
            // A stop right after a periodic save, or a resume with nothing left to do: the
            // checkpoint of this step is already on disk.
            (Some(dir), Some(s)) if s == self.step => Some(dir.clone()),
            _ => Some(self.save_checkpoint(source, total)?),
        };
        Ok(summary)
    }

    /// One optimizer step over `micro` (gradients accumulated over the micro-batches, each
    /// weighted 1 / len), at learning rate `lr`, the gradients clipped inside the optimizer.
    ///
    /// Everything the step reports stays on the device until one packed host read: every
    /// micro-batch's loss, parts and gripper count, and the gradient norm's sum of squares. A
    /// non-finite loss or gradient norm ends the run before the optimizer touches anything.
    fn train_step(&mut self, micro: &[Batch], lr: f64) -> Result<StepMetrics> {
        let next = self.step + 1;
        let params = self.policy.trainable_params();
        let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
        let mut grads = GradStore::new();
        let k = micro.len() as f64;
        let mut parts = Vec::with_capacity(micro.len());
        for b in micro {
            let pl = self.policy.forward_loss_with_state(&b.input, b.state.as_ref(), &b.actions, &b.mask)?;
            pl.loss.scale(1.0 / k)?.backward_into(&mut grads)?;
            parts.push(pl);
        }
        let norm = GradNorm::of(&grads, &tensors)?;
        let (values, grad_norm) = read_step(&parts, &norm)?;
        let (mut loss, mut arm, mut gripper, mut correct, mut valid) = (0.0, 0.0, 0.0, 0.0, 0usize);
        for (v, b) in values.into_iter().zip(micro) {
            if !v.loss.is_finite() {
                return Err(
                    self.diverged(next, format!("the loss is {} (arm {}, gripper {})", v.loss, v.arm, v.gripper))
                );
            }
            loss += v.loss / k;
            arm += v.arm / k;
            gripper += v.gripper / k;
            correct += v.gripper_accuracy * v.valid_steps as f64;
            valid += v.valid_steps;
            self.samples += b.len() as u64;
        }
        if !grad_norm.is_finite() {
            return Err(self.diverged(next, format!("the gradient norm is {grad_norm} (loss {loss})")));
        }
        self.optimizer.step_clipped(&params, &grads, lr, &norm, self.config.optim.clip_grad_norm)?;
        self.step = next;
        Ok(StepMetrics {
            step: next,
            loss,
            arm,
            gripper,
            gripper_acc: if valid == 0 { 0.0 } else { correct / valid as f64 },
            grad_norm,
            lr,
            samples_per_s: 0.0,
            samples: self.samples,
        })
    }

    fn diverged(&self, step: usize, what: String) -> Error {
        let last = match &self.last_checkpoint {
            Some(p) => format!("the last good checkpoint is {}", p.display()),
            None => "no checkpoint was written yet".to_string(),
        };
        Error::Invalid { op: "train", msg: format!("step {step}: {what}; training stopped, {last}") }
    }

    /// Write `checkpoint-<step>` now (see [`checkpoint`] for the layout) and the loss curve.
    pub fn save_checkpoint(&mut self, source: &dyn BatchSource, total_steps: usize) -> Result<PathBuf> {
        let state = TrainerState {
            format_version: 1,
            step: self.step,
            micro_batches: self.micro_batches,
            samples: self.samples,
            total_steps,
            backbone_family: self.policy.backbone().family().to_string(),
            rng: RngState::of(&self.rng),
            data_position: source.position(),
            extra: self.extra.clone(),
            losses: self.losses.clone(),
        };
        let config = self.config.to_toml()?;
        let trainable = self.policy.checkpoint_tensors(&self.policy.trainable_params())?;
        let opt_state = self.policy.backbone().fused().split_state(&self.optimizer.state_tensors()?)?;
        let _saving = signal::SaveGuard::new();
        let dir = checkpoint::write_dir(&self.config.output_dir, self.step, |tmp| {
            let refs: Vec<(&str, &Tensor)> = trainable.iter().map(|(n, t)| (n.as_str(), t)).collect();
            save(tmp.join(checkpoint::MODEL_FILE), &refs, None)?;
            let refs: Vec<(&str, &Tensor)> = opt_state.iter().map(|(n, t)| (n.as_str(), t)).collect();
            save(tmp.join(checkpoint::OPTIMIZER_FILE), &refs, None)?;
            write_atomic(tmp.join(checkpoint::CONFIG_FILE), config.as_bytes())?;
            let json = serde_json::to_vec_pretty(&state).map_err(json_err)?;
            write_atomic(tmp.join(checkpoint::STATE_FILE), &json)
        })?;
        self.last_checkpoint = Some(dir.clone());
        self.saved_step = Some(self.step);
        self.write_loss_plot()?;
        Ok(dir)
    }

    /// Draw `loss.png` from the losses so far.
    pub fn write_loss_plot(&self) -> Result<()> {
        let points: Vec<(usize, f64)> = self.losses.iter().enumerate().map(|(i, &l)| (i + 1, l)).collect();
        let png = loss_curve_png(&points, 800, 480)
            .map_err(|e| Error::file(self.config.output_dir.join(LOSS_PLOT_FILE), format!("cannot encode: {e}")))?;
        write_atomic(self.config.output_dir.join(LOSS_PLOT_FILE), &png)
    }

    fn metrics_path(&self) -> PathBuf {
        self.config.output_dir.join(METRICS_FILE)
    }

    fn append_metrics(&self, value: &serde_json::Value) -> Result<()> {
        let path = self.metrics_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        writeln!(f, "{value}").map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// On resume: drop metric lines of steps after the checkpoint (they will be redone).
    fn truncate_metrics(&self) -> Result<()> {
        let path = self.metrics_path();
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
        let kept: String = text
            .lines()
            .filter(|l| {
                let step = serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
                step.is_some_and(|s| s as usize <= self.step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&path, kept.as_bytes())
    }

    fn progress_bar(&self, total: usize) -> ProgressBar {
        let visible = self.config.run.progress && std::io::stderr().is_terminal();
        let target = if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(total as u64), target);
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} ETA {eta}]") {
            bar.set_style(style);
        }
        bar.set_position(self.step as u64);
        bar
    }
}

/// Lock `output_dir` and repair what a killed save left there, saying what was done.
fn claim(output_dir: &Path) -> Result<RunLock> {
    let lock = RunLock::acquire(output_dir)?;
    for note in rundir::recover(output_dir)? {
        eprintln!("note: {note}");
    }
    Ok(lock)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn json_err(e: serde_json::Error) -> Error {
    Error::Invalid { op: "train", msg: format!("cannot encode JSON: {e}") }
}
