//! Subcommands of the `vlm4vla` binary.

/// `println!` that returns an error instead of panicking when stdout is closed or full.
macro_rules! outln {
    () => { $crate::cli::write_stdout(format_args!("\n")) };
    ($($t:tt)*) => { $crate::cli::write_stdout(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` that returns an error instead of panicking when stdout is closed or full.
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::write_stdout(format_args!($($t)*)) };
}

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

/// Run the subcommand; `Ok` carries the exit status (0, or [`EXIT_SIGINT`] / [`EXIT_SIGTERM`]
/// after a run stopped by that signal wrote its checkpoint).
///
/// [`EXIT_SIGINT`]: vlm4vla::train::signal::EXIT_SIGINT
/// [`EXIT_SIGTERM`]: vlm4vla::train::signal::EXIT_SIGTERM
pub fn run(cli: Cli) -> Result<u8, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Demo(args) => demo::run(&args).map(|()| signal_status()),
        Command::Collect(args) => collect::run(&args).map(|()| 0),
        Command::Train(args) => train::run(&args).map(|()| signal_status()),
        Command::Eval(args) => eval::run(&args).map(|()| 0),
        Command::Export(args) => export::run(&args).map(|()| 0),
        Command::Predict(args) => predict::run(&args).map(|()| 0),
        Command::Serve(args) => serve::run(&args).map(|()| 0),
        Command::Info(args) => info::run(&args).map(|()| 0),
    }
}

/// A clap parser for a count of at most `MAX` (so no size reaches an allocation unbounded, and
/// none wraps).
fn at_most<const MAX: usize>(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("`{s}` is not a count: {e}"))?;
    if n > MAX {
        return Err(format!("{n} is beyond the supported maximum {MAX}"));
    }
    Ok(n)
}

/// 128 + the signal that stopped the run, or 0.
fn signal_status() -> u8 {
    vlm4vla::train::signal::exit_code().map_or(0, |c| c as u8)
}

/// Write to stdout, flushing; a closed pipe (EPIPE) or a full disk is an error, not a panic.
pub fn write_stdout(args: std::fmt::Arguments) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.flush()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            "stdout was closed before the output was written (broken pipe)".into()
        } else {
            format!("writing to stdout: {e}").into()
        }
    })
}
