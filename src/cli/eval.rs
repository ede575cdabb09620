//! `vlm4vla eval`: closed-loop success of a checkpoint.

use std::path::PathBuf;
use vlm4vla::demo::{LoadedPolicy, EVAL_FIRST_SEED};
use vlm4vla::env::{EvalOptions, InstructionMode, TaskFamily};

/// The long help of the subcommand.
pub const LONG_ABOUT: &str = "A fine-tuned checkpoint (a run of a config with [data]) is evaluated \
offline: its predicted chunks against the recorded actions of --dataset (default: the run's own), \
as the mean absolute error per arm dimension, the RMSE and the gripper accuracy.

A tabletop checkpoint runs closed-loop in the tabletop environment on --episodes \
held-out episodes (spread evenly over the four task families, seeds from --seed) and print the \
success rate per family. --mismatched gives the policy an instruction naming another object of \
the scene (success is still judged on the true task), a check that the policy reads the instruction.";

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint directory (or a run's output directory).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Episodes in total (rounded up to a multiple of 4).
    #[arg(long, default_value_t = 100, value_parser = super::at_most::<1_000_000>)]
    episodes: usize,
    /// First episode seed (training data uses low seeds).
    #[arg(long, default_value_t = EVAL_FIRST_SEED)]
    seed: u64,
    /// Give the policy mismatched instructions.
    #[arg(long)]
    mismatched: bool,
    /// Actions executed from each predicted chunk.
    #[arg(long, default_value_t = 2, value_parser = super::at_most::<1_000>)]
    execute_steps: usize,
    /// Fine-tuned checkpoints: the LeRobot dataset to evaluate on (default: the run's own).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Fine-tuned checkpoints: batches of the dataset evaluated, in index order.
    #[arg(long, default_value_t = 8, value_parser = super::at_most::<1_000_000>)]
    batches: usize,
    /// Fine-tuned checkpoints: rows per batch.
    #[arg(long, default_value_t = 8, value_parser = super::at_most::<65_536>)]
    batch_size: usize,
    /// Print the full report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: &EvalArgs) -> Result<(), Box<dyn std::error::Error>> {
    if vlm4vla::finetune::is_finetune_checkpoint(&a.checkpoint) {
        return run_offline(a);
    }
    if a.episodes == 0 {
        return Err("--episodes must be at least 1".into());
    }
    let p = LoadedPolicy::open(&a.checkpoint)?;
    let opts = EvalOptions {
        execute_steps: a.execute_steps,
        instructions: if a.mismatched { InstructionMode::Mismatched } else { InstructionMode::True },
        ..EvalOptions::default()
    };
    let per = a.episodes.div_ceil(TaskFamily::ALL.len());
    let r = p.evaluate(a.seed, per, &opts)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    for f in &r.families {
        outln!("{:<16} {:>3}/{:<3} {:>5.1}%", f.family.name(), f.successes, f.episodes, 100.0 * f.success_rate)?;
    }
    outln!("{:<16} {:>3}/{:<3} {:>5.1}%", "overall", r.successes, r.episodes, 100.0 * r.success_rate)?;
    Ok(())
}

fn run_offline(a: &EvalArgs) -> Result<(), Box<dyn std::error::Error>> {
    if a.batches == 0 || a.batch_size == 0 {
        return Err("--batches and --batch-size must be at least 1".into());
    }
    let p = vlm4vla::finetune::FinetunedPolicy::open(&a.checkpoint)?;
    let r = p.evaluate(a.dataset.as_deref(), a.batches, a.batch_size)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    outln!("dataset {}: {} frames, {} action steps", r.dataset, r.frames, r.action_steps)?;
    let mae: Vec<String> = r.arm_mae.iter().map(|e| format!("{e:.4}")).collect();
    outln!("arm MAE per dim  [{}]", mae.join(", "))?;
    outln!("arm RMSE         {:.4}", r.arm_rmse)?;
    if let Some(acc) = r.gripper_accuracy {
        outln!("gripper accuracy {:.1}%", 100.0 * acc)?;
    }
    Ok(())
}
