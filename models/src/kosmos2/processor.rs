//! The Kosmos-2 processor: image normalisation (`CLIPImageProcessor` after resizing, which is
//! done elsewhere) and the prompt layout of `Kosmos2Processor` in transformers 5.24.0
//! (`models/kosmos2/processing_kosmos2.py`), with left-padded batch collation.

use super::config::Kosmos2Config;
use crate::common::backbone::BackboneInput;
use vlm4vla_engine::{Device, Error, Result, Tensor};

/// CLIP's per-channel mean and standard deviation (OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// `<image>` and `</image>` in the real vocabulary.
pub const IMAGE_START_ID: i64 = 64003;
pub const IMAGE_END_ID: i64 = 64004;
/// The first image placeholder id (`<unk>` + 1); the placeholders are consecutive.
pub const FIRST_IMAGE_ID: i64 = 4;

const OP: &str = "Kosmos2Processor";

/// Turns images at the model size and tokenised prompts into a [`BackboneInput`].
#[derive(Clone, Debug, PartialEq)]
pub struct Kosmos2Processor {
    pub image_size: usize,
    pub latent_query_num: usize,
    pub bos_id: i64,
    pub pad_id: i64,
    pub image_start_id: i64,
    pub image_end_id: i64,
}

impl Kosmos2Processor {
    /// The processor for `cfg`. Vocabularies too small for the real tag ids (the tiny test
    /// configs) use `vocab − 2` for `<image>` and `vocab − 1` for `</image>`, as
    /// `tools/golden/gen_kosmos2.py` does.
    pub fn new(cfg: &Kosmos2Config) -> Kosmos2Processor {
        let vocab = cfg.text.vocab_size as i64;
        let (start, end) = if vocab > IMAGE_END_ID { (IMAGE_START_ID, IMAGE_END_ID) } else { (vocab - 2, vocab - 1) };
        Kosmos2Processor {
            image_size: cfg.vision.image_size,
            latent_query_num: cfg.latent_query_num,
            bos_id: cfg.text.bos_token_id,
            pad_id: cfg.text.pad_token_id,
            image_start_id: start,
            image_end_id: end,
        }
    }

    /// An RGB image already at the model size (`h × w × 3` bytes, row-major, interleaved) →
    /// `[3, h, w]` f32 pixel values `(x/255 − mean)/std` with CLIP statistics.
    pub fn preprocess(&self, rgb: &[u8], h: usize, w: usize) -> Result<Tensor> {
        if h == 0 || w == 0 {
            return Err(Error::Invalid { op: OP, msg: format!("empty image ({h}×{w})") });
        }
        if rgb.len() != h * w * 3 {
            let channels = if rgb.len().is_multiple_of(h * w) {
                format!("{} channels", rgb.len() / (h * w))
            } else {
                "a size that is not a multiple of h×w".to_string()
            };
            return Err(Error::Invalid {
                op: OP,
                msg: format!(
                    "expected {h}×{w} RGB (3 channels, {} bytes), found {} bytes ({channels})",
                    h * w * 3,
                    rgb.len()
                ),
            });
        }
        if h != self.image_size || w != self.image_size {
            return Err(Error::Invalid {
                op: OP,
                msg: format!("image is {h}×{w}, the model takes {s}×{s}: resize it first", s = self.image_size),
            });
        }
        let mut out = vec![0f32; 3 * h * w];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * h * w + i] = ((px[c] as f64 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]) as f32;
            }
        }
        Tensor::from_vec(out, &[3, h, w], Device::Cpu)
    }

    /// `[<s>, <image>, 4, 5, …, 4 + Q − 1, </image>, prompt…]` and the matching
    /// `image_embeds_position_mask` (1 on the `Q` placeholders).
    pub fn prompt(&self, prompt_ids: &[i64]) -> (Vec<i64>, Vec<u8>) {
        let q = self.latent_query_num;
        let mut ids = Vec::with_capacity(q + 3 + prompt_ids.len());
        ids.push(self.bos_id);
        ids.push(self.image_start_id);
        ids.extend((0..q as i64).map(|i| FIRST_IMAGE_ID + i));
        ids.push(self.image_end_id);
        ids.extend_from_slice(prompt_ids);
        let mut mask = vec![0u8; ids.len()];
        mask[2..2 + q].fill(1);
        (ids, mask)
    }

    /// A batch: one `[3, H, W]` image per prompt, prompts laid out by [`prompt`](Self::prompt)
    /// and **left**-padded with the pad id to a common length; `attention_mask` is 0 on padding.
    pub fn collate(&self, pixels: &[Tensor], prompts: &[Vec<i64>]) -> Result<BackboneInput> {
        if pixels.len() != prompts.len() || pixels.is_empty() {
            return Err(Error::Invalid {
                op: OP,
                msg: format!(
                    "need one image per prompt and at least one of each, found {} images and {} prompts",
                    pixels.len(),
                    prompts.len()
                ),
            });
        }
        for (i, p) in pixels.iter().enumerate() {
            if p.shape() != [3, self.image_size, self.image_size] {
                return Err(Error::Invalid {
                    op: OP,
                    msg: format!("image {i} must be [3, {s}, {s}], found {:?}", p.shape(), s = self.image_size),
                });
            }
        }
        let laid: Vec<(Vec<i64>, Vec<u8>)> = prompts.iter().map(|p| self.prompt(p)).collect();
        let l = laid.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let b = laid.len();
        let (mut ids, mut att, mut img) =
            (Vec::with_capacity(b * l), Vec::with_capacity(b * l), Vec::with_capacity(b * l));
        for (row_ids, row_mask) in &laid {
            let pad = l - row_ids.len();
            ids.extend(std::iter::repeat_n(self.pad_id, pad).chain(row_ids.iter().copied()));
            att.extend(std::iter::repeat_n(0u8, pad).chain(std::iter::repeat_n(1u8, row_ids.len())));
            img.extend(std::iter::repeat_n(0u8, pad).chain(row_mask.iter().copied()));
        }
        let views: Vec<&Tensor> = pixels.iter().collect();
        Ok(BackboneInput {
            pixel_values: Tensor::stack(&views, 0)?,
            image_grid_thw: None,
            input_ids: Tensor::from_vec(ids, &[b, l], Device::Cpu)?,
            attention_mask: Tensor::from_vec(att, &[b, l], Device::Cpu)?,
            token_type: Tensor::from_vec(img, &[b, l], Device::Cpu)?,
        })
    }
}
