//! `vlm4vla info`: what this build is and what it can use.

use vlm4vla::engine::{self, Device};

#[derive(clap::Args, Debug)]
pub struct InfoArgs {}

pub fn run(_args: &InfoArgs) -> Result<(), Box<dyn std::error::Error>> {
    println!("vlm4vla {}", env!("CARGO_PKG_VERSION"));
    println!("features: {}", engine::enabled_features().join(", "));
    let threads = rayon::current_num_threads();
    for d in Device::available() {
        match d {
            Device::Cpu => println!("device: cpu ({threads} threads)"),
            other => println!("device: {other}"),
        }
    }
    if !engine::enabled_features().contains(&"cuda") {
        println!("cuda: not built (rebuild with `--features cuda`)");
    }
    Ok(())
}
