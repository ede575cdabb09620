//! RoPE against a naive f64 reference over odd shapes, strided inputs, `[L, D]` and `[B, L, D]`
//! tables and F32/F64/BF16; gradients against the composite twin; error paths.

// Naive references index plain arrays by position on purpose.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{arb_view, assert_close, count, input, tol, values, Nd, ViewKind};
use proptest::prelude::*;
use vlm4vla::engine::{DType, Device, Tensor};

/// Naive rotate-half rope in f64: `out[j] = x[j]c[j] − x[j+D/2]s[j]`, `out[j+D/2] = x[j+D/2]c + x[j]s`.
fn reference(x: &Nd, cos: &Nd, sin: &Nd) -> Nd {
    let (b, l, h, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let half = d / 2;
    let mut out = Nd::zeros(&x.shape);
    for bi in 0..b {
        for li in 0..l {
            let t = |j: usize| if cos.shape.len() == 3 { vec![bi, li, j] } else { vec![li, j] };
            for hi in 0..h {
                for j in 0..d {
                    let rot = if j < half { -x.get(&[bi, li, hi, j + half]) } else { x.get(&[bi, li, hi, j - half]) };
                    let v = x.get(&[bi, li, hi, j]) * cos.get(&t(j)) + rot * sin.get(&t(j));
                    out.set(&[bi, li, hi, j], v);
                }
            }
        }
    }
    out
}

fn arb_case() -> impl Strategy<Value = (Vec<usize>, bool, ViewKind, u64)> {
    (
        1usize..=3,
        common::arb_dim(),
        1usize..=4,
        prop::sample::select(vec![2usize, 4, 6, 8, 10, 16, 64]),
        any::<bool>(),
        arb_view(),
        any::<u64>(),
    )
        .prop_map(|(b, l, h, d, batched, view, seed)| (vec![b, l.min(70), h, d], batched, view, seed))
}

fn tables(shape: &[usize], batched: bool, dtype: DType, seed: u64) -> (Tensor, Tensor) {
    let (b, l, d) = (shape[0], shape[1], shape[3]);
    let ts: Vec<usize> = if batched { vec![b, l, d] } else { vec![l, d] };
    let angles = Tensor::rand_uniform(-3.0, 3.0, &ts, DType::F64, Device::Cpu, seed).unwrap();
    (angles.cos().unwrap().to_dtype(dtype).unwrap(), angles.sin().unwrap().to_dtype(dtype).unwrap())
}

fn check_forward(shape: &[usize], batched: bool, view: ViewKind, seed: u64, dtype: DType) {
    let x = input(shape, view, -2.0, 2.0, dtype, seed, Device::Cpu);
    let (cos, sin) = tables(shape, batched, dtype, seed ^ 5);
    let y = x.rope(&cos, &sin).unwrap();
    assert_eq!(y.dtype(), dtype);
    let (atol, rtol) = tol(dtype);
    assert_close("rope", &y, &reference(&values(&x), &values(&cos), &values(&sin)), atol, rtol);
}

proptest! {
    #![proptest_config(common::config(64))]

    #[test]
    fn rope_matches_reference(c in arb_case(), f64_case in any::<bool>()) {
        count("property", "rope", 1);
        let (shape, batched, view, seed) = c;
        check_forward(&shape, batched, view, seed, if f64_case { DType::F64 } else { DType::F32 });
    }

    #[test]
    fn rope_bf16_matches_reference(c in arb_case()) {
        count("property", "rope", 1);
        let (shape, batched, view, seed) = c;
        check_forward(&shape, batched, view, seed, DType::BF16);
    }

    #[test]
    fn rope_gradient_matches_composite(c in arb_case(), f64_case in any::<bool>()) {
        count("property", "rope", 1);
        let (shape, batched, view, seed) = c;
        let dtype = if f64_case { DType::F64 } else { DType::F32 };
        let x = input(&shape, view, -2.0, 2.0, dtype, seed, Device::Cpu).variable();
        let (cos, sin) = tables(&shape, batched, dtype, seed ^ 5);
        let fused = x.rope(&cos, &sin).unwrap();
        let twin = x.rope_composite(&cos, &sin).unwrap();
        let (atol, rtol) = tol(dtype);
        assert_close("rope vs composite", &fused, &values(&twin), atol, rtol);
        let probe = Tensor::rand_uniform(-1.0, 1.0, &shape, dtype, Device::Cpu, seed ^ 9).unwrap();
        let gf = fused.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gt = twin.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close("rope dx vs composite", gf.get(&x).unwrap(), &values(gt.get(&x).unwrap()), atol, rtol);
    }
}

/// Identity tables leave x alone; a quarter turn (cos 0, sin 1) is rotate_half itself.
#[test]
fn rope_fixed_cases() {
    let x = Tensor::from_vec(vec![1f64, 2., 3., 4.], &[1, 1, 1, 4], Device::Cpu).unwrap();
    let ones = Tensor::ones(&[1, 4], DType::F64, Device::Cpu).unwrap();
    let zeros = Tensor::zeros(&[1, 4], DType::F64, Device::Cpu).unwrap();
    assert_eq!(x.rope(&ones, &zeros).unwrap().to_vec::<f64>().unwrap(), vec![1., 2., 3., 4.]);
    assert_eq!(x.rope(&zeros, &ones).unwrap().to_vec::<f64>().unwrap(), vec![-3., -4., 1., 2.]);
    // Tables in another float dtype than x are used in x's precision.
    let y = x.to_dtype(DType::BF16).unwrap().rope(&zeros, &ones).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    assert_eq!(y.to_vec::<f64>().unwrap(), vec![-3., -4., 1., 2.]);
}

#[test]
fn rope_errors() {
    let t = |s: &[usize]| Tensor::zeros(s, DType::F32, Device::Cpu).unwrap();
    let x = t(&[2, 5, 3, 4]);
    let (c, s) = (t(&[5, 4]), t(&[5, 4]));
    assert!(x.rope(&c, &s).is_ok());
    assert!(x.rope(&t(&[2, 5, 4]), &t(&[2, 5, 4])).is_ok());
    assert!(t(&[2, 5, 3, 5]).rope(&t(&[5, 5]), &t(&[5, 5])).is_err());
    assert!(t(&[5, 3, 4]).rope(&c, &s).is_err());
    assert!(x.rope(&t(&[4, 4]), &t(&[4, 4])).is_err());
    assert!(x.rope(&t(&[5, 6]), &t(&[5, 6])).is_err());
    assert!(x.rope(&c, &t(&[2, 5, 4])).is_err());
    assert!(x.rope(&t(&[3, 5, 4]), &t(&[3, 5, 4])).is_err());
    assert!(x.rope(&t(&[5]), &t(&[5])).is_err());
    let ints = Tensor::zeros(&[2, 5, 3, 4], DType::I64, Device::Cpu).unwrap();
    assert!(ints.rope(&c, &s).is_err());
    assert!(x.rope(&Tensor::zeros(&[5, 4], DType::U8, Device::Cpu).unwrap(), &s).is_err());
    let err = x.rope(&c.variable(), &s).unwrap_err().to_string();
    assert!(err.contains("constants"), "{err}");
    assert!(x.rope(&c, &s.variable()).is_err());
    assert!(x.rope_composite(&c.variable(), &s).is_err());
}
