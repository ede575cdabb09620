//! `PaliGemmaConfig`: the checkpoint's own `config.json` (top level + nested `text_config` /
//! `vision_config`), mirroring transformers 5.24.0 `configuration_paligemma.py`,
//! `configuration_gemma.py` and `configuration_siglip.py`.
//!
//! Keys missing from the file take the class defaults as PaliGemma sets them up (its sub-config
//! defaults over `GemmaConfig` / `SiglipVisionConfig`); keys present in the file always win (the
//! real checkpoint relies on this: image token 257152, vocab 257216, vision intermediate 4304).

use serde_json::{Map, Value};
use std::path::Path;
use vlm4vla_engine::{Error, Result};

/// An MLP activation as named in `hidden_act`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_pytorch_tanh` (and Gemma's legacy `gelu`, which transformers maps to it).
    GeluTanh,
    /// Exact erf GELU (`gelu` in a SigLIP config).
    Gelu,
    /// `x · sigmoid(1.702 x)`.
    QuickGelu,
}

/// The SigLIP vision tower (`vision_config`).
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Patches per image (= image tokens).
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
}

/// The Gemma decoder (`text_config`).
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    /// The embedding's `padding_idx`: lookups of this id pass no gradient to its row.
    pub pad_token_id: Option<i64>,
}

/// A whole PaliGemma checkpoint config.
#[derive(Clone, Debug, PartialEq)]
pub struct PaliGemmaConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub image_token_id: i64,
    pub projection_dim: usize,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
    pub pad_token_id: i64,
    pub tie_word_embeddings: bool,
}

/// The `"\n"` token that ends the prompt prefix.
pub const NEWLINE_TOKEN: i64 = 108;

impl PaliGemmaConfig {
    /// `google/paligemma-3b-pt-224` (hub `config.json` values).
    pub fn paligemma_3b_pt_224() -> Self {
        PaliGemmaConfig {
            vision: VisionConfig {
                hidden_size: 1152,
                intermediate_size: 4304,
                num_hidden_layers: 27,
                num_attention_heads: 16,
                num_channels: 3,
                image_size: 224,
                patch_size: 14,
                layer_norm_eps: 1e-6,
                hidden_act: Activation::GeluTanh,
            },
            text: TextConfig {
                vocab_size: 257216,
                hidden_size: 2048,
                intermediate_size: 16384,
                num_hidden_layers: 18,
                num_attention_heads: 8,
                num_key_value_heads: 1,
                head_dim: 256,
                rms_norm_eps: 1e-6,
                rope_theta: 10000.0,
                max_position_embeddings: 8192,
                hidden_act: Activation::GeluTanh,
                pad_token_id: Some(0),
            },
            image_token_id: 257152,
            projection_dim: 2048,
            bos_token_id: 2,
            eos_token_id: 1,
            pad_token_id: 0,
            tie_word_embeddings: true,
        }
    }

    /// A tiny PaliGemma for tests and the demo (the config of `tests/fixtures/paligemma`):
    /// 32×32 images in 8×8 patches (16 image tokens), SigLIP 32 wide × 2 layers, Gemma 64 wide ×
    /// 2 layers with 4 query heads sharing one kv head, vocab 128, image token 100.
    pub fn tiny() -> Self {
        PaliGemmaConfig {
            vision: VisionConfig {
                hidden_size: 32,
                intermediate_size: 48,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                num_channels: 3,
                image_size: 32,
                patch_size: 8,
                layer_norm_eps: 1e-6,
                hidden_act: Activation::GeluTanh,
            },
            text: TextConfig {
                vocab_size: 128,
                hidden_size: 64,
                intermediate_size: 96,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: 1,
                head_dim: 16,
                rms_norm_eps: 1e-6,
                rope_theta: 10000.0,
                max_position_embeddings: 512,
                hidden_act: Activation::GeluTanh,
                pad_token_id: Some(0),
            },
            image_token_id: 100,
            projection_dim: 64,
            bos_token_id: 2,
            eos_token_id: 1,
            pad_token_id: 0,
            tie_word_embeddings: true,
        }
    }

    /// A built-in config by name: `paligemma-3b-pt-224` or `tiny`.
    pub fn builtin(name: &str) -> Result<Self> {
        match name {
            "paligemma-3b-pt-224" | "google/paligemma-3b-pt-224" => Ok(Self::paligemma_3b_pt_224()),
            "tiny" => Ok(Self::tiny()),
            _ => Err(Error::file(name, "not a built-in PaliGemma config (built-ins: `paligemma-3b-pt-224`, `tiny`)")),
        }
    }

    /// Image tokens per image.
    pub fn num_image_tokens(&self) -> usize {
        self.vision.num_patches()
    }

    /// Read and parse a `config.json`; errors name the file and the field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::from_json_str(&text).map_err(|e| match e {
            Error::File { msg, .. } => Error::file(path, msg),
            other => other,
        })
    }

    /// Parse the text of a `config.json`.
    ///
    /// ```
    /// use vlm4vla_models::paligemma::PaliGemmaConfig;
    /// let cfg = PaliGemmaConfig::from_json_str(r#"{"model_type": "paligemma", "image_token_index": 257152,
    ///     "text_config": {"model_type": "gemma", "vocab_size": 257216},
    ///     "vision_config": {"model_type": "siglip_vision_model", "intermediate_size": 4304,
    ///                       "hidden_size": 1152, "num_hidden_layers": 27, "num_attention_heads": 16,
    ///                       "patch_size": 14, "vision_use_head": false}}"#).unwrap();
    /// assert_eq!(cfg, PaliGemmaConfig::paligemma_3b_pt_224());
    /// ```
    pub fn from_json_str(text: &str) -> Result<Self> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| Error::file("config.json", format!("invalid JSON: {e}")))?;
        let top = Obj::new(&root, "")?;
        top.model_type(&["paligemma"])?;
        let empty = Value::Object(Map::new());
        let t = Obj::new(top.0.get("text_config").unwrap_or(&empty), "text_config.")?;
        let v = Obj::new(top.0.get("vision_config").unwrap_or(&empty), "vision_config.")?;
        t.model_type(&["gemma"])?;
        v.model_type(&["siglip_vision_model"])?;

        if v.bool("vision_use_head", false)? {
            return Err(v.err("vision_use_head", "true is not supported (PaliGemma uses the whole last hidden state)"));
        }
        let vision = VisionConfig {
            hidden_size: v.usize("hidden_size", 1152)?,
            intermediate_size: v.usize("intermediate_size", 4096)?,
            num_hidden_layers: v.usize("num_hidden_layers", 27)?,
            num_attention_heads: v.usize("num_attention_heads", 16)?,
            num_channels: v.usize("num_channels", 3)?,
            image_size: v.square("image_size", 224)?,
            patch_size: v.square("patch_size", 14)?,
            layer_norm_eps: v.f64("layer_norm_eps", 1e-6)?,
            hidden_act: v.activation("hidden_act", false)?,
        };
        if t.bool("attention_bias", false)? {
            return Err(t.err("attention_bias", "true is not supported (PaliGemma's Gemma has no attention biases)"));
        }
        let heads = t.usize("num_attention_heads", 8)?;
        let text = TextConfig {
            vocab_size: t.usize("vocab_size", 257152)?,
            hidden_size: t.usize("hidden_size", 2048)?,
            intermediate_size: t.usize("intermediate_size", 16384)?,
            num_hidden_layers: t.usize("num_hidden_layers", 18)?,
            num_attention_heads: heads,
            num_key_value_heads: t.usize("num_key_value_heads", 1)?,
            head_dim: t.usize("head_dim", 256)?,
            rms_norm_eps: t.f64("rms_norm_eps", 1e-6)?,
            rope_theta: t.rope_theta()?,
            max_position_embeddings: t.usize("max_position_embeddings", 8192)?,
            hidden_act: t.activation("hidden_act", true)?,
            pad_token_id: t.opt_i64("pad_token_id", Some(0))?,
        };
        let cfg = PaliGemmaConfig {
            image_token_id: top.i64("image_token_index", top.i64("image_token_id", 256000)?)?,
            projection_dim: top.usize("projection_dim", 2048)?,
            bos_token_id: top.i64("bos_token_id", 2)?,
            eos_token_id: top.i64("eos_token_id", 1)?,
            pad_token_id: top.i64("pad_token_id", 0)?,
            tie_word_embeddings: top.bool("tie_word_embeddings", t.bool("tie_word_embeddings", true)?)?,
            vision,
            text,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// This config as a transformers 5.x `config.json` (`PaliGemmaForConditionalGeneration`,
    /// nested `text_config` / `vision_config`, `rope_parameters`); it parses back through
    /// [`from_json_str`](Self::from_json_str) to an equal config.
    ///
    /// ```
    /// use vlm4vla_models::paligemma::PaliGemmaConfig;
    /// let cfg = PaliGemmaConfig::tiny();
    /// let json = cfg.to_hf_json().to_string();
    /// assert_eq!(PaliGemmaConfig::from_json_str(&json).unwrap(), cfg);
    /// ```
    pub fn to_hf_json(&self) -> Value {
        let (v, t) = (&self.vision, &self.text);
        let act = |a: Activation| match a {
            Activation::GeluTanh => "gelu_pytorch_tanh",
            Activation::Gelu => "gelu",
            Activation::QuickGelu => "quick_gelu",
        };
        serde_json::json!({
            "architectures": ["PaliGemmaForConditionalGeneration"],
            "model_type": "paligemma",
            "image_token_index": self.image_token_id,
            "projection_dim": self.projection_dim,
            "hidden_size": self.projection_dim,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
            "text_config": {
                "model_type": "gemma",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "head_dim": t.head_dim,
                "rms_norm_eps": t.rms_norm_eps,
                "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta},
                "max_position_embeddings": t.max_position_embeddings,
                "hidden_act": act(t.hidden_act),
                "pad_token_id": t.pad_token_id,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id,
                "num_image_tokens": self.num_image_tokens(),
                "tie_word_embeddings": self.tie_word_embeddings,
            },
            "vision_config": {
                "model_type": "siglip_vision_model",
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_hidden_layers,
                "num_attention_heads": v.num_attention_heads,
                "num_channels": v.num_channels,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "layer_norm_eps": v.layer_norm_eps,
                "hidden_act": act(v.hidden_act),
                "projection_dim": self.projection_dim,
                "vision_use_head": false,
            },
        })
    }

    /// Check the sizes fit together (what the model code relies on).
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::file("config.json", format!("`{field}`: {msg}")));
        let v = &self.vision;
        let t = &self.text;
        for (field, value) in [
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_channels", v.num_channels),
            ("vision_config.patch_size", v.patch_size),
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.intermediate_size", t.intermediate_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            ("text_config.num_key_value_heads", t.num_key_value_heads),
            ("text_config.head_dim", t.head_dim),
        ] {
            if value == 0 {
                return bad(field, "must be positive".into());
            }
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return bad(
                "vision_config.num_attention_heads",
                format!("{} does not divide hidden_size {}", v.num_attention_heads, v.hidden_size),
            );
        }
        if v.image_size < v.patch_size || !v.image_size.is_multiple_of(v.patch_size) {
            return bad(
                "vision_config.image_size",
                format!("{} is not a multiple of patch_size {}", v.image_size, v.patch_size),
            );
        }
        if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
            return bad(
                "text_config.num_key_value_heads",
                format!("{} does not divide num_attention_heads {}", t.num_key_value_heads, t.num_attention_heads),
            );
        }
        if !t.head_dim.is_multiple_of(2) {
            return bad("text_config.head_dim", format!("{} must be even for RoPE", t.head_dim));
        }
        if self.projection_dim != t.hidden_size {
            return bad(
                "projection_dim",
                format!("{} must equal text_config.hidden_size {}", self.projection_dim, t.hidden_size),
            );
        }
        if self.image_token_id < 0 {
            return bad("image_token_index", format!("{} is negative", self.image_token_id));
        }
        Ok(())
    }
}

/// A JSON object with the dotted path it sits at, for error messages.
struct Obj<'a>(&'a Map<String, Value>, &'static str);

impl<'a> Obj<'a> {
    fn new(v: &'a Value, path: &'static str) -> Result<Self> {
        match v {
            Value::Object(m) => Ok(Obj(m, path)),
            _ => Err(Error::file("config.json", format!("`{}` must be an object", path.trim_end_matches('.')))),
        }
    }

    fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::file("config.json", format!("`{}{key}`: {msg}", self.1))
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn model_type(&self, allowed: &[&str]) -> Result<()> {
        match self.get("model_type") {
            None => Ok(()),
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
            Some(other) => Err(self.err("model_type", format!("{other} is not supported here (expected {allowed:?})"))),
        }
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.err(key, format!("{v} is not a non-negative integer"))),
        }
    }

    /// An int, or a `[h, w]` pair with `h == w`.
    fn square(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            Some(Value::Array(a)) if a.len() == 2 && a[0] == a[1] => {
                a[0].as_u64().map(|x| x as usize).ok_or_else(|| self.err(key, format!("{} is not an integer", a[0])))
            }
            Some(Value::Array(a)) => Err(self.err(key, format!("{a:?}: only square sizes are supported"))),
            _ => self.usize(key, default),
        }
    }

    fn i64(&self, key: &str, default: i64) -> Result<i64> {
        Ok(self.opt_i64(key, Some(default))?.unwrap_or(default))
    }

    fn opt_i64(&self, key: &str, default: Option<i64>) -> Result<Option<i64>> {
        match self.0.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            // A list of eos ids: the first one.
            Some(Value::Array(a)) if !a.is_empty() => {
                a[0].as_i64().map(Some).ok_or_else(|| self.err(key, format!("{} is not an integer", a[0])))
            }
            Some(v) => v.as_i64().map(Some).ok_or_else(|| self.err(key, format!("{v} is not an integer"))),
        }
    }

    fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => {
                v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| self.err(key, format!("{v} is not a finite number")))
            }
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, format!("{v} is not a boolean"))),
        }
    }

    /// `rope_theta` (hub spelling) or `rope_parameters.rope_theta` (transformers 5.x); only the
    /// default rope type is supported.
    fn rope_theta(&self) -> Result<f64> {
        if let Some(p) = self.get("rope_parameters") {
            let Value::Object(m) = p else {
                return Err(self.err("rope_parameters", "must be an object"));
            };
            if let Some(t) = m.get("rope_type").or_else(|| m.get("type")) {
                if t != "default" {
                    return Err(
                        self.err("rope_parameters.rope_type", format!("{t} is not supported (only \"default\")"))
                    );
                }
            }
            if let Some(v) = m.get("rope_theta") {
                return v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| self.err("rope_parameters.rope_theta", format!("{v} is not a positive number")));
            }
        }
        if let Some(s) = self.get("rope_scaling") {
            return Err(self.err("rope_scaling", format!("{s} is not supported (PaliGemma uses default RoPE)")));
        }
        let theta = self.f64("rope_theta", 10000.0)?;
        if theta <= 0.0 {
            return Err(self.err("rope_theta", format!("{theta} is not positive")));
        }
        Ok(theta)
    }

    /// `hidden_act` (Gemma also spells it `hidden_activation`); Gemma's legacy `gelu` is tanh GELU.
    fn activation(&self, key: &str, gemma: bool) -> Result<Activation> {
        let v = match self.get(key) {
            Some(v) => Some((key, v)),
            None if gemma => self.get("hidden_activation").map(|v| ("hidden_activation", v)),
            None => None,
        };
        let Some((key, v)) = v else { return Ok(Activation::GeluTanh) };
        match v.as_str() {
            Some("gelu_pytorch_tanh" | "gelu_new" | "gelu_fast") => Ok(Activation::GeluTanh),
            Some("gelu") if gemma => Ok(Activation::GeluTanh),
            Some("gelu") => Ok(Activation::Gelu),
            Some("quick_gelu") => Ok(Activation::QuickGelu),
            _ => Err(self.err(key, format!("{v} is not a supported activation"))),
        }
    }
}
