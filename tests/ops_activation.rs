//! Property tests of the gated activations (swiglu, geglu) against naive f64 references and
//! against their composite twins, over odd shapes and strided views; plus the error paths.

// Naive references index plain arrays by position on purpose.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{arb_shape, arb_view, assert_close, config, count, input, tol, values, Nd, ViewKind};
use proptest::prelude::*;
use vlm4vla::engine::{DType, Device, Tensor};

const CPU: Device = Device::Cpu;

#[derive(Clone, Copy, Debug)]
enum Gate {
    Swiglu,
    Geglu,
}

impl Gate {
    fn name(self) -> &'static str {
        match self {
            Gate::Swiglu => "swiglu",
            Gate::Geglu => "geglu",
        }
    }
    fn fused(self, x: &Tensor) -> vlm4vla::engine::Result<Tensor> {
        match self {
            Gate::Swiglu => x.swiglu(),
            Gate::Geglu => x.geglu(),
        }
    }
    fn composite(self, x: &Tensor) -> vlm4vla::engine::Result<Tensor> {
        match self {
            Gate::Swiglu => x.swiglu_composite(),
            Gate::Geglu => x.geglu_composite(),
        }
    }
    /// Naive `(act(x), act'(x))`; the GELU derivative by central differences in f64 keeps the
    /// reference independent of the kernel's closed form.
    fn act(self, x: f64) -> (f64, f64) {
        let f = |x: f64| match self {
            Gate::Swiglu => x / (1.0 + (-x).exp()),
            Gate::Geglu => 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh()),
        };
        let h = 1e-5;
        (f(x), (f(x + h) - f(x - h)) / (2.0 * h))
    }
}

fn arb_gate() -> impl Strategy<Value = Gate> {
    prop_oneof![Just(Gate::Swiglu), Just(Gate::Geglu)]
}

fn arb_float() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F64)]
}

/// Naive output and input gradient for the upstream gradient `g` (shaped like the output).
fn reference(gate: Gate, x: &Nd, g: &Nd) -> (Nd, Nd) {
    let w = *x.shape.last().unwrap();
    let f = w / 2;
    let rows = x.data.len() / w.max(1);
    let mut out_shape = x.shape.clone();
    *out_shape.last_mut().unwrap() = f;
    let mut out = Nd::zeros(&out_shape);
    let mut dx = Nd::zeros(&x.shape);
    for r in 0..rows {
        for j in 0..f {
            let (a, up) = (x.data[r * w + j], x.data[r * w + f + j]);
            let (act, dact) = gate.act(a);
            let gi = g.data[r * f + j];
            out.data[r * f + j] = act * up;
            dx.data[r * w + j] = gi * up * dact;
            dx.data[r * w + f + j] = gi * act;
        }
    }
    (out, dx)
}

/// Output, probe and input gradient of `Σ f(x) · probe`.
fn run(x: &Tensor, seed: u64, f: impl Fn(&Tensor) -> vlm4vla::engine::Result<Tensor>) -> (Tensor, Tensor, Tensor) {
    let v = x.variable();
    let out = f(&v).unwrap();
    let probe = Tensor::rand_uniform(-1.0, 1.0, out.shape(), out.dtype(), CPU, seed ^ 0x51).unwrap();
    let g = out.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = g.get(&v).unwrap().clone();
    (out, probe, dx)
}

/// A shape whose last dim is even: the drawn last dim doubled.
fn gated_shape(mut s: Vec<usize>) -> Vec<usize> {
    if let Some(l) = s.last_mut() {
        *l *= 2;
    }
    s
}

fn check_reference(gate: Gate, shape: &[usize], view: ViewKind, dtype: DType, seed: u64) {
    let x = input(shape, view, -5.0, 5.0, dtype, seed, CPU);
    let (out, probe, dx) = run(&x, seed, |t| gate.fused(t));
    let (want, want_dx) = reference(gate, &values(&x), &values(&probe));
    let (atol, rtol) = tol(dtype);
    // The reference derivative comes from finite differences (error ~1e-10).
    let gatol = atol.max(1e-8);
    assert_eq!(out.dtype(), dtype);
    assert_close(gate.name(), &out, &want, atol, rtol);
    assert_close(&format!("{} grad", gate.name()), &dx, &want_dx, gatol, rtol);
}

proptest! {
    #![proptest_config(config(112))]

    #[test]
    fn gated_matches_reference(
        gate in arb_gate(),
        shape in arb_shape(1..=4, 2000).prop_map(gated_shape),
        view in arb_view(),
        dtype in arb_float(),
        seed in 0u64..1_000_000,
    ) {
        count("property", gate.name(), 1);
        check_reference(gate, &shape, view, dtype, seed);
    }

    #[test]
    fn gated_matches_composite(
        gate in arb_gate(),
        shape in arb_shape(1..=4, 2000).prop_map(gated_shape),
        view in arb_view(),
        dtype in arb_float(),
        seed in 0u64..1_000_000,
    ) {
        count("property", gate.name(), 1);
        let x = input(&shape, view, -5.0, 5.0, dtype, seed, CPU);
        let (out, _, dx) = run(&x, seed, |t| gate.fused(t));
        let (want, _, want_dx) = run(&x, seed, |t| gate.composite(t));
        let (atol, rtol) = tol(dtype);
        assert_close(&format!("{} vs composite", gate.name()), &out, &values(&want), atol, rtol);
        assert_close(&format!("{} grad vs composite", gate.name()), &dx, &values(&want_dx), atol, rtol);
    }
}

#[test]
fn gated_bf16() {
    for gate in [Gate::Swiglu, Gate::Geglu] {
        count("property", gate.name(), 1);
        check_reference(gate, &[5, 3, 90], ViewKind::Narrowed, DType::BF16, 11);
        check_reference(gate, &[33, 2], ViewKind::Transposed, DType::BF16, 12);
    }
}

#[test]
fn gated_large_rows_in_parallel() {
    // Big enough for the kernels' parallel path.
    for gate in [Gate::Swiglu, Gate::Geglu] {
        count("property", gate.name(), 1);
        check_reference(gate, &[123, 2 * 300], ViewKind::Contiguous, DType::F32, 13);
    }
}

#[test]
fn gated_errors() {
    for gate in [Gate::Swiglu, Gate::Geglu] {
        let odd = Tensor::zeros(&[2, 5], DType::F32, CPU).unwrap();
        let err = gate.fused(&odd).unwrap_err().to_string();
        assert!(err.contains(gate.name()) && err.contains("[2, 5]"), "{err}");
        assert!(gate.composite(&odd).is_err());
        assert!(gate.fused(&Tensor::scalar(1f32, CPU).unwrap()).is_err());
        assert!(gate.fused(&Tensor::zeros(&[2, 4], DType::I64, CPU).unwrap()).is_err());
        // Empty last dim: an empty output, no panic.
        let e = gate.fused(&Tensor::zeros(&[3, 0], DType::F32, CPU).unwrap()).unwrap();
        assert_eq!(e.shape(), &[3, 0]);
    }
}
