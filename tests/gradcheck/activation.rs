use crate::common::gradcheck;
use crate::Case;
use vlm4vla::engine::{DType, Device, Tensor};

fn x(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(-3.0, 3.0, shape, DType::F64, Device::Cpu, seed).unwrap()
}

pub fn cases() -> Vec<Case> {
    vec![
        Case { op: "swiglu", run: || gradcheck("swiglu", &[x(&[3, 2, 10], 1)], |v| v[0].swiglu()) },
        Case { op: "swiglu", run: || gradcheck("swiglu", &[x(&[7, 2], 2)], |v| v[0].swiglu()) },
        Case { op: "geglu", run: || gradcheck("geglu", &[x(&[3, 2, 10], 3)], |v| v[0].geglu()) },
        Case { op: "geglu", run: || gradcheck("geglu", &[x(&[5, 6], 4)], |v| v[0].geglu()) },
    ]
}
