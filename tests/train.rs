//! The trainer on a toy backbone and a synthetic task whose actions depend on both the image
//! (red or blue) and the instruction (one of two words): learning, exact resume after a stop,
//! checkpoints, metrics, the loss plot, freezing, config errors and the NaN stop.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use vlm4vla::engine::{
    clip_grad_norm, AdamW, AdamWConfig, Device, GradStore, LrSchedule, Result, SafeTensorsFile, Tensor,
};
use vlm4vla::models::vla::{HeadConfig, PolicyConfig, VlaPolicy};
use vlm4vla::models::BackboneInput;
use vlm4vla::train::checkpoint::{CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE};
use vlm4vla::train::toy::{ToyBackbone, ToyConfig};
use vlm4vla::train::{Batch, BatchSource, Checkpoint, ReplaySource, TrainConfig, TrainModule, Trainer};

const CHUNK: usize = 4;
const ROWS: usize = 16;

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlm4vla-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Batch `index` of the synthetic task: colour c (red = 1 / blue = 0) and word w; the arm
/// target is ±0.5 by c XOR w on alternate dims, offset by 0.2·(2c−1); the gripper is open iff
/// the block is red. Some rows are one token shorter (left padding) and some episodes end early.
fn synthetic_batch(index: u64, nan_at: Option<u64>) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(1000 + index);
    let (mut px, mut ids, mut att, mut kind, mut act, mut mask) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..ROWS {
        let c = rng.gen_range(0..2usize);
        let w = rng.gen_range(0..2usize);
        for ch in 0..3 {
            for _ in 0..64 {
                let base = if (ch == 0 && c == 1) || (ch == 2 && c == 0) { 0.8 } else { 0.1 };
                px.push(base + rng.gen_range(-0.1f32..0.1));
            }
        }
        if rng.gen_bool(0.5) {
            ids.extend([0i64, 1, 2, 4 + w as i64]);
            att.extend([0u8, 1, 1, 1]);
            kind.extend([0u8, 0, 1, 0]);
        } else {
            ids.extend([1i64, 3, 2, 4 + w as i64]);
            att.extend([1u8, 1, 1, 1]);
            kind.extend([0u8, 0, 1, 0]);
        }
        let s = if c == w { 0.5f32 } else { -0.5 };
        let valid = if rng.gen_bool(0.25) { rng.gen_range(1..CHUNK) } else { CHUNK };
        for t in 0..CHUNK {
            for d in 0..6 {
                act.push(if d % 2 == 0 { s } else { -s } + 0.2 * (2.0 * c as f32 - 1.0));
            }
            act.push(c as f32);
            mask.push(u8::from(t < valid));
        }
    }
    if nan_at == Some(index) {
        act[0] = f32::NAN;
        mask[0] = 1;
    }
    let t = |v: Vec<u8>| Tensor::from_vec(v, &[ROWS, 4], Device::Cpu).unwrap();
    Batch {
        input: BackboneInput {
            pixel_values: Tensor::from_vec(px, &[ROWS, 3, 8, 8], Device::Cpu).unwrap(),
            image_grid_thw: None,
            input_ids: Tensor::from_vec(ids, &[ROWS, 4], Device::Cpu).unwrap(),
            attention_mask: t(att),
            token_type: t(kind),
        },
        actions: Tensor::from_vec(act, &[ROWS, CHUNK, 7], Device::Cpu).unwrap(),
        mask: Tensor::from_vec(mask, &[ROWS, CHUNK], Device::Cpu).unwrap(),
        state: None,
    }
}

fn source(nan_at: Option<u64>) -> impl BatchSource {
    ReplaySource::new(move || (0u64..).map(move |i| Ok(synthetic_batch(i, nan_at))))
}

fn config(dir: &Path, steps: usize) -> TrainConfig {
    let mut cfg = TrainConfig::new("toy", dir, steps);
    cfg.seed = 5;
    cfg.policy = PolicyConfig {
        chunk: CHUNK,
        head: HeadConfig { trunk_hidden: None, trunk_out: 64, branch_hidden: vec![64, 32] },
        ..Default::default()
    };
    cfg.optim.lr = 3e-3;
    cfg.optim.warmup_steps = 10;
    cfg.optim.min_lr_ratio = 0.1;
    cfg.run.batch_size = ROWS;
    cfg.run.progress = false;
    cfg
}

fn policy(cfg: &TrainConfig) -> VlaPolicy {
    let bb = ToyBackbone::new(ToyConfig::default(), 7).unwrap();
    VlaPolicy::new(Box::new(bb), cfg.policy.clone(), cfg.seed).unwrap()
}

#[test]
fn learns_a_task_that_needs_image_and_instruction() {
    let dir = out_dir("learn");
    let cfg = config(&dir, 150);
    let mut t = Trainer::new(cfg.clone(), policy(&cfg)).unwrap();
    let start = std::time::Instant::now();
    let s = t.run(&mut source(None)).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!((s.steps, s.stopped, s.data_exhausted), (150, false, false));
    let first = s.losses[0];
    let last = s.losses[140..].iter().sum::<f64>() / 10.0;
    println!("synthetic task: loss {first:.4} → {last:.5} ({:.1}× lower) in {secs:.2}s", first / last);
    assert!(first > 0.1, "the task must start hard: {first}");
    assert!(last * 5.0 <= first, "loss {first} → {last}");

    // Metrics: one line per step with the documented keys; the plot decodes.
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 150);
    for key in ["step", "loss", "arm", "gripper", "grad_norm", "lr", "samples_per_s", "gripper_acc"] {
        assert!(lines[149].get(key).is_some(), "metrics lack `{key}`");
    }
    assert_eq!(lines[149]["step"], 150);
    assert!(lines[149]["gripper_acc"].as_f64().unwrap() > 0.95);
    let lr_peak = lines[10]["lr"].as_f64().unwrap();
    assert!((lr_peak - 3e-3).abs() < 1e-12 && lines[0]["lr"].as_f64().unwrap() == 0.0);
    let img = image::open(dir.join("loss.png")).unwrap();
    assert_eq!((img.width(), img.height()), (800, 480));

    // A prediction on fresh data gets the gripper and the arm's sign pattern right.
    let b = synthetic_batch(9999, None);
    let pred = t.policy().predict(&b.input).unwrap();
    let y = b.actions.to_vec::<f32>().unwrap();
    let mut right = 0;
    for (r, chunk) in pred.iter().enumerate() {
        let i = r * CHUNK * 7;
        right += usize::from((chunk[0][0] > 0.0) == (y[i] > 0.0) && (chunk[0][6] > 0.0) == (y[i + 6] > 0.5));
    }
    assert!(right >= ROWS - 1, "{right}/{ROWS} rows right");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A source that asks the trainer to stop once it has handed out `after` batches.
struct StopAfter<S> {
    inner: S,
    after: u64,
    handed: u64,
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<S: BatchSource> BatchSource for StopAfter<S> {
    fn next_batch(&mut self) -> Option<Result<Batch>> {
        self.handed += 1;
        if self.handed == self.after {
            self.flag.store(true, Ordering::SeqCst);
        }
        self.inner.next_batch()
    }
    fn position(&self) -> serde_json::Value {
        self.inner.position()
    }
    fn restore(&mut self, p: &serde_json::Value) -> Result<()> {
        self.inner.restore(p)
    }
}

#[test]
fn stop_and_resume_reproduce_the_uninterrupted_losses_exactly() {
    const N: usize = 12;
    let straight_dir = out_dir("straight");
    let mut cfg = config(&straight_dir, N);
    cfg.run.grad_accum = 2;
    let mut t = Trainer::new(cfg.clone(), policy(&cfg)).unwrap();
    let straight = t.run(&mut source(None)).unwrap().losses;
    assert_eq!(straight.len(), N);

    let dir = out_dir("resumed");
    cfg.output_dir = dir.clone();
    let mut t = Trainer::new(cfg.clone(), policy(&cfg)).unwrap();
    t.set_extra(serde_json::json!({ "normalizer": { "low": [-0.65], "high": [0.65] } }));
    let mut src = StopAfter { inner: source(None), after: (N / 2 * 2) as u64, handed: 0, flag: t.stop_handle() };
    let first = t.run(&mut src).unwrap();
    assert!(first.stopped);
    assert_eq!(first.steps, N / 2);
    let ckpt = first.last_checkpoint.unwrap();
    assert!(ckpt.ends_with(format!("checkpoint-{}", N / 2)));
    drop(t);

    // Resume from the output directory's `latest`, with the checkpoint's own config.
    let saved = Checkpoint::open(&dir).unwrap();
    assert_eq!(saved.config, cfg);
    assert_eq!(saved.state.extra["normalizer"]["high"][0], 0.65);
    let mut t = Trainer::resume(saved.config.clone(), policy(&cfg), &dir).unwrap();
    assert_eq!(t.step(), N / 2);
    assert_eq!(t.extra(), &saved.state.extra);
    let second = t.run(&mut source(None)).unwrap();
    assert!(!second.stopped);
    let resumed: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&resumed), bits(&straight), "resumed {resumed:?}\nstraight {straight:?}");
    assert_eq!(bits(t.losses()), bits(&straight));
    // The metrics log reads as one run.
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> =
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=N as u64).collect::<Vec<_>>());
    std::fs::remove_dir_all(&straight_dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checkpoints_hold_everything_and_load() {
    let dir = out_dir("ckpt");
    let mut cfg = config(&dir, 4);
    cfg.run.checkpoint_every = 2;
    cfg.train_modules = vec![TrainModule::Head, TrainModule::LanguageModel];
    cfg.run.eval_every = 3;
    let mut t = Trainer::new(cfg.clone(), policy(&cfg)).unwrap();
    let mut calls = Vec::new();
    let mut eval = |p: &VlaPolicy, step: usize| -> Result<serde_json::Value> {
        calls.push(step);
        let b = synthetic_batch(500, None);
        let out = p.forward_loss(&b.input, &b.actions, &b.mask)?;
        Ok(serde_json::json!({ "val_loss": out.loss.to_scalar::<f64>()? }))
    };
    let s = t.run_with_eval(&mut source(None), Some(&mut eval)).unwrap();
    assert_eq!(calls, vec![3]);
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let evals: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("eval").is_some())
        .collect();
    assert_eq!(evals.len(), 1);
    assert_eq!(evals[0]["step"], 3);
    assert!(evals[0]["eval"]["val_loss"].as_f64().unwrap() > 0.0);
    for step in [2, 4] {
        let d = dir.join(format!("checkpoint-{step}"));
        for f in [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE, STATE_FILE] {
            assert!(d.join(f).is_file(), "{} missing", d.join(f).display());
        }
    }
    assert_eq!(std::fs::read_to_string(dir.join("latest")).unwrap().trim(), "checkpoint-4");
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp")));

    let c = Checkpoint::open(s.last_checkpoint.as_ref().unwrap()).unwrap();
    assert_eq!(c.state.step, 4);
    assert_eq!(c.state.data_position, serde_json::json!({ "batches": 4 }));
    assert_eq!(c.config, cfg);
    // Only trainable weights are saved: the head and the language model.
    let model = SafeTensorsFile::open(c.model_path()).unwrap();
    let mut names: Vec<&str> = model.names();
    names.sort_unstable();
    let mut expected: Vec<String> = t.policy().trainable_params().into_iter().map(|(n, _)| n).collect();
    expected.sort_unstable();
    assert_eq!(names, expected);
    assert!(names.iter().all(|n| n.starts_with("vla.") || n.starts_with("model.layers.") || *n == "model.norm.weight"));
    let opt = SafeTensorsFile::open(c.optimizer_path()).unwrap();
    assert!(opt.contains("vla.action_query.exp_avg") && opt.contains("vla.action_query.step"));

    // A fresh policy + the saved weights predicts what the trained one does.
    let fresh = policy(&cfg);
    fresh.load_weights(c.model_path()).unwrap();
    let b = synthetic_batch(77, None);
    assert_eq!(fresh.predict(&b.input).unwrap(), t.policy().predict(&b.input).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn head_only_training_leaves_the_backbone_untouched() {
    let dir = out_dir("head-only");
    let mut cfg = config(&dir, 3);
    cfg.train_modules = vec![TrainModule::Head];
    let p = policy(&cfg);
    let before: Vec<(String, Vec<f32>)> =
        p.named_params().unwrap().iter().map(|(n, t)| (n.clone(), t.to_vec::<f32>().unwrap())).collect();
    let mut t = Trainer::new(cfg, p).unwrap();
    t.run(&mut source(None)).unwrap();
    let after = t.policy().named_params().unwrap();
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        let b = b.to_vec::<f32>().unwrap();
        assert_eq!(!name.starts_with("vla."), a == &b, "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_nan_loss_stops_with_the_step_and_last_checkpoint() {
    let dir = out_dir("nan");
    let mut cfg = config(&dir, 10);
    cfg.run.checkpoint_every = 2;
    let mut t = Trainer::new(cfg.clone(), policy(&cfg)).unwrap();
    let e = t.run(&mut source(Some(4))).unwrap_err().to_string();
    let ckpt = dir.join("checkpoint-4");
    assert!(e.contains("step 5") && e.contains("NaN") && e.contains(&ckpt.display().to_string()), "{e}");
    assert!(Checkpoint::open(&ckpt).is_ok());
    // The optimizer never ran on the diverged step: the weights are the checkpoint's, bit for bit.
    let saved = SafeTensorsFile::open(ckpt.join(MODEL_FILE)).unwrap();
    for (name, w) in t.policy().trainable_params() {
        let want = saved.get_as(&name, w.shape(), Some(w.dtype())).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(w.to_vec::<f32>().unwrap(), want, "{name} moved on the diverged step");
    }

    // Before any checkpoint, the message says so.
    let dir2 = out_dir("nan0");
    cfg.output_dir = dir2.clone();
    let mut t = Trainer::new(cfg.clone(), policy(&cfg)).unwrap();
    let e = t.run(&mut source(Some(0))).unwrap_err().to_string();
    assert!(e.contains("step 1") && e.contains("no checkpoint was written yet"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&dir2).unwrap();
}

/// The trainer's step (every value of the step read back in one packed read, clipping inside
/// AdamW) logs exactly what reading each value on its own and clipping before the step report,
/// and leaves exactly the same weights: that step written out here on a copy of the policy, over
/// several steps of two micro-batches with the clip active.
#[test]
fn the_packed_read_logs_what_separate_reads_would() {
    let dir = out_dir("packed");
    let steps = 4;
    let mut cfg = config(&dir, steps);
    cfg.run.grad_accum = 2;
    cfg.run.log_every = 1;
    cfg.optim.warmup_steps = 0;
    cfg.optim.clip_grad_norm = 0.05;
    let mut t = Trainer::new(cfg.clone(), policy(&cfg)).unwrap();
    t.run(&mut source(None)).unwrap();
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let logged: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(logged.len(), steps);

    let mut p = policy(&cfg);
    p.set_trainable(&cfg.trainable()).unwrap();
    let params = p.trainable_params();
    let handles: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
    let o = &cfg.optim;
    let mut opt =
        AdamW::new(AdamWConfig { lr: o.lr, betas: (o.betas[0], o.betas[1]), eps: o.eps, weight_decay: o.weight_decay })
            .unwrap();
    let sched = LrSchedule::WarmupStableCosine {
        warmup_steps: 0,
        decay_start: 0,
        total_steps: steps,
        min_ratio: o.min_lr_ratio,
    };
    let mut clipped = 0;
    for (step, m) in logged.iter().enumerate() {
        let mut grads = GradStore::new();
        let (mut loss, mut arm, mut gripper, mut correct, mut valid) = (0.0, 0.0, 0.0, 0.0, 0usize);
        for i in 0..2 {
            let b = synthetic_batch(2 * step as u64 + i, None);
            let pl = p.forward_loss(&b.input, &b.actions, &b.mask).unwrap();
            let v = pl.values().unwrap();
            assert_eq!(v.loss, pl.loss.to_scalar::<f64>().unwrap());
            pl.loss.scale(0.5).unwrap().backward_into(&mut grads).unwrap();
            loss += v.loss / 2.0;
            arm += v.arm / 2.0;
            gripper += v.gripper / 2.0;
            correct += v.gripper_accuracy * v.valid_steps as f64;
            valid += v.valid_steps;
        }
        let norm = clip_grad_norm(&mut grads, &handles, o.clip_grad_norm).unwrap();
        clipped += usize::from(norm > o.clip_grad_norm);
        let lr = o.lr * sched.factor(step);
        opt.step(&params, &grads, lr).unwrap();
        let f = |k: &str| m[k].as_f64().unwrap();
        assert_eq!(m["step"].as_u64(), Some(step as u64 + 1));
        assert_eq!(
            [f("loss"), f("arm"), f("gripper"), f("gripper_acc"), f("grad_norm"), f("lr")],
            [loss, arm, gripper, correct / valid as f64, norm, lr],
            "step {}",
            step + 1
        );
    }
    assert!(clipped > 0, "the clip never acted");
    for ((name, a), (_, b)) in t.policy().trainable_params().iter().zip(&params) {
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap(), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Train `steps` steps (warmup, then flat, then `decay` steps of cosine) on `src`; the run's
/// directory and the learning rate it logged at every step.
fn logged_rates(
    name: &str,
    steps: usize,
    warmup: usize,
    decay: usize,
    src: &mut dyn BatchSource,
) -> (PathBuf, Vec<f64>) {
    let dir = out_dir(name);
    let mut cfg = config(&dir, steps);
    cfg.optim.warmup_steps = warmup;
    cfg.optim.decay_steps = Some(decay);
    let mut t = Trainer::new(cfg.clone(), policy(&cfg)).unwrap();
    t.run(src).unwrap();
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lr = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64().unwrap());
    (dir, lr.collect())
}

#[test]
fn decay_steps_keep_the_rate_flat_until_the_tail() {
    let (dir, lr) = logged_rates("wsd", 30, 5, 10, &mut source(None));
    assert_eq!(lr.len(), 30);
    assert_eq!(lr[0], 0.0);
    // Steps 6..=20 (optimizer steps 5..20) run at the peak; the last 10 decay to the minimum.
    for (k, &v) in lr.iter().enumerate().take(21).skip(5) {
        assert!((v - 3e-3).abs() < 1e-15, "step {} lr {v}", k + 1);
    }
    assert!(lr[21..].windows(2).all(|w| w[1] < w[0]), "{lr:?}");
    assert!(lr[29] > 3e-4 && lr[29] < 3e-3 * 0.2, "{lr:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_errors_name_the_key_or_field() {
    let base = "backbone = \"toy\"\noutput_dir = \"runs/x\"\n[run]\nsteps = 10\n";
    let ok = TrainConfig::from_toml_str(base, "cfg.toml").unwrap();
    assert_eq!(ok.optim.lr, 2e-5);
    assert_eq!(ok.optim.min_lr_ratio, 0.01);
    assert_eq!(ok.policy.chunk, 10);
    assert_eq!(ok.train_modules.len(), 5);
    assert_eq!(TrainConfig::from_toml_str(&ok.to_toml().unwrap(), "again").unwrap(), ok);

    let err = |text: &str| TrainConfig::from_toml_str(text, "cfg.toml").unwrap_err().to_string();
    let e = err(&format!("{base}[optim]\nlrr = 0.1\n"));
    assert!(e.contains("cfg.toml") && e.contains("lrr") && e.contains("`lr`") && e.contains("weight_decay"), "{e}");
    let e = err(&format!("lr = 0.1\n{base}"));
    assert!(e.contains("`lr`") && e.contains("backbone") && e.contains("train_modules"), "{e}");
    let e = err(&format!("{base}[policy]\nchunks = 3\n"));
    assert!(e.contains("chunks") && e.contains("gripper_loss_ratio"), "{e}");
    let e = err(&format!("{base}[optim]\nlr = -1e-4\n"));
    assert!(e.contains("optim.lr") && e.contains("-0.0001"), "{e}");
    let e = err(&format!("{base}batch_size = 0\n"));
    assert!(e.contains("run.batch_size"), "{e}");
    let e = err(&format!("{base}grad_accum = 0\n"));
    assert!(e.contains("run.grad_accum"), "{e}");
    let e = err(&format!("{base}epochs = 2\n"));
    assert!(e.contains("run.steps") && e.contains("run.epochs"), "{e}");
    let e = err(&format!("train_modules = [\"head_only\"]\n{base}"));
    assert!(e.contains("head_only") && e.contains("language_model"), "{e}");
    let e = err(&format!("{base}[optim]\nbetas = [0.9, 1.0]\n"));
    assert!(e.contains("optim.betas[1]"), "{e}");
    let e = err(&format!("{base}[policy]\nchunk = 0\n"));
    assert!(e.contains("policy.chunk"), "{e}");
    let e = err(&format!("{base}[optim]\ndecay_steps = 0\n"));
    assert!(e.contains("optim.decay_steps"), "{e}");
    let wsd = TrainConfig::from_toml_str(&format!("{base}[optim]\ndecay_steps = 4\n"), "w").unwrap();
    assert_eq!(wsd.optim.decay_steps, Some(4));
    assert_eq!(TrainConfig::from_toml_str(&wsd.to_toml().unwrap(), "again").unwrap(), wsd);

    // Epochs need a source that knows its length.
    let cfg = TrainConfig::from_toml_str(&base.replace("steps = 10", "epochs = 3\ngrad_accum = 2"), "e").unwrap();
    assert_eq!(cfg.total_steps(Some(10)).unwrap(), 15);
    assert!(cfg.total_steps(None).unwrap_err().to_string().contains("run.epochs"));
}

/// A source whose batches from `from` on ask for `scale` times the scheduled rate.
struct Scaled<S> {
    inner: S,
    handed: u64,
    from: u64,
    scale: f64,
}

impl<S: BatchSource> BatchSource for Scaled<S> {
    fn next_batch(&mut self) -> Option<Result<Batch>> {
        self.handed += 1;
        self.inner.next_batch()
    }
    fn position(&self) -> serde_json::Value {
        self.inner.position()
    }
    fn restore(&mut self, position: &serde_json::Value) -> Result<()> {
        self.inner.restore(position)
    }
    fn lr_scale(&self) -> f64 {
        if self.handed > self.from {
            self.scale
        } else {
            1.0
        }
    }
}

#[test]
fn a_source_can_scale_the_learning_rate() {
    let mut src = Scaled { inner: source(None), handed: 0, from: 6, scale: 0.25 };
    let (dir, lr) = logged_rates("lrscale", 12, 0, 1, &mut src);
    // Steps 1..=6 see batches 0..6 at the peak; steps 7..=11 a quarter of it (step 12 decays).
    assert!(lr[..6].iter().all(|&v| (v - 3e-3).abs() < 1e-15), "{lr:?}");
    assert!(lr[6..11].iter().all(|&v| (v - 7.5e-4).abs() < 1e-15), "{lr:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
