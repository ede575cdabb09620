//! Subcommands of the `vlm4vla` binary.

mod collect;
mod demo;
mod eval;
mod export;
mod info;
mod predict;
mod serve;
mod train;

use clap::{Parser, Subcommand};

/// Turn a vision-language model into a vision-language-action policy and fine-tune it fast.
///
/// Start with `vlm4vla demo`: it collects expert demonstrations in the built-in tabletop
/// environment, trains a tiny policy from scratch on the CPU and evaluates it closed-loop.
#[derive(Parser, Debug)]
#[command(name = "vlm4vla", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Collect expert demonstrations, train a tiny policy from scratch and evaluate it (CPU).
    #[command(long_about = demo::LONG_ABOUT)]
    Demo(demo::DemoArgs),
    /// Record scripted-expert episodes of the tabletop environment as a LeRobot dataset.
    #[command(long_about = collect::LONG_ABOUT)]
    Collect(collect::CollectArgs),
    /// Train a policy on a dataset from a TOML config.
    #[command(long_about = train::LONG_ABOUT)]
    Train(train::TrainArgs),
    /// Evaluate a checkpoint closed-loop on held-out tabletop episodes.
    #[command(long_about = eval::LONG_ABOUT)]
    Eval(eval::EvalArgs),
    /// Write a fine-tuned backbone as a Hugging Face checkpoint directory (and the policy head).
    #[command(long_about = export::LONG_ABOUT)]
    Export(export::ExportArgs),
    /// Predict the action chunk for one image and instruction (JSON on stdout).
    #[command(long_about = predict::LONG_ABOUT)]
    Predict(predict::PredictArgs),
    /// Serve a checkpoint to openpi's client (WebSocket + msgpack-numpy, `GET /healthz`).
    #[command(long_about = serve::LONG_ABOUT)]
    Serve(serve::ServeArgs),
    /// Print the version, the enabled features and the devices this build can use.
    Info(info::InfoArgs),
}

pub fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Collect(args) => collect::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Predict(args) => predict::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Info(args) => info::run(&args),
    }
}
