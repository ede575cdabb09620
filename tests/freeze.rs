//! Freezing that records no graph (issue 14): for each tiny backbone (random weights, the parity
//! fixtures' inputs), a frozen part stays bit-identical through trainer steps while the rest
//! moves, the forward keeps fewer bytes for the backward the more is frozen, training only the
//! last decoder layers of the language model leaves the layers below as they were, and the
//! gradients of what still trains are those of a fully trainable run. Last, bf16 parameters
//! train on the CPU through the trainer, with f32 masters in the optimizer.
//!
//! The live-byte counts (`engine::counters::memory`) are process-wide, so the tests of this
//! binary run one at a time (`SERIAL`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use vlm4vla::engine::{counters, io, DType, LoadOptions, Result, SafeTensorsFile, Tensor};
use vlm4vla::models::kosmos2::{Kosmos2, Kosmos2Config};
use vlm4vla::models::paligemma::{PaliGemma, PaliGemmaConfig};
use vlm4vla::models::qwen2_5_vl::{Qwen25Vl, Qwen25VlConfig};
use vlm4vla::models::vla::{HeadConfig, PolicyConfig, TrainableParts, VlaPolicy};
use vlm4vla::models::{Backbone, BackboneInput, ParamGroup};
use vlm4vla::train::{Batch, BatchSource, TrainConfig, TrainModule, Trainer};

mod common;

const CHUNK: usize = 4;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixture(family: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(family).join(file)
}

fn load_map(family: &str, file: &str) -> HashMap<String, Tensor> {
    io::load(fixture(family, file), &LoadOptions::default()).unwrap().into_iter().collect()
}

/// One family: its tiny backbone in a dtype (the same weights for the same dtype), and the
/// fixture input.
struct Family {
    name: &'static str,
    model: fn(DType) -> Box<dyn Backbone>,
    input: BackboneInput,
}

fn families() -> Vec<Family> {
    let q = load_map("qwen2_5_vl", "case_b2.safetensors");
    let p = load_map("paligemma", "case2.safetensors");
    let k = load_map("kosmos2", "case_b2.safetensors");
    vec![
        Family {
            name: "qwen2_5_vl",
            model: |dtype| {
                let cfg = Qwen25VlConfig::from_file(fixture("qwen2_5_vl", "config.json")).unwrap();
                Box::new(Qwen25Vl::random(cfg, 11, dtype).unwrap())
            },
            input: common::qwen_case_input(&q),
        },
        Family {
            name: "paligemma",
            model: |dtype| Box::new(PaliGemma::random(PaliGemmaConfig::tiny(), 12, dtype).unwrap()),
            input: BackboneInput {
                pixel_values: p["pixel_values"].clone(),
                image_grid_thw: None,
                input_ids: p["input_ids"].clone(),
                attention_mask: p["attention_mask"].clone(),
                token_type: p["token_type_ids"].clone(),
            },
        },
        Family {
            name: "kosmos2",
            model: |dtype| Box::new(Kosmos2::random(Kosmos2Config::tiny(), 13, dtype).unwrap()),
            input: BackboneInput {
                pixel_values: k["pixel_values"].clone(),
                image_grid_thw: None,
                input_ids: k["input_ids"].clone(),
                attention_mask: k["attention_mask"].clone(),
                token_type: k["image_embeds_position_mask"].clone(),
            },
        },
    ]
}

/// The tests' head: chunks of `CHUNK` steps, a small MLP.
fn policy_config() -> PolicyConfig {
    PolicyConfig {
        chunk: CHUNK,
        head: HeadConfig { trunk_hidden: None, trunk_out: 16, branch_hidden: vec![16, 8] },
        ..Default::default()
    }
}

/// `input` with targets: arm deltas in [-0.4, 0.4], the gripper open (1), the last chunk step of
/// row 0 past the episode's end.
fn batch(input: &BackboneInput) -> Batch {
    let b = input.input_ids.shape()[0];
    let actions: Vec<f32> =
        (0..b * CHUNK * 7).map(|i| if i % 7 == 6 { 1.0 } else { (i % 5) as f32 * 0.2 - 0.4 }).collect();
    let mask: Vec<u8> = (0..b * CHUNK).map(|i| u8::from(i != CHUNK - 1)).collect();
    Batch {
        input: input.clone(),
        actions: Tensor::from_vec(actions, &[b, CHUNK, 7], vlm4vla::engine::Device::Cpu).unwrap(),
        mask: Tensor::from_vec(mask, &[b, CHUNK], vlm4vla::engine::Device::Cpu).unwrap(),
        state: None,
    }
}

/// Hands out the same micro-batch again and again.
struct Repeat(Batch, u64);

impl BatchSource for Repeat {
    fn next_batch(&mut self) -> Option<Result<Batch>> {
        self.1 += 1;
        Some(Ok(self.0.clone()))
    }

    fn position(&self) -> serde_json::Value {
        serde_json::json!({ "batches": self.1 })
    }

    fn restore(&mut self, _position: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlm4vla-freeze-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn train_config(name: &str, steps: usize, modules: &[TrainModule], llm_last_layers: Option<usize>) -> TrainConfig {
    let mut cfg = TrainConfig::new(name, out_dir(name), steps);
    cfg.policy = policy_config();
    cfg.optim.lr = 1e-3;
    cfg.run.progress = false;
    cfg.train_modules = modules.to_vec();
    cfg.train_llm_last_layers = llm_last_layers;
    cfg
}

/// Every parameter by checkpoint name, as f32 values.
type Snapshot = Vec<(String, Vec<f32>)>;

fn snapshot(p: &VlaPolicy) -> Snapshot {
    p.named_params().unwrap().iter().map(|(n, t)| (n.clone(), t.to_vec::<f32>().unwrap())).collect()
}

/// Train `steps` trainer steps on the fixed batch; the parameters before and after.
fn train(fam: &Family, cfg: TrainConfig, dtype: DType) -> (Trainer, Snapshot, Snapshot) {
    let policy = VlaPolicy::new((fam.model)(dtype), cfg.policy.clone(), 7).unwrap();
    let mut trainer = Trainer::new(cfg, policy).unwrap();
    let before = snapshot(trainer.policy());
    trainer.run(&mut Repeat(batch(&fam.input), 0)).unwrap();
    let after = snapshot(trainer.policy());
    (trainer, before, after)
}

const NOT_VISION: [TrainModule; 4] =
    [TrainModule::Connector, TrainModule::LanguageModel, TrainModule::Embeddings, TrainModule::Head];

#[test]
fn a_frozen_vision_tower_stays_bit_identical_while_the_language_model_moves() {
    let _serial = serial();
    for fam in families() {
        let name = fam.name;
        let (trainer, before, after) = train(&fam, train_config(name, 3, &NOT_VISION, None), DType::F32);
        let bb = trainer.policy().backbone();
        // Frozen in the store itself: the backbone hands out non-tracking tensors.
        for (n, t) in bb.params().iter() {
            let vision = bb.group_of(n) == ParamGroup::Vision;
            assert_eq!(bb.params().requires_grad(n).unwrap(), !vision, "{name}: requires_grad of {n}");
            assert_eq!(t.tracks_grad(), !vision, "{name}: the handle of {n}");
        }
        let (mut vision, mut lm_moved, mut lm_matrices) = (0, 0, 0);
        for ((n, a), (_, b)) in before.iter().zip(&after) {
            match bb.group_of(n) {
                ParamGroup::Vision => {
                    vision += 1;
                    assert!(a == b, "{name}: frozen vision parameter {n} changed");
                }
                ParamGroup::LanguageModel => {
                    lm_moved += usize::from(a != b);
                    // Every LM matrix moves (AdamW moves any parameter with a gradient).
                    if a.len() > bb.hidden_size() {
                        lm_matrices += 1;
                        assert!(a != b, "{name}: language-model parameter {n} did not move");
                    }
                }
                _ => {}
            }
        }
        assert!(vision > 0 && lm_matrices > 0, "{name}: {vision} vision parameters, {lm_matrices} LM matrices");
        println!("{name}: {vision} vision parameters unchanged, {lm_moved} language-model parameters moved");
        let _ = std::fs::remove_dir_all(&trainer.config().output_dir);
    }
}

/// Live bytes after the forward and the loss minus before: what the graph keeps for the
/// backward (and the outputs).
fn saved_bytes(policy: &VlaPolicy, b: &Batch) -> i64 {
    let before = counters::memory().live_bytes as i64;
    let loss = policy.forward_loss(&b.input, &b.actions, &b.mask).unwrap();
    let saved = counters::memory().live_bytes as i64 - before;
    drop(loss);
    saved
}

fn parts(groups: &[ParamGroup], head: bool, llm_last_layers: Option<usize>) -> TrainableParts {
    TrainableParts { groups: groups.to_vec(), head, llm_last_layers }
}

#[test]
fn freezing_lowers_the_bytes_the_forward_keeps_for_the_backward() {
    let _serial = serial();
    for fam in families() {
        let name = fam.name;
        let mut policy = VlaPolicy::new((fam.model)(DType::F32), policy_config(), 7).unwrap();
        let b = batch(&fam.input);
        let mut measure = |p: TrainableParts| {
            policy.set_trainable(&p).unwrap();
            saved_bytes(&policy, &b)
        };
        let not_vision = [ParamGroup::Connector, ParamGroup::LanguageModel, ParamGroup::Embeddings];
        measure(TrainableParts::all()); // warm-up: nothing first-time counts below
        let all = measure(TrainableParts::all());
        let vision_frozen = measure(parts(&not_vision, true, None));
        let head_only = measure(parts(&[], true, None));
        // No graph at all: the backbone and the head run as under `no_grad`; only outputs live.
        let nothing = vlm4vla::engine::no_grad(|| saved_bytes(&policy, &b));
        println!(
            "{name}: saved for the backward: {all} bytes all trainable, {vision_frozen} vision frozen, {head_only} \
             head only ({nothing} under no_grad)"
        );
        assert!(vision_frozen < all, "{name}: vision frozen keeps {vision_frozen} bytes, all trainable {all}");
        assert!(head_only < vision_frozen, "{name}: head only keeps {head_only} bytes, vision frozen {vision_frozen}");
        assert!(nothing < head_only, "{name}: no_grad keeps {nothing} bytes, head only {head_only}");
    }
}

#[test]
fn training_only_the_last_llm_layer_leaves_the_layers_below_unchanged() {
    let _serial = serial();
    for fam in families() {
        let name = fam.name;
        let (trainer, before, after) = train(&fam, train_config(name, 2, &TrainModule::ALL, Some(1)), DType::F32);
        let bb = trainer.policy().backbone();
        let last = bb.num_lm_layers() - 1;
        assert!(last >= 1, "{name}: the tiny language model needs two layers for this test");
        let (mut below, mut top, mut outside) = (0, 0, 0);
        for ((n, a), (_, b)) in before.iter().zip(&after) {
            if bb.group_of(n) != ParamGroup::LanguageModel {
                continue;
            }
            match bb.lm_layer_of(n) {
                Some(i) if i < last => {
                    below += 1;
                    assert!(a == b, "{name}: {n} (layer {i}, below the last) changed");
                }
                Some(_) => {
                    top += 1;
                    if a.len() > bb.hidden_size() {
                        assert!(a != b, "{name}: {n} (the last layer) did not move");
                    }
                }
                None => {
                    // The final norm trains with the last layer.
                    outside += 1;
                    assert!(a != b, "{name}: {n} (outside the layers) did not move");
                }
            }
        }
        assert!(
            below > 0 && top > 0 && outside > 0,
            "{name}: {below} below, {top} in the last layer, {outside} outside"
        );
        // The frozen layers are frozen in the store, so the optimizer holds nothing for them.
        for (n, _) in trainer.policy().trainable_params() {
            assert!(bb.lm_layer_of(&n).is_none_or(|i| i == last), "{name}: {n} is trainable");
        }
        // The checkpoint holds what trains, and the run resumes from it with the same knob.
        let ckpt = trainer.last_checkpoint().expect("the run ends with a checkpoint").to_path_buf();
        let saved = SafeTensorsFile::open(ckpt.join(vlm4vla::train::checkpoint::MODEL_FILE)).unwrap();
        let mut saved: Vec<String> = saved.names().iter().map(|n| n.to_string()).collect();
        let mut expected: Vec<String> = trainer
            .policy()
            .checkpoint_tensors(&trainer.policy().trainable_params())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        saved.sort();
        expected.sort();
        assert_eq!(saved, expected, "{name}: the checkpoint's tensors");
        // The run's output directory stays locked while its trainer lives.
        let cfg = trainer.config().clone();
        drop(trainer);
        let policy = VlaPolicy::new((fam.model)(DType::F32), cfg.policy.clone(), 7).unwrap();
        let resumed = Trainer::resume(cfg.clone(), policy, &ckpt).unwrap();
        assert_eq!(snapshot(resumed.policy()), after, "{name}: the resumed weights");
        drop(resumed);
        let _ = std::fs::remove_dir_all(&cfg.output_dir);

        // More layers than the model has, or none, is an error naming the field.
        for n in [0, last + 2] {
            let cfg = train_config(name, 1, &TrainModule::ALL, Some(n));
            let policy = VlaPolicy::new((fam.model)(DType::F32), cfg.policy.clone(), 7).unwrap();
            let err = Trainer::new(cfg, policy).err().expect("an invalid train_llm_last_layers is refused").to_string();
            assert!(err.contains("train_llm_last_layers"), "{name}: {err}");
        }
    }
    let cfg = train_config("no-lm", 1, &[TrainModule::Vision, TrainModule::Head], Some(1));
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("train_llm_last_layers") && err.contains("language_model"), "{err}");
    let toml = "backbone = \"x\"\noutput_dir = \"o\"\ntrain_llm_last_layers = 2\n[run]\nsteps = 1\n";
    let cfg = TrainConfig::from_toml_str(toml, "<test>").unwrap();
    assert_eq!(cfg.trainable().llm_last_layers, Some(2));
    assert_eq!(TrainConfig::from_toml_str(&cfg.to_toml().unwrap(), "<again>").unwrap(), cfg);
}

/// The gradient of every trainable parameter, by name.
fn gradients(fam: &Family, p: TrainableParts) -> Vec<(String, Vec<f32>)> {
    let mut policy = VlaPolicy::new((fam.model)(DType::F32), policy_config(), 7).unwrap();
    policy.set_trainable(&p).unwrap();
    let b = batch(&fam.input);
    let grads = policy.forward_loss(&b.input, &b.actions, &b.mask).unwrap().loss.backward().unwrap();
    policy
        .trainable_params()
        .iter()
        .map(|(n, t)| {
            (n.clone(), grads.get(t).expect("a trainable parameter gets a gradient").to_vec::<f32>().unwrap())
        })
        .collect()
}

#[test]
fn freezing_leaves_the_gradients_of_what_trains_unchanged() {
    let _serial = serial();
    for fam in families() {
        let name = fam.name;
        let full: HashMap<String, Vec<f32>> = gradients(&fam, TrainableParts::all()).into_iter().collect();
        let cases = [
            (
                "vision frozen",
                parts(&[ParamGroup::Connector, ParamGroup::LanguageModel, ParamGroup::Embeddings], true, None),
            ),
            ("last LM layer and head", parts(&[ParamGroup::LanguageModel], true, Some(1))),
            ("head only", parts(&[], true, None)),
        ];
        for (what, p) in cases {
            let part = gradients(&fam, p);
            assert!(part.len() < full.len(), "{name}, {what}: {} of {} trainable", part.len(), full.len());
            // Bit for bit: freezing only drops graph nodes upstream of what still trains; every
            // remaining op computes the same values from the same inputs in the same order.
            for (n, g) in &part {
                assert!(&full[n] == g, "{name}, {what}: the gradient of {n} differs from the fully trainable run's");
            }
        }
    }
}

#[test]
fn bf16_parameters_train_on_the_cpu() {
    let _serial = serial();
    for fam in families() {
        let name = fam.name;
        let cfg = train_config(&format!("{name}-bf16"), 20, &TrainModule::ALL, None);
        let (trainer, _, _) = train(&fam, cfg, DType::BF16);
        let losses = trainer.losses().to_vec();
        println!("{name} bf16: loss {:.4} → {:.4} over {} steps", losses[0], losses[losses.len() - 1], losses.len());
        assert_eq!(losses.len(), 20);
        assert!(losses.iter().all(|l| l.is_finite()), "{name}: {losses:?}");
        assert!(losses[19] < 0.8 * losses[0], "{name}: the loss did not fall: {losses:?}");
        let policy = trainer.policy();
        for (n, t) in policy.named_params().unwrap() {
            if t.dtype().is_float() {
                assert_eq!(t.dtype(), DType::BF16, "{name}: {n}");
            }
        }
        // The optimizer keeps f32 masters and moments for every bf16 parameter.
        let ckpt = trainer.last_checkpoint().expect("the run ends with a checkpoint");
        let opt = SafeTensorsFile::open(ckpt.join(vlm4vla::train::checkpoint::OPTIMIZER_FILE)).unwrap();
        let trained = policy.checkpoint_tensors(&policy.trainable_params()).unwrap();
        assert!(!trained.is_empty());
        for (n, _) in &trained {
            for buf in ["master", "exp_avg", "exp_avg_sq"] {
                assert_eq!(opt.dtype(&format!("{n}.{buf}")).unwrap(), DType::F32, "{name}: {n}.{buf}");
            }
        }
        let _ = std::fs::remove_dir_all(&trainer.config().output_dir);
    }
}
