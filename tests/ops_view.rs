//! Property tests of views: they alias storage correctly and compose.

// Naive references index plain arrays by position on purpose.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{arb_shape, arb_view, assert_close, count, input, values, Nd};
use proptest::prelude::*;
use vlm4vla::engine::{DType, Device, Tensor};

fn permute_ref(x: &Nd, perm: &[usize]) -> Nd {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let mut out = Nd::zeros(&shape);
    for i in 0..out.data.len() {
        let idx = out.index_of(i);
        let mut src = vec![0; perm.len()];
        for (j, &p) in perm.iter().enumerate() {
            src[p] = idx[j];
        }
        out.data[i] = x.get(&src);
    }
    out
}

proptest! {
    #![proptest_config(common::config(96))]

    #[test]
    fn permute_transpose_narrow_match_reference(
        shape in arb_shape(1..=4, 5000),
        view in arb_view(),
        perm_seed in any::<u64>(),
        start_frac in 0.0f64..1.0,
        len_frac in 0.0f64..1.0,
        seed in 0u64..1000,
    ) {
        let x = input(&shape, view, -1.0, 1.0, DType::F32, seed, Device::Cpu);
        let nx = values(&x);
        // A pseudo-random permutation.
        let mut perm: Vec<usize> = (0..shape.len()).collect();
        let mut s = perm_seed;
        for i in (1..perm.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            perm.swap(i, (s >> 33) as usize % (i + 1));
        }
        let p = x.permute(&perm).unwrap();
        assert_close("permute", &p, &permute_ref(&nx, &perm), 0.0, 0.0);
        assert_close("contiguous", &p.contiguous().unwrap(), &permute_ref(&nx, &perm), 0.0, 0.0);
        // narrow on the last dim of the permuted view
        let d = shape.len() - 1;
        let full = p.shape()[d];
        let start = ((full as f64) * start_frac) as usize % full.max(1);
        let len = (((full - start) as f64) * len_frac) as usize;
        let nr = p.narrow(d, start, len).unwrap();
        let pr = permute_ref(&nx, &perm);
        let mut want_shape = pr.shape.clone();
        want_shape[d] = len;
        let mut want = Nd::zeros(&want_shape);
        for i in 0..want.data.len() {
            let mut idx = want.index_of(i);
            idx[d] += start;
            want.data[i] = pr.get(&idx);
        }
        assert_close("narrow", &nr, &want, 0.0, 0.0);
        // reshape of a strided view copies, of a contiguous one views; both keep row-major order
        let flat = nr.reshape(&[nr.elem_count()]).unwrap();
        prop_assert_eq!(flat.to_vec::<f64>().unwrap(), want.data.clone());
        // squeeze/unsqueeze round trip
        let u = nr.unsqueeze(0).unwrap().unsqueeze(-1).unwrap();
        prop_assert_eq!(u.rank(), nr.rank() + 2);
        prop_assert_eq!(u.squeeze(0).unwrap().squeeze(-1).unwrap().to_vec::<f64>().unwrap(), want.data);
        for op in ["permute", "contiguous", "narrow", "reshape"] {
            count("property", op, 1);
        }
    }

    #[test]
    fn broadcast_as_repeats_values(shape in arb_shape(1..=3, 400), extra in 1usize..4, seed in 0u64..1000) {
        let x = input(&shape, common::ViewKind::Contiguous, -1.0, 1.0, DType::F64, seed, Device::Cpu);
        let mut target = vec![extra];
        target.extend(shape.iter().map(|&d| if d == 1 { 3 } else { d }));
        let b = x.broadcast_as(&target).unwrap();
        let nx = values(&x);
        let mut want = Nd::zeros(&target);
        for i in 0..want.data.len() {
            let idx = want.index_of(i);
            let src: Vec<usize> = shape.iter().enumerate().map(|(j, &d)| if d == 1 { 0 } else { idx[j + 1] }).collect();
            want.data[i] = nx.get(&src);
        }
        assert_close("broadcast_as", &b, &want, 0.0, 0.0);
        count("property", "broadcast_as", 1);
    }

    #[test]
    fn to_dtype_round_trips(shape in arb_shape(0..=3, 1000), seed in 0u64..1000) {
        let x = input(&shape, common::ViewKind::Transposed, -100.0, 100.0, DType::F32, seed, Device::Cpu);
        let back = x.to_dtype(DType::F64).unwrap().to_dtype(DType::F32).unwrap();
        prop_assert_eq!(back.to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
        let bf = x.to_dtype(DType::BF16).unwrap().to_vec::<f32>().unwrap();
        for (a, b) in bf.iter().zip(x.to_vec::<f32>().unwrap()) {
            prop_assert!((a - b).abs() <= b.abs() / 128.0, "bf16 rounding {a} vs {b}");
        }
        count("property", "to_dtype", 1);
    }
}

#[test]
fn views_share_storage_without_copies() {
    let x = Tensor::arange(0., 12., 1., DType::F32, Device::Cpu).unwrap().reshape(&[3, 4]).unwrap();
    let t = x.t().unwrap();
    assert!(!t.is_contiguous());
    assert_eq!(t.layout().strides(), &[1, 4]);
    let n = x.narrow(1, 1, 2).unwrap();
    assert_eq!(n.layout().offset(), 1);
    assert_eq!(n.to_vec::<f32>().unwrap(), vec![1., 2., 5., 6., 9., 10.]);
    let b = Tensor::arange(0., 3., 1., DType::F32, Device::Cpu)
        .unwrap()
        .reshape(&[3, 1])
        .unwrap()
        .broadcast_as(&[2, 3, 4])
        .unwrap();
    assert_eq!(b.layout().strides(), &[0, 1, 0]);
}

#[test]
fn view_errors_name_op_and_shape() {
    let x = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let e = x.reshape(&[4, 2]).unwrap_err().to_string();
    assert!(e.contains("reshape") && e.contains("[2, 3]") && e.contains("[4, 2]"), "{e}");
    assert!(x.narrow(1, 2, 2).unwrap_err().to_string().contains("narrow"));
    assert!(x.permute(&[0, 0]).is_err());
    assert!(x.broadcast_as(&[3, 3]).is_err());
    assert!(x.squeeze(0).is_err());
    assert!(x.transpose(0, 2).is_err());
    assert!(Tensor::from_vec(vec![1f32; 5], &[2, 3], Device::Cpu).is_err());
    assert!(Tensor::arange(0., 1., 0., DType::F32, Device::Cpu).is_err());
    assert!(x.to_device(Device::Cuda(0)).unwrap_err().to_string().contains("cuda:0"));
}

#[test]
fn seeded_random_constructors_are_reproducible_and_distributed() {
    let a = Tensor::rand_normal(1.0, 2.0, &[20000], DType::F64, Device::Cpu, 5).unwrap().to_vec::<f64>().unwrap();
    let b = Tensor::rand_normal(1.0, 2.0, &[20000], DType::F64, Device::Cpu, 5).unwrap().to_vec::<f64>().unwrap();
    assert_eq!(a, b);
    let mean = a.iter().sum::<f64>() / a.len() as f64;
    let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / a.len() as f64;
    assert!((mean - 1.0).abs() < 0.05 && (var.sqrt() - 2.0).abs() < 0.05, "mean {mean} std {}", var.sqrt());
    let u = Tensor::rand_uniform(-2.0, 3.0, &[20000], DType::F32, Device::Cpu, 9).unwrap().to_vec::<f32>().unwrap();
    assert!(u.iter().all(|&v| (-2.0..3.0).contains(&v)));
    let c = Tensor::rand_normal(1.0, 2.0, &[4], DType::F64, Device::Cpu, 6).unwrap().to_vec::<f64>().unwrap();
    assert_ne!(c, a[..4].to_vec());
    let full = Tensor::full(2.5, &[2, 2], DType::BF16, Device::Cpu).unwrap();
    assert_eq!(full.to_vec::<f32>().unwrap(), vec![2.5; 4]);
    assert_eq!(
        Tensor::arange(1., 2., 0.25, DType::F64, Device::Cpu).unwrap().to_vec::<f64>().unwrap(),
        vec![1., 1.25, 1.5, 1.75]
    );
}

/// A permuted view large enough for the threaded gather copies every element to its place.
#[test]
fn large_permuted_copy_is_exact() {
    let (a, b, c) = (40, 60, 70);
    let v: Vec<f32> = (0..a * b * c).map(|i| i as f32).collect();
    let x = Tensor::from_vec(v, &[a, b, c], Device::Cpu).unwrap();
    let y = x.permute(&[2, 0, 1]).unwrap().contiguous().unwrap().to_vec::<f32>().unwrap();
    for k in 0..c {
        for i in 0..a {
            for j in 0..b {
                assert_eq!(y[(k * a + i) * b + j], ((i * b + j) * c + k) as f32);
            }
        }
    }
    // A broadcast (stride-0) operand and a narrowed one go through the same runs.
    let row = Tensor::from_vec((0..c).map(|i| i as f32).collect::<Vec<_>>(), &[1, c], Device::Cpu).unwrap();
    let wide = row.broadcast_as(&[a * b, c]).unwrap().contiguous().unwrap().to_vec::<f32>().unwrap();
    assert!(wide.chunks(c).all(|r| r.iter().enumerate().all(|(i, &v)| v == i as f32)));
    let nar = x.narrow(2, 5, 30).unwrap().contiguous().unwrap().to_vec::<f32>().unwrap();
    assert_eq!(nar[0], 5.0);
    assert_eq!(nar[30], (c + 5) as f32);
}
