//! GPU kernel microbenchmarks: every row of `benches/baseline/cases.json` (the backbones' real
//! shapes at 224x224, batch 16, plus a long-sequence point), our kernel against PyTorch's.
//!
//! Run on a CUDA machine: `cargo bench --features cuda --bench kernels`. Writes
//! `benches/results/kernels-<gpu>.md` and `.jsonl` (atomically; `BENCH_NO_WRITE=1` only prints).
//! Other knobs: `BENCH_ONLY=<substring of kernel or case>`, `BENCH_NO_TORCH=1` (skip PyTorch),
//! `BENCH_TORCH_JSON=<file>` (read baselines that `benches/baseline/kernels.py --out` wrote instead
//! of running it), `BENCH_NO_SIMPLE=1` (skip timing the simple kernels), `BENCH_REPS=<n>`.
//!
//! Method (`/work/.library/device/METHOD.md`): each kernel's FLOPs and fewest bytes are counted
//! first; the two ceilings are measured once per run (bf16 GEMM rate through the engine's cuBLASLt
//! matmul at 8192³, device-to-device copy bandwidth over 1 GiB counting read + write); every row
//! is timed with CUDA events around a batch of calls after a warm-up, over input copies rotated so
//! one pass exceeds twice the L2 cache, and reported as the median over repeats of the per-call
//! time. Attention rows are rated against the GEMM ceiling (TFLOP/s over the visible score
//! entries: 4·d per entry forward, 10·d backward), the rest against copy bandwidth. PyTorch runs
//! first in a subprocess (`python3 benches/baseline/kernels.py --json`), because this process's
//! memory pool keeps what it allocates.
//!
//! Every row times the public API, as a model calls it, so the timed region includes the op's own
//! host work and allocations as well as its kernels:
//! - `*_fwd`: the op (`attention`, `Tensor::rms_norm`, `layer_norm`, `swiglu`, `geglu`, `rope`,
//!   `ops::cross_entropy`, `huber`, `bce_with_logits`, the losses with `Reduction::None`) under
//!   `no_grad`: checks, output allocation, the launch. `attention` also uploads a prefix or segment
//!   mask's small table per call; `cross_entropy` reads the targets on the host to validate them
//!   (a synchronisation per call); `rope` converts the tables to f32 per call.
//! - `*_bwd`: `autograd::backward_with_grad(output, g)` through a graph recorded once per input
//!   set: the walk (a topological sort on the host), the op's fused backward, and the gradient
//!   store, for the gradients of every input (x and the norms' weight and bias; q, k, v; both
//!   operands of the pair losses).
//! - `adamw_step`: `AdamW::step` over a `ParamStore` of bf16 GPU parameters with a fixed
//!   `GradStore`: the host loop over the parameters and one multi-tensor `adamw_fwd_bf16` launch
//!   (the device table of slots is uploaded on the first step only, the addresses not changing).
//! - The copy ceiling: `cuda::copy`, the driver's device-to-device copy.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write as _;
use vlm4vla::engine::autograd::backward_with_grad;
use vlm4vla::engine::cuda::{self, EventTimer};
use vlm4vla::engine::ops::{bce_with_logits, cross_entropy, huber};
use vlm4vla::engine::{
    attention, no_grad, AdamW, AdamWConfig, AttentionMask, DType, Device, Error, GradStore, ParamStore, Reduction,
    Result, RmsNormKind, Tensor,
};

const ORD: usize = 0;
const DEV: Device = Device::Cuda(0);
/// bf16 bytes.
const B2: f64 = 2.0;

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    Tensor::rand_normal(0.0, 1.0, shape, DType::BF16, DEV, seed)
}

/// Timing: CUDA events around batches of calls over rotated input sets; median per-call µs.
struct Timer {
    reps: usize,
    l2: f64,
}

impl Timer {
    /// Input sets to rotate over so one pass exceeds twice the L2 cache.
    fn copies(&self, bytes_per_set: f64) -> usize {
        ((2.0 * self.l2 / bytes_per_set.max(1.0)).ceil() as usize).clamp(2, 64)
    }

    fn us(&self, sets: usize, mut f: impl FnMut(usize) -> Result<()>) -> Result<f64> {
        for i in 0..sets {
            f(i)?; // warm-up: compilation, module load, pool growth
        }
        cuda::synchronize(ORD)?;
        let mut batch = |n: usize| -> Result<f64> {
            let t = EventTimer::start(ORD)?;
            for i in 0..n {
                f(i % sets)?;
            }
            Ok(t.stop()? as f64)
        };
        let mut n = sets;
        let mut ms = batch(n)?;
        while ms < 2.0 && n < 1 << 16 {
            n *= 2;
            ms = batch(n)?;
        }
        let mut v = Vec::with_capacity(self.reps);
        for _ in 0..self.reps {
            v.push(batch(n)? * 1e3 / n as f64);
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Ok(v[v.len() / 2])
    }
}

/// One benchmark row before PyTorch's numbers are joined in. `check`: the largest ‖fast − simple‖ /
/// ‖simple‖ over the row's outputs, the performance kernels against the simple ones on the same
/// inputs (None where the op has one kernel).
struct Row {
    kernel: String,
    case: String,
    ours_us: f64,
    simple_us: Option<f64>,
    flops: f64,
    bytes: f64,
    check: Option<f64>,
}

/// Largest relative error above which a row is flagged (bf16 outputs computed in a different
/// order: a few 1e-3 at most).
const CHECK_TOL: f64 = 2e-2;

/// ‖a − b‖ / ‖b‖, in f32 on the device (NaN stays NaN).
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
    let num = a.sub(&b)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    let den = b.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((num / den.max(1e-30)).sqrt())
}

/// The outputs of `f` with the performance kernels against the simple kernels: the largest
/// relative error (NaN if any is NaN).
fn check_fast(f: impl Fn() -> Result<Vec<Tensor>>) -> Result<f64> {
    cuda::set_fast_kernels(true);
    let fast = f()?;
    cuda::set_fast_kernels(false);
    let simple = f();
    cuda::set_fast_kernels(true);
    let mut worst: f64 = 0.0;
    for (a, b) in fast.iter().zip(&simple?) {
        let e = rel_err(a, b)?;
        worst = if e.is_nan() || worst.is_nan() { f64::NAN } else { worst.max(e) };
    }
    Ok(worst)
}

/// Time `f` with the performance kernels and, unless skipped, with the simple ones.
fn both(
    timer: &Timer,
    simple: bool,
    sets: usize,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<(f64, Option<f64>)> {
    cuda::set_fast_kernels(true);
    let ours = timer.us(sets, &mut f)?;
    let s = if simple {
        cuda::set_fast_kernels(false);
        let r = timer.us(sets, &mut f);
        cuda::set_fast_kernels(true);
        Some(r?)
    } else {
        None
    };
    Ok((ours, s))
}

fn usize_of(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("cases.json: {key} missing in {v}")) as usize
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("cases.json: {key} missing in {v}"))
}

// ----- attention ---------------------------------------------------------------------------------

/// The mask of a case and its visible (query, key) pairs per (batch row, head).
fn attention_mask(c: &Value, l: usize) -> (AttentionMask, f64) {
    match str_of(c, "mask") {
        "full" => (AttentionMask::Full, (l * l) as f64),
        "causal" => (AttentionMask::Causal, (l * (l + 1) / 2) as f64),
        "prefix" => {
            let p = usize_of(c, "prefix");
            let pairs: usize = (0..l).map(|i| (i + 1).max(p).min(l)).sum();
            (AttentionMask::PrefixLm(vec![p; usize_of(c, "b")]), pairs as f64)
        }
        "segments" => {
            let w = usize_of(c, "window");
            let cu: Vec<usize> = (0..=l.div_ceil(w)).map(|s| (s * w).min(l)).collect();
            let pairs: usize = cu.windows(2).map(|s| (s[1] - s[0]).pow(2)).sum();
            (AttentionMask::Segments(cu), pairs as f64)
        }
        other => panic!("cases.json: unknown mask {other}"),
    }
}

/// The gradients of `vars` in `grads`, in order (an error naming the missing one).
fn grads_of(grads: &GradStore, vars: &[&Tensor]) -> Result<Vec<Tensor>> {
    vars.iter()
        .enumerate()
        .map(|(i, v)| {
            grads.get(v).cloned().ok_or_else(|| Error::invalid("bench", format!("no gradient for input {i}")))
        })
        .collect()
}

fn attention_rows(c: &Value, timer: &Timer, simple: bool) -> Result<Vec<Row>> {
    let case = str_of(c, "case").to_string();
    let (b, l, hq, hkv, d) =
        (usize_of(c, "b"), usize_of(c, "lq"), usize_of(c, "hq"), usize_of(c, "hkv"), usize_of(c, "d"));
    let (mask, pairs) = attention_mask(c, l);
    let visible = pairs * (b * hq) as f64;
    let (nq, nkv) = ((b * l * hq * d) as f64, (b * l * hkv * d) as f64);
    let per_set = B2 * (3.0 * nq + 2.0 * nkv);
    let sets = timer.copies(per_set);
    let scale = (d as f64).powf(-0.5);
    // Inputs are variables: the forward rows run with gradients off (nothing recorded), the
    // backward rows walk one recorded graph per input set.
    let mut inputs = Vec::new();
    for s in 0..sets as u64 {
        let q = randn(&[b, l, hq, d], 10 * s + 1)?.variable();
        let k = randn(&[b, l, hkv, d], 10 * s + 2)?.variable();
        let v = randn(&[b, l, hkv, d], 10 * s + 3)?.variable();
        let g = randn(&[b, l, hq, d], 10 * s + 4)?;
        inputs.push((q, k, v, g));
    }
    let forward = |q: &Tensor, k: &Tensor, v: &Tensor| no_grad(|| attention(q, k, v, &mask, None, scale));
    let (fwd, fwd_simple) = both(timer, simple, sets, |i| {
        let (q, k, v, _) = &inputs[i];
        forward(q, k, v).map(|_| ())
    })?;
    let outs: Vec<Tensor> = inputs
        .iter()
        .map(|(q, k, v, _)| attention(q, k, v, &mask, None, scale).map(|o| o.out))
        .collect::<Result<_>>()?;
    let (bwd, bwd_simple) = both(timer, simple, sets, |i| backward_with_grad(&outs[i], &inputs[i].3).map(|_| ()))?;
    // Long sequences: the forward with 64-row blocks too (the default there uses 128-row blocks).
    let fwd64 = if l >= vlm4vla_kernels::launch::FA_LONG_MIN_LQ && d <= 128 {
        cuda::set_flash_long_min_lq(usize::MAX);
        let t = timer.us(sets, |i| {
            let (q, k, v, _) = &inputs[i];
            forward(q, k, v).map(|_| ())
        });
        cuda::set_flash_long_min_lq(vlm4vla_kernels::launch::FA_LONG_MIN_LQ);
        Some(t?)
    } else {
        None
    };
    let (q, k, v, g) = &inputs[0];
    let check_f = check_fast(|| forward(q, k, v).map(|o| vec![o.out, o.lse]))?;
    let check_b = check_fast(|| grads_of(&backward_with_grad(&outs[0], g)?, &[q, k, v]))?;
    let lse_bytes = 4.0 * (b * hq * l) as f64;
    let (fwd_flops, fwd_bytes) = (4.0 * visible * d as f64, B2 * (2.0 * nq + 2.0 * nkv) + lse_bytes);
    let mut rows = Vec::new();
    if let Some(us) = fwd64 {
        rows.push(Row {
            kernel: "attention_fwd (64-row blocks)".into(),
            case: case.clone(),
            ours_us: us,
            simple_us: None,
            flops: fwd_flops,
            bytes: fwd_bytes,
            check: None,
        });
    }
    rows.extend([
        Row {
            kernel: "attention_fwd".into(),
            case: case.clone(),
            ours_us: fwd,
            simple_us: fwd_simple,
            flops: fwd_flops,
            bytes: fwd_bytes,
            check: Some(check_f),
        },
        Row {
            kernel: "attention_bwd".into(),
            case,
            ours_us: bwd,
            simple_us: bwd_simple,
            flops: 10.0 * visible * d as f64,
            bytes: B2 * (5.0 * nq + 4.0 * nkv) + 2.0 * lse_bytes,
            check: Some(check_b),
        },
    ]);
    Ok(rows)
}

// ----- bandwidth rows ----------------------------------------------------------------------------

/// A forward and a backward row: (µs, simple µs), bytes and the fast-vs-simple check of each.
fn pair_of_rows(
    kernel: &str,
    case: &str,
    fwd: (f64, Option<f64>),
    bwd: (f64, Option<f64>),
    bytes: (f64, f64),
    check: (Option<f64>, Option<f64>),
) -> Vec<Row> {
    vec![
        Row {
            kernel: format!("{kernel}_fwd"),
            case: case.into(),
            ours_us: fwd.0,
            simple_us: fwd.1,
            flops: 0.0,
            bytes: bytes.0,
            check: check.0,
        },
        Row {
            kernel: format!("{kernel}_bwd"),
            case: case.into(),
            ours_us: bwd.0,
            simple_us: bwd.1,
            flops: 0.0,
            bytes: bytes.1,
            check: check.1,
        },
    ]
}

fn some2(a: f64, b: f64) -> (Option<f64>, Option<f64>) {
    (Some(a), Some(b))
}

/// A unary op's rows: the forward of `f` on each set's `x` (nothing recorded), and the backward
/// from each set's `g` through one graph `f(x)` per set; the backward yields the gradients of x
/// and of `params` (variables `f` uses).
#[allow(clippy::too_many_arguments)]
fn op_rows(
    kernel: &str,
    case: &str,
    timer: &Timer,
    simple: bool,
    xs: &[(Tensor, Tensor)],
    params: &[&Tensor],
    bytes: (f64, f64),
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Row>> {
    let sets = xs.len();
    let fwd = both(timer, simple, sets, |i| no_grad(|| f(&xs[i].0)).map(|_| ()))?;
    let ys: Vec<Tensor> = xs.iter().map(|(x, _)| f(x)).collect::<Result<_>>()?;
    let bwd = both(timer, simple, sets, |i| backward_with_grad(&ys[i], &xs[i].1).map(|_| ()))?;
    let (x, g) = &xs[0];
    let cf = check_fast(|| no_grad(|| f(x)).map(|y| vec![y]))?;
    let mut vars = vec![x];
    vars.extend(params.iter().copied());
    let cb = check_fast(|| grads_of(&backward_with_grad(&ys[0], g)?, &vars))?;
    Ok(pair_of_rows(kernel, case, fwd, bwd, bytes, some2(cf, cb)))
}

fn norm_rows(family: &str, c: &Value, timer: &Timer, simple: bool) -> Result<Vec<Row>> {
    let case = str_of(c, "case");
    let (r, w) = (usize_of(c, "rows"), usize_of(c, "width"));
    let n = (r * w) as f64;
    let sets = timer.copies(3.0 * n * B2);
    let mut xs = Vec::new();
    for s in 0..sets as u64 {
        xs.push((randn(&[r, w], 2 * s + 1)?.variable(), randn(&[r, w], 2 * s + 2)?));
    }
    let (wt, bias) = (randn(&[w], 99)?.variable(), randn(&[w], 98)?.variable());
    let pw = (w * 2) as f64;
    if family == "rms_norm" {
        let kind = if str_of(c, "kind") == "gemma" { RmsNormKind::Gemma } else { RmsNormKind::Plain };
        let bytes = (2.0 * n * B2 + pw + 4.0 * r as f64, 3.0 * n * B2 + 2.0 * pw);
        op_rows(family, case, timer, simple, &xs, &[&wt], bytes, |x| x.rms_norm(Some(&wt), 1e-6, kind))
    } else {
        let bytes = (2.0 * n * B2 + 2.0 * pw + 8.0 * r as f64, 3.0 * n * B2 + 4.0 * pw);
        op_rows(family, case, timer, simple, &xs, &[&wt, &bias], bytes, |x| x.layer_norm(Some(&wt), Some(&bias), 1e-6))
    }
}

fn gate_rows(name: &str, c: &Value, timer: &Timer, simple: bool) -> Result<Vec<Row>> {
    let case = str_of(c, "case");
    let (r, f) = (usize_of(c, "rows"), usize_of(c, "f"));
    let n = (r * f) as f64;
    let sets = timer.copies(5.0 * n * B2);
    let mut xs = Vec::new();
    for s in 0..sets as u64 {
        xs.push((randn(&[r, 2 * f], 2 * s + 1)?.variable(), randn(&[r, f], 2 * s + 2)?));
    }
    let swiglu = name == "swiglu";
    let bytes = (3.0 * n * B2, 5.0 * n * B2);
    op_rows(name, case, timer, simple, &xs, &[], bytes, |x| if swiglu { x.swiglu() } else { x.geglu() })
}

fn rope_rows(c: &Value, timer: &Timer, simple: bool) -> Result<Vec<Row>> {
    let case = str_of(c, "case");
    let (b, l, h, d) = (usize_of(c, "b"), usize_of(c, "l"), usize_of(c, "h"), usize_of(c, "d"));
    let n = (b * l * h * d) as f64;
    let sets = timer.copies(2.0 * n * B2);
    let mut xs = Vec::new();
    for s in 0..sets as u64 {
        xs.push((randn(&[b, l, h, d], 2 * s + 1)?.variable(), randn(&[b, l, h, d], 2 * s + 2)?));
    }
    let (cos, sin) = (randn(&[l, d], 97)?, randn(&[l, d], 96)?);
    let tables = 2.0 * (l * d) as f64 * B2;
    let bytes = (2.0 * n * B2 + tables, 2.0 * n * B2 + tables);
    op_rows("rope", case, timer, simple, &xs, &[], bytes, |x| x.rope(&cos, &sin))
}

fn cross_entropy_rows(c: &Value, timer: &Timer, simple: bool) -> Result<Vec<Row>> {
    let case = str_of(c, "case");
    let (r, k) = (usize_of(c, "rows"), usize_of(c, "classes"));
    let n = (r * k) as f64;
    let sets = timer.copies(2.0 * n * B2);
    let mut xs = Vec::new();
    for s in 0..sets as u64 {
        let t: Vec<i64> = (0..r).map(|i| ((i as u64 * 2654435761 + s) % k as u64) as i64).collect();
        xs.push((randn(&[r, k], s + 1)?.variable(), Tensor::from_vec(t, &[r], DEV)?, randn(&[r], s + 50)?));
    }
    let loss = |x: &Tensor, t: &Tensor| cross_entropy(x, t, -100, Reduction::None);
    let fwd = both(timer, simple, sets, |i| no_grad(|| loss(&xs[i].0, &xs[i].1)).map(|_| ()))?;
    let losses: Vec<Tensor> = xs.iter().map(|(x, t, _)| loss(x, t)).collect::<Result<_>>()?;
    let bwd = both(timer, simple, sets, |i| backward_with_grad(&losses[i], &xs[i].2).map(|_| ()))?;
    Ok(pair_of_rows("cross_entropy", case, fwd, bwd, (n * B2, 2.0 * n * B2), (None, None)))
}

fn pair_loss_rows(name: &str, c: &Value, timer: &Timer, simple: bool) -> Result<Vec<Row>> {
    let case = str_of(c, "case");
    let n = usize_of(c, "n");
    let delta = c["delta"].as_f64().unwrap_or(1.0);
    let sets = timer.copies(5.0 * n as f64 * B2);
    let mut xs = Vec::new();
    for s in 0..sets as u64 {
        let (p, t) = (randn(&[n], 3 * s + 1)?.variable(), randn(&[n], 3 * s + 2)?.variable());
        xs.push((p, t, randn(&[n], 3 * s + 3)?));
    }
    let loss = |p: &Tensor, t: &Tensor| match name {
        "huber" => huber(p, t, delta, Reduction::None),
        "bce" => bce_with_logits(p, t, Reduction::None),
        other => Err(Error::invalid("bench", format!("no pair loss {other} (huber, bce)"))),
    };
    let fwd = both(timer, simple, sets, |i| no_grad(|| loss(&xs[i].0, &xs[i].1)).map(|_| ()))?;
    let losses: Vec<Tensor> = xs.iter().map(|(p, t, _)| loss(p, t)).collect::<Result<_>>()?;
    let bwd = both(timer, simple, sets, |i| backward_with_grad(&losses[i], &xs[i].2).map(|_| ()))?;
    let nf = n as f64;
    Ok(pair_of_rows(name, case, fwd, bwd, (3.0 * nf * B2, 5.0 * nf * B2), (None, None)))
}

fn adamw_rows(c: &Value, timer: &Timer) -> Result<Vec<Row>> {
    let case = str_of(c, "case");
    let shapes: Vec<Vec<usize>> = c["shapes"]
        .as_array()
        .expect("cases.json: adamw shapes")
        .iter()
        .map(|s| s.as_array().expect("a shape").iter().map(|d| d.as_u64().expect("a dim") as usize).collect())
        .collect();
    let mut store = ParamStore::new();
    let mut grads = GradStore::new();
    for (i, s) in shapes.iter().enumerate() {
        let p = store.insert(format!("p{i}"), &randn(s, 1000 + i as u64)?)?;
        grads.insert(&p, randn(s, 2000 + i as u64)?);
    }
    let n: usize = store.trainable_tensors().iter().map(Tensor::elem_count).sum();
    let cfg = AdamWConfig { lr: 1e-4, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 };
    let mut opt = AdamW::new(cfg)?;
    let us = timer.us(1, |_| opt.step(&store, &grads, cfg.lr))?;
    Ok(vec![Row {
        kernel: "adamw_step".into(),
        case: case.into(),
        ours_us: us,
        simple_us: None,
        flops: 0.0,
        // fp32 master, m, v read and written; bf16 gradient read and bf16 copy written.
        bytes: n as f64 * (6.0 * 4.0 + 2.0 * B2),
        check: None,
    }])
}

// ----- ceilings, PyTorch, output -----------------------------------------------------------------

fn gemm_tflops(timer: &Timer) -> Result<f64> {
    let n = 8192;
    let sets: Vec<(Tensor, Tensor)> =
        (0..2u64).map(|s| Ok((randn(&[n, n], 500 + s)?, randn(&[n, n], 600 + s)?))).collect::<Result<_>>()?;
    let us = timer.us(2, |i| sets[i].0.matmul(&sets[i].1).map(|_| ()))?;
    Ok(2.0 * (n as f64).powi(3) / us / 1e6)
}

fn copy_gbps(timer: &Timer) -> Result<f64> {
    let elems = 1usize << 29; // 1 GiB of bf16
    let src = randn(&[elems], 700)?;
    let dst = Tensor::zeros(&[elems], DType::BF16, DEV)?;
    let us = timer.us(1, |_| cuda::copy(&dst, &src))?;
    Ok(2.0 * (elems * 2) as f64 / us / 1e3)
}

/// PyTorch's rows keyed by (kernel, case), from the baseline script or a file it wrote.
fn torch_rows(gpu_slug: &str) -> (HashMap<(String, String), Value>, String) {
    if env_flag("BENCH_NO_TORCH") {
        return (HashMap::new(), "skipped (BENCH_NO_TORCH=1)".into());
    }
    let text = match std::env::var("BENCH_TORCH_JSON") {
        Ok(path) => match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return (HashMap::new(), format!("could not read {path}: {e}")),
        },
        Err(_) => {
            let out_file = format!("benches/results/torch-{gpu_slug}.json");
            eprintln!("running python3 benches/baseline/kernels.py --json --out {out_file} (PyTorch baselines) ...");
            let mut cmd = std::process::Command::new("python3");
            cmd.args(["benches/baseline/kernels.py", "--json", "--out", &out_file]);
            if let Ok(only) = std::env::var("BENCH_ONLY") {
                cmd.args(["--only", &only]);
            }
            match cmd.stderr(std::process::Stdio::inherit()).output() {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
                Ok(o) => return (HashMap::new(), format!("kernels.py exited with {}", o.status)),
                Err(e) => return (HashMap::new(), format!("could not run python3: {e}")),
            }
        }
    };
    let v: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return (HashMap::new(), format!("unreadable baseline JSON: {e}")),
    };
    let about = format!("PyTorch {} on {}", v["torch"].as_str().unwrap_or("?"), v["gpu"].as_str().unwrap_or("?"));
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    let map = rows
        .into_iter()
        .map(|r| ((r["kernel"].as_str().unwrap_or("").to_string(), r["case"].as_str().unwrap_or("").to_string()), r))
        .collect();
    (map, about)
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for ch in s.to_lowercase().chars() {
        if ch.is_ascii_alphanumeric() {
            out.push(ch);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

fn commit() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let hash = run(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{hash}-dirty")
    } else {
        hash
    }
}

fn write_atomic(path: &str, text: &str) -> std::io::Result<()> {
    let tmp = format!("{path}.{}.tmp", std::process::id());
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn opt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.1}"))
}

fn main() -> Result<()> {
    if !cuda::is_available(ORD) {
        eprintln!("kernels bench: no usable CUDA device (cuda:0); nothing to measure");
        return Ok(());
    }
    let (gpu, arch) = cuda::device_info(ORD)?;
    let gpu_slug = slug(&gpu);
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string("benches/baseline/cases.json")
            .map_err(|e| Error::invalid("bench", format!("reading benches/baseline/cases.json: {e}")))?,
    )
    .map_err(|e| Error::invalid("bench", format!("cases.json: {e}")))?;
    let only = std::env::var("BENCH_ONLY").ok();
    let want = |kernel: &str, case: &Value| {
        only.as_deref().is_none_or(|o| kernel.contains(o) || case["case"].as_str().unwrap_or("").contains(o))
    };
    let (torch, torch_about) = torch_rows(&gpu_slug);
    let timer = Timer { reps: std::env::var("BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(15), l2: 50e6 };
    let simple = !env_flag("BENCH_NO_SIMPLE");

    let tflops_ceiling = gemm_tflops(&timer)?;
    let gbps_ceiling = copy_gbps(&timer)?;
    eprintln!("ceilings: bf16 GEMM {tflops_ceiling:.0} TFLOP/s, copy {gbps_ceiling:.0} GB/s");

    let list = |key: &str| cases[key].as_array().cloned().unwrap_or_default();
    let mut rows: Vec<Row> = Vec::new();
    let mut run = |r: Result<Vec<Row>>| -> Result<()> {
        for row in r? {
            eprintln!("{:<18} {:<52} {:>10.1} us", row.kernel, row.case, row.ours_us);
            rows.push(row);
        }
        Ok(())
    };
    for c in list("attention") {
        if want("attention", &c) {
            run(attention_rows(&c, &timer, simple))?;
        }
    }
    for fam in ["rms_norm", "layer_norm"] {
        for c in list(fam) {
            if want(fam, &c) {
                run(norm_rows(fam, &c, &timer, simple))?;
            }
        }
    }
    for fam in ["swiglu", "geglu"] {
        for c in list(fam) {
            if want(fam, &c) {
                run(gate_rows(fam, &c, &timer, simple))?;
            }
        }
    }
    for c in list("rope") {
        if want("rope", &c) {
            run(rope_rows(&c, &timer, simple))?;
        }
    }
    for c in list("cross_entropy") {
        if want("cross_entropy", &c) {
            run(cross_entropy_rows(&c, &timer, simple))?;
        }
    }
    for fam in ["huber", "bce"] {
        for c in list(fam) {
            if want(fam, &c) {
                run(pair_loss_rows(fam, &c, &timer, simple))?;
            }
        }
    }
    for c in list("adamw") {
        if want("adamw", &c) {
            run(adamw_rows(&c, &timer))?;
        }
    }

    let commit = commit();
    let mut md = String::new();
    let _ = writeln!(md, "# Kernel benchmarks: {gpu} ({arch})\n");
    let _ = writeln!(
        md,
        "Commit {commit}. Command: `cargo bench --features cuda --bench kernels`. Ceilings measured in this run: \
         bf16 GEMM (cuBLASLt, 8192³) **{tflops_ceiling:.0} TFLOP/s**, device-to-device copy (1 GiB, read + write) \
         **{gbps_ceiling:.0} GB/s**. Baselines: {torch_about}.\n"
    );
    let _ = writeln!(
        md,
        "Median per-call time over {} repeats of a batch of calls between CUDA events, after a warm-up, inputs \
         rotated past twice the L2 cache. `simple` is the same op on the simple kernels \
         (`cuda::set_fast_kernels(false)`); `torch` is the eager/SDPA equivalent (implementation named), `compile` \
         the same under torch.compile. Attention rows count 4·d (forward) and 10·d (backward) FLOPs per visible \
         score and are rated against the GEMM ceiling; every other row counts the fewest bytes (each input read \
         once, each output written once) and is rated against copy bandwidth.\n",
        timer.reps
    );
    let _ = writeln!(
        md,
        "| kernel | case | ours (µs) | simple (µs) | torch (µs) | compile (µs) | TFLOP/s | GB/s | of ceiling | \
         torch / ours | vs simple (rel err) | torch impl |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut mismatches = Vec::new();
    let mut jsonl = String::new();
    for r in &rows {
        let t = torch.get(&(r.kernel.clone(), r.case.clone()));
        let torch_us = t.and_then(|t| t["torch_us"].as_f64());
        let compile_us = t.and_then(|t| t["torch_compile_us"].as_f64());
        let impl_ = t.and_then(|t| t["torch_impl"].as_str()).unwrap_or("-");
        let secs = r.ours_us * 1e-6;
        let tflops = (r.flops > 0.0).then(|| r.flops / secs / 1e12);
        let gbps = r.bytes / secs / 1e9;
        let fraction = match tflops {
            Some(tf) => tf / tflops_ceiling,
            None => gbps / gbps_ceiling,
        };
        let check = match r.check {
            None => "-".to_string(),
            Some(e) if e < CHECK_TOL => format!("{e:.1e}"),
            Some(e) => {
                mismatches.push(format!("{} {}: {e:.2e}", r.kernel, r.case));
                format!("**{e:.1e} MISMATCH**")
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {} | {} | {} | {} | {:.0} | {:.0}% | {} | {} | {} |",
            r.kernel,
            r.case,
            r.ours_us,
            opt(r.simple_us),
            opt(torch_us),
            opt(compile_us),
            tflops.map_or("-".into(), |v| format!("{v:.0}")),
            gbps,
            fraction * 100.0,
            torch_us.map_or("-".into(), |t| format!("{:.2}×", t / r.ours_us)),
            check,
            impl_
        );
        let line = json!({
            "kernel": r.kernel,
            "case": r.case,
            "ours_us": r.ours_us,
            "simple_us": r.simple_us,
            "torch_us": torch_us,
            "torch_compile_us": compile_us,
            "torch_impl": impl_,
            "tflops": tflops,
            "gbps": gbps,
            "fraction_of_ceiling": fraction,
            "check_rel_err": r.check,
            "gpu": gpu,
            "commit": commit,
        });
        let _ = writeln!(jsonl, "{line}");
    }
    if !mismatches.is_empty() {
        let _ = writeln!(
            md,
            "\n**Fast kernels disagree with the simple ones (rel err over {CHECK_TOL:.0e}):** {}\n",
            mismatches.join("; ")
        );
    }
    println!("{md}");
    if !env_flag("BENCH_NO_WRITE") {
        let _ = std::fs::create_dir_all("benches/results");
        let base = format!("benches/results/kernels-{gpu_slug}");
        write_atomic(&format!("{base}.md"), &md).map_err(|e| Error::invalid("bench", format!("{base}.md: {e}")))?;
        write_atomic(&format!("{base}.jsonl"), &jsonl)
            .map_err(|e| Error::invalid("bench", format!("{base}.jsonl: {e}")))?;
        eprintln!("wrote {base}.md and {base}.jsonl");
    }
    Ok(())
}
