//! A checkpoint's processor files, read once for every family: `preprocessor_config.json` (the
//! image processor's settings), `processor_config.json` (the processor's own keys; transformers
//! 5.x also nests a copy of the image processor under `image_processor`) and
//! `tokenizer_config.json` (how the special tokens are spelled). Field names are the ones
//! transformers 5.25 writes (`image_processing_utils.py`, `processing_utils.py`); errors name the
//! file and the field.
//!
//! ```no_run
//! use vlm4vla_models::common::processor_files::ProcessorFiles;
//! let files = ProcessorFiles::read(std::path::Path::new("checkpoint")).unwrap();
//! let x = files.image.normalization.apply(255, 0);
//! let merge = files.image.file.usize("merge_size").unwrap();
//! # let _ = (x, merge);
//! ```

use super::image::{resize_bicubic, resize_bilinear, RgbImage};
use super::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};
use vlm4vla_engine::{Error, Result};

/// The image processor's file name.
pub const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";
/// The processor's file name.
pub const PROCESSOR_CONFIG: &str = "processor_config.json";
/// The tokenizer's settings file name.
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// One JSON object from a checkpoint file (or an object nested in one, e.g. `image_processor`),
/// with typed accessors whose errors name the file and the field. Fields are dotted paths
/// (`"size.height"`); a JSON `null` reads as absent.
#[derive(Clone, Debug)]
pub struct JsonFile {
    /// The file the object was read from.
    pub path: PathBuf,
    /// The dotted path of the object inside the file (`""` for the top level, else ending in `.`).
    pub prefix: String,
    /// The object itself.
    pub value: Value,
}

impl JsonFile {
    /// Read `path`, which must hold a JSON object. Errors name the file.
    pub fn read(path: impl AsRef<Path>) -> Result<JsonFile> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(Error::file(path, format!("expected a JSON object at the top level, found {}", kind(&value))));
        }
        Ok(JsonFile { path: path.to_path_buf(), prefix: String::new(), value })
    }

    /// [`read`](Self::read) when the file exists, `None` when it does not.
    pub fn read_optional(path: impl AsRef<Path>) -> Result<Option<JsonFile>> {
        let path = path.as_ref();
        if path.exists() {
            Self::read(path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The value at the dotted `field`, `None` when absent or `null`.
    pub fn get(&self, field: &str) -> Option<&Value> {
        let mut v = &self.value;
        for key in field.split('.') {
            v = v.get(key)?;
        }
        (!v.is_null()).then_some(v)
    }

    /// The object at `field` as its own [`JsonFile`] (same file, longer prefix); `None` when absent.
    pub fn section(&self, field: &str) -> Result<Option<JsonFile>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) if v.is_object() => Ok(Some(JsonFile {
                path: self.path.clone(),
                prefix: format!("{}{field}.", self.prefix),
                value: v.clone(),
            })),
            Some(v) => Err(self.bad(field, "an object", v)),
        }
    }

    /// An error naming this file and `field` (with the prefix), saying `msg`.
    pub fn error(&self, field: &str, msg: impl std::fmt::Display) -> Error {
        Error::file(&self.path, format!("field `{}{field}`: {msg}", self.prefix))
    }

    fn bad(&self, field: &str, expected: &str, found: &Value) -> Error {
        self.error(field, format!("expected {expected}, found {found}"))
    }

    /// A non-negative integer at `field`, if present.
    pub fn usize(&self, field: &str) -> Result<Option<usize>> {
        self.get(field)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.bad(field, "a non-negative integer", v))
            })
            .transpose()
    }

    /// A positive integer at `field`; an error naming the field when it is missing.
    pub fn require_positive(&self, field: &str) -> Result<usize> {
        match self.usize(field)? {
            Some(0) => Err(self.error(field, "must be positive, found 0")),
            Some(n) => Ok(n),
            None => Err(self.error(field, "is missing")),
        }
    }

    /// A finite number at `field`, if present.
    pub fn f64(&self, field: &str) -> Result<Option<f64>> {
        self.get(field)
            .map(|v| v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| self.bad(field, "a finite number", v)))
            .transpose()
    }

    /// A boolean at `field`, if present.
    pub fn bool(&self, field: &str) -> Result<Option<bool>> {
        self.get(field).map(|v| v.as_bool().ok_or_else(|| self.bad(field, "true or false", v))).transpose()
    }

    /// A string at `field`, if present.
    pub fn string(&self, field: &str) -> Result<Option<String>> {
        self.get(field).map(|v| v.as_str().map(str::to_owned).ok_or_else(|| self.bad(field, "a string", v))).transpose()
    }

    /// Three per-channel numbers at `field` (a list of 3, or one number for all channels, as
    /// transformers accepts), if present.
    pub fn channels(&self, field: &str) -> Result<Option<[f32; 3]>> {
        let Some(v) = self.get(field) else { return Ok(None) };
        if let Some(x) = v.as_f64() {
            return Ok(Some([x as f32; 3]));
        }
        let list: Option<Vec<f64>> = v.as_array().and_then(|a| a.iter().map(Value::as_f64).collect());
        match list.as_deref() {
            Some(&[a, b, c]) => Ok(Some([a as f32, b as f32, c as f32])),
            _ => Err(self.bad(field, "a list of 3 numbers (one per RGB channel)", v)),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Pillow's resampling filters as transformers stores them (`resample`: `PILImageResampling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// `2` (`BILINEAR`).
    Bilinear,
    /// `3` (`BICUBIC`).
    Bicubic,
}

impl Resample {
    /// Resize `img` to `width × height` with this filter (Pillow-exact, see [`super::image`]).
    pub fn resize(self, img: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
        match self {
            Resample::Bilinear => resize_bilinear(img, width, height),
            Resample::Bicubic => resize_bicubic(img, width, height),
        }
    }
}

/// `do_rescale` / `rescale_factor` and `do_normalize` / `image_mean` / `image_std`: what turns a
/// byte into a pixel value, as transformers' `rescale` (multiply in f64, round to f32) then
/// `normalize` (`(x − mean) / std` in f32).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelNormalization {
    /// `rescale_factor` when `do_rescale` is on.
    pub rescale: Option<f64>,
    /// `(image_mean, image_std)` when `do_normalize` is on.
    pub mean_std: Option<([f32; 3], [f32; 3])>,
}

impl PixelNormalization {
    /// Rescale by `1/255` and normalise with `mean` / `std` (the settings of all three families).
    pub fn new(mean: [f32; 3], std: [f32; 3]) -> Self {
        PixelNormalization { rescale: Some(1.0 / 255.0), mean_std: Some((mean, std)) }
    }

    /// The value of byte `v` in channel `c` (0, 1 or 2).
    ///
    /// ```
    /// use vlm4vla_models::common::processor_files::PixelNormalization;
    /// let n = PixelNormalization::new([0.5; 3], [0.5; 3]);
    /// assert_eq!((n.apply(0, 0), n.apply(255, 2)), (-1.0, 1.0));
    /// ```
    #[inline]
    pub fn apply(&self, v: u8, c: usize) -> f32 {
        let x = match self.rescale {
            Some(f) => (v as f64 * f) as f32,
            None => v as f32,
        };
        match self.mean_std {
            Some((mean, std)) => (x - mean[c]) / std[c],
            None => x,
        }
    }

    /// Channel-first `[3, height, width]` values of an interleaved RGB buffer (`height · width · 3`
    /// bytes; the caller checks the length).
    pub fn planes(&self, rgb: &[u8]) -> Vec<f32> {
        let plane = rgb.len() / 3;
        let mut out = vec![0f32; rgb.len()];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = self.apply(px[c], c);
            }
        }
        out
    }
}

/// The settings every image processor shares, read from its file.
#[derive(Clone, Debug)]
pub struct ImageProcessorConfig {
    /// The object they were read from, for the family's own fields (`size`, `patch_size`, …).
    pub file: JsonFile,
    /// `image_processor_type`, e.g. `"Qwen2VLImageProcessor"`.
    pub processor_type: Option<String>,
    /// `do_resize` (default true).
    pub do_resize: bool,
    /// `resample` (default bicubic, the value of all three families).
    pub resample: Resample,
    /// `do_rescale`, `rescale_factor`, `do_normalize`, `image_mean`, `image_std`.
    pub normalization: PixelNormalization,
}

impl ImageProcessorConfig {
    /// Parse the shared fields of `file`. `default_mean` / `default_std` are the class defaults
    /// used when `image_mean` / `image_std` are absent.
    pub fn parse(file: JsonFile, default_mean: [f32; 3], default_std: [f32; 3]) -> Result<Self> {
        let resample = match file.get("resample") {
            None => Resample::Bicubic,
            Some(v) => match v.as_u64() {
                Some(2) => Resample::Bilinear,
                Some(3) => Resample::Bicubic,
                _ => return Err(file.bad("resample", "2 (bilinear) or 3 (bicubic)", v)),
            },
        };
        let rescale = if file.bool("do_rescale")?.unwrap_or(true) {
            let f = file.f64("rescale_factor")?.unwrap_or(1.0 / 255.0);
            if f <= 0.0 {
                return Err(file.error("rescale_factor", format!("must be positive, found {f}")));
            }
            Some(f)
        } else {
            None
        };
        let mean_std = if file.bool("do_normalize")?.unwrap_or(true) {
            let mean = file.channels("image_mean")?.unwrap_or(default_mean);
            let std = file.channels("image_std")?.unwrap_or(default_std);
            if std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
                return Err(file.error("image_std", format!("must be finite and non-zero, found {std:?}")));
            }
            Some((mean, std))
        } else {
            None
        };
        Ok(ImageProcessorConfig {
            processor_type: file.string("image_processor_type")?,
            do_resize: file.bool("do_resize")?.unwrap_or(true),
            resample,
            normalization: PixelNormalization { rescale, mean_std },
            file,
        })
    }

    /// `size.height` × `size.width` (square, at least one patch), checked against the model's
    /// `image_size` from `config.json`.
    pub fn square_size(&self, field: &str, model_image_size: usize) -> Result<usize> {
        let h = self.file.require_positive(&format!("{field}.height"))?;
        let w = self.file.require_positive(&format!("{field}.width"))?;
        if h != w || h != model_image_size {
            return Err(self.file.error(
                field,
                format!("{h}×{w} does not match the model's image_size {model_image_size} (config.json)"),
            ));
        }
        Ok(h)
    }
}

/// A checkpoint directory's processor files.
#[derive(Clone, Debug)]
pub struct ProcessorFiles {
    /// The image processor: `preprocessor_config.json`, or the `image_processor` object of
    /// `processor_config.json` when the former is absent.
    pub image: ImageProcessorConfig,
    /// `processor_config.json`, when present.
    pub processor: Option<JsonFile>,
    /// `tokenizer_config.json`, when present.
    pub tokenizer_config: Option<JsonFile>,
}

impl ProcessorFiles {
    /// Read `dir`'s processor files with CLIP's mean/std as the class default (Qwen, Kosmos-2).
    pub fn read(dir: &Path) -> Result<Self> {
        Self::read_with_defaults(dir, super::image::CLIP_MEAN, super::image::CLIP_STD)
    }

    /// Read `dir`'s processor files; `default_mean` / `default_std` are the image processor's
    /// class defaults. Errors name the file: neither `preprocessor_config.json` nor an
    /// `image_processor` in `processor_config.json`, a file that is not a JSON object, a field of
    /// the wrong type.
    pub fn read_with_defaults(dir: &Path, default_mean: [f32; 3], default_std: [f32; 3]) -> Result<Self> {
        let processor = JsonFile::read_optional(dir.join(PROCESSOR_CONFIG))?;
        let tokenizer_config = JsonFile::read_optional(dir.join(TOKENIZER_CONFIG))?;
        let image_file = match JsonFile::read_optional(dir.join(PREPROCESSOR_CONFIG))? {
            Some(f) => f,
            None => match processor.as_ref().map(|p| p.section("image_processor")).transpose()?.flatten() {
                Some(f) => f,
                None => {
                    return Err(Error::file(
                        dir.join(PREPROCESSOR_CONFIG),
                        format!("missing, and {PROCESSOR_CONFIG} has no `image_processor` either"),
                    ))
                }
            },
        };
        let image = ImageProcessorConfig::parse(image_file, default_mean, default_std)?;
        Ok(ProcessorFiles { image, processor, tokenizer_config })
    }

    /// A processor-level integer (`num_patch_index_tokens`, `image_seq_length`) and the object it
    /// was read from (for errors): `processor_config.json`'s top level first, else the image
    /// processor's file (hub checkpoints written before processor files existed keep it there).
    pub fn processor_usize(&self, field: &str) -> Result<Option<(usize, &JsonFile)>> {
        if let Some(p) = &self.processor {
            if let Some(n) = p.usize(field)? {
                return Ok(Some((n, p)));
            }
        }
        Ok(self.image.file.usize(field)?.map(|n| (n, &self.image.file)))
    }

    /// How `tokenizer_config.json` spells the special token `key` (`"bos_token"`, `"pad_token"`,
    /// …: a string or an `{"content": …}` object); `default` when the file or key is absent or null.
    pub fn special_token(&self, key: &str, default: &str) -> Result<String> {
        let Some(file) = &self.tokenizer_config else { return Ok(default.to_owned()) };
        match file.get(key) {
            None => Ok(default.to_owned()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => match v.get("content").and_then(Value::as_str) {
                Some(s) => Ok(s.to_owned()),
                None => Err(file.bad(key, "a token string or an object with `content`", v)),
            },
        }
    }

    /// The tokenizer's id of the special token `key` (spelled as [`special_token`](Self::special_token)
    /// says). Errors name the token and the tokenizer file when the vocabulary lacks it.
    pub fn special_token_id(&self, tok: &Tokenizer, key: &str, default: &str) -> Result<i64> {
        tok.require_id(&self.special_token(key, default)?)
    }
}

/// The single id `text` encodes to (e.g. `"\n"`); an error naming the tokenizer file and the text
/// when it is not exactly one token.
pub fn single_token_id(tok: &Tokenizer, text: &str) -> Result<i64> {
    match tok.encode(text, false)?[..] {
        [id] => Ok(id),
        ref other => Err(Error::file(
            tok.path(),
            format!("{text:?} encodes to {} tokens {other:?}; the processor needs it as one token", other.len()),
        )),
    }
}

/// Check that the tokenizer's id of `token` equals the one `config.json` names at `field`.
pub fn check_config_id(tok: &Tokenizer, token: &str, id: i64, field: &str, config_id: i64) -> Result<()> {
    if id != config_id {
        return Err(Error::file(
            tok.path(),
            format!("token {token:?} has id {id}, but config.json's `{field}` is {config_id}"),
        ));
    }
    Ok(())
}
