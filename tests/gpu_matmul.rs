//! GPU suite, matmul on cuBLASLt: batched products with broadcast batch dims, transposed and
//! narrowed operands (layout flags, leading dims and strided batches, never copies unless the
//! strides fit no GEMM layout), odd sizes and size-1 dims; forward and both gradients against the
//! CPU in f32 (fp32 compute, no TF32) and bf16 (fp32 accumulation). 100 proptest cases.
//!
//! GEMM plans are cached per device (keyed on shapes, strides, alignments and the epilogue, never
//! on values): the same shapes run again with other values and with other shapes in between. The
//! Linear layer's bias goes into cuBLASLt's epilogue (one primitive) when it is packed and 16-byte
//! aligned, and in as C otherwise (misaligned slices, strided and broadcast biases: two); both
//! paths against the CPU, and the primitive counts say which path ran.

mod common;
mod gpu_common;

use common::{arb_dim, config, count, input, ViewKind};
use gpu_common::{check, gpu, DTYPES};
use proptest::prelude::*;
use vlm4vla::engine::{counters, no_grad, DType, Device, Result, Tensor};

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
            // The Linear op: rows folded, the bias in the GEMM's epilogue.
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

fn uniform(shape: &[usize], seed: u64, d: Device) -> Tensor {
    Tensor::rand_uniform(-1.0, 1.0, shape, DType::F32, d, seed).unwrap()
}

/// The backend primitives of one forward `x.linear(w, bias)` (no graph): 1 with the bias in the
/// GEMM's epilogue, 2 when the output is filled with the bias first.
fn forward_primitives(x: &Tensor, w: &Tensor, bias: &Tensor) -> u64 {
    let before = counters::snapshot();
    let y = no_grad(|| x.linear(w, Some(bias))).unwrap();
    let used = counters::snapshot().since(&before).primitives;
    drop(y);
    used
}

/// Linear inputs `x: sx`, `w: [n, k]` and a bias source of shape `bs` on `d`, in `dtype`.
fn linear_inputs(sx: &[usize], n: usize, bs: &[usize], seed: u64, dtype: DType, d: Device) -> Vec<Tensor> {
    let k = sx[sx.len() - 1];
    [uniform(sx, seed, d), uniform(&[n, k], seed ^ 1, d), uniform(bs, seed ^ 2, d)]
        .into_iter()
        .map(|t| t.to_dtype(dtype).unwrap())
        .collect()
}

/// The same GEMMs again with other values, and other shapes in between: every call after the
/// first of a shape runs from a cached plan, and each matches the CPU (forward, and the gradient
/// GEMMs `G W` and `Gᵀ X`, which have plans of their own).
#[test]
fn cached_plans_across_shapes_and_values() {
    if gpu().is_none() {
        return;
    }
    let shapes: [(&[usize], usize); 4] = [(&[4, 7], 9), (&[2, 3, 16], 24), (&[33, 5], 1), (&[1, 64], 40)];
    for dtype in DTYPES {
        for round in 0..2u64 {
            for (i, &(sx, n)) in shapes.iter().enumerate() {
                let seed = 100 * round + i as u64;
                let k = sx[sx.len() - 1];
                check(
                    "linear_cached",
                    dtype,
                    true,
                    |d| linear_inputs(sx, n, &[n], seed, DType::F32, d),
                    |x| x[0].linear(&x[1], Some(&x[2])),
                );
                check(
                    "matmul_cached",
                    dtype,
                    true,
                    |d| vec![uniform(sx, seed ^ 3, d), uniform(&[k, n], seed ^ 4, d)],
                    |x| x[0].matmul(&x[1]),
                );
            }
        }
    }
    count("gpu", "linear", 2 * 2 * shapes.len());
}

/// The bias in cuBLASLt's epilogue: rows folded from rank-3 and rank-4 inputs and from a 2-D one,
/// f32 and bf16, the bias in a buffer of its own or a slice starting 16 bytes into one (aligned
/// enough, a plan of its own): one primitive per forward.
#[test]
fn linear_bias_in_the_epilogue() {
    let Some(dev) = gpu() else { return };
    let shapes: [(&[usize], usize); 4] = [(&[2, 5, 16], 24), (&[3, 2, 4, 8], 8), (&[7, 32], 16), (&[6, 9], 1)];
    for dtype in DTYPES {
        let skip = 16 / dtype.size_in_bytes();
        for (i, &(sx, n)) in shapes.iter().enumerate() {
            let seed = 7 + i as u64;
            check(
                "linear_epilogue",
                dtype,
                true,
                |d| linear_inputs(sx, n, &[n], seed, DType::F32, d),
                |x| x[0].linear(&x[1], Some(&x[2])),
            );
            check(
                "linear_epilogue_slice",
                dtype,
                true,
                |d| linear_inputs(sx, n, &[n + skip], seed, DType::F32, d),
                |x| x[0].linear(&x[1], Some(&x[2].narrow(0, skip, n)?)),
            );
            // Whether cuBLASLt has a bias epilogue for one output column is its choice: counted
            // only for the ordinary widths.
            if n > 1 {
                let x = linear_inputs(sx, n, &[n + skip], seed, dtype, dev);
                assert_eq!(forward_primitives(&x[0], &x[1], &x[2].narrow(0, 0, n).unwrap()), 1, "{sx:?} n={n} {dtype}");
                let slice = x[2].narrow(0, skip, n).unwrap();
                assert_eq!(forward_primitives(&x[0], &x[1], &slice), 1, "{sx:?} n={n} {dtype}, 16-byte slice");
            }
        }
    }
    count("gpu", "linear", 2 * 2 * shapes.len());
}

/// A bias the epilogue cannot read in place goes in as C (the output filled with it, the GEMM
/// adding onto it): a slice one element into its buffer (under 16-byte alignment), a strided
/// column of a matrix, a broadcast scalar. Same results as the CPU; one more primitive.
#[test]
fn linear_bias_through_c() {
    let Some(dev) = gpu() else { return };
    let extra = u64::from(dev.is_cuda());
    // Each case: the bias's source shape for `n`, and the `[n]` view of it.
    type Source = fn(usize) -> Vec<usize>;
    type View = fn(&Tensor, usize) -> Result<Tensor>;
    let views: [(&str, Source, View); 3] = [
        ("misaligned", |n| vec![n + 1], |b, n| b.narrow(0, 1, n)),
        ("strided", |n| vec![n, 2], |b, _| b.narrow(1, 1, 1)?.squeeze(1)),
        ("broadcast", |_| vec![1], |b, n| b.broadcast_as(&[n])),
    ];
    let shapes: [(&[usize], usize); 3] = [(&[2, 5, 16], 24), (&[9, 8], 8), (&[3, 4, 5], 7)];
    for dtype in DTYPES {
        for (i, &(sx, n)) in shapes.iter().enumerate() {
            for (what, source, view) in views {
                let seed = 31 + i as u64;
                check(
                    &format!("linear_bias_{what}"),
                    dtype,
                    true,
                    |d| linear_inputs(sx, n, &source(n), seed, DType::F32, d),
                    |x| x[0].linear(&x[1], Some(&view(&x[2], n)?)),
                );
                let x = linear_inputs(sx, n, &source(n), seed, dtype, dev);
                let bias = view(&x[2], n).unwrap();
                assert_eq!(forward_primitives(&x[0], &x[1], &bias), 1 + extra, "{what} bias, {sx:?} n={n} {dtype}");
            }
        }
    }
    count("gpu", "linear", 2 * shapes.len() * views.len());
}
