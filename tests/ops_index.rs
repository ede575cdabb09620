//! Property tests of the joining and indexing family (cat, stack, split, chunk, index_select,
//! gather, scatter_add, masked_scatter, where_cond) against naive `Nd` references, forward and
//! backward, over odd shapes, strided/narrowed/broadcast inputs and every data dtype; plus the
//! error paths.

// Naive references index plain arrays by position on purpose.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{arb_shape, arb_view, assert_close, count, input, tol, values, Nd, ViewKind};
use proptest::prelude::*;
use proptest::sample::Index;
use vlm4vla::engine::{DType, Device, Tensor};

const CPU: Device = Device::Cpu;

/// Differentiable dtypes (one bf16 draw in nine).
fn arb_float() -> impl Strategy<Value = DType> {
    prop_oneof![4 => Just(DType::F32), 4 => Just(DType::F64), 1 => Just(DType::BF16)]
}

/// Every data dtype: the forward of data movement must be exact on ids and masks too.
fn arb_any() -> impl Strategy<Value = DType> {
    prop_oneof![3 => Just(DType::F32), 3 => Just(DType::F64), 1 => Just(DType::BF16), 1 => Just(DType::I64), 1 => Just(DType::U8)]
}

/// An input of `shape` laid out as `view`; integers over a wider range so rows differ.
fn make(shape: &[usize], view: ViewKind, dtype: DType, seed: u64) -> Tensor {
    let (lo, hi) = if dtype.is_float() { (-2.0, 2.0) } else { (0.0, 200.0) };
    input(shape, view, lo, hi, dtype, seed, CPU)
}

/// A gradient-tracking input (floats only; other dtypes stay plain).
fn make_var(shape: &[usize], view: ViewKind, dtype: DType, seed: u64) -> Tensor {
    let t = make(shape, view, dtype, seed);
    if dtype.is_float() {
        t.variable()
    } else {
        t
    }
}

/// Random indices in `0..n` (repeats likely).
fn rand_ids(n: usize, shape: &[usize], seed: u64) -> Vec<i64> {
    let u = Tensor::rand_uniform(0.0, n as f64, shape, DType::F64, CPU, seed).unwrap();
    u.to_vec::<f64>().unwrap().iter().map(|&v| (v.floor() as i64).clamp(0, n as i64 - 1)).collect()
}

fn ids(v: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, CPU).unwrap()
}

fn check(op: &str, ours: &Tensor, reference: &Nd) {
    let (atol, rtol) = tol(ours.dtype());
    assert_close(op, ours, reference, atol, rtol);
}

/// Backward of `Σ out · probe`: the probe's values and the gradient of each of `vars` (zeros
/// where none arrived).
fn backward_of(out: &Tensor, vars: &[&Tensor], seed: u64) -> (Nd, Vec<Tensor>) {
    let probe = Tensor::rand_uniform(-1.0, 1.0, out.shape(), out.dtype(), CPU, seed).unwrap();
    let g = out.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = vars
        .iter()
        .map(|v| g.get(v).cloned().unwrap_or_else(|| Tensor::zeros(v.shape(), v.dtype(), CPU).unwrap()))
        .collect();
    (values(&probe), grads)
}

fn nd_narrow(a: &Nd, dim: usize, start: usize, len: usize) -> Nd {
    let mut shape = a.shape.clone();
    shape[dim] = len;
    let mut out = Nd::zeros(&shape);
    for i in 0..out.data.len() {
        let mut idx = out.index_of(i);
        idx[dim] += start;
        out.data[i] = a.get(&idx);
    }
    out
}

fn nd_cat(parts: &[Nd], dim: usize) -> Nd {
    let mut shape = parts[0].shape.clone();
    shape[dim] = parts.iter().map(|p| p.shape[dim]).sum();
    let mut out = Nd::zeros(&shape);
    for i in 0..out.data.len() {
        let mut idx = out.index_of(i);
        let mut k = 0;
        while idx[dim] >= parts[k].shape[dim] {
            idx[dim] -= parts[k].shape[dim];
            k += 1;
        }
        out.data[i] = parts[k].get(&idx);
    }
    out
}

/// The numpy broadcast of several shapes.
fn nd_broadcast_shape(shapes: &[&[usize]]) -> Vec<usize> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    (0..rank)
        .map(|i| shapes.iter().filter_map(|s| (i + s.len()).checked_sub(rank).map(|j| s[j])).max().unwrap_or(1))
        .collect()
}

/// The index into an operand of `shape` that an output index reads under broadcasting.
fn nd_broadcast_index(out_idx: &[usize], shape: &[usize]) -> Vec<usize> {
    let extra = out_idx.len() - shape.len();
    shape.iter().enumerate().map(|(i, &d)| if d == 1 { 0 } else { out_idx[extra + i] }).collect()
}

/// `idx` with its `dim` coordinate replaced by `v`.
fn with_dim(idx: &[usize], dim: usize, v: usize) -> Vec<usize> {
    let mut j = idx.to_vec();
    j[dim] = v;
    j
}

/// Shape of the index tensor for gather/scatter: no larger than `x` off `dim`, any size on it.
fn index_shape(x: &[usize], dim: usize, picks: &[Index], along: usize) -> Vec<usize> {
    x.iter().enumerate().map(|(d, &n)| if d == dim { along } else { 1 + picks[d].index(n) }).collect()
}

proptest! {
    #![proptest_config(common::config(56))]

    #[test]
    fn cat_matches_reference(
        base in arb_shape(1..=4, 600),
        dim in any::<Index>(),
        sizes in prop::collection::vec(prop_oneof![1 => Just(0usize), 2 => Just(1usize), 5 => 2usize..9, 1 => Just(17usize)], 1..=3),
        views in prop::collection::vec(arb_view(), 3),
        dtype in arb_any(),
        seed in any::<u64>(),
    ) {
        count("property", "cat", 1);
        let d = dim.index(base.len());
        let parts: Vec<Tensor> = sizes.iter().enumerate().map(|(i, &n)| {
            let mut s = base.clone();
            s[d] = n;
            make_var(&s, views[i], dtype, seed + i as u64)
        }).collect();
        let refs: Vec<&Tensor> = parts.iter().collect();
        let out = Tensor::cat(&refs, d).unwrap();
        let nds: Vec<Nd> = parts.iter().map(values).collect();
        check("cat", &out, &nd_cat(&nds, d));
        if dtype.is_float() {
            let (probe, grads) = backward_of(&out, &refs, seed ^ 7);
            let mut start = 0;
            for (p, g) in parts.iter().zip(&grads) {
                check("cat backward", g, &nd_narrow(&probe, d, start, p.shape()[d]));
                start += p.shape()[d];
            }
        }
    }

    #[test]
    fn stack_matches_reference(
        shape in arb_shape(0..=3, 500),
        dim in any::<Index>(),
        k in 1usize..=3,
        views in prop::collection::vec(arb_view(), 3),
        dtype in arb_any(),
        seed in any::<u64>(),
    ) {
        count("property", "stack", 1);
        let d = dim.index(shape.len() + 1);
        let parts: Vec<Tensor> = (0..k).map(|i| make_var(&shape, views[i], dtype, seed + i as u64)).collect();
        let refs: Vec<&Tensor> = parts.iter().collect();
        let out = Tensor::stack(&refs, d).unwrap();
        let nds: Vec<Nd> = parts.iter().map(values).collect();
        let mut out_shape = shape.clone();
        out_shape.insert(d, k);
        let mut reference = Nd::zeros(&out_shape);
        for i in 0..reference.data.len() {
            let mut idx = reference.index_of(i);
            let which = idx.remove(d);
            reference.data[i] = nds[which].get(&idx);
        }
        check("stack", &out, &reference);
        if dtype.is_float() {
            let (probe, grads) = backward_of(&out, &refs, seed ^ 7);
            for (i, g) in grads.iter().enumerate() {
                let mut r = nd_narrow(&probe, d, i, 1);
                r.shape.remove(d);
                check("stack backward", g, &r);
            }
        }
    }

    #[test]
    fn split_and_chunk_match_narrow(
        shape in arb_shape(1..=4, 600),
        dim in any::<Index>(),
        n in 1usize..=7,
        cuts in prop::collection::vec(any::<Index>(), 0..4),
        view in arb_view(),
        dtype in arb_any(),
        seed in any::<u64>(),
    ) {
        count("property", "split", 1);
        count("property", "chunk", 1);
        let d = dim.index(shape.len());
        let len = shape[d];
        let x = make(&shape, view, dtype, seed);
        let xv = values(&x);

        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
        points.push(0);
        points.push(len);
        points.sort_unstable();
        let sizes: Vec<usize> = points.windows(2).map(|w| w[1] - w[0]).collect();
        let pieces = x.split(&sizes, d).unwrap();
        prop_assert_eq!(pieces.len(), sizes.len());
        for (p, w) in pieces.iter().zip(points.windows(2)) {
            check("split", p, &nd_narrow(&xv, d, w[0], w[1] - w[0]));
        }

        // torch.chunk: size ceil(len / n), the last one smaller, possibly fewer than n chunks.
        let chunks = x.chunk(n, d).unwrap();
        let size = len.div_ceil(n);
        prop_assert_eq!(chunks.len(), len.div_ceil(size));
        for (i, c) in chunks.iter().enumerate() {
            let start = i * size;
            check("chunk", c, &nd_narrow(&xv, d, start, size.min(len - start)));
        }
    }

    #[test]
    fn index_select_matches_reference(
        shape in arb_shape(1..=4, 800),
        dim in any::<Index>(),
        n in 0usize..12,
        strided_ids in any::<bool>(),
        view in arb_view(),
        dtype in arb_any(),
        seed in any::<u64>(),
    ) {
        count("property", "index_select", 1);
        let d = dim.index(shape.len());
        let x = make_var(&shape, view, dtype, seed);
        let raw = rand_ids(shape[d], &[n + 2], seed ^ 1);
        let (idx, ix) = if strided_ids {
            (ids(&raw, &[n + 2]).narrow(0, 1, n).unwrap(), raw[1..n + 1].to_vec())
        } else {
            (ids(&raw[..n], &[n]), raw[..n].to_vec())
        };
        let out = x.index_select(d, &idx).unwrap();
        let xv = values(&x);
        let mut out_shape = shape.clone();
        out_shape[d] = n;
        let mut reference = Nd::zeros(&out_shape);
        for i in 0..reference.data.len() {
            let o = reference.index_of(i);
            reference.data[i] = xv.get(&with_dim(&o, d, ix[o[d]] as usize));
        }
        check("index_select", &out, &reference);
        if dtype.is_float() {
            let (probe, grads) = backward_of(&out, &[&x], seed ^ 7);
            let mut gx = Nd::zeros(&shape);
            for i in 0..probe.data.len() {
                let o = probe.index_of(i);
                let j = with_dim(&o, d, ix[o[d]] as usize);
                let v = gx.get(&j) + probe.data[i];
                gx.set(&j, v);
            }
            check("index_select backward", &grads[0], &gx);
        }
    }

    #[test]
    fn gather_matches_reference(
        shape in arb_shape(1..=4, 800),
        dim in any::<Index>(),
        picks in prop::collection::vec(any::<Index>(), 4),
        along in 1usize..7,
        view in arb_view(),
        dtype in arb_any(),
        seed in any::<u64>(),
    ) {
        count("property", "gather", 1);
        let d = dim.index(shape.len());
        let ishape = index_shape(&shape, d, &picks, along);
        let ix = rand_ids(shape[d], &ishape, seed ^ 1);
        let x = make_var(&shape, view, dtype, seed);
        let out = x.gather(d, &ids(&ix, &ishape)).unwrap();
        let xv = values(&x);
        let mut reference = Nd::zeros(&ishape);
        for (i, &k) in ix.iter().enumerate() {
            let p = reference.index_of(i);
            reference.data[i] = xv.get(&with_dim(&p, d, k as usize));
        }
        check("gather", &out, &reference);
        if dtype.is_float() {
            let (probe, grads) = backward_of(&out, &[&x], seed ^ 7);
            let mut gx = Nd::zeros(&shape);
            for (i, &k) in ix.iter().enumerate() {
                let j = with_dim(&probe.index_of(i), d, k as usize);
                let v = gx.get(&j) + probe.data[i];
                gx.set(&j, v);
            }
            check("gather backward", &grads[0], &gx);
        }
    }

    #[test]
    fn scatter_add_matches_reference(
        shape in arb_shape(1..=4, 800),
        dim in any::<Index>(),
        picks in prop::collection::vec(any::<Index>(), 4),
        along in 1usize..7,
        extra in prop::collection::vec(0usize..=1, 4),
        views in prop::collection::vec(arb_view(), 2),
        dtype in arb_float(),
        seed in any::<u64>(),
    ) {
        count("property", "scatter_add", 1);
        let d = dim.index(shape.len());
        let ishape = index_shape(&shape, d, &picks, along);
        let sshape: Vec<usize> = ishape.iter().zip(&extra).map(|(&n, &e)| n + e).collect();
        let ix = rand_ids(shape[d], &ishape, seed ^ 1);
        let x = make_var(&shape, views[0], dtype, seed);
        let src = make_var(&sshape, views[1], dtype, seed ^ 2);
        let out = x.scatter_add(d, &ids(&ix, &ishape), &src).unwrap();
        let (xv, sv) = (values(&x), values(&src));
        let positions = Nd::zeros(&ishape);
        let mut reference = xv.clone();
        for (i, &k) in ix.iter().enumerate() {
            let p = positions.index_of(i);
            let j = with_dim(&p, d, k as usize);
            let v = reference.get(&j) + sv.get(&p);
            reference.set(&j, v);
        }
        // bf16: the output is rounded once after the additions.
        check("scatter_add", &out, &reference);
        let (probe, grads) = backward_of(&out, &[&x, &src], seed ^ 7);
        check("scatter_add backward self", &grads[0], &probe);
        let mut gs = Nd::zeros(&sshape);
        for (i, &k) in ix.iter().enumerate() {
            let p = positions.index_of(i);
            gs.set(&p, probe.get(&with_dim(&p, d, k as usize)));
        }
        check("scatter_add backward src", &grads[1], &gs);
    }

    #[test]
    fn masked_scatter_matches_reference(
        shape in arb_shape(1..=4, 800),
        mask_i64 in any::<bool>(),
        views in prop::collection::vec(arb_view(), 2),
        dtype in arb_any(),
        seed in any::<u64>(),
    ) {
        count("property", "masked_scatter", 1);
        let (&w, row_shape) = shape.split_last().unwrap();
        let set: Vec<bool> = rand_ids(2, row_shape, seed ^ 1).iter().map(|&v| v == 1).collect();
        let m = set.iter().filter(|&&s| s).count();
        let mask = if mask_i64 {
            Tensor::from_vec(set.iter().map(|&s| s as i64 * 3).collect::<Vec<_>>(), row_shape, CPU).unwrap()
        } else {
            Tensor::from_vec(set.iter().map(|&s| s as u8).collect::<Vec<_>>(), row_shape, CPU).unwrap()
        };
        let x = make_var(&shape, views[0], dtype, seed);
        let source = make_var(&[m, w], views[1], dtype, seed ^ 2);
        let out = x.masked_scatter(&mask, &source).unwrap();
        let (xv, sv) = (values(&x), values(&source));
        let mut reference = xv.clone();
        let mut next = 0;
        for (r, &s) in set.iter().enumerate() {
            if s {
                reference.data[r * w..(r + 1) * w].copy_from_slice(&sv.data[next * w..(next + 1) * w]);
                next += 1;
            }
        }
        check("masked_scatter", &out, &reference);
        if dtype.is_float() {
            let (probe, grads) = backward_of(&out, &[&x, &source], seed ^ 7);
            let mut gx = probe.clone();
            let mut gs = Nd::zeros(&[m, w]);
            let mut next = 0;
            for (r, &s) in set.iter().enumerate() {
                if s {
                    gs.data[next * w..(next + 1) * w].copy_from_slice(&probe.data[r * w..(r + 1) * w]);
                    gx.data[r * w..(r + 1) * w].fill(0.0);
                    next += 1;
                }
            }
            check("masked_scatter backward self", &grads[0], &gx);
            check("masked_scatter backward source", &grads[1], &gs);
        }
    }

    #[test]
    fn where_cond_matches_reference(
        base in arb_shape(0..=4, 600),
        drops in prop::collection::vec(0usize..=2, 3),
        ones in prop::collection::vec(prop::collection::vec(prop::bool::weighted(0.3), 4), 3),
        views in prop::collection::vec(arb_view(), 2),
        dtype in arb_any(),
        seed in any::<u64>(),
    ) {
        count("property", "where_cond", 1);
        // Each operand: the base shape with some leading dims dropped and some dims set to 1.
        let shapes: Vec<Vec<usize>> = (0..3).map(|k| {
            let s = &base[drops[k].min(base.len())..];
            s.iter().enumerate().map(|(i, &n)| if ones[k][i] { 1 } else { n }).collect()
        }).collect();
        let set: Vec<i64> = rand_ids(2, &shapes[0], seed ^ 1);
        let mask = Tensor::from_vec(set.iter().map(|&s| s as u8).collect::<Vec<_>>(), &shapes[0], CPU).unwrap();
        let a = make_var(&shapes[1], views[0], dtype, seed);
        let b = make_var(&shapes[2], views[1], dtype, seed ^ 2);
        let out = Tensor::where_cond(&mask, &a, &b).unwrap();
        let out_shape = nd_broadcast_shape(&[&shapes[0], &shapes[1], &shapes[2]]);
        let (mv, av, bv) = (Nd { shape: shapes[0].clone(), data: set.iter().map(|&s| s as f64).collect() }, values(&a), values(&b));
        let mut reference = Nd::zeros(&out_shape);
        for i in 0..reference.data.len() {
            let o = reference.index_of(i);
            let keep = mv.get(&nd_broadcast_index(&o, &mv.shape)) != 0.0;
            reference.data[i] = if keep { av.get(&nd_broadcast_index(&o, &av.shape)) } else { bv.get(&nd_broadcast_index(&o, &bv.shape)) };
        }
        check("where_cond", &out, &reference);
        if dtype.is_float() {
            let (probe, grads) = backward_of(&out, &[&a, &b], seed ^ 7);
            let (mut ga, mut gb) = (Nd::zeros(a.shape()), Nd::zeros(b.shape()));
            for i in 0..probe.data.len() {
                let o = probe.index_of(i);
                let (g, s) = if mv.get(&nd_broadcast_index(&o, &mv.shape)) != 0.0 { (&mut ga, &shapes[1]) } else { (&mut gb, &shapes[2]) };
                let j = nd_broadcast_index(&o, s);
                let v = g.get(&j) + probe.data[i];
                g.set(&j, v);
            }
            // bf16: broadcast operands sum several probe values in bf16.
            check("where_cond backward true", &grads[0], &ga);
            check("where_cond backward false", &grads[1], &gb);
        }
    }
}

fn err_text(r: vlm4vla::engine::Result<impl std::fmt::Debug>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn f32s(shape: &[usize]) -> Tensor {
    Tensor::rand_uniform(-1.0, 1.0, shape, DType::F32, CPU, 3).unwrap()
}

#[test]
fn cat_and_stack_errors() {
    let (a, b) = (f32s(&[2, 3]), f32s(&[2, 4]));
    assert!(err_text(Tensor::cat(&[], 0)).contains("cat"));
    assert!(err_text(Tensor::cat(&[&a, &b], 0)).contains("[2, 3]"));
    assert!(Tensor::cat(&[&a, &b], 1).is_ok());
    assert!(Tensor::cat(&[&a, &b], 2).is_err());
    assert!(Tensor::cat(&[&a, &f32s(&[2, 3, 1])], 0).is_err());
    assert!(Tensor::cat(&[&a, &a.to_dtype(DType::F64).unwrap()], 0).is_err());
    assert!(Tensor::cat(&[&Tensor::scalar(1f32, CPU).unwrap()], 0).is_err());
    assert!(Tensor::stack(&[&a, &b], 0).is_err());
    assert!(Tensor::stack(&[], 0).is_err());
    assert!(Tensor::stack(&[&a], 3).is_err());
    assert_eq!(Tensor::stack(&[&a, &a], 2).unwrap().shape(), &[2, 3, 2]);
    assert_eq!(Tensor::stack(&[&a, &a], -1).unwrap().shape(), &[2, 3, 2]);
}

#[test]
fn split_and_chunk_errors() {
    let a = f32s(&[5, 3]);
    assert!(err_text(a.split(&[2, 2], 0)).contains("sum to 4"));
    assert!(a.split(&[5], 2).is_err());
    assert!(a.chunk(0, 0).is_err());
    let sizes = |n: usize| a.chunk(n, 0).unwrap().iter().map(|c| c.shape()[0]).collect::<Vec<_>>();
    assert_eq!(sizes(4), vec![2, 2, 1]);
    assert_eq!(sizes(3), vec![2, 2, 1]);
    assert_eq!(sizes(2), vec![3, 2]);
    assert_eq!(sizes(7), vec![1; 5]);
    let empty = f32s(&[0, 3]);
    assert_eq!(empty.chunk(3, 0).unwrap().len(), 3);
}

#[test]
fn index_errors() {
    let x = f32s(&[3, 4]);
    let e = err_text(x.index_select(0, &ids(&[0, 5], &[2])));
    assert!(e.contains("index 5") && e.contains("size 3"), "{e}");
    let e = err_text(x.index_select(1, &ids(&[-1], &[1])));
    assert!(e.contains("index -1") && e.contains("size 4"), "{e}");
    assert!(x.index_select(0, &Tensor::from_vec(vec![0f32], &[1], CPU).unwrap()).is_err());
    assert!(x.index_select(0, &ids(&[0, 1], &[1, 2])).is_err());
    assert!(x.index_select(2, &ids(&[0], &[1])).is_err());

    let e = err_text(x.gather(1, &ids(&[0, 4], &[1, 2])));
    assert!(e.contains("index 4") && e.contains("size 4"), "{e}");
    assert!(x.gather(1, &ids(&[0, 1], &[2])).is_err());
    assert!(x.gather(1, &ids(&[0; 4], &[4, 1])).is_err());
    assert!(x.gather(1, &Tensor::zeros(&[1, 1], DType::U8, CPU).unwrap()).is_err());
    assert_eq!(x.gather(0, &ids(&[2; 10], &[5, 2])).unwrap().shape(), &[5, 2]);

    let s = f32s(&[2, 2]);
    let e = err_text(x.scatter_add(0, &ids(&[0, 3, 1, 1], &[2, 2]), &s));
    assert!(e.contains("index 3") && e.contains("size 3"), "{e}");
    assert!(x.scatter_add(0, &ids(&[0; 6], &[3, 2]), &s).is_err());
    assert!(x.scatter_add(0, &ids(&[0; 2], &[1, 2]), &s.to_dtype(DType::F64).unwrap()).is_err());
    assert!(x.scatter_add(0, &Tensor::zeros(&[1, 2], DType::F32, CPU).unwrap(), &s).is_err());
    let xi = x.to_dtype(DType::I64).unwrap();
    assert!(xi.scatter_add(0, &ids(&[0; 2], &[1, 2]), &s.to_dtype(DType::I64).unwrap()).is_err());
}

#[test]
fn masked_scatter_errors() {
    let x = f32s(&[2, 3, 4]);
    let mask = Tensor::from_vec(vec![1u8, 0, 1, 1, 0, 0], &[2, 3], CPU).unwrap();
    let e = err_text(x.masked_scatter(&mask, &f32s(&[2, 4])));
    assert!(e.contains("3 rows") && e.contains("2 rows"), "{e}");
    assert!(x.masked_scatter(&mask, &f32s(&[3, 4])).is_ok());
    assert!(x.masked_scatter(&mask, &f32s(&[3, 5])).is_err());
    assert!(x.masked_scatter(&mask, &f32s(&[1, 3, 4])).is_err());
    assert!(x.masked_scatter(&mask.reshape(&[6]).unwrap(), &f32s(&[3, 4])).is_err());
    assert!(x.masked_scatter(&mask.to_dtype(DType::F32).unwrap(), &f32s(&[3, 4])).is_err());
    assert!(x.masked_scatter(&mask, &f32s(&[3, 4]).to_dtype(DType::F64).unwrap()).is_err());
    assert!(Tensor::scalar(1f32, CPU).unwrap().masked_scatter(&mask, &f32s(&[3, 4])).is_err());
}

#[test]
fn where_cond_errors() {
    let mask = Tensor::from_vec(vec![1u8, 0, 1], &[3], CPU).unwrap();
    assert!(Tensor::where_cond(&mask, &f32s(&[2, 3]), &f32s(&[1])).is_ok());
    assert!(err_text(Tensor::where_cond(&mask, &f32s(&[4]), &f32s(&[1]))).contains("[3]"));
    assert!(Tensor::where_cond(&mask, &f32s(&[3]), &f32s(&[3]).to_dtype(DType::F64).unwrap()).is_err());
    assert!(Tensor::where_cond(&mask.to_dtype(DType::F32).unwrap(), &f32s(&[3]), &f32s(&[3])).is_err());
}

/// Token ids move exactly: concatenating i64 ids and looking them up in an embedding table.
#[test]
fn token_ids_cat_then_embed() {
    let a = ids(&[7, 1, 3], &[1, 3]);
    let b = ids(&[151_655, 2, 0], &[1, 3]);
    let c = Tensor::cat(&[&a, &b], 1).unwrap();
    assert_eq!(c.to_vec::<i64>().unwrap(), vec![7, 1, 3, 151_655, 2, 0]);
    let table = Tensor::arange(0.0, 24.0, 1.0, DType::F32, CPU).unwrap().reshape(&[8, 3]).unwrap();
    let e = table.index_select(0, &a.flatten_all().unwrap()).unwrap();
    assert_eq!(e.to_vec::<f32>().unwrap(), vec![21., 22., 23., 3., 4., 5., 9., 10., 11.]);
}

/// No input tracks a gradient: nothing is recorded (frozen embedding tables keep no indices).
#[test]
fn no_record_without_grad() {
    let x = f32s(&[3, 2]);
    let y = x.index_select(0, &ids(&[1, 1], &[2])).unwrap();
    assert!(!y.tracks_grad());
    let v = x.variable();
    assert!(v.index_select(0, &ids(&[1, 1], &[2])).unwrap().tracks_grad());
}
