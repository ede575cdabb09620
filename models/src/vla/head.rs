//! The FCDecoder: the MLP that turns the action-query hidden state into an action chunk.
//!
//! It mirrors the reference head of VLM4VLA (RoboVLMs' `FCDecoder` with `MLPTanhHead` and
//! `MLPSigmoidHead`):
//!
//! ```text
//! x [B, in]  ── trunk:   Linear(in → in/2) · ReLU · Linear(in/2 → 1024)
//!            ├─ arm:     Linear(1024 → 1024) · ReLU · Linear(→ 512) · ReLU · Linear(→ 256) · ReLU
//!            │           · Linear(256 → A·chunk) · tanh           → [B, chunk, A]
//!            └─ gripper: Linear(1024 → 1024) · ReLU · Linear(→ 512) · ReLU · Linear(→ 256) · ReLU
//!                        · Linear(256 → chunk)                     → [B, chunk] logits
//! ```
//!
//! `A`, the arm width, is the action width less the gripper: 6 for the paper's 7-D actions with
//! [`GripperMode::Last`]; with [`GripperMode::None`] every action dimension is an arm dimension and
//! the gripper branch does not exist.
//!
//! Weights are stored `[out, in]` (PyTorch's `nn.Linear`), Xavier-uniform initialised
//! (`U(−a, a)`, `a = √(6 / (in + out))`); biases start at zero. Parameter names:
//! `vla.head.trunk.{0,1}.{weight,bias}`, `vla.head.arm.{0..=3}.{weight,bias}`,
//! `vla.head.gripper.{0..=3}.{weight,bias}`.

use serde::{Deserialize, Serialize};
use vlm4vla_engine::{nn, DType, Device, Error, ParamStore, Result, Tensor};

/// The prefix of every head parameter name.
pub const HEAD_PREFIX: &str = "vla.head.";

/// Whether the last action dimension is a binary gripper.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GripperMode {
    /// The last dimension is a binary gripper: its own head branch (logits), BCE-with-logits in
    /// the loss, gripper accuracy reported (the paper's CALVIN setting).
    #[default]
    Last,
    /// No binary gripper: every dimension is continuous (tanh, Huber), e.g. joint positions with
    /// the gripper's position among them (ALOHA).
    None,
}

impl GripperMode {
    /// How many action dimensions the gripper takes (1 or 0).
    pub fn dims(self) -> usize {
        match self {
            GripperMode::Last => 1,
            GripperMode::None => 0,
        }
    }
}

/// Widths of the FCDecoder. The defaults are the paper's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// Width of the trunk's middle layer; `None` = half the head's input width (the paper).
    pub trunk_hidden: Option<usize>,
    /// Width of the trunk's output, the input of both branches (1024).
    pub trunk_out: usize,
    /// Hidden widths of the arm and gripper branches ([1024, 512, 256]).
    pub branch_hidden: Vec<usize>,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig { trunk_hidden: None, trunk_out: 1024, branch_hidden: vec![1024, 512, 256] }
    }
}

impl HeadConfig {
    /// Errors name the field that is zero.
    pub fn validate(&self) -> Result<()> {
        if self.trunk_hidden == Some(0) {
            return Err(invalid("head.trunk_hidden must be at least 1"));
        }
        if self.trunk_out == 0 {
            return Err(invalid("head.trunk_out must be at least 1"));
        }
        if self.branch_hidden.contains(&0) {
            return Err(invalid(format!("head.branch_hidden {:?} must not contain 0", self.branch_hidden)));
        }
        // Bounded before anything is allocated: a typo such as 1e9 is an error naming the field,
        // not an allocation failure.
        let widths = self.trunk_hidden.iter().chain(std::iter::once(&self.trunk_out)).chain(&self.branch_hidden);
        if let Some(w) = widths.copied().find(|&w| w > MAX_HEAD_WIDTH) {
            return Err(invalid(format!(
                "head width {w} is above {MAX_HEAD_WIDTH} (head.trunk_hidden / trunk_out / branch_hidden)"
            )));
        }
        if self.branch_hidden.len() > MAX_HEAD_LAYERS {
            return Err(invalid(format!(
                "head.branch_hidden has {} layers; at most {MAX_HEAD_LAYERS}",
                self.branch_hidden.len()
            )));
        }
        Ok(())
    }
}

/// The widest head layer a config may ask for, and the most branch layers.
pub const MAX_HEAD_WIDTH: usize = 65_536;
pub const MAX_HEAD_LAYERS: usize = 32;

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid { op: "vla policy", msg: msg.into() }
}

/// One `nn.Linear`: parameter names and widths.
#[derive(Clone, Debug)]
struct Linear {
    weight: String,
    bias: String,
}

impl Linear {
    fn forward(&self, ps: &ParamStore, x: &Tensor) -> Result<Tensor> {
        let w = ps.get(&self.weight)?;
        let b = ps.get(&self.bias)?;
        nn::linear(x, &w, Some(&b))
    }
}

/// The FCDecoder over a policy's parameter store (it holds names, the store holds tensors).
#[derive(Clone, Debug)]
pub struct FcDecoder {
    in_features: usize,
    chunk: usize,
    arm_dims: usize,
    trunk: Vec<Linear>,
    arm: Vec<Linear>,
    /// Empty without a gripper.
    gripper: Vec<Linear>,
}

/// The head's raw outputs.
#[derive(Clone, Debug)]
pub struct HeadOutput {
    /// `[B, chunk, arm_dims]`, after tanh: normalised arm actions in (−1, 1).
    pub arm: Tensor,
    /// `[B, chunk]` gripper logits (open when > 0); None without a gripper.
    pub gripper_logits: Option<Tensor>,
}

impl FcDecoder {
    /// Create the head's parameters in `ps` (Xavier-uniform weights drawn from `seed`, zero
    /// biases) for inputs of width `in_features` and chunks of `chunk` actions of `action_dim`
    /// values, the last of them a binary gripper with [`GripperMode::Last`].
    #[allow(clippy::too_many_arguments)]
    pub fn init(
        ps: &mut ParamStore,
        cfg: &HeadConfig,
        in_features: usize,
        chunk: usize,
        action_dim: usize,
        gripper: GripperMode,
        dtype: DType,
        device: Device,
        seed: u64,
    ) -> Result<FcDecoder> {
        cfg.validate()?;
        if in_features == 0 || chunk == 0 {
            return Err(invalid(format!("head input width {in_features} and chunk {chunk} must be at least 1")));
        }
        let arm_dims = action_dim.saturating_sub(gripper.dims());
        if arm_dims == 0 {
            return Err(invalid(format!(
                "policy.action_dim = {action_dim} leaves no arm dimension with policy.gripper = {gripper:?}"
            )));
        }
        let mid = cfg.trunk_hidden.unwrap_or((in_features / 2).max(1));
        let mut counter = 0u64;
        let mut layer = |ps: &mut ParamStore, name: String, fan_in: usize, fan_out: usize| -> Result<Linear> {
            let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
            let layer_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(counter);
            counter += 1;
            let w = Tensor::rand_uniform(-bound, bound, &[fan_out, fan_in], dtype, device, layer_seed)?;
            let b = Tensor::zeros(&[fan_out], dtype, device)?;
            let l = Linear { weight: format!("{name}.weight"), bias: format!("{name}.bias") };
            ps.insert(l.weight.clone(), &w)?;
            ps.insert(l.bias.clone(), &b)?;
            Ok(l)
        };
        let trunk = vec![
            layer(ps, format!("{HEAD_PREFIX}trunk.0"), in_features, mid)?,
            layer(ps, format!("{HEAD_PREFIX}trunk.1"), mid, cfg.trunk_out)?,
        ];
        let mut branch = |ps: &mut ParamStore, name: &str, out: usize| -> Result<Vec<Linear>> {
            let mut widths = vec![cfg.trunk_out];
            widths.extend(&cfg.branch_hidden);
            widths.push(out);
            widths
                .windows(2)
                .enumerate()
                .map(|(i, w)| layer(ps, format!("{HEAD_PREFIX}{name}.{i}"), w[0], w[1]))
                .collect()
        };
        let arm = branch(ps, "arm", arm_dims * chunk)?;
        let gripper = match gripper {
            GripperMode::Last => branch(ps, "gripper", chunk)?,
            GripperMode::None => Vec::new(),
        };
        Ok(FcDecoder { in_features, chunk, arm_dims, trunk, arm, gripper })
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The continuous dimensions per action (the arm branch's width per chunk step).
    pub fn arm_dims(&self) -> usize {
        self.arm_dims
    }

    /// Whether the head has a gripper branch.
    pub fn has_gripper(&self) -> bool {
        !self.gripper.is_empty()
    }

    /// `x [B, in_features]` → arm `[B, chunk, arm_dims]` (tanh) and, with a gripper, its logits
    /// `[B, chunk]`.
    pub fn forward(&self, ps: &ParamStore, x: &Tensor) -> Result<HeadOutput> {
        if x.rank() != 2 || x.dim(1)? != self.in_features {
            return Err(Error::ShapeMismatch {
                op: "FcDecoder",
                shapes: vec![x.shape().to_vec()],
                note: format!("expected [batch, {}]", self.in_features),
            });
        }
        let b = x.dim(0)?;
        let trunk = self.trunk[1].forward(ps, &self.trunk[0].forward(ps, x)?.relu()?)?;
        let mlp = |layers: &[Linear]| -> Result<Tensor> {
            let mut h = trunk.clone();
            for (i, l) in layers.iter().enumerate() {
                h = l.forward(ps, &h)?;
                if i + 1 < layers.len() {
                    h = h.relu()?;
                }
            }
            Ok(h)
        };
        let arm = mlp(&self.arm)?.tanh()?.reshape(&[b, self.chunk, self.arm_dims])?;
        let gripper_logits = if self.has_gripper() { Some(mlp(&self.gripper)?) } else { None };
        Ok(HeadOutput { arm, gripper_logits })
    }

    /// Every parameter name of the head, trunk first.
    pub fn param_names(&self) -> Vec<String> {
        self.trunk
            .iter()
            .chain(&self.arm)
            .chain(&self.gripper)
            .flat_map(|l| [l.weight.clone(), l.bias.clone()])
            .collect()
    }
}
