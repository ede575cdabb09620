//! Property tests of the loss family (cross_entropy, mse, huber, bce_with_logits) against naive
//! f64 references and against their composite twins, over odd shapes, strided views, every
//! reduction, ignored rows and extreme logits; plus the error paths.

// Naive references index plain arrays by position on purpose.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{arb_shape, arb_view, assert_close, config, count, input, tol, values, Nd, ViewKind};
use proptest::prelude::*;
use vlm4vla::engine::ops::{
    bce_with_logits, bce_with_logits_composite, cross_entropy, cross_entropy_composite, huber, huber_composite, mse,
    mse_composite, Reduction,
};
use vlm4vla::engine::{DType, Device, Result, Tensor};

const CPU: Device = Device::Cpu;

fn arb_float() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F64)]
}

fn arb_reduction() -> impl Strategy<Value = Reduction> {
    prop_oneof![Just(Reduction::Mean), Just(Reduction::Sum), Just(Reduction::None)]
}

/// The output of `f` on variables over `inputs` (same layouts; only those with `track` set), the
/// probe `p` (random, of the output's shape and dtype) and the gradients of `Σ out · p`.
fn run(
    inputs: &[Tensor],
    track: &[bool],
    seed: u64,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> (Tensor, Nd, Vec<Option<Tensor>>) {
    let vars: Vec<Tensor> =
        inputs.iter().zip(track).map(|(t, &tr)| if tr { t.variable() } else { t.detach() }).collect();
    let out = f(&vars).unwrap();
    let probe = Tensor::rand_uniform(0.5, 1.5, out.shape(), out.dtype(), CPU, seed ^ 0x9e37).unwrap();
    let grads = out.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
    let g = vars.iter().zip(track).map(|(v, &tr)| if tr { grads.get(v).cloned() } else { None }).collect();
    (out, values(&probe), g)
}

/// Compare two runs (fused against composite): outputs and every gradient.
fn assert_runs_close(
    op: &str,
    a: &(Tensor, Nd, Vec<Option<Tensor>>),
    b: &(Tensor, Nd, Vec<Option<Tensor>>),
    t: (f64, f64),
) {
    assert_close(op, &a.0, &values(&b.0), t.0, t.1);
    for (i, (ga, gb)) in a.2.iter().zip(&b.2).enumerate() {
        match (ga, gb) {
            (Some(ga), Some(gb)) => assert_close(&format!("{op} grad {i}"), ga, &values(gb), t.0, t.1),
            (None, None) => {}
            _ => panic!("{op}: gradient {i} present in one run only"),
        }
    }
}

/// Tolerances for fused against composite: the composite's sums accumulate in the storage type
/// (f32 sequential sums over up to a few thousand terms), the fused kernels in f64.
fn twin_tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-4, 1e-4),
        d => tol(d),
    }
}

fn all_finite(op: &str, t: &Tensor) {
    assert!(t.to_vec::<f64>().unwrap().iter().all(|v| v.is_finite()), "{op}: non-finite values in {t:?}");
}

// ----- cross-entropy ---------------------------------------------------------------------------

/// Deterministic targets: each row gets a class in `[0, c)` or, about one row in five,
/// `ignore_index`.
fn ce_targets(n: usize, c: usize, ignore: i64, seed: u64, strided: bool) -> Tensor {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as usize
    };
    let t: Vec<i64> = (0..n).map(|_| if next() % 5 == 0 { ignore } else { (next() % c) as i64 }).collect();
    if strided {
        // The same targets as a narrowed view of a longer vector.
        let mut long = vec![7i64; 1];
        long.extend(&t);
        long.push(7);
        Tensor::from_vec(long, &[n + 2], CPU).unwrap().narrow(0, 1, n).unwrap()
    } else {
        Tensor::from_vec(t, &[n], CPU).unwrap()
    }
}

/// Naive cross-entropy and its gradient for the upstream gradient `probe`.
fn ce_ref(x: &Nd, t: &[i64], ignore: i64, reduction: Reduction, probe: &Nd) -> (Nd, Nd) {
    let (n, c) = (x.shape[0], x.shape[1]);
    let mut losses = vec![0.0; n];
    let mut grad = Nd::zeros(&x.shape);
    let count = t.iter().filter(|&&v| v != ignore).count();
    for i in 0..n {
        if t[i] == ignore {
            continue;
        }
        let row: Vec<f64> = (0..c).map(|j| x.get(&[i, j])).collect();
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        losses[i] = lse - row[t[i] as usize];
        let g = match reduction {
            Reduction::None => probe.data[i],
            Reduction::Sum => probe.data[0],
            Reduction::Mean => probe.data[0] / count as f64,
        };
        for j in 0..c {
            let onehot = if j as i64 == t[i] { 1.0 } else { 0.0 };
            grad.set(&[i, j], g * ((row[j] - lse).exp() - onehot));
        }
    }
    let out = match reduction {
        Reduction::None => Nd { shape: vec![n], data: losses },
        Reduction::Sum => Nd { shape: vec![], data: vec![losses.iter().sum()] },
        Reduction::Mean => {
            Nd { shape: vec![], data: vec![if count == 0 { 0.0 } else { losses.iter().sum::<f64>() / count as f64 }] }
        }
    };
    (out, grad)
}

fn check_ce_ref(
    shape: &[usize],
    view: ViewKind,
    dtype: DType,
    reduction: Reduction,
    ignore: i64,
    seed: u64,
    range: f64,
) {
    let (n, c) = (shape[0], shape[1]);
    let x = input(shape, view, -range, range, dtype, seed, CPU);
    let t = ce_targets(n, c, ignore, seed, view == ViewKind::Narrowed);
    let tv = t.to_vec::<i64>().unwrap();
    let (out, probe, g) = run(std::slice::from_ref(&x), &[true], seed, |v| cross_entropy(&v[0], &t, ignore, reduction));
    let (want, want_grad) = ce_ref(&values(&x), &tv, ignore, reduction, &probe);
    let (atol, rtol) = tol(dtype);
    assert_eq!(out.dtype(), dtype);
    assert_close("cross_entropy", &out, &want, atol, rtol);
    assert_close("cross_entropy grad", g[0].as_ref().unwrap(), &want_grad, atol, rtol);
    all_finite("cross_entropy", &out);
    all_finite("cross_entropy grad", g[0].as_ref().unwrap());
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn cross_entropy_matches_reference(
        shape in arb_shape(2..=2, 4000),
        view in arb_view(),
        dtype in arb_float(),
        reduction in arb_reduction(),
        ignore in prop_oneof![Just(-100i64), Just(0i64)],
        seed in 0u64..1_000_000,
    ) {
        count("property", "cross_entropy", 1);
        check_ce_ref(&shape, view, dtype, reduction, ignore, seed, 5.0);
    }

    #[test]
    fn cross_entropy_matches_composite(
        shape in arb_shape(2..=2, 4000),
        view in arb_view(),
        dtype in arb_float(),
        reduction in arb_reduction(),
        seed in 0u64..1_000_000,
    ) {
        count("property", "cross_entropy", 1);
        let x = input(&shape, view, -5.0, 5.0, dtype, seed, CPU);
        let t = ce_targets(shape[0], shape[1], -100, seed, false);
        let fused = run(std::slice::from_ref(&x), &[true], seed, |v| cross_entropy(&v[0], &t, -100, reduction));
        let twin = run(&[x], &[true], seed, |v| cross_entropy_composite(&v[0], &t, -100, reduction));
        assert_runs_close("cross_entropy vs composite", &fused, &twin, twin_tol(dtype));
    }
}

#[test]
fn cross_entropy_bf16() {
    for (i, reduction) in [Reduction::Mean, Reduction::Sum, Reduction::None].into_iter().enumerate() {
        count("property", "cross_entropy", 1);
        check_ce_ref(&[13, 45], ViewKind::Transposed, DType::BF16, reduction, -100, 40 + i as u64, 4.0);
    }
}

#[test]
fn cross_entropy_extreme_logits_stay_finite() {
    for dtype in [DType::F32, DType::F64] {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            count("property", "cross_entropy", 1);
            // Signs of ±1e4 logits; row 0 is all equal, row 1 has its target at −1e4.
            let (n, c) = (6, 9);
            let signs = Tensor::rand_uniform(-1.0, 1.0, &[n, c], DType::F64, CPU, 5).unwrap().to_vec::<f64>().unwrap();
            let mut v: Vec<f64> = signs.iter().map(|s| 1e4 * s.signum()).collect();
            v[..c].iter_mut().for_each(|x| *x = 1e4);
            v[c + 3] = -1e4;
            v[c + 4] = 1e4;
            let x = Tensor::from_vec(v, &[n, c], CPU).unwrap().to_dtype(dtype).unwrap();
            let t = Tensor::from_vec(vec![2i64, 3, 0, -100, 8, 5], &[n], CPU).unwrap();
            let (out, probe, g) =
                run(std::slice::from_ref(&x), &[true], 3, |v| cross_entropy(&v[0], &t, -100, reduction));
            all_finite("cross_entropy", &out);
            all_finite("cross_entropy grad", g[0].as_ref().unwrap());
            let (want, want_grad) = ce_ref(&values(&x), &t.to_vec::<i64>().unwrap(), -100, reduction, &probe);
            let (atol, rtol) = tol(dtype);
            assert_close("cross_entropy extreme", &out, &want, atol, rtol);
            assert_close("cross_entropy extreme grad", g[0].as_ref().unwrap(), &want_grad, atol, rtol);
            let twin = run(&[x], &[true], 3, |v| cross_entropy_composite(&v[0], &t, -100, reduction));
            assert_runs_close("cross_entropy extreme vs composite", &(out, probe, g), &twin, twin_tol(dtype));
        }
    }
}

#[test]
fn cross_entropy_all_ignored_mean_is_zero_with_zero_gradient() {
    let x = Tensor::rand_normal(0.0, 1.0, &[4, 3], DType::F32, CPU, 1).unwrap().variable();
    let t = Tensor::from_vec(vec![-1i64; 4], &[4], CPU).unwrap();
    let l = cross_entropy(&x, &t, -1, Reduction::Mean).unwrap();
    assert_eq!(l.shape(), &[] as &[usize]);
    assert_eq!(l.to_scalar::<f32>().unwrap(), 0.0);
    let g = l.backward().unwrap();
    assert!(g.get(&x).unwrap().to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0));
    let per_row = cross_entropy(&x, &t, -1, Reduction::None).unwrap();
    assert_eq!(per_row.to_vec::<f32>().unwrap(), vec![0.0; 4]);
}

#[test]
fn cross_entropy_none_allows_masking() {
    // Per-row losses times a mask, summed: the gradient of masked rows is zero.
    let x = Tensor::rand_normal(0.0, 1.0, &[3, 5], DType::F64, CPU, 2).unwrap().variable();
    let t = Tensor::from_vec(vec![1i64, 4, 0], &[3], CPU).unwrap();
    let mask = Tensor::from_vec(vec![1.0, 0.0, 1.0], &[3], CPU).unwrap();
    let l = cross_entropy(&x, &t, -100, Reduction::None).unwrap().mul(&mask).unwrap().sum_all().unwrap();
    let g = l.backward().unwrap().get(&x).unwrap().to_vec::<f64>().unwrap();
    assert!(g[5..10].iter().all(|&v| v == 0.0));
    assert!(g[..5].iter().any(|&v| v != 0.0));
}

#[test]
fn cross_entropy_errors() {
    let x = Tensor::zeros(&[3, 4], DType::F32, CPU).unwrap();
    let t = |v: Vec<i64>| Tensor::from_vec(v.clone(), &[v.len()], CPU).unwrap();
    let err = cross_entropy(&x, &t(vec![0, 1, 4]), -100, Reduction::Mean).unwrap_err().to_string();
    assert!(err.contains("cross_entropy") && err.contains("row 2") && err.contains("target 4"), "{err}");
    let err = cross_entropy(&x, &t(vec![0, -3, 1]), -100, Reduction::Sum).unwrap_err().to_string();
    assert!(err.contains("row 1") && err.contains("-3"), "{err}");
    assert!(cross_entropy_composite(&x, &t(vec![0, 1, 4]), -100, Reduction::Mean).is_err());
    // Wrong target count, rank-1 or rank-3 logits.
    let err = cross_entropy(&x, &t(vec![0, 1]), -100, Reduction::Mean).unwrap_err().to_string();
    assert!(err.contains("[3, 4]") && err.contains("[2]"), "{err}");
    assert!(cross_entropy(&Tensor::zeros(&[4], DType::F32, CPU).unwrap(), &t(vec![0]), -100, Reduction::Mean).is_err());
    assert!(cross_entropy(&Tensor::zeros(&[2, 3, 4], DType::F32, CPU).unwrap(), &t(vec![0, 1]), -100, Reduction::None)
        .is_err());
    // Float targets, integer logits.
    let ft = Tensor::zeros(&[3], DType::F32, CPU).unwrap();
    assert!(cross_entropy(&x, &ft, -100, Reduction::Mean).is_err());
    let ix = Tensor::zeros(&[3, 4], DType::I64, CPU).unwrap();
    assert!(cross_entropy(&ix, &t(vec![0, 1, 2]), -100, Reduction::Mean).is_err());
}

// ----- pair losses -------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Pair {
    Mse,
    Huber(f64),
    Bce,
}

impl Pair {
    fn name(self) -> &'static str {
        match self {
            Pair::Mse => "mse",
            Pair::Huber(_) => "huber",
            Pair::Bce => "bce_with_logits",
        }
    }
    fn fused(self, p: &Tensor, t: &Tensor, r: Reduction) -> Result<Tensor> {
        match self {
            Pair::Mse => mse(p, t, r),
            Pair::Huber(d) => huber(p, t, d, r),
            Pair::Bce => bce_with_logits(p, t, r),
        }
    }
    fn composite(self, p: &Tensor, t: &Tensor, r: Reduction) -> Result<Tensor> {
        match self {
            Pair::Mse => mse_composite(p, t, r),
            Pair::Huber(d) => huber_composite(p, t, d, r),
            Pair::Bce => bce_with_logits_composite(p, t, r),
        }
    }
    /// Naive loss and `(∂/∂p, ∂/∂t)` of one element.
    fn naive(self, p: f64, t: f64) -> (f64, f64, f64) {
        match self {
            Pair::Mse => ((p - t) * (p - t), 2.0 * (p - t), -2.0 * (p - t)),
            Pair::Huber(delta) => {
                let d = p - t;
                if d.abs() < delta {
                    (0.5 * d * d, d, -d)
                } else {
                    (delta * (d.abs() - 0.5 * delta), delta * d.signum(), -delta * d.signum())
                }
            }
            Pair::Bce => {
                // −[t·log σ(p) + (1 − t)·log(1 − σ(p))], with log σ written stably.
                let log_sig = |x: f64| -((-x.abs()).exp().ln_1p() + (-x).max(0.0));
                let loss = -(t * log_sig(p) + (1.0 - t) * log_sig(-p));
                let sig = 1.0 / (1.0 + (-p).exp());
                (loss, sig - t, -p)
            }
        }
    }
    /// Values the operands are drawn from: (pred lo, pred hi, target lo, target hi).
    fn ranges(self) -> (f64, f64, f64, f64) {
        match self {
            Pair::Bce => (-8.0, 8.0, 0.0, 1.0),
            _ => (-3.0, 3.0, -3.0, 3.0),
        }
    }
}

fn arb_pair() -> impl Strategy<Value = Pair> {
    prop_oneof![Just(Pair::Mse), prop::sample::select(vec![0.5, 1.0, 2.5]).prop_map(Pair::Huber), Just(Pair::Bce)]
}

/// Naive pair loss and gradients of both operands for the upstream gradient `probe`.
fn pair_ref(kind: Pair, p: &Nd, t: &Nd, reduction: Reduction, probe: &Nd) -> (Nd, Nd, Nd) {
    let n = p.data.len();
    let mut losses = Vec::with_capacity(n);
    let (mut gp, mut gt) = (Nd::zeros(&p.shape), Nd::zeros(&p.shape));
    for i in 0..n {
        let (l, dp, dt) = kind.naive(p.data[i], t.data[i]);
        losses.push(l);
        let g = match reduction {
            Reduction::None => probe.data[i],
            Reduction::Sum => probe.data[0],
            Reduction::Mean => probe.data[0] / n as f64,
        };
        gp.data[i] = g * dp;
        gt.data[i] = g * dt;
    }
    let out = match reduction {
        Reduction::None => Nd { shape: p.shape.clone(), data: losses },
        Reduction::Sum => Nd { shape: vec![], data: vec![losses.iter().sum()] },
        Reduction::Mean => Nd { shape: vec![], data: vec![losses.iter().sum::<f64>() / n as f64] },
    };
    (out, gp, gt)
}

fn pair_inputs(kind: Pair, shape: &[usize], vp: ViewKind, vt: ViewKind, dtype: DType, seed: u64) -> (Tensor, Tensor) {
    let (plo, phi, tlo, thi) = kind.ranges();
    (input(shape, vp, plo, phi, dtype, seed, CPU), input(shape, vt, tlo, thi, dtype, seed + 1, CPU))
}

fn check_pair_ref(
    kind: Pair,
    shape: &[usize],
    vp: ViewKind,
    vt: ViewKind,
    dtype: DType,
    reduction: Reduction,
    seed: u64,
) {
    let (p, t) = pair_inputs(kind, shape, vp, vt, dtype, seed);
    let (out, probe, g) = run(&[p.clone(), t.clone()], &[true, true], seed, |v| kind.fused(&v[0], &v[1], reduction));
    let (want, want_p, want_t) = pair_ref(kind, &values(&p), &values(&t), reduction, &probe);
    let (atol, rtol) = tol(dtype);
    let op = kind.name();
    assert_eq!(out.dtype(), dtype);
    assert_close(op, &out, &want, atol, rtol);
    assert_close(&format!("{op} grad pred"), g[0].as_ref().unwrap(), &want_p, atol, rtol);
    assert_close(&format!("{op} grad target"), g[1].as_ref().unwrap(), &want_t, atol, rtol);
}

proptest! {
    #![proptest_config(config(144))]

    #[test]
    fn pair_losses_match_reference(
        kind in arb_pair(),
        shape in arb_shape(0..=4, 3000),
        vp in arb_view(),
        vt in arb_view(),
        dtype in arb_float(),
        reduction in arb_reduction(),
        seed in 0u64..1_000_000,
    ) {
        count("property", kind.name(), 1);
        check_pair_ref(kind, &shape, vp, vt, dtype, reduction, seed);
    }

    #[test]
    fn pair_losses_match_composite(
        kind in arb_pair(),
        shape in arb_shape(0..=4, 3000),
        vp in arb_view(),
        vt in arb_view(),
        dtype in arb_float(),
        reduction in arb_reduction(),
        seed in 0u64..1_000_000,
    ) {
        count("property", kind.name(), 1);
        let (p, t) = pair_inputs(kind, &shape, vp, vt, dtype, seed);
        let fused = run(&[p.clone(), t.clone()], &[true, true], seed, |v| kind.fused(&v[0], &v[1], reduction));
        let twin = run(&[p, t], &[true, true], seed, |v| kind.composite(&v[0], &v[1], reduction));
        assert_runs_close(&format!("{} vs composite", kind.name()), &fused, &twin, twin_tol(dtype));
    }
}

#[test]
fn pair_losses_bf16() {
    for (i, kind) in [Pair::Mse, Pair::Huber(1.0), Pair::Bce].into_iter().enumerate() {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            count("property", kind.name(), 1);
            check_pair_ref(
                kind,
                &[5, 45],
                ViewKind::Transposed,
                ViewKind::Narrowed,
                DType::BF16,
                reduction,
                70 + i as u64,
            );
        }
    }
}

#[test]
fn pair_losses_target_without_gradient() {
    // Only the prediction tracks: it gets its gradient and nothing fails on the target side.
    for kind in [Pair::Mse, Pair::Huber(1.0), Pair::Bce] {
        let (p, t) = pair_inputs(kind, &[4, 5], ViewKind::Contiguous, ViewKind::Contiguous, DType::F64, 9);
        let (_, probe, g) =
            run(&[p.clone(), t.clone()], &[true, false], 9, |v| kind.fused(&v[0], &v[1], Reduction::Mean));
        let (_, want_p, _) = pair_ref(kind, &values(&p), &values(&t), Reduction::Mean, &probe);
        let (atol, rtol) = tol(DType::F64);
        assert_close(kind.name(), g[0].as_ref().unwrap(), &want_p, atol, rtol);
    }
}

#[test]
fn bce_with_logits_extreme_logits_stay_finite() {
    for dtype in [DType::F32, DType::F64] {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            count("property", "bce_with_logits", 1);
            let x = Tensor::from_vec(vec![1e4, -1e4, 1e4, -1e4, 1e4, -1e4, 0.0, 30.0, -30.0], &[3, 3], CPU)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let t = Tensor::from_vec(vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0.0], &[3, 3], CPU)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let (out, probe, g) =
                run(&[x.clone(), t.clone()], &[true, true], 4, |v| bce_with_logits(&v[0], &v[1], reduction));
            all_finite("bce_with_logits", &out);
            all_finite("bce_with_logits grad", g[0].as_ref().unwrap());
            let (want, want_p, want_t) = pair_ref(Pair::Bce, &values(&x), &values(&t), reduction, &probe);
            let (atol, rtol) = tol(dtype);
            assert_close("bce_with_logits extreme", &out, &want, atol, rtol);
            assert_close("bce_with_logits extreme grad", g[0].as_ref().unwrap(), &want_p, atol, rtol);
            assert_close("bce_with_logits extreme grad target", g[1].as_ref().unwrap(), &want_t, atol, rtol);
        }
    }
}

#[test]
fn pair_loss_errors() {
    let a = Tensor::zeros(&[2, 3], DType::F32, CPU).unwrap();
    let b = Tensor::zeros(&[3, 2], DType::F32, CPU).unwrap();
    for kind in [Pair::Mse, Pair::Huber(1.0), Pair::Bce] {
        let err = kind.fused(&a, &b, Reduction::Mean).unwrap_err().to_string();
        assert!(err.contains(kind.name()) && err.contains("[2, 3]") && err.contains("[3, 2]"), "{err}");
        assert!(kind.composite(&a, &b, Reduction::Mean).is_err());
        // Mixed dtypes, integer operands.
        let d = Tensor::zeros(&[2, 3], DType::F64, CPU).unwrap();
        assert!(kind.fused(&a, &d, Reduction::Sum).is_err());
        let i = Tensor::zeros(&[2, 3], DType::I64, CPU).unwrap();
        assert!(kind.fused(&i, &i, Reduction::None).is_err());
    }
    assert!(huber(&a, &a, 0.0, Reduction::Mean).is_err());
    assert!(huber(&a, &a, -1.0, Reduction::Mean).is_err());
    assert!(huber(&a, &a, f64::NAN, Reduction::Mean).is_err());
    let bad = Tensor::from_vec(vec![0f32, 1., 1.5, 0., 0., 0.], &[2, 3], CPU).unwrap();
    let err = bce_with_logits(&a, &bad, Reduction::Mean).unwrap_err().to_string();
    assert!(err.contains("1.5") && err.contains("index 2"), "{err}");
    let neg = Tensor::from_vec(vec![0f32, 1., 0.5, -0.1, 0., 0.], &[2, 3], CPU).unwrap();
    assert!(bce_with_logits(&a, &neg, Reduction::None).is_err());
}

#[test]
fn empty_mean_is_zero() {
    let a = Tensor::zeros(&[0, 3], DType::F32, CPU).unwrap().variable();
    for kind in [Pair::Mse, Pair::Huber(1.0), Pair::Bce] {
        let l = kind.fused(&a, &a.detach(), Reduction::Mean).unwrap();
        assert_eq!(l.to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(l.backward().unwrap().get(&a).unwrap().shape(), &[0, 3]);
    }
}

#[test]
fn large_inputs_take_the_parallel_path() {
    // Above the kernels' 32768-element threshold for threads.
    for (i, reduction) in [Reduction::Mean, Reduction::Sum, Reduction::None].into_iter().enumerate() {
        count("property", "cross_entropy", 1);
        check_ce_ref(&[300, 123], ViewKind::Contiguous, DType::F32, reduction, -100, 90 + i as u64, 5.0);
        for kind in [Pair::Mse, Pair::Huber(1.0), Pair::Bce] {
            count("property", kind.name(), 1);
            check_pair_ref(kind, &[65, 45, 17], ViewKind::Transposed, ViewKind::Contiguous, DType::F32, reduction, 95);
        }
    }
}
