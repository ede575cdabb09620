//! GPU suite, whole backbones: the transformers parity fixtures of the three families run on the
//! GPU in f32 and meet the CPU's parity contract (hidden states and logits within 1e-5 abs + rel
//! on real tokens, the probe loss within 1e-4, every parameter gradient within 1e-4 × the global
//! gradient norm); tiny backbones (the built-in tiny configs, random weights) with appended
//! action-query rows match the CPU forward and backward in f32, and in bf16 stay within twice the
//! CPU's own bf16 error; one VLA training step over each tiny backbone (losses and every
//! trainable gradient) matches the CPU in f32 and stays within twice the CPU's bf16 error in bf16.
//!
//! Fixtures are found next to the crate (`CARGO_MANIFEST_DIR`) or, on a machine that runs staged
//! binaries, under `tests/fixtures` relative to the current directory.

mod common;
mod gpu_common;

use gpu_common::{gpu, on_device};
use std::collections::HashMap;
use std::path::PathBuf;
use vlm4vla::engine::io::{self, LoadOptions};
use vlm4vla::engine::{AdamW, DType, Device, GradNorm, GradStore, ParamStore, Tensor};
use vlm4vla::models::kosmos2::{Kosmos2, Kosmos2Config};
use vlm4vla::models::paligemma::{PaliGemma, PaliGemmaConfig};
use vlm4vla::models::qwen2_5_vl::{Qwen25Vl, Qwen25VlConfig};
use vlm4vla::models::vla::{HeadConfig, PolicyConfig, TrainableParts, VlaPolicy, DEFAULT_ACTION_DIM as ACTION_DIMS};
use vlm4vla::models::{Backbone, BackboneInput};
use vlm4vla::train::{read_step, OptimConfig};

fn fixtures(family: &str) -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(family);
    if here.is_dir() {
        return here;
    }
    let cwd = PathBuf::from("tests/fixtures").join(family);
    assert!(cwd.is_dir(), "fixtures for {family} not found at {} nor {}", here.display(), cwd.display());
    cwd
}

fn load_map(family: &str, file: &str) -> HashMap<String, Tensor> {
    io::load(fixtures(family).join(file), &LoadOptions::default()).unwrap().into_iter().collect()
}

fn weights(family: &str, file: &str) -> ParamStore {
    let mut ps = ParamStore::new();
    for (n, t) in io::load(fixtures(family).join(file), &LoadOptions::default()).unwrap() {
        ps.insert(n, &t).unwrap();
    }
    ps
}

/// The same parameters on `dev`.
fn moved(ps: &ParamStore, dev: Device) -> ParamStore {
    let mut out = ParamStore::new();
    for (n, t) in ps.iter() {
        out.insert(n.to_string(), &t.to_device(dev).unwrap()).unwrap();
    }
    out
}

fn moved_input(i: &BackboneInput, dev: Device) -> BackboneInput {
    BackboneInput {
        pixel_values: i.pixel_values.to_device(dev).unwrap(),
        image_grid_thw: i.image_grid_thw.clone(),
        input_ids: i.input_ids.to_device(dev).unwrap(),
        attention_mask: i.attention_mask.to_device(dev).unwrap(),
        token_type: i.token_type.to_device(dev).unwrap(),
    }
}

/// A model on the CPU and its copy on the GPU.
type Pair = (Box<dyn Traced>, Box<dyn Traced>);

/// One family's fixture model and cases.
struct Family {
    name: &'static str,
    cases: &'static [&'static str],
    /// The fixture model on `dev`.
    model: fn(Device) -> Box<dyn Traced>,
    /// A random model of the same (tiny) config in `dtype` on the CPU, and its copy on `dev`.
    random: fn(DType, Device) -> Pair,
    input: fn(&HashMap<String, Tensor>) -> BackboneInput,
    /// The parameter name of a reference gradient's name.
    canon: fn(&str) -> String,
}

/// What the tests need of a model: the Backbone, and last hidden + logits of a traced forward.
trait Traced {
    fn backbone(&self) -> &dyn Backbone;
    fn hidden_and_logits(&self, input: &BackboneInput) -> (Tensor, Tensor);
}

macro_rules! traced {
    ($($model:ty),*) => {$(
        impl Traced for $model {
            fn backbone(&self) -> &dyn Backbone {
                self
            }
            fn hidden_and_logits(&self, input: &BackboneInput) -> (Tensor, Tensor) {
                let t = self.forward_trace(input).unwrap();
                (t.last_hidden, t.logits)
            }
        }
    )*};
}
traced!(Qwen25Vl, PaliGemma, Kosmos2);

fn qwen_cfg() -> Qwen25VlConfig {
    Qwen25VlConfig::from_file(fixtures("qwen2_5_vl").join("config.json")).unwrap()
}
fn pali_cfg() -> PaliGemmaConfig {
    let c = PaliGemmaConfig::from_file(fixtures("paligemma").join("config.json")).unwrap();
    assert_eq!(c, PaliGemmaConfig::tiny());
    c
}
fn kosmos_cfg() -> Kosmos2Config {
    let c = Kosmos2Config::from_file(fixtures("kosmos2").join("config.json")).unwrap();
    assert_eq!(c, Kosmos2Config::tiny());
    c
}

fn families() -> Vec<Family> {
    vec![
        Family {
            name: "qwen2_5_vl",
            cases: &["case_b1.safetensors", "case_b2.safetensors", "case_window.safetensors"],
            model: |dev| {
                Box::new(
                    Qwen25Vl::from_params(qwen_cfg(), moved(&weights("qwen2_5_vl", "weights.safetensors"), dev))
                        .unwrap(),
                )
            },
            random: |dtype, dev| {
                let cpu = Qwen25Vl::random(qwen_cfg(), 11, dtype).unwrap();
                let gpu = Qwen25Vl::from_params(qwen_cfg(), moved(cpu.params(), dev)).unwrap();
                (Box::new(cpu), Box::new(gpu))
            },
            input: common::qwen_case_input,
            canon: str::to_string,
        },
        Family {
            name: "paligemma",
            cases: &["case1.safetensors", "case2.safetensors"],
            model: |dev| {
                let cpu = PaliGemma::load(fixtures("paligemma"), None).unwrap();
                Box::new(PaliGemma::from_params(pali_cfg(), moved(cpu.params(), dev)).unwrap())
            },
            random: |dtype, dev| {
                let cpu = PaliGemma::random(pali_cfg(), 12, dtype).unwrap();
                let gpu = PaliGemma::from_params(pali_cfg(), moved(cpu.params(), dev)).unwrap();
                (Box::new(cpu), Box::new(gpu))
            },
            input: |t| BackboneInput {
                pixel_values: t["pixel_values"].clone(),
                image_grid_thw: None,
                input_ids: t["input_ids"].clone(),
                attention_mask: t["attention_mask"].clone(),
                token_type: t["token_type_ids"].clone(),
            },
            canon: |n| vlm4vla::models::paligemma::canonical_name(n),
        },
        Family {
            name: "kosmos2",
            cases: &["case_b1.safetensors", "case_b2.safetensors"],
            model: |dev| {
                Box::new(
                    Kosmos2::from_params(kosmos_cfg(), moved(&weights("kosmos2", "weights.safetensors"), dev)).unwrap(),
                )
            },
            random: |dtype, dev| {
                let cpu = Kosmos2::random(kosmos_cfg(), 13, dtype).unwrap();
                let gpu = Kosmos2::from_params(kosmos_cfg(), moved(cpu.params(), dev)).unwrap();
                (Box::new(cpu), Box::new(gpu))
            },
            input: |t| BackboneInput {
                pixel_values: t["pixel_values"].clone(),
                image_grid_thw: None,
                input_ids: t["input_ids"].clone(),
                attention_mask: t["attention_mask"].clone(),
                token_type: t["image_embeds_position_mask"].clone(),
            },
            canon: str::to_string,
        },
    ]
}

/// Rows (`[B, L]` flattened) that hold real tokens.
fn real_rows(input: &BackboneInput) -> Vec<bool> {
    input.attention_mask.to_vec::<i64>().unwrap().iter().map(|&m| m != 0).collect()
}

/// `|ours − ref| ≤ tol + tol·|ref|` on the real rows of an output computed on the GPU; returns
/// the largest `|Δ| / (1 + |ref|)`.
fn close(what: &str, ours: &Tensor, reference: &Tensor, rows: &[bool], tol: f64) -> f64 {
    assert!(on_device(ours), "{what}: computed on {}", ours.device());
    common::compare_rows(what, ours, reference, Some(rows), tol)
}

#[test]
fn parity_fixtures_pass_on_the_gpu_in_f32() {
    let Some(dev) = gpu() else { return };
    for fam in families() {
        let model = (fam.model)(dev);
        for case in fam.cases {
            let what = format!("{} {case}", fam.name);
            let t = load_map(fam.name, case);
            let cpu_input = (fam.input)(&t);
            let rows = real_rows(&cpu_input);
            let (hidden, logits) = model.hidden_and_logits(&moved_input(&cpu_input, dev));
            let eh = close(&format!("{what} last_hidden"), &hidden, &t["last_hidden"], &rows, 1e-5);
            let el = close(&format!("{what} logits"), &logits, &t["logits"], &rows, 1e-5);

            let probe = t["probe"].to_dtype(DType::F32).unwrap().to_device(dev).unwrap();
            let probe2 = t["probe2"].to_dtype(DType::F32).unwrap().to_device(dev).unwrap();
            let loss = common::probe_loss(&hidden, &logits, &probe, &probe2);
            let (ours, reference) = (loss.to_scalar::<f64>().unwrap(), t["loss"].to_vec::<f64>().unwrap()[0]);
            assert!((ours - reference).abs() <= 1e-4 * (1.0 + reference.abs()), "{what}: loss {ours} vs {reference}");
            let grads = loss.backward().unwrap();
            let global: f64 =
                t.iter().filter(|(k, _)| k.starts_with("grad.")).map(|(_, g)| common::sq_norm(g)).sum::<f64>().sqrt();
            let mut worst = 0f64;
            let mut n = 0;
            let bb = model.backbone();
            let by_name = bb.fused().split_grads(bb.params(), &grads).unwrap();
            for (key, r) in t.iter().filter(|(k, _)| k.starts_with("grad.")) {
                let name = (fam.canon)(&key["grad.".len()..]);
                let g = by_name.get(&name).unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
                assert!(on_device(g), "{what}: gradient of {name} on {}", g.device());
                let (a, b) = (g.to_vec::<f64>().unwrap(), r.to_vec::<f64>().unwrap());
                let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max) / global;
                assert!(err <= 1e-4, "{what}: gradient of {name}: max error {err:e} × the global norm");
                worst = worst.max(err);
                n += 1;
            }
            assert_eq!(
                n,
                t.keys().filter(|k| k.starts_with("grad.")).count(),
                "{what}: every reference gradient checked"
            );
            eprintln!("{what} on GPU: last_hidden {eh:.2e}, logits {el:.2e}, gradients {worst:.2e} × global norm");
            common::count("gpu", "parity", 1);
        }
    }
}

/// Forward with `Q` appended rows and backward of `Σ hidden·probe`: (hidden, gradients by
/// parameter name, gradient of the appended rows).
fn run_tiny(model: &dyn Traced, input: &BackboneInput, extra: &Tensor) -> (Tensor, Vec<(String, Tensor)>, Tensor) {
    let bb = model.backbone();
    let extra = extra.variable();
    let out = bb.forward(input, Some(&extra)).unwrap();
    let probe = Tensor::rand_uniform(-1.0, 1.0, out.hidden.shape(), DType::F32, Device::Cpu, 5)
        .unwrap()
        .to_dtype(out.hidden.dtype())
        .unwrap()
        .to_device(out.hidden.device())
        .unwrap();
    let loss = out.hidden.mul(&probe).unwrap().sum_all().unwrap();
    let grads: GradStore = loss.backward().unwrap();
    let by_name = bb.params().iter().filter_map(|(n, p)| grads.get(p).map(|g| (n.to_string(), g.clone()))).collect();
    let gx = grads.get(&extra).expect("the appended rows get a gradient").clone();
    (out.hidden, by_name, gx)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (x, y) = (a.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap());
    x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f64, |m, e| if e.is_nan() { f64::NAN } else { m.max(e) })
}

fn max_abs(a: &Tensor) -> f64 {
    a.to_vec::<f64>().unwrap().iter().fold(0f64, |m, v| m.max(v.abs()))
}

#[test]
fn tiny_backbones_match_the_cpu_forward_and_backward() {
    let Some(dev) = gpu() else { return };
    for fam in families() {
        let t = load_map(fam.name, fam.cases[fam.cases.len() - 1]);
        let input = (fam.input)(&t);
        let (cpu, gpu_model) = (fam.random)(DType::F32, dev);
        let b = input.input_ids.shape()[0];
        let hidden = cpu.backbone().hidden_size();
        let extra = Tensor::rand_uniform(-1.0, 1.0, &[b, 2, hidden], DType::F32, Device::Cpu, 3).unwrap();
        let (hc, gc, xc) = run_tiny(cpu.as_ref(), &input, &extra);
        let (hg, gg, xg) = run_tiny(gpu_model.as_ref(), &moved_input(&input, dev), &extra.to_device(dev).unwrap());
        let what = format!("tiny {} (f32)", fam.name);
        assert!(on_device(&hg));
        let scale = max_abs(&hc);
        let e = max_abs_diff(&hg, &hc);
        assert!(e <= 1e-4 * scale, "{what}: hidden states differ by {e:e} (max |h| {scale})");
        let global: f64 = gc.iter().map(|(_, g)| common::sq_norm(g)).sum::<f64>().sqrt();
        assert_eq!(gc.len(), gg.len(), "{what}: the same parameters get gradients");
        for ((n, c), (_, g)) in gc.iter().zip(&gg) {
            let e = max_abs_diff(g, c);
            assert!(e <= 1e-4 * global, "{what}: gradient of {n} differs by {e:e} (global norm {global:e})");
        }
        let e = max_abs_diff(&xg, &xc);
        assert!(e <= 1e-4 * global.max(max_abs(&xc)), "{what}: appended-row gradient differs by {e:e}");
        common::count("gpu", "tiny_backbone", 1);
    }
}

#[test]
fn tiny_backbones_in_bf16_stay_within_twice_the_cpu_bf16_error() {
    let Some(dev) = gpu() else { return };
    for fam in families() {
        let t = load_map(fam.name, fam.cases[0]);
        let input = (fam.input)(&t);
        let (reference, _) = (fam.random)(DType::F32, dev);
        let (cpu16, gpu16) = (fam.random)(DType::BF16, dev);
        let b = input.input_ids.shape()[0];
        let hidden = reference.backbone().hidden_size();
        let extra = Tensor::rand_uniform(-1.0, 1.0, &[b, 1, hidden], DType::F32, Device::Cpu, 3).unwrap();
        let h32 = reference.backbone().forward(&input, Some(&extra)).unwrap().hidden;
        let hc = cpu16.backbone().forward(&input, Some(&extra.to_dtype(DType::BF16).unwrap())).unwrap().hidden;
        let hg = gpu16
            .backbone()
            .forward(&moved_input(&input, dev), Some(&extra.to_dtype(DType::BF16).unwrap().to_device(dev).unwrap()))
            .unwrap()
            .hidden;
        assert_eq!(hg.dtype(), DType::BF16);
        let (eg, ec) = (max_abs_diff(&hg, &h32), max_abs_diff(&hc, &h32));
        let bound = 2.0 * ec + max_abs(&h32) / 256.0;
        assert!(
            eg <= bound,
            "tiny {} (bf16): GPU error {eg:e} vs f32 exceeds 2 × CPU bf16 error {ec:e} + 1 ulp",
            fam.name
        );
        common::count("gpu", "tiny_backbone_bf16", 1);
    }
}

/// A tiny backbone of `family` with random weights (seeded per family), on the CPU and moved to
/// `dev`, as the backbone of a policy.
fn random_backbones(family: &str, dtype: DType, dev: Device) -> (Box<dyn Backbone>, Box<dyn Backbone>) {
    match family {
        "qwen2_5_vl" => {
            let cpu = Qwen25Vl::random(qwen_cfg(), 21, dtype).unwrap();
            let gpu = Qwen25Vl::from_params(qwen_cfg(), moved(cpu.params(), dev)).unwrap();
            (Box::new(cpu), Box::new(gpu))
        }
        "paligemma" => {
            let cpu = PaliGemma::random(pali_cfg(), 22, dtype).unwrap();
            let gpu = PaliGemma::from_params(pali_cfg(), moved(cpu.params(), dev)).unwrap();
            (Box::new(cpu), Box::new(gpu))
        }
        "kosmos2" => {
            let cpu = Kosmos2::random(kosmos_cfg(), 23, dtype).unwrap();
            let gpu = Kosmos2::from_params(kosmos_cfg(), moved(cpu.params(), dev)).unwrap();
            (Box::new(cpu), Box::new(gpu))
        }
        other => panic!("no tiny backbone `{other}`"),
    }
}

/// One training step's loss parts and every trainable parameter's gradient, by name.
struct StepResult {
    loss: f64,
    arm: f64,
    gripper: f64,
    grads: Vec<(String, Tensor)>,
}

/// The trainer's step up to the optimizer: forward with the state row, the policy loss, backward
/// into a fresh store (`Trainer::train_step` for one micro-batch).
fn policy_step(
    policy: &VlaPolicy,
    input: &BackboneInput,
    state: &Tensor,
    actions: &Tensor,
    mask: &Tensor,
) -> StepResult {
    let params = policy.trainable_params();
    let pl = policy.forward_loss_with_state(input, Some(state), actions, mask).unwrap();
    let mut store = GradStore::new();
    pl.loss.backward_into(&mut store).unwrap();
    let scalar = |t: &Tensor| t.to_vec::<f64>().unwrap()[0];
    let grads = params
        .iter()
        .map(|(n, p)| (n.clone(), store.get(p).unwrap_or_else(|| panic!("{n} gets no gradient")).clone()))
        .collect();
    StepResult { loss: scalar(&pl.loss), arm: scalar(&pl.arm), gripper: scalar(&pl.gripper), grads }
}

/// A policy over each tiny backbone (the paper's head at small widths, a state row, chunk 3):
/// one training step's losses and every trainable gradient on the GPU against the CPU, in f32
/// (within 1e-4 of the loss and of the global gradient norm) and in bf16 (each within twice the
/// CPU bf16 run's error against the f32 step, plus one bf16 ulp of the largest value and, for
/// gradients, 1e-3 of the f32 global norm for tensors whose gradients are near zero). Then the
/// optimizer step (clip inside AdamW) runs on the device and the next loss stays finite.
#[test]
fn vla_training_step_matches_the_cpu() {
    let Some(dev) = gpu() else { return };
    let config = PolicyConfig {
        chunk: 3,
        state_dim: 5,
        head: HeadConfig { trunk_hidden: None, trunk_out: 16, branch_hidden: vec![16, 8] },
        ..PolicyConfig::default()
    };
    for fam in families() {
        let t = load_map(fam.name, fam.cases[fam.cases.len() - 1]);
        let input = (fam.input)(&t);
        let b = input.input_ids.shape()[0];
        let actions: Vec<f32> = (0..b * config.chunk * ACTION_DIMS)
            .map(|i| {
                if i % ACTION_DIMS == ACTION_DIMS - 1 {
                    (i / ACTION_DIMS % 2) as f32
                } else {
                    ((i * 37 % 19) as f32 / 9.5) - 1.0
                }
            })
            .collect();
        let actions = Tensor::from_vec(actions, &[b, config.chunk, ACTION_DIMS], Device::Cpu).unwrap();
        // The last step of the first row is padding.
        let mask: Vec<u8> = (0..b * config.chunk).map(|i| u8::from(i != config.chunk - 1)).collect();
        let mask = Tensor::from_vec(mask, &[b, config.chunk], Device::Cpu).unwrap();
        let state = Tensor::rand_uniform(-1.0, 1.0, &[b, config.state_dim], DType::F32, Device::Cpu, 9).unwrap();
        let on = |t: &Tensor| t.to_device(dev).unwrap();
        let policies = |dtype: DType| {
            let (c, g) = random_backbones(fam.name, dtype, dev);
            let mut pc = VlaPolicy::new(c, config.clone(), 5).unwrap();
            let mut pg = VlaPolicy::new(g, config.clone(), 5).unwrap();
            pc.set_trainable(&TrainableParts::all()).unwrap();
            pg.set_trainable(&TrainableParts::all()).unwrap();
            (pc, pg)
        };

        // f32: the GPU step equals the CPU step.
        let (pc, pg) = policies(DType::F32);
        let c32 = policy_step(&pc, &input, &state, &actions, &mask);
        let g32 = policy_step(&pg, &moved_input(&input, dev), &on(&state), &actions, &mask);
        let what = format!("VLA step on tiny {} (f32)", fam.name);
        for (part, g, c) in
            [("loss", g32.loss, c32.loss), ("arm", g32.arm, c32.arm), ("gripper", g32.gripper, c32.gripper)]
        {
            assert!((g - c).abs() <= 1e-4 * c.abs().max(1e-3), "{what}: {part} {g} on the GPU, {c} on the CPU");
        }
        let global: f64 = c32.grads.iter().map(|(_, g)| common::sq_norm(g)).sum::<f64>().sqrt();
        assert!(global > 0.0 && global.is_finite(), "{what}: global gradient norm {global}");
        assert_eq!(c32.grads.len(), g32.grads.len(), "{what}: the same parameters train");
        for ((n, c), (m, g)) in c32.grads.iter().zip(&g32.grads) {
            assert_eq!(n, m);
            assert!(on_device(g), "{what}: the gradient of {n} is on {}", g.device());
            let e = max_abs_diff(g, c);
            assert!(e <= 1e-4 * global, "{what}: gradient of {n} differs by {e:e} (global norm {global:e})");
        }

        // bf16: the GPU's error against the f32 step is at most twice the CPU bf16 run's.
        let (pc16, pg16) = policies(DType::BF16);
        let c16 = policy_step(&pc16, &input, &state, &actions, &mask);
        let g16 = policy_step(&pg16, &moved_input(&input, dev), &on(&state), &actions, &mask);
        let what = format!("VLA step on tiny {} (bf16)", fam.name);
        for (part, g, c, r) in [
            ("loss", g16.loss, c16.loss, c32.loss),
            ("arm", g16.arm, c16.arm, c32.arm),
            ("gripper", g16.gripper, c16.gripper, c32.gripper),
        ] {
            let bound = 2.0 * (c - r).abs() + r.abs() / 256.0;
            assert!(
                (g - r).abs() <= bound,
                "{what}: {part} {g} on the GPU, {c} on the CPU, {r} in f32 (bound {bound:e})"
            );
        }
        for (((n, r), (_, c)), (_, g)) in c32.grads.iter().zip(&c16.grads).zip(&g16.grads) {
            assert_eq!(g.dtype(), DType::BF16, "{what}: the gradient of {n}");
            let (eg, ec) = (max_abs_diff(g, r), max_abs_diff(c, r));
            let bound = 2.0 * ec + max_abs(r) / 256.0 + 1e-3 * global;
            assert!(eg <= bound, "{what}: gradient of {n}: GPU error {eg:e} exceeds 2 × CPU bf16 error {ec:e} + ulp");
        }

        // The optimizer step on the device (the clip reads the norm there), then the next loss.
        let params = pg16.trainable_params();
        let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
        let pl = pg16.forward_loss_with_state(&moved_input(&input, dev), Some(&on(&state)), &actions, &mask).unwrap();
        let mut store = GradStore::new();
        pl.loss.backward_into(&mut store).unwrap();
        let norm = GradNorm::of(&store, &tensors).unwrap();
        let (values, grad_norm) = read_step(std::slice::from_ref(&pl), &norm).unwrap();
        assert!(
            values[0].loss.is_finite() && grad_norm.is_finite(),
            "{what}: loss {} norm {grad_norm}",
            values[0].loss
        );
        drop(pl);
        let mut opt =
            AdamW::new(OptimConfig { lr: 1e-3, clip_grad_norm: 1.0, ..OptimConfig::default() }.adamw()).unwrap();
        opt.step_clipped(&params, &store, 1e-3, &norm, 1.0).unwrap();
        let next = policy_step(&pg16, &moved_input(&input, dev), &on(&state), &actions, &mask);
        assert!(next.loss.is_finite(), "{what}: loss after the optimizer step is {}", next.loss);
        common::count("gpu", "vla_step", 1);
    }
}
