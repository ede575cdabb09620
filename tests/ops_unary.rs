//! Property tests of the elementwise unary ops against naive f64 references.

// Naive references index plain arrays by position on purpose.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{arb_shape, arb_view, assert_close, count, input, tol, values, Nd};
use proptest::prelude::*;
use vlm4vla::engine::{DType, Device, Result, Tensor};

type UnaryCase = (&'static str, fn(&Tensor) -> Result<Tensor>, fn(f64) -> f64, f64, f64);

fn erf(x: f64) -> f64 {
    vlm4vla::engine::dtype::erf_f64(x)
}

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// (name, op, reference, input lo, input hi)
fn cases() -> Vec<UnaryCase> {
    vec![
        ("neg", |t| t.neg(), |x| -x, -3., 3.),
        ("exp", |t| t.exp(), f64::exp, -5., 5.),
        ("log", |t| t.log(), f64::ln, 0.01, 10.),
        ("sqrt", |t| t.sqrt(), f64::sqrt, 0., 10.),
        ("rsqrt", |t| t.rsqrt(), |x| 1. / x.sqrt(), 0.01, 10.),
        ("sqr", |t| t.sqr(), |x| x * x, -3., 3.),
        ("recip", |t| t.recip(), |x| 1. / x, 0.1, 10.),
        ("powf", |t| t.powf(2.5), |x| x.powf(2.5), 0., 4.),
        ("abs", |t| t.abs(), f64::abs, -3., 3.),
        ("clamp", |t| t.clamp(-0.5, 0.75), |x| x.clamp(-0.5, 0.75), -2., 2.),
        ("affine", |t| t.affine(3.0, -0.5), |x| 3.0 * x - 0.5, -3., 3.),
        ("sin", |t| t.sin(), f64::sin, -6., 6.),
        ("cos", |t| t.cos(), f64::cos, -6., 6.),
        ("tanh", |t| t.tanh(), f64::tanh, -5., 5.),
        ("sigmoid", |t| t.sigmoid(), sig, -10., 10.),
        ("relu", |t| t.relu(), |x| x.max(0.), -3., 3.),
        ("silu", |t| t.silu(), |x| x * sig(x), -8., 8.),
        ("gelu", |t| t.gelu(), |x| 0.5 * x * (1. + erf(x / 2f64.sqrt())), -6., 6.),
        (
            "gelu_tanh",
            |t| t.gelu_tanh(),
            |x| 0.5 * x * (1. + ((2. / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh()),
            -6.,
            6.,
        ),
        ("quick_gelu", |t| t.quick_gelu(), |x| x * sig(1.702 * x), -6., 6.),
        ("softplus", |t| t.softplus(), |x| (1. + x.exp()).ln(), -30., 30.),
    ]
}

proptest! {
    #![proptest_config(common::config(64))]

    #[test]
    fn unary_ops_match_reference(
        shape in arb_shape(0..=4, 4000),
        view in arb_view(),
        dtype in prop::sample::select(vec![DType::F32, DType::F64, DType::BF16]),
        seed in 0u64..1000,
    ) {
        for (name, op, reference, lo, hi) in cases() {
            let x = input(&shape, view, lo, hi, dtype, seed, Device::Cpu);
            let y = op(&x).unwrap();
            prop_assert_eq!(y.dtype(), dtype);
            // The reference sees the same (rounded) inputs; the output is rounded once more.
            let want = values(&x).map(reference);
            let (atol, rtol) = tol(dtype);
            assert_close(name, &y, &want, atol, rtol);
            count("property", name, 1);
        }
    }
}

#[test]
fn erf_matches_known_values() {
    // Values from Abramowitz & Stegun table 7.1 (and erf(±∞) = ±1).
    for (x, want) in [
        (0.0, 0.0),
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
        (3.0, 0.999_977_909_503_001_4),
        (-1.0, -0.842_700_792_949_714_9),
        (6.0, 1.0),
    ] {
        assert!((erf(x) - want).abs() < 1e-15, "erf({x}) = {} want {want}", erf(x));
    }
}

#[test]
fn unary_ops_reject_integer_tensors() {
    let ids = Tensor::from_vec(vec![1i64, 2, 3], &[3], Device::Cpu).unwrap();
    let err = ids.exp().unwrap_err().to_string();
    assert!(err.contains("exp") && err.contains("i64"), "{err}");
    assert!(Tensor::ones(&[2], DType::F32, Device::Cpu).unwrap().clamp(1.0, 0.0).is_err());
}

#[test]
fn nan_propagates() {
    let x = Tensor::from_vec(vec![f32::NAN, 1.0], &[2], Device::Cpu).unwrap();
    let y = x.tanh().unwrap().to_vec::<f32>().unwrap();
    assert!(y[0].is_nan() && (y[1] - 1f32.tanh()).abs() < 1e-7);
    let _ = Nd::zeros(&[1]);
}

/// The libm-free f32 tanh (used by tanh and both GELU-tanh kernels) against f64, densely over
/// every range it switches between, at the switch point, in the saturated tails and on the
/// special values.
#[test]
fn tanh_f32_is_within_3_ulp_everywhere() {
    use vlm4vla::engine::dtype::tanh_f32;
    let mut worst = (0.0f64, 0.0f32);
    let mut check = |x: f32| {
        let want = (x as f64).tanh();
        let got = tanh_f32(x) as f64;
        // ulps at the result's magnitude (at least the spacing of normal f32 near it).
        let ulp = (want.abs() as f32).max(f32::MIN_POSITIVE) as f64 * f32::EPSILON as f64;
        let err = (got - want).abs() / ulp;
        if err > worst.0 {
            worst = (err, x);
        }
        assert_eq!(got.signum(), if want == 0.0 { got.signum() } else { want.signum() }, "sign at {x}");
    };
    for i in 0..=2_000_000 {
        let x = -20.0 + 40.0 * i as f32 / 2_000_000.0;
        check(x);
    }
    for x in [0.0, -0.0, 1e-30, -1e-30, 1e-8, 0.625, 0.624_999_94, 0.625_000_06, 9.0, 50.0, -1e30, f32::MAX] {
        check(x);
    }
    println!("tanh_f32: worst {:.2} ulp at x = {}", worst.0, worst.1);
    assert!(worst.0 <= 3.0, "worst error {:.2} ulp at x = {}", worst.0, worst.1);
    assert_eq!(tanh_f32(f32::INFINITY), 1.0);
    assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
    assert!(tanh_f32(f32::NAN).is_nan());
    assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0f32).to_bits());
}
