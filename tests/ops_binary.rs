//! Property tests of the broadcasting binary ops and comparisons against naive references.

// Naive references index plain arrays by position on purpose.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{arb_shape, arb_view, assert_close, count, input, tol, values, Nd};
use proptest::prelude::*;
use vlm4vla::engine::{DType, Device, Tensor};

type BinaryCase = (&'static str, fn(&Tensor, &Tensor) -> vlm4vla::engine::Result<Tensor>, fn(f64, f64) -> f64);

/// Broadcast-compatible pair: `b` has a suffix of `a`'s dims, some replaced by 1.
fn arb_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    arb_shape(0..=4, 3000).prop_flat_map(|a| {
        let r = a.len();
        (Just(a.clone()), 0..=r, prop::collection::vec(any::<bool>(), r)).prop_map(|(a, drop, ones)| {
            let mut b: Vec<usize> = a[drop..].to_vec();
            for (i, d) in b.iter_mut().enumerate() {
                if ones[drop + i] {
                    *d = 1;
                }
            }
            (a, b)
        })
    })
}

/// Reference broadcasting: index `b` by `a`'s multi-index aligned at the end.
fn bcast_ref(a: &Nd, b: &Nd, swap: bool, f: impl Fn(f64, f64) -> f64) -> Nd {
    let (big, small) = if a.data.len() >= b.data.len() && a.shape.len() >= b.shape.len() { (a, b) } else { (b, a) };
    let mut out = Nd::zeros(&big.shape);
    for i in 0..big.data.len() {
        let idx = big.index_of(i);
        let off = big.shape.len() - small.shape.len();
        let sidx: Vec<usize> =
            small.shape.iter().enumerate().map(|(j, &d)| if d == 1 { 0 } else { idx[off + j] }).collect();
        let (x, y) = (big.data[i], small.get(&sidx));
        let (x, y) = if std::ptr::eq(big, a) != swap { (x, y) } else { (y, x) };
        out.data[i] = f(x, y);
    }
    out
}

proptest! {
    #![proptest_config(common::config(48))]

    #[test]
    fn binary_ops_broadcast_and_match(
        (sa, sb) in arb_pair(),
        va in arb_view(),
        vb in arb_view(),
        swap in any::<bool>(),
        dtype in prop::sample::select(vec![DType::F32, DType::F64, DType::BF16]),
        seed in 0u64..1000,
    ) {
        let (sa, sb) = if swap { (sb, sa) } else { (sa, sb) };
        let a = input(&sa, va, -2.0, 2.0, dtype, seed, Device::Cpu);
        let b = input(&sb, vb, 0.5, 2.0, dtype, seed + 1, Device::Cpu);
        let (na, nb) = (values(&a), values(&b));
        let ops: [BinaryCase; 6] = [
            ("add", |a, b| a.add(b), |x, y| x + y),
            ("sub", |a, b| a.sub(b), |x, y| x - y),
            ("mul", |a, b| a.mul(b), |x, y| x * y),
            ("div", |a, b| a.div(b), |x, y| x / y),
            ("maximum", |a, b| a.maximum(b), f64::max),
            ("minimum", |a, b| a.minimum(b), f64::min),
        ];
        for (name, op, f) in ops {
            let got = op(&a, &b).unwrap();
            let want = bcast_ref(&na, &nb, false, f);
            let (atol, rtol) = tol(dtype);
            assert_close(name, &got, &want, atol, rtol);
            count("property", name, 1);
        }
        let lt = a.lt(&b).unwrap();
        prop_assert_eq!(lt.dtype(), DType::U8);
        assert_close("lt", &lt, &bcast_ref(&na, &nb, false, |x, y| (x < y) as u8 as f64), 0.0, 0.0);
        assert_close("eq", &a.eq(&a).unwrap(), &na.map(|_| 1.0), 0.0, 0.0);
        count("property", "cmp", 1);
    }
}

#[test]
fn incompatible_shapes_are_errors_naming_the_shapes() {
    let a = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap();
    let err = a.add(&b).unwrap_err().to_string();
    assert!(err.contains("add") && err.contains("[2, 3]") && err.contains("[4]"), "{err}");
    let c = Tensor::zeros(&[2, 3], DType::F64, Device::Cpu).unwrap();
    assert!(a.mul(&c).unwrap_err().to_string().contains("dtype"));
}
