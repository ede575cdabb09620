//! `vlm4vla predict`: one action chunk as JSON.

use std::path::PathBuf;
use vlm4vla::demo::LoadedPolicy;

/// The long help of the subcommand.
pub const LONG_ABOUT: &str = "Load a checkpoint, read an RGB image and an instruction, and print the \
predicted action chunk as JSON: {\"chunk\": [[a0, a1, ...], ...]} in raw action units, one row of \
the policy's action_dim values per chunk step (with policy.gripper = \"last\", the gripper state last). \
A fine-tuned checkpoint takes a PNG of any size (the backbone's processor \
resizes it) and, when it was trained with a state input, --state in raw units. A tabletop \
checkpoint takes a PNG at the policy's image size; its gripper is +1 (open) or -1 (closed).";

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// Checkpoint directory (or a run's output directory).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The camera image (tabletop checkpoints: a square PNG at the policy's image size). A
    /// policy trained on several cameras takes one --image per camera, in `data.cameras` order.
    #[arg(long, required = true)]
    image: Vec<PathBuf>,
    /// The instruction, e.g. "pick up the red block".
    #[arg(long)]
    instruction: String,
    /// The robot's state, comma-separated (tabletop: 7 numbers `x,y,z,0,0,0,g`, positions in
    /// [0, 1], g = +1 open / -1 closed); required by policies trained with a state input.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    state: Option<Vec<f32>>,
}

/// The longest instruction accepted, in characters.
pub const MAX_INSTRUCTION_CHARS: usize = 4096;

pub fn run(a: &PredictArgs) -> Result<(), Box<dyn std::error::Error>> {
    let n = a.instruction.chars().count();
    if n > MAX_INSTRUCTION_CHARS {
        return Err(format!("--instruction: {n} characters, at most {MAX_INSTRUCTION_CHARS} are accepted").into());
    }
    if let Some(state) = &a.state {
        if let Some(i) = state.iter().position(|x| !x.is_finite()) {
            return Err(format!("--state: value {i} is {}, every value must be a finite number", state[i]).into());
        }
    }
    if vlm4vla::finetune::is_finetune_checkpoint(&a.checkpoint) {
        return run_finetuned(a);
    }
    let p = LoadedPolicy::open(&a.checkpoint)?;
    let [image] = a.image.as_slice() else {
        return Err(format!("a tabletop policy takes one --image, got {}", a.image.len()).into());
    };
    let bytes = std::fs::read(image).map_err(|e| format!("{}: cannot read: {e}", image.display()))?;
    let img = vlm4vla::data::decode_png(&bytes).map_err(|e| format!("{}: not a PNG image: {e}", image.display()))?;
    let s = p.image_size();
    if (img.width, img.height) != (s, s) {
        return Err(format!(
            "{}: image is {}×{} pixels, the policy takes {s}×{s}",
            image.display(),
            img.width,
            img.height
        )
        .into());
    }
    let unknown = p.encoder.tokenizer.unknown_words(&a.instruction);
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
    if let Some(s) = &state {
        if let Some(i) = s[..3].iter().position(|x| !(0.0..=1.0).contains(x)) {
            return Err(format!("--state: position {i} is {}, positions lie in [0, 1]", s[i]).into());
        }
        if s[6] != 1.0 && s[6] != -1.0 {
            return Err(
                format!("--state: the gripper (value 6) is {}, it must be +1 (open) or -1 (closed)", s[6]).into()
            );
        }
    }
    let states = state.as_ref().map(std::slice::from_ref);
    let chunk = p.predict(&[img.data.as_slice()], &[a.instruction.as_str()], states)?.remove(0);
    outln!("{}", serde_json::json!({ "instruction": a.instruction, "chunk": chunk }))?;
    Ok(())
}

fn run_finetuned(a: &PredictArgs) -> Result<(), Box<dyn std::error::Error>> {
    let p = vlm4vla::finetune::FinetunedPolicy::open(&a.checkpoint)?;
    let cameras = p.config.data.cameras.len().max(1);
    if a.image.len() != cameras {
        return Err(format!(
            "the policy reads {cameras} camera(s) ({}); give one --image per camera, in that order",
            p.config.data.cameras.join(", ")
        )
        .into());
    }
    let frames = a.image.iter().map(vlm4vla::models::common::image::RgbImage::load).collect::<Result<Vec<_>, _>>()?;
    let states = a.state.clone().map(|s| vec![s]);
    let chunk = p.predict(&[frames], &[a.instruction.as_str()], states.as_deref())?.remove(0);
    outln!("{}", serde_json::json!({ "instruction": a.instruction, "step": p.step, "chunk": chunk }))?;
    Ok(())
}
