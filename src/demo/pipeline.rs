use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{LeRobotDataset, LeRobotWriter};
use crate::engine::{DType, Device, Error, Result, Tensor};
use crate::env::{
    evaluate, Action, Colour, EnvConfig, EpisodeSpec, EvalOptions, EvalReport, Goal, InstructionMode, Observation,
    Shape, Side, TabletopEnv, TaskFamily,
};
use crate::models::paligemma::{PaliGemma, PaliGemmaConfig, PaliGemmaProcessor, PromptTokens};
use crate::models::vla::{ActionNormalizer, HeadConfig, PolicyConfig, VlaPolicy, ACTION_DIMS, ARM_DIMS};
use crate::models::BackboneInput;
use crate::train::{Batch, BatchSource, Checkpoint, OptimConfig, RunConfig, TrainConfig, Trainer};

/// The backbone `vlm4vla demo` trains: a narrower, shallower `paligemma-tiny` (see
/// [`backbone_config`]).
pub const DEMO_BACKBONE: &str = "paligemma-demo";
/// Backbone names this pipeline can build.
pub const BACKBONES: &[&str] = &["paligemma-demo", "paligemma-tiny"];
/// First seed of held-out evaluation episodes (training data is collected from seed 0 up).
pub const EVAL_FIRST_SEED: u64 = 1_000_000;
/// First seed of the held-out demonstrations the demo measures the loss on (clean expert
/// rollouts; never trained on, and not the evaluation episodes).
pub const HELDOUT_DEMO_FIRST_SEED: u64 = 2_000_000;
/// Held-out demonstrations collected for that loss, and the batches of 32 frames it averages.
const HELDOUT_DEMOS: usize = 100;
const HELDOUT_LOSS_BATCHES: usize = 8;
/// The `robot_type` of datasets written by [`collect`].
pub const ROBOT_TYPE: &str = "vlm4vla-tabletop";
/// Frames per second recorded in the dataset's `info.json`.
pub const FPS: u32 = 10;
/// Name of the word vocabulary stored with checkpoints.
pub const VOCAB_NAME: &str = "tabletop-words-v2";

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid { op: "demo", msg: msg.into() }
}

// ---------------------------------------------------------------------------------------------
// Tokenization

/// A word-level vocabulary for the tabletop instructions: every word of every template, colour,
/// shape noun and side, in sorted order, numbered from 4 (3 is the unknown word), skipping the
/// PaliGemma image (100) and newline (108) ids; all ids stay below 128, the tiny vocabulary.
#[derive(Clone, Debug)]
pub struct Vocab {
    ids: BTreeMap<String, i64>,
}

/// The id of a word the vocabulary does not know.
pub const UNK_ID: i64 = 3;

impl Vocab {
    pub fn tabletop() -> Vocab {
        let mut words: Vec<String> = Vec::new();
        let goals = [Goal::Reach, Goal::Lift, Goal::PlaceOnPlate, Goal::MoveToSide(Side::Left)];
        for g in goals {
            for t in g.templates() {
                words.extend(split_words(&t.replace("{obj}", " ").replace("{side}", " ")));
            }
        }
        words.extend(Colour::ALL.iter().map(|c| c.name().to_string()));
        words.extend(split_words(&GROUNDING_TEMPLATE.replace("{obj}", " ")));
        words.extend([Shape::Block, Shape::Ball].iter().map(|s| s.noun().to_string()));
        words.extend(Side::ALL.iter().map(|s| s.name().to_string()));
        words.sort();
        words.dedup();
        let mut ids = BTreeMap::new();
        let mut next = UNK_ID + 1;
        for w in words {
            while next == 100 || next == crate::models::paligemma::NEWLINE_TOKEN {
                next += 1;
            }
            ids.insert(w, next);
            next += 1;
        }
        Vocab { ids }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The largest id in use.
    pub fn max_id(&self) -> i64 {
        self.ids.values().copied().max().unwrap_or(UNK_ID)
    }

    /// Lower-cases, splits on anything that is not a letter, maps unknown words to [`UNK_ID`].
    pub fn encode(&self, text: &str) -> Vec<i64> {
        split_words(&text.to_lowercase()).iter().map(|w| self.ids.get(w).copied().unwrap_or(UNK_ID)).collect()
    }

    /// Words of `text` the vocabulary does not know.
    pub fn unknown_words(&self, text: &str) -> Vec<String> {
        split_words(&text.to_lowercase()).into_iter().filter(|w| !self.ids.contains_key(w)).collect()
    }
}

fn split_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphabetic()).filter(|w| !w.is_empty()).map(str::to_string).collect()
}

// ---------------------------------------------------------------------------------------------
// Backbone and policy

/// The PaliGemma config of a pipeline backbone name at `image_size` pixels.
///
/// - `paligemma-tiny`: the registry's tiny config (SigLIP 32 wide × 2 layers, Gemma 64 wide × 2
///   layers), with the image size replaced;
/// - `paligemma-demo`: the same widths, one SigLIP layer, patches of 8 pixels.
pub fn backbone_config(name: &str, image_size: usize) -> Result<PaliGemmaConfig> {
    let mut cfg = match name {
        "paligemma-tiny" => PaliGemmaConfig::tiny(),
        "paligemma-demo" => {
            let mut c = PaliGemmaConfig::tiny();
            c.vision.num_hidden_layers = 1;
            c
        }
        other => {
            return Err(invalid(format!(
                "backbone `{other}` is not supported by the tabletop pipeline (supported: {})",
                BACKBONES.join(", ")
            )))
        }
    };
    if image_size == 0 || !image_size.is_multiple_of(cfg.vision.patch_size) {
        return Err(invalid(format!(
            "image size {image_size} is not a positive multiple of backbone `{name}`'s patch size {}",
            cfg.vision.patch_size
        )));
    }
    cfg.vision.image_size = image_size;
    cfg.validate()?;
    let vocab = Vocab::tabletop();
    if vocab.max_id() >= cfg.text.vocab_size as i64 {
        return Err(invalid(format!(
            "the instruction vocabulary needs ids up to {}, but `{name}` has {} tokens",
            vocab.max_id(),
            cfg.text.vocab_size
        )));
    }
    Ok(cfg)
}

/// Images and instructions → a backbone batch.
#[derive(Clone, Debug)]
pub struct Encoder {
    pub processor: PaliGemmaProcessor,
    pub vocab: Vocab,
}

impl Encoder {
    pub fn new(cfg: &PaliGemmaConfig) -> Encoder {
        Encoder { processor: PaliGemmaProcessor::new(cfg), vocab: Vocab::tabletop() }
    }

    pub fn image_size(&self) -> usize {
        self.processor.image_size
    }

    pub fn prompt(&self, instruction: &str) -> PromptTokens {
        self.processor.prompt(&self.vocab.encode(instruction), None)
    }

    /// `images` are `S × S × 3` RGB bytes at the model's image size.
    pub fn encode(&self, images: &[&[u8]], prompts: &[PromptTokens]) -> Result<BackboneInput> {
        let px = self.processor.pixel_values(images)?;
        self.processor.collate(prompts, px)
    }
}

/// A fresh (untrained) policy for `cfg` at `image_size`: backbone weights from `cfg.seed`, head
/// weights from `cfg.seed + 1`.
pub fn build_policy(cfg: &TrainConfig, image_size: usize) -> Result<(VlaPolicy, Encoder)> {
    let bb_cfg = backbone_config(&cfg.backbone, image_size)?;
    let encoder = Encoder::new(&bb_cfg);
    let mut backbone = PaliGemma::random(bb_cfg, cfg.seed, DType::F32)?;
    demo_init(&mut backbone, cfg.seed)?;
    let mut policy = VlaPolicy::new(Box::new(backbone), cfg.policy.clone(), cfg.seed.wrapping_add(1))?;
    policy.set_checkpoint_activations(cfg.run.checkpoint_activations);
    Ok((policy, encoder))
}

/// Re-initialise a randomly built backbone for training from scratch on a small CPU budget:
/// every weight matrix N(0, 1/fan_in) (instead of the checkpoint-style N(0, 0.02²), which starts
/// tiny models almost silent), and the SigLIP position embeddings as a fixed-amplitude 2-D
/// sine/cosine code of each patch's column and row (so "where" is available from step 0).
pub fn demo_init(backbone: &mut PaliGemma, seed: u64) -> Result<()> {
    use crate::models::paligemma::param_shapes;
    use crate::models::Backbone;
    let cfg = backbone.config().clone();
    let pos_name = "vision_tower.vision_model.embeddings.position_embedding.weight";
    let fused = backbone.fused().clone();
    let store = backbone.params_mut();
    for (i, (name, shape)) in param_shapes(&cfg).into_iter().enumerate() {
        if shape.len() < 2 {
            continue;
        }
        let t = fused.get(store, &name)?;
        let new = if name == pos_name {
            let grid = cfg.vision.grid();
            let (n, d) = (shape[0], shape[1]);
            let quarter = (d / 4).max(1);
            let mut v = vec![0f32; n * d];
            for p in 0..n {
                let (row, col) = ((p / grid) as f32, (p % grid) as f32);
                for k in 0..quarter {
                    let freq =
                        std::f32::consts::PI / grid as f32 * (1 << k.min(4)) as f32 * (1.0 + (k / 5) as f32 * 0.5);
                    let base = p * d + 4 * k;
                    for (j, val) in [(col * freq).sin(), (col * freq).cos(), (row * freq).sin(), (row * freq).cos()]
                        .into_iter()
                        .enumerate()
                    {
                        if 4 * k + j < d {
                            v[base + j] = val;
                        }
                    }
                }
            }
            Tensor::from_vec(v, &shape, Device::Cpu)?
        } else if name.contains("embed_tokens") {
            Tensor::rand_normal(
                0.0,
                1.0 / (shape[1] as f64).sqrt(),
                &shape,
                DType::F32,
                Device::Cpu,
                seed ^ (i as u64 + 7919),
            )?
        } else {
            let fan_in: usize = shape[1..].iter().product();
            Tensor::rand_normal(
                0.0,
                1.0 / (fan_in as f64).sqrt(),
                &shape,
                DType::F32,
                Device::Cpu,
                seed ^ (i as u64 + 7919),
            )?
        };
        t.assign(&new.to_dtype(t.dtype())?)?;
    }
    Ok(())
}

/// What the pipeline stores in a checkpoint's `extra` slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineExtra {
    pub image_size: usize,
    pub vocab: String,
    pub normalizer: ActionNormalizer,
    /// The dataset the run was trained on (for `--resume`).
    pub dataset: PathBuf,
}

/// The action normaliser of the pipeline: the expert's actions already lie in [-1, 1], so the
/// arm is clipped to ±1 and not scaled; the gripper is ±1 (open when positive).
pub fn normalizer() -> Result<ActionNormalizer> {
    ActionNormalizer::fixed_bounds(1.0, ARM_DIMS)
}

// ---------------------------------------------------------------------------------------------
// Collect

/// What [`collect`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct CollectSummary {
    pub dir: PathBuf,
    pub episodes: usize,
    pub frames: usize,
    /// Expert episodes that failed and were left out.
    pub dropped: usize,
    pub first_seed: u64,
    pub image_size: usize,
    pub seconds: f64,
}

/// Steps of expert plan [`collect`] records per frame by default (chunks up to this long).
pub const DEFAULT_PLAN_STEPS: usize = 16;

/// What [`collect`] records.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CollectOptions {
    pub episodes: usize,
    /// Seed of the first episode (the next ones count up).
    pub seed: u64,
    pub image_size: usize,
    /// DART noise (see [`collect`]); 0 records clean expert rollouts.
    pub noise: f32,
    /// Length of the expert plan recorded per frame (`action_plan`; 0: none).
    pub plan_steps: usize,
}

impl Default for CollectOptions {
    fn default() -> CollectOptions {
        CollectOptions { episodes: 2000, seed: 0, image_size: 48, noise: 0.3, plan_steps: DEFAULT_PLAN_STEPS }
    }
}

/// One recorded episode: observations, expert labels, per-frame expert plans, instruction,
/// success.
struct Rollout {
    frames: Vec<Observation>,
    actions: Vec<Action>,
    plans: Vec<Vec<f32>>,
    instruction: String,
    success: bool,
}

/// The unperturbed expert's next `steps` actions from `env`'s state (fewer when the episode
/// ends sooner), flattened.
fn expert_plan(env: &TabletopEnv, steps: usize) -> Result<Vec<f32>> {
    let mut sim = env.clone();
    let mut plan = Vec::with_capacity(steps * ACTION_DIMS);
    while plan.len() < steps * ACTION_DIMS && !sim.done() {
        let a = sim.expert_action();
        plan.extend_from_slice(&a);
        sim.step(&a)?;
    }
    Ok(plan)
}

/// Runs the scripted expert on `opts.episodes` episodes (families interleaved, seeds
/// `opts.seed ..`) and writes the successful ones as a LeRobot dataset at `out` (which must not
/// exist).
///
/// With `noise > 0` the executed actions are perturbed (DART-style: on every other step on
/// average, Gaussian noise of that standard deviation is added to dx, dy and dz) while the
/// recorded label is always the expert's action in the state reached, so the data shows how to
/// recover from small mistakes. The perturbation follows from the episode seed.
///
/// With `plan_steps > 0` every frame also records the expert's plan: the actions it would take
/// from that state with no perturbation (`action_plan`). Training chunks come from the plan: the
/// recorded actions after a frame answer perturbations the frame cannot show, so as chunk labels
/// they are noise the policy cannot fit (in an 8000-step quick demo at seed 0 the held-out loss
/// fell 4.2× with them and 9.2× with plans, the run being otherwise the same).
pub fn collect(out: &Path, opts: &CollectOptions) -> Result<CollectSummary> {
    let started = Instant::now();
    let CollectOptions { episodes, seed, image_size, noise, plan_steps } = *opts;
    if episodes == 0 {
        return Err(invalid("collect: --episodes must be at least 1"));
    }
    if !(noise.is_finite() && (0.0..=2.0).contains(&noise)) {
        return Err(invalid(format!("collect: --noise {noise} is outside 0..=2")));
    }
    let env_cfg = EnvConfig { image_size, ..EnvConfig::default() };
    env_cfg.validate()?;
    let fams = TaskFamily::ALL;
    let specs: Vec<EpisodeSpec> =
        EpisodeSpec::balanced(&fams, seed, episodes.div_ceil(fams.len())).into_iter().take(episodes).collect();
    let mut w = LeRobotWriter::create(out, FPS, [image_size, image_size, 3], 7, 7, ROBOT_TYPE)?;
    if plan_steps > 0 {
        w = w.with_action_plan(plan_steps)?;
    }
    let (mut kept, mut frames, mut dropped) = (0, 0, 0);
    for part in specs.chunks(64) {
        use rayon::prelude::*;
        let demos: Vec<Result<Rollout>> = part
            .par_iter()
            .map(|spec| {
                let mut env = TabletopEnv::new(env_cfg.clone())?;
                env.reset(spec.seed, spec.family)?;
                let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0xD1B5_4A32_D192_ED03);
                let (mut obs, mut acts, mut plans) = (Vec::new(), Vec::new(), Vec::new());
                while !env.done() {
                    let a = env.expert_action();
                    obs.push(env.observe());
                    acts.push(a);
                    if plan_steps > 0 {
                        plans.push(expert_plan(&env, plan_steps)?);
                    }
                    let mut exec = a;
                    if noise > 0.0 && rng.gen_bool(0.5) {
                        for v in exec.iter_mut().take(3) {
                            let g: f32 = (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum::<f32>() * 0.866;
                            *v = (*v + noise * g).clamp(-1.0, 1.0);
                        }
                    }
                    env.step(&exec)?;
                }
                Ok(Rollout {
                    frames: obs,
                    actions: acts,
                    plans,
                    instruction: env.instruction(),
                    success: env.is_success(),
                })
            })
            .collect();
        for d in demos {
            let r = d?;
            if !r.success {
                dropped += 1;
                continue;
            }
            for (t, (f, a)) in r.frames.iter().zip(&r.actions).enumerate() {
                match r.plans.get(t) {
                    Some(plan) => w.add_frame_with_plan(&f.image, &f.proprio, a, plan)?,
                    None => w.add_frame(&f.image, &f.proprio, a)?,
                }
            }
            frames += r.actions.len();
            w.end_episode(&r.instruction)?;
            kept += 1;
        }
    }
    if kept == 0 {
        return Err(invalid("collect: the expert solved none of the episodes"));
    }
    w.finish()?;
    Ok(CollectSummary {
        dir: out.to_path_buf(),
        episodes: kept,
        frames,
        dropped,
        first_seed: seed,
        image_size,
        seconds: started.elapsed().as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------------
// Training data

/// A resumable [`BatchSource`] over a whole dataset decoded into memory. Batch `k` holds
/// `batch_size` frames drawn uniformly (with replacement) by a generator seeded from
/// `(seed, k)`, so the position is just the number of batches handed out.
pub struct DemoSource {
    encoder: Encoder,
    images: Vec<Vec<u8>>,
    prompts: Vec<PromptTokens>,
    /// Per frame, `chunk` labels (the dataset's action chunk: 6 normalised arm values and the
    /// gripper target in {0, 1}) and whether each is real.
    targets: Vec<[f32; ACTION_DIMS]>,
    valid: Vec<bool>,
    /// Per frame: the proprioceptive state, when the policy takes it.
    states: Option<Vec<Vec<f32>>>,
    chunk: usize,
    batch_size: usize,
    seed: u64,
    consumed: u64,
    grounding: GroundingConfig,
    /// With `grounding.until_loss`: the micro-batch at which the grounding-only phase ended
    /// (None while it runs), and the losses of its last steps.
    grounding_end: Option<u64>,
    recent_losses: std::collections::VecDeque<f64>,
    /// Micro-batches per optimizer step (grounding steps count optimizer steps).
    grad_accum: usize,
    /// The normalised action of "stay, gripper open": the pointing rows' base.
    open_action: [f32; ACTION_DIMS],
}

impl DemoSource {
    /// Decode every frame of `dataset`; frames must be at the encoder's image size.
    pub fn new(
        dataset: &LeRobotDataset,
        encoder: Encoder,
        normalizer: &ActionNormalizer,
        chunk: usize,
        batch_size: usize,
        seed: u64,
        state_dim: usize,
    ) -> Result<DemoSource> {
        let s = encoder.image_size();
        let (h, w) = dataset.image_size();
        if (h, w) != (s, s) {
            return Err(Error::file(
                dataset.root(),
                format!("frames are {w}×{h} pixels but the policy takes {s}×{s} (collect with --image-size {s})"),
            ));
        }
        if dataset.action_dim() != ACTION_DIMS {
            return Err(Error::file(
                dataset.root(),
                format!("actions have {} dims, the policy predicts {ACTION_DIMS}", dataset.action_dim()),
            ));
        }
        if dataset.is_empty() {
            return Err(Error::file(dataset.root(), "the dataset has no frames"));
        }
        let n = dataset.len();
        let mut images = Vec::with_capacity(n);
        let mut prompts = Vec::with_capacity(n);
        let mut targets = Vec::with_capacity(n * chunk);
        let mut valid = Vec::with_capacity(n * chunk);
        let mut raw = Vec::with_capacity(chunk * ACTION_DIMS);
        let mut states = (state_dim > 0).then(|| Vec::with_capacity(n));
        if state_dim > 0 && dataset.state_dim() != state_dim {
            return Err(Error::file(
                dataset.root(),
                format!(
                    "frames have a {}-D state but the policy takes {state_dim} (policy.state_dim)",
                    dataset.state_dim()
                ),
            ));
        }
        let mut cache: BTreeMap<String, PromptTokens> = BTreeMap::new();
        for i in 0..n {
            images.push(dataset.decode_image(i)?.data);
            let text = dataset.instruction(i).unwrap_or_default();
            let p = cache.entry(text.to_string()).or_insert_with(|| encoder.prompt(text)).clone();
            prompts.push(p);
            raw.clear();
            dataset.action_chunk_into(i, chunk, &mut raw, &mut valid)?;
            for a in raw.chunks(ACTION_DIMS) {
                let norm = normalizer.normalize_actions(a)?;
                let mut t = [0f32; ACTION_DIMS];
                t.copy_from_slice(&norm[..ACTION_DIMS]);
                targets.push(t);
            }
            if let Some(states) = states.as_mut() {
                let s =
                    dataset.state(i).ok_or_else(|| Error::file(dataset.root(), format!("frame {i} has no state")))?;
                states.push(s.to_vec());
            }
        }
        let open = normalizer.normalize_actions(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])?;
        let mut open_action = [0f32; ACTION_DIMS];
        open_action.copy_from_slice(&open[..ACTION_DIMS]);
        Ok(DemoSource {
            encoder,
            images,
            prompts,
            targets,
            valid,
            states,
            chunk,
            batch_size,
            seed,
            consumed: 0,
            grounding: GroundingConfig::default(),
            grounding_end: None,
            recent_losses: Default::default(),
            grad_accum: 1,
            open_action,
        })
    }

    /// Mix grounding rows into the batches (see [`GroundingConfig`]); `grad_accum` converts its
    /// optimizer steps to micro-batches.
    pub fn with_grounding(mut self, grounding: GroundingConfig, grad_accum: usize) -> Result<DemoSource> {
        grounding.validate()?;
        self.grounding = grounding;
        self.grad_accum = grad_accum.max(1);
        Ok(self)
    }

    /// Optimizer steps so far that saw grounding rows only.
    pub fn grounding_only_steps(&self) -> usize {
        (self.phase_end().min(self.consumed) / self.grad_accum as u64) as usize
    }

    /// The first micro-batch after the grounding-only phase: `grounding.steps` optimizer steps,
    /// or earlier where `until_loss` ended it.
    fn phase_end(&self) -> u64 {
        let cap = (self.grounding.steps as u64).saturating_mul(self.grad_accum as u64);
        self.grounding_end.map_or(cap, |end| end.min(cap))
    }

    /// How many rows of micro-batch `k` are grounding rows.
    fn grounding_rows(&self, k: u64) -> usize {
        if k < self.phase_end() {
            self.batch_size
        } else {
            (self.grounding.fraction * self.batch_size as f64).round() as usize
        }
    }

    /// The mean loss (arm + ratio · gripper, as in training) of `policy` on this source's first
    /// `batches` batches, without gradients: the same frames for every policy, so losses of two
    /// policies compare directly.
    pub fn mean_loss(&self, policy: &VlaPolicy, batches: usize) -> Result<f64> {
        let mut total = 0.0;
        for k in 0..batches {
            let b = self.make_batch(k as u64)?;
            let pl = crate::engine::no_grad(|| {
                policy.forward_loss_with_state(&b.input, b.state.as_ref(), &b.actions, &b.mask)
            })?;
            total += pl.loss.to_scalar::<f64>()?;
        }
        Ok(total / batches.max(1) as f64)
    }

    pub fn frames(&self) -> usize {
        self.images.len()
    }

    fn make_batch(&self, k: u64) -> Result<Batch> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let n = self.images.len();
        let pointing = self.grounding_rows(k);
        let idx: Vec<usize> = (0..self.batch_size - pointing).map(|_| rng.gen_range(0..n)).collect();
        let env = EnvConfig { image_size: self.encoder.image_size(), ..EnvConfig::default() };
        let rows: Vec<GroundingRow> = (0..pointing).map(|_| GroundingRow::sample(&env, &mut rng)).collect();
        let mut imgs: Vec<&[u8]> = idx.iter().map(|&i| self.images[i].as_slice()).collect();
        imgs.extend(rows.iter().map(|r| r.image.as_slice()));
        let mut prompts: Vec<PromptTokens> = idx.iter().map(|&i| self.prompts[i].clone()).collect();
        prompts.extend(rows.iter().map(|r| self.encoder.prompt(&r.instruction)));
        let input = self.encoder.encode(&imgs, &prompts)?;
        let (b, c) = (imgs.len(), self.chunk);
        let mut actions = Vec::with_capacity(b * c * ACTION_DIMS);
        let mut mask = Vec::with_capacity(b * c);
        for &i in &idx {
            for t in &self.targets[i * c..(i + 1) * c] {
                actions.extend_from_slice(t);
            }
            mask.extend(self.valid[i * c..(i + 1) * c].iter().map(|&v| f32::from(u8::from(v))));
        }
        for r in &rows {
            let mut t = self.open_action;
            t[..2].copy_from_slice(&r.point);
            for _ in 0..c {
                actions.extend_from_slice(&t);
            }
            mask.extend(std::iter::repeat_n(1f32, c));
        }
        Ok(Batch {
            input,
            actions: Tensor::from_vec(actions, &[b, c, ACTION_DIMS], Device::Cpu)?,
            mask: Tensor::from_vec(mask, &[b, c], Device::Cpu)?,
            state: match &self.states {
                Some(all) => {
                    let d = all.first().map_or(0, Vec::len);
                    let mut v: Vec<f32> = idx.iter().flat_map(|&i| all[i].iter().copied()).collect();
                    v.extend(rows.iter().flat_map(|r| r.state));
                    Some(Tensor::from_vec(v, &[b, d], Device::Cpu)?)
                }
                None => None,
            },
        })
    }
}

/// The instruction of a grounding row; `{obj}` is the object phrase ("red block").
pub const GROUNDING_TEMPLATE: &str = "point at the {obj}";
/// Grounding scenes use seeds from here on (never the training or evaluation episodes' seeds).
pub const GROUNDING_FIRST_SEED: u64 = 1 << 40;

/// Grounding co-training: the tiny backbone's stand-in for the VLM pretraining a real one
/// brings. A grounding row is a freshly generated scene (gripper anywhere) with the instruction
/// "point at the {colour} {shape}"; its target "action" holds the offset from the gripper to the
/// named object (x, y, in table widths, unsaturated) in the first two arm dimensions, zero motion
/// elsewhere and the gripper open, on every chunk step. It teaches exactly what a from-scratch
/// model lacks: which object the colour word names (a referring-expression grounding task, as
/// PaliGemma's detection pretraining), measured from the gripper as the actions are.
///
/// Pointing at the absolute position instead was tried and is a trap: the query's attention
/// locks onto the named object, and the demonstrations (which also need the gripper) then stop
/// improving (loss flat for 9,000 steps).
///
/// TOML:
///
/// ```toml
/// [grounding]
/// steps = 6000        # optimizer steps of grounding rows only, before any demonstration...
/// until_loss = 0.001  # ...or fewer: until the pointing loss is this low
/// fraction = 0.25     # then this share of every batch stays grounding rows
/// lr_scale_after = 0.5 # and the learning rate is scaled by this (default 1)
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroundingConfig {
    /// Optimizer steps of grounding rows only (with `until_loss`: at most this many).
    pub steps: usize,
    pub fraction: f64,
    /// End the grounding-only phase as soon as the mean training loss of its last
    /// [`GROUNDING_WINDOW`] steps is below this. The pointing task is learned in a sudden
    /// transition whose step varies from run to run (1,500 to past 2,500 steps); demonstrations
    /// that start before it completes were learned far more slowly (0–7.5% success against
    /// 62–85% in runs of the same length).
    pub until_loss: Option<f64>,
    /// Scale the learning rate by this once the grounding-only phase is over (None: 1). The
    /// pointing task is learned fastest at a high rate; the demonstrations after it bound the
    /// instruction to its object more reliably at a lower one.
    pub lr_scale_after: Option<f64>,
}

/// Steps whose mean loss `until_loss` is compared with.
pub const GROUNDING_WINDOW: usize = 50;

impl GroundingConfig {
    pub fn is_off(&self) -> bool {
        self.steps == 0 && self.fraction == 0.0
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.fraction.is_finite() && (0.0..1.0).contains(&self.fraction)) {
            return Err(invalid(format!("grounding.fraction = {} must be in [0, 1)", self.fraction)));
        }
        if let Some(l) = self.until_loss {
            if !(l.is_finite() && l > 0.0) {
                return Err(invalid(format!("grounding.until_loss = {l} must be a positive number")));
            }
        }
        if let Some(l) = self.lr_scale_after {
            if !(l.is_finite() && l > 0.0 && l <= 10.0) {
                return Err(invalid(format!("grounding.lr_scale_after = {l} must be in (0, 10]")));
            }
        }
        Ok(())
    }
}

/// One grounding row (see [`GroundingConfig`]).
struct GroundingRow {
    image: Vec<u8>,
    instruction: String,
    /// From the gripper to the named object, in table widths (x, y).
    point: [f32; 2],
    state: [f32; 7],
}

impl GroundingRow {
    fn sample(env: &EnvConfig, rng: &mut ChaCha8Rng) -> GroundingRow {
        Self::sample_with_world(env, rng).0
    }

    fn sample_with_world(env: &EnvConfig, rng: &mut ChaCha8Rng) -> (GroundingRow, crate::env::World) {
        let seed = GROUNDING_FIRST_SEED + rng.gen_range(0..1u64 << 32);
        let (mut world, _) = crate::env::world::generate(env, seed, None);
        let u = crate::env::UNITS;
        world.gripper.x = rng.gen_range(0..=u);
        world.gripper.y = rng.gen_range(0..=u);
        world.gripper.z = rng.gen_range(0..=u);
        let o = world.objects[rng.gen_range(0..world.objects.len())];
        let mut image = Vec::new();
        crate::env::render(&world, env.image_size, &mut image);
        let g = world.gripper;
        let row = GroundingRow {
            image,
            instruction: GROUNDING_TEMPLATE.replace("{obj}", &o.phrase()),
            point: [(o.x - g.x) as f32 / u as f32, (o.y - g.y) as f32 / u as f32],
            state: g.proprio(),
        };
        (row, world)
    }
}

impl BatchSource for DemoSource {
    fn next_batch(&mut self) -> Option<Result<Batch>> {
        let b = self.make_batch(self.consumed);
        self.consumed += 1;
        Some(b)
    }

    fn position(&self) -> serde_json::Value {
        serde_json::json!({
            "batches": self.consumed,
            "grounding_end": self.grounding_end,
            "recent_losses": self.recent_losses,
        })
    }

    fn restore(&mut self, position: &serde_json::Value) -> Result<()> {
        self.consumed = position
            .get("batches")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| invalid(format!("data position {position} has no `batches` count")))?;
        self.grounding_end = position.get("grounding_end").and_then(|v| v.as_u64());
        self.recent_losses = match position.get("recent_losses") {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| invalid(format!("data position: `recent_losses`: {e}")))?,
            None => Default::default(),
        };
        Ok(())
    }

    fn observe_loss(&mut self, _step: usize, loss: f64) {
        let Some(target) = self.grounding.until_loss else { return };
        if self.grounding_end.is_some() || self.consumed >= self.phase_end() {
            return;
        }
        self.recent_losses.push_back(loss);
        if self.recent_losses.len() > GROUNDING_WINDOW {
            self.recent_losses.pop_front();
        }
        let n = self.recent_losses.len();
        if n == GROUNDING_WINDOW && self.recent_losses.iter().sum::<f64>() / (n as f64) < target {
            self.grounding_end = Some(self.consumed);
        }
    }

    fn batches_per_epoch(&self) -> Option<usize> {
        Some(self.images.len().div_ceil(self.batch_size))
    }

    fn lr_scale(&self) -> f64 {
        match self.grounding.lr_scale_after {
            Some(scale) if self.consumed > self.phase_end() => scale,
            _ => 1.0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Training

/// A pipeline training config: the dataset, the optional [`GroundingConfig`] table, and the
/// [`TrainConfig`] tables.
///
/// ```toml
/// dataset = "runs/demo/data"   # written by `vlm4vla collect`
/// backbone = "paligemma-demo"
/// output_dir = "runs/demo/train"
/// [policy]
/// chunk = 4
/// state_dim = 7                # the gripper's proprioceptive state as an input row
/// [optim]
/// lr = 1e-3
/// decay_steps = 4000           # flat lr, then the cosine over the last 4000 steps
/// [run]
/// steps = 18000
/// [grounding]                  # "point at the red block" rows (see GroundingConfig)
/// steps = 2000
/// fraction = 0.25
/// ```
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub dataset: PathBuf,
    /// The optional `[grounding]` table (off by default).
    pub grounding: GroundingConfig,
    pub train: TrainConfig,
}

impl PipelineConfig {
    /// Read a TOML file: the top-level `dataset` key, everything else a [`TrainConfig`] (strict:
    /// unknown keys are errors naming the key and the file). A relative `dataset` is relative to
    /// the working directory.
    pub fn from_file(path: &Path) -> Result<PipelineConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        Self::from_toml_str(&text, path)
    }

    pub fn from_toml_str(text: &str, origin: &Path) -> Result<PipelineConfig> {
        let mut table: toml::Table = text.parse().map_err(|e| Error::file(origin, format!("invalid config: {e}")))?;
        let dataset = match table.remove("dataset") {
            Some(toml::Value::String(s)) => PathBuf::from(s),
            Some(other) => {
                return Err(Error::file(origin, format!("`dataset` must be a path string, found {}", other.type_str())))
            }
            None => return Err(Error::file(origin, "`dataset` is missing (the directory `vlm4vla collect` wrote)")),
        };
        let grounding = match table.remove("grounding") {
            Some(v) => {
                let g: GroundingConfig = v
                    .try_into()
                    .map_err(|e| Error::file(origin, format!("[grounding]: {e} (keys: steps, fraction)")))?;
                g.validate().map_err(|e| Error::file(origin, e.to_string()))?;
                g
            }
            None => GroundingConfig::default(),
        };
        let rest = toml::to_string(&table).map_err(|e| Error::file(origin, format!("invalid config: {e}")))?;
        let train = TrainConfig::from_toml_str(&rest, origin)?;
        backbone_config(&train.backbone, 8).map_err(|e| Error::file(origin, format!("`backbone`: {e}")))?;
        Ok(PipelineConfig { dataset, grounding, train })
    }

    pub fn to_toml(&self) -> Result<String> {
        let mut text = format!(
            "dataset = {}\n{}",
            toml::Value::String(self.dataset.to_string_lossy().into_owned()),
            self.train.to_toml()?
        );
        if !self.grounding.is_off() {
            let mut t = toml::Table::new();
            t.insert(
                "grounding".into(),
                toml::Value::try_from(&self.grounding).map_err(|e| invalid(format!("encoding [grounding]: {e}")))?,
            );
            text.push('\n');
            text.push_str(&toml::to_string(&t).map_err(|e| invalid(format!("encoding [grounding]: {e}")))?);
        }
        Ok(text)
    }
}

/// How a training run went.
#[derive(Clone, Debug, Serialize)]
pub struct TrainOutcome {
    pub checkpoint: PathBuf,
    pub steps: usize,
    /// Mean loss of the first and of the last `min(20, steps / 10 + 1)` steps.
    pub first_loss: f64,
    pub last_loss: f64,
    /// Optimizer steps that saw grounding rows only (see [`GroundingConfig`]).
    pub grounding_only_steps: usize,
    pub stopped: bool,
    pub seconds: f64,
}

fn loss_ends(losses: &[f64]) -> (f64, f64) {
    if losses.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let k = (losses.len() / 10 + 1).min(20);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    (mean(&losses[..k]), mean(&losses[losses.len() - k..]))
}

/// Train on the dataset `cfg.dataset` (fresh, or continuing the checkpoint `resume`).
pub fn train(cfg: &PipelineConfig, resume: Option<&Path>) -> Result<TrainOutcome> {
    let started = Instant::now();
    let dataset = LeRobotDataset::open(&cfg.dataset)?;
    let (h, _) = dataset.image_size();
    let (policy, encoder) = build_policy(&cfg.train, h)?;
    let norm = normalizer()?;
    let mut source = DemoSource::new(
        &dataset,
        encoder,
        &norm,
        cfg.train.policy.chunk,
        cfg.train.run.batch_size,
        cfg.train.seed,
        cfg.train.policy.state_dim,
    )?
    .with_grounding(cfg.grounding.clone(), cfg.train.run.grad_accum)?;
    let mut trainer = match resume {
        Some(dir) => {
            let ckpt = Checkpoint::open(dir)?;
            check_family(&ckpt, &cfg.train.backbone)?;
            Trainer::resume(cfg.train.clone(), policy, dir)?
        }
        None => Trainer::new(cfg.train.clone(), policy)?,
    };
    let extra =
        PipelineExtra { image_size: h, vocab: VOCAB_NAME.into(), normalizer: norm, dataset: cfg.dataset.clone() };
    trainer.set_extra(serde_json::to_value(&extra).map_err(|e| invalid(format!("encoding extra: {e}")))?);
    let summary = trainer.run(&mut source)?;
    let (first_loss, last_loss) = loss_ends(trainer.losses());
    Ok(TrainOutcome {
        checkpoint: summary.last_checkpoint.unwrap_or_else(|| cfg.train.output_dir.clone()),
        steps: summary.steps,
        first_loss,
        last_loss,
        grounding_only_steps: source.grounding_only_steps(),
        stopped: summary.stopped,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn check_family(ckpt: &Checkpoint, backbone: &str) -> Result<()> {
    let path = ckpt.dir.join(crate::train::checkpoint::STATE_FILE);
    if ckpt.state.backbone_family != "paligemma" {
        return Err(Error::file(
            path,
            format!(
                "the checkpoint's backbone family is `{}`, but this pipeline builds `{backbone}` (paligemma)",
                ckpt.state.backbone_family
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inference and evaluation

/// A policy ready to act: trained (from a checkpoint) or untrained.
pub struct LoadedPolicy {
    pub policy: VlaPolicy,
    pub encoder: Encoder,
    pub normalizer: ActionNormalizer,
    pub config: TrainConfig,
}

impl LoadedPolicy {
    /// Read a checkpoint written by [`train`] (a `checkpoint-<step>` directory or the run's
    /// output directory).
    pub fn open(dir: &Path) -> Result<LoadedPolicy> {
        if !dir.exists() {
            return Err(Error::file(dir, "no such checkpoint directory"));
        }
        let ckpt = Checkpoint::open(dir)?;
        let state_path = ckpt.dir.join(crate::train::checkpoint::STATE_FILE);
        let extra: PipelineExtra = serde_json::from_value(ckpt.state.extra.clone()).map_err(|e| {
            Error::file(
                &state_path,
                format!("`extra` is not a tabletop pipeline record ({e}); was it written by `vlm4vla train`?"),
            )
        })?;
        if extra.vocab != VOCAB_NAME {
            return Err(Error::file(&state_path, format!("vocabulary `{}` is not `{VOCAB_NAME}`", extra.vocab)));
        }
        backbone_config(&ckpt.config.backbone, extra.image_size)
            .map_err(|e| Error::file(ckpt.dir.join(crate::train::checkpoint::CONFIG_FILE), e.to_string()))?;
        check_family(&ckpt, &ckpt.config.backbone)?;
        let (mut policy, encoder) = build_policy(&ckpt.config, extra.image_size)?;
        policy.set_trainable(&ckpt.config.trainable())?;
        let file = crate::engine::io::SafeTensorsFile::open(ckpt.model_path())?;
        let saved: std::collections::BTreeSet<String> = file.names().iter().map(|n| n.to_string()).collect();
        let expected: std::collections::BTreeSet<String> =
            policy.checkpoint_tensors(&policy.trainable_params())?.into_iter().map(|(n, _)| n).collect();
        if saved != expected {
            let missing: Vec<&String> = expected.difference(&saved).take(3).collect();
            let extra: Vec<&String> = saved.difference(&expected).take(3).collect();
            return Err(Error::file(
                ckpt.model_path(),
                format!(
                    "does not hold the parameters backbone `{}` trains (missing e.g. {missing:?}, unexpected e.g. \
                     {extra:?}): was it trained with another backbone?",
                    ckpt.config.backbone
                ),
            ));
        }
        policy.load_weights(ckpt.model_path())?;
        Ok(LoadedPolicy { policy, encoder, normalizer: extra.normalizer, config: ckpt.config })
    }

    /// The policy `cfg` describes, before any training.
    pub fn untrained(cfg: &TrainConfig, image_size: usize) -> Result<LoadedPolicy> {
        let (policy, encoder) = build_policy(cfg, image_size)?;
        Ok(LoadedPolicy { policy, encoder, normalizer: normalizer()?, config: cfg.clone() })
    }

    pub fn image_size(&self) -> usize {
        self.encoder.image_size()
    }

    /// Action chunks (raw actions) for images at the model size and their instructions.
    /// `states` (the environment's 7-D proprioception per image) is required by policies trained
    /// with `policy.state_dim = 7` and ignored by the others.
    pub fn predict(
        &self,
        images: &[&[u8]],
        instructions: &[&str],
        states: Option<&[[f32; 7]]>,
    ) -> Result<Vec<Vec<Action>>> {
        let prompts: Vec<PromptTokens> = instructions.iter().map(|t| self.encoder.prompt(t)).collect();
        let input = self.encoder.encode(images, &prompts)?;
        let state = match (self.policy.config().state_dim, states) {
            (0, _) => None,
            (d, Some(s)) => {
                if d != 7 || s.len() != images.len() {
                    return Err(invalid(format!(
                        "the policy takes a {d}-D state per image; got {} states of 7 for {} images",
                        s.len(),
                        images.len()
                    )));
                }
                let flat: Vec<f32> = s.iter().flatten().copied().collect();
                Some(Tensor::from_vec(flat, &[s.len(), 7], Device::Cpu)?)
            }
            (d, None) => return Err(invalid(format!("the policy takes a {d}-D proprioceptive state"))),
        };
        let chunks = self.policy.predict_with_state(&input, state.as_ref())?;
        chunks
            .into_iter()
            .map(|chunk| {
                chunk
                    .into_iter()
                    .map(|a| {
                        let raw = self.normalizer.denormalize_actions(&a[..ARM_DIMS], &[a[ARM_DIMS]])?;
                        let mut out = [0f32; ACTION_DIMS];
                        out.copy_from_slice(&raw);
                        Ok(out)
                    })
                    .collect()
            })
            .collect()
    }

    /// The batched policy function of [`evaluate`].
    pub fn act(&self, obs: &[Observation]) -> Result<Vec<Vec<Action>>> {
        let images: Vec<&[u8]> = obs.iter().map(|o| o.image.as_slice()).collect();
        let texts: Vec<&str> = obs.iter().map(|o| o.instruction.as_str()).collect();
        let states: Vec<[f32; 7]> = obs.iter().map(|o| o.proprio).collect();
        self.predict(&images, &texts, Some(&states))
    }

    /// Closed-loop success on `per_family` episodes of each family from `first_seed`.
    pub fn evaluate(&self, first_seed: u64, per_family: usize, opts: &EvalOptions) -> Result<EvalReport> {
        let env = EnvConfig { image_size: self.image_size(), ..EnvConfig::default() };
        let specs = EpisodeSpec::balanced(&TaskFamily::ALL, first_seed, per_family);
        let mut f = |obs: &[Observation]| self.act(obs);
        evaluate(&env, &mut f, &specs, opts)
    }
}

// ---------------------------------------------------------------------------------------------
// The demo

/// Sizes of a demo run.
#[derive(Clone, Debug, Serialize)]
pub struct DemoOptions {
    pub out: PathBuf,
    pub backbone: String,
    pub image_size: usize,
    pub train_episodes: usize,
    /// DART noise of the collected demonstrations (see [`collect`]).
    pub noise: f32,
    /// Expert plan recorded per frame, the source of the chunk labels (0: chunks of recorded
    /// actions instead; see [`collect`]).
    pub plan_steps: usize,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// The learning rate stays at its peak until this many steps remain, then follows the
    /// cosine down (see `optim.decay_steps`); `None` decays over every step after warmup.
    pub decay_steps: Option<usize>,
    /// Grounding co-training (see [`GroundingConfig`]).
    pub grounding: GroundingConfig,
    /// Feed the gripper's proprioceptive state as an extra row (`policy.state_dim = 7`).
    pub state: bool,
    pub chunk: usize,
    pub execute_steps: usize,
    /// Evaluation episodes per task family (held-out seeds from [`EVAL_FIRST_SEED`]).
    pub eval_per_family: usize,
    pub seed: u64,
    pub progress: bool,
}

impl DemoOptions {
    /// The full demo: ≤ 15 minutes on 2 cores.
    pub fn full(out: impl Into<PathBuf>) -> DemoOptions {
        DemoOptions {
            out: out.into(),
            backbone: DEMO_BACKBONE.into(),
            image_size: 48,
            train_episodes: 2000,
            noise: 0.3,
            plan_steps: DEFAULT_PLAN_STEPS,
            steps: 18000,
            batch_size: 32,
            lr: 1e-3,
            decay_steps: Some(4000),
            grounding: GroundingConfig {
                steps: 6000,
                fraction: 0.25,
                until_loss: Some(0.001),
                lr_scale_after: Some(0.5),
            },
            state: true,
            chunk: 4,
            execute_steps: 2,
            eval_per_family: 25,
            seed: 0,
            progress: true,
        }
    }

    /// The quick configuration (the CI test's): a few minutes on 2 cores.
    pub fn quick(out: impl Into<PathBuf>) -> DemoOptions {
        let full = DemoOptions::full(out);
        DemoOptions {
            steps: 6000,
            decay_steps: Some(1500),
            eval_per_family: 10,
            grounding: GroundingConfig { steps: 4000, ..full.grounding.clone() },
            ..full
        }
    }

    /// What the demo collects for training.
    pub fn collect_options(&self) -> CollectOptions {
        CollectOptions {
            episodes: self.train_episodes,
            seed: self.seed,
            image_size: self.image_size,
            noise: self.noise,
            plan_steps: self.plan_steps,
        }
    }

    /// The training config of this demo, reading `dataset`.
    pub fn pipeline_config(&self) -> PipelineConfig {
        PipelineConfig {
            dataset: self.out.join("data"),
            grounding: self.grounding.clone(),
            train: TrainConfig {
                backbone: self.backbone.clone(),
                output_dir: self.out.join("train"),
                seed: self.seed,
                train_modules: crate::train::TrainModule::ALL.to_vec(),
                train_llm_last_layers: None,
                policy: PolicyConfig {
                    chunk: self.chunk,
                    head: HeadConfig { trunk_hidden: Some(128), trunk_out: 128, branch_hidden: vec![128, 64] },
                    gripper_loss_ratio: 0.1,
                    state_dim: if self.state { ACTION_DIMS } else { 0 },
                    ..PolicyConfig::default()
                },
                optim: OptimConfig {
                    lr: self.lr,
                    warmup_steps: (self.steps / 20).max(1),
                    min_lr_ratio: 0.01,
                    decay_steps: self.decay_steps,
                    ..OptimConfig::default()
                },
                run: RunConfig {
                    batch_size: self.batch_size,
                    steps: Some(self.steps),
                    log_every: 10,
                    progress: self.progress,
                    ..RunConfig::default()
                },
            },
        }
    }
}

/// Everything a demo run measured.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    pub options: DemoOptions,
    pub collect: CollectSummary,
    pub train: TrainOutcome,
    pub trained: EvalReport,
    pub untrained: EvalReport,
    pub mismatched: EvalReport,
    /// Loss on held-out clean demonstrations (seeds from [`HELDOUT_DEMO_FIRST_SEED`]), before
    /// and after training: the same frames, so the ratio is how much the policy learned
    /// (the training curve's own ends mix in grounding rows and DART-noised frames).
    pub heldout_loss_untrained: f64,
    pub heldout_loss_trained: f64,
    pub eval_seconds: f64,
    pub total_seconds: f64,
}

/// collect → train → evaluate, writing under `opts.out` (`data/`, `train/`, `train.toml`,
/// `results.json`). `log` receives progress lines.
pub fn run_demo(opts: &DemoOptions, log: &mut dyn FnMut(&str)) -> Result<DemoReport> {
    let started = Instant::now();
    opts.grounding.validate()?;
    let out = &opts.out;
    let marker = out.join(".vlm4vla-demo");
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(false) && !marker.exists() {
        return Err(Error::file(out, "exists and was not written by `vlm4vla demo`; choose another --out"));
    }
    for sub in ["data", "train", "heldout"] {
        let p = out.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| Error::io(format!("removing {}", p.display()), e))?;
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    std::fs::write(&marker, b"").map_err(|e| Error::io(format!("writing {}", marker.display()), e))?;

    log(&format!("[1/3] collecting {} expert episodes ({} px)...", opts.train_episodes, opts.image_size));
    let cfg = opts.pipeline_config();
    let collect = collect(&cfg.dataset, &opts.collect_options())?;
    log(&format!("      {} episodes, {} frames in {:.1} s", collect.episodes, collect.frames, collect.seconds));
    std::fs::write(out.join("train.toml"), cfg.to_toml()?)
        .map_err(|e| Error::io(format!("writing {}", out.join("train.toml").display()), e))?;

    log(&format!("[2/3] training `{}` from scratch for {} steps...", opts.backbone, opts.steps));
    let train = train(&cfg, None)?;
    log(&format!(
        "      loss {:.4} → {:.4} in {:.1} s ({} grounding-only steps)",
        train.first_loss, train.last_loss, train.seconds, train.grounding_only_steps
    ));

    let eval_started = Instant::now();
    let episodes = opts.eval_per_family * TaskFamily::ALL.len();
    log(&format!("[3/3] evaluating on {episodes} held-out episodes (seeds {EVAL_FIRST_SEED}..)..."));
    let eval_opts = EvalOptions { execute_steps: opts.execute_steps, ..EvalOptions::default() };
    let trained_policy = LoadedPolicy::open(&train.checkpoint)?;
    let trained = trained_policy.evaluate(EVAL_FIRST_SEED, opts.eval_per_family, &eval_opts)?;
    let mism_opts = EvalOptions { instructions: InstructionMode::Mismatched, ..eval_opts.clone() };
    let mismatched = trained_policy.evaluate(EVAL_FIRST_SEED, opts.eval_per_family, &mism_opts)?;
    let untrained_policy = LoadedPolicy::untrained(&cfg.train, opts.image_size)?;
    let untrained = untrained_policy.evaluate(EVAL_FIRST_SEED, opts.eval_per_family, &eval_opts)?;
    let heldout_dir = out.join("heldout");
    if heldout_dir.exists() {
        std::fs::remove_dir_all(&heldout_dir)
            .map_err(|e| Error::io(format!("removing {}", heldout_dir.display()), e))?;
    }
    let heldout_opts = CollectOptions {
        episodes: HELDOUT_DEMOS,
        seed: HELDOUT_DEMO_FIRST_SEED,
        noise: 0.0,
        plan_steps: 0,
        ..opts.collect_options()
    };
    self::collect(&heldout_dir, &heldout_opts)?;
    let heldout = LeRobotDataset::open(&heldout_dir)?;
    let p = trained_policy.policy.config();
    let heldout = DemoSource::new(
        &heldout,
        trained_policy.encoder.clone(),
        &trained_policy.normalizer,
        p.chunk,
        32,
        0,
        p.state_dim,
    )?;
    let heldout_loss_untrained = heldout.mean_loss(&untrained_policy.policy, HELDOUT_LOSS_BATCHES)?;
    let heldout_loss_trained = heldout.mean_loss(&trained_policy.policy, HELDOUT_LOSS_BATCHES)?;
    let report = DemoReport {
        options: opts.clone(),
        collect,
        train,
        trained,
        untrained,
        mismatched,
        heldout_loss_untrained,
        heldout_loss_trained,
        eval_seconds: eval_started.elapsed().as_secs_f64(),
        total_seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&report).map_err(|e| invalid(format!("encoding results: {e}")))?;
    crate::engine::io::write_atomic(out.join("results.json"), &json)?;
    Ok(report)
}

/// The results table of a demo run.
pub fn results_table(r: &DemoReport) -> String {
    let mut s = String::new();
    let rate = |rep: &EvalReport, fam: Option<TaskFamily>| -> String {
        match fam {
            None => format!("{:>5.1}%", 100.0 * rep.success_rate),
            Some(f) => match rep.families.iter().find(|x| x.family == f) {
                Some(x) => format!("{:>5.1}%", 100.0 * x.success_rate),
                None => "    -".into(),
            },
        }
    };
    s.push_str(&format!("{:<16} {:>9} {:>9} {:>12}\n", "task family", "trained", "untrained", "mismatched"));
    let fams: Vec<Option<TaskFamily>> = TaskFamily::ALL.iter().map(|&f| Some(f)).chain([None]).collect();
    for f in fams {
        let name = f.map(|f| f.name()).unwrap_or("overall");
        s.push_str(&format!(
            "{:<16} {:>9} {:>9} {:>12}\n",
            name,
            rate(&r.trained, f),
            rate(&r.untrained, f),
            rate(&r.mismatched, f)
        ));
    }
    s.push_str(&format!(
        "\nheld-out episodes: {} per policy (seeds from {EVAL_FIRST_SEED}; training used seeds {}..{})\n",
        r.trained.episodes,
        r.collect.first_seed,
        r.collect.first_seed + r.options.train_episodes as u64
    ));
    s.push_str(&format!(
        "held-out demonstration loss: {:.4} untrained → {:.4} trained, {:.1}× lower\n",
        r.heldout_loss_untrained,
        r.heldout_loss_trained,
        r.heldout_loss_untrained / r.heldout_loss_trained
    ));
    s.push_str(&format!(
        "training loss: {:.4} (first steps) → {:.4} (last steps), {} steps ({} grounding-only)\n",
        r.train.first_loss, r.train.last_loss, r.train.steps, r.train.grounding_only_steps
    ));
    s.push_str(&format!(
        "wall time: collect {:.1} s, train {:.1} s, eval {:.1} s, total {:.1} s ({} threads)\n",
        r.collect.seconds,
        r.train.seconds,
        r.eval_seconds,
        r.total_seconds,
        rayon::current_num_threads()
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grounding_rows_point_from_the_gripper_to_the_named_object() {
        let env = EnvConfig { image_size: 32, ..EnvConfig::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let u = crate::env::UNITS as f32;
        for _ in 0..50 {
            let (row, world) = GroundingRow::sample_with_world(&env, &mut rng);
            let named: Vec<_> =
                world.objects.iter().filter(|o| row.instruction == format!("point at the {}", o.phrase())).collect();
            assert_eq!(named.len(), 1, "{} names one object of the scene", row.instruction);
            let (o, g) = (named[0], world.gripper);
            assert_eq!(row.point, [(o.x - g.x) as f32 / u, (o.y - g.y) as f32 / u]);
            assert_eq!(row.state, g.proprio());
            assert!(g.held.is_none() && g.open);
            let mut image = Vec::new();
            crate::env::render(&world, 32, &mut image);
            assert_eq!(row.image, image);
            assert!(Vocab::tabletop().unknown_words(&row.instruction).is_empty(), "{}", row.instruction);
        }
    }

    #[test]
    fn grounding_config_parses_checks_and_round_trips() {
        let base = "dataset = \"d\"\nbackbone = \"paligemma-demo\"\noutput_dir = \"x\"\n[run]\nsteps = 10\n";
        let p = Path::new("cfg.toml");
        let off = PipelineConfig::from_toml_str(base, p).unwrap();
        assert!(off.grounding.is_off());
        assert!(!off.to_toml().unwrap().contains("grounding"));
        let text = format!("{base}[grounding]\nsteps = 7\nfraction = 0.5\nlr_scale_after = 0.5\n");
        let on = PipelineConfig::from_toml_str(&text, p).unwrap();
        assert_eq!(
            on.grounding,
            GroundingConfig { steps: 7, fraction: 0.5, until_loss: None, lr_scale_after: Some(0.5) }
        );
        let again = PipelineConfig::from_toml_str(&on.to_toml().unwrap(), p).unwrap();
        assert_eq!((again.grounding, again.train), (on.grounding, on.train));
        let err = |t: &str| PipelineConfig::from_toml_str(&format!("{base}{t}"), p).unwrap_err().to_string();
        let e = err("[grounding]\nstep = 7\n");
        assert!(e.contains("cfg.toml") && e.contains("step") && e.contains("fraction"), "{e}");
        let e = err("[grounding]\nfraction = 1.0\n");
        assert!(e.contains("cfg.toml") && e.contains("grounding.fraction"), "{e}");
        let e = err("[grounding]\nuntil_loss = 0.0\n");
        assert!(e.contains("cfg.toml") && e.contains("grounding.until_loss"), "{e}");
        let e = err("[grounding]\nlr_scale_after = 0.0\n");
        assert!(e.contains("cfg.toml") && e.contains("grounding.lr_scale_after"), "{e}");
        let e = err("[grounding]\nsteps = -1\n");
        assert!(e.contains("cfg.toml") && e.contains("grounding"), "{e}");
    }

    /// The plans `collect` records are the unperturbed expert's: with noise they start each
    /// episode as the clean demonstration does and differ from the recorded (perturbed) next
    /// actions; without noise they are the recorded next actions. Training chunks come from them.
    #[test]
    fn collected_plans_are_the_unperturbed_expert_continuation() {
        let base = std::env::temp_dir().join(format!("vlm4vla-plans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let steps = 6;
        let opts = CollectOptions { episodes: 8, image_size: 16, noise: 0.3, plan_steps: steps, seed: 3 };
        let (noisy, clean) = (base.join("noisy"), base.join("clean"));
        collect(&noisy, &opts).unwrap();
        collect(&clean, &CollectOptions { noise: 0.0, ..opts.clone() }).unwrap();
        let env = EnvConfig { image_size: 16, ..EnvConfig::default() };
        let specs = EpisodeSpec::balanced(&TaskFamily::ALL, 3, 2);
        let demos = crate::env::collect_demonstrations(&env, &specs).unwrap();
        let plan_of = |ds: &LeRobotDataset, i: usize| {
            let (mut a, mut m) = (Vec::new(), Vec::new());
            ds.action_chunk_into(i, steps, &mut a, &mut m).unwrap();
            let real = m.iter().filter(|&&v| v).count();
            a.truncate(real * ACTION_DIMS);
            a
        };
        let mut differs = 0;
        for (path, noise) in [(&noisy, true), (&clean, false)] {
            let ds = LeRobotDataset::open(path).unwrap();
            assert_eq!(ds.plan_steps(), steps);
            for (e, ep) in ds.episodes().iter().enumerate() {
                let demo = &demos[e];
                assert_eq!(ds.instruction(ep.from), Some(demo.instruction.as_str()));
                let clean_start: Vec<f32> = demo.actions.iter().take(steps).flatten().copied().collect();
                assert_eq!(plan_of(&ds, ep.from), clean_start, "episode {e}: the first plan is the clean demo's");
                for i in ep.from..ep.to {
                    let plan = plan_of(&ds, i);
                    assert_eq!(
                        &plan[..ACTION_DIMS],
                        ds.action(i).unwrap(),
                        "frame {i}: the plan starts with its label"
                    );
                    let recorded: Vec<f32> =
                        (i..ep.to.min(i + steps)).flat_map(|j| ds.action(j).unwrap().to_vec()).collect();
                    if noise {
                        differs += usize::from(plan.len() != recorded.len() || plan != recorded);
                    } else {
                        assert_eq!(plan, recorded, "frame {i}: clean plans are the recorded actions");
                    }
                }
            }
        }
        assert!(differs > 10, "only {differs} noisy frames have a plan other than the recorded actions");
        // The training source labels its chunks (2 steps here) with the plans.
        let ds = LeRobotDataset::open(&noisy).unwrap();
        let src = source(&ds, 8, 7);
        let norm = normalizer().unwrap();
        for i in 0..ds.len() {
            let plan = plan_of(&ds, i);
            for j in 0..2 {
                let real = plan.len() > j * ACTION_DIMS;
                assert_eq!(src.valid[i * 2 + j], real, "frame {i} step {j}");
                if real {
                    let want = norm.normalize_actions(&plan[j * ACTION_DIMS..(j + 1) * ACTION_DIMS]).unwrap();
                    assert_eq!(&src.targets[i * 2 + j][..], &want[..ACTION_DIMS], "frame {i} step {j}");
                }
            }
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A fresh directory `vlm4vla-<name>-<pid>` holding `episodes` clean demonstrations at 16 px.
    fn tiny_dataset(name: &str, episodes: usize) -> (PathBuf, LeRobotDataset) {
        let root = std::env::temp_dir().join(format!("vlm4vla-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        collect(&root, &CollectOptions { episodes, image_size: 16, noise: 0.0, ..Default::default() }).unwrap();
        let ds = LeRobotDataset::open(&root).unwrap();
        (root, ds)
    }

    /// A source over `ds` at 16 px: chunk 2, seed 1.
    fn source(ds: &LeRobotDataset, batch: usize, state_dim: usize) -> DemoSource {
        let cfg = backbone_config("paligemma-demo", 16).unwrap();
        DemoSource::new(ds, Encoder::new(&cfg), &normalizer().unwrap(), 2, batch, 1, state_dim).unwrap()
    }

    #[test]
    fn batches_mix_grounding_rows_as_configured() {
        let (root, ds) = tiny_dataset("grounding-mix", 6);
        let norm = normalizer().unwrap();
        let plain = source(&ds, 8, 7);
        let mixed = source(&ds, 8, 7)
            .with_grounding(GroundingConfig { steps: 2, fraction: 0.25, ..Default::default() }, 2)
            .unwrap();
        // Optimizer steps 0 and 1 are micro-batches 0..4 with grad_accum 2: grounding only.
        assert_eq!((0..6).map(|k| mixed.grounding_rows(k)).collect::<Vec<_>>(), [8, 8, 8, 8, 2, 2]);
        assert_eq!(plain.grounding_rows(0), 0);
        let open = norm.normalize_actions(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]).unwrap();
        for k in [0u64, 5] {
            let b = mixed.make_batch(k).unwrap();
            assert_eq!(b.actions.dims(), &[8, 2, ACTION_DIMS]);
            assert_eq!(b.state.as_ref().unwrap().dims(), &[8, 7]);
            let a = b.actions.to_vec::<f32>().unwrap();
            let m = b.mask.to_vec::<f32>().unwrap();
            let rows = mixed.grounding_rows(k);
            for r in 8 - rows..8 {
                for j in 0..2 {
                    let t = &a[(r * 2 + j) * ACTION_DIMS..(r * 2 + j + 1) * ACTION_DIMS];
                    assert_eq!(m[r * 2 + j], 1.0);
                    assert_eq!(&t[2..], &open[2..ACTION_DIMS], "row {r}: only x, y move");
                    assert!(t[..2].iter().all(|v| v.abs() <= 1.0) && t[..2] != [0.0, 0.0]);
                }
            }
        }
        // With grounding off the batches are exactly the plain source's.
        let off = source(&ds, 8, 7).with_grounding(GroundingConfig::default(), 1).unwrap();
        let (x, y) = (plain.make_batch(3).unwrap(), off.make_batch(3).unwrap());
        assert_eq!(x.actions.to_vec::<f32>().unwrap(), y.actions.to_vec::<f32>().unwrap());
        assert!(source(&ds, 8, 7).with_grounding(GroundingConfig { fraction: 1.5, ..Default::default() }, 1).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_grounding_phase_ends_when_its_loss_is_low_and_resumes_exactly() {
        let (root, ds) = tiny_dataset("grounding-until", 4);
        let g = GroundingConfig { steps: 200, fraction: 0.25, until_loss: Some(0.01), lr_scale_after: Some(0.5) };
        let mut src = source(&ds, 4, 0).with_grounding(g.clone(), 1).unwrap();
        // Losses stay high for 60 steps, then fall below 0.01: the phase ends once the whole
        // window of the last 50 is below it on average.
        let loss = |step: usize| if step <= 60 { 0.5 } else { 0.001 };
        let mut saved = None;
        for step in 1..=150 {
            assert_eq!(src.grounding_rows(src.consumed), if src.grounding_end.is_none() { 4 } else { 1 });
            src.consumed += 1;
            // The rate is scaled from the first step whose batch mixes in demonstrations.
            let mixed = src.grounding_rows(src.consumed - 1) == 1;
            assert_eq!(src.lr_scale(), if mixed { 0.5 } else { 1.0 }, "step {step}");
            src.observe_loss(step, loss(step));
            if step == 80 {
                saved = Some(src.position());
            }
        }
        // With h losses of 0.5 in the window, its mean is below 0.01 only for h = 0.
        let end = src.grounding_end.expect("the phase ended");
        assert_eq!(end, 110, "the window holds only low losses from step 61 + 49 on");
        assert_eq!(src.grounding_only_steps(), 110);
        assert_eq!(src.grounding_rows(109), 4);
        assert_eq!(src.grounding_rows(110), 1);
        // Restoring the position saved at step 80 replays the same switch.
        let mut again = source(&ds, 4, 0).with_grounding(g.clone(), 1).unwrap();
        again.restore(saved.as_ref().unwrap()).unwrap();
        for step in 81..=150 {
            again.consumed += 1;
            again.observe_loss(step, loss(step));
        }
        assert_eq!((again.grounding_end, again.lr_scale()), (Some(110), 0.5));
        // Without until_loss the phase is exactly `steps` long, whatever the losses.
        let mut fixed = source(&ds, 4, 0).with_grounding(GroundingConfig { until_loss: None, ..g }, 1).unwrap();
        for step in 1..=150 {
            fixed.consumed += 1;
            fixed.observe_loss(step, 0.0);
        }
        assert_eq!((fixed.grounding_end, fixed.grounding_rows(199), fixed.grounding_rows(200)), (None, 4, 1));
        assert_eq!(fixed.lr_scale(), 1.0, "150 of 200 grounding-only steps");
        fixed.consumed = 201;
        assert_eq!(fixed.lr_scale(), 0.5);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
