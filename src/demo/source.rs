//! Training batches: [`DemoSource`], a resumable [`BatchSource`] over a whole dataset held in
//! memory, with grounding rows mixed in as configured.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::grounding::GroundingRow;
use super::ACTION_DIMS;
use super::{invalid, Encoder, GroundingConfig, GROUNDING_WINDOW};
use crate::data::LeRobotDataset;
use crate::data::RgbImage;
use crate::engine::{Device, Error, Result, Tensor};
use crate::env::EnvConfig;
use crate::models::vla::{ActionNormalizer, VlaPolicy};
use crate::train::{Batch, BatchSource};

/// A resumable [`BatchSource`] over a whole dataset decoded into memory. Batch `k` holds
/// `batch_size` frames drawn uniformly (with replacement) by a generator seeded from
/// `(seed, k)`, so the position is just the number of batches handed out.
pub struct DemoSource {
    encoder: Encoder,
    images: Vec<Vec<u8>>,
    /// Per frame, the instruction's prompt ids.
    prompts: Vec<Vec<i64>>,
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
        let s = super::model::image_size(&encoder);
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
        let mut cache: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for i in 0..n {
            images.push(dataset.decode_image(i)?.data);
            let text = dataset.instruction(i).unwrap_or_default();
            let p = match cache.get(text) {
                Some(p) => p.clone(),
                None => {
                    let p = encoder.prompt_ids(text)?;
                    cache.insert(text.to_string(), p.clone());
                    p
                }
            };
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
        let size = super::model::image_size(&self.encoder);
        let env = EnvConfig { image_size: size, ..EnvConfig::default() };
        let rows: Vec<GroundingRow> = (0..pointing).map(|_| GroundingRow::sample(&env, &mut rng)).collect();
        let frame = |data: &[u8]| vec![RgbImage { width: size, height: size, data: data.to_vec() }];
        let mut imgs: Vec<Vec<RgbImage>> = idx.iter().map(|&i| frame(&self.images[i])).collect();
        imgs.extend(rows.iter().map(|r| frame(&r.image)));
        let mut prompts: Vec<Vec<i64>> = idx.iter().map(|&i| self.prompts[i].clone()).collect();
        for r in &rows {
            prompts.push(self.encoder.prompt_ids(&r.instruction)?);
        }
        let input = self.encoder.encode_ids(&imgs, &prompts)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::demo::{backbone_config, collect, normalizer, CollectOptions};
    use crate::env::{EpisodeSpec, TaskFamily};

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
        DemoSource::new(ds, crate::demo::tabletop_encoder(&cfg), &normalizer().unwrap(), 2, batch, 1, state_dim)
            .unwrap()
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
