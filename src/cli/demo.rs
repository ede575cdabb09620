//! `vlm4vla demo`: collect → train → evaluate, with a results table.

use std::path::PathBuf;
use vlm4vla::demo::{results_table, run_demo, DemoOptions};

/// The long help of the subcommand.
pub const LONG_ABOUT: &str = "Collect expert demonstrations in the built-in tabletop environment, train a tiny \
PaliGemma-style policy from scratch on the CPU, and evaluate it closed-loop on held-out episodes: \
trained, untrained, and trained-but-given-a-mismatched-instruction. Ends with a table of success \
rates per task family. Everything is written under --out (data/, train/, train.toml, results.json).";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Output directory (created; reused only if an earlier demo wrote it).
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// A smaller, faster configuration (the one the CI test runs).
    #[arg(long)]
    quick: bool,
    /// Training episodes to collect (default: 2000, quick: 2000).
    #[arg(long, value_parser = super::at_most::<1_000_000>)]
    episodes: Option<usize>,
    /// Optimizer steps (default: 18000, quick: 6000).
    #[arg(long, value_parser = super::at_most::<1_000_000_000>)]
    steps: Option<usize>,
    /// Held-out evaluation episodes per task family (default: 25, quick: 10).
    #[arg(long, value_parser = super::at_most::<1_000_000>)]
    eval_per_family: Option<usize>,
    /// Rows per batch.
    #[arg(long, value_parser = super::at_most::<65_536>)]
    batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Steps at the end over which the learning rate decays (before: flat at its peak).
    #[arg(long, value_parser = super::at_most::<1_000_000_000>)]
    decay_steps: Option<usize>,
    /// Steps of grounding rows only ("point at the red block") before the demonstrations.
    #[arg(long, value_parser = super::at_most::<1_000_000_000>)]
    grounding_steps: Option<usize>,
    /// Share of each later batch that stays grounding rows (0 turns co-training off).
    #[arg(long)]
    grounding_fraction: Option<f64>,
    /// End the grounding-only phase early once its loss (mean of the last 50 steps) is below
    /// this; then --grounding-steps is its longest length.
    #[arg(long)]
    grounding_until_loss: Option<f64>,
    /// Scale the learning rate by this once the grounding-only phase is over.
    #[arg(long)]
    grounding_lr_scale_after: Option<f64>,
    /// Train without the proprioceptive state row (images and instructions only).
    #[arg(long)]
    no_state: bool,
    /// Observation size in pixels (a multiple of 8).
    #[arg(long, value_parser = super::at_most::<1_024>)]
    image_size: Option<usize>,
    /// DART noise of the collected demonstrations (0: clean expert rollouts).
    #[arg(long)]
    noise: Option<f32>,
    /// Steps of expert plan recorded per frame, the chunk labels (0: label chunks with the
    /// recorded next actions instead).
    #[arg(long, value_parser = super::at_most::<1_024>)]
    plan_steps: Option<usize>,
    /// Seed of the data collection and the initialisation.
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(a: &DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut o = if a.quick { DemoOptions::quick(&a.out) } else { DemoOptions::full(&a.out) };
    if let Some(v) = a.episodes {
        o.train_episodes = v;
    }
    if let Some(v) = a.steps {
        o.steps = v;
    }
    if let Some(v) = a.eval_per_family {
        o.eval_per_family = v;
    }
    if let Some(v) = a.batch_size {
        o.batch_size = v;
    }
    if let Some(v) = a.lr {
        o.lr = v;
    }
    if let Some(v) = a.decay_steps {
        o.decay_steps = Some(v);
    }
    if let Some(v) = a.grounding_steps {
        o.grounding.steps = v;
    }
    if let Some(v) = a.grounding_fraction {
        o.grounding.fraction = v;
    }
    if let Some(v) = a.grounding_until_loss {
        o.grounding.until_loss = Some(v);
    }
    if let Some(v) = a.grounding_lr_scale_after {
        o.grounding.lr_scale_after = Some(v);
    }
    if a.no_state {
        o.state = false;
    }
    if let Some(v) = a.image_size {
        o.image_size = v;
    }
    if let Some(v) = a.noise {
        o.noise = v;
    }
    if let Some(v) = a.plan_steps {
        o.plan_steps = v;
    }
    if let Some(v) = a.seed {
        o.seed = v;
    }
    vlm4vla::train::signal::install_handlers();
    let report = run_demo(&o, &mut |line| eprintln!("{line}"))?;
    outln!()?;
    out!("{}", results_table(&report))?;
    outln!("results: {}", o.out.join("results.json").display())?;
    Ok(())
}
