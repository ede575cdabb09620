//! Kosmos-2 configuration, parsed from the checkpoint's own `config.json` (nested `text_config`
//! and `vision_config`), mirroring `configuration_kosmos2.py` of transformers 5.24.0: absent keys
//! take the class defaults, which are the `microsoft/kosmos-2-patch14-224` values.

use serde_json::Value;
use std::path::Path;
use vlm4vla_engine::{Error, Result};

/// An activation function named in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact erf GELU (`gelu`).
    Gelu,
    /// Tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    /// `x·sigmoid(1.702x)` (`quick_gelu`).
    QuickGelu,
    Relu,
    Silu,
}

impl Activation {
    fn parse(path: &Path, field: &str, name: &str) -> Result<Activation> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(Error::file(
                    path,
                    format!(
                        "`{field}`: unknown activation \"{other}\" (known: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu, relu, silu)"
                    ),
                ))
            }
        })
    }

    /// The name transformers' `ACT2FN` knows it by.
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
            Activation::QuickGelu => "quick_gelu",
            Activation::Relu => "relu",
            Activation::Silu => "silu",
        }
    }

    pub(crate) fn apply(self, x: &vlm4vla_engine::Tensor) -> Result<vlm4vla_engine::Tensor> {
        match self {
            Activation::Gelu => x.gelu(),
            Activation::GeluTanh => x.gelu_tanh(),
            Activation::QuickGelu => x.quick_gelu(),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

/// The CLIP vision tower (`Kosmos2VisionConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Patches + the class token.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// The Magneto-style text decoder (`Kosmos2TextConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub embed_dim: usize,
    pub layers: usize,
    pub ffn_dim: usize,
    pub attention_heads: usize,
    pub activation_function: Activation,
    pub layer_norm_eps: f64,
    pub scale_embedding: bool,
    pub pad_token_id: i64,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.attention_heads
    }
}

/// `Kosmos2Config`: vision tower + connector + text decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct Kosmos2Config {
    pub vision: VisionConfig,
    pub text: TextConfig,
    /// Number of latent queries, i.e. image tokens in the prompt.
    pub latent_query_num: usize,
    /// `lm_head` shares `text_model.model.embed_tokens.weight`.
    pub tie_word_embeddings: bool,
}

const MODEL_TYPE: &str = "kosmos-2";
const TEXT_MODEL_TYPE: &str = "kosmos_2_text_model";
const VISION_MODEL_TYPE: &str = "kosmos_2_vision_model";

impl Kosmos2Config {
    /// `microsoft/kosmos-2-patch14-224` (CLIP ViT-L/14 + 64 latent queries + 24-layer 2048-wide
    /// decoder; 1,664,485,376 parameters).
    pub fn kosmos2_patch14_224() -> Kosmos2Config {
        Kosmos2Config {
            vision: VisionConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                num_channels: 3,
                image_size: 224,
                patch_size: 14,
                hidden_act: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
            },
            text: TextConfig {
                vocab_size: 65037,
                max_position_embeddings: 2048,
                embed_dim: 2048,
                layers: 24,
                ffn_dim: 8192,
                attention_heads: 32,
                activation_function: Activation::Gelu,
                layer_norm_eps: 1e-5,
                scale_embedding: true,
                pad_token_id: 1,
                bos_token_id: 0,
                eos_token_id: 2,
            },
            latent_query_num: 64,
            tie_word_embeddings: true,
        }
    }

    /// A tiny config for tests and the demo (the one `tools/golden/gen_kosmos2.py` builds): 28×28
    /// images in 7×7 patches, a 2-layer 32-wide vision tower, 8 latent queries and a 2-layer
    /// 64-wide decoder over a 128-token vocabulary.
    pub fn tiny() -> Kosmos2Config {
        Kosmos2Config {
            vision: VisionConfig {
                hidden_size: 32,
                intermediate_size: 48,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                num_channels: 3,
                image_size: 28,
                patch_size: 7,
                hidden_act: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
            },
            text: TextConfig {
                vocab_size: 128,
                max_position_embeddings: 64,
                embed_dim: 64,
                layers: 2,
                ffn_dim: 96,
                attention_heads: 4,
                activation_function: Activation::Gelu,
                layer_norm_eps: 1e-5,
                scale_embedding: true,
                pad_token_id: 1,
                bos_token_id: 0,
                eos_token_id: 2,
            },
            latent_query_num: 8,
            tie_word_embeddings: true,
        }
    }

    /// A built-in config by name: `kosmos-2-patch14-224` (also `microsoft/kosmos-2-patch14-224`)
    /// or `tiny`.
    pub fn builtin(name: &str) -> Result<Kosmos2Config> {
        match name {
            "kosmos-2-patch14-224" | "microsoft/kosmos-2-patch14-224" => Ok(Self::kosmos2_patch14_224()),
            "tiny" => Ok(Self::tiny()),
            other => Err(Error::Invalid {
                op: "Kosmos2Config::builtin",
                msg: format!("unknown built-in config \"{other}\" (known: kosmos-2-patch14-224, tiny)"),
            }),
        }
    }

    /// Read and parse a checkpoint's `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Kosmos2Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::from_json_at(&text, path)
    }

    /// Parse the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Kosmos2Config> {
        Self::from_json_at(text, Path::new("config.json"))
    }

    fn from_json_at(text: &str, path: &Path) -> Result<Kosmos2Config> {
        let root: Value = serde_json::from_str(text).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))?;
        let top = Fields::new(path, "", &root)?;
        top.model_type(MODEL_TYPE)?;
        let d = Self::kosmos2_patch14_224();

        let empty = Value::Object(Default::default());
        let tv = top.get("text_config").filter(|v| !v.is_null()).unwrap_or(&empty);
        let t = Fields::new(path, "text_config.", tv)?;
        t.model_type(TEXT_MODEL_TYPE)?;
        let text = TextConfig {
            vocab_size: t.usize("vocab_size", d.text.vocab_size)?,
            max_position_embeddings: t.usize("max_position_embeddings", d.text.max_position_embeddings)?,
            embed_dim: t.usize("embed_dim", d.text.embed_dim)?,
            layers: t.usize("layers", d.text.layers)?,
            ffn_dim: t.usize("ffn_dim", d.text.ffn_dim)?,
            attention_heads: t.usize("attention_heads", d.text.attention_heads)?,
            activation_function: t.activation("activation_function", "gelu")?,
            layer_norm_eps: t.f64("layer_norm_eps", d.text.layer_norm_eps)?,
            scale_embedding: t.bool("scale_embedding", d.text.scale_embedding)?,
            pad_token_id: t.i64("pad_token_id", d.text.pad_token_id)?,
            bos_token_id: t.i64("bos_token_id", d.text.bos_token_id)?,
            eos_token_id: t.first_i64("eos_token_id", d.text.eos_token_id)?,
        };

        let vv = top.get("vision_config").filter(|v| !v.is_null()).unwrap_or(&empty);
        let v = Fields::new(path, "vision_config.", vv)?;
        v.model_type(VISION_MODEL_TYPE)?;
        let vision = VisionConfig {
            hidden_size: v.usize("hidden_size", d.vision.hidden_size)?,
            intermediate_size: v.usize("intermediate_size", d.vision.intermediate_size)?,
            num_hidden_layers: v.usize("num_hidden_layers", d.vision.num_hidden_layers)?,
            num_attention_heads: v.usize("num_attention_heads", d.vision.num_attention_heads)?,
            num_channels: v.usize("num_channels", d.vision.num_channels)?,
            image_size: v.square("image_size", d.vision.image_size)?,
            patch_size: v.square("patch_size", d.vision.patch_size)?,
            hidden_act: v.activation("hidden_act", "quick_gelu")?,
            layer_norm_eps: v.f64("layer_norm_eps", d.vision.layer_norm_eps)?,
        };
        let cfg = Kosmos2Config {
            vision,
            text,
            latent_query_num: top.usize("latent_query_num", d.latent_query_num)?,
            tie_word_embeddings: top.bool("tie_word_embeddings", d.tie_word_embeddings)?,
        };
        cfg.validate().map_err(|msg| Error::file(path, msg))?;
        Ok(cfg)
    }

    /// This config as a transformers 5.x `config.json` (`Kosmos2ForConditionalGeneration`, nested
    /// `text_config` / `vision_config`); it parses back through [`from_json`](Self::from_json) to
    /// an equal config.
    ///
    /// ```
    /// use vlm4vla_models::kosmos2::Kosmos2Config;
    /// let cfg = Kosmos2Config::tiny();
    /// assert_eq!(Kosmos2Config::from_json(&cfg.to_hf_json().to_string()).unwrap(), cfg);
    /// ```
    pub fn to_hf_json(&self) -> Value {
        let (v, t) = (&self.vision, &self.text);
        serde_json::json!({
            "architectures": ["Kosmos2ForConditionalGeneration"],
            "model_type": MODEL_TYPE,
            "latent_query_num": self.latent_query_num,
            "tie_word_embeddings": self.tie_word_embeddings,
            "text_config": {
                "model_type": TEXT_MODEL_TYPE,
                "vocab_size": t.vocab_size,
                "max_position_embeddings": t.max_position_embeddings,
                "embed_dim": t.embed_dim,
                "layers": t.layers,
                "ffn_dim": t.ffn_dim,
                "attention_heads": t.attention_heads,
                "activation_function": t.activation_function.hf_name(),
                "layer_norm_eps": t.layer_norm_eps,
                "scale_embedding": t.scale_embedding,
                "pad_token_id": t.pad_token_id,
                "bos_token_id": t.bos_token_id,
                "eos_token_id": t.eos_token_id,
                "tie_word_embeddings": self.tie_word_embeddings,
            },
            "vision_config": {
                "model_type": VISION_MODEL_TYPE,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_hidden_layers,
                "num_attention_heads": v.num_attention_heads,
                "num_channels": v.num_channels,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "hidden_act": v.hidden_act.hf_name(),
                "layer_norm_eps": v.layer_norm_eps,
            },
        })
    }

    /// Check the sizes fit together; the message names the offending fields.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let (v, t) = (&self.vision, &self.text);
        let positive = [
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_channels", v.num_channels),
            ("vision_config.image_size", v.image_size),
            ("vision_config.patch_size", v.patch_size),
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.embed_dim", t.embed_dim),
            ("text_config.ffn_dim", t.ffn_dim),
            ("text_config.attention_heads", t.attention_heads),
            ("latent_query_num", self.latent_query_num),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("`{name}` must be positive"));
            }
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(format!(
                "`vision_config.hidden_size` {} is not a multiple of `vision_config.num_attention_heads` {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if !t.embed_dim.is_multiple_of(t.attention_heads) {
            return Err(format!(
                "`text_config.embed_dim` {} is not a multiple of `text_config.attention_heads` {}",
                t.embed_dim, t.attention_heads
            ));
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "`vision_config.image_size` {} is not a multiple of `vision_config.patch_size` {}",
                v.image_size, v.patch_size
            ));
        }
        if t.pad_token_id < 0 || t.pad_token_id as usize >= t.vocab_size {
            return Err(format!(
                "`text_config.pad_token_id` {} is outside the vocabulary (size {})",
                t.pad_token_id, t.vocab_size
            ));
        }
        Ok(())
    }
}

/// Typed access to one JSON object, naming fields as `prefix + key` in errors.
struct Fields<'a> {
    path: &'a Path,
    prefix: &'a str,
    map: &'a serde_json::Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(path: &'a Path, prefix: &'a str, v: &'a Value) -> Result<Fields<'a>> {
        let map = v.as_object().ok_or_else(|| {
            let what = if prefix.is_empty() {
                "the top level".to_string()
            } else {
                format!("`{}`", &prefix[..prefix.len() - 1])
            };
            Error::file(path, format!("{what} must be a JSON object"))
        })?;
        Ok(Fields { path, prefix, map })
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::file(self.path, format!("`{}{key}`: {msg}", self.prefix))
    }

    fn model_type(&self, expected: &str) -> Result<()> {
        match self.get("model_type") {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(s)) if s == expected => Ok(()),
            Some(other) => Err(self.err("model_type", format!("unknown model type {other} (expected \"{expected}\")"))),
        }
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.err(key, format!("expected a non-negative integer, found {v}"))),
        }
    }

    fn i64(&self, key: &str, default: i64) -> Result<i64> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_i64().ok_or_else(|| self.err(key, format!("expected an integer, found {v}"))),
        }
    }

    /// An integer or a list of integers (the first is used).
    fn first_i64(&self, key: &str, default: i64) -> Result<i64> {
        match self.get(key) {
            Some(Value::Array(a)) => {
                a.first().and_then(Value::as_i64).ok_or_else(|| self.err(key, "expected a non-empty list of integers"))
            }
            _ => self.i64(key, default),
        }
    }

    fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.err(key, format!("expected a number, found {v}"))),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, format!("expected true or false, found {v}"))),
        }
    }

    /// An integer or an `[h, w]` pair with `h == w`.
    fn square(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            Some(Value::Array(a)) => {
                let v: Vec<u64> = a.iter().filter_map(Value::as_u64).collect();
                match v.as_slice() {
                    [h, w] if h == w && v.len() == a.len() => Ok(*h as usize),
                    _ => Err(self.err(key, format!("expected an integer or a square [h, w] pair, found {a:?}"))),
                }
            }
            _ => self.usize(key, default),
        }
    }

    fn activation(&self, key: &str, default: &str) -> Result<Activation> {
        match self.get(key) {
            None | Some(Value::Null) => Activation::parse(self.path, &format!("{}{key}", self.prefix), default),
            Some(Value::String(s)) => Activation::parse(self.path, &format!("{}{key}", self.prefix), s),
            Some(v) => Err(self.err(key, format!("expected a string, found {v}"))),
        }
    }
}
