//! The Kosmos-2 processor: `CLIPImageProcessor`'s resize, centre crop and normalisation, and the
//! prompt layout of `Kosmos2Processor` in transformers 5.24.0
//! (`models/kosmos2/processing_kosmos2.py`), with left-padded batch collation.
//! [`Kosmos2Processor::from_checkpoint`] reads a checkpoint's own processor files and tokenizer.

use super::config::Kosmos2Config;
use crate::common::backbone::BackboneInput;
use crate::common::image::{center_crop, shortest_edge_size, RgbImage};
use crate::common::processor_files::{PixelNormalization, ProcessorFiles, Resample};
use crate::common::tokenizer::Tokenizer;
use std::path::Path;
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
    /// The first image placeholder id (`<unk>` + 1); the `latent_query_num` placeholders follow.
    pub first_image_id: i64,
    /// `num_patch_index_tokens`: how many `<patch_index_NNNN>` grounding tokens the vocabulary has.
    pub num_patch_index_tokens: usize,
    /// Rescale factor, mean and std of the image processor.
    pub normalization: PixelNormalization,
    /// `do_resize` / `size.shortest_edge` / `resample` and `do_center_crop` (to `image_size`):
    /// how [`resize`](Self::resize) brings an image to the model size.
    pub do_resize: bool,
    pub shortest_edge: usize,
    pub resample: Resample,
    pub do_center_crop: bool,
}

/// The number of `<patch_index_NNNN>` tokens `Kosmos2Processor` adds by default.
const DEFAULT_PATCH_INDEX_TOKENS: usize = 1024;

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
            first_image_id: FIRST_IMAGE_ID,
            num_patch_index_tokens: DEFAULT_PATCH_INDEX_TOKENS,
            normalization: PixelNormalization::new(CLIP_MEAN.map(|x| x as f32), CLIP_STD.map(|x| x as f32)),
            do_resize: true,
            shortest_edge: cfg.vision.image_size,
            resample: Resample::Bicubic,
            do_center_crop: true,
        }
    }

    /// The processor of the checkpoint in `dir` (transformers 5.25 `CLIPImageProcessor` +
    /// `Kosmos2Processor`): the image processor's `size.shortest_edge`, `crop_size` (must be the
    /// model's `image_size`), rescale and normalisation; `num_patch_index_tokens` from
    /// `processor_config.json` (default 1024; the tokenizer must hold those
    /// `<patch_index_NNNN>` tokens); every token id from `tok`: `<image>`, `</image>`, and the
    /// `bos_token` / `pad_token` / `unk_token` of `tokenizer_config.json` (the image placeholders
    /// start at `<unk>` + 1). Errors name the file and the field or token.
    pub fn from_checkpoint(dir: &Path, cfg: &Kosmos2Config, tok: &Tokenizer) -> Result<Kosmos2Processor> {
        let files = ProcessorFiles::read(dir)?;
        let f = &files.image.file;
        let size = cfg.vision.image_size;
        let do_center_crop = f.bool("do_center_crop")?.unwrap_or(true);
        let shortest_edge = f.require_positive("size.shortest_edge")?;
        if do_center_crop {
            files.image.square_size("crop_size", size)?;
        } else if shortest_edge != size {
            return Err(f.error(
                "size.shortest_edge",
                format!(
                    "{shortest_edge} without a center crop does not give the model's image_size {size} (config.json)"
                ),
            ));
        }
        let num_patch_index_tokens =
            files.processor_usize("num_patch_index_tokens")?.map_or(DEFAULT_PATCH_INDEX_TOKENS, |(n, _)| n);
        if num_patch_index_tokens > 0 {
            tok.require_id(&format!("<patch_index_{:04}>", num_patch_index_tokens - 1))?;
        }
        let unk = files.special_token_id(tok, "unk_token", "<unk>")?;
        let first_image_id = unk + 1;
        let last = first_image_id + cfg.latent_query_num as i64 - 1;
        if last >= cfg.text.vocab_size as i64 {
            return Err(Error::file(
                tok.path(),
                format!(
                    "the {} image placeholders after <unk> ({unk}) run to id {last}, past the model's vocab_size {} (config.json)",
                    cfg.latent_query_num, cfg.text.vocab_size
                ),
            ));
        }
        Ok(Kosmos2Processor {
            image_size: size,
            latent_query_num: cfg.latent_query_num,
            bos_id: files.special_token_id(tok, "bos_token", "<s>")?,
            pad_id: files.special_token_id(tok, "pad_token", "<pad>")?,
            image_start_id: tok.require_id("<image>")?,
            image_end_id: tok.require_id("</image>")?,
            first_image_id,
            num_patch_index_tokens,
            normalization: files.image.normalization,
            do_resize: files.image.do_resize,
            shortest_edge,
            resample: files.image.resample,
            do_center_crop,
        })
    }

    /// `img` at the model size as `CLIPImageProcessor` makes it: the shorter side resized to
    /// `shortest_edge` (aspect kept) when `do_resize` is on, then the centre `image_size²` crop
    /// when `do_center_crop` is on. An image already at the model size is returned as is.
    pub fn resize(&self, img: &RgbImage) -> Result<RgbImage> {
        let s = self.image_size;
        if (img.width, img.height) == (s, s) && (!self.do_resize || self.shortest_edge == s) {
            return Ok(img.clone());
        }
        let mut out = img.clone();
        if self.do_resize {
            let (h, w) = shortest_edge_size(img.height, img.width, self.shortest_edge);
            out = self.resample.resize(&out, w, h)?;
        }
        if self.do_center_crop {
            out = center_crop(&out, s, s)?;
        }
        Ok(out)
    }

    /// An RGB image already at the model size (`h × w × 3` bytes, row-major, interleaved) →
    /// `[3, h, w]` f32 pixel values `(x/255 − mean)/std` with the processor's statistics (CLIP's by
    /// default), rescaled in f64 and normalised in f32 as transformers does.
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
        Tensor::from_vec(self.normalization.planes(rgb), &[3, h, w], Device::Cpu)
    }

    /// `[<s>, <image>, F, F + 1, …, F + Q − 1, </image>, prompt…]` (`F` = `first_image_id`) and the matching
    /// `image_embeds_position_mask` (1 on the `Q` placeholders).
    pub fn prompt(&self, prompt_ids: &[i64]) -> (Vec<i64>, Vec<u8>) {
        let q = self.latent_query_num;
        let mut ids = Vec::with_capacity(q + 3 + prompt_ids.len());
        ids.push(self.bos_id);
        ids.push(self.image_start_id);
        ids.extend((0..q as i64).map(|i| self.first_image_id + i));
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
