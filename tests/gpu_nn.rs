//! GPU suite, the fused ops: softmax / log_softmax, rms_norm (plain, Gemma, with and without a
//! weight, with a residual), layer_norm, l2_normalize, swiglu / geglu, rope (1-D and batched
//! tables), attention (every mask kind, key padding, GQA/MQA, several head dims) and the losses
//! (cross-entropy with ignored rows, mse, huber, bce_with_logits; every reduction). Forward and
//! every input gradient against the CPU, 100 proptest cases per test in f32 and bf16.

mod common;
mod gpu_common;

use common::{arb_shape, arb_view, config, count, input, ViewKind};
use gpu_common::{check, dry_run, gpu, DTYPES};
use proptest::prelude::*;
use vlm4vla::engine::ops::{bce_with_logits, cross_entropy, huber, mse, Reduction};
use vlm4vla::engine::{attention, AttentionMask, DType, Device, RmsNormKind, Tensor};

proptest! {
    #![proptest_config(config(100))]

    #[test]
    fn norms(shape in arb_shape(1..=3, 3000), view in arb_view(), seed in any::<u64>(), d in 0usize..3) {
        if gpu().is_none() { return Ok(()); }
        let r = shape.len();
        let w = shape[r - 1];
        for dtype in DTYPES {
            let x = |dev: Device| input(&shape, view, -2.0, 2.0, DType::F32, seed, dev);
            let p = |dev: Device, s: u64| Tensor::rand_uniform(-1.0, 1.0, &[w], DType::F32, dev, s).unwrap();
            check("softmax", dtype, true, |dev| vec![x(dev)], |t| t[0].softmax(d % r));
            check("log_softmax", dtype, true, |dev| vec![x(dev)], |t| t[0].log_softmax(-1));
            for kind in [RmsNormKind::Plain, RmsNormKind::Gemma] {
                check("rms_norm", dtype, true, |dev| vec![x(dev), p(dev, 1)], |t| t[0].rms_norm(Some(&t[1]), 1e-6, kind));
            }
            check("rms_norm_no_weight", dtype, true, |dev| vec![x(dev)], |t| t[0].rms_norm(None, 1e-5, RmsNormKind::Plain));
            check("rms_norm_residual", dtype, true, |dev| vec![x(dev), input(&shape, ViewKind::Contiguous, -1.0, 1.0, DType::F32, seed ^ 3, dev), p(dev, 2)], |t| {
                let (sum, normed) = t[0].rms_norm_residual(&t[1], Some(&t[2]), 1e-6, RmsNormKind::Gemma)?;
                sum.mul(&normed)
            });
            check("layer_norm", dtype, true, |dev| vec![x(dev), p(dev, 4), p(dev, 5)], |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5));
            check("layer_norm_no_affine", dtype, true, |dev| vec![x(dev)], |t| t[0].layer_norm(None, None, 1e-6));
            check("l2_normalize", dtype, true, |dev| vec![x(dev)], |t| t[0].l2_normalize(1e-12));
        }
        for name in ["softmax", "log_softmax", "rms_norm", "layer_norm", "l2_normalize"] {
            count("gpu", name, 1);
        }
    }

    #[test]
    fn gated_activations(shape in arb_shape(1..=3, 2000), seed in any::<u64>()) {
        if gpu().is_none() { return Ok(()); }
        let mut s = shape.clone();
        *s.last_mut().unwrap() *= 2;
        for dtype in DTYPES {
            let mk = |dev: Device| vec![input(&s, ViewKind::Contiguous, -3.0, 3.0, DType::F32, seed, dev)];
            check("swiglu", dtype, true, mk, |t| t[0].swiglu());
            check("geglu", dtype, true, mk, |t| t[0].geglu());
        }
        count("gpu", "swiglu", 1);
        count("gpu", "geglu", 1);
    }

    #[test]
    fn rope(b in 1usize..3, l in 1usize..20, h in 1usize..5, half in 1usize..33, batched in any::<bool>(), view in arb_view(), seed in any::<u64>()) {
        if gpu().is_none() { return Ok(()); }
        let d = 2 * half;
        let table: Vec<usize> = if batched { vec![b, l, d] } else { vec![l, d] };
        for dtype in DTYPES {
            check("rope", dtype, true, |dev| vec![
                input(&[b, l, h, d], view, -2.0, 2.0, DType::F32, seed, dev),
                Tensor::rand_uniform(-1.0, 1.0, &table, DType::F32, dev, seed ^ 1).unwrap(),
                Tensor::rand_uniform(-1.0, 1.0, &table, DType::F32, dev, seed ^ 2).unwrap(),
            ], |t| t[0].rope(&t[1].detach(), &t[2].detach()));
        }
        count("gpu", "rope", 1);
    }

    #[test]
    fn attention_ops(
        b in 1usize..3,
        (lq, lk) in (1usize..34, 1usize..34),
        (hkv, group) in (1usize..3, 1usize..4),
        dims in prop::sample::select(vec![(4usize, 4usize), (7, 5), (16, 16), (64, 64), (72, 72), (80, 80), (128, 128), (32, 64)]),
        mask_kind in 0usize..4,
        padded in any::<bool>(),
        seed in any::<u64>(),
    ) {
        if gpu().is_none() { return Ok(()); }
        let (d, dv) = dims;
        let hq = hkv * group;
        // Prefix and segment masks need equal lengths.
        let lk = if mask_kind >= 2 { lq } else { lk };
        let mask = match mask_kind {
            0 => AttentionMask::Full,
            1 => AttentionMask::Causal,
            2 => AttentionMask::PrefixLm((0..b).map(|i| (seed as usize >> (4 * i)) % (lq + 1)).collect()),
            _ => {
                let cut = (seed as usize % lq.max(1)).min(lq);
                AttentionMask::Segments(if cut == 0 { vec![0, lq] } else { vec![0, cut, lq] })
            }
        };
        let scale = (d as f64).powf(-0.5);
        for dtype in DTYPES {
            let mask = mask.clone();
            check("attention", dtype, true, |dev| {
                let mut v = vec![
                    input(&[b, lq, hq, d], ViewKind::Contiguous, -1.0, 1.0, DType::F32, seed, dev),
                    // k and v as slices of a fused projection: strided rows.
                    Tensor::rand_uniform(-1.0, 1.0, &[b, lk, hkv, d + dv], DType::F32, dev, seed ^ 1).unwrap().narrow(3, 0, d).unwrap(),
                    Tensor::rand_uniform(-1.0, 1.0, &[b, lk, hkv, d + dv], DType::F32, dev, seed ^ 1).unwrap().narrow(3, d, dv).unwrap(),
                ];
                if padded {
                    let keep: Vec<u8> = (0..b * lk).map(|i| u8::from(i % lk == 0 || (seed >> (i % 60)) & 1 == 1)).collect();
                    v.push(Tensor::from_vec(keep, &[b, lk], dev).unwrap());
                }
                v
            }, |t| attention(&t[0], &t[1], &t[2], &mask, t.get(3), scale).map(|o| o.out));
        }
        count("gpu", "attention", 1);
    }

    #[test]
    fn losses(n in 1usize..40, c in 1usize..70, shape in arb_shape(1..=3, 2000), view in arb_view(), seed in any::<u64>()) {
        if gpu().is_none() { return Ok(()); }
        let targets: Vec<i64> = (0..n).map(|i| if (seed >> (i % 64)) & 3 == 0 { -100 } else { ((seed as usize / (i + 1)) % c) as i64 }).collect();
        for dtype in DTYPES {
            for red in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                check("cross_entropy", dtype, true, |dev| vec![
                    Tensor::rand_uniform(-4.0, 4.0, &[n, c], DType::F32, dev, seed).unwrap(),
                    Tensor::from_vec(targets.clone(), &[n], dev).unwrap(),
                ], |t| cross_entropy(&t[0], &t[1], -100, red));
                let pair = |dev: Device, lo: f64, hi: f64| vec![
                    input(&shape, view, -2.0, 2.0, DType::F32, seed, dev),
                    input(&shape, ViewKind::Contiguous, lo, hi, DType::F32, seed ^ 5, dev),
                ];
                check("mse", dtype, true, |dev| pair(dev, -2.0, 2.0), |t| mse(&t[0], &t[1], red));
                check("huber", dtype, true, |dev| pair(dev, -2.0, 2.0), |t| huber(&t[0], &t[1], 0.7, red));
                check("bce_with_logits", dtype, true, |dev| pair(dev, 0.0, 1.0), |t| bce_with_logits(&t[0], &t[1], red));
            }
        }
        for name in ["cross_entropy", "mse", "huber", "bce_with_logits"] {
            count("gpu", name, 1);
        }
    }
}

#[test]
fn wide_rows_and_extremes() {
    if gpu().is_none() {
        return;
    }
    for dtype in DTYPES {
        // The widest row the register-resident norm kernels take, and rows past a block.
        for w in [8192usize, 257, 1] {
            check(
                "rms_norm_wide",
                dtype,
                true,
                |dev| {
                    vec![
                        Tensor::rand_uniform(-3.0, 3.0, &[3, w], DType::F32, dev, 1).unwrap(),
                        Tensor::rand_uniform(-1.0, 1.0, &[w], DType::F32, dev, 2).unwrap(),
                    ]
                },
                |t| t[0].rms_norm(Some(&t[1]), 1e-6, RmsNormKind::Plain),
            );
            check(
                "softmax_wide",
                dtype,
                true,
                |dev| vec![Tensor::rand_uniform(-30.0, 30.0, &[3, w], DType::F32, dev, 3).unwrap()],
                |t| t[0].softmax(-1),
            );
        }
        check(
            "cross_entropy_large_logits",
            dtype,
            true,
            |dev| {
                vec![
                    Tensor::rand_uniform(-1e3, 1e3, &[5, 300], DType::F32, dev, 4).unwrap(),
                    Tensor::from_vec(vec![0i64, 299, 7, -100, 150], &[5], dev).unwrap(),
                ]
            },
            |t| cross_entropy(&t[0], &t[1], -100, Reduction::Mean),
        );
    }
    // Rows wider than the kernels take are a clear error, not a wrong answer.
    if dry_run() {
        return;
    }
    let dev = gpu().unwrap();
    let x = Tensor::ones(&[1, 8193], DType::F32, dev).unwrap();
    let e = x.rms_norm(None, 1e-6, RmsNormKind::Plain).unwrap_err().to_string();
    assert!(e.contains("rms_norm") && e.contains("8192"), "{e}");
}

/// Flash attention at the shapes the backbones and the long reference point run (the proptest
/// above stays below 34 tokens): head dims 64, 72, 80, 128 and 256; lengths from 1 to 2,048;
/// every mask kind, key padding, GQA and MQA. Forward and the q / k / v gradients against the
/// CPU in f32 and bf16 (bf16 contiguous inputs take the tensor-core kernels).
#[test]
fn flash_attention_at_real_shapes() {
    if gpu().is_none() {
        return;
    }
    let windows = |l: usize, w: usize| -> Vec<usize> { (0..l).step_by(w).chain(std::iter::once(l)).collect() };
    /// (batch, lq, lk, hq, hkv, head dim, mask, padded keys)
    type Case = (usize, usize, usize, usize, usize, usize, AttentionMask, bool);
    let cases: Vec<Case> = vec![
        (2, 1, 1, 2, 1, 64, AttentionMask::Full, false),
        (1, 1, 300, 4, 2, 128, AttentionMask::Full, true),
        (2, 256, 256, 2, 2, 80, AttentionMask::Segments(windows(256, 64)), false),
        (1, 256, 256, 2, 2, 80, AttentionMask::Full, false),
        (2, 256, 256, 2, 2, 72, AttentionMask::Full, true),
        (2, 257, 257, 2, 2, 64, AttentionMask::Full, false),
        (2, 100, 100, 4, 2, 128, AttentionMask::Causal, true),
        (2, 270, 270, 2, 1, 256, AttentionMask::PrefixLm(vec![262, 17]), false),
        (1, 513, 513, 2, 1, 256, AttentionMask::Causal, false),
        (2, 100, 100, 2, 2, 64, AttentionMask::Causal, false),
        (1, 2048, 2048, 2, 1, 128, AttentionMask::Causal, false),
        (1, 2048, 2048, 1, 1, 128, AttentionMask::Full, false),
        (1, 2048, 2048, 2, 2, 80, AttentionMask::Segments(windows(2048, 512)), false),
    ];
    for (i, (b, lq, lk, hq, hkv, d, mask, padded)) in cases.into_iter().enumerate() {
        let seed = 100 + i as u64;
        let scale = (d as f64).powf(-0.5);
        for dtype in DTYPES {
            check(
                &format!("flash_attention[b{b} lq{lq} lk{lk} h{hq}/{hkv} d{d} {mask:?}]"),
                dtype,
                true,
                |dev| {
                    let mut v = vec![
                        Tensor::rand_uniform(-1.0, 1.0, &[b, lq, hq, d], DType::F32, dev, seed).unwrap(),
                        Tensor::rand_uniform(-1.0, 1.0, &[b, lk, hkv, d], DType::F32, dev, seed ^ 1).unwrap(),
                        Tensor::rand_uniform(-1.0, 1.0, &[b, lk, hkv, d], DType::F32, dev, seed ^ 2).unwrap(),
                    ];
                    if padded {
                        // Every row keeps its first key; the last quarter of the keys is padding.
                        let keep: Vec<u8> =
                            (0..b * lk).map(|j| u8::from(j % lk == 0 || j % lk < lk - lk / 4)).collect();
                        v.push(Tensor::from_vec(keep, &[b, lk], dev).unwrap());
                    }
                    v
                },
                |t| attention(&t[0], &t[1], &t[2], &mask, t.get(3), scale).map(|o| o.out),
            );
        }
        count("gpu", "attention", 1);
    }
}
