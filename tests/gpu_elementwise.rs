//! GPU suite, elementwise and layout ops: every unary kind, the binary ops with broadcasting, the
//! comparisons, views (permute, narrow, broadcast, reshape, contiguous, dtype conversion) and the
//! reductions, forward and backward against the CPU on odd shapes, size-1 dims and strided views
//! (100 proptest cases per test, each case running every op of its test in f32 and bf16).

mod common;
mod gpu_common;

use common::{arb_shape, arb_view, config, count, input, ViewKind};
use gpu_common::{check, dry_run, gpu, DTYPES};
use proptest::prelude::*;
use vlm4vla::engine::{CmpKind, DType, Device, Tensor};

/// Every unary op with the input range it is defined on.
#[allow(clippy::type_complexity)]
fn unary_ops() -> Vec<(&'static str, f64, f64, fn(&Tensor) -> vlm4vla::engine::Result<Tensor>)> {
    vec![
        ("neg", -3.0, 3.0, |x| x.neg()),
        ("exp", -3.0, 3.0, |x| x.exp()),
        ("log", 0.5, 3.0, |x| x.log()),
        ("sqrt", 0.5, 3.0, |x| x.sqrt()),
        ("rsqrt", 0.5, 3.0, |x| x.rsqrt()),
        ("sqr", -3.0, 3.0, |x| x.sqr()),
        ("recip", 0.5, 3.0, |x| x.recip()),
        ("powf", 0.5, 3.0, |x| x.powf(1.7)),
        ("abs", -3.0, 3.0, |x| x.abs()),
        ("clamp", -3.0, 3.0, |x| x.clamp(-1.0, 1.5)),
        ("affine", -3.0, 3.0, |x| x.affine(-0.75, 0.5)),
        ("sin", -3.0, 3.0, |x| x.sin()),
        ("cos", -3.0, 3.0, |x| x.cos()),
        ("tanh", -3.0, 3.0, |x| x.tanh()),
        ("sigmoid", -3.0, 3.0, |x| x.sigmoid()),
        ("relu", -3.0, 3.0, |x| x.relu()),
        ("silu", -3.0, 3.0, |x| x.silu()),
        ("gelu", -3.0, 3.0, |x| x.gelu()),
        ("gelu_tanh", -3.0, 3.0, |x| x.gelu_tanh()),
        ("quick_gelu", -3.0, 3.0, |x| x.quick_gelu()),
        ("softplus", -3.0, 3.0, |x| x.softplus()),
    ]
}

/// `shape` with some dims set to 1 (by `mask` bits) and maybe fewer leading dims: a broadcast
/// partner.
fn partner(shape: &[usize], mask: u32, drop: usize) -> Vec<usize> {
    let s: Vec<usize> = shape.iter().enumerate().map(|(i, &d)| if mask & (1 << i) != 0 { 1 } else { d }).collect();
    s[drop.min(s.len())..].to_vec()
}

proptest! {
    #![proptest_config(config(100))]

    #[test]
    fn unary(shape in arb_shape(1..=4, 3000), view in arb_view(), seed in any::<u64>()) {
        if gpu().is_none() { return Ok(()); }
        for (name, lo, hi, f) in unary_ops() {
            for dtype in DTYPES {
                check(name, dtype, true, |d| vec![input(&shape, view, lo, hi, DType::F32, seed, d)], |x| f(&x[0]));
            }
            count("gpu", name, 1);
        }
    }

    #[test]
    fn binary(
        shape in arb_shape(1..=4, 3000),
        views in (arb_view(), arb_view()),
        mask in any::<u32>(),
        drop in 0usize..2,
        swap in any::<bool>(),
        seed in any::<u64>(),
    ) {
        if gpu().is_none() { return Ok(()); }
        let other = partner(&shape, mask, drop);
        let (sa, sb) = if swap { (other.clone(), shape.clone()) } else { (shape.clone(), other.clone()) };
        type F = fn(&Tensor, &Tensor) -> vlm4vla::engine::Result<Tensor>;
        let ops: [(&str, F); 6] = [
            ("add", |a, b| a.add(b)),
            ("sub", |a, b| a.sub(b)),
            ("mul", |a, b| a.mul(b)),
            ("div", |a, b| a.div(b)),
            ("maximum", |a, b| a.maximum(b)),
            ("minimum", |a, b| a.minimum(b)),
        ];
        for (name, f) in ops {
            for dtype in DTYPES {
                // Divisors stay away from zero; max/min see ties through the shared seed halves.
                let (lo, hi) = if name == "div" { (0.5, 2.0) } else { (-2.0, 2.0) };
                check(name, dtype, true, |d| vec![
                    input(&sa, views.0, -2.0, 2.0, DType::F32, seed, d),
                    input(&sb, views.1, lo, hi, DType::F32, seed ^ 1, d),
                ], |x| f(&x[0], &x[1]));
            }
            count("gpu", name, 1);
        }
        // Comparisons give u8 masks (compared exactly), on floats and on i64.
        for kind in [CmpKind::Eq, CmpKind::Ne, CmpKind::Lt, CmpKind::Le, CmpKind::Gt, CmpKind::Ge] {
            for dtype in DTYPES {
                check("cmp", dtype, false, |d| vec![
                    input(&sa, views.0, -2.0, 2.0, DType::F32, seed, d).round_to(0.5),
                    input(&sb, views.1, -2.0, 2.0, DType::F32, seed ^ 1, d).round_to(0.5),
                ], |x| x[0].cmp(&x[1], kind));
            }
            check("cmp_i64", DType::F32, false, |d| vec![
                input(&sa, views.0, -3.0, 3.0, DType::F32, seed, d).to_dtype(DType::I64).unwrap(),
                input(&sb, views.1, -3.0, 3.0, DType::F32, seed ^ 1, d).to_dtype(DType::I64).unwrap(),
            ], |x| x[0].cmp(&x[1], kind));
        }
        count("gpu", "cmp", 1);
    }

    #[test]
    fn views_and_conversions(shape in arb_shape(2..=4, 3000), view in arb_view(), seed in any::<u64>(), pick in 0usize..8) {
        if gpu().is_none() { return Ok(()); }
        let r = shape.len();
        let len0 = shape[0];
        for dtype in DTYPES {
            let mk = |d: Device| vec![input(&shape, view, -2.0, 2.0, DType::F32, seed, d)];
            check("permute", dtype, true, mk, |x| {
                let perm: Vec<usize> = (0..r).rev().collect();
                x[0].permute(&perm)?.contiguous()
            });
            check("transpose", dtype, true, mk, |x| x[0].transpose(0, r - 1)?.sqr());
            check("narrow", dtype, true, mk, |x| x[0].narrow(0, pick % len0, len0 - pick % len0)?.contiguous()?.exp());
            check("reshape", dtype, true, mk, |x| x[0].reshape(&[x[0].elem_count()])?.tanh());
            check("broadcast_as", dtype, true, mk, |x| {
                let mut s = vec![3];
                s.extend_from_slice(x[0].shape());
                x[0].broadcast_as(&s)?.contiguous()
            });
            check("unsqueeze_squeeze", dtype, true, mk, |x| x[0].unsqueeze(1)?.sin()?.squeeze(1));
            check("flatten", dtype, true, mk, |x| x[0].flatten(0, 1)?.cos());
            let other = if dtype == DType::F32 { DType::BF16 } else { DType::F32 };
            check("to_dtype", dtype, true, mk, |x| x[0].to_dtype(other)?.sqr()?.to_dtype(x[0].dtype()));
            check("to_dtype_u8", dtype, false, |d| vec![input(&shape, view, -20.0, 300.0, DType::F32, seed, d)],
                |x| x[0].to_dtype(DType::U8));
            check("to_dtype_i64", dtype, false, |d| vec![input(&shape, view, -1e3, 1e3, DType::F32, seed, d)],
                |x| x[0].to_dtype(DType::I64));
        }
        check("i64_to_float", DType::F32, false, |d| vec![
            input(&shape, view, -1e6, 1e6, DType::F32, seed, d).to_dtype(DType::I64).unwrap()
        ], |x| x[0].to_dtype(DType::F32));
        check("i64_to_bf16", DType::F32, false, |d| vec![
            input(&shape, view, -1e6, 1e6, DType::F32, seed, d).to_dtype(DType::I64).unwrap()
        ], |x| x[0].to_dtype(DType::BF16));
        check("u8_contiguous", DType::F32, false, |d| vec![
            input(&shape, ViewKind::Transposed, 0.0, 255.0, DType::F32, seed, d).to_dtype(DType::U8).unwrap()
        ], |x| x[0].t()?.contiguous());
        for name in ["permute", "narrow", "reshape", "broadcast_as", "contiguous", "to_dtype"] {
            count("gpu", name, 1);
        }
    }

    #[test]
    fn reductions(shape in arb_shape(1..=4, 3000), view in arb_view(), seed in any::<u64>(), d in 0usize..4, d2 in 0usize..4) {
        if gpu().is_none() { return Ok(()); }
        let r = shape.len();
        let (d, d2) = (d % r, d2 % r);
        for dtype in DTYPES {
            let mk = |dev: Device| vec![input(&shape, view, -2.0, 2.0, DType::F32, seed, dev)];
            check("sum", dtype, true, mk, |x| x[0].sum_keepdim(d));
            check("sum_dims", dtype, true, mk, |x| x[0].sum_dims_keepdim(&[d, d2]));
            check("sum_all", dtype, true, mk, |x| x[0].sum_all());
            check("mean", dtype, true, mk, |x| x[0].mean(d));
            check("mean_all", dtype, true, mk, |x| x[0].mean_all());
            check("max", dtype, true, mk, |x| x[0].max_keepdim(d));
            check("min", dtype, true, mk, |x| x[0].min(d));
            check("argmax", dtype, false, mk, |x| x[0].argmax(d));
            check("norm_l2", dtype, true, mk, |x| x[0].norm_l2());
            check("sum_to_shape", dtype, true, mk, |x| {
                let mut s = x[0].shape().to_vec();
                s[d] = 1;
                x[0].sum_to_shape(&s[1.min(d)..])
            });
        }
        for name in ["sum", "mean", "max", "min", "argmax", "norm_l2"] {
            count("gpu", name, 1);
        }
    }
}

/// Rounding helper for the comparison inputs (so equal elements occur).
trait RoundTo {
    fn round_to(self, step: f64) -> Tensor;
}

impl RoundTo for Tensor {
    fn round_to(self, step: f64) -> Tensor {
        let v: Vec<f64> = self.to_vec::<f64>().unwrap().into_iter().map(|x| (x / step).round() * step).collect();
        Tensor::from_vec(v, self.shape(), self.device()).unwrap().to_dtype(self.dtype()).unwrap()
    }
}

#[test]
fn where_cond_and_masks() {
    let Some(dev) = gpu() else { return };
    for dtype in DTYPES {
        for (ms, ts, fs) in
            [([4usize, 1], [1usize, 5], [4usize, 5]), ([1, 7], [3, 7], [1, 1]), ([2, 3], [2, 3], [2, 3])]
        {
            check(
                "where_cond",
                dtype,
                true,
                |d| {
                    vec![
                        Tensor::rand_uniform(0.0, 2.0, &ms, DType::F32, d, 3).unwrap().to_dtype(DType::U8).unwrap(),
                        Tensor::rand_uniform(-1.0, 1.0, &ts, DType::F32, d, 4).unwrap(),
                        Tensor::rand_uniform(-1.0, 1.0, &fs, DType::F32, d, 5).unwrap(),
                    ]
                },
                |x| Tensor::where_cond(&x[0], &x[1], &x[2]),
            );
        }
    }
    // Scalars compared against i64 ids, as the models find image tokens.
    let ids = Tensor::from_vec(vec![151655i64, 3, 151655, 7], &[2, 2], dev).unwrap();
    let m = ids.cmp_scalar(151655.0, CmpKind::Eq).unwrap();
    assert_eq!(m.device(), dev);
    assert_eq!(m.to_vec::<u8>().unwrap(), vec![1, 0, 1, 0]);
    count("gpu", "where_cond", 1);
}

#[test]
fn mixed_devices_are_an_error() {
    let Some(dev) = gpu().filter(|_| !dry_run()) else { return };
    let a = Tensor::ones(&[2, 3], DType::F32, dev).unwrap();
    let b = Tensor::ones(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let e = a.add(&b).unwrap_err().to_string();
    assert!(e.contains("add") && e.contains("cuda:0") && e.contains("cpu"), "{e}");
    let e = a.matmul(&b.t().unwrap()).unwrap_err().to_string();
    assert!(e.contains("matmul"), "{e}");
    let e = Tensor::zeros(&[2], DType::F64, dev).unwrap_err().to_string();
    assert!(e.contains("f64"), "{e}");
}

#[test]
fn poison_hook_is_on() {
    let Some(dev) = gpu().filter(|_| !dry_run()) else { return };
    // The harness poisons every fresh allocation; a strided copy must still overwrite all of it.
    assert!(vlm4vla::engine::cuda::poison_enabled());
    let x = Tensor::rand_uniform(-1.0, 1.0, &[33, 65], DType::F32, dev, 1).unwrap();
    let y = x.t().unwrap().contiguous().unwrap();
    assert!(y.to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
}
