use crate::common::gradcheck;
use crate::Case;
use vlm4vla::engine::{DType, Device, Tensor};

fn x(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(-2.0, 2.0, shape, DType::F64, Device::Cpu, seed).unwrap()
}

fn ids(v: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, Device::Cpu).unwrap()
}

fn mask(v: &[u8], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, Device::Cpu).unwrap()
}

fn case(op: &'static str, run: fn()) -> Case {
    Case { op, run }
}

pub fn cases() -> Vec<Case> {
    vec![
        // Three inputs along a middle dim, one of them entering as a transposed view.
        case("cat", || {
            gradcheck("cat", &[x(&[2, 3, 4], 1), x(&[2, 1, 4], 2), x(&[4, 2], 3)], |v| {
                let c = v[2].t()?.unsqueeze(0)?.broadcast_as(&[2, 2, 4])?;
                Tensor::cat(&[&v[0], &v[1], &c], 1)
            })
        }),
        case("cat", || gradcheck("cat", &[x(&[3, 2], 4), x(&[1, 2], 5)], |v| Tensor::stack(&[&v[0], &v[0]], 2))),
        // Repeated indices accumulate.
        case("index_select", || {
            let i = ids(&[2, 0, 2, 3, 2], &[5]);
            gradcheck("index_select", &[x(&[4, 3], 6)], |v| v[0].index_select(0, &i))
        }),
        case("index_select", || {
            let i = ids(&[1, 1, 0], &[3]);
            gradcheck("index_select", &[x(&[2, 3, 4], 7)], |v| v[0].index_select(1, &i))
        }),
        case("gather", || {
            // Index smaller than the input on dim 0, repeats along the gathered dim.
            let i = ids(&[0, 3, 3, 1, 2, 2, 0, 0, 1], &[3, 3]);
            gradcheck("gather", &[x(&[4, 4], 8)], |v| v[0].gather(1, &i))
        }),
        case("gather", || {
            let i = ids(&[1, 0, 1, 1, 0, 0], &[2, 1, 3]);
            gradcheck("gather", &[x(&[2, 3, 3], 9)], |v| v[0].gather(0, &i))
        }),
        case("scatter_add", || {
            // src larger than the indices (only the covered part gets a gradient), repeats.
            let i = ids(&[0, 2, 2, 1, 1, 1], &[2, 3]);
            gradcheck("scatter_add", &[x(&[3, 4], 10), x(&[2, 4], 11)], |v| v[0].scatter_add(1, &i, &v[1]))
        }),
        case("scatter_add", || {
            let i = ids(&[2, 0, 0, 2], &[2, 2]);
            gradcheck("scatter_add", &[x(&[3, 2], 12), x(&[2, 2], 13)], |v| v[0].scatter_add(0, &i, &v[1]))
        }),
        case("masked_scatter", || {
            let m = mask(&[1, 0, 0, 1, 1, 0], &[2, 3]);
            gradcheck("masked_scatter", &[x(&[2, 3, 4], 14), x(&[3, 4], 15)], |v| v[0].masked_scatter(&m, &v[1]))
        }),
        case("where_cond", || {
            // Mask, branches all broadcast: [3, 1] mask, [4] and [3, 4] branches.
            let m = mask(&[1, 0, 1], &[3, 1]);
            gradcheck("where_cond", &[x(&[4], 16), x(&[3, 4], 17)], |v| Tensor::where_cond(&m, &v[0], &v[1]))
        }),
        case("where_cond", || {
            let m = mask(&[0, 1, 1, 0, 1, 0], &[2, 3]);
            gradcheck("where_cond", &[x(&[2, 3], 18), x(&[1], 19)], |v| Tensor::where_cond(&m, &v[0], &v[1]))
        }),
    ]
}
