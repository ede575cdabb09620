//! `vlm4vla info`: what this build is and what it can use, or what a model is.

use vlm4vla::engine::{self, Device};

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Describe a model instead: a built-in name (e.g. `qwen2.5-vl-3b`, `paligemma-3b-pt-224`,
    /// `kosmos-2-patch14-224`, `qwen2.5-vl-tiny`) or a checkpoint directory.
    #[arg(long)]
    model: Option<String>,
}

pub fn run(args: &InfoArgs) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(spec) = &args.model {
        out!("{}", vlm4vla::models::registry::summarize(spec)?)?;
        return Ok(());
    }
    outln!("vlm4vla {}", env!("CARGO_PKG_VERSION"))?;
    outln!("features: {}", engine::enabled_features().join(", "))?;
    let threads = rayon::current_num_threads();
    for d in Device::available() {
        match d {
            Device::Cpu => outln!("device: cpu ({threads} threads)")?,
            other => outln!("device: {other}")?,
        }
    }
    if !engine::enabled_features().contains(&"cuda") {
        outln!("cuda: not built (rebuild with `--features cuda`)")?;
    }
    Ok(())
}
