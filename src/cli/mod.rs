//! Subcommands of the `vlm4vla` binary.

mod info;

use clap::{Parser, Subcommand};

/// Turn a vision-language model into a vision-language-action policy and fine-tune it fast.
#[derive(Parser, Debug)]
#[command(name = "vlm4vla", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the version, the enabled features and the devices this build can use.
    Info(info::InfoArgs),
}

pub fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Info(args) => info::run(&args),
    }
}
