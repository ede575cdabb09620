//! Property tests of reductions against naive references.

// Naive references index plain arrays by position on purpose.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{arb_shape, arb_view, assert_close, count, input, tol, values, Nd};
use proptest::prelude::*;
use vlm4vla::engine::{DType, Device, Tensor};

/// Reduce `x` over `dim` with `f` applied to the values of each fibre (keepdim).
fn reduce_ref(x: &Nd, dim: usize, f: impl Fn(&[f64]) -> f64) -> Nd {
    let mut shape = x.shape.clone();
    shape[dim] = 1;
    let mut out = Nd::zeros(&shape);
    for i in 0..out.data.len() {
        let mut idx = out.index_of(i);
        let fibre: Vec<f64> = (0..x.shape[dim])
            .map(|k| {
                idx[dim] = k;
                x.get(&idx)
            })
            .collect();
        out.data[i] = f(&fibre);
    }
    out
}

fn first_extreme(v: &[f64], max: bool) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if (max && x > v[best]) || (!max && x < v[best]) {
            best = i;
        }
    }
    best
}

proptest! {
    #![proptest_config(common::config(64))]

    #[test]
    fn reductions_match_reference(
        shape in arb_shape(1..=4, 4000),
        view in arb_view(),
        dtype in prop::sample::select(vec![DType::F32, DType::F64, DType::BF16]),
        dim_pick in 0usize..4,
        seed in 0u64..1000,
    ) {
        let dim = dim_pick % shape.len();
        let x = input(&shape, view, -3.0, 3.0, dtype, seed, Device::Cpu);
        let nx = values(&x);
        let (atol, rtol) = tol(dtype);
        // Sums of up to a few thousand terms: scale the absolute tolerance with the fibre length.
        let n = shape[dim] as f64;
        assert_close("sum", &x.sum_keepdim(dim).unwrap(), &reduce_ref(&nx, dim, |v| v.iter().sum()), atol * n, rtol);
        assert_close("mean", &x.mean_keepdim(dim).unwrap(), &reduce_ref(&nx, dim, |v| v.iter().sum::<f64>() / v.len() as f64), atol, rtol);
        assert_close("max", &x.max_keepdim(dim).unwrap(), &reduce_ref(&nx, dim, |v| v.iter().cloned().fold(f64::MIN, f64::max)), 0.0, 0.0);
        assert_close("min", &x.min_keepdim(dim).unwrap(), &reduce_ref(&nx, dim, |v| v.iter().cloned().fold(f64::MAX, f64::min)), 0.0, 0.0);
        assert_close("argmax", &x.argmax_keepdim(dim).unwrap(), &reduce_ref(&nx, dim, |v| first_extreme(v, true) as f64), 0.0, 0.0);
        let squeezed = x.sum(dim).unwrap();
        let mut s = shape.clone();
        s.remove(dim);
        prop_assert_eq!(squeezed.shape(), s.as_slice());
        let total: f64 = nx.data.iter().sum();
        let got = x.sum_all().unwrap().to_scalar::<f64>().unwrap();
        prop_assert!((got - total).abs() <= atol * nx.data.len() as f64 + rtol * total.abs() + 1e-9, "sum_all {got} vs {total}");
        let norm = nx.data.iter().map(|v| v * v).sum::<f64>().sqrt();
        let got = x.norm_l2().unwrap().to_scalar::<f64>().unwrap();
        prop_assert!((got - norm).abs() <= rtol * norm + 1e-9, "norm_l2 {got} vs {norm}");
        for op in ["sum", "mean", "max", "min", "argmax", "norm_l2"] {
            count("property", op, 1);
        }
    }

    #[test]
    fn multi_dim_sum_matches(shape in arb_shape(2..=4, 3000), seed in 0u64..1000) {
        let x = input(&shape, common::ViewKind::Transposed, -1.0, 1.0, DType::F64, seed, Device::Cpu);
        let dims = [0, shape.len() - 1];
        let got = x.sum_dims_keepdim(&dims).unwrap();
        let want = reduce_ref(&reduce_ref(&values(&x), 0, |v| v.iter().sum()), shape.len() - 1, |v| v.iter().sum());
        assert_close("sum_dims", &got, &want, 1e-12, 1e-12);
        count("property", "sum", 1);
    }
}

#[test]
fn bad_dims_are_errors() {
    let x = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let err = x.sum_keepdim(2).unwrap_err().to_string();
    assert!(err.contains("sum") && err.contains("[2, 3]"), "{err}");
    assert!(x.max(-3).is_err());
    assert!(Tensor::zeros(&[2, 0], DType::F32, Device::Cpu).unwrap().max(1).is_err());
}

/// A leading-dim sum large enough for the threaded path (a bias gradient's shape) adds each
/// column's rows in order: equal, bit for bit, to the sequential sum.
#[test]
fn large_leading_dim_sum_equals_the_sequential_sum() {
    let (rows, cols) = (300, 700);
    let v: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
    let x = Tensor::from_vec(v.clone(), &[rows, cols], Device::Cpu).unwrap();
    let got = x.sum_keepdim(0).unwrap().to_vec::<f32>().unwrap();
    for c in 0..cols {
        let mut want = 0.0f32;
        for r in 0..rows {
            want += v[r * cols + c];
        }
        assert_eq!(got[c].to_bits(), want.to_bits(), "column {c}");
    }
}
