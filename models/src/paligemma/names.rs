//! On-disk tensor names and shapes of a PaliGemma checkpoint (the hub spelling), declared once
//! (loading, validation, random init and the registry all read [`param_shapes`]), and the other
//! spellings we accept when loading.

use super::config::PaliGemmaConfig;
use crate::common::fused::{FusedLayout, Fusion};
use crate::ParamGroup;

/// Prefix of the vision tower as the hub files spell it.
pub const VISION: &str = "vision_tower.vision_model.";
/// Prefix of the decoder.
pub const TEXT: &str = "language_model.model.";
/// The token embedding (also the tied output layer).
pub const EMBED: &str = "language_model.model.embed_tokens";
/// The untied output layer (absent from tied checkpoints).
pub const LM_HEAD: &str = "language_model.lm_head";
/// The projector.
pub const PROJECTOR: &str = "multi_modal_projector.linear";

/// The hub name of a tensor given under any accepted spelling: `vision_tower.*` (what
/// transformers 5.x `save_pretrained` writes), the 5.x in-memory names (`model.vision_tower.*`,
/// `model.language_model.*`, `model.multi_modal_projector.*`, `lm_head.weight`) or the hub name.
///
/// ```
/// use vlm4vla_models::paligemma::canonical_name;
/// assert_eq!(canonical_name("vision_tower.post_layernorm.bias"), "vision_tower.vision_model.post_layernorm.bias");
/// assert_eq!(canonical_name("model.language_model.norm.weight"), "language_model.model.norm.weight");
/// ```
pub fn canonical_name(name: &str) -> String {
    const MAP: &[(&str, &str)] = &[
        ("vision_tower.vision_model.", VISION),
        ("model.vision_tower.vision_model.", VISION),
        ("model.vision_tower.", VISION),
        ("vision_tower.", VISION),
        ("model.language_model.", TEXT),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("lm_head.", "language_model.lm_head."),
    ];
    for (from, to) in MAP {
        if let Some(rest) = name.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    name.to_string()
}

/// The name transformers 5.x `save_pretrained` writes for a tensor given under any accepted
/// spelling: the hub name with the vision tower's `vision_model.` level dropped
/// (`vision_tower.embeddings.*`); the decoder, projector and untied head keep their hub names.
///
/// ```
/// use vlm4vla_models::paligemma::names::save_name;
/// assert_eq!(save_name("vision_tower.vision_model.post_layernorm.bias"), "vision_tower.post_layernorm.bias");
/// assert_eq!(save_name("model.language_model.norm.weight"), "language_model.model.norm.weight");
/// ```
pub fn save_name(name: &str) -> String {
    let hub = canonical_name(name);
    match hub.strip_prefix(VISION) {
        Some(rest) => format!("vision_tower.{rest}"),
        None => hub,
    }
}

/// Every parameter of a checkpoint with this config, by hub name, in module order (vision tower,
/// projector, decoder), with its shape. No tensor is allocated.
pub fn param_shapes(cfg: &PaliGemmaConfig) -> Vec<(String, Vec<usize>)> {
    let v = &cfg.vision;
    let t = &cfg.text;
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| out.push((name, shape));
    let (vh, vi) = (v.hidden_size, v.intermediate_size);
    add(format!("{VISION}embeddings.patch_embedding.weight"), vec![vh, v.num_channels, v.patch_size, v.patch_size]);
    add(format!("{VISION}embeddings.patch_embedding.bias"), vec![vh]);
    add(format!("{VISION}embeddings.position_embedding.weight"), vec![v.num_patches(), vh]);
    for i in 0..v.num_hidden_layers {
        let l = format!("{VISION}encoder.layers.{i}.");
        for ln in ["layer_norm1", "layer_norm2"] {
            add(format!("{l}{ln}.weight"), vec![vh]);
            add(format!("{l}{ln}.bias"), vec![vh]);
        }
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{l}self_attn.{proj}.weight"), vec![vh, vh]);
            add(format!("{l}self_attn.{proj}.bias"), vec![vh]);
        }
        add(format!("{l}mlp.fc1.weight"), vec![vi, vh]);
        add(format!("{l}mlp.fc1.bias"), vec![vi]);
        add(format!("{l}mlp.fc2.weight"), vec![vh, vi]);
        add(format!("{l}mlp.fc2.bias"), vec![vh]);
    }
    add(format!("{VISION}post_layernorm.weight"), vec![vh]);
    add(format!("{VISION}post_layernorm.bias"), vec![vh]);
    add(format!("{PROJECTOR}.weight"), vec![cfg.projection_dim, vh]);
    add(format!("{PROJECTOR}.bias"), vec![cfg.projection_dim]);

    let (h, inter, hd) = (t.hidden_size, t.intermediate_size, t.head_dim);
    add(format!("{EMBED}.weight"), vec![t.vocab_size, h]);
    for i in 0..t.num_hidden_layers {
        let l = format!("{TEXT}layers.{i}.");
        add(format!("{l}self_attn.q_proj.weight"), vec![t.num_attention_heads * hd, h]);
        add(format!("{l}self_attn.k_proj.weight"), vec![t.num_key_value_heads * hd, h]);
        add(format!("{l}self_attn.v_proj.weight"), vec![t.num_key_value_heads * hd, h]);
        add(format!("{l}self_attn.o_proj.weight"), vec![h, t.num_attention_heads * hd]);
        add(format!("{l}mlp.gate_proj.weight"), vec![inter, h]);
        add(format!("{l}mlp.up_proj.weight"), vec![inter, h]);
        add(format!("{l}mlp.down_proj.weight"), vec![h, inter]);
        add(format!("{l}input_layernorm.weight"), vec![h]);
        add(format!("{l}post_attention_layernorm.weight"), vec![h]);
    }
    add(format!("{TEXT}norm.weight"), vec![h]);
    if !cfg.tie_word_embeddings {
        add(format!("{LM_HEAD}.weight"), vec![t.vocab_size, h]);
    }
    out
}

/// The fused projections (see [`crate::common::fused`]): q|k|v as `self_attn.qkv_proj` in every
/// SigLIP encoder layer (with biases) and every Gemma decoder layer, and gate|up as
/// `mlp.gate_up_proj` in every Gemma layer (SigLIP's MLP is not gated).
pub const FUSED: &[Fusion] = &[
    Fusion { fused: "self_attn.qkv_proj", parts: &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"] },
    Fusion { fused: "mlp.gate_up_proj", parts: &["mlp.gate_proj", "mlp.up_proj"] },
];

/// [`FUSED`] applied to [`param_shapes`] (hub names).
pub fn fused_layout(cfg: &PaliGemmaConfig) -> FusedLayout {
    FusedLayout::new(FUSED, &param_shapes(cfg)).expect("the PaliGemma fusion table fits its own tensor list")
}

/// Total parameter count of a checkpoint with this config (no allocation).
pub fn num_params(cfg: &PaliGemmaConfig) -> usize {
    param_shapes(cfg).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
}

/// Which parameter group a name (either spelling) belongs to.
pub fn group_of(name: &str) -> ParamGroup {
    let name = canonical_name(name);
    if name.starts_with(VISION) {
        ParamGroup::Vision
    } else if name.starts_with("multi_modal_projector.") {
        ParamGroup::Connector
    } else if name.starts_with(EMBED) || name.starts_with(LM_HEAD) {
        ParamGroup::Embeddings
    } else {
        ParamGroup::LanguageModel
    }
}
