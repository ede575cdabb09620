use crate::common::gradcheck;
use crate::Case;
use vlm4vla::engine::{DType, Device, Result, Tensor};

/// Inputs away from each op's kinks and outside its domain boundaries.
fn x(lo: f64, hi: f64, seed: u64) -> Tensor {
    Tensor::rand_uniform(lo, hi, &[3, 5], DType::F64, Device::Cpu, seed).unwrap()
}

/// Values in ±[0.1, 2] (away from 0, where abs and relu have kinks).
fn signed(seed: u64) -> Tensor {
    let mag = Tensor::rand_uniform(0.1, 2.0, &[3, 5], DType::F64, Device::Cpu, seed).unwrap();
    let sign = Tensor::rand_uniform(-1.0, 1.0, &[3, 5], DType::F64, Device::Cpu, seed + 1000).unwrap();
    let s: Vec<f64> = sign.to_vec::<f64>().unwrap().iter().map(|v| v.signum()).collect();
    mag.mul(&Tensor::from_vec(s, &[3, 5], Device::Cpu).unwrap()).unwrap()
}

fn case(op: &'static str, run: fn()) -> Case {
    Case { op, run }
}

fn check(op: &str, input: Tensor, f: fn(&Tensor) -> Result<Tensor>) {
    gradcheck(op, &[input], |v| f(&v[0]));
}

pub fn cases() -> Vec<Case> {
    vec![
        case("neg", || check("neg", x(-2., 2., 1), |t| t.neg())),
        case("exp", || check("exp", x(-2., 2., 2), |t| t.exp())),
        case("log", || check("log", x(0.2, 3., 3), |t| t.log())),
        case("sqrt", || check("sqrt", x(0.2, 3., 4), |t| t.sqrt())),
        case("rsqrt", || check("rsqrt", x(0.2, 3., 5), |t| t.rsqrt())),
        case("sqr", || check("sqr", x(-2., 2., 6), |t| t.sqr())),
        case("recip", || check("recip", x(0.3, 3., 7), |t| t.recip())),
        case("powf", || check("powf", x(0.2, 3., 8), |t| t.powf(1.7))),
        case("abs", || check("abs", signed(9), |t| t.abs())),
        case("clamp", || check("clamp", signed(10), |t| t.clamp(-0.95, 1.05))),
        case("affine", || check("affine", x(-2., 2., 11), |t| t.affine(-1.5, 0.25))),
        case("sin", || check("sin", x(-3., 3., 12), |t| t.sin())),
        case("cos", || check("cos", x(-3., 3., 13), |t| t.cos())),
        case("tanh", || check("tanh", x(-3., 3., 14), |t| t.tanh())),
        case("sigmoid", || check("sigmoid", x(-4., 4., 15), |t| t.sigmoid())),
        case("relu", || check("relu", signed(16), |t| t.relu())),
        case("silu", || check("silu", x(-4., 4., 17), |t| t.silu())),
        case("gelu", || check("gelu", x(-4., 4., 18), |t| t.gelu())),
        case("gelu_tanh", || check("gelu_tanh", x(-4., 4., 19), |t| t.gelu_tanh())),
        case("quick_gelu", || check("quick_gelu", x(-4., 4., 20), |t| t.quick_gelu())),
        case("softplus", || check("softplus", x(-6., 6., 21), |t| t.softplus())),
    ]
}
