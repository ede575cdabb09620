use crate::common::gradcheck;
use crate::Case;
use vlm4vla::engine::{DType, Device, Tensor};

fn x(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(-1.0, 1.0, shape, DType::F64, Device::Cpu, seed).unwrap()
}

pub fn cases() -> Vec<Case> {
    vec![
        Case { op: "reshape", run: || gradcheck("reshape", &[x(&[2, 3, 5], 1)], |v| v[0].reshape(&[5, 6])?.sin()) },
        Case {
            op: "permute",
            run: || gradcheck("permute", &[x(&[2, 3, 4], 2)], |v| v[0].permute(&[2, 0, 1])?.contiguous()?.sin()),
        },
        Case { op: "narrow", run: || gradcheck("narrow", &[x(&[4, 7], 3)], |v| v[0].narrow(1, 2, 3)?.sin()) },
        Case {
            op: "broadcast_as",
            run: || gradcheck("broadcast_as", &[x(&[3, 1], 4)], |v| v[0].broadcast_as(&[2, 3, 5])?.sin()),
        },
        Case { op: "contiguous", run: || gradcheck("contiguous", &[x(&[3, 4], 5)], |v| v[0].t()?.contiguous()?.sin()) },
        // Finite differences through an f32 round trip only resolve ~1e-2 (the rounding step is
        // 1e-8 against an FD step of 1e-6), so this entry checks the exact derivative instead:
        // d/dx Σ p·cast(x)² = 2·p·cast(x), cast back to f64.
        Case {
            op: "to_dtype",
            run: || {
                let v = x(&[3, 4], 6).variable();
                let p = x(&[3, 4], 7);
                let y = v.to_dtype(DType::F32).unwrap().to_dtype(DType::F64).unwrap();
                let g = y.sqr().unwrap().mul(&p).unwrap().sum_all().unwrap().backward().unwrap();
                let got = g.get(&v).unwrap().to_vec::<f64>().unwrap();
                let yv = y.to_vec::<f64>().unwrap();
                for ((g, y), p) in got.iter().zip(&yv).zip(p.to_vec::<f64>().unwrap()) {
                    let want = (2.0 * y * p) as f32 as f64;
                    assert!((g - want).abs() <= 1e-6 * want.abs().max(1e-3), "to_dtype: grad {g} want {want}");
                }
                crate::common::count("gradcheck", "to_dtype", 1);
            },
        },
    ]
}
