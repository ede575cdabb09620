//! Gradchecks of the norm family: softmax and log_softmax (last and inner dims), rms_norm (no
//! weight, plain, Gemma, through the residual form), layer_norm (every weight/bias combination),
//! l2_normalize (normal and clamped rows).

use crate::common::gradcheck;
use crate::Case;
use vlm4vla::engine::{DType, Device, RmsNormKind, Tensor};

fn t(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Tensor {
    Tensor::rand_uniform(lo, hi, shape, DType::F64, Device::Cpu, seed).unwrap()
}

fn case(op: &'static str, run: fn()) -> Case {
    Case { op, run }
}

pub fn cases() -> Vec<Case> {
    vec![
        case("softmax", || gradcheck("softmax", &[t(&[3, 5], -2., 2., 1)], |v| v[0].softmax(-1))),
        case("softmax", || gradcheck("softmax", &[t(&[4, 3, 2], -2., 2., 2)], |v| v[0].softmax(1))),
        case("log_softmax", || gradcheck("log_softmax", &[t(&[3, 5], -2., 2., 3)], |v| v[0].log_softmax(-1))),
        case("log_softmax", || gradcheck("log_softmax", &[t(&[4, 3], -2., 2., 4)], |v| v[0].log_softmax(0))),
        case("rms_norm", || {
            gradcheck("rms_norm", &[t(&[3, 7], -2., 2., 5)], |v| v[0].rms_norm(None, 1e-5, RmsNormKind::Plain))
        }),
        case("rms_norm", || {
            gradcheck("rms_norm", &[t(&[2, 3, 6], -2., 2., 6), t(&[6], 0.5, 1.5, 7)], |v| {
                v[0].rms_norm(Some(&v[1]), 1e-6, RmsNormKind::Plain)
            })
        }),
        case("rms_norm", || {
            gradcheck("rms_norm", &[t(&[4, 5], -2., 2., 8), t(&[5], -0.5, 0.5, 9)], |v| {
                v[0].rms_norm(Some(&v[1]), 1e-6, RmsNormKind::Gemma)
            })
        }),
        case("rms_norm", || {
            // Both outputs of the residual form carry gradient back to input, residual and weight.
            gradcheck("rms_norm", &[t(&[3, 6], -2., 2., 10), t(&[3, 6], -2., 2., 11), t(&[6], 0.5, 1.5, 12)], |v| {
                let (sum, normed) = v[0].rms_norm_residual(&v[1], Some(&v[2]), 1e-6, RmsNormKind::Gemma)?;
                sum.sqr()?.add(&normed)
            })
        }),
        case("layer_norm", || {
            gradcheck("layer_norm", &[t(&[3, 7], -2., 2., 13)], |v| v[0].layer_norm(None, None, 1e-5))
        }),
        case("layer_norm", || {
            gradcheck("layer_norm", &[t(&[2, 3, 6], -2., 2., 14), t(&[6], 0.5, 1.5, 15), t(&[6], -1., 1., 16)], |v| {
                v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5)
            })
        }),
        case("layer_norm", || {
            gradcheck("layer_norm", &[t(&[4, 5], -2., 2., 17), t(&[5], 0.5, 1.5, 18)], |v| {
                v[0].layer_norm(Some(&v[1]), None, 1e-6)
            })
        }),
        case("layer_norm", || {
            gradcheck("layer_norm", &[t(&[4, 5], -2., 2., 19), t(&[5], -1., 1., 20)], |v| {
                v[0].layer_norm(None, Some(&v[1]), 1e-6)
            })
        }),
        case("l2_normalize", || gradcheck("l2_normalize", &[t(&[3, 5], -2., 2., 21)], |v| v[0].l2_normalize(1e-12))),
        case("l2_normalize", || {
            // Rows 0–1 have norms well above eps = 1, rows 2–3 well below (the clamped region).
            let big = t(&[2, 4], 1.0, 2.0, 22);
            let small = t(&[2, 4], -0.2, 0.2, 23);
            let x = cat_rows(&big, &small);
            gradcheck("l2_normalize", &[x], |v| v[0].l2_normalize(1.0))
        }),
    ]
}

/// Stack two `[r, d]` tensors into `[ra + rb, d]` (no graph).
fn cat_rows(a: &Tensor, b: &Tensor) -> Tensor {
    let mut v = a.to_vec::<f64>().unwrap();
    v.extend(b.to_vec::<f64>().unwrap());
    Tensor::from_vec(v, &[a.shape()[0] + b.shape()[0], a.shape()[1]], Device::Cpu).unwrap()
}
