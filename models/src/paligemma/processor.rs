//! PaliGemma's processor, mirroring transformers 5.24.0 `SiglipImageProcessor` (rescale 1/255,
//! normalise with mean 0.5 and std 0.5, channels first) and `PaliGemmaProcessor`'s token layout
//! `[image]×N, bos, prompt…, "\n"` (token type 0) + optional `suffix…, eos` (token type 1), with
//! batches LEFT-padded. Prompts come already tokenized and images at the model size (see
//! [`PaliGemmaProcessor::resize`]); [`PaliGemmaProcessor::from_checkpoint`] reads a checkpoint's
//! own `preprocessor_config.json` and tokenizer.

use super::config::{PaliGemmaConfig, NEWLINE_TOKEN};
use crate::common::backbone::BackboneInput;
use crate::common::image::{RgbImage, SIGLIP_MEAN, SIGLIP_STD};
use crate::common::processor_files::{check_config_id, single_token_id, PixelNormalization, ProcessorFiles, Resample};
use crate::common::tokenizer::Tokenizer;
use std::path::Path;
use vlm4vla_engine::{Device, Error, Result, Tensor};

const WHERE: &str = "paligemma processor";

/// Pixels of one RGB image (`h × w × 3` bytes, row-major, interleaved) as normalised f32
/// `[3, h, w]` in `[-1, 1]`: `(x/255 − 0.5) / 0.5` (transformers' rescale in f64, normalise in f32).
///
/// ```
/// use vlm4vla_models::paligemma::preprocess;
/// let px = preprocess(&[0, 255, 51, 0, 255, 51], 1, 2).unwrap();
/// assert_eq!(px.shape(), &[3, 1, 2]);
/// assert_eq!(px.to_vec::<f32>().unwrap()[..2], [-1.0, -1.0]);
/// ```
pub fn preprocess(rgb: &[u8], h: usize, w: usize) -> Result<Tensor> {
    normalize(rgb, h, w, &PixelNormalization::new(SIGLIP_MEAN, SIGLIP_STD))
}

fn normalize(rgb: &[u8], h: usize, w: usize, normalization: &PixelNormalization) -> Result<Tensor> {
    if h == 0 || w == 0 {
        return Err(Error::tensor(WHERE, "image", format!("zero-size image ({h}×{w})")));
    }
    if rgb.len() != h * w * 3 {
        let detail = if rgb.len().is_multiple_of(h * w) {
            format!("{} channels", rgb.len() / (h * w))
        } else {
            "a size that is not a whole number of pixels".to_string()
        };
        return Err(Error::tensor(
            WHERE,
            "image",
            format!("expected {h}×{w}×3 = {} RGB bytes, found {} ({detail})", h * w * 3, rgb.len()),
        ));
    }
    Tensor::from_vec(normalization.planes(rgb), &[3, h, w], Device::Cpu)
}

/// One prompt laid out as the model reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptTokens {
    pub input_ids: Vec<i64>,
    /// 0 on the prefix (image tokens, bos, prompt, "\n"), 1 on the suffix.
    pub token_type_ids: Vec<u8>,
}

/// Prompt layout and batching for one config.
#[derive(Clone, Debug)]
pub struct PaliGemmaProcessor {
    pub image_size: usize,
    pub num_image_tokens: usize,
    pub image_token_id: i64,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
    pub pad_token_id: i64,
    pub newline_token_id: i64,
    /// Rescale factor, mean and std of the image processor.
    pub normalization: PixelNormalization,
    /// `do_resize` and `resample`: how [`resize`](Self::resize) brings an image to the model size.
    pub do_resize: bool,
    pub resample: Resample,
}

impl PaliGemmaProcessor {
    /// The processor of the real checkpoints (`paligemma-3b-pt-224`'s files: "\n" is 108, SigLIP
    /// normalisation, bicubic) for `cfg`'s sizes and ids. Use
    /// [`from_checkpoint`](Self::from_checkpoint) for a checkpoint's own files.
    pub fn new(cfg: &PaliGemmaConfig) -> Self {
        PaliGemmaProcessor {
            image_size: cfg.vision.image_size,
            num_image_tokens: cfg.num_image_tokens(),
            image_token_id: cfg.image_token_id,
            bos_token_id: cfg.bos_token_id,
            eos_token_id: cfg.eos_token_id,
            pad_token_id: cfg.pad_token_id,
            newline_token_id: NEWLINE_TOKEN,
            normalization: PixelNormalization::new(SIGLIP_MEAN, SIGLIP_STD),
            do_resize: true,
            resample: Resample::Bicubic,
        }
    }

    /// The processor of the checkpoint in `dir` (transformers 5.25 `SiglipImageProcessor` +
    /// `PaliGemmaProcessor`): the image processor's `size` (must be the model's `image_size`),
    /// `image_seq_length` (must be the model's image-token count), rescale and normalisation; every
    /// token id from `tok`: `<image>` (must be `config.json`'s `image_token_index`), the
    /// `bos_token` / `eos_token` / `pad_token` of `tokenizer_config.json` and `"\n"`. Errors name
    /// the file and the field or token.
    pub fn from_checkpoint(dir: &Path, cfg: &PaliGemmaConfig, tok: &Tokenizer) -> Result<Self> {
        let files = ProcessorFiles::read_with_defaults(dir, SIGLIP_MEAN, SIGLIP_STD)?;
        let image_size = files.image.square_size("size", cfg.vision.image_size)?;
        let num_image_tokens = match files.processor_usize("image_seq_length")? {
            Some((n, _)) if n == cfg.num_image_tokens() => n,
            Some((n, file)) => {
                return Err(file.error(
                    "image_seq_length",
                    format!("{n} does not match the model's {} image tokens (config.json)", cfg.num_image_tokens()),
                ))
            }
            None => return Err(files.image.file.error("image_seq_length", "is missing")),
        };
        let image_token_id = tok.require_id("<image>")?;
        check_config_id(tok, "<image>", image_token_id, "image_token_index", cfg.image_token_id)?;
        Ok(PaliGemmaProcessor {
            image_size,
            num_image_tokens,
            image_token_id,
            bos_token_id: files.special_token_id(tok, "bos_token", "<bos>")?,
            eos_token_id: files.special_token_id(tok, "eos_token", "<eos>")?,
            pad_token_id: files.special_token_id(tok, "pad_token", "<pad>")?,
            newline_token_id: single_token_id(tok, "\n")?,
            normalization: files.image.normalization,
            do_resize: files.image.do_resize,
            resample: files.image.resample,
        })
    }

    /// `img` at the model size (`image_size²`), resized with `resample` when `do_resize` is on;
    /// an error naming the size when it is off and the image is another size.
    pub fn resize(&self, img: &RgbImage) -> Result<RgbImage> {
        let s = self.image_size;
        if (img.width, img.height) == (s, s) {
            return Ok(img.clone());
        }
        if !self.do_resize {
            return Err(Error::tensor(
                WHERE,
                "image",
                format!("{}×{} is not the model size {s}×{s} and do_resize is off", img.height, img.width),
            ));
        }
        self.resample.resize(img, s, s)
    }

    /// `[image]×N, bos, prompt…, "\n"` with type 0; then, when given, `suffix…, eos` with type 1.
    ///
    /// ```
    /// use vlm4vla_models::paligemma::{PaliGemmaConfig, PaliGemmaProcessor};
    /// let p = PaliGemmaProcessor::new(&PaliGemmaConfig::paligemma_3b_pt_224());
    /// let t = p.prompt(&[9], None);
    /// assert_eq!(t.input_ids.len(), 256 + 3);
    /// assert_eq!(t.input_ids[255..], [257152, 2, 9, 108]);
    /// ```
    pub fn prompt(&self, prompt_ids: &[i64], suffix_ids: Option<&[i64]>) -> PromptTokens {
        let mut ids = vec![self.image_token_id; self.num_image_tokens];
        ids.push(self.bos_token_id);
        ids.extend_from_slice(prompt_ids);
        ids.push(self.newline_token_id);
        let mut types = vec![0u8; ids.len()];
        if let Some(s) = suffix_ids {
            ids.extend_from_slice(s);
            ids.push(self.eos_token_id);
            types.resize(ids.len(), 1);
        }
        PromptTokens { input_ids: ids, token_type_ids: types }
    }

    /// Stack images already at the model size (`S × S × 3` bytes each) into `[B, 3, S, S]`.
    pub fn pixel_values(&self, images: &[&[u8]]) -> Result<Tensor> {
        if images.is_empty() {
            return Err(Error::tensor(WHERE, "images", "no images in the batch"));
        }
        let s = self.image_size;
        let mut px = Vec::with_capacity(images.len());
        for (i, img) in images.iter().enumerate() {
            if img.len() != s * s * 3 {
                return Err(Error::tensor(
                    WHERE,
                    format!("images[{i}]"),
                    format!("expected {s}×{s}×3 = {} RGB bytes at the model size, found {}", s * s * 3, img.len()),
                ));
            }
            px.push(normalize(img, s, s, &self.normalization)?);
        }
        let refs: Vec<&Tensor> = px.iter().collect();
        Tensor::stack(&refs, 0)
    }

    /// Collate prompts (one per image) into a LEFT-padded batch: pad id and token type 0 on the
    /// left, attention mask 1 on real tokens.
    pub fn collate(&self, prompts: &[PromptTokens], pixel_values: Tensor) -> Result<BackboneInput> {
        if prompts.is_empty() {
            return Err(Error::tensor(WHERE, "prompts", "no prompts in the batch"));
        }
        if pixel_values.shape().first() != Some(&prompts.len()) {
            return Err(Error::tensor(
                WHERE,
                "pixel_values",
                format!("{} prompts but pixel_values of shape {:?}", prompts.len(), pixel_values.shape()),
            ));
        }
        let l = prompts.iter().map(|p| p.input_ids.len()).max().unwrap_or(0);
        let b = prompts.len();
        let (mut ids, mut mask, mut types) = (Vec::with_capacity(b * l), Vec::with_capacity(b * l), Vec::new());
        for (i, p) in prompts.iter().enumerate() {
            if p.input_ids.len() != p.token_type_ids.len() {
                return Err(Error::tensor(
                    WHERE,
                    format!("prompts[{i}]"),
                    format!("{} ids but {} token types", p.input_ids.len(), p.token_type_ids.len()),
                ));
            }
            let pad = l - p.input_ids.len();
            ids.extend(std::iter::repeat_n(self.pad_token_id, pad).chain(p.input_ids.iter().copied()));
            mask.extend(std::iter::repeat_n(0u8, pad).chain(std::iter::repeat_n(1u8, p.input_ids.len())));
            types.extend(std::iter::repeat_n(0u8, pad).chain(p.token_type_ids.iter().copied()));
        }
        Ok(BackboneInput {
            pixel_values,
            image_grid_thw: None,
            input_ids: Tensor::from_vec(ids, &[b, l], Device::Cpu)?,
            attention_mask: Tensor::from_vec(mask, &[b, l], Device::Cpu)?,
            token_type: Tensor::from_vec(types, &[b, l], Device::Cpu)?,
        })
    }
}
