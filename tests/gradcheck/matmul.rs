use crate::common::gradcheck;
use crate::Case;
use vlm4vla::engine::{DType, Device, Tensor};

fn x(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(-1.0, 1.0, shape, DType::F64, Device::Cpu, seed).unwrap()
}

pub fn cases() -> Vec<Case> {
    vec![
        Case { op: "matmul", run: || gradcheck("matmul", &[x(&[3, 4], 1), x(&[4, 5], 2)], |v| v[0].matmul(&v[1])) },
        // Batch broadcasting ([2, 3, 4] @ [4, 5]) and transposed operands as views.
        Case { op: "matmul", run: || gradcheck("matmul", &[x(&[2, 3, 4], 3), x(&[4, 5], 4)], |v| v[0].matmul(&v[1])) },
        Case {
            op: "matmul",
            run: || gradcheck("matmul", &[x(&[2, 1, 4, 3], 5), x(&[3, 5, 4], 6)], |v| v[0].t()?.matmul(&v[1].t()?)),
        },
        // Linear: leading dims folded into the rows, with and without a bias.
        Case {
            op: "linear",
            run: || {
                gradcheck("linear", &[x(&[2, 3, 4], 7), x(&[5, 4], 8), x(&[5], 9)], |v| v[0].linear(&v[1], Some(&v[2])))
            },
        },
        Case {
            op: "linear",
            run: || gradcheck("linear", &[x(&[3, 4], 10), x(&[2, 4], 11)], |v| v[0].linear(&v[1], None)),
        },
        // An input whose leading dims do not fold (a transposed view: copied to rows) and a
        // transposed weight view.
        Case {
            op: "linear",
            run: || {
                gradcheck("linear", &[x(&[3, 2, 4], 12), x(&[4, 5], 13), x(&[5], 14)], |v| {
                    v[0].transpose(0, 1)?.linear(&v[1].t()?, Some(&v[2]))
                })
            },
        },
    ]
}
