//! Gradcheck of rope (only x gets a gradient; cos/sin are constants), with `[L, D]` and
//! `[B, L, D]` tables.

use crate::common::gradcheck;
use crate::Case;
use vlm4vla::engine::{DType, Device, Tensor};

/// cos/sin tables of real rotary angles for `shape` (`[L, D]` or `[B, L, D]`).
fn tables(shape: &[usize], seed: u64) -> (Tensor, Tensor) {
    let angles = Tensor::rand_uniform(-3.0, 3.0, shape, DType::F64, Device::Cpu, seed).unwrap();
    (angles.cos().unwrap(), angles.sin().unwrap())
}

fn check(x_shape: &[usize], table_shape: &'static [usize]) {
    let x = Tensor::rand_uniform(-1.0, 1.0, x_shape, DType::F64, Device::Cpu, 7).unwrap();
    let (cos, sin) = tables(table_shape, 8);
    gradcheck("rope", &[x], |v| v[0].rope(&cos, &sin));
}

pub fn cases() -> Vec<Case> {
    vec![
        Case { op: "rope", run: || check(&[2, 5, 3, 4], &[5, 4]) },
        Case { op: "rope", run: || check(&[2, 3, 2, 6], &[2, 3, 6]) },
    ]
}
