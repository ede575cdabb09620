//! GPU suite, matmul on cuBLASLt: batched products with broadcast batch dims, transposed and
//! narrowed operands (layout flags, leading dims and strided batches, never copies unless the
//! strides fit no GEMM layout), odd sizes and size-1 dims; forward and both gradients against the
//! CPU in f32 (fp32 compute, no TF32) and bf16 (fp32 accumulation). 100 proptest cases.

mod common;
mod gpu_common;

use common::{arb_dim, config, count, input, ViewKind};
use gpu_common::{check, gpu, DTYPES};
use proptest::prelude::*;
use vlm4vla::engine::{DType, Device, Tensor};

fn arb_view2() -> impl Strategy<Value = ViewKind> {
    prop_oneof![Just(ViewKind::Contiguous), Just(ViewKind::Transposed), Just(ViewKind::Narrowed)]
}

proptest! {
    #![proptest_config(config(100))]

    #[test]
    fn matmul(
        (m, k, n) in (arb_dim(), arb_dim(), arb_dim()),
        batch in prop::collection::vec(1usize..4, 0..3),
        bcast in any::<u8>(),
        views in (arb_view2(), arb_view2()),
        seed in any::<u64>(),
    ) {
        if gpu().is_none() { return Ok(()); }
        // Each batch dim is either shared or broadcast (size 1) on one side.
        let ba: Vec<usize> = batch.iter().enumerate().map(|(i, &b)| if bcast & (1 << i) != 0 { 1 } else { b }).collect();
        let bb: Vec<usize> = batch.iter().enumerate().map(|(i, &b)| if bcast & (1 << (i + 4)) != 0 { 1 } else { b }).collect();
        let sa: Vec<usize> = ba.iter().copied().chain([m, k]).collect();
        let sb: Vec<usize> = bb.iter().copied().chain([k, n]).collect();
        for dtype in DTYPES {
            check("matmul", dtype, true, |d| vec![
                input(&sa, views.0, -1.0, 1.0, DType::F32, seed, d),
                input(&sb, views.1, -1.0, 1.0, DType::F32, seed ^ 7, d),
            ], |x| x[0].matmul(&x[1]));
            // Linear layers: x @ wᵀ with a 2-D weight broadcast over the batch.
            check("matmul_linear", dtype, true, |d| vec![
                input(&sa, views.0, -1.0, 1.0, DType::F32, seed, d),
                input(&[n, k], ViewKind::Contiguous, -1.0, 1.0, DType::F32, seed ^ 9, d),
            ], |x| x[0].matmul(&x[1].t()?));
            // The Linear op: rows folded, the bias added after the GEMM.
            check("linear", dtype, true, |d| vec![
                input(&sa, views.0, -1.0, 1.0, DType::F32, seed, d),
                input(&[n, k], views.1, -1.0, 1.0, DType::F32, seed ^ 9, d),
                input(&[n], ViewKind::Contiguous, -1.0, 1.0, DType::F32, seed ^ 11, d),
            ], |x| x[0].linear(&x[1], Some(&x[2])));
        }
        count("gpu", "matmul", 1);
        count("gpu", "linear", 1);
    }
}

#[test]
fn matmul_edge_shapes() {
    if gpu().is_none() {
        return;
    }
    for dtype in DTYPES {
        for (sa, sb) in [
            (vec![1usize, 1], vec![1usize, 1]),
            (vec![0, 4], vec![4, 3]),
            (vec![3, 0], vec![0, 5]),
            (vec![2, 1, 7], vec![7, 1]),
            (vec![5, 1, 64], vec![1, 64, 33]),
            (vec![257, 129], vec![129, 3]),
        ] {
            check(
                "matmul_edge",
                dtype,
                sa.iter().all(|&d| d > 0) && sb.iter().all(|&d| d > 0),
                |d: Device| {
                    vec![
                        Tensor::rand_uniform(-1.0, 1.0, &sa, DType::F32, d, 1).unwrap(),
                        Tensor::rand_uniform(-1.0, 1.0, &sb, DType::F32, d, 2).unwrap(),
                    ]
                },
                |x| x[0].matmul(&x[1]),
            );
        }
        // A batch broadcast on one of two batch dims has no single batch stride: copied first.
        check(
            "matmul_mixed_broadcast",
            dtype,
            true,
            |d: Device| {
                vec![
                    Tensor::rand_uniform(-1.0, 1.0, &[3, 1, 5, 4], DType::F32, d, 1).unwrap(),
                    Tensor::rand_uniform(-1.0, 1.0, &[1, 2, 4, 6], DType::F32, d, 2).unwrap(),
                ]
            },
            |x| x[0].matmul(&x[1]),
        );
    }
}
