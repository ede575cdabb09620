//! `vlm4vla demo`: collect → train → evaluate (trained, untrained, mismatched instructions) and
//! the results table.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::ACTION_DIMS;
use super::{
    collect, invalid, train, CollectOptions, CollectSummary, DemoSource, GroundingConfig, LoadedPolicy, PipelineConfig,
    TrainOutcome, DEFAULT_PLAN_STEPS, DEMO_BACKBONE, EVAL_FIRST_SEED,
};
use crate::data::LeRobotDataset;
use crate::engine::{Error, Result};
use crate::env::{EvalOptions, EvalReport, InstructionMode, TaskFamily};
use crate::models::vla::{HeadConfig, PolicyConfig};
use crate::train::{OptimConfig, RunConfig, TrainConfig};

/// First seed of the held-out demonstrations the demo measures the loss on (clean expert
/// rollouts; never trained on, and not the evaluation episodes).
pub const HELDOUT_DEMO_FIRST_SEED: u64 = 2_000_000;
/// Held-out demonstrations collected for that loss, and the batches of 32 frames it averages.
const HELDOUT_DEMOS: usize = 100;
const HELDOUT_LOSS_BATCHES: usize = 8;

/// Sizes of a demo run.
#[derive(Clone, Debug, Serialize)]
pub struct DemoOptions {
    pub out: PathBuf,
    pub backbone: String,
    pub image_size: usize,
    pub train_episodes: usize,
    /// DART noise of the collected demonstrations (see [`collect`]).
    pub noise: f32,
    /// Expert plan recorded per frame, the source of the chunk labels (0: chunks of recorded
    /// actions instead; see [`collect`]).
    pub plan_steps: usize,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// The learning rate stays at its peak until this many steps remain, then follows the
    /// cosine down (see `optim.decay_steps`); `None` decays over every step after warmup.
    pub decay_steps: Option<usize>,
    /// Grounding co-training (see [`GroundingConfig`]).
    pub grounding: GroundingConfig,
    /// Feed the gripper's proprioceptive state as an extra row (`policy.state_dim = 7`).
    pub state: bool,
    pub chunk: usize,
    pub execute_steps: usize,
    /// Evaluation episodes per task family (held-out seeds from [`EVAL_FIRST_SEED`]).
    pub eval_per_family: usize,
    pub seed: u64,
    pub progress: bool,
}

impl DemoOptions {
    /// The full demo: ≤ 15 minutes on 2 cores.
    pub fn full(out: impl Into<PathBuf>) -> DemoOptions {
        DemoOptions {
            out: out.into(),
            backbone: DEMO_BACKBONE.into(),
            image_size: 48,
            train_episodes: 2000,
            noise: 0.3,
            plan_steps: DEFAULT_PLAN_STEPS,
            steps: 18000,
            batch_size: 32,
            lr: 1e-3,
            decay_steps: Some(4000),
            grounding: GroundingConfig {
                steps: 6000,
                fraction: 0.25,
                until_loss: Some(0.001),
                lr_scale_after: Some(0.5),
            },
            state: true,
            chunk: 4,
            execute_steps: 2,
            eval_per_family: 25,
            seed: 0,
            progress: true,
        }
    }

    /// The quick configuration (the CI test's): a few minutes on 2 cores.
    pub fn quick(out: impl Into<PathBuf>) -> DemoOptions {
        let full = DemoOptions::full(out);
        DemoOptions {
            steps: 6000,
            decay_steps: Some(1500),
            eval_per_family: 10,
            grounding: GroundingConfig { steps: 4000, ..full.grounding.clone() },
            ..full
        }
    }

    /// What the demo collects for training.
    pub fn collect_options(&self) -> CollectOptions {
        CollectOptions {
            episodes: self.train_episodes,
            seed: self.seed,
            image_size: self.image_size,
            noise: self.noise,
            plan_steps: self.plan_steps,
        }
    }

    /// The training config of this demo, reading `dataset`.
    pub fn pipeline_config(&self) -> PipelineConfig {
        PipelineConfig {
            dataset: self.out.join("data"),
            grounding: self.grounding.clone(),
            train: TrainConfig {
                backbone: self.backbone.clone(),
                output_dir: self.out.join("train"),
                seed: self.seed,
                train_modules: crate::train::TrainModule::ALL.to_vec(),
                train_llm_last_layers: None,
                policy: PolicyConfig {
                    chunk: self.chunk,
                    head: HeadConfig { trunk_hidden: Some(128), trunk_out: 128, branch_hidden: vec![128, 64] },
                    gripper_loss_ratio: 0.1,
                    state_dim: if self.state { ACTION_DIMS } else { 0 },
                    ..PolicyConfig::default()
                },
                optim: OptimConfig {
                    lr: self.lr,
                    warmup_steps: (self.steps / 20).max(1),
                    min_lr_ratio: 0.01,
                    decay_steps: self.decay_steps,
                    ..OptimConfig::default()
                },
                run: RunConfig {
                    batch_size: self.batch_size,
                    steps: Some(self.steps),
                    log_every: 10,
                    progress: self.progress,
                    ..RunConfig::default()
                },
            },
        }
    }
}

/// Everything a demo run measured.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    pub options: DemoOptions,
    pub collect: CollectSummary,
    pub train: TrainOutcome,
    pub trained: EvalReport,
    pub untrained: EvalReport,
    pub mismatched: EvalReport,
    /// Loss on held-out clean demonstrations (seeds from [`HELDOUT_DEMO_FIRST_SEED`]), before
    /// and after training: the same frames, so the ratio is how much the policy learned
    /// (the training curve's own ends mix in grounding rows and DART-noised frames).
    pub heldout_loss_untrained: f64,
    pub heldout_loss_trained: f64,
    pub eval_seconds: f64,
    pub total_seconds: f64,
}

/// collect → train → evaluate, writing under `opts.out` (`data/`, `train/`, `train.toml`,
/// `results.json`). `log` receives progress lines.
pub fn run_demo(opts: &DemoOptions, log: &mut dyn FnMut(&str)) -> Result<DemoReport> {
    let started = Instant::now();
    opts.grounding.validate()?;
    let out = &opts.out;
    let marker = out.join(".vlm4vla-demo");
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(false) && !marker.exists() {
        return Err(Error::file(out, "exists and was not written by `vlm4vla demo`; choose another --out"));
    }
    for sub in ["data", "train", "heldout"] {
        let p = out.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| Error::io(format!("removing {}", p.display()), e))?;
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    std::fs::write(&marker, b"").map_err(|e| Error::io(format!("writing {}", marker.display()), e))?;

    log(&format!("[1/3] collecting {} expert episodes ({} px)...", opts.train_episodes, opts.image_size));
    let cfg = opts.pipeline_config();
    let collect = collect(&cfg.dataset, &opts.collect_options())?;
    log(&format!("      {} episodes, {} frames in {:.1} s", collect.episodes, collect.frames, collect.seconds));
    std::fs::write(out.join("train.toml"), cfg.to_toml()?)
        .map_err(|e| Error::io(format!("writing {}", out.join("train.toml").display()), e))?;

    log(&format!("[2/3] training `{}` from scratch for {} steps...", opts.backbone, opts.steps));
    let train = train(&cfg, None)?;
    log(&format!(
        "      loss {:.4} → {:.4} in {:.1} s ({} grounding-only steps)",
        train.first_loss, train.last_loss, train.seconds, train.grounding_only_steps
    ));

    let eval_started = Instant::now();
    let episodes = opts.eval_per_family * TaskFamily::ALL.len();
    log(&format!("[3/3] evaluating on {episodes} held-out episodes (seeds {EVAL_FIRST_SEED}..)..."));
    let eval_opts = EvalOptions { execute_steps: opts.execute_steps, ..EvalOptions::default() };
    let trained_policy = LoadedPolicy::open(&train.checkpoint)?;
    let trained = trained_policy.evaluate(EVAL_FIRST_SEED, opts.eval_per_family, &eval_opts)?;
    let mism_opts = EvalOptions { instructions: InstructionMode::Mismatched, ..eval_opts.clone() };
    let mismatched = trained_policy.evaluate(EVAL_FIRST_SEED, opts.eval_per_family, &mism_opts)?;
    let untrained_policy = LoadedPolicy::untrained(&cfg.train, opts.image_size)?;
    let untrained = untrained_policy.evaluate(EVAL_FIRST_SEED, opts.eval_per_family, &eval_opts)?;
    let heldout_dir = out.join("heldout");
    if heldout_dir.exists() {
        std::fs::remove_dir_all(&heldout_dir)
            .map_err(|e| Error::io(format!("removing {}", heldout_dir.display()), e))?;
    }
    let heldout_opts = CollectOptions {
        episodes: HELDOUT_DEMOS,
        seed: HELDOUT_DEMO_FIRST_SEED,
        noise: 0.0,
        plan_steps: 0,
        ..opts.collect_options()
    };
    self::collect(&heldout_dir, &heldout_opts)?;
    let heldout = LeRobotDataset::open(&heldout_dir)?;
    let p = trained_policy.policy.config();
    let heldout = DemoSource::new(
        &heldout,
        trained_policy.encoder.clone(),
        &trained_policy.normalizer,
        p.chunk,
        32,
        0,
        p.state_dim,
    )?;
    let heldout_loss_untrained = heldout.mean_loss(&untrained_policy.policy, HELDOUT_LOSS_BATCHES)?;
    let heldout_loss_trained = heldout.mean_loss(&trained_policy.policy, HELDOUT_LOSS_BATCHES)?;
    let report = DemoReport {
        options: opts.clone(),
        collect,
        train,
        trained,
        untrained,
        mismatched,
        heldout_loss_untrained,
        heldout_loss_trained,
        eval_seconds: eval_started.elapsed().as_secs_f64(),
        total_seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&report).map_err(|e| invalid(format!("encoding results: {e}")))?;
    crate::engine::io::write_atomic(out.join("results.json"), &json)?;
    Ok(report)
}

/// The results table of a demo run.
pub fn results_table(r: &DemoReport) -> String {
    let mut s = String::new();
    let rate = |rep: &EvalReport, fam: Option<TaskFamily>| -> String {
        match fam {
            None => format!("{:>5.1}%", 100.0 * rep.success_rate),
            Some(f) => match rep.families.iter().find(|x| x.family == f) {
                Some(x) => format!("{:>5.1}%", 100.0 * x.success_rate),
                None => "    -".into(),
            },
        }
    };
    s.push_str(&format!("{:<16} {:>9} {:>9} {:>12}\n", "task family", "trained", "untrained", "mismatched"));
    let fams: Vec<Option<TaskFamily>> = TaskFamily::ALL.iter().map(|&f| Some(f)).chain([None]).collect();
    for f in fams {
        let name = f.map(|f| f.name()).unwrap_or("overall");
        s.push_str(&format!(
            "{:<16} {:>9} {:>9} {:>12}\n",
            name,
            rate(&r.trained, f),
            rate(&r.untrained, f),
            rate(&r.mismatched, f)
        ));
    }
    s.push_str(&format!(
        "\nheld-out episodes: {} per policy (seeds from {EVAL_FIRST_SEED}; training used seeds {}..{})\n",
        r.trained.episodes,
        r.collect.first_seed,
        r.collect.first_seed + r.options.train_episodes as u64
    ));
    s.push_str(&format!(
        "held-out demonstration loss: {:.4} untrained → {:.4} trained, {:.1}× lower\n",
        r.heldout_loss_untrained,
        r.heldout_loss_trained,
        r.heldout_loss_untrained / r.heldout_loss_trained
    ));
    s.push_str(&format!(
        "training loss: {:.4} (first steps) → {:.4} (last steps), {} steps ({} grounding-only)\n",
        r.train.first_loss, r.train.last_loss, r.train.steps, r.train.grounding_only_steps
    ));
    s.push_str(&format!(
        "wall time: collect {:.1} s, train {:.1} s, eval {:.1} s, total {:.1} s ({} threads)\n",
        r.collect.seconds,
        r.train.seconds,
        r.eval_seconds,
        r.total_seconds,
        rayon::current_num_threads()
    ));
    s
}
