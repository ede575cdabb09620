//! The GPU op-check harness: one call runs an op forward and backward on the CPU and on cuda:0
//! from the same inputs (same values, same strided layout), and compares outputs and every input
//! gradient.
//!
//! Tolerances (the table the suite's numbers come from):
//! - f32: `|gpu − cpu| ≤ 1e-5·|cpu| + 1e-5·rms(cpu)` per element. The first term is the brief's
//!   1e-5 relative error; the second keeps elements that cancel to near zero (sums, matmuls,
//!   gradients) from demanding a relative accuracy no summation order can give.
//! - bf16: `max |gpu − ref| ≤ 2·max |naive − ref| + 2⁻⁸·max |ref|`, where `ref` is the op in f64 on
//!   the bf16-rounded inputs and `naive` the CPU's bf16 run (fp32 inside, rounded to bf16 at each
//!   op boundary): the flash-attention rule, with one bf16 ulp of the largest element as the
//!   absolute term.
//! - u8 / i64 outputs (masks, argmax): exact.
//!
//! Every fresh GPU allocation is filled with NaN (`cuda::set_poison`), so an element a kernel does
//! not write fails the comparison. Without a CUDA driver the suite skips (so `cargo test
//! --features cuda` passes on CPU machines); with a driver, a device that does not initialise is a
//! failure.
#![allow(dead_code)]

use vlm4vla::engine::{cuda, DType, Device, Result, Tensor};

/// Whether this is a dry run of the suite's plumbing on the CPU (`VLM4VLA_GPU_DRY_RUN=1`): the
/// "GPU" side is then the CPU too, which checks the test code itself (shapes, inputs, closures)
/// on a machine without a GPU.
pub fn dry_run() -> bool {
    std::env::var("VLM4VLA_GPU_DRY_RUN").is_ok_and(|v| v == "1")
}

/// Whether `t` lives where the suite's device side should put it.
pub fn on_device(t: &Tensor) -> bool {
    t.device().is_cuda() || dry_run()
}

/// cuda:0 with poisoned allocations, or `None` (after a note) on a machine without a driver.
pub fn gpu() -> Option<Device> {
    if dry_run() {
        return Some(Device::Cpu);
    }
    if !cuda::driver_available() {
        eprintln!("no CUDA driver on this machine: skipping the GPU test");
        return None;
    }
    let (name, arch) =
        cuda::device_info(0).unwrap_or_else(|e| panic!("a CUDA driver is present but cuda:0 is unusable: {e}"));
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| eprintln!("GPU tests on {name} ({arch})"));
    cuda::set_poison(true);
    Some(Device::Cuda(0))
}

/// `t` converted to `dtype` when it is a float tensor (indices and masks are kept).
fn cast(t: &Tensor, dtype: DType) -> Tensor {
    if t.dtype().is_float() {
        t.to_dtype(dtype).unwrap()
    } else {
        t.clone()
    }
}

/// One run: the output and the gradient of `Σ out·probe` for every float input.
struct Run {
    out: Tensor,
    grads: Vec<Option<Tensor>>,
}

fn run(op: &str, inputs: &[Tensor], grad: bool, probe: &Tensor, f: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> Run {
    let vars: Vec<Tensor> =
        inputs.iter().map(|t| if grad && t.dtype().is_float() { t.variable() } else { t.clone() }).collect();
    let out = f(&vars).unwrap_or_else(|e| panic!("{op} on {}: forward failed: {e}", inputs[0].device()));
    if !grad || !out.dtype().is_float() {
        return Run { out, grads: vec![] };
    }
    let p = probe.to_dtype(out.dtype()).unwrap().to_device(out.device()).unwrap();
    let loss = out.mul(&p).unwrap().sum_all().unwrap();
    let store = loss.backward().unwrap_or_else(|e| panic!("{op} on {}: backward failed: {e}", out.device()));
    let grads = vars.iter().map(|v| if v.dtype().is_float() { store.get(v).cloned() } else { None }).collect();
    Run { out, grads }
}

/// Check `f` on the GPU against the CPU for inputs built by `make(device)` (called once per device
/// with identical values and layouts; float inputs in `dtype`). With `grad`, every float input's
/// gradient of `Σ f(x)·probe` is compared too.
pub fn check(
    op: &str,
    dtype: DType,
    grad: bool,
    make: impl Fn(Device) -> Vec<Tensor>,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let Some(dev) = gpu() else { return };
    let cpu_in: Vec<Tensor> = make(Device::Cpu).iter().map(|t| cast(t, dtype)).collect();
    let gpu_in: Vec<Tensor> = make(dev).iter().map(|t| cast(t, dtype)).collect();
    for (c, g) in cpu_in.iter().zip(&gpu_in) {
        assert_eq!(g.device(), dev, "{op}: make() must build its tensors on the device it is given");
        assert_eq!(c.shape(), g.shape(), "{op}: make() gave different shapes per device");
    }
    // The probe is drawn in the op's dtype, so the f64 reference sees the same rounded values.
    let probe_shape = {
        let out = vlm4vla::engine::no_grad(|| f(&cpu_in)).unwrap_or_else(|e| panic!("{op} on cpu: {e}"));
        out.shape().to_vec()
    };
    let probe = Tensor::rand_uniform(-1.0, 1.0, &probe_shape, dtype, Device::Cpu, 0x9e37).unwrap();
    let g = run(op, &gpu_in, grad, &probe, &f);
    let c = run(op, &cpu_in, grad, &probe, &f);
    let reference = (dtype != DType::F32).then(|| {
        let r_in: Vec<Tensor> = cpu_in.iter().map(|t| cast(t, DType::F64)).collect();
        run(op, &r_in, grad, &probe, &f)
    });
    compare(&format!("{op} ({dtype}) output"), &g.out, &c.out, reference.as_ref().map(|r| &r.out));
    for (i, (gg, cg)) in g.grads.iter().zip(&c.grads).enumerate() {
        let what = format!("{op} ({dtype}) gradient of input {i}");
        match (gg, cg) {
            (Some(gg), Some(cg)) => {
                let r = reference.as_ref().and_then(|r| r.grads[i].as_ref());
                compare(&what, gg, cg, r);
            }
            (None, None) => {}
            (gg, cg) => panic!("{what}: present on gpu {}, on cpu {}", gg.is_some(), cg.is_some()),
        }
    }
}

/// Compare a GPU result with the CPU's (f32, integers) or with the f64 reference relative to the
/// CPU's own error (bf16); see the module docs for the rules.
pub fn compare(what: &str, gpu: &Tensor, cpu: &Tensor, reference: Option<&Tensor>) {
    assert_eq!(gpu.shape(), cpu.shape(), "{what}: shape");
    assert_eq!(gpu.dtype(), cpu.dtype(), "{what}: dtype");
    assert!(on_device(gpu), "{what}: the GPU result is on {}", gpu.device());
    if !cpu.dtype().is_float() {
        assert_eq!(gpu.to_vec::<i64>().unwrap(), cpu.to_vec::<i64>().unwrap(), "{what}");
        return;
    }
    let a = gpu.to_vec::<f64>().unwrap();
    let b = cpu.to_vec::<f64>().unwrap();
    match (cpu.dtype(), reference) {
        (DType::F32, _) | (_, None) => {
            let rms = (b.iter().filter(|x| x.is_finite()).map(|x| x * x).sum::<f64>() / b.len().max(1) as f64).sqrt();
            for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
                let ok = x == y || (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-5 * y.abs() + 1e-5 * rms;
                assert!(ok, "{what}: element {i}: gpu {x}, cpu {y} (rms {rms:e}, shape {:?})", cpu.shape());
            }
        }
        (_, Some(r)) => {
            let r = r.to_vec::<f64>().unwrap();
            let err = |v: &[f64]| -> f64 {
                v.iter()
                    .zip(&r)
                    .map(|(x, y)| if x == y || (x.is_nan() && y.is_nan()) { 0.0 } else { (x - y).abs() })
                    .fold(0.0, |m, e| if e.is_nan() || m.is_nan() { f64::NAN } else { m.max(e) })
            };
            let (eg, en) = (err(&a), err(&b));
            let scale = r.iter().filter(|x| x.is_finite()).fold(0f64, |m, x| m.max(x.abs()));
            let bound = 2.0 * en + scale / 256.0;
            assert!(
                eg <= bound,
                "{what}: max error {eg:e} against f64 exceeds 2 × the CPU bf16 run's {en:e} + {:e} (shape {:?})",
                scale / 256.0,
                cpu.shape()
            );
        }
    }
}

/// Both compute dtypes of the GPU suite.
pub const DTYPES: [DType; 2] = [DType::F32, DType::BF16];
