//! A case of `benches/baseline/step_cases.json`: its backbone built from the case's config.json
//! (checked against the config it must equal), the policy over it, a fixed random batch laid out by
//! the family's processor, and the trainer's step.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::path::Path;
use vlm4vla::engine::{counters, io, AdamW, DType, Device, Error, GradNorm, GradStore, ParamStore, Result, Tensor};
use vlm4vla::models::kosmos2::{Kosmos2, Kosmos2Config, Kosmos2Processor};
use vlm4vla::models::paligemma::{PaliGemma, PaliGemmaConfig, PaliGemmaProcessor};
use vlm4vla::models::qwen2_5_vl::{self as qwen, ChatTokens, ProcessedImage, Qwen25Vl, Qwen25VlConfig};
use vlm4vla::models::registry::ModelConfig;
use vlm4vla::models::vla::{GripperMode, PolicyConfig, TrainableParts, VlaPolicy};
use vlm4vla::models::{Backbone, BackboneInput};
use vlm4vla::train::{read_step, OptimConfig};

fn invalid(msg: impl Into<String>) -> Error {
    Error::invalid("step bench", msg)
}

/// `Nvidia H100 80GB` → `nvidia-h100-80gb`.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for ch in s.to_lowercase().chars() {
        if ch.is_ascii_alphanumeric() || ch == '.' || ch == '_' {
            out.push(ch);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// One row of the case file.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub backbone: String,
    pub same_as: Option<String>,
    pub batch: usize,
    pub image_size: usize,
    pub prompt_tokens: usize,
    pub dtype: String,
    pub gpu_only: bool,
    pub config: Value,
    pub policy: PolicyConfig,
    /// `[optim]` of a training config (the keys it leaves out take their defaults).
    pub optim: OptimConfig,
}

fn field<'a>(v: &'a Value, case: &str, key: &str) -> Result<&'a Value> {
    v.get(key).ok_or_else(|| invalid(format!("case `{case}`: field `{key}` is missing")))
}

fn usize_field(v: &Value, case: &str, key: &str) -> Result<usize> {
    field(v, case, key)?
        .as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| invalid(format!("case `{case}`: `{key}` must be a non-negative integer")))
}

fn str_field(v: &Value, case: &str, key: &str) -> Result<String> {
    field(v, case, key)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| invalid(format!("case `{case}`: `{key}` must be a string")))
}

impl Case {
    fn parse(v: &Value) -> Result<Case> {
        let name = v.get("case").and_then(Value::as_str).ok_or_else(|| invalid("a case without a `case` name"))?;
        let json_err = |what: &str, e: serde_json::Error| invalid(format!("case `{name}`: `{what}`: {e}"));
        Ok(Case {
            name: name.to_string(),
            backbone: str_field(v, name, "backbone")?,
            same_as: v.get("same_as").and_then(Value::as_str).map(str::to_string),
            batch: usize_field(v, name, "batch")?,
            image_size: usize_field(v, name, "image_size")?,
            prompt_tokens: usize_field(v, name, "prompt_tokens")?,
            dtype: str_field(v, name, "dtype")?,
            gpu_only: v.get("gpu_only").and_then(Value::as_bool).unwrap_or(false),
            config: field(v, name, "config")?.clone(),
            policy: serde_json::from_value(field(v, name, "policy")?.clone()).map_err(|e| json_err("policy", e))?,
            optim: serde_json::from_value(field(v, name, "optim")?.clone()).map_err(|e| json_err("optim", e))?,
        })
    }

    /// Every case of the file, in order.
    pub fn all(path: &str) -> Result<Vec<Case>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {path}"), e))?;
        let root: Value = serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))?;
        let cases = root.get("cases").and_then(Value::as_array).ok_or_else(|| Error::file(path, "no `cases` list"))?;
        cases.iter().map(Case::parse).collect()
    }

    pub fn by_name(path: &str, name: &str) -> Result<Case> {
        Case::all(path)?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| invalid(format!("no case `{name}` in {path}")))
    }

    fn dtype(&self) -> Result<DType> {
        match self.dtype.as_str() {
            "f32" => Ok(DType::F32),
            "bf16" => Ok(DType::BF16),
            other => Err(invalid(format!("case `{}`: dtype `{other}` (f32 or bf16)", self.name))),
        }
    }

    /// The config the case must equal, when it names one.
    fn reference(&self) -> Result<Option<ModelConfig>> {
        Ok(match self.same_as.as_deref() {
            None => None,
            Some("paligemma-demo") => {
                Some(ModelConfig::PaliGemma(vlm4vla::demo::backbone_config("paligemma-demo", self.image_size)?))
            }
            Some(name) => Some(ModelConfig::builtin(name)?),
        })
    }

    /// The backbone config parsed from the case's `config`, checked against `same_as`.
    fn model_config(&self) -> Result<ModelConfig> {
        let text = self.config.to_string();
        let parsed = match self.backbone.as_str() {
            "qwen2_5_vl" => ModelConfig::Qwen25Vl(Qwen25VlConfig::from_json_str(&text, &self.name)?),
            "paligemma" => ModelConfig::PaliGemma(PaliGemmaConfig::from_json_str(&text)?),
            "kosmos2" => ModelConfig::Kosmos2(Kosmos2Config::from_json(&text)?),
            other => return Err(invalid(format!("case `{}`: unknown backbone `{other}`", self.name))),
        };
        let same = match (&parsed, self.reference()?) {
            (_, None) => true,
            (ModelConfig::Qwen25Vl(a), Some(ModelConfig::Qwen25Vl(b))) => *a == b,
            (ModelConfig::PaliGemma(a), Some(ModelConfig::PaliGemma(b))) => *a == b,
            (ModelConfig::Kosmos2(a), Some(ModelConfig::Kosmos2(b))) => *a == b,
            _ => false,
        };
        if !same {
            return Err(invalid(format!(
                "case `{}`: its config differs from `{}` (update the case file)",
                self.name,
                self.same_as.as_deref().unwrap_or("")
            )));
        }
        Ok(parsed)
    }

    /// The policy over randomly initialised weights (`seed`), on `dev`, everything trainable as
    /// the trainer sets it, and the case's batch.
    pub fn build(&self, dev: Device, seed: u64) -> Result<Run> {
        let dtype = self.dtype()?;
        let cfg = self.model_config()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xBA7C);
        let prompts: Vec<Vec<i64>> =
            (0..self.batch).map(|_| (0..self.prompt_tokens).map(|_| rng.gen_range(3..100)).collect()).collect();
        let s = self.image_size;
        let (backbone, input): (Box<dyn Backbone>, BackboneInput) = match cfg {
            ModelConfig::PaliGemma(c) => {
                self.check_image_size(c.vision.image_size)?;
                let p = PaliGemmaProcessor::new(&c);
                let px = Tensor::rand_normal(0.0, 1.0, &[self.batch, 3, s, s], DType::F32, Device::Cpu, seed + 1)?;
                let input = p.collate(&prompts.iter().map(|ids| p.prompt(ids, None)).collect::<Vec<_>>(), px)?;
                let cpu = PaliGemma::random(c.clone(), seed, dtype)?;
                (Box::new(PaliGemma::from_params(c, moved(cpu.params(), dev)?)?), input)
            }
            ModelConfig::Kosmos2(c) => {
                self.check_image_size(c.vision.image_size)?;
                let p = Kosmos2Processor::new(&c);
                let px = (0..self.batch)
                    .map(|i| Tensor::rand_normal(0.0, 1.0, &[3, s, s], DType::F32, Device::Cpu, seed + 1 + i as u64))
                    .collect::<Result<Vec<_>>>()?;
                let input = p.collate(&px, &prompts)?;
                let cpu = Kosmos2::random(c.clone(), seed, dtype)?;
                (Box::new(Kosmos2::from_params(c, moved(cpu.params(), dev)?)?), input)
            }
            ModelConfig::Qwen25Vl(c) => {
                let unit = c.vision.patch_size * c.vision.spatial_merge_size;
                if s == 0 || !s.is_multiple_of(unit) {
                    return Err(invalid(format!("case `{}`: image size {s} is not a multiple of {unit}", self.name)));
                }
                let chat = [ChatTokens::tiny(), ChatTokens::qwen2_5_vl()]
                    .into_iter()
                    .find(|t| t.image_pad == c.image_token_id)
                    .ok_or_else(|| {
                        invalid(format!("case `{}`: no chat template has image id {}", self.name, c.image_token_id))
                    })?;
                let g = s / c.vision.patch_size;
                let samples = prompts
                    .iter()
                    .enumerate()
                    .map(|(i, ids)| {
                        let rows = Tensor::rand_normal(
                            0.0,
                            1.0,
                            &[g * g, c.vision.patch_dim()],
                            DType::F32,
                            Device::Cpu,
                            seed + 1 + i as u64,
                        )?;
                        let img = ProcessedImage { pixel_values: rows, grid_thw: [1, g, g] };
                        Ok((qwen::chat_layout(&chat, ids, &[img.grid_thw], &c), vec![img]))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let input = qwen::collate(&samples, chat.pad)?;
                let cpu = Qwen25Vl::random(c.clone(), seed, dtype)?;
                (Box::new(Qwen25Vl::from_params(c, moved(cpu.params(), dev)?)?), input)
            }
        };
        let input = input.to_device(dev)?;
        let (chunk, width) = (self.policy.chunk, self.policy.action_dim);
        let gripper = self.policy.gripper == GripperMode::Last;
        let actions: Vec<f32> =
            (0..self.batch * chunk * width)
                .map(|i| {
                    if gripper && i % width == width - 1 {
                        rng.gen_range(0..2) as f32
                    } else {
                        rng.gen_range(-1.0..1.0)
                    }
                })
                .collect();
        let actions = Tensor::from_vec(actions, &[self.batch, chunk, width], dev)?;
        let mask = Tensor::ones(&[self.batch, chunk], DType::U8, dev)?;
        let sd = self.policy.state_dim;
        let state = (sd > 0)
            .then(|| Tensor::rand_normal(0.0, 1.0, &[self.batch, sd], DType::F32, dev, seed + 2))
            .transpose()?;
        let mut policy = VlaPolicy::new(backbone, self.policy.clone(), seed + 1)?;
        // BENCH_CHECKPOINT=1: activation checkpointing per block (`run.checkpoint_activations`).
        policy.set_checkpoint_activations(std::env::var("BENCH_CHECKPOINT").is_ok_and(|v| v == "1"));
        // BENCH_FULL_LAST_LAYER=1: the last decoder layer over every row, as PyTorch runs it (by
        // default it computes the head's rows alone after its keys and values).
        policy.set_full_last_layer(std::env::var("BENCH_FULL_LAST_LAYER").is_ok_and(|v| v == "1"));
        policy.set_trainable(&TrainableParts::all())?;
        let o = &self.optim;
        let optimizer = AdamW::new(o.adamw())?;
        Ok(Run { policy, optimizer, input, actions, mask, state, lr: o.lr, clip: o.clip_grad_norm })
    }

    fn check_image_size(&self, config: usize) -> Result<()> {
        if config != self.image_size {
            return Err(invalid(format!(
                "case `{}`: image_size {} differs from its config's {config}",
                self.name, self.image_size
            )));
        }
        Ok(())
    }
}

/// A copy of `ps` on `dev` (the same store when `dev` is the CPU).
fn moved(ps: &ParamStore, dev: Device) -> Result<ParamStore> {
    if dev.is_cpu() {
        return Ok(ps.clone());
    }
    let mut out = ParamStore::new();
    for (n, t) in ps.iter() {
        out.insert(n.to_string(), &t.to_device(dev)?)?;
    }
    Ok(out)
}

/// What the instrumented step measured besides the counters.
pub struct Measured {
    pub loss: f64,
    /// Live tensor bytes after the forward and the loss minus before: what the graph keeps for
    /// the backward (and the outputs).
    pub saved_activation_bytes: i64,
}

/// A built case, ready to step.
pub struct Run {
    policy: VlaPolicy,
    optimizer: AdamW,
    input: BackboneInput,
    actions: Tensor,
    mask: Tensor,
    state: Option<Tensor>,
    lr: f64,
    clip: f64,
}

impl Run {
    /// One optimizer step over one micro-batch, the calls `Trainer::train_step` makes.
    pub fn step(&mut self) -> Result<()> {
        self.step_measured().map(|_| ())
    }

    pub fn step_measured(&mut self) -> Result<Measured> {
        let params = self.policy.trainable_params();
        let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
        let mut grads = GradStore::new();
        let live = counters::memory().live_bytes as i64;
        let pl = self.policy.forward_loss_with_state(&self.input, self.state.as_ref(), &self.actions, &self.mask)?;
        let saved = counters::memory().live_bytes as i64 - live;
        pl.loss.scale(1.0)?.backward_into(&mut grads)?;
        // As the trainer: the norm stays on the device, one packed host read (the loss parts
        // and the norm), the clip inside the optimizer.
        let norm = GradNorm::of(&grads, &tensors)?;
        let (values, grad_norm) = read_step(std::slice::from_ref(&pl), &norm)?;
        let loss = values[0].loss;
        drop(pl);
        if !loss.is_finite() {
            return Err(invalid(format!("the loss is {loss}")));
        }
        if !grad_norm.is_finite() {
            return Err(invalid(format!("the gradient norm is {grad_norm}")));
        }
        self.optimizer.step_clipped(&params, &grads, self.lr, &norm, self.clip)?;
        Ok(Measured { loss, saved_activation_bytes: saved })
    }

    /// (all, trainable) parameter elements.
    pub fn num_params(&self) -> (usize, usize) {
        self.policy.num_params()
    }

    /// Prompt length `L` (image and text tokens of a row).
    pub fn seq_len(&self) -> usize {
        self.input.input_ids.shape()[1]
    }

    /// Rows the language model runs per sample: the prompt, the state row, the action queries.
    pub fn lm_tokens_per_sample(&self) -> usize {
        self.seq_len() + self.policy.config().latent + usize::from(self.policy.config().state_dim > 0)
    }

    /// The batch as safetensors for the PyTorch baseline: `input_ids` i64, `attention_mask` and
    /// `token_type` u8, `pixel_values` f32 (Qwen: patch rows) and `image_grid_thw` i64 `[n, 3]`,
    /// `actions` f32, `mask` u8, `state` f32 when the policy takes one.
    pub fn save_batch(&self, path: &Path) -> Result<()> {
        let i = &self.input;
        let mut named: Vec<(&str, Tensor)> = vec![
            ("input_ids", i.input_ids.clone()),
            ("attention_mask", i.attention_mask.clone()),
            ("token_type", i.token_type.clone()),
            ("pixel_values", i.pixel_values.clone()),
            ("actions", self.actions.clone()),
            ("mask", self.mask.clone()),
        ];
        if let Some(g) = &i.image_grid_thw {
            let flat: Vec<i64> = g.iter().flat_map(|t| t.iter().map(|&x| x as i64)).collect();
            named.push(("image_grid_thw", Tensor::from_vec(flat, &[g.len(), 3], Device::Cpu)?));
        }
        if let Some(s) = &self.state {
            named.push(("state", s.clone()));
        }
        let cpu: Vec<(&str, Tensor)> =
            named.into_iter().map(|(n, t)| Ok((n, t.to_device(Device::Cpu)?))).collect::<Result<_>>()?;
        let refs: Vec<(&str, &Tensor)> = cpu.iter().map(|(n, t)| (*n, t)).collect();
        io::save(path, &refs, None)
    }
}
