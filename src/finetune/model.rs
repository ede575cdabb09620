//! What `backbone = "…"` names, built: the backbone's weights (on the chosen device, in the chosen
//! dtype) and the [`Encoder`] its own files define.
//!
//! `backbone` is one of
//! - a built-in name (`vlm4vla_models::registry::BUILTINS`): the real configs with random weights
//!   (benchmarks, plans) and the tiny ones; their processors use the real checkpoints' settings
//!   and the instruction is tokenised by a [`ByteTokenizer`] (they ship no tokenizer);
//! - a checkpoint directory in Hugging Face format (`config.json`, `model.safetensors[.index.json]`,
//!   `tokenizer.json`, `preprocessor_config.json`, `processor_config.json`): its `tokenizer.json`
//!   and processor files drive the family's processor;
//! - a hub id `org/name[@revision]` found in the local Hugging Face cache (no network is used).

use super::encoder::{Encoder, Processor};
use super::text::{ByteTokenizer, HfTokenizer, TextTokenizer};
use crate::engine::{DType, Device, Error, Result};
use crate::models::common::tokenizer::Tokenizer;
use crate::models::kosmos2::Kosmos2Processor;
use crate::models::paligemma::PaliGemmaProcessor;
use crate::models::qwen2_5_vl::{ChatTokens, Qwen25VlProcessor};
use crate::models::registry::{self, ModelConfig, BUILTINS};
use crate::models::Backbone;
use std::path::PathBuf;
use std::sync::Arc;

/// A resolved `backbone` value.
#[derive(Clone, Debug)]
pub struct ModelSource {
    /// As written in the config.
    pub spec: String,
    pub config: ModelConfig,
    /// The checkpoint directory (None for a built-in).
    pub dir: Option<PathBuf>,
}

impl ModelSource {
    /// Resolve a built-in name, a directory or a hub id in the local cache.
    pub fn resolve(spec: &str) -> Result<ModelSource> {
        if BUILTINS.contains(&spec) {
            return Ok(ModelSource { spec: spec.into(), config: ModelConfig::builtin(spec)?, dir: None });
        }
        let dir = crate::models::common::checkpoint::resolve(spec)
            .map_err(|e| {
                Error::invalid(
                    "backbone",
                    format!("`{spec}` is not a built-in backbone ({}) and {e}", BUILTINS.join(", ")),
                )
            })?
            .dir;
        Ok(ModelSource { spec: spec.into(), config: ModelConfig::from_dir(&dir)?, dir: Some(dir) })
    }

    pub fn family(&self) -> &'static str {
        self.config.family()
    }

    /// The backbone in `dtype` on `device`: a checkpoint's weights, or random weights from `seed`
    /// for a built-in.
    pub fn backbone(&self, dtype: DType, device: Device, seed: u64) -> Result<Box<dyn Backbone>> {
        check_device(device)?;
        let spec = match &self.dir {
            Some(d) => d.to_string_lossy().into_owned(),
            None => self.spec.clone(),
        };
        let cpu = registry::load_backbone(&spec, dtype, seed)?;
        if device.is_cpu() {
            return Ok(cpu);
        }
        registry::backbone_to_device(&self.config, cpu.as_ref(), device)
    }

    /// The family's processor and a tokenizer: the checkpoint's own files, or the real
    /// checkpoints' settings and a [`ByteTokenizer`] for a built-in.
    pub fn encoder(&self, prompt: &str, image_size: Option<usize>) -> Result<Encoder> {
        let (processor, tokenizer): (Processor, Option<Arc<dyn TextTokenizer>>) = match &self.dir {
            Some(dir) => {
                let tok = Tokenizer::from_file(dir.join("tokenizer.json"))?;
                let processor = match &self.config {
                    ModelConfig::Qwen25Vl(c) => {
                        Processor::Qwen25Vl(Box::new(Qwen25VlProcessor::from_checkpoint(dir, c, &tok)?))
                    }
                    ModelConfig::PaliGemma(c) => {
                        Processor::PaliGemma(PaliGemmaProcessor::from_checkpoint(dir, c, &tok)?)
                    }
                    ModelConfig::Kosmos2(c) => Processor::Kosmos2(Kosmos2Processor::from_checkpoint(dir, c, &tok)?),
                };
                (processor, Some(Arc::new(HfTokenizer(Arc::new(tok)))))
            }
            None => {
                let processor = match &self.config {
                    ModelConfig::Qwen25Vl(c) => {
                        let chat = [ChatTokens::tiny(), ChatTokens::qwen2_5_vl()]
                            .into_iter()
                            .find(|t| t.image_pad == c.image_token_id)
                            .ok_or_else(|| {
                                Error::invalid(
                                    "backbone",
                                    format!("built-in `{}` has no chat token table for its ids", self.spec),
                                )
                            })?;
                        Processor::Qwen25Vl(Box::new(Qwen25VlProcessor::new(c, chat)))
                    }
                    ModelConfig::PaliGemma(c) => Processor::PaliGemma(PaliGemmaProcessor::new(c)),
                    ModelConfig::Kosmos2(c) => Processor::Kosmos2(Kosmos2Processor::new(c)),
                };
                (processor, None)
            }
        };
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => Arc::new(ByteTokenizer::new(self.config.vocab_size(), &processor.special_ids())?),
        };
        Ok(Encoder { processor, tokenizer, prompt: prompt.to_string(), image_size })
    }
}

/// Parse a `device` value (`cpu`, `cuda`, `cuda:N`); errors name the field.
pub fn parse_device(s: &str) -> Result<Device> {
    s.parse().map_err(|e: String| Error::invalid("device", e))
}

/// Parse a `dtype` value: training keeps parameters in f32 or bf16.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.parse::<DType>() {
        Ok(d @ (DType::F32 | DType::BF16)) => Ok(d),
        Ok(d) => Err(Error::invalid("dtype", format!("`{d}`: parameters train in f32 or bf16"))),
        Err(e) => Err(Error::invalid("dtype", e)),
    }
}

/// An error naming the device when this build or machine cannot use it.
pub fn check_device(device: Device) -> Result<()> {
    if Device::available().contains(&device) {
        return Ok(());
    }
    let why = if cfg!(feature = "cuda") {
        "no such CUDA device on this machine (no driver, or fewer GPUs)".to_string()
    } else {
        "this build has no CUDA support (rebuild with `--features cuda`)".to_string()
    };
    Err(Error::invalid("device", format!("device `{device}` is not available: {why}")))
}
