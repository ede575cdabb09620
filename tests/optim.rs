//! Optimizers, schedules and clipping against PyTorch / transformers reference values (f64,
//! compared to 1e-10), plus the behaviours the references cannot show: bf16 parameters keep an
//! f32 master, state save/load continues identically, the parallel path equals the naive
//! formula, and bad state or arguments are errors.

use vlm4vla::engine::{
    clip_grad_norm, grad_norm, AdamW, AdamWConfig, DType, Device, GradNorm, GradStore, LrSchedule, Sgd, SgdConfig,
    Tensor,
};

// ----- reference values ------------------------------------------------------------------------
//
// Produced by this script (python3 with torch==2.15.0, transformers==5.24.0; run as
// `python ref.py`), whose output is pasted below it:
//
// import torch, transformers
// from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup
// torch.set_default_dtype(torch.float64)
// P1 = [[0.5, -1.2, 0.3], [2.0, -0.7, 0.05]]
// P2 = [0.9, -0.4, 1.5, -2.2]
// A = [[1.0, 0.5, -2.0], [0.25, 3.0, -1.0]]
// B = [0.7, -1.3, 2.1, 0.4]
// LRS = [0.1, 0.05, 0.08, 0.02, 0.1]
// SKIP_P2 = 2  # step index at which p2 gets no gradient
//
// def fmt(name, xs):
//     return f"const {name}: [f64; {len(xs)}] = [{', '.join(repr(float(x)) for x in xs)}];"
//
// def run(make_opt):
//     p1 = torch.tensor(P1, requires_grad=True); p2 = torch.tensor(P2, requires_grad=True)
//     a = torch.tensor(A); b = torch.tensor(B)
//     opt = make_opt([p1, p2])
//     for k, lr in enumerate(LRS):
//         for g in opt.param_groups: g["lr"] = lr
//         opt.zero_grad(set_to_none=True)
//         loss = (a * p1 * p1).sum()
//         if k != SKIP_P2: loss = loss + (b * torch.tanh(p2)).sum()
//         loss.backward(); opt.step()
//     return p1.detach().flatten().tolist() + p2.detach().tolist(), opt
//
// print("// torch", torch.__version__, "transformers", transformers.__version__)
// out, opt = run(lambda ps: torch.optim.AdamW(ps, lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, foreach=False))
// print(fmt("ADAMW_PARAMS", out))
// st = opt.state[opt.param_groups[0]["params"][1]]
// print(fmt("ADAMW_P2_EXP_AVG_SQ", st["exp_avg_sq"].tolist()), "// p2 step", int(st["step"]))
// out, _ = run(lambda ps: torch.optim.AdamW(ps, lr=0.1, betas=(0.3, 0.8), eps=1e-3, weight_decay=0.0, foreach=False))
// print(fmt("ADAMW_LOWBETA_PARAMS", out))
// out, _ = run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01, foreach=False))
// print(fmt("SGD_PARAMS", out))
// out, _ = run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.0, weight_decay=0.0, foreach=False))
// print(fmt("SGD_PLAIN_PARAMS", out))
//
// dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
// STEPS = [0, 1, 3, 7, 10, 11, 25, 30, 49, 50]
// cos = get_cosine_with_min_lr_schedule_with_warmup(dummy, num_warmup_steps=10, num_training_steps=50, min_lr_rate=0.1)
// print(fmt("COSINE_FACTORS", [cos.lr_lambdas[0](k) for k in STEPS]))
// const = get_constant_schedule_with_warmup(dummy, num_warmup_steps=7)
// print(fmt("CONSTANT_FACTORS", [const.lr_lambdas[0](k) for k in STEPS]))
//
// G1 = [[0.3, -1.1, 2.4], [0.8, -0.05, 1.7]]
// G2 = [-2.5, 0.6, 0.0, 1.25]
// for max_norm in (1.0, 100.0):
//     q1 = torch.zeros(2, 3, requires_grad=True); q2 = torch.zeros(4, requires_grad=True)
//     q1.grad = torch.tensor(G1); q2.grad = torch.tensor(G2)
//     n = torch.nn.utils.clip_grad_norm_([q1, q2], max_norm)
//     tag = "CLIP" if max_norm < 10 else "NOCLIP"
//     print(f"const {tag}_NORM: f64 = {float(n)!r};")
//     print(fmt(f"{tag}_GRADS", q1.grad.flatten().tolist() + q2.grad.tolist()))

// torch 2.15.0+cu132 transformers 5.24.0
const ADAMW_PARAMS: [f64; 10] = [
    0.14759704699126208,
    -0.8158621041768866,
    0.6354909816071151,
    1.5870271006879062,
    -0.33621906142949476,
    0.38040543757693307,
    0.607826807129461,
    -0.12138097833828093,
    1.1918706153928986,
    -2.4065729772226914,
];
const ADAMW_P2_EXP_AVG_SQ: [f64; 4] =
    [0.0063496197938435585, 0.0561047804752266, 0.0090206376047356, 1.072592882291564e-05]; // p2 step 4
const ADAMW_LOWBETA_PARAMS: [f64; 10] = [
    0.1834302016799884,
    -0.8612615541617501,
    0.6729005345782869,
    1.6565394926631998,
    -0.37116922064024316,
    0.43990434302908066,
    0.6238524740933381,
    -0.12700762852911252,
    1.2217369635950202,
    -2.444462274806196,
];
const SGD_PARAMS: [f64; 10] = [
    -0.12436893066569711,
    -0.2942665597178951,
    2.244156793141934,
    1.1676901641541317,
    0.3628161880069679,
    0.17143759243055828,
    0.6818676878705767,
    0.3074237941874565,
    1.2482593301379155,
    -2.198329821989777,
];
const SGD_PLAIN_PARAMS: [f64; 10] = [
    0.23224320000000004,
    -0.83253744,
    1.00590336,
    1.6725851999999997,
    -0.03587583999999999,
    0.09554688000000001,
    0.8036561671949384,
    -0.07948973333360332,
    1.390522441585539,
    -2.205158082239325,
];
const COSINE_FACTORS: [f64; 10] =
    [0.0, 0.1, 0.3, 0.7, 1.0, 0.9986128001799076, 0.7222075445642904, 0.55, 0.10138719982009242, 0.1];
const CONSTANT_FACTORS: [f64; 10] = [0.0, 0.14285714285714285, 0.42857142857142855, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
const CLIP_NORM: f64 = 4.331858723458096;
const CLIP_GRADS: [f64; 10] = [
    0.06925432011923782,
    -0.25393250710387205,
    0.5540345609539026,
    0.18467818698463423,
    -0.01154238668653964,
    0.3924411473423477,
    -0.5771193343269819,
    0.13850864023847564,
    0.0,
    0.28855966716349096,
];
const NOCLIP_NORM: f64 = 4.331858723458096;
const NOCLIP_GRADS: [f64; 10] = [0.3, -1.1, 2.4, 0.8, -0.05, 1.7, -2.5, 0.6, 0.0, 1.25];

const P1: [f64; 6] = [0.5, -1.2, 0.3, 2.0, -0.7, 0.05];
const P2: [f64; 4] = [0.9, -0.4, 1.5, -2.2];
const A: [f64; 6] = [1.0, 0.5, -2.0, 0.25, 3.0, -1.0];
const B: [f64; 4] = [0.7, -1.3, 2.1, 0.4];
const LRS: [f64; 5] = [0.1, 0.05, 0.08, 0.02, 0.1];
const SKIP_P2: usize = 2;
const STEPS: [usize; 10] = [0, 1, 3, 7, 10, 11, 25, 30, 49, 50];

fn t64(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, Device::Cpu).unwrap()
}

/// A copy with its own storage (as a checkpoint file would hold), same dtype.
fn deep_copy(t: &Tensor) -> Tensor {
    Tensor::from_vec(t.to_vec::<f64>().unwrap(), t.shape(), Device::Cpu).unwrap().to_dtype(t.dtype()).unwrap()
}

fn bf16_round(x: f64) -> f64 {
    t64(&[x], &[1]).to_dtype(DType::BF16).unwrap().to_scalar::<f64>().unwrap()
}

fn assert_all_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}: element {i}: got {g}, want {w} (diff {:e})", (g - w).abs());
    }
}

/// The reference script's two parameters as `(name, variable)` pairs.
fn reference_params() -> Vec<(String, Tensor)> {
    vec![("p1".into(), t64(&P1, &[2, 3]).variable()), ("p2".into(), t64(&P2, &[4]).variable())]
}

/// The reference loss `Σ a·p1² + Σ b·tanh(p2)` (p2's term left out at `SKIP_P2`) and its gradients.
fn reference_grads(params: &[(String, Tensor)], k: usize) -> GradStore {
    let (p1, p2) = (&params[0].1, &params[1].1);
    let mut loss = t64(&A, &[2, 3]).mul(p1).unwrap().mul(p1).unwrap().sum_all().unwrap();
    if k != SKIP_P2 {
        loss = loss.add(&p2.tanh().unwrap().mul(&t64(&B, &[4])).unwrap().sum_all().unwrap()).unwrap();
    }
    loss.backward().unwrap()
}

fn flat(params: &[(String, Tensor)]) -> Vec<f64> {
    params.iter().flat_map(|(_, t)| t.to_vec::<f64>().unwrap()).collect()
}

fn run_adamw(cfg: AdamWConfig) -> (Vec<(String, Tensor)>, AdamW) {
    let params = reference_params();
    let mut opt = AdamW::new(cfg).unwrap();
    for (k, &lr) in LRS.iter().enumerate() {
        opt.step(&params, &reference_grads(&params, k), lr).unwrap();
    }
    (params, opt)
}

fn run_sgd(cfg: SgdConfig) -> Vec<(String, Tensor)> {
    let params = reference_params();
    let mut opt = Sgd::new(cfg).unwrap();
    for (k, &lr) in LRS.iter().enumerate() {
        opt.step(&params, &reference_grads(&params, k), lr).unwrap();
    }
    params
}

#[test]
fn adamw_matches_torch() {
    let cfg = AdamWConfig { lr: 0.1, betas: (0.9, 0.99), eps: 1e-8, weight_decay: 0.1 };
    let (params, opt) = run_adamw(cfg);
    assert_all_close("AdamW params", &flat(&params), &ADAMW_PARAMS, 1e-10);
    // p2 skipped one step, so its own step count (as torch's per-parameter `step`) is 4.
    assert_eq!(opt.step_count("p1"), Some(5));
    assert_eq!(opt.step_count("p2"), Some(4));
    let state = opt.state_tensors().unwrap();
    let v2 = &state.iter().find(|(n, _)| n == "p2.exp_avg_sq").unwrap().1;
    assert_all_close("AdamW p2 exp_avg_sq", &v2.to_vec::<f64>().unwrap(), &ADAMW_P2_EXP_AVG_SQ, 1e-10);
}

#[test]
fn adamw_low_beta1_matches_torch() {
    // β1 = 0.3 takes torch's other lerp branch (weight 0.7 ≥ 0.5); no weight decay.
    let cfg = AdamWConfig { lr: 0.1, betas: (0.3, 0.8), eps: 1e-3, weight_decay: 0.0 };
    let (params, _) = run_adamw(cfg);
    assert_all_close("AdamW (β1 = 0.3) params", &flat(&params), &ADAMW_LOWBETA_PARAMS, 1e-10);
}

#[test]
fn sgd_matches_torch() {
    let params = run_sgd(SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.01 });
    assert_all_close("SGD momentum params", &flat(&params), &SGD_PARAMS, 1e-10);
    let params = run_sgd(SgdConfig { lr: 0.1, momentum: 0.0, weight_decay: 0.0 });
    assert_all_close("SGD plain params", &flat(&params), &SGD_PLAIN_PARAMS, 1e-10);
}

#[test]
fn schedules_match_transformers() {
    let cos = LrSchedule::WarmupCosine { warmup_steps: 10, total_steps: 50, min_ratio: 0.1 };
    let got: Vec<f64> = STEPS.iter().map(|&k| cos.factor(k)).collect();
    assert_all_close("warmup-cosine factors", &got, &COSINE_FACTORS, 1e-10);
    // Past total_steps we stay at min_ratio (transformers' cosine would rise again).
    for k in [51, 60, 90, 10_000] {
        assert!((cos.factor(k) - 0.1).abs() < 1e-15, "flat after total_steps: factor({k}) = {}", cos.factor(k));
    }
    let constant = LrSchedule::WarmupConstant { warmup_steps: 7 };
    let got: Vec<f64> = STEPS.iter().map(|&k| constant.factor(k)).collect();
    assert_all_close("warmup-constant factors", &got, &CONSTANT_FACTORS, 1e-10);
    assert_eq!(LrSchedule::Constant.factor(0), 1.0);
    assert_eq!(cos.lr(2e-4, 30), 2e-4 * 0.55);
    // Degenerate spans do not divide by zero.
    let no_warmup = LrSchedule::WarmupCosine { warmup_steps: 0, total_steps: 0, min_ratio: 0.0 };
    assert_eq!(no_warmup.factor(0), 1.0);
    assert_eq!(no_warmup.factor(1), 0.0);
    assert_eq!(LrSchedule::WarmupConstant { warmup_steps: 0 }.factor(0), 1.0);
}

#[test]
fn warmup_stable_cosine_is_flat_then_the_cosine_tail() {
    let wsd = LrSchedule::WarmupStableCosine { warmup_steps: 10, decay_start: 30, total_steps: 50, min_ratio: 0.1 };
    // Warmup as the plain cosine's, flat at 1 until the decay starts.
    for k in 0..10 {
        assert_eq!(wsd.factor(k), k as f64 / 10.0);
    }
    for k in 10..=30 {
        assert_eq!(wsd.factor(k), 1.0, "stable phase at step {k}");
    }
    // The tail is the cosine of a schedule whose warmup ended at the decay start.
    let tail = LrSchedule::WarmupCosine { warmup_steps: 30, total_steps: 50, min_ratio: 0.1 };
    for k in 30..80 {
        assert!((wsd.factor(k) - tail.factor(k)).abs() < 1e-15, "step {k}");
    }
    assert!((wsd.factor(40) - 0.55).abs() < 1e-12);
    // A decay start inside the warmup is the plain warmup-cosine.
    let cos = LrSchedule::WarmupCosine { warmup_steps: 10, total_steps: 50, min_ratio: 0.1 };
    let early = LrSchedule::WarmupStableCosine { warmup_steps: 10, decay_start: 3, total_steps: 50, min_ratio: 0.1 };
    for k in 0..60 {
        assert_eq!(early.factor(k), cos.factor(k), "step {k}");
    }
}

fn clip_case(max_norm: f64) -> (f64, Vec<f64>, f64) {
    let q1 = Tensor::zeros(&[2, 3], DType::F64, Device::Cpu).unwrap().variable();
    let q2 = Tensor::zeros(&[4], DType::F64, Device::Cpu).unwrap().variable();
    let mut grads = GradStore::new();
    grads.insert(&q1, t64(&[0.3, -1.1, 2.4, 0.8, -0.05, 1.7], &[2, 3]));
    grads.insert(&q2, t64(&[-2.5, 0.6, 0.0, 1.25], &[4]));
    let params = [q1.clone(), q2.clone()];
    let before = grad_norm(&grads, &params).unwrap();
    let norm = clip_grad_norm(&mut grads, &params, max_norm).unwrap();
    assert_eq!(before, norm, "grad_norm and clip_grad_norm agree");
    let after: Vec<f64> = params.iter().flat_map(|p| grads.get(p).unwrap().to_vec::<f64>().unwrap()).collect();
    (norm, after, grad_norm(&grads, &params).unwrap())
}

#[test]
fn clip_grad_norm_matches_torch() {
    let (norm, grads, after) = clip_case(1.0);
    assert!((norm - CLIP_NORM).abs() <= 1e-10, "norm {norm} vs {CLIP_NORM}");
    assert_all_close("clipped grads", &grads, &CLIP_GRADS, 1e-10);
    assert!((after - 1.0).abs() < 1e-6, "norm after clipping {after}");
    let (norm, grads, _) = clip_case(100.0);
    assert!((norm - NOCLIP_NORM).abs() <= 1e-10);
    assert_all_close("unclipped grads", &grads, &NOCLIP_GRADS, 0.0);
}

#[test]
fn clip_grad_norm_ignores_params_without_grads_and_duplicates() {
    let q1 = t64(&[1.0, 2.0], &[2]).variable();
    let q2 = t64(&[1.0], &[1]).variable();
    let mut grads = GradStore::new();
    grads.insert(&q1, t64(&[3.0, 4.0], &[2]));
    let norm = clip_grad_norm(&mut grads, &[q1.clone(), q2.clone(), q1.clone()], 2.5).unwrap();
    assert_eq!(norm, 5.0);
    let g = grads.get(&q1).unwrap().to_vec::<f64>().unwrap();
    let c = 2.5 / (5.0 + 1e-6);
    assert_all_close("clipped once", &g, &[3.0 * c, 4.0 * c], 1e-15);
    assert!(grads.get(&q2).is_none());
    assert!(clip_grad_norm(&mut grads, std::slice::from_ref(&q1), 0.0).is_err());
    assert!(clip_grad_norm(&mut grads, &[q1], f64::NAN).is_err());
}

/// Many AdamW steps of ~1e-4 on bf16 parameters at 1.0 (bf16 spacing there is 2⁻⁸ below and
/// 2⁻⁷ above): each alone rounds away in bf16, but the f32 master accumulates them.
#[test]
fn bf16_params_keep_an_f32_master() {
    let n = 5;
    let start = Tensor::ones(&[n], DType::F32, Device::Cpu).unwrap();
    let p = start.to_dtype(DType::BF16).unwrap().variable();
    let params = vec![("w".to_string(), p.clone())];
    let cfg = AdamWConfig { lr: 1e-4, weight_decay: 0.0, ..Default::default() };
    let mut opt = AdamW::new(cfg).unwrap();
    let grad = Tensor::full(0.5, &[n], DType::BF16, Device::Cpu).unwrap();
    let steps = 200;
    for _ in 0..steps {
        let mut grads = GradStore::new();
        grads.insert(&p, grad.clone());
        opt.step(&params, &grads, cfg.lr).unwrap();
    }
    // With a constant gradient every Adam step moves by lr·(1 - β1ᵗ)/√(1 - β2ᵗ)·|g|/(|g| + ε')
    // ≈ lr, so the master sits near 1 - steps·lr = 0.98.
    let state = opt.state_tensors().unwrap();
    let master = &state.iter().find(|(k, _)| k == "w.master").expect("bf16 parameter has a master").1;
    assert_eq!(master.dtype(), DType::F32);
    let m = master.to_vec::<f64>().unwrap();
    for &v in &m {
        assert!((v - (1.0 - steps as f64 * 1e-4)).abs() < 2e-4, "master {v}");
    }
    // The parameter is the master rounded to bf16, not 1.0 (where plain bf16 updates would stay).
    let got = p.to_vec::<f64>().unwrap();
    let rounded = master.to_dtype(DType::BF16).unwrap().to_vec::<f64>().unwrap();
    assert_eq!(got, rounded);
    assert!(got.iter().all(|&g| g < 1.0), "{got:?}");
    // A single step on a bf16 tensor without a master would not move it: 1 - 1e-4 rounds to 1.
    assert_eq!(bf16_round(1.0 - 1e-4), 1.0);
}

#[test]
fn sgd_bf16_and_f16_use_the_master() {
    for dtype in [DType::BF16, DType::F16] {
        let p = Tensor::ones(&[3], dtype, Device::Cpu).unwrap().variable();
        let params = vec![("w".to_string(), p.clone())];
        let mut opt = Sgd::new(SgdConfig { lr: 1e-5, momentum: 0.0, weight_decay: 0.0 }).unwrap();
        for _ in 0..1000 {
            let mut grads = GradStore::new();
            grads.insert(&p, Tensor::ones(&[3], dtype, Device::Cpu).unwrap());
            opt.step(&params, &grads, 1e-5).unwrap();
        }
        let master = opt.state_tensors().unwrap().into_iter().find(|(k, _)| k == "w.master").unwrap().1;
        for v in master.to_vec::<f64>().unwrap() {
            // 1000 f32 additions of 1e-5 near 1 carry up to ~6e-5 of rounding.
            assert!((v - 0.99).abs() < 1e-4, "{dtype}: master {v}");
        }
        for v in p.to_vec::<f64>().unwrap() {
            assert!(v < 1.0 && (v - 0.99).abs() < 5e-3, "{dtype}: param {v}");
        }
    }
}

/// Mixed-precision parameters with gradients from a fixed loss.
fn mixed_params() -> Vec<(String, Tensor)> {
    let mk = |seed, shape: &[usize], dt| {
        Tensor::rand_normal(0.0, 1.0, shape, DType::F32, Device::Cpu, seed).unwrap().to_dtype(dt).unwrap().variable()
    };
    vec![
        ("a".into(), mk(1, &[3, 4], DType::F32)),
        ("b".into(), mk(2, &[4], DType::BF16)),
        ("c".into(), mk(3, &[2, 2], DType::F64)),
    ]
}

fn mixed_grads(params: &[(String, Tensor)], k: usize) -> GradStore {
    let mut grads = GradStore::new();
    for (i, (_, p)) in params.iter().enumerate() {
        let g = Tensor::rand_normal(0.0, 1.0, p.shape(), p.dtype(), Device::Cpu, (100 * k + i) as u64).unwrap();
        grads.insert(p, g);
    }
    grads
}

fn snapshot(params: &[(String, Tensor)]) -> Vec<Vec<f64>> {
    params.iter().map(|(_, t)| t.to_vec::<f64>().unwrap()).collect()
}

#[test]
fn state_round_trip_continues_identically() {
    let cfg = AdamWConfig { lr: 0.05, weight_decay: 0.1, ..Default::default() };
    let params = mixed_params();
    let mut opt = AdamW::new(cfg).unwrap();
    for k in 0..3 {
        opt.step(&params, &mixed_grads(&params, k), cfg.lr).unwrap();
    }
    let saved_state = opt.state_tensors().unwrap();
    let names: Vec<&str> = saved_state.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "a.step",
            "a.exp_avg",
            "a.exp_avg_sq",
            "b.step",
            "b.exp_avg",
            "b.exp_avg_sq",
            "b.master",
            "c.step",
            "c.exp_avg",
            "c.exp_avg_sq"
        ]
    );
    let saved_state: Vec<(String, Tensor)> = saved_state.iter().map(|(n, t)| (n.clone(), deep_copy(t))).collect();
    let saved_params: Vec<Tensor> = params.iter().map(|(_, t)| deep_copy(t)).collect();

    for k in 3..6 {
        opt.step(&params, &mixed_grads(&params, k), cfg.lr).unwrap();
    }
    let continued = snapshot(&params);
    let continued_state: Vec<Vec<f64>> =
        opt.state_tensors().unwrap().iter().map(|(_, t)| t.to_vec::<f64>().unwrap()).collect();

    // Restore parameters and state into fresh handles and a fresh optimizer, then replay.
    let restored: Vec<(String, Tensor)> =
        params.iter().zip(&saved_params).map(|((n, _), t)| (n.clone(), deep_copy(t).variable())).collect();
    let mut opt2 = AdamW::new(cfg).unwrap();
    opt2.load_state(&restored, &saved_state).unwrap();
    assert_eq!(opt2.step_count("b"), Some(3));
    for k in 3..6 {
        opt2.step(&restored, &mixed_grads(&restored, k), cfg.lr).unwrap();
    }
    assert_eq!(snapshot(&restored), continued, "parameters after resuming");
    let resumed_state: Vec<Vec<f64>> =
        opt2.state_tensors().unwrap().iter().map(|(_, t)| t.to_vec::<f64>().unwrap()).collect();
    assert_eq!(resumed_state, continued_state, "state after resuming");

    // Without the state the replay differs (so the comparison above can fail).
    let fresh: Vec<(String, Tensor)> =
        params.iter().zip(&saved_params).map(|((n, _), t)| (n.clone(), deep_copy(t).variable())).collect();
    let mut opt3 = AdamW::new(cfg).unwrap();
    for k in 3..6 {
        opt3.step(&fresh, &mixed_grads(&fresh, k), cfg.lr).unwrap();
    }
    assert_ne!(snapshot(&fresh), continued);
}

#[test]
fn sgd_state_round_trip() {
    let cfg = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.0 };
    let params = mixed_params();
    let mut opt = Sgd::new(cfg).unwrap();
    opt.step(&params, &mixed_grads(&params, 0), cfg.lr).unwrap();
    let state = opt.state_tensors().unwrap();
    assert!(state.iter().any(|(n, _)| n == "a.momentum_buffer"));
    assert!(state.iter().any(|(n, _)| n == "b.master"));
    let restored: Vec<(String, Tensor)> = params.iter().map(|(n, t)| (n.clone(), deep_copy(t).variable())).collect();
    let mut opt2 = Sgd::new(cfg).unwrap();
    opt2.load_state(&restored, &state).unwrap();
    opt.step(&params, &mixed_grads(&params, 1), cfg.lr).unwrap();
    opt2.step(&restored, &mixed_grads(&restored, 1), cfg.lr).unwrap();
    assert_eq!(snapshot(&params), snapshot(&restored));
}

fn err_text<T>(r: vlm4vla::engine::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn load_state_errors_name_the_tensor() {
    let cfg = AdamWConfig::default();
    let params = mixed_params();
    let mut opt = AdamW::new(cfg).unwrap();
    opt.step(&params, &mixed_grads(&params, 0), 1e-3).unwrap();
    let state = opt.state_tensors().unwrap();
    let without = |name: &str| -> Vec<(String, Tensor)> { state.iter().filter(|(n, _)| n != name).cloned().collect() };

    let mut fresh = AdamW::new(cfg).unwrap();
    let e = err_text(fresh.load_state(&params, &without("a.exp_avg_sq")));
    assert!(e.contains("a.exp_avg_sq") && e.contains("missing"), "{e}");
    let e = err_text(fresh.load_state(&params, &without("b.master")));
    assert!(e.contains("b.master"), "{e}");
    let e = err_text(fresh.load_state(&params, &without("c.step")));
    assert!(e.contains("c.step"), "{e}");

    let mut bad_shape = state.clone();
    bad_shape.iter_mut().find(|(n, _)| n == "a.exp_avg").unwrap().1 =
        Tensor::zeros(&[4, 3], DType::F32, Device::Cpu).unwrap();
    let e = err_text(fresh.load_state(&params, &bad_shape));
    assert!(e.contains("a.exp_avg") && e.contains("[4, 3]"), "{e}");

    let mut extra = state.clone();
    extra.push(("zzz.exp_avg".into(), Tensor::zeros(&[1], DType::F32, Device::Cpu).unwrap()));
    let e = err_text(fresh.load_state(&params, &extra));
    assert!(e.contains("zzz.exp_avg"), "{e}");

    let mut bad_step = state.clone();
    bad_step.iter_mut().find(|(n, _)| n == "a.step").unwrap().1 = t64(&[1.5], &[]);
    let e = err_text(fresh.load_state(&params, &bad_step));
    assert!(e.contains("a.step"), "{e}");

    // Failed loads leave the optimizer as it was; a good load then works, and an empty one resets.
    assert_eq!(fresh.step_count("a"), None);
    fresh.load_state(&params, &state).unwrap();
    assert_eq!(fresh.step_count("a"), Some(1));
    fresh.load_state(&params, &[]).unwrap();
    assert_eq!(fresh.step_count("a"), None);
}

#[test]
fn step_errors() {
    assert!(AdamW::new(AdamWConfig { betas: (1.0, 0.999), ..Default::default() }).is_err());
    assert!(AdamW::new(AdamWConfig { eps: -1.0, ..Default::default() }).is_err());
    assert!(AdamW::new(AdamWConfig { lr: f64::NAN, ..Default::default() }).is_err());
    assert!(Sgd::new(SgdConfig { momentum: -0.5, ..Default::default() }).is_err());

    let params = reference_params();
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    let grads = reference_grads(&params, 0);
    assert!(opt.step(&params, &grads, f64::INFINITY).is_err());
    assert!(opt.step(&params, &grads, -1.0).is_err());

    let mut wrong = GradStore::new();
    wrong.insert(&params[0].1, t64(&[1.0, 2.0], &[2]));
    let e = err_text(opt.step(&params, &wrong, 1e-3));
    assert!(e.contains("p1") && e.contains("[2]"), "{e}");

    let dup = vec![params[0].clone(), ("p1".to_string(), params[1].1.clone())];
    let e = err_text(opt.step(&dup, &grads, 1e-3));
    assert!(e.contains("p1"), "{e}");

    let transposed = t64(&P1, &[2, 3]).t().unwrap().variable();
    let mut g = GradStore::new();
    g.insert(&transposed, Tensor::zeros(&[3, 2], DType::F64, Device::Cpu).unwrap());
    let e = err_text(opt.step(&vec![("t".to_string(), transposed)], &g, 1e-3));
    assert!(e.contains("contiguous"), "{e}");

    // A parameter whose dtype family changed after its first step.
    let p = t64(&[1.0], &[1]).variable();
    let mut g = GradStore::new();
    g.insert(&p, t64(&[1.0], &[1]));
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    opt.step(&vec![("x".to_string(), p.clone())], &g, 1e-3).unwrap();
    let p32 = p.to_dtype(DType::F32).unwrap().detach().variable();
    let mut g = GradStore::new();
    g.insert(&p32, Tensor::ones(&[1], DType::F32, Device::Cpu).unwrap());
    let e = err_text(opt.step(&vec![("x".to_string(), p32)], &g, 1e-3));
    assert!(e.contains("x") && e.contains("precision"), "{e}");
}

/// The bits of every parameter and every optimizer state tensor.
fn bits(params: &[(String, Tensor)], state: &[(String, Tensor)]) -> Vec<(String, Vec<u64>)> {
    params
        .iter()
        .chain(state)
        .map(|(n, t)| (n.clone(), t.to_vec::<f64>().unwrap().into_iter().map(f64::to_bits).collect()))
        .collect()
}

/// Clipping inside the update (`step_clipped`, the norm left on the device) is bit for bit
/// `clip_grad_norm` then `step` on the CPU: f32, bf16 (through its master) and f64 parameters;
/// AdamW and SGD with and without momentum; the clip active (norm about 4.5 > 0.5) and not; a
/// parameter without a gradient and one listed twice; large tensors (the parallel path).
#[test]
fn clipping_inside_the_step_is_clip_then_step_bit_for_bit() {
    let big = |dt| Tensor::rand_normal(0.0, 1e-3, &[70_001], DType::F32, Device::Cpu, 9).unwrap().to_dtype(dt).unwrap();
    let make = || {
        let mut ps = mixed_params();
        ps.push(("big".into(), big(DType::F32).variable()));
        ps.push(("big16".into(), big(DType::BF16).variable()));
        ps.push(("no_grad".into(), Tensor::ones(&[3], DType::F32, Device::Cpu).unwrap().variable()));
        ps
    };
    let grads_of = |ps: &[(String, Tensor)], k: usize| {
        let mut g = mixed_grads(&ps[..3], k);
        for (i, (_, p)) in ps[3..5].iter().enumerate() {
            g.insert(p, Tensor::rand_normal(0.0, 1e-3, p.shape(), p.dtype(), Device::Cpu, (7 * k + i) as u64).unwrap());
        }
        g
    };
    let handles = |ps: &[(String, Tensor)]| -> Vec<Tensor> {
        let mut h: Vec<Tensor> = ps.iter().map(|(_, t)| t.clone()).collect();
        h.push(ps[0].1.clone());
        h
    };
    for max_norm in [0.5, 1e6] {
        for rule in 0..3 {
            let (fused, reference) = (make(), make());
            let (ht, hr) = (handles(&fused), handles(&reference));
            let sgd = |momentum| Sgd::new(SgdConfig { lr: 0.05, momentum, weight_decay: 0.01 }).unwrap();
            let adamw = || AdamW::new(AdamWConfig { lr: 0.05, ..Default::default() }).unwrap();
            let (mut fa, mut ra, mut fs, mut rs) =
                (adamw(), adamw(), sgd([0.0, 0.9][rule % 2]), sgd([0.0, 0.9][rule % 2]));
            for k in 0..4 {
                let lr = 0.05 / (k + 1) as f64;
                let gf = grads_of(&fused, k);
                let mut gr = grads_of(&reference, k);
                let norm = GradNorm::of(&gf, &ht).unwrap();
                let want = clip_grad_norm(&mut gr, &hr, max_norm).unwrap();
                assert_eq!(norm.read().unwrap().to_bits(), want.to_bits(), "the norm");
                assert_eq!(want > max_norm, max_norm < 1.0, "the clip is active exactly for the small max_norm");
                if rule == 2 {
                    fa.step_clipped(&fused, &gf, lr, &norm, max_norm).unwrap();
                    ra.step(&reference, &gr, lr).unwrap();
                } else {
                    fs.step_clipped(&fused, &gf, lr, &norm, max_norm).unwrap();
                    rs.step(&reference, &gr, lr).unwrap();
                }
            }
            let (sf, sr) = if rule == 2 {
                (fa.state_tensors().unwrap(), ra.state_tensors().unwrap())
            } else {
                (fs.state_tensors().unwrap(), rs.state_tensors().unwrap())
            };
            assert!(!sf.is_empty());
            let (bf, br) = (bits(&fused, &sf), bits(&reference, &sr));
            assert_eq!(bf.len(), br.len());
            for ((name, f), (_, r)) in bf.iter().zip(&br) {
                let first = f.iter().zip(r).position(|(a, b)| a != b);
                assert!(
                    first.is_none() && f.len() == r.len(),
                    "rule {rule}, max_norm {max_norm}: {name}[{first:?}] differs"
                );
            }
        }
    }
    // The max norm is checked as clip_grad_norm checks it.
    let ps = make();
    let g = grads_of(&ps, 0);
    let norm = GradNorm::of(&g, &handles(&ps)).unwrap();
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    assert!(opt.step_clipped(&ps, &g, 0.1, &norm, 0.0).is_err());
    assert!(opt.step_clipped(&ps, &g, 0.1, &norm, f64::NAN).is_err());
}

/// Tensors large enough for the parallel chunked path (and chunk boundaries) against the
/// update written out per element, in f64 and through a bf16 master.
#[test]
fn large_tensors_match_the_naive_update() {
    let n = 100_003;
    let p0 = Tensor::rand_normal(0.0, 1.0, &[n], DType::F64, Device::Cpu, 11).unwrap();
    let g = Tensor::rand_normal(0.0, 1.0, &[n], DType::F64, Device::Cpu, 12).unwrap();
    let (lr, wd, b1, b2, eps) = (0.01, 0.1, 0.9, 0.999, 1e-8);
    let cfg = AdamWConfig { lr, betas: (b1, b2), eps, weight_decay: wd };
    let naive = |p: f64, g: f64| {
        // Two steps with the same gradient.
        let (mut p, mut m, mut v) = (p, 0.0f64, 0.0f64);
        for t in 1..=2 {
            p *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let (bc1, bc2) = (1.0 - f64::powi(b1, t), 1.0 - f64::powi(b2, t));
            p -= lr / bc1 * m / (v.sqrt() / bc2.sqrt() + eps);
        }
        p
    };
    for dtype in [DType::F64, DType::BF16, DType::F32] {
        let p = p0.to_dtype(dtype).unwrap().variable();
        let start = p.to_vec::<f64>().unwrap();
        let gd = g.to_dtype(dtype).unwrap();
        let gv = gd.to_vec::<f64>().unwrap();
        let params = vec![("w".to_string(), p.clone())];
        let mut opt = AdamW::new(cfg).unwrap();
        for _ in 0..2 {
            let mut grads = GradStore::new();
            grads.insert(&p, gd.clone());
            opt.step(&params, &grads, lr).unwrap();
        }
        let got = p.to_vec::<f64>().unwrap();
        let master = opt.state_tensors().unwrap().into_iter().find(|(k, _)| k == "w.master").map(|(_, t)| t);
        let rounded_master = master.as_ref().map(|m| m.to_dtype(DType::BF16).unwrap().to_vec::<f64>().unwrap());
        let master = master.map(|m| m.to_vec::<f64>().unwrap());
        for i in 0..n {
            let want = naive(start[i], gv[i]);
            match dtype {
                DType::F64 => assert!((got[i] - want).abs() < 1e-12, "f64 element {i}: {} vs {want}", got[i]),
                DType::F32 => assert!((got[i] - want).abs() < 1e-5, "f32 element {i}: {} vs {want}", got[i]),
                _ => {
                    let m = master.as_ref().unwrap()[i];
                    assert!((m - want).abs() < 1e-5, "bf16 master element {i}: {m} vs {want}");
                    assert_eq!(got[i], rounded_master.as_ref().unwrap()[i], "bf16 element {i} is the rounded master");
                }
            }
        }
    }
}
