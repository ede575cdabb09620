//! Qwen2.5-VL input preparation (mirrors transformers 5.24.0 `Qwen2VLImageProcessorPil` and
//! `Qwen2_5_VLProcessor`): CLIP normalisation and block-major patchify of an image whose sides
//! are already multiples of 28, the chat-template token layout with the expanded `<|image_pad|>`
//! run, and left-padded batch collation.
//!
//! The free functions use the real checkpoints' settings and take images already resized;
//! [`Qwen25VlProcessor::from_checkpoint`] reads a checkpoint's own `preprocessor_config.json`
//! (`min_pixels` / `max_pixels`, normalisation) and tokenizer, and also resizes with
//! [`smart_resize`] and the shared Pillow-exact resampler.

use super::config::Qwen25VlConfig;
use crate::common::image::RgbImage;
use crate::common::processor_files::{check_config_id, single_token_id, PixelNormalization, ProcessorFiles, Resample};
use crate::common::tokenizer::Tokenizer;
use crate::BackboneInput;
use std::path::Path;
use vlm4vla_engine::{Device, Error, Result, Tensor};

const OP: &str = "qwen2_5_vl preprocess";

/// OpenAI CLIP statistics (transformers `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`).
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// `preprocessor_config.json` defaults of the Qwen2.5-VL checkpoints.
pub const MIN_PIXELS: usize = 3136;
pub const MAX_PIXELS: usize = 12845056;

pub use crate::common::image::smart_resize;

/// One image as the vision tower takes it.
#[derive(Clone, Debug)]
pub struct ProcessedImage {
    /// `[grid_h · grid_w, 3 · temporal · patch²]` f32 patch rows (block-major).
    pub pixel_values: Tensor,
    /// `(1, grid_h, grid_w)` in patches.
    pub grid_thw: [usize; 3],
}

/// Normalise and patchify an RGB image (`height × width × 3` bytes, row-major, sides multiples
/// of `patch · merge` = 28): `((x·(1/255)) − mean) / std` in f32 as transformers' PIL backend
/// computes it, then rows laid out `(c, t, py, px)` with the still frame duplicated in time.
pub fn preprocess(rgb: &[u8], height: usize, width: usize, cfg: &Qwen25VlConfig) -> Result<ProcessedImage> {
    let clip = PixelNormalization::new(CLIP_MEAN.map(|x| x as f32), CLIP_STD.map(|x| x as f32));
    patchify(rgb, height, width, cfg, &clip)
}

/// [`preprocess`] with the checkpoint's own rescale factor, mean and std.
pub fn patchify(
    rgb: &[u8],
    height: usize,
    width: usize,
    cfg: &Qwen25VlConfig,
    normalization: &PixelNormalization,
) -> Result<ProcessedImage> {
    cfg.validate().map_err(|msg| Error::Invalid { op: OP, msg })?;
    let v = &cfg.vision;
    let (p, m, tp) = (v.patch_size, v.spatial_merge_size, v.temporal_patch_size);
    if v.in_channels != 3 {
        return Err(Error::Invalid {
            op: OP,
            msg: format!("the config expects {} channels; only RGB is supported", v.in_channels),
        });
    }
    if height == 0 || width == 0 {
        return Err(Error::Invalid { op: OP, msg: format!("image has zero size ({height}×{width})") });
    }
    let pixels = height * width;
    if rgb.len() != pixels * 3 {
        let msg = if rgb.len().is_multiple_of(pixels) {
            format!(
                "image of {height}×{width} has {} channels ({} bytes); expected 3 (RGB, {} bytes)",
                rgb.len() / pixels,
                rgb.len(),
                pixels * 3
            )
        } else {
            format!("image buffer has {} bytes; a {height}×{width} RGB image needs {}", rgb.len(), pixels * 3)
        };
        return Err(Error::Invalid { op: OP, msg });
    }
    let factor = p * m;
    if !height.is_multiple_of(factor) || !width.is_multiple_of(factor) {
        return Err(Error::Invalid {
            op: OP,
            msg: format!("image sides {height}×{width} must be multiples of {factor}; resize first (see smart_resize)"),
        });
    }
    let norm = |y: usize, x: usize, c: usize| -> f32 { normalization.apply(rgb[(y * width + x) * 3 + c], c) };
    let (gh, gw) = (height / p, width / p);
    let row = 3 * tp * p * p;
    let mut out = Vec::with_capacity(gh * gw * row);
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for mh in 0..m {
                for mw in 0..m {
                    let (y0, x0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                    for c in 0..3 {
                        for _t in 0..tp {
                            for py in 0..p {
                                for px in 0..p {
                                    out.push(norm(y0 + py, x0 + px, c));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(ProcessedImage { pixel_values: Tensor::from_vec(out, &[gh * gw, row], Device::Cpu)?, grid_thw: [1, gh, gw] })
}

/// The system message the chat template inserts when none is given.
pub const DEFAULT_SYSTEM_MESSAGE: &str = "You are a helpful assistant.";

/// The special and template token ids of the chat layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatTokens {
    pub im_start: i64,
    pub im_end: i64,
    /// `<|endoftext|>`, the padding id of the processor.
    pub pad: i64,
    pub newline: i64,
    pub system: Vec<i64>,
    /// "You are a helpful assistant."
    pub default_system: Vec<i64>,
    pub user: Vec<i64>,
    pub assistant: Vec<i64>,
    pub vision_start: i64,
    pub vision_end: i64,
    pub image_pad: i64,
}

impl ChatTokens {
    /// The Qwen2.5-VL tokenizer's ids (MODELS.md §1.3).
    pub fn qwen2_5_vl() -> Self {
        ChatTokens {
            im_start: 151644,
            im_end: 151645,
            pad: 151643,
            newline: 198,
            system: vec![8948],
            default_system: vec![2610, 525, 264, 10950, 17847, 13],
            user: vec![872],
            assistant: vec![77091],
            vision_start: 151652,
            vision_end: 151653,
            image_pad: 151655,
        }
    }

    /// The ids of the chat template's tokens in `tok`: the special tokens by name (`pad` spelled
    /// `pad_token`, e.g. `<|endoftext|>`), the role names, `"\n"` and the default system message
    /// encoded as the template's text. Errors name the tokenizer file and the missing token.
    pub fn from_tokenizer(tok: &Tokenizer, pad_token: &str) -> Result<Self> {
        let enc = |t: &str| tok.encode(t, false);
        Ok(ChatTokens {
            im_start: tok.require_id("<|im_start|>")?,
            im_end: tok.require_id("<|im_end|>")?,
            pad: tok.require_id(pad_token)?,
            newline: single_token_id(tok, "\n")?,
            system: enc("system")?,
            default_system: enc(DEFAULT_SYSTEM_MESSAGE)?,
            user: enc("user")?,
            assistant: enc("assistant")?,
            vision_start: tok.require_id("<|vision_start|>")?,
            vision_end: tok.require_id("<|vision_end|>")?,
            image_pad: tok.require_id("<|image_pad|>")?,
        })
    }

    /// The tiny model's ids (`Qwen25VlConfig::tiny()`, vocabulary 128; the fixture generator uses
    /// the same).
    pub fn tiny() -> Self {
        ChatTokens {
            im_start: 110,
            im_end: 111,
            pad: 112,
            newline: 10,
            system: vec![20],
            default_system: vec![21, 22, 23, 24],
            user: vec![30],
            assistant: vec![31],
            vision_start: 118,
            vision_end: 119,
            image_pad: 120,
        }
    }
}

/// One sample's token ids and `mm_token_type_ids` (1 on image pads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptLayout {
    pub input_ids: Vec<i64>,
    pub mm_token_type_ids: Vec<u8>,
}

/// The chat template with the default system message and `add_generation_prompt`:
/// `<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n`
/// then per image `<|vision_start|><|image_pad|>×n<|vision_end|>`, the prompt's ids,
/// `<|im_end|>\n<|im_start|>assistant\n`. `n = t·h·w / merge²` per image grid.
pub fn chat_layout(
    chat: &ChatTokens,
    prompt_ids: &[i64],
    image_grids: &[[usize; 3]],
    cfg: &Qwen25VlConfig,
) -> PromptLayout {
    let mut ids = vec![chat.im_start];
    ids.extend(&chat.system);
    ids.push(chat.newline);
    ids.extend(&chat.default_system);
    ids.extend([chat.im_end, chat.newline, chat.im_start]);
    ids.extend(&chat.user);
    ids.push(chat.newline);
    for &g in image_grids {
        ids.push(chat.vision_start);
        ids.extend(std::iter::repeat_n(chat.image_pad, cfg.image_tokens(g)));
        ids.push(chat.vision_end);
    }
    ids.extend(prompt_ids);
    ids.extend([chat.im_end, chat.newline, chat.im_start]);
    ids.extend(&chat.assistant);
    ids.push(chat.newline);
    let mm_token_type_ids = ids.iter().map(|&t| u8::from(t == chat.image_pad)).collect();
    PromptLayout { input_ids: ids, mm_token_type_ids }
}

/// Left-pad samples into one batch: `input_ids` padded with `pad_id`, `attention_mask` 0 on
/// padding, `mm_token_type_ids` as `token_type`, and all images' pixel rows concatenated in
/// sample order.
pub fn collate(samples: &[(PromptLayout, Vec<ProcessedImage>)], pad_id: i64) -> Result<BackboneInput> {
    if samples.is_empty() {
        return Err(Error::Invalid { op: "qwen2_5_vl collate", msg: "empty batch".into() });
    }
    let len = samples.iter().map(|(l, _)| l.input_ids.len()).max().unwrap_or(0);
    let b = samples.len();
    let mut ids = vec![pad_id; b * len];
    let mut mask = vec![0u8; b * len];
    let mut types = vec![0u8; b * len];
    let mut pixels = Vec::new();
    let mut grids = Vec::new();
    for (i, (layout, images)) in samples.iter().enumerate() {
        let off = i * len + len - layout.input_ids.len();
        ids[off..(i + 1) * len].copy_from_slice(&layout.input_ids);
        types[off..(i + 1) * len].copy_from_slice(&layout.mm_token_type_ids);
        mask[off..(i + 1) * len].iter_mut().for_each(|m| *m = 1);
        for img in images {
            pixels.push(img.pixel_values.clone());
            grids.push(img.grid_thw);
        }
    }
    let pixel_values = if pixels.is_empty() {
        Tensor::zeros(&[0, 1176], vlm4vla_engine::DType::F32, Device::Cpu)?
    } else {
        Tensor::cat(&pixels.iter().collect::<Vec<_>>(), 0)?
    };
    Ok(BackboneInput {
        pixel_values,
        image_grid_thw: Some(grids),
        input_ids: Tensor::from_vec(ids, &[b, len], Device::Cpu)?,
        attention_mask: Tensor::from_vec(mask, &[b, len], Device::Cpu)?,
        token_type: Tensor::from_vec(types, &[b, len], Device::Cpu)?,
    })
}

/// The class defaults of `Qwen2VLImageProcessor` (`size` when the file has none).
const DEFAULT_MIN_PIXELS: usize = 56 * 56;
const DEFAULT_MAX_PIXELS: usize = 28 * 28 * 1280;

/// Qwen2.5-VL's processor as a checkpoint's files define it (transformers 5.25
/// `Qwen2VLImageProcessorPil` + `Qwen2_5_VLProcessor`): `smart_resize` between `min_pixels` and
/// `max_pixels`, the checkpoint's normalisation, the chat layout with the tokenizer's ids.
#[derive(Clone, Debug)]
pub struct Qwen25VlProcessor {
    pub chat: ChatTokens,
    pub normalization: PixelNormalization,
    /// `do_resize`: resize with `smart_resize` (else the sides must already be multiples of 28).
    pub do_resize: bool,
    pub resample: Resample,
    /// `size.shortest_edge` (or the older top-level `min_pixels`, which wins).
    pub min_pixels: usize,
    /// `size.longest_edge` (or the older top-level `max_pixels`, which wins).
    pub max_pixels: usize,
    cfg: Qwen25VlConfig,
}

impl Qwen25VlProcessor {
    /// The processor of the real checkpoints' files (`Qwen2.5-VL-*-Instruct`: OpenAI CLIP
    /// normalisation, bicubic, [`MIN_PIXELS`]..[`MAX_PIXELS`]) for `cfg` with the ids `chat`, for
    /// a built-in config that comes without files. Use [`from_checkpoint`](Self::from_checkpoint)
    /// for a checkpoint's own files.
    pub fn new(cfg: &Qwen25VlConfig, chat: ChatTokens) -> Self {
        Qwen25VlProcessor {
            chat,
            normalization: PixelNormalization::new(CLIP_MEAN.map(|x| x as f32), CLIP_STD.map(|x| x as f32)),
            do_resize: true,
            resample: Resample::Bicubic,
            min_pixels: MIN_PIXELS,
            max_pixels: MAX_PIXELS,
            cfg: cfg.clone(),
        }
    }

    /// The processor of the checkpoint in `dir`: `preprocessor_config.json` (or the
    /// `image_processor` of `processor_config.json`) for the image settings, whose
    /// `patch_size` / `temporal_patch_size` / `merge_size` must agree with `cfg`;
    /// `tokenizer_config.json`'s `pad_token`; every token id from `tok`, where the image and vision
    /// tokens must agree with `cfg`. Errors name the file and the field or token.
    ///
    /// ```no_run
    /// use std::path::Path;
    /// use vlm4vla_models::common::tokenizer::Tokenizer;
    /// use vlm4vla_models::qwen2_5_vl::{Qwen25VlConfig, Qwen25VlProcessor};
    /// let dir = Path::new("Qwen2.5-VL-3B-Instruct");
    /// let cfg = Qwen25VlConfig::from_file(dir.join("config.json")).unwrap();
    /// let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    /// let p = Qwen25VlProcessor::from_checkpoint(dir, &cfg, &tok).unwrap();
    /// ```
    pub fn from_checkpoint(dir: &Path, cfg: &Qwen25VlConfig, tok: &Tokenizer) -> Result<Self> {
        cfg.validate().map_err(|msg| Error::file(dir.join("config.json"), msg))?;
        let files = ProcessorFiles::read(dir)?;
        let f = &files.image.file;
        let v = &cfg.vision;
        for (field, ours, default) in [
            ("patch_size", v.patch_size, 14),
            ("temporal_patch_size", v.temporal_patch_size, 2),
            ("merge_size", v.spatial_merge_size, 2),
        ] {
            let value = f.usize(field)?.unwrap_or(default);
            if value != ours {
                return Err(f.error(field, format!("{value} does not match the model's {ours} (config.json)")));
            }
        }
        let min_pixels = match f.usize("min_pixels")? {
            Some(n) => n,
            None => f.usize("size.shortest_edge")?.unwrap_or(DEFAULT_MIN_PIXELS),
        };
        let max_pixels = match f.usize("max_pixels")? {
            Some(n) => n,
            None => f.usize("size.longest_edge")?.unwrap_or(DEFAULT_MAX_PIXELS),
        };
        if min_pixels == 0 || min_pixels > max_pixels {
            return Err(f.error(
                "size",
                format!("min_pixels {min_pixels} must be positive and at most max_pixels {max_pixels}"),
            ));
        }
        let chat = ChatTokens::from_tokenizer(tok, &files.special_token("pad_token", "<|endoftext|>")?)?;
        check_config_id(tok, "<|image_pad|>", chat.image_pad, "image_token_id", cfg.image_token_id)?;
        check_config_id(
            tok,
            "<|vision_start|>",
            chat.vision_start,
            "vision_start_token_id",
            cfg.vision_start_token_id,
        )?;
        check_config_id(tok, "<|vision_end|>", chat.vision_end, "vision_end_token_id", cfg.vision_end_token_id)?;
        Ok(Qwen25VlProcessor {
            chat,
            normalization: files.image.normalization,
            do_resize: files.image.do_resize,
            resample: files.image.resample,
            min_pixels,
            max_pixels,
            cfg: cfg.clone(),
        })
    }

    /// The `(height, width)` an image of `height × width` is resized to.
    pub fn target_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        if !self.do_resize {
            return Ok((height, width));
        }
        let factor = self.cfg.vision.patch_size * self.cfg.vision.spatial_merge_size;
        smart_resize(height, width, factor, self.min_pixels, self.max_pixels)
    }

    /// Resize (see [`target_size`](Self::target_size)), normalise and patchify one image.
    pub fn image(&self, img: &RgbImage) -> Result<ProcessedImage> {
        let (h, w) = self.target_size(img.height, img.width)?;
        let resized = if (h, w) == (img.height, img.width) { img.clone() } else { self.resample.resize(img, w, h)? };
        patchify(&resized.data, h, w, &self.cfg, &self.normalization)
    }

    /// The chat layout of one sample (see [`chat_layout`]).
    pub fn prompt(&self, prompt_ids: &[i64], image_grids: &[[usize; 3]]) -> PromptLayout {
        chat_layout(&self.chat, prompt_ids, image_grids, &self.cfg)
    }

    /// Left-pad samples into one batch with the tokenizer's pad id (see [`collate`]).
    pub fn collate(&self, samples: &[(PromptLayout, Vec<ProcessedImage>)]) -> Result<BackboneInput> {
        collate(samples, self.chat.pad)
    }
}
