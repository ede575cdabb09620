use crate::common::gradcheck;
use crate::Case;
use std::sync::Arc;
use vlm4vla::engine::{checkpoint, DType, Device, Tensor};

fn x(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(-1.0, 1.0, shape, DType::F64, Device::Cpu, seed).unwrap()
}

pub fn cases() -> Vec<Case> {
    vec![Case {
        op: "checkpoint",
        run: || {
            gradcheck("checkpoint", &[x(&[3, 4], 1), x(&[4, 4], 2)], |v| {
                let w = v[1].clone();
                checkpoint(Arc::new(move |xs: &[Tensor]| xs[0].matmul(&w)?.tanh()?.matmul(&w)), &[v[0].clone()])
            })
        },
    }]
}
