//! Property tests of the norm family (softmax, log_softmax, rms_norm, rms_norm_residual,
//! layer_norm, l2_normalize): forward against naive f64 references over odd shapes and strided
//! views in F32/F64/BF16, fused backward against the composite twins' backward, extreme values,
//! wide rows (8192) on the parallel path, and error paths.

// Naive references index plain arrays by position on purpose.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{arb_shape, arb_view, assert_close, config, count, input, tol, values, Nd, ViewKind};
use proptest::prelude::*;
use vlm4vla::engine::{DType, Device, Result, RmsNormKind, Tensor};

const CPU: Device = Device::Cpu;

// ----- naive references ----------------------------------------------------------------------------

/// Apply `f` to every line of `x` along `dim`.
fn along(x: &Nd, dim: usize, f: impl Fn(&[f64]) -> Vec<f64>) -> Nd {
    let mut out = Nd::zeros(&x.shape);
    let n = x.shape[dim];
    for i in 0..x.data.len() {
        let mut idx = x.index_of(i);
        if idx[dim] != 0 {
            continue;
        }
        let line: Vec<f64> = (0..n)
            .map(|k| {
                idx[dim] = k;
                x.get(&idx)
            })
            .collect();
        for (k, v) in f(&line).into_iter().enumerate() {
            idx[dim] = k;
            out.set(&idx, v);
        }
    }
    out
}

fn last(x: &Nd) -> usize {
    x.shape.len() - 1
}

fn naive_softmax(v: &[f64]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = v.iter().map(|&a| (a - m).exp()).sum();
    v.iter().map(|&a| (a - m).exp() / s).collect()
}

fn naive_log_softmax(v: &[f64]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = v.iter().map(|&a| (a - m).exp()).sum();
    v.iter().map(|&a| a - m - s.ln()).collect()
}

fn naive_rms(v: &[f64], w: Option<&[f64]>, eps: f64, kind: RmsNormKind) -> Vec<f64> {
    let ms = v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    v.iter()
        .enumerate()
        .map(|(j, &a)| {
            let s = match (w, kind) {
                (None, _) => 1.0,
                (Some(w), RmsNormKind::Plain) => w[j],
                (Some(w), RmsNormKind::Gemma) => 1.0 + w[j],
            };
            a * r * s
        })
        .collect()
}

fn naive_layer_norm(v: &[f64], w: Option<&[f64]>, b: Option<&[f64]>, eps: f64) -> Vec<f64> {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / n;
    let r = 1.0 / (var + eps).sqrt();
    v.iter().enumerate().map(|(j, &a)| (a - mean) * r * w.map_or(1.0, |w| w[j]) + b.map_or(0.0, |b| b[j])).collect()
}

fn naive_l2(v: &[f64], eps: f64) -> Vec<f64> {
    let n = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(eps);
    v.iter().map(|a| a / n).collect()
}

// ----- helpers ---------------------------------------------------------------------------------------

fn param(d: usize, lo: f64, hi: f64, dtype: DType, seed: u64) -> Tensor {
    Tensor::rand_uniform(lo, hi, &[d], dtype, CPU, seed).unwrap()
}

fn vals(t: Option<&Tensor>) -> Option<Vec<f64>> {
    t.map(|t| t.to_vec::<f64>().unwrap())
}

/// Gradients of `Σ f(inputs)·probe` for every input, as variables.
fn grads_of(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> Vec<Option<Tensor>> {
    let vars: Vec<Tensor> = inputs.iter().map(|t| t.variable()).collect();
    let out = f(&vars).unwrap();
    let probe = Tensor::rand_uniform(-1.0, 1.0, out.shape(), out.dtype(), CPU, 99).unwrap();
    let g = out.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter().map(|v| g.get(v).cloned()).collect()
}

/// The fused op's gradients match the composite twin's, within a tolerance scaled by the largest
/// reference gradient (parameter gradients are sums over many rows) and by `cond`, the
/// condition number of the inputs (how much input rounding the op amplifies; 1 when benign).
fn assert_grads_match(
    op: &str,
    inputs: &[Tensor],
    cond: f64,
    fused: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    composite: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) {
    let a = grads_of(inputs, fused);
    let b = grads_of(inputs, composite);
    let dtype = inputs[0].dtype();
    let rel = match dtype {
        DType::F64 => 1e-9,
        DType::F32 => 2e-4,
        _ => 5e-2,
    } * cond.max(1.0);
    for (i, (ga, gb)) in a.iter().zip(&b).enumerate() {
        let (ga, gb) = match (ga, gb) {
            (Some(ga), Some(gb)) => (ga, gb),
            (None, None) => continue,
            _ => panic!("{op}: input {i}: gradient present in one of fused/composite only"),
        };
        let reference = values(gb);
        let scale = reference.data.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        assert_close(&format!("{op} grad of input {i}"), ga, &reference, rel * scale, rel);
    }
}

fn float_dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F64)]
}

fn kind() -> impl Strategy<Value = RmsNormKind> {
    prop_oneof![Just(RmsNormKind::Plain), Just(RmsNormKind::Gemma)]
}

// ----- softmax / log_softmax -----------------------------------------------------------------------

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn softmax_matches_naive_and_composite(
        shape in arb_shape(1..=4, 4096),
        view in arb_view(),
        dtype in float_dtype(),
        dim_pick in 0usize..4,
        log in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let op = if log { "log_softmax" } else { "softmax" };
        count("property", op, 1);
        let dim = dim_pick % shape.len();
        let x = input(&shape, view, -6.0, 6.0, dtype, seed, CPU);
        let f = move |v: &[Tensor]| if log { v[0].log_softmax(dim) } else { v[0].softmax(dim) };
        let c = move |v: &[Tensor]| if log { v[0].log_softmax_composite(dim) } else { v[0].softmax_composite(dim) };
        let y = f(std::slice::from_ref(&x)).unwrap();
        let reference = along(&values(&x), dim, if log { naive_log_softmax } else { naive_softmax });
        let (atol, rtol) = tol(dtype);
        assert_close(op, &y, &reference, atol, rtol);
        assert_close(&format!("{op} vs composite"), &y, &values(&c(std::slice::from_ref(&x)).unwrap()), atol, rtol);
        assert_grads_match(op, &[x], 1.0, &f, &c);
    }

    #[test]
    fn softmax_is_stable_for_large_magnitudes(
        shape in arb_shape(1..=3, 2048),
        view in arb_view(),
        dtype in float_dtype(),
        log in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let op = if log { "log_softmax" } else { "softmax" };
        count("property", op, 1);
        // exp(±1e4) overflows/underflows in both f32 and f64 without the max shift.
        let x = input(&shape, view, -1e4, 1e4, dtype, seed, CPU);
        let y = if log { x.log_softmax(-1) } else { x.softmax(-1) }.unwrap();
        let got = y.to_vec::<f64>().unwrap();
        prop_assert!(got.iter().all(|v| v.is_finite()), "{op}: non-finite output at ±1e4");
        let reference = along(&values(&x), last(&values(&x)), if log { naive_log_softmax } else { naive_softmax });
        let (atol, rtol) = tol(dtype);
        assert_close(op, &y, &reference, atol, rtol);
        if !log {
            for row in got.chunks(*shape.last().unwrap()) {
                prop_assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-4);
            }
        }
    }
}

#[test]
fn softmax_bf16_and_extreme_rows() {
    for (i, shape) in [vec![7usize, 45], vec![3, 123], vec![5, 1]].into_iter().enumerate() {
        let x = input(&shape, ViewKind::Transposed, -4.0, 4.0, DType::BF16, i as u64, CPU);
        let (atol, rtol) = tol(DType::BF16);
        assert_close("softmax bf16", &x.softmax(-1).unwrap(), &along(&values(&x), 1, naive_softmax), atol, rtol);
        assert_close(
            "log_softmax bf16",
            &x.log_softmax(-1).unwrap(),
            &along(&values(&x), 1, naive_log_softmax),
            atol,
            rtol,
        );
        count("property", "softmax", 1);
        count("property", "log_softmax", 1);
    }
    // One dominant logit per row, mixed signs and huge gaps.
    let x = Tensor::from_vec(vec![1e4f32, -1e4, 0.0, 3.0, -3e4, -3e4 + 1.0, 2e4, 2e4], &[4, 2], CPU).unwrap();
    let y = x.softmax(-1).unwrap().to_vec::<f32>().unwrap();
    let expect = [1.0, 0.0, 1.0 / (1.0 + 3f32.exp()), 3f32.exp() / (1.0 + 3f32.exp())];
    for (a, b) in y.iter().zip(expect) {
        assert!((a - b).abs() < 1e-6, "{y:?}");
    }
    let ls = x.log_softmax(-1).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(ls[0], 0.0);
    assert_eq!(ls[1], -2e4);
    assert!((ls[6] + 2f32.ln()).abs() < 1e-6 && (ls[7] + 2f32.ln()).abs() < 1e-6);
}

// ----- rms_norm ----------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn rms_norm_matches_naive_and_composite(
        shape in arb_shape(1..=4, 4096),
        view in arb_view(),
        dtype in float_dtype(),
        with_weight in any::<bool>(),
        kind in kind(),
        seed in any::<u64>(),
    ) {
        count("property", "rms_norm", 1);
        let d = *shape.last().unwrap();
        let x = input(&shape, view, -3.0, 3.0, dtype, seed, CPU);
        let w = with_weight.then(|| param(d, -1.0, 1.5, dtype, seed ^ 1));
        let eps = 1e-6;
        let y = x.rms_norm(w.as_ref(), eps, kind).unwrap();
        let wv = vals(w.as_ref());
        let reference = along(&values(&x), last(&values(&x)), |r| naive_rms(r, wv.as_deref(), eps, kind));
        let (atol, rtol) = tol(dtype);
        assert_close("rms_norm", &y, &reference, atol, rtol);
        let twin = x.rms_norm_composite(w.as_ref(), eps, kind).unwrap();
        assert_close("rms_norm vs composite", &y, &values(&twin), atol, rtol);
        let inputs: Vec<Tensor> = std::iter::once(x).chain(w).collect();
        let fused = move |v: &[Tensor]| v[0].rms_norm(v.get(1), eps, kind);
        let comp = move |v: &[Tensor]| v[0].rms_norm_composite(v.get(1), eps, kind);
        assert_grads_match("rms_norm", &inputs, 1.0, &fused, &comp);
    }

    #[test]
    fn rms_norm_residual_is_add_then_norm(
        shape in arb_shape(1..=3, 2048),
        view in arb_view(),
        dtype in float_dtype(),
        kind in kind(),
        seed in any::<u64>(),
    ) {
        count("property", "rms_norm", 1);
        let d = *shape.last().unwrap();
        let x = input(&shape, view, -2.0, 2.0, dtype, seed, CPU);
        let r = input(&shape, ViewKind::Contiguous, -2.0, 2.0, dtype, seed ^ 7, CPU);
        let w = param(d, -0.5, 0.5, dtype, seed ^ 3);
        let eps = 1e-5;
        let (sum, normed) = x.rms_norm_residual(&r, Some(&w), eps, kind).unwrap();
        let mut s = values(&x);
        for (a, b) in s.data.iter_mut().zip(values(&r).data) {
            *a += b;
        }
        let (atol, rtol) = tol(dtype);
        assert_close("rms_norm_residual sum", &sum, &s, atol, rtol);
        let wv = w.to_vec::<f64>().unwrap();
        let reference = along(&values(&sum), last(&s), |row| naive_rms(row, Some(&wv), eps, kind));
        assert_close("rms_norm_residual normed", &normed, &reference, atol, rtol);
        // Gradients through both outputs, against the composite add + composite norm.
        let fused = move |v: &[Tensor]| {
            let (s, n) = v[0].rms_norm_residual(&v[1], Some(&v[2]), eps, kind)?;
            s.sqr()?.add(&n)
        };
        let comp = move |v: &[Tensor]| {
            let s = v[0].add(&v[1])?;
            s.sqr()?.add(&s.rms_norm_composite(Some(&v[2]), eps, kind)?)
        };
        assert_grads_match("rms_norm_residual", &[x, r, w], 1.0, &fused, &comp);
    }
}

#[test]
fn rms_norm_bf16_computes_in_f32() {
    for (i, shape) in [vec![6usize, 45], vec![2, 3, 123], vec![4, 1]].into_iter().enumerate() {
        for kind in [RmsNormKind::Plain, RmsNormKind::Gemma] {
            let d = *shape.last().unwrap();
            let x = input(&shape, ViewKind::Narrowed, -3.0, 3.0, DType::BF16, i as u64, CPU);
            let w = param(d, -0.5, 1.5, DType::BF16, 50 + i as u64);
            let wv = w.to_vec::<f64>().unwrap();
            let y = x.rms_norm(Some(&w), 1e-6, kind).unwrap();
            assert_eq!(y.dtype(), DType::BF16);
            let reference = along(&values(&x), shape.len() - 1, |r| naive_rms(r, Some(&wv), 1e-6, kind));
            let (atol, rtol) = tol(DType::BF16);
            assert_close("rms_norm bf16", &y, &reference, atol, rtol);
            // Backward in bf16 runs and agrees with the f32 gradient of the same values.
            let g = grads_of(&[x.clone(), w.clone()], &|v| v[0].rms_norm(Some(&v[1]), 1e-6, kind));
            let x32 = x.to_dtype(DType::F32).unwrap();
            let w32 = w.to_dtype(DType::F32).unwrap();
            let g32 = grads_of(&[x32, w32], &|v| v[0].rms_norm(Some(&v[1]), 1e-6, kind));
            for (a, b) in g.iter().zip(&g32) {
                let (a, b) = (a.as_ref().unwrap(), values(b.as_ref().unwrap()));
                let scale = b.data.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                assert_eq!(a.dtype(), DType::BF16);
                assert_close("rms_norm bf16 grad", a, &b, 2e-2 * scale, 2e-2);
            }
            count("property", "rms_norm", 1);
        }
    }
}

// ----- layer_norm --------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn layer_norm_matches_naive_and_composite(
        shape in arb_shape(1..=4, 4096),
        view in arb_view(),
        dtype in float_dtype(),
        with_weight in any::<bool>(),
        with_bias in any::<bool>(),
        offset in prop::sample::select(vec![0.0f64, 5.0, -40.0]),
        seed in any::<u64>(),
    ) {
        count("property", "layer_norm", 1);
        let d = *shape.last().unwrap();
        let x = input(&shape, view, offset - 2.0, offset + 2.0, dtype, seed, CPU);
        let w = with_weight.then(|| param(d, 0.5, 1.5, dtype, seed ^ 1));
        let b = with_bias.then(|| param(d, -1.0, 1.0, dtype, seed ^ 2));
        let eps = 1e-5;
        let y = x.layer_norm(w.as_ref(), b.as_ref(), eps).unwrap();
        let (wv, bv) = (vals(w.as_ref()), vals(b.as_ref()));
        let reference =
            along(&values(&x), last(&values(&x)), |r| naive_layer_norm(r, wv.as_deref(), bv.as_deref(), eps));
        // Rounding of inputs far from zero is amplified by rstd: scale by max|x| / std per row.
        let cond = layer_norm_condition(&values(&x), eps);
        let (atol, rtol) = tol(dtype);
        let atol = atol * cond;
        assert_close("layer_norm", &y, &reference, atol, rtol);
        let twin = x.layer_norm_composite(w.as_ref(), b.as_ref(), eps).unwrap();
        assert_close("layer_norm vs composite", &y, &values(&twin), atol, rtol);
        let inputs: Vec<Tensor> = std::iter::once(x).chain(w).chain(b).collect();
        let (hw, hb) = (with_weight, with_bias);
        let pick = move |v: &[Tensor]| -> (Option<Tensor>, Option<Tensor>) {
            let w = hw.then(|| v[1].clone());
            let b = hb.then(|| v[1 + hw as usize].clone());
            (w, b)
        };
        let fused = move |v: &[Tensor]| {
            let (w, b) = pick(v);
            v[0].layer_norm(w.as_ref(), b.as_ref(), eps)
        };
        let comp = move |v: &[Tensor]| {
            let (w, b) = pick(v);
            v[0].layer_norm_composite(w.as_ref(), b.as_ref(), eps)
        };
        assert_grads_match("layer_norm", &inputs, cond, &fused, &comp);
    }
}

/// The largest `max|x| / sqrt(var + eps)` over the rows (at least 1).
fn layer_norm_condition(x: &Nd, eps: f64) -> f64 {
    let d = *x.shape.last().unwrap();
    x.data
        .chunks(d)
        .map(|r| {
            let mean = r.iter().sum::<f64>() / d as f64;
            let var = r.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / d as f64;
            r.iter().fold(0.0f64, |m, a| m.max(a.abs())) / (var + eps).sqrt()
        })
        .fold(1.0, f64::max)
}

#[test]
fn layer_norm_bf16() {
    for (i, shape) in [vec![5usize, 65], vec![3, 2, 45], vec![7, 1]].into_iter().enumerate() {
        let d = *shape.last().unwrap();
        let x = input(&shape, ViewKind::Transposed, -3.0, 3.0, DType::BF16, i as u64, CPU);
        let w = param(d, 0.5, 1.5, DType::BF16, 60 + i as u64);
        let b = param(d, -1.0, 1.0, DType::BF16, 70 + i as u64);
        let (wv, bv) = (w.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap());
        let y = x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        let reference = along(&values(&x), shape.len() - 1, |r| naive_layer_norm(r, Some(&wv), Some(&bv), 1e-5));
        let (atol, rtol) = tol(DType::BF16);
        assert_close("layer_norm bf16", &y, &reference, atol, rtol);
        count("property", "layer_norm", 1);
    }
}

// ----- l2_normalize ------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn l2_normalize_matches_naive_and_composite(
        shape in arb_shape(1..=4, 4096),
        view in arb_view(),
        dtype in float_dtype(),
        // Tiny eps (never clamps), eps = 1 (some rows clamp), eps = 100 (every row clamps).
        eps in prop::sample::select(vec![1e-12f64, 1.0, 100.0]),
        seed in any::<u64>(),
    ) {
        count("property", "l2_normalize", 1);
        let x = input(&shape, view, -1.0, 1.0, dtype, seed, CPU);
        let y = x.l2_normalize(eps).unwrap();
        let reference = along(&values(&x), last(&values(&x)), |r| naive_l2(r, eps));
        let (atol, rtol) = tol(dtype);
        assert_close("l2_normalize", &y, &reference, atol, rtol);
        assert_close("l2_normalize vs composite", &y, &values(&x.l2_normalize_composite(eps).unwrap()), atol, rtol);
        // Rows whose norm sits within rounding of eps may take different branches in the two
        // versions; skip the gradient comparison for those.
        let norms = reference_norms(&values(&x));
        let near_eps = norms.iter().any(|n| (n - eps).abs() < 1e-3 * eps.max(1e-3));
        // Gradient terms are g / ‖x‖ before they cancel: scale by the largest 1 / max(‖x‖, eps).
        let cond = norms.iter().fold(1.0f64, |m, n| m.max(1.0 / n.max(eps)));
        if !near_eps {
            assert_grads_match("l2_normalize", &[x], cond, &move |v| v[0].l2_normalize(eps), &move |v| {
                v[0].l2_normalize_composite(eps)
            });
        }
    }
}

fn reference_norms(x: &Nd) -> Vec<f64> {
    let d = *x.shape.last().unwrap();
    x.data.chunks(d).map(|r| r.iter().map(|a| a * a).sum::<f64>().sqrt()).collect()
}

#[test]
fn l2_normalize_bf16_and_zero_rows() {
    let x = input(&[6, 45], ViewKind::Transposed, -1.0, 1.0, DType::BF16, 3, CPU);
    let (atol, rtol) = tol(DType::BF16);
    assert_close(
        "l2_normalize bf16",
        &x.l2_normalize(1e-12).unwrap(),
        &along(&values(&x), 1, |r| naive_l2(r, 1e-12)),
        atol,
        rtol,
    );
    count("property", "l2_normalize", 1);
    // A zero row stays zero with gradient g / eps (torch's clamp_min semantics).
    let z = Tensor::zeros(&[2, 3], DType::F64, CPU).unwrap().variable();
    let y = z.l2_normalize(1e-3).unwrap();
    assert!(y.to_vec::<f64>().unwrap().iter().all(|&v| v == 0.0));
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&z).unwrap().to_vec::<f64>().unwrap().iter().all(|&v| (v - 1e3).abs() < 1e-9));
}

// ----- wide rows and the parallel paths ----------------------------------------------------------------

#[test]
fn wide_and_tall_rows_use_the_parallel_path() {
    // [6, 8192]: rows wider than the parameter-gradient block; [600, 64]: many blocks of rows.
    for (shape, seed) in [(vec![6usize, 8192], 1u64), (vec![600, 64], 2)] {
        let d = shape[1];
        let x = Tensor::rand_uniform(-2.0, 2.0, &shape, DType::F32, CPU, seed).unwrap();
        let w = param(d, 0.5, 1.5, DType::F32, seed + 10);
        let b = param(d, -1.0, 1.0, DType::F32, seed + 20);
        let (wv, bv) = (w.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap());
        let xv = values(&x);
        let (atol, rtol) = tol(DType::F32);

        let y = x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap();
        assert_close(
            "layer_norm wide",
            &y,
            &along(&xv, 1, |r| naive_layer_norm(r, Some(&wv), Some(&bv), 1e-5)),
            atol,
            rtol,
        );
        assert_grads_match(
            "layer_norm wide",
            &[x.clone(), w.clone(), b.clone()],
            1.0,
            &|v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5),
            &|v| v[0].layer_norm_composite(Some(&v[1]), Some(&v[2]), 1e-5),
        );
        count("property", "layer_norm", 1);

        for kind in [RmsNormKind::Plain, RmsNormKind::Gemma] {
            let y = x.rms_norm(Some(&w), 1e-6, kind).unwrap();
            assert_close("rms_norm wide", &y, &along(&xv, 1, |r| naive_rms(r, Some(&wv), 1e-6, kind)), atol, rtol);
            assert_grads_match(
                "rms_norm wide",
                &[x.clone(), w.clone()],
                1.0,
                &move |v| v[0].rms_norm(Some(&v[1]), 1e-6, kind),
                &move |v| v[0].rms_norm_composite(Some(&v[1]), 1e-6, kind),
            );
            count("property", "rms_norm", 1);
        }

        assert_close("softmax wide", &x.softmax(-1).unwrap(), &along(&xv, 1, naive_softmax), atol, rtol);
        assert_grads_match("softmax wide", std::slice::from_ref(&x), 1.0, &|v| v[0].softmax(-1), &|v| {
            v[0].softmax_composite(-1)
        });
        assert_close("log_softmax wide", &x.log_softmax(-1).unwrap(), &along(&xv, 1, naive_log_softmax), atol, rtol);
        assert_close(
            "l2_normalize wide",
            &x.l2_normalize(1e-12).unwrap(),
            &along(&xv, 1, |r| naive_l2(r, 1e-12)),
            atol,
            rtol,
        );
        assert_grads_match("l2_normalize wide", std::slice::from_ref(&x), 1.0, &|v| v[0].l2_normalize(1e-12), &|v| {
            v[0].l2_normalize_composite(1e-12)
        });
        count("property", "softmax", 1);
        count("property", "log_softmax", 1);
        count("property", "l2_normalize", 1);
    }
}

#[test]
fn parameter_gradients_are_deterministic() {
    let x = Tensor::rand_uniform(-2.0, 2.0, &[700, 96], DType::F32, CPU, 5).unwrap();
    let w = param(96, 0.5, 1.5, DType::F32, 6);
    let run = || {
        let g = grads_of(&[x.clone(), w.clone()], &|v| v[0].rms_norm(Some(&v[1]), 1e-6, RmsNormKind::Plain));
        g[1].as_ref().unwrap().to_vec::<f32>().unwrap()
    };
    let first = run();
    for _ in 0..3 {
        assert_eq!(run(), first);
    }
}

// ----- gradient routing --------------------------------------------------------------------------------

#[test]
fn only_tracking_inputs_get_gradients() {
    let x = Tensor::rand_uniform(-2.0, 2.0, &[4, 9], DType::F64, CPU, 1).unwrap();
    let w = param(9, 0.5, 1.5, DType::F64, 2);
    let b = param(9, -1.0, 1.0, DType::F64, 3);
    // Frozen input, trainable weight: the weight gradient matches the composite's.
    let wv = w.variable();
    let g = x.rms_norm(Some(&wv), 1e-6, RmsNormKind::Gemma).unwrap().sum_all().unwrap().backward().unwrap();
    let gc = x.rms_norm_composite(Some(&wv), 1e-6, RmsNormKind::Gemma).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close("rms_norm dw only", g.get(&wv).unwrap(), &values(gc.get(&wv).unwrap()), 1e-10, 1e-10);
    assert_eq!(g.len(), 1);
    // Trainable bias only.
    let bv = b.variable();
    let g = x.layer_norm(Some(&w), Some(&bv), 1e-5).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let gc = x.layer_norm_composite(Some(&w), Some(&bv), 1e-5).unwrap().sqr().unwrap().sum_all().unwrap();
    let gc = gc.backward().unwrap();
    assert_close("layer_norm db only", g.get(&bv).unwrap(), &values(gc.get(&bv).unwrap()), 1e-10, 1e-10);
    assert_eq!(g.len(), 1);
    // Nothing tracks: nothing is recorded.
    assert!(!x.rms_norm(Some(&w), 1e-6, RmsNormKind::Plain).unwrap().tracks_grad());
    assert!(!x.softmax(0).unwrap().tracks_grad());
}

// ----- error paths ---------------------------------------------------------------------------------------

#[test]
fn errors_are_values() {
    let x = Tensor::rand_uniform(-1.0, 1.0, &[2, 5], DType::F32, CPU, 1).unwrap();
    let bad_w = param(4, 0.0, 1.0, DType::F32, 2);
    let w64 = param(5, 0.0, 1.0, DType::F64, 3);
    let ids = Tensor::zeros(&[2, 5], DType::I64, CPU).unwrap();
    let scalar = Tensor::scalar(1f32, CPU).unwrap();

    let e = x.rms_norm(Some(&bad_w), 1e-6, RmsNormKind::Plain).unwrap_err().to_string();
    assert!(e.contains("rms_norm") && e.contains("[2, 5]") && e.contains("[4]"), "{e}");
    let e = x.layer_norm(Some(&bad_w), None, 1e-5).unwrap_err().to_string();
    assert!(e.contains("layer_norm") && e.contains("[2, 5]") && e.contains("[4]"), "{e}");
    let e = x.layer_norm(None, Some(&bad_w), 1e-5).unwrap_err().to_string();
    assert!(e.contains("bias") && e.contains("[4]"), "{e}");
    let m = param(5, 0.0, 1.0, DType::F32, 4).reshape(&[1, 5]).unwrap();
    assert!(x.rms_norm(Some(&m), 1e-6, RmsNormKind::Gemma).is_err());
    assert!(x.rms_norm(Some(&w64), 1e-6, RmsNormKind::Plain).is_err());
    assert!(x.layer_norm(Some(&w64), None, 1e-5).is_err());
    assert!(x.rms_norm_composite(Some(&bad_w), 1e-6, RmsNormKind::Plain).is_err());
    assert!(x.layer_norm_composite(None, Some(&bad_w), 1e-5).is_err());

    for r in [
        ids.softmax(-1),
        ids.log_softmax(0),
        ids.rms_norm(None, 1e-6, RmsNormKind::Plain),
        ids.layer_norm(None, None, 1e-5),
        ids.l2_normalize(1e-12),
    ] {
        assert!(r.unwrap_err().to_string().contains("dtype"));
    }
    for r in [
        scalar.softmax(0),
        scalar.rms_norm(None, 1e-6, RmsNormKind::Plain),
        scalar.layer_norm(None, None, 1e-5),
        scalar.l2_normalize(1e-12),
        x.softmax(2),
        x.log_softmax(-3),
        x.rms_norm(None, -1.0, RmsNormKind::Plain),
        x.layer_norm(None, None, f64::NAN),
        x.l2_normalize(-1e-3),
    ] {
        assert!(r.is_err());
    }
    let r = Tensor::rand_uniform(-1.0, 1.0, &[5, 2], DType::F32, CPU, 5).unwrap();
    let e = x.rms_norm_residual(&r, None, 1e-6, RmsNormKind::Plain).unwrap_err().to_string();
    assert!(e.contains("[2, 5]") && e.contains("[5, 2]"), "{e}");
}

#[test]
fn empty_tensors_do_not_panic() {
    for shape in [[0usize, 5], [3, 0]] {
        let x = Tensor::zeros(&shape, DType::F32, CPU).unwrap().variable();
        let w = Tensor::ones(&[shape[1]], DType::F32, CPU).unwrap().variable();
        let outs = [
            x.softmax(-1).unwrap(),
            x.log_softmax(0).unwrap(),
            x.rms_norm(Some(&w), 1e-6, RmsNormKind::Gemma).unwrap(),
            x.layer_norm(Some(&w), Some(&w), 1e-5).unwrap(),
            x.l2_normalize(1e-12).unwrap(),
        ];
        for y in outs {
            assert_eq!(y.shape(), &shape);
            let g = y.sum_all().unwrap().backward().unwrap();
            assert_eq!(g.get(&x).map(|g| g.shape().to_vec()), Some(shape.to_vec()));
        }
    }
}
