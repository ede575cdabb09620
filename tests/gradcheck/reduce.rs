use crate::common::gradcheck;
use crate::Case;
use vlm4vla::engine::{DType, Device, Tensor};

fn x(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(-1.0, 1.0, shape, DType::F64, Device::Cpu, seed).unwrap()
}

pub fn cases() -> Vec<Case> {
    vec![
        Case { op: "sum", run: || gradcheck("sum", &[x(&[3, 4, 5], 1)], |v| v[0].sum_keepdim(1)?.sin()) },
        Case { op: "sum", run: || gradcheck("sum", &[x(&[3, 4, 5], 2)], |v| v[0].sum_dims_keepdim(&[0, 2])?.sin()) },
        Case { op: "mean", run: || gradcheck("mean", &[x(&[3, 4, 5], 3)], |v| v[0].mean(-1)?.sin()) },
        Case { op: "mean", run: || gradcheck("mean", &[x(&[3, 4], 4)], |v| v[0].mean_all()?.sin()) },
        Case { op: "max", run: || gradcheck("max", &[x(&[3, 7], 5)], |v| v[0].max(1)) },
        Case { op: "max", run: || gradcheck("max", &[x(&[4, 3, 2], 6)], |v| v[0].max_keepdim(0)) },
        Case { op: "min", run: || gradcheck("min", &[x(&[3, 7], 7)], |v| v[0].min(0)) },
        Case { op: "norm_l2", run: || gradcheck("norm_l2", &[x(&[3, 7], 8)], |v| v[0].norm_l2()) },
    ]
}
