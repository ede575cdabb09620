//! Qwen2.5-VL configuration, read from the checkpoint's own `config.json` (mirrors transformers
//! 5.24.0 `configuration_qwen2_5_vl.py`).
//!
//! Two layouts are accepted: the hub's flat one (text keys at the top level, `rope_theta` +
//! `rope_scaling: {type: "mrope", mrope_section}`) and the transformers 5.x one (`text_config`,
//! `vision_config`, `rope_parameters`).

use serde_json::{Map, Value};
use std::path::Path;
use vlm4vla_engine::{Error, Result};

/// The vision tower (`vision_config`).
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    /// Window side in pixels.
    pub window_size: usize,
    pub out_hidden_size: usize,
    pub fullatt_block_indexes: Vec<usize>,
    pub tokens_per_second: usize,
    /// Vision 2-D rope base (not in hub configs; the class default is 10000).
    pub rope_theta: f64,
}

/// The language model (`text_config`, or the flat top level of hub configs).
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// M-RoPE sections over `head_dim / 2` frequencies: (t, h, w).
    pub mrope_section: [usize; 3],
    pub max_position_embeddings: usize,
}

/// A Qwen2.5-VL model configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen25VlConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: i64,
    pub video_token_id: i64,
    pub vision_start_token_id: i64,
    pub vision_end_token_id: i64,
    pub tie_word_embeddings: bool,
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    pub fn kv_dim(&self) -> usize {
        self.head_dim() * self.num_key_value_heads
    }
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// Width of one patch row: `in_channels · temporal_patch · patch²` (1176 for the real models).
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
    /// Merged tokens per window side (`window_size / merge / patch`).
    pub fn merger_window(&self) -> usize {
        self.window_size / self.spatial_merge_size / self.patch_size
    }
    pub fn merge_unit(&self) -> usize {
        self.spatial_merge_size * self.spatial_merge_size
    }
}

fn vision_3b(out_hidden_size: usize) -> VisionConfig {
    VisionConfig {
        depth: 32,
        hidden_size: 1280,
        intermediate_size: 3420,
        num_heads: 16,
        in_channels: 3,
        patch_size: 14,
        temporal_patch_size: 2,
        spatial_merge_size: 2,
        window_size: 112,
        out_hidden_size,
        fullatt_block_indexes: vec![7, 15, 23, 31],
        tokens_per_second: 2,
        rope_theta: 10000.0,
    }
}

impl Qwen25VlConfig {
    /// Qwen2.5-VL-3B-Instruct (3,754,622,976 parameters, tied embeddings).
    pub fn qwen2_5_vl_3b() -> Self {
        Qwen25VlConfig {
            text: TextConfig {
                vocab_size: 151936,
                hidden_size: 2048,
                intermediate_size: 11008,
                num_hidden_layers: 36,
                num_attention_heads: 16,
                num_key_value_heads: 2,
                rms_norm_eps: 1e-6,
                rope_theta: 1e6,
                mrope_section: [16, 24, 24],
                max_position_embeddings: 128000,
            },
            vision: vision_3b(2048),
            image_token_id: 151655,
            video_token_id: 151656,
            vision_start_token_id: 151652,
            vision_end_token_id: 151653,
            tie_word_embeddings: true,
        }
    }

    /// Qwen2.5-VL-7B-Instruct (untied `lm_head`).
    pub fn qwen2_5_vl_7b() -> Self {
        Qwen25VlConfig {
            text: TextConfig {
                vocab_size: 152064,
                hidden_size: 3584,
                intermediate_size: 18944,
                num_hidden_layers: 28,
                num_attention_heads: 28,
                num_key_value_heads: 4,
                rms_norm_eps: 1e-6,
                rope_theta: 1e6,
                mrope_section: [16, 24, 24],
                max_position_embeddings: 128000,
            },
            vision: vision_3b(3584),
            tie_word_embeddings: false,
            ..Self::qwen2_5_vl_3b()
        }
    }

    /// The tiny test/demo model (the config of `tests/fixtures/qwen2_5_vl`): vision hidden 16
    /// (2 heads, depth 4, full attention in blocks 1 and 3, 56-pixel windows), text hidden 48
    /// (4 heads, 2 KV heads, 2 layers, M-RoPE sections [2, 2, 2]), vocabulary 128.
    pub fn tiny() -> Self {
        Qwen25VlConfig {
            text: TextConfig {
                vocab_size: 128,
                hidden_size: 48,
                intermediate_size: 96,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                rms_norm_eps: 1e-6,
                rope_theta: 1e6,
                mrope_section: [2, 2, 2],
                max_position_embeddings: 512,
            },
            vision: VisionConfig {
                depth: 4,
                hidden_size: 16,
                intermediate_size: 32,
                num_heads: 2,
                in_channels: 3,
                patch_size: 14,
                temporal_patch_size: 2,
                spatial_merge_size: 2,
                window_size: 56,
                out_hidden_size: 48,
                fullatt_block_indexes: vec![1, 3],
                tokens_per_second: 2,
                rope_theta: 10000.0,
            },
            image_token_id: 120,
            video_token_id: 121,
            vision_start_token_id: 118,
            vision_end_token_id: 119,
            tie_word_embeddings: true,
        }
    }

    /// A built-in config by name: `qwen2.5-vl-3b`, `qwen2.5-vl-7b` or `tiny`.
    pub fn builtin(name: &str) -> Result<Self> {
        match name {
            "qwen2.5-vl-3b" => Ok(Self::qwen2_5_vl_3b()),
            "qwen2.5-vl-7b" => Ok(Self::qwen2_5_vl_7b()),
            "tiny" => Ok(Self::tiny()),
            other => Err(Error::file(
                "qwen2_5_vl built-in configs",
                format!("unknown config `{other}` (expected qwen2.5-vl-3b, qwen2.5-vl-7b or tiny)"),
            )),
        }
    }

    /// Parse a checkpoint's `config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parse `config.json` text; `source` names it in errors.
    pub fn from_json_str(text: &str, source: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text).map_err(|e| Error::file(source, format!("invalid JSON: {e}")))?;
        let top = root.as_object().ok_or_else(|| Error::file(source, "the config must be a JSON object"))?;
        let p = Parser { source };
        p.model_type(top, "model_type", &["qwen2_5_vl"], true)?;

        // Text keys: `text_config` (transformers 5.x) or the flat top level (hub files).
        let text_obj = match top.get("text_config") {
            Some(Value::Object(m)) => m,
            Some(Value::Null) | None => top,
            Some(_) => return Err(Error::file(source, "field `text_config` must be an object")),
        };
        if !std::ptr::eq(text_obj, top) {
            p.model_type(text_obj, "text_config.model_type", &["qwen2_5_vl_text"], false)?;
        }
        let tp = if std::ptr::eq(text_obj, top) { "" } else { "text_config." };
        let d = Self::qwen2_5_vl_3b();
        let hidden = p.usize(text_obj, tp, "hidden_size", Some(d.text.hidden_size))?;
        let heads = p.usize(text_obj, tp, "num_attention_heads", Some(d.text.num_attention_heads))?;
        let kv_heads = match text_obj.get("num_key_value_heads") {
            None | Some(Value::Null) => heads,
            Some(_) => p.usize(text_obj, tp, "num_key_value_heads", None)?,
        };
        p.activation(text_obj, tp)?;
        let (rope_theta, mrope_section) = p.text_rope(text_obj, top, tp)?;
        let text = TextConfig {
            vocab_size: p.usize(text_obj, tp, "vocab_size", Some(152064))?,
            hidden_size: hidden,
            intermediate_size: p.usize(text_obj, tp, "intermediate_size", Some(29568))?,
            num_hidden_layers: p.usize(text_obj, tp, "num_hidden_layers", Some(80))?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            rms_norm_eps: p.f64(text_obj, tp, "rms_norm_eps", Some(1e-5))?,
            rope_theta,
            mrope_section,
            max_position_embeddings: p.usize(text_obj, tp, "max_position_embeddings", Some(32768))?,
        };

        let vision_obj = match top.get("vision_config") {
            Some(Value::Object(m)) => m.clone(),
            Some(Value::Null) | None => Map::new(),
            Some(_) => return Err(Error::file(source, "field `vision_config` must be an object")),
        };
        // Old checkpoints wrote the top-level model type here; transformers accepts it.
        p.model_type(&vision_obj, "vision_config.model_type", &["qwen2_5_vl_vision", "qwen2_5_vl"], false)?;
        let vp = "vision_config.";
        p.activation(&vision_obj, vp)?;
        let vision_theta = match vision_obj.get("rope_parameters") {
            Some(Value::Object(r)) => {
                if let Some(t) = r.get("rope_type").and_then(Value::as_str) {
                    if t != "axial" && t != "default" {
                        return Err(Error::file(
                            source,
                            format!("field `vision_config.rope_parameters.rope_type` has unsupported value \"{t}\""),
                        ));
                    }
                }
                p.f64(r, "vision_config.rope_parameters.", "rope_theta", Some(10000.0))?
            }
            _ => 10000.0,
        };
        let in_channels = if vision_obj.contains_key("in_channels") {
            p.usize(&vision_obj, vp, "in_channels", None)?
        } else {
            p.usize(&vision_obj, vp, "in_chans", Some(3))?
        };
        let fullatt = match vision_obj.get("fullatt_block_indexes") {
            None | Some(Value::Null) => vec![7, 15, 23, 31],
            Some(Value::Array(a)) => {
                a.iter().map(|v| v.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>().ok_or_else(|| {
                    Error::file(source, "field `vision_config.fullatt_block_indexes` must be a list of integers")
                })?
            }
            Some(v) => {
                return Err(Error::file(
                    source,
                    format!("field `vision_config.fullatt_block_indexes` must be a list, got {v}"),
                ))
            }
        };
        let vision = VisionConfig {
            depth: p.usize(&vision_obj, vp, "depth", Some(32))?,
            hidden_size: p.usize(&vision_obj, vp, "hidden_size", Some(3584))?,
            intermediate_size: p.usize(&vision_obj, vp, "intermediate_size", Some(3420))?,
            num_heads: p.usize(&vision_obj, vp, "num_heads", Some(16))?,
            in_channels,
            patch_size: p.usize(&vision_obj, vp, "patch_size", Some(14))?,
            temporal_patch_size: p.usize(&vision_obj, vp, "temporal_patch_size", Some(2))?,
            spatial_merge_size: p.usize(&vision_obj, vp, "spatial_merge_size", Some(2))?,
            window_size: p.usize(&vision_obj, vp, "window_size", Some(112))?,
            out_hidden_size: p.usize(&vision_obj, vp, "out_hidden_size", Some(3584))?,
            fullatt_block_indexes: fullatt,
            tokens_per_second: p.usize(&vision_obj, vp, "tokens_per_second", Some(4))?,
            rope_theta: vision_theta,
        };
        // Pre-v5 saves put `tie_word_embeddings` inside text_config; transformers forwards it.
        let tie_top = p.bool(top, "", "tie_word_embeddings", Some(false))?;
        let tie_text =
            if std::ptr::eq(text_obj, top) { false } else { p.bool(text_obj, tp, "tie_word_embeddings", Some(false))? };
        let cfg = Qwen25VlConfig {
            text,
            vision,
            image_token_id: p.i64(top, "", "image_token_id", Some(151655))?,
            video_token_id: p.i64(top, "", "video_token_id", Some(151656))?,
            vision_start_token_id: p.i64(top, "", "vision_start_token_id", Some(151652))?,
            vision_end_token_id: p.i64(top, "", "vision_end_token_id", Some(151653))?,
            tie_word_embeddings: tie_top || tie_text,
        };
        cfg.validate().map_err(|msg| Error::file(source, msg))?;
        Ok(cfg)
    }

    /// This config as a transformers 5.x `config.json` (`Qwen2_5_VLForConditionalGeneration`,
    /// nested `text_config` / `vision_config`, `rope_parameters`); it parses back through
    /// [`from_json_str`](Self::from_json_str) to an equal config.
    ///
    /// ```
    /// use vlm4vla_models::qwen2_5_vl::Qwen25VlConfig;
    /// let cfg = Qwen25VlConfig::tiny();
    /// assert_eq!(Qwen25VlConfig::from_json_str(&cfg.to_hf_json().to_string(), "tiny").unwrap(), cfg);
    /// ```
    pub fn to_hf_json(&self) -> Value {
        let (v, t) = (&self.vision, &self.text);
        // Qwen2.5-VL's `<|endoftext|>` / `<|im_end|>`, where the vocabulary holds them (the
        // struct keeps no special ids; transformers warns about ids outside the vocabulary).
        let special = |id: usize| (id < t.vocab_size).then_some(id);
        serde_json::json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
            "text_config": {
                "model_type": "qwen2_5_vl_text",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "rms_norm_eps": t.rms_norm_eps,
                "max_position_embeddings": t.max_position_embeddings,
                "hidden_act": "silu",
                "bos_token_id": special(151643),
                "eos_token_id": special(151645),
                "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": t.mrope_section},
                "tie_word_embeddings": self.tie_word_embeddings,
            },
            "vision_config": {
                "model_type": "qwen2_5_vl_vision",
                "depth": v.depth,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_heads": v.num_heads,
                "in_channels": v.in_channels,
                "patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "window_size": v.window_size,
                "out_hidden_size": v.out_hidden_size,
                "fullatt_block_indexes": v.fullatt_block_indexes,
                "tokens_per_second": v.tokens_per_second,
                "hidden_act": "silu",
                "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
            },
        })
    }

    /// Check the relations the model relies on; the message names the fields involved.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.text;
        let v = &self.vision;
        let positive = [
            ("vocab_size", t.vocab_size),
            ("hidden_size", t.hidden_size),
            ("intermediate_size", t.intermediate_size),
            ("num_attention_heads", t.num_attention_heads),
            ("num_key_value_heads", t.num_key_value_heads),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_heads", v.num_heads),
            ("vision_config.in_channels", v.in_channels),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.temporal_patch_size", v.temporal_patch_size),
            ("vision_config.spatial_merge_size", v.spatial_merge_size),
            ("vision_config.out_hidden_size", v.out_hidden_size),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("field `{name}` must be positive"));
            }
        }
        if !t.hidden_size.is_multiple_of(t.num_attention_heads) || !t.head_dim().is_multiple_of(2) {
            return Err(format!(
                "`hidden_size` {} must split into `num_attention_heads` {} heads of even size",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
            return Err(format!(
                "`num_attention_heads` {} is not a multiple of `num_key_value_heads` {}",
                t.num_attention_heads, t.num_key_value_heads
            ));
        }
        if t.mrope_section.iter().sum::<usize>() != t.head_dim() / 2 {
            return Err(format!(
                "`mrope_section` {:?} must sum to head_dim / 2 = {}",
                t.mrope_section,
                t.head_dim() / 2
            ));
        }
        if !v.hidden_size.is_multiple_of(v.num_heads) || !v.head_dim().is_multiple_of(4) {
            return Err(format!(
                "`vision_config.hidden_size` {} must split into `vision_config.num_heads` {} heads of a size divisible by 4",
                v.hidden_size, v.num_heads
            ));
        }
        if v.merger_window() == 0 {
            return Err(format!(
                "`vision_config.window_size` {} is smaller than spatial_merge_size × patch_size = {}",
                v.window_size,
                v.spatial_merge_size * v.patch_size
            ));
        }
        if !(t.rms_norm_eps.is_finite() && t.rms_norm_eps >= 0.0) {
            return Err(format!("`rms_norm_eps` {} must be a finite non-negative number", t.rms_norm_eps));
        }
        Ok(())
    }

    /// Number of image tokens (after the 2×2 merge) for a patch grid `(t, h, w)`.
    pub fn image_tokens(&self, grid_thw: [usize; 3]) -> usize {
        grid_thw[0] * grid_thw[1] * grid_thw[2] / self.vision.merge_unit()
    }
}

struct Parser<'a> {
    source: &'a str,
}

impl Parser<'_> {
    fn err(&self, msg: String) -> Error {
        Error::file(self.source, msg)
    }

    fn model_type(&self, obj: &Map<String, Value>, field: &str, allowed: &[&str], required: bool) -> Result<()> {
        match obj.get("model_type") {
            None | Some(Value::Null) if !required => Ok(()),
            None | Some(Value::Null) => {
                Err(self.err(format!("field `{field}` is missing (expected \"{}\")", allowed[0])))
            }
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
            Some(v) => Err(self.err(format!(
                "field `{field}` has unsupported value {v} (expected {})",
                allowed.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(" or ")
            ))),
        }
    }

    fn activation(&self, obj: &Map<String, Value>, prefix: &str) -> Result<()> {
        match obj.get("hidden_act") {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(s)) if s == "silu" => Ok(()),
            Some(v) => {
                Err(self.err(format!("field `{prefix}hidden_act` has unsupported value {v} (expected \"silu\")")))
            }
        }
    }

    fn get<'v>(&self, obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
        obj.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, obj: &Map<String, Value>, prefix: &str, key: &str, default: Option<usize>) -> Result<usize> {
        match (self.get(obj, key), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.err(format!("field `{prefix}{key}` is missing"))),
            (Some(v), _) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.err(format!("field `{prefix}{key}` must be a non-negative integer, got {v}"))),
        }
    }

    fn i64(&self, obj: &Map<String, Value>, prefix: &str, key: &str, default: Option<i64>) -> Result<i64> {
        match (self.get(obj, key), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.err(format!("field `{prefix}{key}` is missing"))),
            (Some(v), _) => {
                v.as_i64().ok_or_else(|| self.err(format!("field `{prefix}{key}` must be an integer, got {v}")))
            }
        }
    }

    fn f64(&self, obj: &Map<String, Value>, prefix: &str, key: &str, default: Option<f64>) -> Result<f64> {
        match (self.get(obj, key), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.err(format!("field `{prefix}{key}` is missing"))),
            (Some(v), _) => {
                v.as_f64().ok_or_else(|| self.err(format!("field `{prefix}{key}` must be a number, got {v}")))
            }
        }
    }

    fn bool(&self, obj: &Map<String, Value>, prefix: &str, key: &str, default: Option<bool>) -> Result<bool> {
        match (self.get(obj, key), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.err(format!("field `{prefix}{key}` is missing"))),
            (Some(v), _) => {
                v.as_bool().ok_or_else(|| self.err(format!("field `{prefix}{key}` must be a boolean, got {v}")))
            }
        }
    }

    /// `(rope_theta, mrope_section)` from `rope_parameters` (5.x) or `rope_scaling` + `rope_theta`
    /// (hub), looked up in the text object and then the top level.
    fn text_rope(
        &self,
        text: &Map<String, Value>,
        top: &Map<String, Value>,
        prefix: &str,
    ) -> Result<(f64, [usize; 3])> {
        let (params, field) = if let Some(r) = self.get(text, "rope_parameters") {
            (Some(r), format!("{prefix}rope_parameters"))
        } else if let Some(r) = self.get(text, "rope_scaling") {
            (Some(r), format!("{prefix}rope_scaling"))
        } else if let Some(r) = self.get(top, "rope_scaling") {
            (Some(r), "rope_scaling".to_string())
        } else {
            (None, String::new())
        };
        let params = match params {
            None => None,
            Some(Value::Object(m)) => Some(m),
            Some(v) => return Err(self.err(format!("field `{field}` must be an object, got {v}"))),
        };
        let theta_default = match self.get(text, "rope_theta").or_else(|| self.get(top, "rope_theta")) {
            None => 1e6,
            Some(v) => v.as_f64().ok_or_else(|| self.err(format!("field `rope_theta` must be a number, got {v}")))?,
        };
        let Some(params) = params else {
            return Ok((theta_default, [16, 24, 24]));
        };
        for key in ["rope_type", "type"] {
            if let Some(v) = self.get(params, key) {
                match v.as_str() {
                    Some("default") | Some("mrope") => {}
                    _ => {
                        return Err(self.err(format!(
                            "field `{field}.{key}` has unsupported value {v} (expected \"mrope\" or \"default\")"
                        )))
                    }
                }
            }
        }
        let theta = match self.get(params, "rope_theta") {
            None => theta_default,
            Some(v) => {
                v.as_f64().ok_or_else(|| self.err(format!("field `{field}.rope_theta` must be a number, got {v}")))?
            }
        };
        let section = match self.get(params, "mrope_section") {
            None => [16, 24, 24],
            Some(Value::Array(a)) if a.len() == 3 => {
                let mut s = [0usize; 3];
                for (i, x) in a.iter().enumerate() {
                    s[i] = x.as_u64().ok_or_else(|| {
                        self.err(format!("field `{field}.mrope_section` must hold 3 integers, got {x}"))
                    })? as usize;
                }
                s
            }
            Some(v) => return Err(self.err(format!("field `{field}.mrope_section` must hold 3 integers, got {v}"))),
        };
        Ok((theta, section))
    }
}
