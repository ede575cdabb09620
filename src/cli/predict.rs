//! `vlm4vla predict`: one action chunk as JSON.

use std::path::PathBuf;
use vlm4vla::demo::LoadedPolicy;

/// The long help of the subcommand.
pub const LONG_ABOUT: &str = "Load a checkpoint, read an RGB PNG at the policy's image size and an \
instruction, and print the predicted action chunk as JSON: {\"chunk\": [[dx, dy, dz, droll, \
dpitch, dyaw, gripper], ...]} with the gripper +1 (open) or -1 (closed).";

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// Checkpoint directory (or a run's output directory).
    #[arg(long)]
    checkpoint: PathBuf,
    /// PNG image, square, at the policy's image size.
    #[arg(long)]
    image: PathBuf,
    /// The instruction, e.g. "pick up the red block".
    #[arg(long)]
    instruction: String,
    /// The robot's proprioceptive state, 7 comma-separated numbers `x,y,z,0,0,0,g` (positions in
    /// [0, 1], g = +1 open / -1 closed); required by policies trained with `policy.state_dim`.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    state: Option<Vec<f32>>,
}

pub fn run(a: &PredictArgs) -> Result<(), Box<dyn std::error::Error>> {
    let p = LoadedPolicy::open(&a.checkpoint)?;
    let bytes = std::fs::read(&a.image).map_err(|e| format!("{}: cannot read: {e}", a.image.display()))?;
    let img = vlm4vla::data::decode_png(&bytes).map_err(|e| format!("{}: not a PNG image: {e}", a.image.display()))?;
    let s = p.image_size();
    if (img.width, img.height) != (s, s) {
        return Err(format!(
            "{}: image is {}×{} pixels, the policy takes {s}×{s}",
            a.image.display(),
            img.width,
            img.height
        )
        .into());
    }
    let unknown = p.encoder.vocab.unknown_words(&a.instruction);
    if !unknown.is_empty() {
        eprintln!("warning: words outside the instruction vocabulary: {}", unknown.join(", "));
    }
    let state: Option<[f32; 7]> = match &a.state {
        None => None,
        Some(v) => Some(
            v.as_slice()
                .try_into()
                .map_err(|_| format!("--state: expected 7 comma-separated numbers, got {}", v.len()))?,
        ),
    };
    let states = state.as_ref().map(std::slice::from_ref);
    let chunk = p.predict(&[img.data.as_slice()], &[a.instruction.as_str()], states)?.remove(0);
    println!("{}", serde_json::json!({ "instruction": a.instruction, "chunk": chunk }));
    Ok(())
}
