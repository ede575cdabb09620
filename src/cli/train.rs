//! `vlm4vla train`: train a policy from a TOML config.

use std::path::PathBuf;
use vlm4vla::demo::{train, PipelineConfig};

/// The long help of the subcommand.
pub const LONG_ABOUT: &str = "Train a policy on a dataset written by `vlm4vla collect`. The TOML config has \
a top-level `dataset = \"DIR\"` and the training tables (backbone, output_dir, seed, train_modules, \
[policy], [optim], [run]); unknown keys are errors. `vlm4vla demo` writes a complete example to \
<out>/train.toml. Ctrl-C writes a checkpoint and stops; --resume continues from it.";

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The TOML config.
    #[arg(long)]
    config: PathBuf,
    /// Continue from a checkpoint directory (or a run's output directory).
    #[arg(long)]
    resume: Option<PathBuf>,
}

pub fn run(a: &TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = PipelineConfig::from_file(&a.config)?;
    vlm4vla::train::signal::install_sigint_handler();
    let out = train(&cfg, a.resume.as_deref())?;
    println!(
        "{} after {} steps: loss {:.4} → {:.4} in {:.1} s; checkpoint {}",
        if out.stopped { "stopped" } else { "done" },
        out.steps,
        out.first_loss,
        out.last_loss,
        out.seconds,
        out.checkpoint.display()
    );
    Ok(())
}
