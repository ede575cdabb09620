//! `vlm4vla export`: a fine-tuned policy as a Hugging Face checkpoint directory.
//!
//! The backbone is written as transformers reads it (`vlm4vla_models::export::write_hf_dir`: the
//! checkpoint's own tensor names and `config.json`, the tokenizer and processor files), so the
//! fine-tuned VLM loads with `AutoModelForImageTextToText.from_pretrained(DIR)`. The policy's own
//! parts ride along in two more files transformers ignores:
//! - `vla_policy.safetensors`: the action queries, the head (and the state projection);
//! - `vla_policy.json`: the `[policy]` table, the action and state normalisers, the prompt and the
//!   cameras, i.e. what turns the backbone's hidden state back into robot actions.

use super::FinetunedPolicy;
use crate::engine::io::{save, write_atomic};
use crate::engine::{DType, Error, Result, Tensor};
use crate::models::export::{write_hf_dir, ExportSummary};
use std::path::Path;

/// The policy's own tensors in an export.
pub const POLICY_WEIGHTS: &str = "vla_policy.safetensors";
/// What maps hidden states to actions, in an export.
pub const POLICY_JSON: &str = "vla_policy.json";

/// Write `p` to `out` (which must not exist or be empty), its backbone in `dtype` (default: the
/// parameters' dtype).
pub fn export(p: &FinetunedPolicy, out: &Path, dtype: Option<DType>) -> Result<ExportSummary> {
    let summary = write_hf_dir(p.policy.backbone(), &p.source.config, p.source.dir.as_deref(), dtype, out)?;
    let own: Vec<(String, Tensor)> = p.policy.params().iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    let refs: Vec<(&str, &Tensor)> = own.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(out.join(POLICY_WEIGHTS), &refs, None)?;
    let json = serde_json::json!({
        "family": p.extra.family,
        "step": p.step,
        "policy": p.policy.config(),
        "normalizer": p.extra.normalizer,
        "state_normalizer": p.extra.state,
        "prompt": p.config.data.prompt,
        "image_size": p.config.data.image_size,
        "cameras": p.config.data.cameras,
        "state_key": p.config.data.state_key,
        "action_key": p.config.data.action_key,
    });
    let text = serde_json::to_vec_pretty(&json).map_err(|e| Error::invalid("export", e.to_string()))?;
    write_atomic(out.join(POLICY_JSON), &text)?;
    Ok(summary)
}
