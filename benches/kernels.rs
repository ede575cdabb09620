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

use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write as _;
use vlm4vla::engine::cuda::{self, bench, EventTimer};
use vlm4vla::engine::{AttentionMask, DType, Device, Error, Result, RmsNormKind, Tensor};

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

fn attention_rows(c: &Value, timer: &Timer, simple: bool) -> Result<Vec<Row>> {
    let case = str_of(c, "case").to_string();
    let (b, l, hq, hkv, d) =
        (usize_of(c, "b"), usize_of(c, "lq"), usize_of(c, "hq"), usize_of(c, "hkv"), usize_of(c, "d"));
    let (mask, pairs) = attention_mask(c, l);
    let visible = pairs * (b * hq) as f64;
    let (nq, nkv) = ((b * l * hq * d) as f64, (b * l * hkv * d) as f64);
    let per_set = B2 * (3.0 * nq + 2.0 * nkv);
    let sets = timer.copies(per_set);
    let mut inputs = Vec::new();
    for s in 0..sets as u64 {
        let q = randn(&[b, l, hq, d], 10 * s + 1)?;
        let k = randn(&[b, l, hkv, d], 10 * s + 2)?;
        let v = randn(&[b, l, hkv, d], 10 * s + 3)?;
        let g = randn(&[b, l, hq, d], 10 * s + 4)?;
        inputs.push((q, k, v, g));
    }
    let kern = bench::AttentionKernels::new(&inputs[0].0, &inputs[0].1, &inputs[0].2, &mask, (d as f64).powf(-0.5))?;
    let (fwd, fwd_simple) = both(timer, simple, sets, |i| {
        let (q, k, v, _) = &inputs[i];
        kern.forward(q, k, v).map(|_| ())
    })?;
    let outs: Vec<(Tensor, Tensor)> = inputs.iter().map(|(q, k, v, _)| kern.forward(q, k, v)).collect::<Result<_>>()?;
    let (bwd, bwd_simple) = both(timer, simple, sets, |i| {
        let (q, k, v, g) = &inputs[i];
        let (o, lse) = &outs[i];
        kern.backward(q, k, v, o, g, lse).map(|_| ())
    })?;
    // Long sequences: the forward with 64-row blocks too (the default there uses 128-row blocks).
    let fwd64 = if l >= vlm4vla_kernels::launch::FA_LONG_MIN_LQ && d <= 128 {
        cuda::set_flash_long_min_lq(usize::MAX);
        let t = timer.us(sets, |i| {
            let (q, k, v, _) = &inputs[i];
            kern.forward(q, k, v).map(|_| ())
        });
        cuda::set_flash_long_min_lq(vlm4vla_kernels::launch::FA_LONG_MIN_LQ);
        Some(t?)
    } else {
        None
    };
    let (q, k, v, g) = &inputs[0];
    let check_f = check_fast(|| kern.forward(q, k, v).map(|(o, lse)| vec![o, lse]))?;
    let check_b = check_fast(|| {
        let (o, lse) = &outs[0];
        kern.backward(q, k, v, o, g, lse).map(|(a, b, c)| vec![a, b, c])
    })?;
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

fn flat(v: (Option<Tensor>, Option<Tensor>)) -> Vec<Tensor> {
    [v.0, v.1].into_iter().flatten().collect()
}

fn norm_rows(family: &str, c: &Value, timer: &Timer, simple: bool) -> Result<Vec<Row>> {
    let case = str_of(c, "case");
    let (r, w) = (usize_of(c, "rows"), usize_of(c, "width"));
    let n = (r * w) as f64;
    let sets = timer.copies(3.0 * n * B2);
    let mut xs = Vec::new();
    for s in 0..sets as u64 {
        xs.push((randn(&[r, w], 2 * s + 1)?, randn(&[r, w], 2 * s + 2)?));
    }
    let (wt, bias) = (randn(&[w], 99)?, randn(&[w], 98)?);
    let pw = (w * 2) as f64;
    if family == "rms_norm" {
        let kind = if str_of(c, "kind") == "gemma" { RmsNormKind::Gemma } else { RmsNormKind::Plain };
        let fwd = both(timer, simple, sets, |i| bench::rms_norm(&xs[i].0, Some(&wt), 1e-6, kind).map(|_| ()))?;
        let stats: Vec<Tensor> =
            xs.iter().map(|(x, _)| bench::rms_norm(x, Some(&wt), 1e-6, kind).map(|o| o.1)).collect::<Result<_>>()?;
        let bwd = both(timer, simple, sets, |i| {
            bench::rms_norm_backward(&xs[i].0, Some(&wt), &stats[i], &xs[i].1, kind).map(|_| ())
        })?;
        let (x, g) = &xs[0];
        let cf = check_fast(|| bench::rms_norm(x, Some(&wt), 1e-6, kind).map(|(y, s)| vec![y, s]))?;
        let cb = check_fast(|| bench::rms_norm_backward(x, Some(&wt), &stats[0], g, kind).map(flat))?;
        let bytes = (2.0 * n * B2 + pw + 4.0 * r as f64, 3.0 * n * B2 + 2.0 * pw);
        Ok(pair_of_rows(family, case, fwd, bwd, bytes, some2(cf, cb)))
    } else {
        let fwd = both(timer, simple, sets, |i| bench::layer_norm(&xs[i].0, Some(&wt), Some(&bias), 1e-6).map(|_| ()))?;
        let stats: Vec<(Tensor, Tensor)> = xs
            .iter()
            .map(|(x, _)| bench::layer_norm(x, Some(&wt), Some(&bias), 1e-6).map(|o| (o.1, o.2)))
            .collect::<Result<_>>()?;
        let bwd = both(timer, simple, sets, |i| {
            let (m, rs) = &stats[i];
            bench::layer_norm_backward(&xs[i].0, Some(&wt), Some(&bias), m, rs, &xs[i].1).map(|_| ())
        })?;
        let (x, g) = &xs[0];
        let cf = check_fast(|| bench::layer_norm(x, Some(&wt), Some(&bias), 1e-6).map(|(y, m, s)| vec![y, m, s]))?;
        let cb = check_fast(|| {
            let (m, rs) = &stats[0];
            let (dx, dw, db) = bench::layer_norm_backward(x, Some(&wt), Some(&bias), m, rs, g)?;
            Ok([dx, dw, db].into_iter().flatten().collect())
        })?;
        let bytes = (2.0 * n * B2 + 2.0 * pw + 8.0 * r as f64, 3.0 * n * B2 + 4.0 * pw);
        Ok(pair_of_rows(family, case, fwd, bwd, bytes, some2(cf, cb)))
    }
}

fn gate_rows(name: &str, c: &Value, timer: &Timer, simple: bool) -> Result<Vec<Row>> {
    let case = str_of(c, "case");
    let (r, f) = (usize_of(c, "rows"), usize_of(c, "f"));
    let n = (r * f) as f64;
    let sets = timer.copies(5.0 * n * B2);
    let mut xs = Vec::new();
    for s in 0..sets as u64 {
        xs.push((randn(&[r, 2 * f], 2 * s + 1)?, randn(&[r, f], 2 * s + 2)?));
    }
    let fwd = both(timer, simple, sets, |i| bench::gate(name, &xs[i].0).map(|_| ()))?;
    let bwd = both(timer, simple, sets, |i| bench::gate_backward(name, &xs[i].0, &xs[i].1).map(|_| ()))?;
    let (x, g) = &xs[0];
    let cf = check_fast(|| bench::gate(name, x).map(|o| vec![o]))?;
    let cb = check_fast(|| bench::gate_backward(name, x, g).map(|o| vec![o]))?;
    Ok(pair_of_rows(name, case, fwd, bwd, (3.0 * n * B2, 5.0 * n * B2), some2(cf, cb)))
}

fn rope_rows(c: &Value, timer: &Timer, simple: bool) -> Result<Vec<Row>> {
    let case = str_of(c, "case");
    let (b, l, h, d) = (usize_of(c, "b"), usize_of(c, "l"), usize_of(c, "h"), usize_of(c, "d"));
    let n = (b * l * h * d) as f64;
    let sets = timer.copies(2.0 * n * B2);
    let mut xs = Vec::new();
    for s in 0..sets as u64 {
        xs.push(randn(&[b, l, h, d], s + 1)?);
    }
    let (cos, sin) = (randn(&[l, d], 97)?, randn(&[l, d], 96)?);
    let tables = 2.0 * (l * d) as f64 * B2;
    let fwd = both(timer, simple, sets, |i| bench::rope(&xs[i], &cos, &sin, false).map(|_| ()))?;
    let bwd = both(timer, simple, sets, |i| bench::rope(&xs[i], &cos, &sin, true).map(|_| ()))?;
    let cf = check_fast(|| bench::rope(&xs[0], &cos, &sin, false).map(|o| vec![o]))?;
    let cb = check_fast(|| bench::rope(&xs[0], &cos, &sin, true).map(|o| vec![o]))?;
    let bytes = (2.0 * n * B2 + tables, 2.0 * n * B2 + tables);
    Ok(pair_of_rows("rope", case, fwd, bwd, bytes, some2(cf, cb)))
}

fn cross_entropy_rows(c: &Value, timer: &Timer, simple: bool) -> Result<Vec<Row>> {
    let case = str_of(c, "case");
    let (r, k) = (usize_of(c, "rows"), usize_of(c, "classes"));
    let n = (r * k) as f64;
    let sets = timer.copies(2.0 * n * B2);
    let mut xs = Vec::new();
    for s in 0..sets as u64 {
        let t: Vec<i64> = (0..r).map(|i| ((i as u64 * 2654435761 + s) % k as u64) as i64).collect();
        xs.push((randn(&[r, k], s + 1)?, Tensor::from_vec(t, &[r], DEV)?, randn(&[r], s + 50)?));
    }
    let fwd = both(timer, simple, sets, |i| bench::cross_entropy(&xs[i].0, &xs[i].1, -100).map(|_| ()))?;
    let stats: Vec<Tensor> =
        xs.iter().map(|(x, t, _)| bench::cross_entropy(x, t, -100).map(|o| o.1)).collect::<Result<_>>()?;
    let bwd = both(timer, simple, sets, |i| {
        let (x, t, g) = &xs[i];
        bench::cross_entropy_backward(x, t, &stats[i], g, -100, 1.0).map(|_| ())
    })?;
    Ok(pair_of_rows("cross_entropy", case, fwd, bwd, (n * B2, 2.0 * n * B2), (None, None)))
}

fn pair_loss_rows(name: &str, c: &Value, timer: &Timer, simple: bool) -> Result<Vec<Row>> {
    let case = str_of(c, "case");
    let n = usize_of(c, "n");
    let delta = c["delta"].as_f64().unwrap_or(1.0);
    let sets = timer.copies(5.0 * n as f64 * B2);
    let mut xs = Vec::new();
    for s in 0..sets as u64 {
        xs.push((randn(&[n], 3 * s + 1)?, randn(&[n], 3 * s + 2)?, randn(&[n], 3 * s + 3)?));
    }
    let fwd = both(timer, simple, sets, |i| bench::pair_loss(name, delta, &xs[i].0, &xs[i].1).map(|_| ()))?;
    let bwd = both(timer, simple, sets, |i| {
        let (p, t, g) = &xs[i];
        bench::pair_loss_backward(name, delta, p, t, g, 1.0).map(|_| ())
    })?;
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
    let mut params = Vec::new();
    let mut grads = Vec::new();
    for (i, s) in shapes.iter().enumerate() {
        params.push(randn(s, 1000 + i as u64)?);
        grads.push(randn(s, 2000 + i as u64)?);
    }
    let n: usize = params.iter().map(Tensor::elem_count).sum();
    let mut opt = bench::AdamWMulti::new(&params, &grads)?;
    let us = timer.us(1, |_| opt.step(1e-4, 0.9, 0.999, 1e-8, 0.01))?;
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
    let us = timer.us(1, |_| bench::copy(&dst, &src))?;
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
