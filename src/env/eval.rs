//! Closed-loop evaluation with action chunks, baselines, and expert demonstrations.

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::tasks::TaskFamily;
use super::{invalid, Action, EnvConfig, Observation, TabletopEnv};
use crate::engine::Result;

/// A batched policy: one observation per running episode in, one action chunk (at least one
/// action) per observation out.
pub type PolicyFn<'a> = dyn FnMut(&[Observation]) -> Result<Vec<Vec<Action>>> + 'a;

/// Which instruction the policy is given (success is always judged on the true task).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstructionMode {
    /// The episode's own instruction.
    #[default]
    True,
    /// The same sentence naming another object of the scene
    /// ([`TabletopEnv::mismatched_instruction`]): a policy that reads the instruction fails.
    Mismatched,
}

/// How episodes are run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalOptions {
    /// Actions executed from each predicted chunk before the policy is asked again (the rest of
    /// the chunk is dropped; a shorter chunk is executed whole).
    pub execute_steps: usize,
    /// Episodes run side by side; the policy sees at most this many observations per call.
    pub batch_size: usize,
    pub instructions: InstructionMode,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { execute_steps: 1, batch_size: 64, instructions: InstructionMode::True }
    }
}

/// One episode to run: its seed and, optionally, its family (else drawn from the seed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeSpec {
    pub seed: u64,
    pub family: Option<TaskFamily>,
}

impl EpisodeSpec {
    /// `per_family` episodes of each family, seeds `first_seed, first_seed + 1, ...` (families
    /// interleaved, so every seed is used once).
    pub fn balanced(families: &[TaskFamily], first_seed: u64, per_family: usize) -> Vec<EpisodeSpec> {
        (0..per_family * families.len())
            .map(|k| EpisodeSpec { seed: first_seed + k as u64, family: Some(families[k % families.len()]) })
            .collect()
    }
}

/// The outcome of one episode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpisodeResult {
    pub seed: u64,
    pub family: TaskFamily,
    /// The instruction the policy was given.
    pub instruction: String,
    pub success: bool,
    /// Steps taken (up to the success, or the horizon).
    pub steps: usize,
}

/// Success counts of one family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FamilyStats {
    pub family: TaskFamily,
    pub episodes: usize,
    pub successes: usize,
    pub success_rate: f64,
}

/// Success per family and overall.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// One entry per family present, in [`TaskFamily::ALL`] order.
    pub families: Vec<FamilyStats>,
    pub episodes: usize,
    pub successes: usize,
    /// Successes over episodes (0 when there are none).
    pub success_rate: f64,
    /// Mean steps of the successful episodes (0 when there are none).
    pub mean_steps_to_success: f64,
    pub results: Vec<EpisodeResult>,
}

fn rate(successes: usize, episodes: usize) -> f64 {
    if episodes == 0 {
        0.0
    } else {
        successes as f64 / episodes as f64
    }
}

impl EvalReport {
    pub fn from_results(results: Vec<EpisodeResult>) -> EvalReport {
        let families = TaskFamily::ALL
            .into_iter()
            .filter_map(|family| {
                let of: Vec<&EpisodeResult> = results.iter().filter(|r| r.family == family).collect();
                let successes = of.iter().filter(|r| r.success).count();
                (!of.is_empty()).then(|| FamilyStats {
                    family,
                    episodes: of.len(),
                    successes,
                    success_rate: rate(successes, of.len()),
                })
            })
            .collect();
        let successes = results.iter().filter(|r| r.success).count();
        let success_steps: usize = results.iter().filter(|r| r.success).map(|r| r.steps).sum();
        EvalReport {
            families,
            episodes: results.len(),
            successes,
            success_rate: rate(successes, results.len()),
            mean_steps_to_success: if successes == 0 { 0.0 } else { success_steps as f64 / successes as f64 },
            results,
        }
    }

    /// The stats of one family, if it was evaluated.
    pub fn family(&self, family: TaskFamily) -> Option<&FamilyStats> {
        self.families.iter().find(|f| f.family == family)
    }
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.families {
            writeln!(
                f,
                "{:<16} {:>4}/{:<4} {:>6.1}%",
                s.family.name(),
                s.successes,
                s.episodes,
                100.0 * s.success_rate
            )?;
        }
        write!(f, "{:<16} {:>4}/{:<4} {:>6.1}%", "overall", self.successes, self.episodes, 100.0 * self.success_rate)
    }
}

/// Runs `episodes` in closed loop: up to `opts.batch_size` episodes at once, the policy called on
/// the batch of still-running episodes, the first `opts.execute_steps` actions of each returned
/// chunk executed (an episode stops at success or at the horizon).
pub fn evaluate(
    cfg: &EnvConfig,
    policy: &mut PolicyFn<'_>,
    episodes: &[EpisodeSpec],
    opts: &EvalOptions,
) -> Result<EvalReport> {
    cfg.validate()?;
    if opts.execute_steps == 0 || opts.batch_size == 0 {
        return Err(invalid(format!(
            "eval options: execute_steps ({}) and batch_size ({}) must be at least 1",
            opts.execute_steps, opts.batch_size
        )));
    }
    let mut results = Vec::with_capacity(episodes.len());
    for batch in episodes.chunks(opts.batch_size) {
        let mut envs = Vec::with_capacity(batch.len());
        for spec in batch {
            let mut env = TabletopEnv::new(cfg.clone())?;
            env.reset(spec.seed, spec.family)?;
            let instruction = match opts.instructions {
                InstructionMode::True => env.instruction(),
                InstructionMode::Mismatched => env.mismatched_instruction(),
            };
            envs.push((env, instruction));
        }
        loop {
            let active: Vec<usize> = (0..envs.len()).filter(|&i| !envs[i].0.done()).collect();
            if active.is_empty() {
                break;
            }
            let obs: Vec<Observation> = active.par_iter().map(|&i| envs[i].0.observe_with(envs[i].1.clone())).collect();
            let chunks = policy(&obs)?;
            if chunks.len() != obs.len() {
                return Err(invalid(format!(
                    "evaluate: policy returned {} action chunks for {} observations",
                    chunks.len(),
                    obs.len()
                )));
            }
            for (&i, chunk) in active.iter().zip(&chunks) {
                let env = &mut envs[i].0;
                if chunk.is_empty() {
                    return Err(invalid(format!("evaluate: policy returned an empty chunk (seed {})", env.seed())));
                }
                for a in chunk.iter().take(opts.execute_steps) {
                    env.step(a).map_err(|e| invalid(format!("evaluate: episode with seed {}: {e}", env.seed())))?;
                    if env.done() {
                        break;
                    }
                }
            }
        }
        results.extend(envs.into_iter().map(|(env, instruction)| EpisodeResult {
            seed: env.seed(),
            family: env.task().family(),
            instruction,
            success: env.is_success(),
            steps: env.steps(),
        }));
    }
    Ok(EvalReport::from_results(results))
}

/// A baseline that ignores its input: `chunk_len` actions uniform in `[-1, 1]` per dimension,
/// reproducible from `seed`.
pub fn random_policy(seed: u64, chunk_len: usize) -> impl FnMut(&[Observation]) -> Result<Vec<Vec<Action>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let chunk_len = chunk_len.max(1);
    move |obs: &[Observation]| {
        Ok(obs
            .iter()
            .map(|_| (0..chunk_len).map(|_| std::array::from_fn(|_| rng.gen_range(-1.0f32..=1.0))).collect())
            .collect())
    }
}

/// A baseline that never moves (all-zero actions: the gripper closes on nothing and stays lifted).
pub fn zero_policy(chunk_len: usize) -> impl FnMut(&[Observation]) -> Result<Vec<Vec<Action>>> {
    let chunk_len = chunk_len.max(1);
    move |obs: &[Observation]| Ok(obs.iter().map(|_| vec![[0.0; 7]; chunk_len]).collect())
}

/// One expert episode: the observation before each step and the action taken.
#[derive(Clone, Debug, PartialEq)]
pub struct Demonstration {
    pub seed: u64,
    pub family: TaskFamily,
    pub instruction: String,
    pub frames: Vec<Observation>,
    pub actions: Vec<Action>,
    pub success: bool,
}

/// Runs the scripted expert on each spec (in parallel; the result is in `specs` order and does
/// not depend on the thread count).
pub fn collect_demonstrations(cfg: &EnvConfig, specs: &[EpisodeSpec]) -> Result<Vec<Demonstration>> {
    cfg.validate()?;
    specs
        .par_iter()
        .map(|spec| {
            let mut env = TabletopEnv::new(cfg.clone())?;
            let first = env.reset(spec.seed, spec.family)?;
            let mut frames = vec![first];
            let mut actions = Vec::new();
            loop {
                let a = env.expert_action();
                actions.push(a);
                if env.step(&a)?.done {
                    break;
                }
                frames.push(env.observe());
            }
            Ok(Demonstration {
                seed: spec.seed,
                family: env.task().family(),
                instruction: env.instruction(),
                frames,
                actions,
                success: env.is_success(),
            })
        })
        .collect()
}
