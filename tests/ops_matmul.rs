//! Property tests of batched, broadcast, transposed matmul against a naive triple loop.

// Naive references index plain arrays by position on purpose.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{arb_dim, assert_close, count, input, tol, values, Nd, ViewKind};
use proptest::prelude::*;
use vlm4vla::engine::{DType, Device, Tensor};

fn matmul_ref(a: &Nd, b: &Nd) -> Nd {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    let rank = ra.max(rb);
    let bdim = |s: &[usize], i: usize| -> usize {
        let r = s.len() - 2;
        if i + r >= rank - 2 {
            s[i + r - (rank - 2)]
        } else {
            1
        }
    };
    let batch: Vec<usize> = (0..rank - 2).map(|i| bdim(&a.shape, i).max(bdim(&b.shape, i))).collect();
    let mut shape = batch.clone();
    shape.extend([m, n]);
    let mut out = Nd::zeros(&shape);
    for i in 0..out.data.len() {
        let idx = out.index_of(i);
        let pick = |s: &[usize], row: usize, col: usize| -> Vec<usize> {
            let r = s.len() - 2;
            let mut v: Vec<usize> = (0..r).map(|j| if s[j] == 1 { 0 } else { idx[rank - 2 - r + j] }).collect();
            v.extend([row, col]);
            v
        };
        let (r, c) = (idx[rank - 2], idx[rank - 1]);
        out.data[i] = (0..k).map(|p| a.get(&pick(&a.shape, r, p)) * b.get(&pick(&b.shape, p, c))).sum();
    }
    out
}

proptest! {
    #![proptest_config(common::config(64))]

    #[test]
    fn matmul_matches_reference(
        m in arb_dim(), k in arb_dim(), n in arb_dim(),
        batch_a in prop::collection::vec(1usize..4, 0..=2),
        b_batched in any::<bool>(),
        va in prop::sample::select(vec![ViewKind::Contiguous, ViewKind::Transposed, ViewKind::Narrowed]),
        vb in prop::sample::select(vec![ViewKind::Contiguous, ViewKind::Transposed, ViewKind::Narrowed]),
        dtype in prop::sample::select(vec![DType::F32, DType::F64, DType::BF16, DType::F16]),
        seed in 0u64..1000,
    ) {
        let mut sa = batch_a.clone();
        sa.extend([m, k]);
        // b either shares the batch dims (with some set to 1: broadcast) or is a plain matrix.
        let mut sb: Vec<usize> = if b_batched { batch_a.iter().enumerate().map(|(i, &d)| if i % 2 == 0 { 1 } else { d }).collect() } else { vec![] };
        sb.extend([k, n]);
        let a = input(&sa, va, -1.0, 1.0, dtype, seed, Device::Cpu);
        let b = input(&sb, vb, -1.0, 1.0, dtype, seed + 7, Device::Cpu);
        let got = a.matmul(&b).unwrap();
        let want = matmul_ref(&values(&a), &values(&b));
        let (atol, rtol) = tol(dtype);
        assert_close("matmul", &got, &want, atol * (k as f64).sqrt() * 4.0, rtol);
        count("property", "matmul", 1);
    }
}

proptest! {
    #![proptest_config(common::config(48))]

    /// `x.linear(w, b)` against the reference `x @ wᵀ + b`, for inputs of rank 1 to 4 in every
    /// view kind (a transposed input does not fold into rows: the op copies it).
    #[test]
    fn linear_matches_reference(
        lead in prop::collection::vec(1usize..5, 0..=3),
        k in arb_dim(), n in arb_dim(),
        with_bias in any::<bool>(),
        vx in prop::sample::select(vec![ViewKind::Contiguous, ViewKind::Transposed, ViewKind::Narrowed]),
        vw in prop::sample::select(vec![ViewKind::Contiguous, ViewKind::Transposed, ViewKind::Narrowed]),
        dtype in prop::sample::select(vec![DType::F32, DType::F64, DType::BF16, DType::F16]),
        seed in 0u64..1000,
    ) {
        let mut sx = lead.clone();
        sx.push(k);
        // A transposed view needs rank 2 or more.
        let vx = if sx.len() < 2 { ViewKind::Contiguous } else { vx };
        let x = input(&sx, vx, -1.0, 1.0, dtype, seed, Device::Cpu);
        let w = input(&[n, k], vw, -1.0, 1.0, dtype, seed + 3, Device::Cpu);
        let b = input(&[n], ViewKind::Contiguous, -1.0, 1.0, dtype, seed + 5, Device::Cpu);
        let bias = with_bias.then_some(&b);
        let got = x.linear(&w, bias).unwrap();
        let rows: usize = lead.iter().product();
        let mut want = matmul_ref(&values(&x.reshape(&[rows, k]).unwrap()), &values(&w.t().unwrap()));
        if with_bias {
            let bv = values(&b);
            for (i, v) in want.data.iter_mut().enumerate() {
                *v += bv.data[i % n];
            }
        }
        let mut shape = lead.clone();
        shape.push(n);
        prop_assert_eq!(got.shape(), &shape[..]);
        want.shape = shape;
        let (atol, rtol) = tol(dtype);
        assert_close("linear", &got, &want, atol * (k as f64).sqrt() * 4.0, rtol);
        count("property", "linear", 1);
    }
}

#[test]
fn linear_errors_name_the_shapes() {
    let x = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let w = Tensor::zeros(&[4, 5], DType::F32, Device::Cpu).unwrap();
    let err = x.linear(&w, None).unwrap_err().to_string();
    assert!(err.contains("linear") && err.contains("[2, 3]") && err.contains("[4, 5]"), "{err}");
    let w = Tensor::zeros(&[4, 3], DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap();
    let err = x.linear(&w, Some(&b)).unwrap_err().to_string();
    assert!(err.contains("bias") && err.contains("[4]"), "{err}");
    assert!(x.linear(&w.to_dtype(DType::F64).unwrap(), None).is_err());
}

/// The weight's gradient is one `Gᵀ X` over all rows: the same values as the per-sample sum.
#[test]
fn linear_gradients_match_the_broadcast_matmul() {
    let x = Tensor::rand_uniform(-1., 1., &[3, 5, 6], DType::F64, Device::Cpu, 1).unwrap().variable();
    let w = Tensor::rand_uniform(-1., 1., &[4, 6], DType::F64, Device::Cpu, 2).unwrap().variable();
    let b = Tensor::rand_uniform(-1., 1., &[4], DType::F64, Device::Cpu, 3).unwrap().variable();
    let g1 = x.linear(&w, Some(&b)).unwrap().tanh().unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = x.matmul(&w.t().unwrap()).unwrap().add(&b).unwrap().tanh().unwrap().sum_all().unwrap().backward().unwrap();
    for t in [&x, &w, &b] {
        let (a, e) = (g1.get(t).unwrap(), g2.get(t).unwrap());
        assert_eq!(a.shape(), t.shape());
        assert_close("linear grad", a, &values(e), 1e-12, 1e-12);
    }
}

#[test]
fn transformer_like_shape_matches_reference_spot_checks() {
    // A 45×65 by 65×123 product with a transposed rhs view: spot-check every 97th element.
    let a = Tensor::rand_uniform(-1., 1., &[45, 65], DType::F32, Device::Cpu, 1).unwrap();
    let bt = Tensor::rand_uniform(-1., 1., &[123, 65], DType::F32, Device::Cpu, 2).unwrap();
    let got = a.matmul(&bt.t().unwrap()).unwrap();
    let want = matmul_ref(&values(&a), &values(&bt.t().unwrap().contiguous().unwrap()));
    assert_close("matmul", &got, &want, 1e-5, 1e-5);
}

#[test]
fn shape_errors_name_the_shapes() {
    let a = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros(&[4, 5], DType::F32, Device::Cpu).unwrap();
    let err = a.matmul(&b).unwrap_err().to_string();
    assert!(err.contains("matmul") && err.contains("[2, 3]") && err.contains("[4, 5]"), "{err}");
    assert!(a.matmul(&Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap()).is_err());
    let ids = Tensor::zeros(&[2, 2], DType::I64, Device::Cpu).unwrap();
    assert!(ids.matmul(&ids).is_err());
}
