use crate::common::gradcheck;
use crate::Case;
use vlm4vla::engine::{DType, Device, Tensor};

fn x(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Tensor {
    Tensor::rand_uniform(lo, hi, shape, DType::F64, Device::Cpu, seed).unwrap()
}

pub fn cases() -> Vec<Case> {
    vec![
        // Broadcasting on both sides: [3, 1] with [2, 1, 4].
        Case {
            op: "add",
            run: || gradcheck("add", &[x(&[3, 1], -1., 1., 1), x(&[2, 1, 4], -1., 1., 2)], |v| v[0].add(&v[1])),
        },
        Case {
            op: "sub",
            run: || gradcheck("sub", &[x(&[2, 3, 4], -1., 1., 3), x(&[4], -1., 1., 4)], |v| v[0].sub(&v[1])),
        },
        Case {
            op: "mul",
            run: || gradcheck("mul", &[x(&[3, 4], -1., 1., 5), x(&[3, 1], -1., 1., 6)], |v| v[0].mul(&v[1])),
        },
        Case {
            op: "div",
            run: || gradcheck("div", &[x(&[3, 4], -1., 1., 7), x(&[1, 4], 0.5, 2., 8)], |v| v[0].div(&v[1])),
        },
        // Operands drawn from disjoint interleaved grids so no two are within the FD step.
        Case {
            op: "maximum",
            run: || gradcheck("maximum", &[x(&[3, 4], -1., 1., 9), x(&[3, 4], -1., 1., 10)], |v| v[0].maximum(&v[1])),
        },
        Case {
            op: "minimum",
            run: || gradcheck("minimum", &[x(&[3, 4], -1., 1., 11), x(&[3, 4], -1., 1., 12)], |v| v[0].minimum(&v[1])),
        },
        // The same tensor on both sides: two gradient contributions to one input.
        Case { op: "mul", run: || gradcheck("mul", &[x(&[5], -1., 1., 13)], |v| v[0].mul(&v[0])) },
    ]
}
