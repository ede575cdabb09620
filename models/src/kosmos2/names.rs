//! The on-disk tensor names and shapes of a Kosmos-2 checkpoint, declared once: loading,
//! validation, random init and the registry all read [`param_shapes`].

use super::config::Kosmos2Config;
use crate::common::fused::{FusedLayout, Fusion};
use crate::ParamGroup;

/// The CLIP vision tower.
pub const VISION: &str = "vision_model.model";
/// The image-to-text connector.
pub const CONNECTOR: &str = "image_to_text_projection";
/// The text decoder.
pub const TEXT: &str = "text_model.model";
/// The token embedding (also the tied output layer).
pub const EMBED: &str = "text_model.model.embed_tokens.weight";
/// The untied output layer (absent from tied checkpoints, dropped when a tied one stores it).
pub const LM_HEAD: &str = "text_model.lm_head.weight";

/// Every parameter's on-disk name and shape, in a fixed order (vision, connector, text). With
/// tied embeddings there is no `text_model.lm_head.weight`. Computed without allocating.
pub fn param_shapes(cfg: &Kosmos2Config) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |n: String, s: &[usize]| out.push((n, s.to_vec()));
    let v = &cfg.vision;
    let (vd, vp) = (v.hidden_size, VISION);
    add(format!("{vp}.embeddings.class_embedding"), &[vd]);
    add(format!("{vp}.embeddings.patch_embedding.weight"), &[vd, v.num_channels, v.patch_size, v.patch_size]);
    add(format!("{vp}.embeddings.position_embedding.weight"), &[v.num_positions(), vd]);
    add(format!("{vp}.pre_layrnorm.weight"), &[vd]);
    add(format!("{vp}.pre_layrnorm.bias"), &[vd]);
    for i in 0..v.num_hidden_layers {
        let l = format!("{vp}.encoder.layers.{i}");
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{l}.self_attn.{p}.weight"), &[vd, vd]);
            add(format!("{l}.self_attn.{p}.bias"), &[vd]);
        }
        add(format!("{l}.layer_norm1.weight"), &[vd]);
        add(format!("{l}.layer_norm1.bias"), &[vd]);
        add(format!("{l}.mlp.fc1.weight"), &[v.intermediate_size, vd]);
        add(format!("{l}.mlp.fc1.bias"), &[v.intermediate_size]);
        add(format!("{l}.mlp.fc2.weight"), &[vd, v.intermediate_size]);
        add(format!("{l}.mlp.fc2.bias"), &[vd]);
        add(format!("{l}.layer_norm2.weight"), &[vd]);
        add(format!("{l}.layer_norm2.bias"), &[vd]);
    }
    add(format!("{vp}.post_layernorm.weight"), &[vd]);
    add(format!("{vp}.post_layernorm.bias"), &[vd]);

    let t = &cfg.text;
    let (d, cp) = (t.embed_dim, CONNECTOR);
    add(format!("{cp}.dense.weight"), &[d, vd]);
    add(format!("{cp}.dense.bias"), &[d]);
    add(format!("{cp}.latent_query"), &[cfg.latent_query_num, d]);
    for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
        add(format!("{cp}.x_attn.{p}.weight"), &[d, d]);
        add(format!("{cp}.x_attn.{p}.bias"), &[d]);
    }

    let tp = TEXT;
    add(EMBED.to_string(), &[t.vocab_size, d]);
    for i in 0..t.layers {
        let l = format!("{tp}.layers.{i}");
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{l}.self_attn.{p}.weight"), &[d, d]);
            add(format!("{l}.self_attn.{p}.bias"), &[d]);
        }
        add(format!("{l}.self_attn.inner_attn_ln.weight"), &[d]);
        add(format!("{l}.self_attn.inner_attn_ln.bias"), &[d]);
        add(format!("{l}.self_attn_layer_norm.weight"), &[d]);
        add(format!("{l}.self_attn_layer_norm.bias"), &[d]);
        add(format!("{l}.ffn.fc1.weight"), &[t.ffn_dim, d]);
        add(format!("{l}.ffn.fc1.bias"), &[t.ffn_dim]);
        add(format!("{l}.ffn.fc2.weight"), &[d, t.ffn_dim]);
        add(format!("{l}.ffn.fc2.bias"), &[d]);
        add(format!("{l}.ffn.ffn_layernorm.weight"), &[t.ffn_dim]);
        add(format!("{l}.ffn.ffn_layernorm.bias"), &[t.ffn_dim]);
        add(format!("{l}.final_layer_norm.weight"), &[d]);
        add(format!("{l}.final_layer_norm.bias"), &[d]);
    }
    add(format!("{tp}.layer_norm.weight"), &[d]);
    add(format!("{tp}.layer_norm.bias"), &[d]);
    if !cfg.tie_word_embeddings {
        add(LM_HEAD.to_string(), &[t.vocab_size, d]);
    }
    out
}

/// The fused projections (see [`crate::common::fused`]): q|k|v (with biases) as
/// `self_attn.qkv_proj` in every CLIP encoder layer and every text decoder layer. In the
/// connector's `x_attn` the latent queries make q while k and v read the dense features followed
/// by the queries, so only k|v share an input: `x_attn.kv_proj`. No MLP here is gated.
pub const FUSED: &[Fusion] = &[
    Fusion { fused: "self_attn.qkv_proj", parts: &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"] },
    Fusion { fused: "x_attn.kv_proj", parts: &["x_attn.k_proj", "x_attn.v_proj"] },
];

/// [`FUSED`] applied to [`param_shapes`].
pub fn fused_layout(cfg: &Kosmos2Config) -> FusedLayout {
    FusedLayout::new(FUSED, &param_shapes(cfg)).expect("the Kosmos-2 fusion table fits its own tensor list")
}

/// Total number of parameters of `cfg` (1,664,485,376 for `kosmos-2-patch14-224`).
pub fn num_params(cfg: &Kosmos2Config) -> usize {
    param_shapes(cfg).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
}

/// Which group a Kosmos-2 parameter name belongs to.
pub fn group_of(name: &str) -> ParamGroup {
    if name.starts_with("vision_model.") {
        ParamGroup::Vision
    } else if name.starts_with("image_to_text_projection.") {
        ParamGroup::Connector
    } else if name == EMBED || name == LM_HEAD {
        ParamGroup::Embeddings
    } else {
        ParamGroup::LanguageModel
    }
}

/// What a checkpoint of `cfg` may store: [`param_shapes`], plus a tied config's redundant
/// `text_model.lm_head.weight`.
pub(crate) fn stored_shapes(cfg: &Kosmos2Config) -> Vec<(String, Vec<usize>)> {
    let mut out = param_shapes(cfg);
    if cfg.tie_word_embeddings {
        out.push((LM_HEAD.into(), vec![cfg.text.vocab_size, cfg.text.embed_dim]));
    }
    out
}
