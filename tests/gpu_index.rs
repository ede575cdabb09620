//! GPU suite, joining and indexing: cat / stack / split / chunk, index_select (embedding lookups,
//! repeated indices), gather, scatter_add (indices smaller than the input on other dims),
//! masked_scatter (image features into a token sequence) on float data with gradients, and the
//! same data movement on u8 / i64 tensors. 100 proptest cases per test in f32 and bf16.

mod common;
mod gpu_common;

use common::{arb_shape, arb_view, config, count, input};
use gpu_common::{check, dry_run, gpu, DTYPES};
use proptest::prelude::*;
use vlm4vla::engine::{counters, DType, Device, Tensor};

/// Indices in `0..size`, `n` of them, repeats included, from `seed`.
fn indices(n: usize, size: usize, seed: u64) -> Vec<i64> {
    (0..n).map(|i| ((seed.rotate_left(i as u32 % 64) ^ (i as u64 * 0x9e37_79b9)) % size as u64) as i64).collect()
}

proptest! {
    #![proptest_config(config(100))]

    #[test]
    fn cat_stack_split(shape in arb_shape(1..=3, 2000), views in (arb_view(), arb_view()), d in 0usize..3, extra in 1usize..5, seed in any::<u64>()) {
        if gpu().is_none() { return Ok(()); }
        let d = d % shape.len();
        let mut other = shape.clone();
        other[d] = extra;
        for dtype in DTYPES {
            let mk = |dev: Device| vec![
                input(&shape, views.0, -2.0, 2.0, DType::F32, seed, dev),
                input(&other, views.1, -2.0, 2.0, DType::F32, seed ^ 1, dev),
            ];
            check("cat", dtype, true, mk, |t| Tensor::cat(&[&t[0], &t[1], &t[0]], d));
            check("stack", dtype, true, mk, |t| Tensor::stack(&[&t[0], &t[0].sqr()?], d));
            check("split", dtype, true, mk, |t| {
                let parts = Tensor::cat(&[&t[0], &t[1]], d)?.split(&[shape[d], extra], d)?;
                parts[1].exp()?.sum_all()?.add(&parts[0].sin()?.sum_all()?)
            });
            check("chunk", dtype, true, mk, |t| {
                let parts = t[1].chunk(2, d)?;
                Tensor::cat(&parts.iter().rev().collect::<Vec<_>>(), d)
            });
        }
        // Integer tensors move the same way (ids, masks).
        check("cat_i64", DType::F32, false, |dev| vec![
            input(&shape, views.0, -9.0, 9.0, DType::F32, seed, dev).to_dtype(DType::I64).unwrap(),
            input(&other, views.1, 0.0, 9.0, DType::F32, seed ^ 1, dev).to_dtype(DType::I64).unwrap(),
        ], |t| Tensor::cat(&[&t[0], &t[1]], d));
        count("gpu", "cat", 1);
    }

    #[test]
    fn select_and_gather(shape in arb_shape(1..=3, 2000), view in arb_view(), d in 0usize..3, k in 1usize..40, shrink in any::<u8>(), seed in any::<u64>()) {
        if gpu().is_none() { return Ok(()); }
        let d = d % shape.len();
        let idx = indices(k, shape[d], seed);
        // gather's index is no larger than the input on the other dims.
        let ishape: Vec<usize> = shape.iter().enumerate().map(|(i, &s)| {
            if i == d { k } else if shrink & (1 << i) != 0 { s.div_ceil(2) } else { s }
        }).collect();
        let gidx = indices(ishape.iter().product(), shape[d], seed ^ 3);
        for dtype in DTYPES {
            check("index_select", dtype, true, |dev| vec![
                input(&shape, view, -2.0, 2.0, DType::F32, seed, dev),
                Tensor::from_vec(idx.clone(), &[k], dev).unwrap(),
            ], |t| t[0].index_select(d, &t[1]));
            check("gather", dtype, true, |dev| vec![
                input(&shape, view, -2.0, 2.0, DType::F32, seed, dev),
                Tensor::from_vec(gidx.clone(), &ishape, dev).unwrap(),
            ], |t| t[0].gather(d, &t[1]));
            // scatter_add: src at least as large as the index, the input no smaller on other dims.
            check("scatter_add", dtype, true, |dev| vec![
                input(&shape, view, -2.0, 2.0, DType::F32, seed, dev),
                Tensor::from_vec(gidx.clone(), &ishape, dev).unwrap(),
                Tensor::rand_uniform(-1.0, 1.0, &ishape, DType::F32, dev, seed ^ 4).unwrap(),
            ], |t| t[0].scatter_add(d, &t[1], &t[2]));
        }
        check("index_select_i64", DType::F32, false, |dev| vec![
            input(&shape, view, -50.0, 50.0, DType::F32, seed, dev).to_dtype(DType::I64).unwrap(),
            Tensor::from_vec(idx.clone(), &[k], dev).unwrap(),
        ], |t| t[0].index_select(d, &t[1]));
        check("gather_u8", DType::F32, false, |dev| vec![
            input(&shape, view, 0.0, 200.0, DType::F32, seed, dev).to_dtype(DType::U8).unwrap(),
            Tensor::from_vec(gidx.clone(), &ishape, dev).unwrap(),
        ], |t| t[0].gather(d, &t[1]));
        for name in ["index_select", "gather", "scatter_add"] {
            count("gpu", name, 1);
        }
    }

    #[test]
    fn masked_scatter(b in 1usize..4, l in 1usize..30, w in 1usize..70, bits in any::<u64>(), seed in any::<u64>()) {
        if gpu().is_none() { return Ok(()); }
        let mask: Vec<u8> = (0..b * l).map(|i| ((bits >> (i % 64)) & 1) as u8).collect();
        let m = mask.iter().filter(|&&x| x != 0).count();
        for dtype in DTYPES {
            check("masked_scatter", dtype, true, |dev| vec![
                Tensor::rand_uniform(-1.0, 1.0, &[b, l, w], DType::F32, dev, seed).unwrap(),
                Tensor::from_vec(mask.clone(), &[b, l], dev).unwrap(),
                Tensor::rand_uniform(-1.0, 1.0, &[m, w], DType::F32, dev, seed ^ 1).unwrap(),
            ], |t| t[0].masked_scatter(&t[1], &t[2]));
        }
        check("masked_scatter_i64", DType::F32, false, |dev| vec![
            Tensor::zeros(&[b, l, w], DType::I64, dev).unwrap(),
            Tensor::from_vec(mask.clone(), &[b, l], dev).unwrap(),
            Tensor::ones(&[m, w], DType::I64, dev).unwrap(),
        ], |t| t[0].masked_scatter(&t[1], &t[2]));
        count("gpu", "masked_scatter", 1);
    }
}

/// Indices and masks stay on the device: an out-of-range index is never dereferenced (its row
/// comes out NaN, its gradient is dropped), a mask that sets more rows than the source has
/// gives NaN rows past the source's, and nothing is read to the host. (The CPU makes both an
/// error.)
#[test]
fn bad_indices_and_masks_give_nan_rows_without_a_host_read() {
    let Some(dev) = gpu().filter(|_| !dry_run()) else { return };
    let x = Tensor::ones(&[4, 3], DType::F32, dev).unwrap().variable();
    let idx = Tensor::from_vec(vec![0i64, 4, -1], &[3], dev).unwrap();
    let mask = Tensor::from_vec(vec![1u8, 0, 1, 1], &[4], dev).unwrap();
    let src = Tensor::full(2.0, &[2, 3], DType::F32, dev).unwrap();
    let before = counters::snapshot();
    let y = x.index_select(0, &idx).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let z = x.detach().masked_scatter(&mask, &src).unwrap();
    let w = Tensor::where_cond(&mask.unsqueeze(1).unwrap(), &z, &x.detach()).unwrap();
    assert_eq!(counters::snapshot().since(&before).host_reads, 0, "nothing reads the indices or masks");
    let y = y.to_vec::<f32>().unwrap();
    assert!(y[..3].iter().all(|&v| v == 1.0) && y[3..].iter().all(|v| v.is_nan()), "{y:?}");
    let dx = grads.get(&x).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(dx, [1., 1., 1., 0., 0., 0., 0., 0., 0., 0., 0., 0.]);
    let z = z.to_vec::<f32>().unwrap();
    assert!(z[..9].iter().zip([2., 2., 2., 1., 1., 1., 2., 2., 2.]).all(|(&a, b)| a == b), "{z:?}");
    assert!(z[9..].iter().all(|v| v.is_nan()), "{z:?}");
    assert_eq!(w.to_vec::<f32>().unwrap()[..6], [2., 2., 2., 1., 1., 1.]);
    // Indices on another device are an error, as on the CPU are out-of-range ones.
    let cpu_idx = Tensor::from_vec(vec![0i64], &[1], Device::Cpu).unwrap();
    assert!(x.index_select(0, &cpu_idx).is_err());
    let cpu_x = Tensor::ones(&[4, 3], DType::F32, Device::Cpu).unwrap();
    let e = cpu_x.index_select(0, &Tensor::from_vec(vec![0i64, 4], &[2], Device::Cpu).unwrap()).unwrap_err();
    assert!(e.to_string().contains("index_select") && e.to_string().contains("index 4"), "{e}");
}
