//! Actions of any width (`policy.action_dim`) with or without a binary gripper last
//! (`policy.gripper`): policies of 6 and 14 continuous dims learn a fixed batch and predict rows
//! of their width; the default 7-D policy reproduces the losses it had before the width became a
//! setting, bit for bit; configs and normalisers saved without the new keys load; the plan counts
//! the head the policy builds; and `vlm4vla train` / `predict` on a 6-D LeRobot dataset.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use vlm4vla::engine::{AdamW, AdamWConfig, DType, Device, Tensor};
use vlm4vla::models::plan::head_params;
use vlm4vla::models::vla::{ActionNormalizer, GripperMode, HeadConfig, PolicyConfig, VlaPolicy};
use vlm4vla::models::BackboneInput;
use vlm4vla::train::toy::{ToyBackbone, ToyConfig};
use vlm4vla::train::TrainConfig;

const CHUNK: usize = 4;

fn small_head() -> HeadConfig {
    HeadConfig { trunk_hidden: None, trunk_out: 16, branch_hidden: vec![16, 8] }
}

fn config(action_dim: usize, gripper: GripperMode) -> PolicyConfig {
    PolicyConfig { chunk: CHUNK, action_dim, gripper, head: small_head(), ..Default::default() }
}

fn policy_with(cfg: PolicyConfig) -> VlaPolicy {
    let bb = ToyBackbone::new(ToyConfig::default(), 3).unwrap();
    VlaPolicy::new(Box::new(bb), cfg, 11).unwrap()
}

fn input(b: usize, seed: u64) -> BackboneInput {
    let pixel_values = Tensor::rand_uniform(0.0, 1.0, &[b, 3, 8, 8], DType::F32, Device::Cpu, seed).unwrap();
    let (mut ids, mut mask, mut kind) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..b {
        ids.extend([1i64, 2, 7, 3 + (r % 3) as i64]);
        mask.extend([1u8, 1, 1, 1]);
        kind.extend([0u8, 1, 0, 0]);
    }
    BackboneInput {
        pixel_values,
        image_grid_thw: None,
        input_ids: Tensor::from_vec(ids, &[b, 4], Device::Cpu).unwrap(),
        attention_mask: Tensor::from_vec(mask, &[b, 4], Device::Cpu).unwrap(),
        token_type: Tensor::from_vec(kind, &[b, 4], Device::Cpu).unwrap(),
    }
}

/// `[b, CHUNK, width]` targets in [-0.9, 0.9]; with a gripper the last dim in {0, 1}.
fn targets(b: usize, width: usize, gripper: bool, seed: u64) -> Tensor {
    let a = Tensor::rand_uniform(-0.9, 0.9, &[b, CHUNK, width], DType::F32, Device::Cpu, seed).unwrap();
    let v: Vec<f32> = a
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, &x)| if gripper && i % width == width - 1 { f32::from(x > 0.0) } else { x })
        .collect();
    Tensor::from_vec(v, &[b, CHUNK, width], Device::Cpu).unwrap()
}

/// `(loss, arm, gripper, gripper accuracy)` of `steps` AdamW steps on one fixed batch.
fn train_fixed(p: &VlaPolicy, y: &Tensor, mask: &Tensor, steps: usize) -> Vec<(f64, f64, f64, f64)> {
    let x = input(3, 1);
    let mut opt = AdamW::new(AdamWConfig { lr: 1e-2, ..Default::default() }).unwrap();
    let mut out = Vec::new();
    for _ in 0..steps {
        let l = p.forward_loss(&x, y, mask).unwrap();
        let v = l.values().unwrap();
        out.push((v.loss, v.arm, v.gripper, v.gripper_accuracy));
        let grads = l.loss.backward().unwrap();
        opt.step(&p.trainable_params(), &grads, 1e-2).unwrap();
    }
    out
}

#[test]
fn continuous_policies_of_6_and_14_dims_learn_and_predict_rows_of_their_width() {
    for width in [6, 14] {
        let p = policy_with(config(width, GripperMode::None));
        assert!(!p.head().has_gripper());
        assert_eq!(p.head().arm_dims(), width);
        assert!(p.params().names().iter().all(|n| !n.contains("gripper")), "{width}: no gripper branch");
        let out = p.forward(&input(3, 1)).unwrap();
        assert_eq!(out.arm.shape(), &[3, CHUNK, width]);
        assert!(out.gripper_logits.is_none());

        let y = targets(3, width, false, 5);
        let mask = Tensor::ones(&[3, CHUNK], DType::U8, Device::Cpu).unwrap();
        let losses = train_fixed(&p, &y, &mask, 20);
        let (first, last) = (losses[0], losses[19]);
        assert!(last.0 < 0.7 * first.0, "{width}-D: loss {} → {}", first.0, last.0);
        // No gripper: the loss is the Huber term alone, no BCE and no accuracy.
        assert!(losses.iter().all(|l| l.0 == l.1 && l.2 == 0.0 && l.3 == 0.0), "{width}-D: {losses:?}");

        let pred = p.predict(&input(2, 9)).unwrap();
        assert_eq!(pred.len(), 2);
        for chunk in &pred {
            assert_eq!(chunk.len(), CHUNK);
            assert!(chunk.iter().all(|a| a.len() == width && a.iter().all(|v| v.abs() < 1.0)), "{width}-D: {chunk:?}");
        }
        // The wrong width is refused, naming the field.
        let wrong = targets(3, width + 1, false, 5);
        let e = p.forward_loss(&input(3, 1), &wrong, &mask).unwrap_err().to_string();
        assert!(e.contains("policy.action_dim"), "{e}");
    }
}

#[test]
fn a_wider_action_with_the_gripper_last_keeps_the_gripper_branch() {
    let p = policy_with(config(14, GripperMode::Last));
    assert!(p.head().has_gripper());
    assert_eq!(p.head().arm_dims(), 13);
    let y = targets(3, 14, true, 7);
    let mask = Tensor::ones(&[3, CHUNK], DType::U8, Device::Cpu).unwrap();
    let l = train_fixed(&p, &y, &mask, 1)[0];
    assert!(l.2 > 0.0 && l.0 > l.1, "the BCE term counts: {l:?}");
    let pred = p.predict(&input(2, 9)).unwrap();
    assert!(pred.iter().flatten().all(|a| a.len() == 14 && (a[13] == 1.0 || a[13] == -1.0)));
}

/// The losses of the default (7-D, gripper last) policy, recorded with this same code on the
/// commit before the width became a setting (f82378080a): the change leaves them bit-identical.
#[test]
fn the_default_7d_policy_loses_exactly_what_it_did_before() {
    const BEFORE: [(u64, u64, u64, f64); 5] = [
        (4595411032280662016, 4595111731579060224, 4605657744064643072, 0.375),
        (4594505080333402112, 4594263680622788608, 4604210211236872192, 0.5),
        (4595321910635528192, 4595114748256714752, 4603354284384321536, 0.75),
        (4593920721578622976, 4593712200916402176, 4603388230195216384, 0.75),
        (4593779863294312448, 4593476147366330368, 4603324705481424896, 0.75),
    ];
    let p = policy_with(PolicyConfig { chunk: CHUNK, head: small_head(), ..Default::default() });
    assert_eq!((p.config().action_dim, p.config().gripper), (7, GripperMode::Last));
    let y = targets(3, 7, true, 5);
    let mask = Tensor::from_vec(vec![1u8, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1], &[3, CHUNK], Device::Cpu).unwrap();
    let got: Vec<(u64, u64, u64, f64)> =
        train_fixed(&p, &y, &mask, 5).into_iter().map(|l| (l.0.to_bits(), l.1.to_bits(), l.2.to_bits(), l.3)).collect();
    assert_eq!(got, BEFORE);
}

/// A training config of the toy backbone with the `[policy]` table `policy`.
fn train_toml(policy: &str) -> vlm4vla::engine::Result<TrainConfig> {
    let text = format!("backbone = \"toy\"\noutput_dir = \"runs/x\"\n{policy}\n[run]\nsteps = 1\n");
    TrainConfig::from_toml_str(&text, "policy.toml")
}

#[test]
fn configs_and_normalisers_without_the_new_keys_load_as_before() {
    let cfg = train_toml("[policy]\nchunk = 4").unwrap();
    assert_eq!((cfg.policy.action_dim, cfg.policy.gripper), (7, GripperMode::Last));
    let cfg = train_toml("[policy]\nchunk = 4\naction_dim = 14\ngripper = \"none\"").unwrap();
    assert_eq!((cfg.policy.action_dim, cfg.policy.gripper, cfg.policy.arm_dims()), (14, GripperMode::None, 14));

    for (text, field) in [
        ("[policy]\naction_dim = 1\n", "policy.action_dim"),
        ("[policy]\naction_dim = 0\ngripper = \"none\"\n", "policy.action_dim"),
        ("[policy]\ngripper = \"left\"\n", "gripper"),
    ] {
        let e = train_toml(text).unwrap_err().to_string();
        assert!(e.contains(field), "{text}: {e}");
    }
    assert!(train_toml("[policy]\naction_dim = 1\ngripper = \"none\"").is_ok());

    // A normaliser saved before `gripper` existed keeps its gripper.
    let json = ActionNormalizer::fixed_bounds(0.65, 6).unwrap().to_json();
    let old = json.replacen(",\n  \"gripper\": \"last\"", "", 1);
    assert!(!old.contains("\"gripper\""), "{old}");
    let n = ActionNormalizer::from_json(&old).unwrap();
    assert_eq!((n.gripper, n.action_dim()), (GripperMode::Last, 7));
    let none = ActionNormalizer::fixed_bounds(0.65, 6).unwrap().with_gripper(GripperMode::None);
    assert_eq!(ActionNormalizer::from_json(&none.to_json()).unwrap(), none);
    let y = none.normalize_actions(&[0.65, -0.65, 0.0, 0.13, 1.0, -1.0]).unwrap();
    let want = [1.0, -1.0, 0.0, 0.2, 1.0, -1.0];
    assert!(y.len() == 6 && y.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{y:?}");
    assert!(none.denormalize_actions(&[0.0; 6], &[1.0]).is_err(), "no gripper logits without a gripper");
}

#[test]
fn plan_counts_the_head_the_policy_builds_for_every_width() {
    for (width, gripper) in [
        (7, GripperMode::Last),
        (2, GripperMode::Last),
        (6, GripperMode::None),
        (14, GripperMode::None),
        (1, GripperMode::None),
    ] {
        for state_dim in [0, 5] {
            let cfg = PolicyConfig { state_dim, ..config(width, gripper) };
            let p = policy_with(cfg.clone());
            let hidden = p.backbone().hidden_size();
            assert_eq!(head_params(hidden, &cfg), p.params().num_params(), "{width}-D {gripper:?} state {state_dim}");
        }
    }
}

// ---- through the CLI on a 6-D LeRobot dataset ----

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vlm4vla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vlm4vla")).current_dir(root()).args(args).output().expect("run vlm4vla")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlm4vla-width-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const SIDE: usize = 16;

/// A LeRobot dataset of two episodes with 6-D actions and 3-D states.
fn write_dataset(dir: &Path) {
    let mut w = vlm4vla::data::LeRobotWriter::create(dir, 10, [SIDE, SIDE, 3], 3, 6, "six-dof").unwrap();
    for (e, task) in ["push the red block", "lift the blue block"].iter().enumerate() {
        for t in 0..8 {
            let px = vec![(30 * t + 100 * e) as u8; SIDE * SIDE * 3];
            let a: Vec<f32> = (0..6).map(|d| ((t + d + e) as f32 * 0.37).sin() * 0.5).collect();
            w.add_frame(&px, &[t as f32, e as f32, 0.5], &a).unwrap();
        }
        w.end_episode(task).unwrap();
    }
    w.finish().unwrap();
}

fn write_config(path: &Path, data: &Path, out: &Path, policy_extra: &str) {
    let text = format!(
        r#"backbone = "tests/fixtures/tiny/paligemma"
output_dir = "{out}"
seed = 0
dtype = "f32"
device = "cpu"

[data]
dataset = "{data}"
normalization = "min_max"
workers = 1

[policy]
chunk = 3
gripper = "none"
{policy_extra}

[policy.head]
trunk_out = 32
branch_hidden = [32, 16]

[optim]
lr = 1e-3
warmup_steps = 2

[run]
batch_size = 4
steps = 10
checkpoint_every = 10
progress = false
"#,
        out = out.display(),
        data = data.display()
    );
    std::fs::write(path, text).unwrap();
}

#[test]
fn cli_trains_on_6d_actions_and_predicts_rows_of_6() {
    let dir = tmp("cli");
    let data = dir.join("data");
    write_dataset(&data);
    let cfg = dir.join("six.toml");
    let run = dir.join("run");
    write_config(&cfg, &data, &run, "");
    let out = vlm4vla(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "train failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 10);
    assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0), "{losses:?}");
    // The run records the width it took from the dataset.
    let saved = std::fs::read_to_string(run.join("finetune.toml")).unwrap();
    assert!(saved.contains("action_dim = 6") && saved.contains("gripper = \"none\""), "{saved}");

    let png = dir.join("frame.png");
    std::fs::write(&png, vlm4vla::data::encode_png(&vec![90u8; SIDE * SIDE * 3], SIDE, SIDE).unwrap()).unwrap();
    let args = ["predict", "--checkpoint", run.to_str().unwrap(), "--image", png.to_str().unwrap(), "--instruction"];
    let out = vlm4vla(&[&args[..], &["push the red block"]].concat());
    assert!(out.status.success(), "predict failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chunk = v["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 3);
    for row in chunk {
        let row = row.as_array().unwrap();
        assert_eq!(row.len(), 6, "{v}");
        // min_max de-normalises into the recorded range, ±0.5.
        assert!(row.iter().all(|x| x.as_f64().unwrap().abs() <= 0.5 + 1e-5), "{v}");
    }

    // Offline evaluation: an error per each of the 6 dims, no gripper accuracy.
    let args = ["eval", "--checkpoint", run.to_str().unwrap(), "--batches", "2", "--batch-size", "4", "--json"];
    let out = vlm4vla(&args);
    assert!(out.status.success(), "eval failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["arm_mae"].as_array().unwrap().len(), 6, "{r}");
    assert!(r["arm_rmse"].as_f64().unwrap().is_finite() && r.get("gripper_accuracy").is_none(), "{r}");

    // A config that names another width is refused before training, naming the field and feature.
    let other = dir.join("seven.toml");
    write_config(&other, &data, &dir.join("run7"), "action_dim = 7");
    let out = vlm4vla(&["train", "--config", other.to_str().unwrap()]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("policy.action_dim") && e.contains("`action`") && e.contains("6-D"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
