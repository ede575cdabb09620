//! Camera frames and instructions → a [`BackboneInput`], for any of the three families.
//!
//! The prompt is the instruction in a template (`{instruction}` replaced, e.g. "What action should
//! the robot take to {instruction}?"), tokenised by a [`TextTokenizer`], laid out by the family's
//! processor as the family reads an image and a question; the policy appends its action queries
//! after it. How several cameras enter:
//!
//! - **Qwen2.5-VL** takes any number of images: every camera is its own image in the chat, in the
//!   order of `data.cameras`, each resized by the checkpoint's `min_pixels`/`max_pixels` rule;
//! - **PaliGemma** and **Kosmos-2** read one image: the cameras are tiled left to right into one
//!   frame (each scaled to the first camera's height), which the processor then resizes to the
//!   model's square input.

use super::text::TextTokenizer;
use crate::engine::{Error, Result};
use crate::models::common::image::RgbImage;
use crate::models::common::processor_files::Resample;
use crate::models::kosmos2::Kosmos2Processor;
use crate::models::paligemma::{PaliGemmaProcessor, PromptTokens};
use crate::models::qwen2_5_vl::Qwen25VlProcessor;
use crate::models::BackboneInput;
use std::sync::Arc;

/// The family's processor.
#[derive(Clone, Debug)]
pub enum Processor {
    Qwen25Vl(Box<Qwen25VlProcessor>),
    PaliGemma(PaliGemmaProcessor),
    Kosmos2(Kosmos2Processor),
}

impl Processor {
    /// Every token id the family's prompt layout gives a meaning (kept out of a
    /// [`ByteTokenizer`](super::text::ByteTokenizer)'s ids).
    pub fn special_ids(&self) -> Vec<i64> {
        match self {
            Processor::Qwen25Vl(p) => {
                let c = &p.chat;
                let mut ids = vec![c.im_start, c.im_end, c.pad, c.newline, c.vision_start, c.vision_end, c.image_pad];
                ids.extend(c.system.iter().chain(&c.default_system).chain(&c.user).chain(&c.assistant));
                ids
            }
            Processor::PaliGemma(p) => {
                vec![p.image_token_id, p.bos_token_id, p.eos_token_id, p.pad_token_id, p.newline_token_id]
            }
            Processor::Kosmos2(p) => {
                let mut ids = vec![p.bos_id, p.pad_id, p.image_start_id, p.image_end_id];
                ids.extend((0..p.latent_query_num as i64).map(|i| p.first_image_id + i));
                ids
            }
        }
    }
}

/// The default prompt template (the instruction as a question, OpenVLA/RoboVLMs style).
pub const DEFAULT_PROMPT: &str = "What action should the robot take to {instruction}?";

/// Frames + instructions → backbone batches.
#[derive(Clone)]
pub struct Encoder {
    pub processor: Processor,
    pub tokenizer: Arc<dyn TextTokenizer>,
    /// The prompt template; `{instruction}` is replaced by the task text.
    pub prompt: String,
    /// When set, every camera frame is first resized to `image_size²` (bilinear), as the paper
    /// feeds 224² frames to every backbone.
    pub image_size: Option<usize>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("processor", &self.processor)
            .field("tokenizer", &self.tokenizer.describe())
            .field("prompt", &self.prompt)
            .field("image_size", &self.image_size)
            .finish()
    }
}

impl Encoder {
    /// The prompt text of one instruction.
    pub fn prompt_text(&self, instruction: &str) -> String {
        self.prompt.replace("{instruction}", instruction.trim())
    }

    /// The instruction's prompt ids (before the family's layout adds its tokens).
    pub fn prompt_ids(&self, instruction: &str) -> Result<Vec<i64>> {
        self.tokenizer.encode(&self.prompt_text(instruction))
    }

    /// The square input size of a family that takes one (PaliGemma, Kosmos-2); None for
    /// Qwen2.5-VL, whose processor keeps the aspect ratio.
    pub fn model_image_size(&self) -> Option<usize> {
        match &self.processor {
            Processor::Qwen25Vl(_) => None,
            Processor::PaliGemma(p) => Some(p.image_size),
            Processor::Kosmos2(p) => Some(p.image_size),
        }
    }

    /// One batch: `cameras[b]` holds sample `b`'s frames (one per camera, the same cameras in the
    /// same order in every sample), `instructions[b]` its task.
    pub fn encode(&self, cameras: &[Vec<RgbImage>], instructions: &[&str]) -> Result<BackboneInput> {
        let ids = instructions.iter().map(|t| self.prompt_ids(t)).collect::<Result<Vec<_>>>()?;
        self.encode_ids(cameras, &ids)
    }

    /// [`encode`](Self::encode) with the instructions already through
    /// [`prompt_ids`](Self::prompt_ids) (callers that cache them per task).
    pub fn encode_ids(&self, cameras: &[Vec<RgbImage>], ids: &[Vec<i64>]) -> Result<BackboneInput> {
        if cameras.is_empty() || cameras.len() != ids.len() {
            return Err(Error::invalid(
                "Encoder::encode",
                format!("{} samples of frames for {} instructions", cameras.len(), ids.len()),
            ));
        }
        let n = cameras[0].len();
        if let Some(b) = cameras.iter().position(|c| c.len() != n || c.is_empty()) {
            return Err(Error::invalid(
                "Encoder::encode",
                format!("sample {b} has {} camera frames, sample 0 has {n} (at least one each)", cameras[b].len()),
            ));
        }
        match &self.processor {
            Processor::Qwen25Vl(p) => {
                let samples = cameras
                    .iter()
                    .zip(ids)
                    .map(|(frames, ids)| {
                        let images = frames.iter().map(|f| p.image(&self.sized(f)?)).collect::<Result<Vec<_>>>()?;
                        let grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid_thw).collect();
                        Ok((p.prompt(ids, &grids), images))
                    })
                    .collect::<Result<Vec<_>>>()?;
                p.collate(&samples)
            }
            Processor::PaliGemma(p) => {
                let frames = cameras.iter().map(|c| p.resize(&self.tiled(c)?)).collect::<Result<Vec<_>>>()?;
                let refs: Vec<&[u8]> = frames.iter().map(|f| f.data.as_slice()).collect();
                let prompts: Vec<PromptTokens> = ids.iter().map(|ids| p.prompt(ids, None)).collect();
                p.collate(&prompts, p.pixel_values(&refs)?)
            }
            Processor::Kosmos2(p) => {
                let pixels = cameras
                    .iter()
                    .map(|c| {
                        let f = p.resize(&self.tiled(c)?)?;
                        p.preprocess(&f.data, f.height, f.width)
                    })
                    .collect::<Result<Vec<_>>>()?;
                p.collate(&pixels, ids)
            }
        }
    }

    /// `frame` at `image_size²` when that is set.
    fn sized(&self, frame: &RgbImage) -> Result<RgbImage> {
        match self.image_size {
            Some(s) if (frame.width, frame.height) != (s, s) => Resample::Bilinear.resize(frame, s, s),
            _ => Ok(frame.clone()),
        }
    }

    /// The frames of one sample as one image: each sized, then tiled left to right at the first
    /// frame's height.
    fn tiled(&self, frames: &[RgbImage]) -> Result<RgbImage> {
        let sized = frames.iter().map(|f| self.sized(f)).collect::<Result<Vec<_>>>()?;
        if sized.len() == 1 {
            return Ok(sized.into_iter().next().expect("one frame"));
        }
        let h = sized[0].height;
        let scaled = sized
            .into_iter()
            .map(|f| {
                if f.height == h {
                    return Ok(f);
                }
                let w = (f.width * h).div_ceil(f.height).max(1);
                Resample::Bilinear.resize(&f, w, h)
            })
            .collect::<Result<Vec<_>>>()?;
        let width: usize = scaled.iter().map(|f| f.width).sum();
        let mut data = Vec::with_capacity(width * h * 3);
        for y in 0..h {
            for f in &scaled {
                data.extend_from_slice(&f.data[y * f.width * 3..(y + 1) * f.width * 3]);
            }
        }
        Ok(RgbImage { width, height: h, data })
    }
}
