use crate::common::gradcheck;
use crate::Case;
use vlm4vla::engine::ops::{bce_with_logits, cross_entropy, huber, mse, Reduction};
use vlm4vla::engine::{DType, Device, Tensor};

fn x(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Tensor {
    Tensor::rand_uniform(lo, hi, shape, DType::F64, Device::Cpu, seed).unwrap()
}

/// Targets for 6 rows of 5 classes, row 3 ignored (-100).
fn targets() -> Tensor {
    Tensor::from_vec(vec![4i64, 0, 2, -100, 1, 4], &[6], Device::Cpu).unwrap()
}

fn ce(reduction: Reduction) {
    let t = targets();
    gradcheck("cross_entropy", &[x(&[6, 5], -3., 3., 1)], |v| cross_entropy(&v[0], &t, -100, reduction));
}

/// A prediction and a target whose differences have magnitudes in [0.2, 0.8] or [1.2, 2.5] with
/// random signs: both sides of a delta of 1, at least 0.2 away from the kink.
fn huber_inputs() -> (Tensor, Tensor) {
    let p = x(&[4, 6], -2., 2., 7);
    let mag = x(&[4, 6], 0., 1., 8).to_vec::<f64>().unwrap();
    let sign = x(&[4, 6], -1., 1., 9).to_vec::<f64>().unwrap();
    let d: Vec<f64> = mag
        .iter()
        .zip(&sign)
        .enumerate()
        .map(|(i, (m, s))| s.signum() * if i % 2 == 0 { 0.2 + 0.6 * m } else { 1.2 + 1.3 * m })
        .collect();
    let t = p.sub(&Tensor::from_vec(d, &[4, 6], Device::Cpu).unwrap()).unwrap();
    (p, t)
}

pub fn cases() -> Vec<Case> {
    vec![
        Case { op: "cross_entropy", run: || ce(Reduction::Mean) },
        Case { op: "cross_entropy", run: || ce(Reduction::Sum) },
        Case { op: "cross_entropy", run: || ce(Reduction::None) },
        Case {
            op: "mse",
            run: || {
                gradcheck("mse", &[x(&[3, 5], -2., 2., 2), x(&[3, 5], -2., 2., 3)], |v| {
                    mse(&v[0], &v[1], Reduction::Mean)
                })
            },
        },
        Case {
            op: "mse",
            run: || {
                gradcheck("mse", &[x(&[3, 5], -2., 2., 4), x(&[3, 5], -2., 2., 5)], |v| {
                    mse(&v[0], &v[1], Reduction::None)
                })
            },
        },
        Case {
            op: "huber",
            run: || {
                let (p, t) = huber_inputs();
                gradcheck("huber", &[p, t], |v| huber(&v[0], &v[1], 1.0, Reduction::Sum))
            },
        },
        Case {
            op: "huber",
            run: || {
                let (p, t) = huber_inputs();
                gradcheck("huber", &[p, t], |v| huber(&v[0], &v[1], 1.0, Reduction::None))
            },
        },
        Case {
            op: "bce_with_logits",
            run: || {
                // Hard and soft constant targets.
                let t = Tensor::from_vec(vec![0., 1., 0.5, 1., 0., 0.25, 0.9, 0.], &[2, 4], Device::Cpu).unwrap();
                gradcheck("bce_with_logits", &[x(&[2, 4], -4., 4., 10)], |v| {
                    bce_with_logits(&v[0], &t, Reduction::Mean)
                })
            },
        },
        Case {
            op: "bce_with_logits",
            run: || {
                // Targets away from 0 and 1 so the finite differences stay inside [0, 1].
                gradcheck("bce_with_logits", &[x(&[3, 4], -4., 4., 11), x(&[3, 4], 0.05, 0.95, 12)], |v| {
                    bce_with_logits(&v[0], &v[1], Reduction::None)
                })
            },
        },
    ]
}
