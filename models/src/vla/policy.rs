//! The VLA policy: a backbone, learnable action queries appended after the prompt, and the
//! FCDecoder on the queries' last hidden states (DESIGN.md §5).
//!
//! Shapes, with `B` the batch, `L` the prompt length, `H` the backbone's hidden width, `Q` the
//! number of action queries (`latent`) and `C` the chunk length:
//!
//! ```text
//! vla.action_query [Q, H] ──broadcast──► extra [B, Q, H]
//! Backbone::forward(input, Some(extra)) ─► hidden [B, L + Q, H] ─► rows L..L+Q: [B, Q, H]
//! combine (flatten → [B, Q·H], or mean → [B, H]) ─► FcDecoder ─► arm [B, C, A] (tanh),
//!                                                                gripper logits [B, C]
//! ```
//!
//! Actions are `D = policy.action_dim` wide (7 by default). With `policy.gripper = "last"` (the
//! default) the last dimension is a binary gripper and `A = D − 1`; the loss is
//! `Huber(arm, targets[..., :A]) + ratio · BCE-with-logits(gripper, targets[..., A])`. With
//! `policy.gripper = "none"` every dimension is continuous, `A = D`, and the loss is the Huber term
//! alone. Each term is averaged over the chunk steps the mask marks valid (steps past an episode's
//! end count for nothing). Arm targets are the *normalised* actions (in [−1, 1]); gripper targets
//! are 0 (closed) or 1 (open). [`VlaPolicy::predict`] returns normalised arm actions and the
//! gripper as −1 / +1 (open when the predicted probability is at least 0.5); de-normalising the
//! arm is the caller's job.

use super::head::{FcDecoder, GripperMode, HeadConfig, HeadOutput};
use crate::common::backbone::{Backbone, BackboneInput, ParamGroup};
use serde::{Deserialize, Serialize};
use std::path::Path;
use vlm4vla_engine::ops::{bce_with_logits, huber, Reduction};
use vlm4vla_engine::{nn, CmpKind, DType, Device, Error, ParamStore, Result, SafeTensorsFile, Tensor};

/// The name of the action-query parameter, `[latent, hidden]`.
pub const ACTION_QUERY: &str = "vla.action_query";
/// The state projection's parameter prefix (`.weight` `[hidden, state_dim]`, `.bias` `[hidden]`).
pub const STATE_PROJ: &str = "vla.state_proj";
/// The prefix of every parameter the policy adds to its backbone's.
pub const POLICY_PREFIX: &str = "vla.";
/// The default width of one action: 6 arm deltas + the gripper (the paper's CALVIN actions).
pub const DEFAULT_ACTION_DIM: usize = 7;

fn default_action_dim() -> usize {
    DEFAULT_ACTION_DIM
}

/// How the hidden states of `latent > 1` action queries become the head's input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatentCombine {
    /// Concatenate the `latent` rows into one `latent · hidden` vector (RoboVLMs' FCDecoder with
    /// `down_sample = "none"`); the trunk's middle width is then `latent · hidden / 2`.
    #[default]
    Flatten,
    /// Average the rows into one `hidden` vector.
    Mean,
}

/// Policy hyper-parameters; the defaults are the paper's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Actions predicted per step (the action chunk).
    pub chunk: usize,
    /// Values per action (7: 6 arm deltas and the gripper). A fine-tuning config that leaves it
    /// out takes the dataset's action width.
    #[serde(default = "default_action_dim")]
    pub action_dim: usize,
    /// Whether the last action dimension is a binary gripper (`"last"`, the default) or every
    /// dimension is continuous (`"none"`).
    pub gripper: GripperMode,
    /// Number of learnable action-query rows appended after the prompt.
    pub latent: usize,
    /// How `latent > 1` rows are combined.
    pub latent_combine: LatentCombine,
    /// Weight of the gripper BCE term.
    pub gripper_loss_ratio: f64,
    /// Huber delta of the arm term.
    pub huber_delta: f64,
    pub head: HeadConfig,
    /// Width of the proprioceptive state fed to the policy (0: none). When set, a learnable
    /// linear map (`vla.state_proj`) turns the state into one more appended row, placed before
    /// the action queries, so the queries attend to it.
    pub state_dim: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            chunk: 10,
            action_dim: DEFAULT_ACTION_DIM,
            gripper: GripperMode::Last,
            latent: 1,
            latent_combine: LatentCombine::Flatten,
            gripper_loss_ratio: 0.01,
            huber_delta: 1.0,
            head: HeadConfig::default(),
            state_dim: 0,
        }
    }
}

impl PolicyConfig {
    /// Errors name the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.chunk == 0 {
            return Err(invalid("policy.chunk must be at least 1"));
        }
        if self.latent == 0 {
            return Err(invalid("policy.latent must be at least 1"));
        }
        let least = 1 + self.gripper.dims();
        if self.action_dim < least {
            return Err(invalid(match self.gripper {
                GripperMode::Last => format!(
                    "policy.action_dim = {} must be at least 2 with policy.gripper = \"last\" (an arm dimension and the gripper)",
                    self.action_dim
                ),
                GripperMode::None => format!("policy.action_dim = {} must be at least 1", self.action_dim),
            }));
        }
        if !(self.gripper_loss_ratio.is_finite() && self.gripper_loss_ratio >= 0.0) {
            return Err(invalid(format!(
                "policy.gripper_loss_ratio {} must be finite and non-negative",
                self.gripper_loss_ratio
            )));
        }
        if !(self.huber_delta.is_finite() && self.huber_delta > 0.0) {
            return Err(invalid(format!("policy.huber_delta {} must be finite and positive", self.huber_delta)));
        }
        self.head.validate()
    }

    /// The continuous (tanh, Huber) dimensions per action: `action_dim` less the gripper.
    pub fn arm_dims(&self) -> usize {
        self.action_dim.saturating_sub(self.gripper.dims())
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid { op: "vla policy", msg: msg.into() }
}

/// The loss of one batch and its parts, on the device: reading them is left to the caller, who
/// can read them with other values in one host read ([`PolicyLoss::stats`]) or alone
/// ([`PolicyLoss::values`]).
#[derive(Clone, Debug)]
pub struct PolicyLoss {
    /// `arm + ratio · gripper`, a differentiable scalar.
    pub loss: Tensor,
    /// The Huber term (mean over valid steps and the arm dims), a scalar.
    pub arm: Tensor,
    /// The BCE term before weighting (mean over valid steps), a scalar; 0 without a gripper.
    pub gripper: Tensor,
    /// How many valid steps have the right gripper state (logit ≥ 0 ⇔ target ≥ 0.5): a scalar
    /// count, f32 (f64 for an f64 model); 0 without a gripper.
    pub gripper_correct: Tensor,
    /// How many chunk steps the mask marked valid.
    pub valid_steps: usize,
}

/// The values of a [`PolicyLoss`] on the host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossValues {
    pub loss: f64,
    pub arm: f64,
    pub gripper: f64,
    /// Fraction of valid steps whose gripper state is right; 0 when no step is valid or the
    /// policy has no gripper.
    pub gripper_accuracy: f64,
    pub valid_steps: usize,
}

impl PolicyLoss {
    /// `[loss, arm, gripper, gripper_correct]` as one detached `[4]` tensor on the device, in
    /// the dtype of `gripper_correct` (every value exact in it), for a caller that reads it with
    /// other values.
    pub fn stats(&self) -> Result<Tensor> {
        let dtype = self.gripper_correct.dtype();
        let parts = [&self.loss, &self.arm, &self.gripper, &self.gripper_correct]
            .iter()
            .map(|t| t.detach().to_dtype(dtype)?.reshape(&[1]))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)
    }

    /// The values from [`stats`](Self::stats) read back.
    pub fn values_from(&self, stats: &[f64]) -> Result<LossValues> {
        let &[loss, arm, gripper, correct] = stats else {
            return Err(invalid(format!("expected the 4 loss stats, got {}", stats.len())));
        };
        let n = self.valid_steps;
        let gripper_accuracy = if n == 0 { 0.0 } else { correct / n as f64 };
        Ok(LossValues { loss, arm, gripper, gripper_accuracy, valid_steps: n })
    }

    /// The values, read to the host in one read.
    pub fn values(&self) -> Result<LossValues> {
        self.values_from(&self.stats()?.to_vec::<f64>()?)
    }
}

/// What trains (see [`VlaPolicy::set_trainable`]).
///
/// ```
/// use vlm4vla_models::vla::TrainableParts;
/// use vlm4vla_models::ParamGroup;
/// // The head and the last two decoder layers of the language model (and its final norm).
/// let parts = TrainableParts { groups: vec![ParamGroup::LanguageModel], head: true, llm_last_layers: Some(2) };
/// assert_ne!(parts, TrainableParts::all());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainableParts {
    /// The backbone groups that train ([`Backbone::group_of`]).
    pub groups: Vec<ParamGroup>,
    /// Whether the policy's own parameters (action queries, state projection, head) train.
    pub head: bool,
    /// When the language model trains: only its last this many decoder layers do (layers
    /// `≥ num_lm_layers − n`, by [`Backbone::lm_layer_of`]), with the language-model parameters
    /// outside the layers (the final norm); None: every layer.
    pub llm_last_layers: Option<usize>,
}

impl TrainableParts {
    /// Every backbone group, every layer and the head.
    pub fn all() -> TrainableParts {
        TrainableParts {
            groups: vec![ParamGroup::Vision, ParamGroup::Connector, ParamGroup::LanguageModel, ParamGroup::Embeddings],
            head: true,
            llm_last_layers: None,
        }
    }
}

/// A backbone turned into a VLA policy.
pub struct VlaPolicy {
    backbone: Box<dyn Backbone>,
    config: PolicyConfig,
    /// The policy's own parameters (`vla.*`): action queries and head.
    params: ParamStore,
    head: FcDecoder,
    /// Whether the backbone's last layer runs over every row ([`Self::set_full_last_layer`]).
    full_last_layer: bool,
}

impl VlaPolicy {
    /// Wrap `backbone`: zero action queries `[latent, hidden]` and a freshly initialised head
    /// (weights drawn from `seed`), in the dtype and on the device of the backbone's first float
    /// parameter (f32 on the CPU for a backbone without parameters). The backbone's
    /// `requires_grad` flags are kept (every float parameter of a freshly built or loaded
    /// backbone trains) until [`set_trainable`](Self::set_trainable).
    pub fn new(backbone: Box<dyn Backbone>, config: PolicyConfig, seed: u64) -> Result<VlaPolicy> {
        config.validate()?;
        let hidden = backbone.hidden_size();
        if hidden == 0 {
            return Err(invalid(format!("backbone `{}` reports hidden size 0", backbone.family())));
        }
        let (dtype, device) = backbone
            .params()
            .iter()
            .find(|(_, t)| t.dtype().is_float())
            .map(|(_, t)| (t.dtype(), t.device()))
            .unwrap_or((DType::F32, Device::Cpu));
        let mut params = ParamStore::new();
        params.insert(ACTION_QUERY, &Tensor::zeros(&[config.latent, hidden], dtype, device)?)?;
        let in_features = match config.latent_combine {
            LatentCombine::Flatten => config.latent * hidden,
            LatentCombine::Mean => hidden,
        };
        let head = FcDecoder::init(
            &mut params,
            &config.head,
            in_features,
            config.chunk,
            config.action_dim,
            config.gripper,
            dtype,
            device,
            seed,
        )?;
        if config.state_dim > 0 {
            let bound = 1.0 / (config.state_dim as f64).sqrt();
            let w = Tensor::rand_uniform(
                -bound,
                bound,
                &[hidden, config.state_dim],
                dtype,
                device,
                seed ^ 0x5EED_57A7_E000_0001,
            )?;
            params.insert(format!("{STATE_PROJ}.weight"), &w)?;
            params.insert(format!("{STATE_PROJ}.bias"), &Tensor::zeros(&[hidden], dtype, device)?)?;
        }
        Ok(VlaPolicy { backbone, config, params, head, full_last_layer: false })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    pub fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    /// Activation checkpointing per transformer block of the backbone (see
    /// [`Backbone::set_checkpoint_activations`]).
    pub fn set_checkpoint_activations(&mut self, on: bool) {
        self.backbone.set_checkpoint_activations(on);
    }

    /// Run the backbone's last decoder layer over every row (`on`), or, the default, compute
    /// its queries, attention, MLP and final norm for the action-query rows the head reads alone
    /// ([`Backbone::forward_last_rows`]): the same loss and gradients, less work by about
    /// `1 / layers` of the language model. Turning it on is for comparisons.
    pub fn set_full_last_layer(&mut self, on: bool) {
        self.full_last_layer = on;
    }

    /// The policy's own parameters (`vla.action_query`, `vla.head.*`).
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    pub fn head(&self) -> &FcDecoder {
        &self.head
    }

    /// Choose what trains: the backbone parameters whose [`Backbone::group_of`] is in
    /// `parts.groups` (for the language model, only the last `parts.llm_last_layers` decoder
    /// layers and its parameters outside the layers, when set), and the policy's own parameters
    /// (action queries, state projection, head) when `parts.head` is true.
    ///
    /// Freezing is real: every float backbone parameter not chosen gets `requires_grad = false`
    /// in the backbone's store (and every chosen one `true`), so the backbone hands frozen
    /// parameters to its ops as non-tracking tensors: they record no graph, keep no activations
    /// for a backward and get no gradient. A tower with every parameter frozen and no tracking
    /// input runs as under `no_grad`.
    ///
    /// Errors when nothing would train, and when `llm_last_layers` is 0 or more than the
    /// language model's layers (naming `train_llm_last_layers`); nothing is changed then.
    pub fn set_trainable(&mut self, parts: &TrainableParts) -> Result<()> {
        let bb = self.backbone.as_ref();
        let lm_layers = bb.num_lm_layers();
        let first_lm_layer = match parts.llm_last_layers {
            None => 0,
            Some(n) if n == 0 || n > lm_layers => {
                return Err(invalid(format!(
                    "train_llm_last_layers = {n} must be in 1..={lm_layers} (the decoder layers of backbone `{}`)",
                    bb.family()
                )))
            }
            Some(n) => lm_layers - n,
        };
        let chosen = |name: &str| {
            let group = bb.group_of(name);
            parts.groups.contains(&group)
                && (group != ParamGroup::LanguageModel || bb.lm_layer_of(name).is_none_or(|i| i >= first_lm_layer))
        };
        let flags: Vec<(String, bool)> =
            bb.params().iter().filter(|(_, t)| t.dtype().is_float()).map(|(n, _)| (n.to_string(), chosen(n))).collect();
        if !parts.head && !flags.iter().any(|(_, on)| *on) {
            return Err(invalid(
                "nothing to train: no backbone parameter is in the chosen groups and the head is frozen",
            ));
        }
        let store = self.backbone.params_mut();
        for (n, on) in &flags {
            store.set_requires_grad(n, *on)?;
        }
        let names: Vec<String> = self.params.names().to_vec();
        for n in &names {
            self.params.set_requires_grad(n, parts.head)?;
        }
        Ok(())
    }

    /// `(name, handle)` of every parameter the optimizer should update: the backbone's
    /// trainable parameters, then the policy's, each in insertion order.
    pub fn trainable_params(&self) -> Vec<(String, Tensor)> {
        let mut out = self.backbone.params().trainable();
        out.extend(self.params.trainable());
        out
    }

    /// Every parameter, backbone first, by checkpoint name: the backbone's fused projections
    /// split into row views under their checkpoint tensors' names (see [`Backbone::fused`]).
    pub fn named_params(&self) -> Result<Vec<(String, Tensor)>> {
        let all: Vec<(String, Tensor)> =
            self.backbone.params().iter().chain(self.params.iter()).map(|(n, t)| (n.to_string(), t.clone())).collect();
        self.checkpoint_tensors(&all)
    }

    /// `named` (parameters as [`trainable_params`](Self::trainable_params) names them, or
    /// anything shaped like them, e.g. their gradients) under checkpoint names, as files are
    /// written: every fused backbone projection split into detached row views of its parts.
    pub fn checkpoint_tensors(&self, named: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        self.backbone.fused().split(named)
    }

    /// Element counts: (all, trainable).
    pub fn num_params(&self) -> (usize, usize) {
        let all = self.backbone.params().num_params() + self.params.num_params();
        let trainable = self.trainable_params().iter().map(|(_, t)| t.elem_count()).sum();
        (all, trainable)
    }

    /// Overwrite parameters with the tensors of a safetensors file (names as in
    /// [`named_params`](Self::named_params), i.e. checkpoint names; a file may hold any subset,
    /// e.g. the trainable weights of a checkpoint, and a part of a fused projection lands in its
    /// rows). Returns how many were loaded. A name the policy does not have, or a shape that
    /// differs, is an error naming the tensor and the file; nothing is changed then.
    pub fn load_weights(&self, path: impl AsRef<Path>) -> Result<usize> {
        let path = path.as_ref();
        let file = SafeTensorsFile::open(path)?;
        let fused = self.backbone.fused();
        let mut pending = Vec::new();
        for name in file.names() {
            let store = if name.starts_with(POLICY_PREFIX) { &self.params } else { self.backbone.params() };
            if !store.contains(name) && fused.slot(name).is_none() {
                return Err(Error::tensor(path, name, "the policy has no parameter with this name"));
            }
            let dst = fused.get(store, name)?;
            let src = file.get_as(name, dst.shape(), Some(dst.dtype()))?;
            pending.push((dst, src));
        }
        for (dst, src) in &pending {
            dst.assign(src)?;
        }
        Ok(pending.len())
    }

    /// The action queries as the backbone's `extra` rows, `[B, latent, hidden]`.
    fn extra_rows(&self, batch: usize, state: Option<&Tensor>) -> Result<Tensor> {
        let q = self.params.get(ACTION_QUERY)?;
        let (latent, hidden) = (q.dim(0)?, q.dim(1)?);
        let queries = q.unsqueeze(0)?.broadcast_as(&[batch, latent, hidden])?.contiguous()?;
        let sd = self.config.state_dim;
        match (sd, state) {
            (0, None) => Ok(queries),
            (0, Some(s)) => Err(invalid(format!(
                "a state {:?} was given but the policy takes none (policy.state_dim = 0)",
                s.shape()
            ))),
            (_, None) => {
                Err(invalid(format!("the policy takes a [B, {sd}] state (policy.state_dim) but none was given")))
            }
            (_, Some(s)) => {
                if s.shape() != [batch, sd] {
                    return Err(Error::ShapeMismatch {
                        op: "VlaPolicy::forward",
                        shapes: vec![s.shape().to_vec()],
                        note: format!("expected the state [{batch}, {sd}] (batch, policy.state_dim)"),
                    });
                }
                let w = self.params.get(&format!("{STATE_PROJ}.weight"))?;
                let b = self.params.get(&format!("{STATE_PROJ}.bias"))?;
                let row = nn::linear(&s.detach().to_dtype(q.dtype())?, &w, Some(&b))?.unsqueeze(1)?;
                Tensor::cat(&[&row, &queries], 1)
            }
        }
    }

    /// Run backbone and head: arm `[B, chunk, arm_dims]` (tanh) and, with a gripper, its logits
    /// `[B, chunk]`.
    pub fn forward(&self, input: &BackboneInput) -> Result<HeadOutput> {
        self.forward_with_state(input, None)
    }

    /// [`forward`](Self::forward) with the proprioceptive state `[B, state_dim]` (required when
    /// `policy.state_dim > 0`, refused otherwise).
    pub fn forward_with_state(&self, input: &BackboneInput, state: Option<&Tensor>) -> Result<HeadOutput> {
        let batch = input.input_ids.dim(0)?;
        let extra = self.extra_rows(batch, state)?;
        let extra_len = extra.dim(1)?;
        let latent = self.config.latent;
        let rows = if self.full_last_layer {
            let out = self.backbone.forward(input, Some(&extra))?;
            if out.appended.len() != extra_len || out.hidden.rank() != 3 || out.hidden.dim(1)? < out.appended.end {
                return Err(Error::ShapeMismatch {
                    op: "VlaPolicy::forward",
                    shapes: vec![out.hidden.shape().to_vec()],
                    note: format!(
                        "backbone `{}` returned appended rows {:?} for {extra_len} appended rows",
                        self.backbone.family(),
                        out.appended
                    ),
                });
            }
            out.hidden.narrow(1, out.appended.end - latent, latent)?
        } else {
            // The action queries are the last appended rows.
            let rows = self.backbone.forward_last_rows(input, Some(&extra), latent)?;
            let hidden = self.backbone.hidden_size();
            if rows.shape() != [batch, latent, hidden] {
                return Err(Error::ShapeMismatch {
                    op: "VlaPolicy::forward",
                    shapes: vec![rows.shape().to_vec()],
                    note: format!(
                        "backbone `{}` returned these last rows; expected [{batch}, {latent}, {hidden}]",
                        self.backbone.family()
                    ),
                });
            }
            rows
        };
        let x = match self.config.latent_combine {
            LatentCombine::Flatten => rows.reshape(&[batch, latent * self.backbone.hidden_size()])?,
            LatentCombine::Mean => rows.mean(1)?,
        };
        self.head.forward(&self.params, &x)
    }

    /// The loss of `out` against `actions [B, chunk, action_dim]` (normalised arm dims, then
    /// with a gripper its target in {0, 1}) where `mask [B, chunk]` (any dtype, nonzero = valid)
    /// marks the chunk steps inside the episode. Values at masked steps are ignored entirely
    /// (they may be anything, NaN included). A gripper target outside [0, 1] at a valid step is
    /// an error naming it.
    ///
    /// `actions` and `mask` are the batch's host data (made on the CPU by the data pipeline):
    /// the mask and the gripper targets are checked there, where reading them waits for no
    /// device; the loss, its parts and the accuracy stay on the model's device.
    pub fn loss(&self, out: &HeadOutput, actions: &Tensor, mask: &Tensor) -> Result<PolicyLoss> {
        let (b, chunk) = (out.arm.dim(0)?, self.config.chunk);
        let (width, arm_dims) = (self.config.action_dim, self.config.arm_dims());
        if actions.shape() != [b, chunk, width] || mask.shape() != [b, chunk] {
            return Err(Error::ShapeMismatch {
                op: "VlaPolicy::loss",
                shapes: vec![actions.shape().to_vec(), mask.shape().to_vec()],
                note: format!("expected actions [{b}, {chunk}, {width}] (policy.action_dim) and mask [{b}, {chunk}]"),
            });
        }
        if out.gripper_logits.is_some() != (self.config.gripper == GripperMode::Last) {
            return Err(invalid(format!(
                "the head output {} gripper logits but policy.gripper = {:?}",
                if out.gripper_logits.is_some() { "has" } else { "has no" },
                self.config.gripper
            )));
        }
        let dtype = out.arm.dtype();
        let device = out.arm.device();
        let valid: Vec<u8> = mask.to_vec::<f64>()?.into_iter().map(|m| u8::from(m != 0.0)).collect();
        let n = valid.iter().filter(|&&v| v == 1).count();
        if out.gripper_logits.is_some() {
            let host_actions = actions.to_vec::<f64>()?;
            for (i, &v) in valid.iter().enumerate() {
                let t = host_actions[i * width + arm_dims];
                if v == 1 && !(0.0..=1.0).contains(&t) {
                    return Err(invalid(format!(
                        "gripper target {t} at batch row {} chunk step {} is not in [0, 1] (0 = closed, 1 = open)",
                        i / chunk,
                        i % chunk
                    )));
                }
            }
        }
        let actions = actions.detach().to_dtype(dtype)?.to_device(device)?;
        let keep = Tensor::from_vec(valid, &[b, chunk], device)?;
        let keep_f = keep.to_dtype(dtype)?;
        let zero = Tensor::zeros(&[1], dtype, device)?;
        let denom = n.max(1) as f64;

        let arm_targets = Tensor::where_cond(&keep.unsqueeze(2)?, &actions.narrow(2, 0, arm_dims)?, &zero)?;
        let arm = huber(&out.arm, &arm_targets, self.config.huber_delta, Reduction::None)?
            .mul(&keep_f.unsqueeze(2)?)?
            .sum_all()?
            .scale(1.0 / (denom * arm_dims as f64))?;
        // Counts in a dtype that holds them exactly.
        let count = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
        let Some(logits) = &out.gripper_logits else {
            let gripper = zero.sum_all()?;
            let gripper_correct = Tensor::zeros(&[1], count, device)?.sum_all()?;
            return Ok(PolicyLoss { loss: arm.clone(), arm, gripper, gripper_correct, valid_steps: n });
        };
        let grip_targets = actions.narrow(2, arm_dims, 1)?.reshape(&[b, chunk])?;
        let grip_targets = Tensor::where_cond(&keep, &grip_targets, &zero)?;
        let gripper =
            bce_with_logits(logits, &grip_targets, Reduction::None)?.mul(&keep_f)?.sum_all()?.scale(1.0 / denom)?;
        let loss = arm.add(&gripper.scale(self.config.gripper_loss_ratio)?)?;

        // Right where the predicted state (logit ≥ 0: open) is the target's (≥ 0.5: open),
        // counted over the valid steps.
        let right = vlm4vla_engine::no_grad(|| {
            logits.detach().cmp_scalar(0.0, CmpKind::Ge)?.eq(&grip_targets.cmp_scalar(0.5, CmpKind::Ge)?)
        })?;
        let keep_c = if count == dtype { keep_f.clone() } else { keep.to_dtype(count)? };
        let gripper_correct = right.to_dtype(count)?.mul(&keep_c)?.sum_all()?;
        Ok(PolicyLoss { loss, arm, gripper, gripper_correct, valid_steps: n })
    }

    /// [`forward`](Self::forward) then [`loss`](Self::loss).
    pub fn forward_loss(&self, input: &BackboneInput, actions: &Tensor, mask: &Tensor) -> Result<PolicyLoss> {
        self.forward_loss_with_state(input, None, actions, mask)
    }

    /// [`forward_with_state`](Self::forward_with_state) then [`loss`](Self::loss).
    pub fn forward_loss_with_state(
        &self,
        input: &BackboneInput,
        state: Option<&Tensor>,
        actions: &Tensor,
        mask: &Tensor,
    ) -> Result<PolicyLoss> {
        let out = self.forward_with_state(input, state)?;
        self.loss(&out, actions, mask)
    }

    /// Action chunks for a batch, without recording gradients: per row, `chunk` actions of
    /// `action_dim` values: the normalised arm values (tanh outputs), then with a gripper +1
    /// (open, probability ≥ 0.5) or −1 (closed).
    pub fn predict(&self, input: &BackboneInput) -> Result<Vec<Vec<Vec<f32>>>> {
        self.predict_with_state(input, None)
    }

    /// [`predict`](Self::predict) with the proprioceptive state `[B, state_dim]`.
    pub fn predict_with_state(&self, input: &BackboneInput, state: Option<&Tensor>) -> Result<Vec<Vec<Vec<f32>>>> {
        let out = vlm4vla_engine::no_grad(|| self.forward_with_state(input, state))?;
        let (b, chunk, arm_dims) = (out.arm.dim(0)?, self.config.chunk, self.head.arm_dims());
        let arm = out.arm.to_vec::<f32>()?;
        let grip = out.gripper_logits.as_ref().map(|g| g.to_vec::<f32>()).transpose()?;
        Ok((0..b)
            .map(|r| {
                (0..chunk)
                    .map(|s| {
                        let i = r * chunk + s;
                        let mut a = arm[i * arm_dims..(i + 1) * arm_dims].to_vec();
                        if let Some(g) = &grip {
                            a.push(if g[i] >= 0.0 { 1.0 } else { -1.0 });
                        }
                        a
                    })
                    .collect()
            })
            .collect())
    }
}

impl std::fmt::Debug for VlaPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VlaPolicy")
            .field("family", &self.backbone.family())
            .field("config", &self.config)
            .field("policy_params", &self.params.names())
            .finish()
    }
}
