//! `vlm4vla train --plan`: what a fine-tuning run will hold in memory, before it starts.

use super::model::ModelSource;
use super::train::{dataset_keys, resolve_action_dim, resolve_state_dim};
use super::FinetuneConfig;
use crate::data::{LeRobotDataset, RgbImage};
use crate::engine::Result;
use crate::models::plan::{plan as estimate, PlanInput, TrainPlan};
use crate::models::registry::{ModelConfig, BUILTINS};

/// Hub ids whose configs are built in, so a plan needs no download.
pub const HUB_BUILTINS: &[(&str, &str)] = &[
    ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2.5-vl-3b"),
    ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5-vl-7b"),
    ("google/paligemma-3b-pt-224", "paligemma-3b-pt-224"),
    ("microsoft/kosmos-2-patch14-224", "kosmos-2-patch14-224"),
];

/// The plan of `cfg` and notes on what it assumed.
pub fn plan(cfg: &FinetuneConfig) -> Result<(TrainPlan, Vec<String>)> {
    let mut notes = Vec::new();
    // Metadata only: a plan reads no frame, whatever the dataset's size.
    let dataset = LeRobotDataset::open_metadata(&cfg.data.dataset, &dataset_keys(&cfg.data));
    let mut cfg = cfg.clone();
    if let Ok(ds) = &dataset {
        resolve_state_dim(&mut cfg, ds)?;
        resolve_action_dim(&mut cfg, ds)?;
    }
    let cfg = &cfg;
    let spec = cfg.train.backbone.as_str();
    let (source, config) = match ModelSource::resolve(spec) {
        Ok(s) => {
            let config = s.config.clone();
            (Some(s), config)
        }
        Err(e) => match HUB_BUILTINS.iter().find(|(id, b)| *id == spec && BUILTINS.contains(b)) {
            Some((_, builtin)) => {
                notes.push(format!("`{spec}` is not in the local cache: sizes from the built-in `{builtin}` config"));
                (None, ModelConfig::builtin(builtin)?)
            }
            None => return Err(e),
        },
    };
    let dtype = cfg.dtype()?;
    let mut input = PlanInput::new(config.clone(), dtype, cfg.train.run.batch_size);
    let parts = cfg.train.trainable();
    input.trainable = parts.groups.clone();
    input.llm_last_layers = parts.llm_last_layers;
    input.policy = cfg.train.policy.clone();
    input.checkpoint_activations = cfg.train.run.checkpoint_activations;
    input.master_weights = dtype != crate::engine::DType::F32;
    let cameras = cfg.data.cameras.len().max(1);
    input.images_per_sample = if matches!(config, ModelConfig::Qwen25Vl(_)) { cameras } else { 1 };
    if !parts.head {
        notes.push("the head is counted as trainable (the plan always trains it)".into());
    }
    input.image_size = match (cfg.data.image_size, &dataset) {
        (Some(s), _) => s,
        (None, Ok(ds)) => {
            let (h, w) = ds.camera_size(0);
            h.max(w)
        }
        (None, Err(_)) => 224,
    };
    if let ModelConfig::Qwen25Vl(_) = config {
        input.image_size = input.image_size.div_ceil(28) * 28;
    }
    match (&dataset, &source) {
        (Ok(ds), Some(src)) => {
            // The longest task, laid out by the family's processor, gives the text rows.
            let encoder = src.encoder(&cfg.data.prompt, cfg.data.image_size)?;
            let longest = ds.tasks().iter().max_by_key(|t| t.len()).cloned().unwrap_or_default();
            // Blank frames of the cameras' sizes: the layout depends on the size alone.
            let frames: Vec<RgbImage> = (0..ds.camera_keys().len())
                .map(|c| {
                    let (height, width) = ds.camera_size(c);
                    RgbImage { width, height, data: vec![0; width * height * 3] }
                })
                .collect();
            let laid = encoder.encode(&[frames], &[longest.as_str()])?;
            let mut bare = input.clone();
            bare.text_tokens = 0;
            let without_text = estimate(&bare)?.seq_len;
            let rows = laid.input_ids.dim(1)? + cfg.train.policy.latent + usize::from(cfg.train.policy.state_dim > 0);
            input.text_tokens = rows.saturating_sub(without_text);
        }
        (Err(e), _) => notes.push(format!(
            "the dataset cannot be read ({e}): {} text tokens and {}-pixel frames assumed",
            input.text_tokens, input.image_size
        )),
        (Ok(_), None) => notes.push(format!("no tokenizer at hand: {} text tokens assumed", input.text_tokens)),
    }
    Ok((estimate(&input)?, notes))
}
