//! `vlm4vla export`: a fine-tuned checkpoint as a Hugging Face checkpoint directory.

use std::path::PathBuf;

/// The long help of the subcommand.
pub const LONG_ABOUT: &str = "Write the fine-tuned backbone of a checkpoint as a Hugging Face \
checkpoint directory that transformers loads (`AutoModelForImageTextToText.from_pretrained(OUT)`): \
the checkpoint's original tensor names, config.json, and the tokenizer and processor files of the \
backbone it started from; shards of at most 5 GB with an index above that. The policy's action \
queries and head go to vla_policy.safetensors and its normalisers, prompt and cameras to \
vla_policy.json beside them. OUT must not exist or be empty; the directory appears only complete.";

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Checkpoint directory (or a run's output directory) of a fine-tuning run.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The directory to write.
    #[arg(long)]
    out: PathBuf,
    /// The dtype of the written weights (f32, bf16); default: the parameters' dtype.
    #[arg(long)]
    dtype: Option<String>,
}

pub fn run(a: &ExportArgs) -> Result<(), Box<dyn std::error::Error>> {
    if !vlm4vla::finetune::is_finetune_checkpoint(&a.checkpoint) {
        return Err(format!(
            "{}: not a fine-tuning checkpoint (a run of a config with a [data] table); tabletop demo checkpoints \
             are not exported",
            a.checkpoint.display()
        )
        .into());
    }
    let dtype = a.dtype.as_deref().map(vlm4vla::finetune::model::parse_dtype).transpose()?;
    let p = vlm4vla::finetune::FinetunedPolicy::open(&a.checkpoint)?;
    let s = vlm4vla::finetune::export::export(&p, &a.out, dtype)?;
    outln!(
        "exported step {} of a {} policy to {}: {} tensors ({} parameters, {} bytes, {}) in {}; config.json {}",
        p.step,
        p.extra.family,
        s.out.display(),
        s.tensors,
        s.params,
        s.bytes,
        s.dtype,
        s.weight_files.join(", "),
        if s.config_from_source { "from the source checkpoint" } else { "generated" }
    )?;
    Ok(())
}
