//! What one VLA training step costs in backend calls, counted by the engine (`engine::counters`):
//! primitive calls (kernel launches on a GPU), host reads (GPU synchronisations) and fresh
//! buffers, for each tiny backbone (random weights, the parity fixtures' inputs) under the paper's
//! head: forward, loss, backward, gradient clipping and AdamW.
//!
//! The budgets are the counts measured when this test was written (on the CPU; the GPU makes the
//! same calls): a change that adds launches or host reads to the step fails here. Lowering them
//! is the GPU-shaped step's work (issue 13: one host read per step is the goal). Per decoder
//! layer is the difference between the tiny config and the same config with one more layer.

use std::collections::HashMap;
use std::path::PathBuf;
use vlm4vla::engine::{clip_grad_norm, counters, io, AdamW, AdamWConfig, DType, Device, LoadOptions, Tensor};
use vlm4vla::models::kosmos2::{Kosmos2, Kosmos2Config};
use vlm4vla::models::paligemma::{PaliGemma, PaliGemmaConfig};
use vlm4vla::models::qwen2_5_vl::{Qwen25Vl, Qwen25VlConfig};
use vlm4vla::models::vla::{HeadConfig, PolicyConfig, VlaPolicy};
use vlm4vla::models::{Backbone, BackboneInput};

mod common;

const CHUNK: usize = 4;

fn load_map(family: &str, file: &str) -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(family).join(file);
    io::load(path, &LoadOptions::default()).unwrap().into_iter().collect()
}

fn config_path(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(family).join("config.json")
}

/// One family: its tiny backbone with `extra` more decoder layers, and the fixture input.
struct Family {
    name: &'static str,
    model: fn(extra: usize) -> Box<dyn Backbone>,
    input: BackboneInput,
    /// The budget: primitive calls per step and per added decoder layer, host reads per step and
    /// per added decoder layer.
    budget: (u64, u64, u64, u64),
}

fn families() -> Vec<Family> {
    let q = load_map("qwen2_5_vl", "case_b2.safetensors");
    let p = load_map("paligemma", "case2.safetensors");
    let k = load_map("kosmos2", "case_b2.safetensors");
    vec![
        Family {
            name: "qwen2_5_vl",
            model: |extra| {
                let mut cfg = Qwen25VlConfig::from_file(config_path("qwen2_5_vl")).unwrap();
                cfg.text.num_hidden_layers += extra;
                Box::new(Qwen25Vl::random(cfg, 11, DType::F32).unwrap())
            },
            input: common::qwen_case_input(&q),
            budget: QWEN_BUDGET,
        },
        Family {
            name: "paligemma",
            model: |extra| {
                let mut cfg = PaliGemmaConfig::tiny();
                cfg.text.num_hidden_layers += extra;
                Box::new(PaliGemma::random(cfg, 12, DType::F32).unwrap())
            },
            input: BackboneInput {
                pixel_values: p["pixel_values"].clone(),
                image_grid_thw: None,
                input_ids: p["input_ids"].clone(),
                attention_mask: p["attention_mask"].clone(),
                token_type: p["token_type_ids"].clone(),
            },
            budget: PALI_BUDGET,
        },
        Family {
            name: "kosmos2",
            model: |extra| {
                let mut cfg = Kosmos2Config::tiny();
                cfg.text.layers += extra;
                Box::new(Kosmos2::random(cfg, 13, DType::F32).unwrap())
            },
            input: BackboneInput {
                pixel_values: k["pixel_values"].clone(),
                image_grid_thw: None,
                input_ids: k["input_ids"].clone(),
                attention_mask: k["attention_mask"].clone(),
                token_type: k["image_embeds_position_mask"].clone(),
            },
            budget: KOSMOS_BUDGET,
        },
    ]
}

/// Measured on the CPU (2026-12-06): primitive calls per step and per decoder layer (its forward,
/// backward and optimizer update), host reads per step and per decoder layer. A decoder layer
/// adds no host read: attention resolves its key padding once per forward (`AttentionKeys`) and
/// the gradient norm is one reduction and one read per device.
const QWEN_BUDGET: (u64, u64, u64, u64) = (399, 46, 30, 0);
const PALI_BUDGET: (u64, u64, u64, u64) = (339, 52, 18, 0);
const KOSMOS_BUDGET: (u64, u64, u64, u64) = (294, 42, 17, 0);

/// The counts of the second training step (the optimizer's state exists, as in every step of a
/// run): forward, loss, backward, clip and AdamW.
fn step_counts(backbone: Box<dyn Backbone>, input: &BackboneInput) -> counters::Counts {
    let cfg = PolicyConfig {
        chunk: CHUNK,
        head: HeadConfig { trunk_hidden: None, trunk_out: 16, branch_hidden: vec![16, 8] },
        ..Default::default()
    };
    let policy = VlaPolicy::new(backbone, cfg, 7).unwrap();
    let b = input.input_ids.shape()[0];
    // Arm deltas in [-0.4, 0.4], the gripper open (1).
    let actions: Vec<f32> =
        (0..b * CHUNK * 7).map(|i| if i % 7 == 6 { 1.0 } else { (i % 5) as f32 * 0.2 - 0.4 }).collect();
    let actions = Tensor::from_vec(actions, &[b, CHUNK, 7], Device::Cpu).unwrap();
    let mask = Tensor::ones(&[b, CHUNK], DType::U8, Device::Cpu).unwrap();
    let mut opt = AdamW::new(AdamWConfig { lr: 1e-3, ..Default::default() }).unwrap();
    let params = policy.trainable_params();
    let handles: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
    let mut step = || {
        let before = counters::snapshot();
        let loss = policy.forward_loss(input, &actions, &mask).unwrap();
        let mut grads = loss.loss.backward().unwrap();
        clip_grad_norm(&mut grads, &handles, 1.0).unwrap();
        opt.step(&params, &grads, 1e-3).unwrap();
        counters::snapshot().since(&before)
    };
    step();
    step()
}

#[test]
fn one_vla_training_step_stays_within_its_launch_and_read_budget() {
    for fam in families() {
        let used = step_counts((fam.model)(0), &fam.input);
        let deeper = step_counts((fam.model)(1), &fam.input);
        let per_layer = deeper.primitives - used.primitives;
        let reads_per_layer = deeper.host_reads - used.host_reads;
        let name = fam.name;
        println!(
            "{name}: one step: {} primitive calls ({per_layer} per decoder layer), {} host reads ({reads_per_layer} per \
             decoder layer), {} fresh buffers",
            used.primitives, used.host_reads, used.allocations,
        );
        let (max_primitives, max_per_layer, max_reads, max_reads_per_layer) = fam.budget;
        assert!(
            used.primitives <= max_primitives,
            "{name}: {} primitive calls, budget {max_primitives}",
            used.primitives
        );
        assert!(
            per_layer <= max_per_layer,
            "{name}: {per_layer} primitive calls per decoder layer, budget {max_per_layer}"
        );
        assert!(used.host_reads <= max_reads, "{name}: {} host reads, budget {max_reads}", used.host_reads);
        assert!(
            reads_per_layer <= max_reads_per_layer,
            "{name}: {reads_per_layer} host reads per decoder layer, budget {max_reads_per_layer}"
        );
    }
}

/// Activation checkpointing per block (`run.checkpoint_activations`) changes what is kept, not
/// what is computed: the loss and every gradient equal the plain step's bit for bit, and the
/// recomputation shows as more primitive calls (each block's forward runs again in the backward).
#[test]
fn checkpointed_blocks_give_the_same_gradients() {
    for fam in families() {
        let run = |recompute: bool| {
            let mut backbone = (fam.model)(0);
            backbone.set_checkpoint_activations(recompute);
            assert_eq!(backbone.checkpoint_activations(), recompute);
            let cfg = PolicyConfig {
                chunk: CHUNK,
                head: HeadConfig { trunk_hidden: None, trunk_out: 16, branch_hidden: vec![16, 8] },
                ..Default::default()
            };
            let policy = VlaPolicy::new(backbone, cfg, 7).unwrap();
            let b = fam.input.input_ids.shape()[0];
            let actions: Vec<f32> =
                (0..b * CHUNK * 7).map(|i| if i % 7 == 6 { 1.0 } else { (i % 5) as f32 * 0.2 - 0.4 }).collect();
            let actions = Tensor::from_vec(actions, &[b, CHUNK, 7], Device::Cpu).unwrap();
            let mask = Tensor::ones(&[b, CHUNK], DType::U8, Device::Cpu).unwrap();
            let before = counters::snapshot();
            let loss = policy.forward_loss(&fam.input, &actions, &mask).unwrap();
            let grads = loss.loss.backward().unwrap();
            let used = counters::snapshot().since(&before);
            let loss = loss.loss.to_vec::<f32>().unwrap();
            let grads: Vec<(String, Vec<f32>)> = policy
                .trainable_params()
                .iter()
                .map(|(n, t)| (n.clone(), grads.get(t).map(|g| g.to_vec::<f32>().unwrap()).unwrap_or_default()))
                .collect();
            (loss, grads, used.primitives)
        };
        let (plain_loss, plain, plain_calls) = run(false);
        let (ckpt_loss, ckpt, ckpt_calls) = run(true);
        let name = fam.name;
        assert_eq!(plain_loss, ckpt_loss, "{name}: loss");
        assert!(plain.iter().any(|(_, g)| !g.is_empty()), "{name}: no gradients");
        for ((n, a), (_, b)) in plain.iter().zip(&ckpt) {
            assert_eq!(a, b, "{name}: gradient of {n}");
        }
        assert!(ckpt_calls > plain_calls, "{name}: {ckpt_calls} primitive calls with recomputation vs {plain_calls}");
    }
}
