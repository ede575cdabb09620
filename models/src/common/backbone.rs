//! The contract between a vision-language backbone and the VLA policy.

use super::fused::FusedLayout;
use vlm4vla_engine::{ParamStore, Result, Tensor};

/// A batch prepared by a family's processor.
///
/// Sequences are **left-padded** to a common length `L`, so every row's prompt ends at `L − 1`
/// and rows appended after the prompt (the action queries) start at `L` in every row.
#[derive(Clone, Debug)]
pub struct BackboneInput {
    /// Family-specific pixels: `[B, 3, H, W]` (PaliGemma, Kosmos-2) or Qwen's patch rows
    /// `[Σ patches, 1176]` for the whole batch.
    pub pixel_values: Tensor,
    /// Qwen only: `(t, h, w)` patch grid per image.
    pub image_grid_thw: Option<Vec<[usize; 3]>>,
    /// `[B, L]` i64 token ids.
    pub input_ids: Tensor,
    /// `[B, L]` u8, 1 on real tokens, 0 on padding.
    pub attention_mask: Tensor,
    /// `[B, L]` u8 per-token type mask the family needs: Qwen `mm_token_type_ids` (1 on image
    /// pads), PaliGemma `token_type_ids` (0 on the prefix, 1 on a suffix), Kosmos-2
    /// `image_embeds_position_mask` (1 where image embeddings go).
    pub token_type: Tensor,
}

impl BackboneInput {
    /// The batch on `device` (itself when every tensor is already there).
    pub fn to_device(self, device: vlm4vla_engine::Device) -> Result<BackboneInput> {
        Ok(BackboneInput {
            pixel_values: self.pixel_values.to_device(device)?,
            image_grid_thw: self.image_grid_thw,
            input_ids: self.input_ids.to_device(device)?,
            attention_mask: self.attention_mask.to_device(device)?,
            token_type: self.token_type.to_device(device)?,
        })
    }
}

/// Last-layer hidden states and where the appended rows are.
#[derive(Clone, Debug)]
pub struct BackboneOutput {
    /// `[B, L + Q, hidden]`, after the final norm.
    pub hidden: Tensor,
    /// The sequence positions of the `Q` appended rows (`L..L + Q`).
    pub appended: std::ops::Range<usize>,
}

/// Parameter groups, for freezing and for parameter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamGroup {
    Vision,
    Connector,
    LanguageModel,
    Embeddings,
}

impl ParamGroup {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamGroup::Vision => "vision",
            ParamGroup::Connector => "connector",
            ParamGroup::LanguageModel => "language_model",
            ParamGroup::Embeddings => "embeddings",
        }
    }
}

/// What the VLA policy needs from any family.
pub trait Backbone: Send + Sync {
    /// The family name (`qwen2_5_vl`, `paligemma`, `kosmos2`).
    fn family(&self) -> &'static str;
    /// Width of the language model's hidden states (and of the appended embeddings).
    fn hidden_size(&self) -> usize;
    /// The parameters, keyed by their on-disk checkpoint names, except the fused projections,
    /// held under the names of [`fused`](Self::fused).
    fn params(&self) -> &ParamStore;
    /// The same store, mutably: what freezing changes ([`ParamStore::set_requires_grad`]). The
    /// model fetches every parameter from the store at forward time, so a frozen parameter
    /// reaches the ops as a non-tracking tensor: it records no graph, keeps no activations for
    /// a backward and gets no gradient.
    fn params_mut(&mut self) -> &mut ParamStore;
    /// Which parameters are fused projections and the checkpoint tensors each one holds (none
    /// by default); what turns [`params`](Self::params) back into checkpoint names.
    fn fused(&self) -> &FusedLayout {
        FusedLayout::none()
    }
    /// The parameters by checkpoint name, in order: [`params`](Self::params) with every fused
    /// projection split into detached row views of its parts.
    fn checkpoint_params(&self) -> Result<Vec<(String, Tensor)>> {
        let named: Vec<(String, Tensor)> = self.params().iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
        self.fused().split(&named)
    }
    /// Which group a parameter name belongs to.
    fn group_of(&self, name: &str) -> ParamGroup;
    /// The decoder layer (0-based) a language-model parameter belongs to; None for every other
    /// parameter and for language-model parameters outside the layers (the final norm). By
    /// default the `<i>` of `.layers.<i>.` in a name of the [`ParamGroup::LanguageModel`] group
    /// (fused names included).
    fn lm_layer_of(&self, name: &str) -> Option<usize> {
        if self.group_of(name) != ParamGroup::LanguageModel {
            return None;
        }
        layer_index(name)
    }
    /// The number of decoder layers of the language model. By default one more than the
    /// highest [`lm_layer_of`](Self::lm_layer_of) over the parameters (0 without any).
    fn num_lm_layers(&self) -> usize {
        self.params().names().iter().filter_map(|n| self.lm_layer_of(n)).max().map_or(0, |i| i + 1)
    }
    /// Activation checkpointing per transformer block (`engine::nn::block`): when on, every
    /// block of the vision tower and the language model keeps only its output during the
    /// forward and recomputes its activations in the backward pass (less memory, about one more
    /// forward per step; the same gradients).
    fn set_checkpoint_activations(&mut self, on: bool);
    /// Whether [`set_checkpoint_activations`](Self::set_checkpoint_activations) is on.
    fn checkpoint_activations(&self) -> bool;
    /// Run the full model over image tokens + prompt tokens + `extra` rows `[B, Q, hidden]`
    /// appended after the prompt. The appended rows see every real prompt token and the
    /// appended rows before them (causal among themselves); prompt tokens never see them.
    fn forward(&self, input: &BackboneInput, extra: Option<&Tensor>) -> Result<BackboneOutput>;
    /// [`forward`](Self::forward)'s last `rows` rows of the final hidden states alone,
    /// `[B, rows, hidden]` (all of them when `rows` exceeds the length): what the VLA head reads.
    /// The families compute their last decoder layer's queries, attention, MLP and final norm for
    /// these rows only (the other rows still give their keys and values): the same values and the
    /// same gradients, for less work. By default, `forward` narrowed.
    fn forward_last_rows(&self, input: &BackboneInput, extra: Option<&Tensor>, rows: usize) -> Result<Tensor> {
        let hidden = self.forward(input, extra)?.hidden;
        let len = hidden.dim(1)?;
        hidden.narrow(1, len.saturating_sub(rows), rows.min(len))
    }
}

/// The `<i>` of the first `layers.<i>.` segment of a dotted parameter name.
///
/// ```
/// use vlm4vla_models::common::backbone::layer_index;
/// assert_eq!(layer_index("model.layers.12.mlp.down_proj.weight"), Some(12));
/// assert_eq!(layer_index("layers.0.weight"), Some(0));
/// assert_eq!(layer_index("model.norm.weight"), None);
/// assert_eq!(layer_index("model.sublayers.3.weight"), None);
/// ```
pub fn layer_index(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(3).find_map(|w| if w[0] == "layers" { w[1].parse().ok() } else { None })
}
