//! GPU suite, optimizers: AdamW and SGD (with and without momentum) stepping GPU parameters
//! through the fused optim.cu kernel (f32 parameters in place; bf16 parameters through an f32
//! master on the device, the bf16 copy written in the same pass), against the same steps on the
//! CPU; gradient norm and clipping; optimizer state save and reload across devices.

mod common;
mod gpu_common;

use common::{arb_shape, config, count};
use gpu_common::{gpu, on_device};
use proptest::prelude::*;
use vlm4vla::engine::{
    clip_grad_norm, counters, grad_norm, AdamW, AdamWConfig, DType, Device, GradNorm, GradStore, ParamStore, Sgd,
    SgdConfig, Tensor,
};

fn store(shapes: &[Vec<usize>], dtype: DType, dev: Device, seed: u64) -> ParamStore {
    let mut ps = ParamStore::new();
    for (i, s) in shapes.iter().enumerate() {
        let t = Tensor::rand_uniform(-1.0, 1.0, s, DType::F32, Device::Cpu, seed + i as u64).unwrap();
        ps.insert(format!("p{i}"), &t.to_dtype(dtype).unwrap().to_device(dev).unwrap()).unwrap();
    }
    ps
}

/// Gradients of `Σ p²·probe` for every parameter (the same values on every device).
fn grads(ps: &ParamStore, step: u64) -> GradStore {
    let mut loss: Option<Tensor> = None;
    for (i, (_, p)) in ps.iter().enumerate() {
        let probe = Tensor::rand_uniform(-1.0, 1.0, p.shape(), DType::F32, Device::Cpu, 100 * step + i as u64)
            .unwrap()
            .to_dtype(p.dtype())
            .unwrap()
            .to_device(p.device())
            .unwrap();
        let l = p.sqr().unwrap().mul(&probe).unwrap().sum_all().unwrap().to_dtype(DType::F32).unwrap();
        loss = Some(match loss {
            Some(acc) => acc.add(&l).unwrap(),
            None => l,
        });
    }
    loss.unwrap().backward().unwrap()
}

/// Parameters after the same steps on both devices agree: f32 to 1e-5 (relative to the value,
/// plus 1e-6), bf16 to one bf16 ulp (both round the same f32 master).
fn assert_same(what: &str, gpu: &ParamStore, cpu: &ParamStore, dtype: DType) {
    for ((name, g), (_, c)) in gpu.iter().zip(cpu.iter()) {
        assert!(on_device(g), "{what}: {name} left the GPU");
        assert_eq!(g.dtype(), dtype);
        let (a, b) = (g.to_vec::<f64>().unwrap(), c.to_vec::<f64>().unwrap());
        let tol = if dtype == DType::F32 { 1e-5 } else { 1.0 / 128.0 };
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= tol * y.abs() + 1e-6, "{what}: {name}[{i}]: gpu {x}, cpu {y}");
        }
    }
}

proptest! {
    #![proptest_config(config(100))]

    #[test]
    fn optimizers_match_the_cpu(shapes in prop::collection::vec(arb_shape(1..=3, 5000), 1..4), seed in any::<u64>(), wd in 0.0f64..0.1) {
        let Some(dev) = gpu() else { return Ok(()); };
        let seed = seed % 1_000_000;
        for dtype in [DType::F32, DType::BF16] {
            let (g_ps, c_ps) = (store(&shapes, dtype, dev, seed), store(&shapes, dtype, Device::Cpu, seed));
            let cfg = AdamWConfig { lr: 1e-2, weight_decay: wd, ..Default::default() };
            let (mut g_opt, mut c_opt) = (AdamW::new(cfg).unwrap(), AdamW::new(cfg).unwrap());
            for step in 0..3 {
                g_opt.step(&g_ps, &grads(&g_ps, step), 1e-2).unwrap();
                c_opt.step(&c_ps, &grads(&c_ps, step), 1e-2).unwrap();
            }
            assert_same("adamw", &g_ps, &c_ps, dtype);
            for momentum in [0.0, 0.9] {
                let (g_ps, c_ps) = (store(&shapes, dtype, dev, seed), store(&shapes, dtype, Device::Cpu, seed));
                let cfg = SgdConfig { lr: 0.05, momentum, weight_decay: wd };
                let (mut g_opt, mut c_opt) = (Sgd::new(cfg).unwrap(), Sgd::new(cfg).unwrap());
                for step in 0..3 {
                    g_opt.step(&g_ps, &grads(&g_ps, step), 0.05).unwrap();
                    c_opt.step(&c_ps, &grads(&c_ps, step), 0.05).unwrap();
                }
                assert_same("sgd", &g_ps, &c_ps, dtype);
            }
        }
        count("gpu", "adamw", 1);
        count("gpu", "sgd", 1);
    }
}

#[test]
fn clipping_and_state_round_trip() {
    let Some(dev) = gpu() else { return };
    let shapes = vec![vec![33usize, 65], vec![7]];
    let (g_ps, c_ps) = (store(&shapes, DType::F32, dev, 1), store(&shapes, DType::F32, Device::Cpu, 1));
    let (mut gg, mut cg) = (grads(&g_ps, 0), grads(&c_ps, 0));
    let (gp, cp) = (g_ps.trainable_tensors(), c_ps.trainable_tensors());
    let (gn, cn) = (grad_norm(&gg, &gp).unwrap(), grad_norm(&cg, &cp).unwrap());
    assert!((gn - cn).abs() <= 1e-5 * cn, "grad norm gpu {gn} cpu {cn}");
    clip_grad_norm(&mut gg, &gp, 0.5).unwrap();
    clip_grad_norm(&mut cg, &cp, 0.5).unwrap();
    assert!((grad_norm(&gg, &gp).unwrap() - 0.5).abs() < 1e-4);

    // State written on the GPU reloads on the GPU and continues exactly like the CPU's.
    let cfg = AdamWConfig { lr: 1e-2, ..Default::default() };
    let (mut g_opt, mut c_opt) = (AdamW::new(cfg).unwrap(), AdamW::new(cfg).unwrap());
    g_opt.step(&g_ps, &gg, 1e-2).unwrap();
    c_opt.step(&c_ps, &cg, 1e-2).unwrap();
    let state: Vec<(String, Tensor)> =
        g_opt.state_tensors().unwrap().into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu).unwrap())).collect();
    let mut reloaded = AdamW::new(cfg).unwrap();
    reloaded.load_state(&g_ps, &state).unwrap();
    reloaded.step(&g_ps, &grads(&g_ps, 1), 1e-2).unwrap();
    c_opt.step(&c_ps, &grads(&c_ps, 1), 1e-2).unwrap();
    assert_same("adamw after reload", &g_ps, &c_ps, DType::F32);
}

/// Clipping inside the fused kernel (the norm's sum of squares read from device memory) matches
/// clip-then-step on the CPU, for AdamW and SGD, f32 and bf16, with the clip active and not; the
/// multi-tensor sum of squares matches the CPU's and costs no host read.
#[test]
fn clipping_inside_the_step_matches_the_cpu() {
    let Some(dev) = gpu() else { return };
    let shapes = vec![vec![33usize, 65], vec![7], vec![4099], vec![1, 1]];
    for dtype in [DType::F32, DType::BF16] {
        for max_norm in [0.5, 1e6] {
            for sgd in [false, true] {
                let (g_ps, c_ps) = (store(&shapes, dtype, dev, 5), store(&shapes, dtype, Device::Cpu, 5));
                let (gp, cp) = (g_ps.trainable_tensors(), c_ps.trainable_tensors());
                let cfg = AdamWConfig { lr: 1e-2, ..Default::default() };
                let scfg = SgdConfig { lr: 0.05, momentum: 0.9, weight_decay: 0.01 };
                let (mut ga, mut ca) = (AdamW::new(cfg).unwrap(), AdamW::new(cfg).unwrap());
                let (mut gs, mut cs) = (Sgd::new(scfg).unwrap(), Sgd::new(scfg).unwrap());
                for step in 0..3 {
                    let gg = grads(&g_ps, step);
                    let mut cg = grads(&c_ps, step);
                    let before = counters::snapshot();
                    let norm = GradNorm::of(&gg, &gp).unwrap();
                    if sgd {
                        gs.step_clipped(&g_ps, &gg, 0.05, &norm, max_norm).unwrap();
                    } else {
                        ga.step_clipped(&g_ps, &gg, 1e-2, &norm, max_norm).unwrap();
                    }
                    assert_eq!(counters::snapshot().since(&before).host_reads, 0, "a clipped step reads nothing");
                    assert!(on_device(norm.sum_sq()));
                    let cn = clip_grad_norm(&mut cg, &cp, max_norm).unwrap();
                    let gn = norm.read().unwrap();
                    assert!((gn - cn).abs() <= 1e-5 * cn, "grad norm gpu {gn} cpu {cn}");
                    if sgd {
                        cs.step(&c_ps, &cg, 0.05).unwrap();
                    } else {
                        ca.step(&c_ps, &cg, 1e-2).unwrap();
                    }
                }
                assert_same(if sgd { "sgd clipped" } else { "adamw clipped" }, &g_ps, &c_ps, dtype);
            }
        }
    }
    count("gpu", "step_clipped", 1);
}
