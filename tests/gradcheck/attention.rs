//! Gradcheck of fused attention for every mask kind, key padding (with a fully padded row), GQA
//! and MQA, on small shapes (B=2, L=5, D=4).

use crate::common::gradcheck;
use crate::Case;
use vlm4vla::engine::{AttentionMask, DType, Device, Tensor};

fn x(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(-1.5, 1.5, shape, DType::F64, Device::Cpu, seed).unwrap()
}

/// Gradcheck q, k, v of attention with `hq` query and `hkv` kv heads (B=2, L=5, D=4).
fn check(mask: AttentionMask, hq: usize, hkv: usize, padding: Option<Vec<u8>>) {
    let (b, l, d) = (2, 5, 4);
    let pad = padding.map(|p| Tensor::from_vec(p, &[b, l], Device::Cpu).unwrap());
    let inputs = [x(&[b, l, hq, d], 1), x(&[b, l, hkv, d], 2), x(&[b, l, hkv, d], 3)];
    gradcheck("attention", &inputs, |v| Ok(v[0].attention(&v[1], &v[2], &mask, pad.as_ref(), 0.7)?.out));
}

fn case(run: fn()) -> Case {
    Case { op: "attention", run }
}

pub fn cases() -> Vec<Case> {
    vec![
        case(|| check(AttentionMask::Full, 4, 4, None)),
        case(|| check(AttentionMask::Causal, 4, 2, None)),
        case(|| check(AttentionMask::PrefixLm(vec![2, 0]), 4, 2, None)),
        case(|| check(AttentionMask::Segments(vec![0, 2, 5]), 4, 2, None)),
        case(|| check(AttentionMask::Full, 4, 1, Some(vec![1, 0, 1, 1, 0, 0, 0, 0, 0, 0]))),
        case(|| check(AttentionMask::Causal, 4, 4, Some(vec![0, 1, 1, 0, 1, 1, 1, 1, 0, 1]))),
        // Causal with fewer queries than keys (bottom-right aligned), strided q.
        case(|| {
            let mask = AttentionMask::Causal;
            let inputs = [x(&[2, 3, 4, 4], 4), x(&[2, 6, 1, 4], 5), x(&[2, 6, 1, 3], 6)];
            gradcheck("attention", &inputs, |v| {
                let q = v[0].transpose(1, 2)?;
                Ok(q.attention(&v[1], &v[2], &mask, None, 0.5)?.out)
            });
        }),
    ]
}
