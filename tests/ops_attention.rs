//! Fused attention against a naive f64 reference (plain loops: scores, mask, softmax, weighted
//! sum), forward and lse, over every mask kind, key padding, GQA/MQA, odd lengths, strided inputs
//! and F32/F64/BF16; gradients against the composite twin; error paths.

// Naive references index plain arrays by position on purpose.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{assert_close, count, input, tol, values, Nd, ViewKind};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use vlm4vla::engine::{AttentionMask, DType, Device, Tensor};

/// How a `[B, L, H, X]` input is laid out.
#[derive(Clone, Copy, Debug)]
enum Make {
    /// One of the harness layouts (contiguous, last two dims transposed, narrowed, broadcast).
    Harness(ViewKind),
    /// Stored heads-first `[B, H, L, X]` and transposed back.
    HeadsFirst,
    /// The middle third of a fused `[B, L, 3, H, X]` projection (a view with offset and gaps).
    Fused,
}

fn arb_make() -> impl Strategy<Value = Make> {
    prop_oneof![common::arb_view().prop_map(Make::Harness), Just(Make::HeadsFirst), Just(Make::Fused),]
}

fn make(shape: [usize; 4], how: Make, dtype: DType, seed: u64) -> Tensor {
    let [b, l, h, x] = shape;
    let rand = |s: &[usize]| Tensor::rand_uniform(-2.0, 2.0, s, dtype, Device::Cpu, seed).unwrap();
    let t = match how {
        Make::Harness(view) => input(&shape, view, -2.0, 2.0, dtype, seed, Device::Cpu),
        Make::HeadsFirst => rand(&[b, h, l, x]).transpose(1, 2).unwrap(),
        Make::Fused => rand(&[b, l, 3, h, x]).narrow(2, 1, 1).unwrap().squeeze(2).unwrap(),
    };
    assert_eq!(t.shape(), shape);
    t
}

/// Whether query `i` of batch row `b` sees key `j` (written from the mask's definition).
fn sees(mask: &AttentionMask, pad: Option<&Nd>, b: usize, i: usize, j: usize, lq: usize, lk: usize) -> bool {
    let by_mask = match mask {
        AttentionMask::Full => true,
        AttentionMask::Causal => j as i64 <= i as i64 + lk as i64 - lq as i64,
        AttentionMask::PrefixLm(p) => j <= i || j < p[b],
        AttentionMask::Segments(cu) => {
            let seg = |x: usize| (0..cu.len() - 1).find(|&s| cu[s] <= x && x < cu[s + 1]);
            seg(i) == seg(j)
        }
    };
    by_mask && pad.is_none_or(|p| p.get(&[b, j]) != 0.0)
}

/// Naive attention in f64: `(out [B, Lq, Hq, Dv], lse [B, Hq, Lq])`.
fn reference(q: &Nd, k: &Nd, v: &Nd, mask: &AttentionMask, pad: Option<&Nd>, scale: f64) -> (Nd, Nd) {
    let (b, lq, hq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let (lk, hkv, dv) = (k.shape[1], k.shape[2], v.shape[3]);
    let mut out = Nd::zeros(&[b, lq, hq, dv]);
    let mut lse = Nd::zeros(&[b, hq, lq]);
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / (hq / hkv);
            for i in 0..lq {
                let mut s = vec![f64::NEG_INFINITY; lk];
                for (j, sj) in s.iter_mut().enumerate() {
                    if sees(mask, pad, bi, i, j, lq, lk) {
                        *sj = (0..d).map(|c| q.get(&[bi, i, h, c]) * k.get(&[bi, j, kh, c])).sum::<f64>() * scale;
                    }
                }
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    lse.set(&[bi, h, i], f64::NEG_INFINITY);
                    continue;
                }
                let e: Vec<f64> = s.iter().map(|&x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                lse.set(&[bi, h, i], max + sum.ln());
                for c in 0..dv {
                    let o: f64 = (0..lk).map(|j| e[j] / sum * v.get(&[bi, j, kh, c])).sum();
                    out.set(&[bi, i, h, c], o);
                }
            }
        }
    }
    (out, lse)
}

/// One random attention problem.
#[derive(Clone, Debug)]
struct Problem {
    b: usize,
    lq: usize,
    lk: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    dv: usize,
    mask: AttentionMask,
    /// `[B, Lk]` 0/1 flags, with at least one fully padded row when `B > 1`.
    padding: Option<Vec<i64>>,
    scale: f64,
    makes: [Make; 3],
    seed: u64,
}

const LENS: [usize; 12] = [1, 2, 3, 5, 7, 16, 31, 33, 45, 64, 65, 70];

fn arb_problem() -> impl Strategy<Value = Problem> {
    (
        1usize..=3,
        prop::sample::select(LENS.to_vec()),
        prop::sample::select(LENS.to_vec()),
        prop::sample::select(vec![(1usize, 1usize), (2, 2), (4, 2), (4, 1), (3, 1)]),
        prop::sample::select(vec![4usize, 8, 16, 24, 64, 72, 80]),
        0usize..4,
        0usize..3,
        (arb_make(), arb_make(), arb_make()),
        any::<u64>(),
        0.3f64..2.5,
    )
        .prop_map(|(b, lq, lk, (hq, hkv), d, mask_kind, pad_kind, makes, seed, scale_mul)| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            // Wide heads only at small lengths (keeps the naive reference fast).
            let (lq, lk) = if d >= 64 { (lq.min(16), lk.min(16)) } else { (lq, lk) };
            let lk = if mask_kind >= 2 { lq } else { lk };
            let dv = if rng.gen_bool(0.25) { d + 8 } else { d };
            let mask = match mask_kind {
                0 => AttentionMask::Full,
                1 => AttentionMask::Causal,
                2 => AttentionMask::PrefixLm((0..b).map(|_| rng.gen_range(0..=lq)).collect()),
                _ => {
                    let mut cu: Vec<usize> = (0..rng.gen_range(0..4)).map(|_| rng.gen_range(0..=lq)).collect();
                    cu.push(0);
                    cu.push(lq);
                    cu.sort_unstable();
                    AttentionMask::Segments(cu)
                }
            };
            let padding = (pad_kind > 0).then(|| {
                let mut p: Vec<i64> = (0..b * lk).map(|_| rng.gen_bool(0.8) as i64).collect();
                if pad_kind == 2 {
                    let row = rng.gen_range(0..b);
                    p[row * lk..(row + 1) * lk].fill(0);
                }
                p
            });
            let scale = scale_mul / (d as f64).sqrt();
            Problem { b, lq, lk, hq, hkv, d, dv, mask, padding, scale, makes: makes.into(), seed }
        })
}

impl Problem {
    fn inputs(&self, dtype: DType) -> (Tensor, Tensor, Tensor, Option<Tensor>) {
        let q = make([self.b, self.lq, self.hq, self.d], self.makes[0], dtype, self.seed);
        let k = make([self.b, self.lk, self.hkv, self.d], self.makes[1], dtype, self.seed.wrapping_add(1));
        let v = make([self.b, self.lk, self.hkv, self.dv], self.makes[2], dtype, self.seed.wrapping_add(2));
        let pad = self.padding.as_ref().map(|p| {
            let t = Tensor::from_vec(p.clone(), &[self.b, self.lk], Device::Cpu).unwrap();
            if self.seed.is_multiple_of(2) {
                t.to_dtype(DType::U8).unwrap()
            } else {
                t
            }
        });
        (q, k, v, pad)
    }
}

fn check_forward(p: &Problem, dtype: DType) {
    let (q, k, v, pad) = p.inputs(dtype);
    let a = q.attention(&k, &v, &p.mask, pad.as_ref(), p.scale).unwrap();
    let pad_nd = pad.as_ref().map(|t| values(&t.to_dtype(DType::F64).unwrap()));
    let (out, lse) = reference(&values(&q), &values(&k), &values(&v), &p.mask, pad_nd.as_ref(), p.scale);
    let (atol, rtol) = tol(dtype);
    assert_eq!(a.out.dtype(), dtype);
    assert_eq!(a.lse.dtype(), if dtype == DType::F64 { DType::F64 } else { DType::F32 });
    assert_close("attention", &a.out, &out, atol, rtol);
    // lse is computed in f32 (or f64) whatever the storage dtype.
    let (atol, rtol) = tol(dtype.compute());
    assert_close("attention lse", &a.lse, &lse, atol, rtol);
}

/// Fused and composite agree on the output and on the gradients of q, k and v, and no gradient is
/// NaN (rows that see no key have zero gradient).
fn check_against_composite(p: &Problem, dtype: DType) {
    let (q, k, v, pad) = p.inputs(dtype);
    let (q, k, v) = (q.variable(), k.variable(), v.variable());
    let fused = q.attention(&k, &v, &p.mask, pad.as_ref(), p.scale).unwrap().out;
    let twin = q.attention_composite(&k, &v, &p.mask, pad.as_ref(), p.scale).unwrap();
    let probe = Tensor::rand_uniform(-1.0, 1.0, fused.shape(), dtype, Device::Cpu, p.seed ^ 77).unwrap();
    let gf = fused.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
    let gt = twin.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
    let (atol, rtol) = if dtype == DType::F64 { (1e-10, 1e-9) } else { (1e-4, 1e-4) };
    assert_close("attention vs composite", &fused, &values(&twin), atol, rtol);
    for (name, t) in [("dq", &q), ("dk", &k), ("dv", &v)] {
        let a = gf.get(t).unwrap_or_else(|| panic!("attention: no {name}"));
        let b = gt.get(t).unwrap_or_else(|| panic!("composite: no {name}"));
        assert_eq!(a.shape(), t.shape());
        assert!(a.to_vec::<f64>().unwrap().iter().all(|x| x.is_finite()), "attention: {name} not finite");
        assert_close(&format!("attention {name} vs composite"), a, &values(b), atol, rtol);
    }
}

proptest! {
    #![proptest_config(common::config(64))]

    #[test]
    fn attention_matches_reference(p in arb_problem(), f64_case in any::<bool>()) {
        count("property", "attention", 1);
        check_forward(&p, if f64_case { DType::F64 } else { DType::F32 });
    }
}

proptest! {
    #![proptest_config(common::config(16))]

    #[test]
    fn attention_bf16_matches_reference(p in arb_problem()) {
        count("property", "attention", 1);
        check_forward(&p, DType::BF16);
    }
}

proptest! {
    #![proptest_config(common::config(48))]

    #[test]
    fn attention_gradients_match_composite(p in arb_problem(), f64_case in any::<bool>()) {
        count("property", "attention", 1);
        check_against_composite(&p, if f64_case { DType::F64 } else { DType::F32 });
    }
}

/// The worked cases every kind must get right, independent of proptest's draws.
#[test]
fn attention_fixed_cases() {
    let base = Problem {
        b: 2,
        lq: 7,
        lk: 7,
        hq: 4,
        hkv: 2,
        d: 8,
        dv: 8,
        mask: AttentionMask::Full,
        padding: None,
        scale: 0.4,
        makes: [Make::Fused, Make::HeadsFirst, Make::Harness(ViewKind::Transposed)],
        seed: 3,
    };
    let masks = [
        AttentionMask::Full,
        AttentionMask::Causal,
        AttentionMask::PrefixLm(vec![0, 4]),
        AttentionMask::Segments(vec![0, 2, 2, 7]),
    ];
    for mask in masks {
        for padding in [None, Some(vec![1, 1, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0])] {
            for (hq, hkv) in [(4, 4), (4, 2), (4, 1)] {
                let p = Problem { mask: mask.clone(), padding: padding.clone(), hq, hkv, ..base.clone() };
                for dtype in [DType::F32, DType::F64, DType::BF16] {
                    check_forward(&p, dtype);
                }
                check_against_composite(&p, DType::F64);
            }
        }
    }
    // Causal with more queries than keys: the first rows see nothing; fewer queries: a KV cache.
    for (lq, lk) in [(9, 4), (3, 11), (1, 1)] {
        let p = Problem { lq, lk, mask: AttentionMask::Causal, ..base.clone() };
        check_forward(&p, DType::F64);
        check_against_composite(&p, DType::F64);
    }
}

#[test]
fn fully_masked_rows_are_zero_with_neg_inf_lse() {
    let q = Tensor::rand_normal(0., 1., &[2, 3, 2, 4], DType::F32, Device::Cpu, 1).unwrap().variable();
    let k = Tensor::rand_normal(0., 1., &[2, 3, 2, 4], DType::F32, Device::Cpu, 2).unwrap().variable();
    let v = Tensor::rand_normal(0., 1., &[2, 3, 2, 4], DType::F32, Device::Cpu, 3).unwrap().variable();
    let pad = Tensor::from_vec(vec![1u8, 0, 1, 0, 0, 0], &[2, 3], Device::Cpu).unwrap();
    let a = q.attention(&k, &v, &AttentionMask::Full, Some(&pad), 0.5).unwrap();
    let out = a.out.narrow(0, 1, 1).unwrap().to_vec::<f32>().unwrap();
    assert!(out.iter().all(|&x| x == 0.0));
    let lse = a.lse.narrow(0, 1, 1).unwrap().to_vec::<f32>().unwrap();
    assert!(lse.iter().all(|&x| x == f32::NEG_INFINITY));
    assert!(format!("{:?}", a.out).contains("op=attention"));
    let g = a.out.sum_all().unwrap().backward().unwrap();
    for t in [&q, &k, &v] {
        let gt = g.get(t).unwrap().narrow(0, 1, 1).unwrap().to_vec::<f32>().unwrap();
        assert!(gt.iter().all(|&x| x == 0.0), "gradient of a fully padded batch row must be zero");
    }
}

#[test]
fn attention_errors() {
    let t = |s: &[usize]| Tensor::zeros(s, DType::F32, Device::Cpu).unwrap();
    let (q, k) = (t(&[2, 5, 4, 8]), t(&[2, 5, 2, 8]));
    let full = AttentionMask::Full;
    let run = |q: &Tensor, k: &Tensor, v: &Tensor, m: &AttentionMask, p: Option<&Tensor>| {
        let fused = q.attention(k, v, m, p, 1.0);
        let twin = q.attention_composite(k, v, m, p, 1.0);
        assert!(fused.is_err() && twin.is_err(), "expected an error for {:?} {:?} {:?} {m:?}", q, k, v);
    };
    run(&t(&[2, 5, 32]), &k, &k, &full, None);
    run(&q, &t(&[2, 5, 16]), &k, &full, None);
    run(&q, &t(&[3, 5, 2, 8]), &t(&[3, 5, 2, 8]), &full, None);
    run(&q, &t(&[2, 5, 2, 6]), &k, &full, None);
    run(&q, &k, &t(&[2, 6, 2, 8]), &full, None);
    run(&q, &t(&[2, 5, 3, 8]), &t(&[2, 5, 3, 8]), &full, None);
    run(&q, &t(&[2, 5, 0, 8]), &t(&[2, 5, 0, 8]), &full, None);
    run(&q, &k, &Tensor::zeros(&[2, 5, 2, 8], DType::F64, Device::Cpu).unwrap(), &full, None);
    let ints = Tensor::zeros(&[2, 5, 4, 8], DType::I64, Device::Cpu).unwrap();
    run(&ints, &ints, &ints, &full, None);
    run(&q, &k, &k, &AttentionMask::PrefixLm(vec![1]), None);
    run(&q, &k, &k, &AttentionMask::PrefixLm(vec![1, 6]), None);
    run(&q, &t(&[2, 6, 2, 8]), &t(&[2, 6, 2, 8]), &AttentionMask::PrefixLm(vec![1, 1]), None);
    for cu in [vec![], vec![1, 5], vec![0, 3, 2, 5], vec![0, 4], vec![0, 6]] {
        run(&q, &k, &k, &AttentionMask::Segments(cu), None);
    }
    run(&q, &t(&[2, 6, 2, 8]), &t(&[2, 6, 2, 8]), &AttentionMask::Segments(vec![0, 5]), None);
    let pad = |s: &[usize], dt: DType| Tensor::ones(s, dt, Device::Cpu).unwrap();
    run(&q, &k, &k, &full, Some(&pad(&[2, 4], DType::U8)));
    run(&q, &k, &k, &full, Some(&pad(&[5], DType::U8)));
    run(&q, &k, &k, &full, Some(&pad(&[2, 5], DType::F32)));
    assert!(q.attention(&k, &k, &full, None, f64::NAN).is_err());
    // The valid neighbours of those calls succeed.
    assert!(q
        .attention(&k, &k, &AttentionMask::Segments(vec![0, 2, 2, 5]), Some(&pad(&[2, 5], DType::I64)), 1.0)
        .is_ok());
    assert!(q.attention(&k, &k, &AttentionMask::PrefixLm(vec![0, 5]), None, 1.0).is_ok());
}

/// Zero-sized batch, sequence and head dims give empty (or zero) outputs, never a panic.
#[test]
fn attention_empty_shapes() {
    let t = |s: &[usize]| Tensor::ones(s, DType::F32, Device::Cpu).unwrap().variable();
    for (qs, ks) in [([0, 3, 2, 4], [0, 3, 2, 4]), ([1, 0, 2, 4], [1, 3, 2, 4]), ([1, 3, 2, 4], [1, 0, 2, 4])] {
        let (q, k) = (t(&qs), t(&ks));
        let a = q.attention(&k, &k, &AttentionMask::Full, None, 1.0).unwrap();
        assert_eq!(a.out.shape(), &[qs[0], qs[1], qs[2], 4]);
        assert!(a.out.to_vec::<f32>().unwrap().iter().all(|&x| x == 0.0));
        a.out.sum_all().unwrap().backward().unwrap();
    }
    let q = t(&[1, 3, 2, 0]);
    let a = q.attention(&q, &q, &AttentionMask::Causal, None, 1.0).unwrap();
    // Zero-width heads: every score is 0, so query i's lse is ln(i + 1) (lse is [B, H, L]).
    let want: Vec<f32> = (0..6).map(|r| ((r % 3 + 1) as f32).ln()).collect();
    assert_eq!(a.lse.to_vec::<f32>().unwrap(), want);
    let e = t(&[1, 0, 1, 4]);
    assert!(e.attention(&e, &e, &AttentionMask::Segments(vec![0]), None, 1.0).is_ok());
}
