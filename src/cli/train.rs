//! `vlm4vla train`: train a policy from a TOML config.

use std::path::PathBuf;
use vlm4vla::demo::{train, PipelineConfig};
use vlm4vla::finetune::{self, FinetuneConfig};

/// The long help of the subcommand.
pub const LONG_ABOUT: &str = "Train a policy from a TOML config; unknown keys are errors.

A config with a [data] table fine-tunes a backbone on a LeRobot v3 dataset: `backbone` is a \
built-in name (`vlm4vla info --model NAME`), a Hugging Face checkpoint directory or a hub id in the \
local cache; `dtype` (f32, bf16), `device` (cpu, cuda:N); [data] names the dataset, cameras, state \
and action keys, the normalisation and the prompt; [policy], [optim], [run] as below. Examples: \
configs/*.toml.

A config with a top-level `dataset = \"DIR\"` trains the tabletop pipeline on a dataset written by \
`vlm4vla collect` (`vlm4vla demo` writes a complete example to <out>/train.toml).

Both take backbone, output_dir, seed, train_modules, train_llm_last_layers, [policy], [optim], \
[run].

A run directory belongs to one run: it is locked while the run lasts (`run.lock` names the \
holder), and a fresh run into a directory that already holds one is refused; continue it with \
--resume, choose another --output-dir, or pass --overwrite to replace it.

Exit status: 0 when the run ends; 1 on an error; 130 after SIGINT (Ctrl-C) and 143 after \
SIGTERM, each once the checkpoint of the last step taken is written (--resume continues from it). \
A second signal ends the process at once, or, during a save, as soon as the save is complete.";

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The TOML config.
    #[arg(long)]
    config: PathBuf,
    /// Continue from a checkpoint directory (or a run's output directory).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write the run here instead of the config's `output_dir`.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Replace the run already in the output directory (its checkpoints, `latest`, metrics and
    /// loss curve are deleted first).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Print the memory plan (parameters by group; bytes of weights, gradients, optimizer state
    /// and activations at the batch; which GPUs it fits) and stop without training.
    #[arg(long)]
    plan: bool,
}

pub fn run(a: &TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(&a.config).map_err(|e| format!("{}: cannot read: {e}", a.config.display()))?;
    if FinetuneConfig::is_finetune_toml(&text) {
        let mut cfg = FinetuneConfig::from_toml_str(&text, &a.config)?;
        if let Some(d) = &a.output_dir {
            cfg.train.output_dir = d.clone();
        }
        if a.plan {
            let (plan, notes) = finetune::plan::plan(&cfg)?;
            outln!("device: {} (the config's)", cfg.device)?;
            out!("{plan}")?;
            for n in notes {
                outln!("note: {n}")?;
            }
            return Ok(());
        }
        prepare(a, &cfg.train.output_dir)?;
        let out = finetune::train(&cfg, a.resume.as_deref())?;
        report(out.stopped, out.steps, (out.first_loss, out.last_loss), out.seconds, &out.checkpoint)?;
        return Ok(());
    }
    if a.plan {
        return Err("--plan takes a fine-tuning config (with a [data] table)".into());
    }
    let mut cfg = PipelineConfig::from_toml_str(&text, &a.config)?;
    if let Some(d) = &a.output_dir {
        cfg.train.output_dir = d.clone();
    }
    prepare(a, &cfg.train.output_dir)?;
    let out = train(&cfg, a.resume.as_deref())?;
    report(out.stopped, out.steps, (out.first_loss, out.last_loss), out.seconds, &out.checkpoint)?;
    Ok(())
}

/// Clear the output directory's old run for --overwrite, and install the signal handlers.
fn prepare(a: &TrainArgs, output_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    if a.overwrite {
        let removed = vlm4vla::train::rundir::clear_run(output_dir)?;
        if !removed.is_empty() {
            eprintln!("--overwrite: removed {} from {}", removed.join(", "), output_dir.display());
        }
    }
    vlm4vla::train::signal::install_handlers();
    Ok(())
}

fn report(
    stopped: bool,
    steps: usize,
    (first, last): (f64, f64),
    seconds: f64,
    checkpoint: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let how = if stopped { "stopped" } else { "done" };
    outln!(
        "{how} after {steps} steps: loss {first:.4} → {last:.4} in {seconds:.1} s; checkpoint {}",
        checkpoint.display()
    )
}
