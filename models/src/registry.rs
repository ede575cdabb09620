//! One entry point over the three families: built-in configs by name, a checkpoint directory's
//! own `config.json` (dispatched on `model_type`), and a summary (config, parameter counts per
//! group, stored dtype) computed from the parameter shape list without allocating weights.

use crate::common::backbone::{Backbone, ParamGroup};
use crate::{kosmos2, paligemma, qwen2_5_vl};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use vlm4vla_engine::{DType, Device, Error, Result, SafeTensorsFile};

/// A parsed config of any family.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    Qwen25Vl(qwen2_5_vl::Qwen25VlConfig),
    PaliGemma(paligemma::PaliGemmaConfig),
    Kosmos2(kosmos2::Kosmos2Config),
}

/// Built-in configs: the real sizes (random init, for benchmarks and `info`) and tiny ones (tests,
/// the demo).
pub const BUILTINS: &[&str] = &[
    "qwen2.5-vl-3b",
    "qwen2.5-vl-7b",
    "qwen2.5-vl-tiny",
    "paligemma-3b-pt-224",
    "paligemma-tiny",
    "kosmos-2-patch14-224",
    "kosmos-2-tiny",
];

/// The `model_type` values we accept in a checkpoint's `config.json`.
pub const MODEL_TYPES: &[&str] = &["qwen2_5_vl", "paligemma", "kosmos-2"];

impl ModelConfig {
    /// A built-in config by name (see [`BUILTINS`]).
    pub fn builtin(name: &str) -> Result<ModelConfig> {
        Ok(match name {
            "qwen2.5-vl-3b" | "qwen2.5-vl-7b" => ModelConfig::Qwen25Vl(qwen2_5_vl::Qwen25VlConfig::builtin(name)?),
            "qwen2.5-vl-tiny" => ModelConfig::Qwen25Vl(qwen2_5_vl::Qwen25VlConfig::builtin("tiny")?),
            "paligemma-3b-pt-224" => ModelConfig::PaliGemma(paligemma::PaliGemmaConfig::builtin(name)?),
            "paligemma-tiny" => ModelConfig::PaliGemma(paligemma::PaliGemmaConfig::builtin("tiny")?),
            "kosmos-2-patch14-224" => ModelConfig::Kosmos2(kosmos2::Kosmos2Config::builtin(name)?),
            "kosmos-2-tiny" => ModelConfig::Kosmos2(kosmos2::Kosmos2Config::builtin("tiny")?),
            other => {
                return Err(Error::invalid(
                    "model",
                    format!("unknown built-in model `{other}` (built-ins: {})", BUILTINS.join(", ")),
                ))
            }
        })
    }

    /// Parse `dir/config.json`, dispatching on its `model_type`.
    pub fn from_dir(dir: &Path) -> Result<ModelConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, format!("cannot read: {e}")))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("invalid JSON: {e}")))?;
        let model_type = json.get("model_type").and_then(|v| v.as_str()).ok_or_else(|| {
            Error::file(&path, format!("field `model_type` is missing (expected one of {})", MODEL_TYPES.join(", ")))
        })?;
        Ok(match model_type {
            "qwen2_5_vl" => ModelConfig::Qwen25Vl(qwen2_5_vl::Qwen25VlConfig::from_file(&path)?),
            "paligemma" => ModelConfig::PaliGemma(paligemma::PaliGemmaConfig::from_file(&path)?),
            "kosmos-2" => ModelConfig::Kosmos2(kosmos2::Kosmos2Config::from_file(&path)?),
            other => {
                return Err(Error::file(
                    &path,
                    format!("field `model_type`: unknown value `{other}` (expected one of {})", MODEL_TYPES.join(", ")),
                ))
            }
        })
    }

    /// This config as a transformers 5.x `config.json` (see the families' `to_hf_json`): what
    /// [`from_dir`](Self::from_dir) parses back to an equal config.
    pub fn to_hf_json(&self) -> serde_json::Value {
        match self {
            ModelConfig::Qwen25Vl(c) => c.to_hf_json(),
            ModelConfig::PaliGemma(c) => c.to_hf_json(),
            ModelConfig::Kosmos2(c) => c.to_hf_json(),
        }
    }

    /// Width of the language model's hidden states.
    pub fn hidden_size(&self) -> usize {
        match self {
            ModelConfig::Qwen25Vl(c) => c.text.hidden_size,
            ModelConfig::PaliGemma(c) => c.text.hidden_size,
            ModelConfig::Kosmos2(c) => c.text.embed_dim,
        }
    }

    /// The language model's decoder layers.
    pub fn num_lm_layers(&self) -> usize {
        match self {
            ModelConfig::Qwen25Vl(c) => c.text.num_hidden_layers,
            ModelConfig::PaliGemma(c) => c.text.num_hidden_layers,
            ModelConfig::Kosmos2(c) => c.text.layers,
        }
    }

    /// The language model's vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Qwen25Vl(c) => c.text.vocab_size,
            ModelConfig::PaliGemma(c) => c.text.vocab_size,
            ModelConfig::Kosmos2(c) => c.text.vocab_size,
        }
    }

    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Qwen25Vl(_) => "qwen2_5_vl",
            ModelConfig::PaliGemma(_) => "paligemma",
            ModelConfig::Kosmos2(_) => "kosmos2",
        }
    }

    /// Every parameter's on-disk name and shape.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            ModelConfig::Qwen25Vl(c) => qwen2_5_vl::param_shapes(c),
            ModelConfig::PaliGemma(c) => paligemma::param_shapes(c),
            ModelConfig::Kosmos2(c) => kosmos2::param_shapes(c),
        }
    }

    pub fn group_of(&self, name: &str) -> ParamGroup {
        match self {
            ModelConfig::Qwen25Vl(_) => qwen2_5_vl::group_of(name),
            ModelConfig::PaliGemma(_) => paligemma::group_of(name),
            ModelConfig::Kosmos2(_) => kosmos2::group_of(name),
        }
    }

    /// A few lines describing the architecture.
    pub fn describe(&self) -> Vec<String> {
        match self {
            ModelConfig::Qwen25Vl(c) => vec![
                format!(
                    "vision: ViT depth {}, hidden {}, {} heads, patch {}, window {} px, full-attention blocks {:?}, merge {}×{}",
                    c.vision.depth,
                    c.vision.hidden_size,
                    c.vision.num_heads,
                    c.vision.patch_size,
                    c.vision.window_size,
                    c.vision.fullatt_block_indexes,
                    c.vision.spatial_merge_size,
                    c.vision.spatial_merge_size
                ),
                format!(
                    "language model: Qwen2, {} layers, hidden {}, {} q / {} kv heads, MLP {}, vocab {}, M-RoPE {:?} θ={}, tied embeddings {}",
                    c.text.num_hidden_layers,
                    c.text.hidden_size,
                    c.text.num_attention_heads,
                    c.text.num_key_value_heads,
                    c.text.intermediate_size,
                    c.text.vocab_size,
                    c.text.mrope_section,
                    c.text.rope_theta,
                    c.tie_word_embeddings
                ),
            ],
            ModelConfig::PaliGemma(c) => vec![
                format!(
                    "vision: SigLIP {} layers, hidden {}, {} heads, MLP {}, image {} px, patch {}",
                    c.vision.num_hidden_layers,
                    c.vision.hidden_size,
                    c.vision.num_attention_heads,
                    c.vision.intermediate_size,
                    c.vision.image_size,
                    c.vision.patch_size
                ),
                format!("connector: linear {} → {}", c.vision.hidden_size, c.projection_dim),
                format!(
                    "language model: Gemma, {} layers, hidden {}, {} q / {} kv heads (head dim {}), MLP {}, vocab {}, tied embeddings {}",
                    c.text.num_hidden_layers,
                    c.text.hidden_size,
                    c.text.num_attention_heads,
                    c.text.num_key_value_heads,
                    c.text.head_dim,
                    c.text.intermediate_size,
                    c.text.vocab_size,
                    c.tie_word_embeddings
                ),
            ],
            ModelConfig::Kosmos2(c) => vec![
                format!(
                    "vision: CLIP {} layers, hidden {}, {} heads, MLP {}, image {} px, patch {}",
                    c.vision.num_hidden_layers,
                    c.vision.hidden_size,
                    c.vision.num_attention_heads,
                    c.vision.intermediate_size,
                    c.vision.image_size,
                    c.vision.patch_size
                ),
                format!("connector: {} latent queries, cross-attention", c.latent_query_num),
                format!(
                    "language model: Kosmos-2 decoder, {} layers, width {}, {} heads, FFN {}, vocab {}, tied embeddings {}",
                    c.text.layers,
                    c.text.embed_dim,
                    c.text.attention_heads,
                    c.text.ffn_dim,
                    c.text.vocab_size,
                    c.tie_word_embeddings
                ),
            ],
        }
    }
}

/// What `vlm4vla info --model` prints.
#[derive(Clone, Debug)]
pub struct ModelSummary {
    pub source: String,
    pub family: &'static str,
    pub description: Vec<String>,
    /// Parameter counts per group, in `ParamGroup` order.
    pub groups: BTreeMap<ParamGroup, usize>,
    pub total: usize,
    /// Stored dtypes and how many tensors have each, or `None` for a built-in config.
    pub stored_dtypes: Option<BTreeMap<String, usize>>,
}

/// Summarise a built-in name or a checkpoint directory.
pub fn summarize(spec: &str) -> Result<ModelSummary> {
    let dir = Path::new(spec);
    let (config, stored) = if BUILTINS.contains(&spec) {
        (ModelConfig::builtin(spec)?, None)
    } else if dir.is_dir() || spec.contains('/') {
        let dir = resolve(spec)?;
        (ModelConfig::from_dir(&dir)?, Some(stored_dtypes(&dir)?))
    } else {
        return Err(Error::invalid(
            "model",
            format!(
                "`{spec}` is neither a built-in model ({}), a checkpoint directory nor a hub id (org/name)",
                BUILTINS.join(", ")
            ),
        ));
    };
    let mut groups = BTreeMap::new();
    let mut total = 0;
    for (name, shape) in config.param_shapes() {
        let n: usize = shape.iter().product();
        *groups.entry(config.group_of(&name)).or_insert(0) += n;
        total += n;
    }
    Ok(ModelSummary {
        source: spec.to_string(),
        family: config.family(),
        description: config.describe(),
        groups,
        total,
        stored_dtypes: stored,
    })
}

/// A checkpoint directory, or a hub id's snapshot in the local Hugging Face cache.
fn resolve(spec: &str) -> Result<PathBuf> {
    Ok(crate::common::checkpoint::resolve(spec)?.dir)
}

/// Build a backbone: a built-in name gets random weights (seeded); a checkpoint directory or a
/// hub id in the local cache is loaded by its `config.json`'s `model_type`, converted to `dtype`.
pub fn load_backbone(spec: &str, dtype: DType, seed: u64) -> Result<Box<dyn Backbone>> {
    if BUILTINS.contains(&spec) {
        return Ok(match ModelConfig::builtin(spec)? {
            ModelConfig::Qwen25Vl(c) => Box::new(qwen2_5_vl::Qwen25Vl::random(c, seed, dtype)?),
            ModelConfig::PaliGemma(c) => Box::new(paligemma::PaliGemma::random(c, seed, dtype)?),
            ModelConfig::Kosmos2(c) => Box::new(kosmos2::Kosmos2::random(c, seed, dtype)?),
        });
    }
    let dir = resolve(spec)?;
    Ok(match ModelConfig::from_dir(&dir)? {
        ModelConfig::Qwen25Vl(_) => Box::new(qwen2_5_vl::Qwen25Vl::load(&dir, Some(dtype))?),
        ModelConfig::PaliGemma(_) => Box::new(paligemma::PaliGemma::load(&dir, Some(dtype))?),
        ModelConfig::Kosmos2(_) => Box::new(kosmos2::Kosmos2::load(&dir, Some(dtype))?),
    })
}

/// Dtypes of the tensors in a checkpoint directory (single file or sharded).
fn stored_dtypes(dir: &Path) -> Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for f in crate::common::checkpoint::checkpoint_files(dir)? {
        let file = SafeTensorsFile::open(&f)?;
        for name in file.names() {
            *out.entry(file.dtype(name)?.to_string()).or_insert(0) += 1;
        }
    }
    Ok(out)
}

impl std::fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "model: {} (family {})", self.source, self.family)?;
        for line in &self.description {
            writeln!(f, "  {line}")?;
        }
        writeln!(f, "parameters:")?;
        for (g, n) in &self.groups {
            writeln!(f, "  {:<15} {:>15}", g.as_str(), group_digits(*n))?;
        }
        writeln!(f, "  {:<15} {:>15}", "total", group_digits(self.total))?;
        match &self.stored_dtypes {
            Some(d) => {
                let parts: Vec<String> = d.iter().map(|(k, v)| format!("{k} ({v} tensors)")).collect();
                writeln!(f, "stored dtype: {}", parts.join(", "))
            }
            None => writeln!(f, "stored dtype: none (built-in config; weights are initialised at random)"),
        }
    }
}

/// `3754622976` → `3,754,622,976`.
pub fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A copy of `backbone` (built from `config`) with every parameter on `device`, fused projections
/// kept fused; the CPU copy can be dropped afterwards.
pub fn backbone_to_device(config: &ModelConfig, backbone: &dyn Backbone, device: Device) -> Result<Box<dyn Backbone>> {
    let mut moved = vlm4vla_engine::ParamStore::new();
    for (name, t) in backbone.params().iter() {
        moved.insert(name.to_string(), &t.to_device(device)?)?;
    }
    let mut out: Box<dyn Backbone> = match config {
        ModelConfig::Qwen25Vl(c) => Box::new(qwen2_5_vl::Qwen25Vl::from_params(c.clone(), moved)?),
        ModelConfig::PaliGemma(c) => Box::new(paligemma::PaliGemma::from_params(c.clone(), moved)?),
        ModelConfig::Kosmos2(c) => Box::new(kosmos2::Kosmos2::from_params(c.clone(), moved)?),
    };
    out.set_checkpoint_activations(backbone.checkpoint_activations());
    Ok(out)
}
