//! `vlm4vla collect`: expert demonstrations as a LeRobot dataset.

use std::path::PathBuf;

/// The long help of the subcommand.
pub const LONG_ABOUT: &str = "Run the scripted expert of the built-in tabletop environment on --episodes \
episodes (the four task families interleaved, seeds --seed, --seed + 1, ...) and write the \
successful ones as a LeRobot v3.0 dataset (PNG frames, 7-D state and action, and per frame the \
expert's unperturbed plan of the next --plan-steps actions) in --out.";

#[derive(clap::Args, Debug)]
pub struct CollectArgs {
    /// Dataset directory to create (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Number of episodes.
    #[arg(long, default_value_t = 2000, value_parser = super::at_most::<1_000_000>)]
    episodes: usize,
    /// First episode seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Side of the square RGB frames in pixels.
    #[arg(long, default_value_t = 48, value_parser = super::at_most::<1_024>)]
    image_size: usize,
    /// DART noise: std of the perturbation added to executed dx/dy/dz on about half the steps
    /// (the recorded labels stay the expert's); 0 records clean expert rollouts.
    #[arg(long, default_value_t = 0.3)]
    noise: f32,
    /// Record per frame the expert's next N actions from that state without perturbation
    /// (`action_plan`), the chunk labels training uses (chunks up to N); 0 records none.
    #[arg(long, default_value_t = vlm4vla::demo::DEFAULT_PLAN_STEPS, value_parser = super::at_most::<1_024>)]
    plan_steps: usize,
}

pub fn run(a: &CollectArgs) -> Result<(), Box<dyn std::error::Error>> {
    let opts = vlm4vla::demo::CollectOptions {
        episodes: a.episodes,
        seed: a.seed,
        image_size: a.image_size,
        noise: a.noise,
        plan_steps: a.plan_steps,
    };
    let s = vlm4vla::demo::collect(&a.out, &opts)?;
    outln!(
        "wrote {} episodes ({} frames, {} failed expert episodes left out) to {} in {:.1} s",
        s.episodes,
        s.frames,
        s.dropped,
        s.dir.display(),
        s.seconds
    )?;
    Ok(())
}
