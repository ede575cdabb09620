//! A memory plan before a run: from a config alone (no tensor is allocated), the parameter counts
//! per group, trainable and frozen, and the bytes a training step holds: weights, gradients,
//! AdamW state, the activations the autograd graph keeps for the backward at a batch size, and
//! which common GPUs that fits.
//!
//! The activation estimate counts, op by op, the tensors our engine keeps alive after the
//! forward (see `engine/src/ops`): every op records its inputs (a Linear keeps its input, a norm
//! keeps its input plus per-row statistics, attention keeps q, k, v and a per-row log-sum-exp, a
//! gated activation keeps the merged gate|up, rope keeps its input view), so a block keeps every
//! intermediate it computes, each in the parameter dtype, the statistics in f32. Attention is
//! fused (flash-style) on both backends: no score matrix is kept. Parts that do not train and
//! have nothing trainable before them record nothing (a frozen vision tower keeps nothing); the
//! language model always records, since the learnable action queries enter it. With activation
//! checkpointing each block keeps only its output, and the backward recomputes one block at a time.
//!
//! ```
//! use vlm4vla_engine::DType;
//! use vlm4vla_models::plan::{plan, PlanInput};
//! use vlm4vla_models::registry::ModelConfig;
//! let input = PlanInput::new(ModelConfig::builtin("paligemma-3b-pt-224").unwrap(), DType::BF16, 8);
//! let p = plan(&input).unwrap();
//! assert_eq!(p.weight_bytes, 2 * (p.backbone_params + p.head_params) as u64);
//! assert!(p.to_string().contains("activations"));
//! ```

use crate::common::backbone::{layer_index, ParamGroup};
use crate::registry::{group_digits, ModelConfig};
use crate::vla::{LatentCombine, PolicyConfig};
use std::collections::BTreeMap;
use vlm4vla_engine::{DType, Error, Result};

/// GPU memory sizes the plan checks, in GiB, with a name for each.
pub const GPUS: &[(&str, u64)] =
    &[("24 GiB (RTX 4090)", 24), ("40 GiB (A100-40G)", 40), ("80 GiB (H100/A100-80G)", 80), ("141 GiB (H200)", 141)];

/// Fraction of a GPU's memory a plan may use: the rest is the CUDA context, cuBLAS workspaces,
/// the allocator's fragmentation and the batch itself.
pub const USABLE_FRACTION: f64 = 0.9;

/// What a run will train and on what.
#[derive(Clone, Debug)]
pub struct PlanInput {
    pub config: ModelConfig,
    /// Backbone groups that train (the rest are frozen).
    pub trainable: Vec<ParamGroup>,
    /// The VLA policy (action queries, state row, head widths, chunk).
    pub policy: PolicyConfig,
    /// The dtype of weights, gradients and activations.
    pub param_dtype: DType,
    /// Samples per micro-batch.
    pub batch: usize,
    /// Prompt tokens besides the image tokens and their markers: the instruction, bos, chat
    /// template tokens.
    pub text_tokens: usize,
    pub images_per_sample: usize,
    /// Image side in pixels for Qwen2.5-VL (any multiple of 28); PaliGemma and Kosmos-2 take
    /// their config's image size.
    pub image_size: usize,
    pub checkpoint_activations: bool,
    /// AdamW keeps f32 master weights (with bf16 or f16 parameters).
    pub master_weights: bool,
    /// `train_llm_last_layers`: only the language model's last N decoder layers (and its final
    /// norm) train; the layers below are frozen (their weights need no gradient or optimizer
    /// state, but the action queries still backpropagate through them, so their activations stay).
    pub llm_last_layers: Option<usize>,
}

impl PlanInput {
    /// Everything trainable, the paper's policy (one action query, chunk 10), 32 text tokens, one
    /// 224-pixel image, no activation checkpointing, f32 masters for low-precision parameters.
    pub fn new(config: ModelConfig, param_dtype: DType, batch: usize) -> PlanInput {
        PlanInput {
            config,
            trainable: vec![
                ParamGroup::Vision,
                ParamGroup::Connector,
                ParamGroup::LanguageModel,
                ParamGroup::Embeddings,
            ],
            policy: PolicyConfig::default(),
            param_dtype,
            batch,
            text_tokens: 32,
            images_per_sample: 1,
            image_size: 224,
            checkpoint_activations: false,
            llm_last_layers: None,
            master_weights: param_dtype != DType::F32 && param_dtype != DType::F64,
        }
    }
}

/// One parameter group's count and whether it trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCount {
    pub group: ParamGroup,
    pub params: usize,
    /// Whether the group trains (all of it, or with `llm_last_layers` part of the LM).
    pub trainable: bool,
    /// How many of its parameters train.
    pub trainable_params: usize,
}

/// Whether the plan fits one GPU size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fit {
    pub gpu: &'static str,
    pub bytes: u64,
    pub fits: bool,
}

/// The plan: counts and bytes (see the module docs for what each covers).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainPlan {
    pub family: &'static str,
    pub groups: Vec<GroupCount>,
    pub backbone_params: usize,
    /// The policy's own parameters (action queries, state projection, head); always trainable.
    pub head_params: usize,
    pub trainable_params: usize,
    pub frozen_params: usize,
    pub param_dtype: DType,
    pub batch: usize,
    /// Vision tokens per image (rows of the vision tower).
    pub vision_tokens: usize,
    /// Rows the language model runs per sample: image tokens and markers, text, appended rows.
    pub seq_len: usize,
    pub weight_bytes: u64,
    /// Gradients of the trainable parameters, in the parameter dtype.
    pub grad_bytes: u64,
    /// AdamW: two f32 moments per trainable parameter, plus f32 masters when kept.
    pub optimizer_bytes: u64,
    /// What the graph keeps after the forward and the loss (the engine's live bytes grow by this).
    pub activation_bytes: u64,
    /// With activation checkpointing, one block's activations recomputed during the backward
    /// (0 without).
    pub recompute_bytes: u64,
    pub total_bytes: u64,
    pub checkpoint_activations: bool,
    pub fits: Vec<Fit>,
}

/// Plan a run. Errors name the input field that makes no sense (zero batch, an image size the
/// family cannot take, a policy config that does not validate).
pub fn plan(input: &PlanInput) -> Result<TrainPlan> {
    let bad = |msg: String| Error::invalid("plan", msg);
    if input.batch == 0 {
        return Err(bad("batch must be at least 1".into()));
    }
    input.policy.validate()?;
    if !input.param_dtype.is_float() {
        return Err(bad(format!("param_dtype {} is not a float dtype", input.param_dtype)));
    }
    let cfg = &input.config;
    let lm_layers = cfg.num_lm_layers();
    let frozen_below = match input.llm_last_layers {
        Some(n) if n == 0 || n > lm_layers => {
            return Err(bad(format!("llm_last_layers = {n} must be in 1..={lm_layers} (the LM's decoder layers)")))
        }
        Some(n) => lm_layers - n,
        None => 0,
    };
    let mut by_group: BTreeMap<ParamGroup, (usize, usize)> = BTreeMap::new();
    for (name, shape) in cfg.param_shapes() {
        let group = cfg.group_of(&name);
        let n = shape.iter().product::<usize>();
        let below = group == ParamGroup::LanguageModel && layer_index(&name).is_some_and(|i| i < frozen_below);
        let entry = by_group.entry(group).or_insert((0, 0));
        entry.0 += n;
        if input.trainable.contains(&group) && !below {
            entry.1 += n;
        }
    }
    let groups: Vec<GroupCount> = by_group
        .iter()
        .map(|(&group, &(params, trainable_params))| GroupCount {
            group,
            params,
            trainable: trainable_params > 0,
            trainable_params,
        })
        .collect();
    let backbone_params: usize = groups.iter().map(|g| g.params).sum();
    let hidden = cfg.hidden_size();
    let head_params = head_params(hidden, &input.policy);
    let trainable_params = groups.iter().map(|g| g.trainable_params).sum::<usize>() + head_params;
    let frozen_params = backbone_params + head_params - trainable_params;

    let e = input.param_dtype.size_in_bytes() as u64;
    let weight_bytes = (backbone_params + head_params) as u64 * e;
    let grad_bytes = trainable_params as u64 * e;
    let master = if input.master_weights && input.param_dtype != DType::F32 { 4 } else { 0 };
    let optimizer_bytes = trainable_params as u64 * (8 + master);

    let act = activations(input, hidden)?;
    let total_bytes = weight_bytes + grad_bytes + optimizer_bytes + act.saved + act.recompute;
    let fits = GPUS
        .iter()
        .map(|&(gpu, gib)| {
            let bytes = gib << 30;
            Fit { gpu, bytes, fits: (total_bytes as f64) <= USABLE_FRACTION * bytes as f64 }
        })
        .collect();
    Ok(TrainPlan {
        family: cfg.family(),
        groups,
        backbone_params,
        head_params,
        trainable_params,
        frozen_params,
        param_dtype: input.param_dtype,
        batch: input.batch,
        vision_tokens: act.vision_tokens,
        seq_len: act.seq_len,
        weight_bytes,
        grad_bytes,
        optimizer_bytes,
        activation_bytes: act.saved,
        recompute_bytes: act.recompute,
        total_bytes,
        checkpoint_activations: input.checkpoint_activations,
        fits,
    })
}

/// The policy's own parameter count over a backbone of width `hidden`: the action queries, the
/// state projection when there is one, and the FCDecoder (trunk, arm and gripper branches).
pub fn head_params(hidden: usize, policy: &PolicyConfig) -> usize {
    let linear = |i: usize, o: usize| i * o + o;
    let input = match policy.latent_combine {
        LatentCombine::Flatten => policy.latent * hidden,
        LatentCombine::Mean => hidden,
    };
    let h = &policy.head;
    let mid = h.trunk_hidden.unwrap_or((input / 2).max(1));
    let branch = |out: usize| {
        let mut widths = vec![h.trunk_out];
        widths.extend(&h.branch_hidden);
        widths.push(out);
        widths.windows(2).map(|w| linear(w[0], w[1])).sum::<usize>()
    };
    let state = if policy.state_dim > 0 { linear(policy.state_dim, hidden) } else { 0 };
    policy.latent * hidden
        + state
        + linear(input, mid)
        + linear(mid, h.trunk_out)
        + branch(policy.arm_dims() * policy.chunk)
        + policy.gripper.dims() * branch(policy.chunk)
}

struct Activations {
    saved: u64,
    recompute: u64,
    vision_tokens: usize,
    seq_len: usize,
}

/// Bytes one part keeps: elements in the activation dtype plus f32 statistics.
#[derive(Clone, Copy, Default)]
struct Kept {
    elems: u64,
    f32s: u64,
}

impl Kept {
    fn new(elems: usize, f32s: usize) -> Kept {
        Kept { elems: elems as u64, f32s: f32s as u64 }
    }
    fn times(self, n: usize) -> Kept {
        Kept { elems: self.elems * n as u64, f32s: self.f32s * n as u64 }
    }
    fn plus(self, o: Kept) -> Kept {
        Kept { elems: self.elems + o.elems, f32s: self.f32s + o.f32s }
    }
    fn bytes(self, e: u64) -> u64 {
        self.elems * e + self.f32s * 4
    }
}

/// One family's forward, per image (vision) and per sample (language model), as kept tensors.
struct Shape {
    /// One vision block over one image; the blocks; what one image keeps outside the blocks
    /// (patch embedding, final norm); one block's output (what checkpointing keeps per block,
    /// and the tower's output).
    vision_block: Kept,
    vision_blocks: usize,
    vision_rest: Kept,
    vision_block_out: Kept,
    /// The connector per image (its input, the tower's output, is one block output).
    connector: Kept,
    /// Per sample: the embedding lookup (kept only when the embeddings train), the rest of the
    /// input embedding stage, one decoder layer, the layers, the final norm and rope tables.
    embed_lookup: Kept,
    embed_rest: Kept,
    text_layer: Kept,
    text_layers: usize,
    text_rest: Kept,
    text_layer_out: Kept,
    /// The last decoder layer, which computes its keys and values for every row and the rest of
    /// itself for the action-query rows alone (`Backbone::forward_last_rows`), and its output.
    last_layer: Kept,
    last_layer_out: Kept,
    vision_tokens: usize,
    seq_len: usize,
}

fn activations(input: &PlanInput, hidden: usize) -> Result<Activations> {
    let p = &input.policy;
    let appended = p.latent + usize::from(p.state_dim > 0);
    let s = family_shape(input, appended)?;
    let e = input.param_dtype.size_in_bytes() as u64;
    let trains = |g: ParamGroup| input.trainable.contains(&g);
    let (b, imgs) = (input.batch, input.images_per_sample);
    let ckpt = input.checkpoint_activations;

    let mut kept = Kept::default();
    if trains(ParamGroup::Vision) {
        let blocks = if ckpt { s.vision_block_out } else { s.vision_block };
        kept = blocks.times(s.vision_blocks).plus(s.vision_rest).plus(s.connector).times(b * imgs);
    } else if trains(ParamGroup::Connector) {
        // The frozen tower records nothing; the connector keeps its input, the tower's output.
        kept = s.connector.plus(s.vision_block_out).times(b * imgs);
    }
    let (layer, last) = if ckpt { (s.text_layer_out, s.last_layer_out) } else { (s.text_layer, s.last_layer) };
    let layers =
        layer.times(s.text_layers.saturating_sub(1)).plus(if s.text_layers > 0 { last } else { Kept::default() });
    let mut per_sample = s.embed_rest.plus(layers).plus(s.text_rest);
    if trains(ParamGroup::Embeddings) {
        per_sample = per_sample.plus(s.embed_lookup);
    }
    // The head over the appended rows: the gathered rows, every Linear output and ReLU/tanh.
    let input_width = match p.latent_combine {
        LatentCombine::Flatten => p.latent * hidden,
        LatentCombine::Mean => hidden,
    };
    let mid = p.head.trunk_hidden.unwrap_or((input_width / 2).max(1));
    // Per branch (the arm's, and the gripper's when there is one): each hidden Linear's output
    // and ReLU; the arm's last Linear and tanh, the gripper's logits.
    let branches: usize = p.head.branch_hidden.iter().map(|w| 2 * w).sum::<usize>() * (1 + p.gripper.dims());
    let head =
        input_width + 2 * mid + p.head.trunk_out + branches + 2 * p.arm_dims() * p.chunk + p.gripper.dims() * p.chunk;
    per_sample = per_sample.plus(Kept::new(head, 0));
    kept = kept.plus(per_sample.times(b));

    let recompute = if ckpt {
        let vision = if trains(ParamGroup::Vision) { s.vision_block.times(b * imgs).bytes(e) } else { 0 };
        vision.max(s.text_layer.times(b).bytes(e))
    } else {
        0
    };
    Ok(Activations { saved: kept.bytes(e), recompute, vision_tokens: s.vision_tokens, seq_len: s.seq_len })
}

/// The per-family counts. Per row of width `h`, a pre-norm block with fused q|k|v and gate|up
/// keeps: the norm output (h), q|k|v, q and k after rope, the attention output, the output
/// projection (h), the residual sum and its norm (2h), gate|up (2I), the gated product (I), the
/// down projection (h) and the block output (h); f32 statistics: one per row per RMSNorm (two
/// per LayerNorm) and one log-sum-exp per row and head. The last layer keeps its norm output,
/// q|k|v and k after rope for every row, the rest for the `read` rows the head reads; the final
/// norm runs over those rows alone.
fn family_shape(input: &PlanInput, appended: usize) -> Result<Shape> {
    let imgs = input.images_per_sample;
    let text = input.text_tokens;
    let read = input.policy.latent;
    Ok(match &input.config {
        ModelConfig::Qwen25Vl(c) => {
            let (v, t) = (&c.vision, &c.text);
            let unit = v.patch_size * v.spatial_merge_size;
            let s = input.image_size;
            if s == 0 || !s.is_multiple_of(unit) {
                return Err(Error::invalid("plan", format!("image_size {s} is not a positive multiple of {unit}")));
            }
            let n = (s / v.patch_size) * (s / v.patch_size);
            let merged = n / v.merge_unit();
            let (vh, vi) = (v.hidden_size, v.intermediate_size);
            // The vision tower runs every image of the batch as one sequence of segments.
            let block = Kept::new(n * (12 * vh + 3 * vi), n * (2 + v.num_heads));
            // Patch rows in the parameter dtype (a copy unless f32), the patch projection, its
            // window reordering, rope tables (f32).
            let pixels = if input.param_dtype == DType::F32 { 0 } else { n * v.patch_dim() };
            let rest = Kept::new(pixels + 2 * n * vh, 2 * n * v.head_dim());
            // The merger: ln_q, mlp.0, GELU, mlp.2, the reverse reordering.
            let connector = Kept::new(3 * n * vh + 2 * merged * c.text.hidden_size, n);
            let tokens = imgs * (merged + 2);
            let len = tokens + text + appended;
            let (h, hd) = (t.hidden_size, t.head_dim());
            let (heads, kv) = (t.num_attention_heads, t.num_key_value_heads);
            let layer = |rows| gated_decoder_layer(len, rows, h, heads, kv, hd, t.intermediate_size);
            let prompt = len - appended;
            let read = read.min(len);
            Shape {
                vision_block: block,
                vision_blocks: v.depth,
                vision_rest: rest,
                vision_block_out: Kept::new(n * vh, 0),
                connector,
                embed_lookup: Kept::new(prompt * h, 0),
                // The image features scattered in, the appended rows concatenated.
                embed_rest: Kept::new(prompt * h + len * h, 0),
                text_layer: layer(len),
                text_layers: t.num_hidden_layers,
                // The final norm; the M-RoPE cos and sin tables (f32).
                text_rest: Kept::new(read * h, read + 2 * len * hd),
                text_layer_out: Kept::new(len * h, 0),
                last_layer: layer(read),
                last_layer_out: Kept::new(read * h, 0),
                vision_tokens: n,
                seq_len: len,
            }
        }
        ModelConfig::PaliGemma(c) => {
            let (v, t) = (&c.vision, &c.text);
            let n = v.num_patches();
            let (vh, vi, p) = (v.hidden_size, v.intermediate_size, v.patch_size);
            // SigLIP layer: LN1 out, q|k|v, attention out, out_proj, residual, LN2 out, fc1,
            // GELU, fc2, output.
            let block = Kept::new(n * (10 * vh + 2 * vi), n * (4 + v.num_attention_heads));
            // Patch rows (permuted copy), the patch projection, the position add, post-LN.
            let rest = Kept::new(n * (v.num_channels * p * p + 3 * vh), 2 * n);
            let h = t.hidden_size;
            let len = imgs * n + text + appended;
            let hd = t.head_dim;
            let (heads, kv) = (t.num_attention_heads, t.num_key_value_heads);
            let layer = |rows| gated_decoder_layer(len, rows, h, heads, kv, hd, t.intermediate_size);
            let prompt = len - appended;
            let read = read.min(len);
            Shape {
                vision_block: block,
                vision_blocks: v.num_hidden_layers,
                vision_rest: rest,
                vision_block_out: Kept::new(n * vh, 0),
                // The projector's output (its input is the post-LN output, counted above).
                connector: Kept::new(n * h, 0),
                // The lookup and its √h scaling.
                embed_lookup: Kept::new(2 * prompt * h, 0),
                embed_rest: Kept::new(prompt * h + len * h, 0),
                text_layer: layer(len),
                text_layers: t.num_hidden_layers,
                text_rest: Kept::new(read * h, read + 2 * len * hd),
                text_layer_out: Kept::new(len * h, 0),
                last_layer: layer(read),
                last_layer_out: Kept::new(read * h, 0),
                vision_tokens: n,
                seq_len: len,
            }
        }
        ModelConfig::Kosmos2(c) => {
            let (v, t) = (&c.vision, &c.text);
            let n = v.num_positions();
            let (vh, vi, p) = (v.hidden_size, v.intermediate_size, v.patch_size);
            let block = Kept::new(n * (10 * vh + 2 * vi), n * (4 + v.num_attention_heads));
            // Patch rows, the projection, the class-token cat, the position add, pre-LN;
            // post-LN and the L2 normalisation.
            let rest = Kept::new((n - 1) * (v.num_channels * p * p + vh) + 5 * n * vh, 5 * n);
            let (h, q) = (t.embed_dim, c.latent_query_num);
            // dense, the [features; queries] cat, q_proj, k|v, attention out, out_proj.
            let connector = Kept::new(n * h + 3 * (n + q) * h + 3 * q * h, q * t.attention_heads);
            let len = imgs * (q + 2) + text + appended;
            // Layer: LN out, q|k|v (4h, every row); attention out, inner LN, out_proj,
            // residual, final LN, fc2, output (7h); fc1, GELU, FFN LN (3F); four LayerNorms'
            // statistics (the first over every row) and the log-sum-exp.
            let layer = |rows: usize| {
                Kept::new(len * 4 * h, 2 * len)
                    .plus(Kept::new(rows * (7 * h + 3 * t.ffn_dim), rows * (6 + t.attention_heads)))
            };
            let prompt = len - appended;
            let read = read.min(len);
            Shape {
                vision_block: block,
                vision_blocks: v.num_hidden_layers,
                vision_rest: rest,
                vision_block_out: Kept::new(n * vh, 0),
                connector,
                embed_lookup: Kept::new(prompt * h, 0),
                // Scatter, cat, √h scaling, the sinusoid table and the position add.
                embed_rest: Kept::new(prompt * h + 4 * len * h, 0),
                text_layer: layer(len),
                text_layers: t.layers,
                text_rest: Kept::new(read * h, 2 * read),
                text_layer_out: Kept::new(len * h, 0),
                last_layer: layer(read),
                last_layer_out: Kept::new(read * h, 0),
                vision_tokens: n,
                seq_len: len,
            }
        }
    })
}

/// `1536` → `1.5 KiB`, in binary units.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

impl std::fmt::Display for TrainPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "plan: {} at batch {}, {} parameters{}",
            self.family,
            self.batch,
            self.param_dtype,
            if self.checkpoint_activations { ", activation checkpointing" } else { "" }
        )?;
        writeln!(
            f,
            "sequence: {} vision tokens per image, {} language-model rows per sample",
            self.vision_tokens, self.seq_len
        )?;
        writeln!(f, "parameters:")?;
        for g in &self.groups {
            let state = match (g.trainable_params, g.params) {
                (0, _) => "frozen".to_string(),
                (t, p) if t == p => "trainable".to_string(),
                (t, _) => format!("{} trainable (the last LM layers)", group_digits(t)),
            };
            writeln!(f, "  {:<15} {:>15}  {state}", g.group.as_str(), group_digits(g.params))?;
        }
        writeln!(f, "  {:<15} {:>15}  trainable", "vla head", group_digits(self.head_params))?;
        writeln!(f, "  {:<15} {:>15}", "trainable", group_digits(self.trainable_params))?;
        writeln!(f, "  {:<15} {:>15}", "frozen", group_digits(self.frozen_params))?;
        writeln!(f, "memory:")?;
        let row =
            |f: &mut std::fmt::Formatter<'_>, what: &str, b: u64| writeln!(f, "  {what:<26} {:>12}", human_bytes(b));
        row(f, "weights", self.weight_bytes)?;
        row(f, "gradients", self.grad_bytes)?;
        row(f, "AdamW state", self.optimizer_bytes)?;
        row(f, "activations (kept)", self.activation_bytes)?;
        if self.checkpoint_activations {
            row(f, "activations (recompute)", self.recompute_bytes)?;
        }
        row(f, "total", self.total_bytes)?;
        let pct = (USABLE_FRACTION * 100.0).round();
        writeln!(f, "fits (using at most {pct}% of the GPU):")?;
        for fit in &self.fits {
            writeln!(f, "  {:<24} {}", fit.gpu, if fit.fits { "yes" } else { "no" })?;
        }
        Ok(())
    }
}

/// What one decoder layer of the Qwen2 / Gemma shape (pre-norm, RMSNorm, grouped-query attention
/// with RoPE, a gated MLP of width `inter`) keeps over `len` rows, computing all of itself after
/// its keys and values for `rows` of them (all, or the last layer's read rows): the two families
/// run the same ops per layer, so they keep the same bytes. Every row: the norm output, q|k|v, k
/// after rope, the norm's statistic; each computed row: q after rope, the attention output, the
/// output projection, the residual sum and its norm, gate|up, the gated product, the down
/// projection, the output, the second norm's statistic and the log-sum-exp per head.
#[allow(clippy::too_many_arguments)]
fn gated_decoder_layer(len: usize, rows: usize, h: usize, heads: usize, kv: usize, hd: usize, inter: usize) -> Kept {
    let all = Kept::new(len * (h + (heads + 3 * kv) * hd), len);
    all.plus(Kept::new(rows * (5 * h + 2 * heads * hd + 3 * inter), rows * (1 + heads)))
}
