//! The on-disk tensor names and shapes of a Qwen2.5-VL checkpoint (the hub spelling), declared
//! once: loading, validation, random init and the registry all read [`param_shapes`].

use super::config::Qwen25VlConfig;
use crate::common::fused::{FusedLayout, Fusion};
use crate::ParamGroup;

/// The untied output layer (absent from tied checkpoints, dropped when a tied one stores it).
pub const LM_HEAD: &str = "lm_head.weight";
/// The token embedding (also the tied output layer).
pub const EMBED: &str = "model.embed_tokens.weight";

/// Every parameter with its on-disk (hub) name and shape, in a fixed order: `visual.*`,
/// `model.*`, then `lm_head.weight` when the embeddings are not tied.
pub fn param_shapes(cfg: &Qwen25VlConfig) -> Vec<(String, Vec<usize>)> {
    let v = &cfg.vision;
    let t = &cfg.text;
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>| out.push((name, shape));
    push(
        "visual.patch_embed.proj.weight".into(),
        vec![v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size],
    );
    let (vh, vi) = (v.hidden_size, v.intermediate_size);
    for i in 0..v.depth {
        let b = format!("visual.blocks.{i}");
        push(format!("{b}.norm1.weight"), vec![vh]);
        push(format!("{b}.norm2.weight"), vec![vh]);
        push(format!("{b}.attn.qkv.weight"), vec![3 * vh, vh]);
        push(format!("{b}.attn.qkv.bias"), vec![3 * vh]);
        push(format!("{b}.attn.proj.weight"), vec![vh, vh]);
        push(format!("{b}.attn.proj.bias"), vec![vh]);
        push(format!("{b}.mlp.gate_proj.weight"), vec![vi, vh]);
        push(format!("{b}.mlp.gate_proj.bias"), vec![vi]);
        push(format!("{b}.mlp.up_proj.weight"), vec![vi, vh]);
        push(format!("{b}.mlp.up_proj.bias"), vec![vi]);
        push(format!("{b}.mlp.down_proj.weight"), vec![vh, vi]);
        push(format!("{b}.mlp.down_proj.bias"), vec![vh]);
    }
    let merged = vh * v.merge_unit();
    push("visual.merger.ln_q.weight".into(), vec![vh]);
    push("visual.merger.mlp.0.weight".into(), vec![merged, merged]);
    push("visual.merger.mlp.0.bias".into(), vec![merged]);
    push("visual.merger.mlp.2.weight".into(), vec![v.out_hidden_size, merged]);
    push("visual.merger.mlp.2.bias".into(), vec![v.out_hidden_size]);

    let (h, kv, inter) = (t.hidden_size, t.kv_dim(), t.intermediate_size);
    push(EMBED.into(), vec![t.vocab_size, h]);
    for i in 0..t.num_hidden_layers {
        let l = format!("model.layers.{i}");
        push(format!("{l}.self_attn.q_proj.weight"), vec![h, h]);
        push(format!("{l}.self_attn.q_proj.bias"), vec![h]);
        push(format!("{l}.self_attn.k_proj.weight"), vec![kv, h]);
        push(format!("{l}.self_attn.k_proj.bias"), vec![kv]);
        push(format!("{l}.self_attn.v_proj.weight"), vec![kv, h]);
        push(format!("{l}.self_attn.v_proj.bias"), vec![kv]);
        push(format!("{l}.self_attn.o_proj.weight"), vec![h, h]);
        push(format!("{l}.mlp.gate_proj.weight"), vec![inter, h]);
        push(format!("{l}.mlp.up_proj.weight"), vec![inter, h]);
        push(format!("{l}.mlp.down_proj.weight"), vec![h, inter]);
        push(format!("{l}.input_layernorm.weight"), vec![h]);
        push(format!("{l}.post_attention_layernorm.weight"), vec![h]);
    }
    push("model.norm.weight".into(), vec![h]);
    if !cfg.tie_word_embeddings {
        push(LM_HEAD.into(), vec![t.vocab_size, h]);
    }
    out
}

/// The fused projections (see [`crate::common::fused`]): in every decoder layer q|k|v (with
/// their biases) as `self_attn.qkv_proj`, and gate|up as `mlp.gate_up_proj` in every decoder
/// layer and vision block (with biases there). The vision tower's `attn.qkv` is fused on disk
/// already.
pub const FUSED: &[Fusion] = &[
    Fusion { fused: "self_attn.qkv_proj", parts: &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"] },
    Fusion { fused: "mlp.gate_up_proj", parts: &["mlp.gate_proj", "mlp.up_proj"] },
];

/// [`FUSED`] applied to [`param_shapes`].
pub fn fused_layout(cfg: &Qwen25VlConfig) -> FusedLayout {
    FusedLayout::new(FUSED, &param_shapes(cfg)).expect("the Qwen2.5-VL fusion table fits its own tensor list")
}

/// Total parameter count of a config, from [`param_shapes`] (no allocation of tensors).
pub fn num_params(cfg: &Qwen25VlConfig) -> usize {
    param_shapes(cfg).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
}

/// What a checkpoint of `cfg` may store: [`param_shapes`], plus a tied config's redundant
/// `lm_head.weight`.
pub(crate) fn stored_shapes(cfg: &Qwen25VlConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = param_shapes(cfg);
    if cfg.tie_word_embeddings {
        out.push((LM_HEAD.into(), vec![cfg.text.vocab_size, cfg.text.hidden_size]));
    }
    out
}

/// Which parameter group an on-disk name belongs to.
pub fn group_of(name: &str) -> ParamGroup {
    if name.starts_with("visual.merger.") {
        ParamGroup::Connector
    } else if name.starts_with("visual.") {
        ParamGroup::Vision
    } else if name == EMBED || name == LM_HEAD {
        ParamGroup::Embeddings
    } else {
        ParamGroup::LanguageModel
    }
}

/// The hub name of a parameter given in transformers 5.x in-memory naming
/// (`model.visual.*` → `visual.*`, `model.language_model.*` → `model.*`); other names unchanged.
pub fn hub_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("model.visual.") {
        format!("visual.{rest}")
    } else if let Some(rest) = name.strip_prefix("model.language_model.") {
        format!("model.{rest}")
    } else {
        name.to_string()
    }
}
