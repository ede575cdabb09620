//! CPU benchmarks: matmul GFLOP/s (square and transformer-like shapes), attention and norms at
//! model-like sizes, forward and forward+backward.
//!
//! Run: `cargo bench --bench cpu` (writes `benches/results/cpu.md`; set `BENCH_NO_WRITE=1` to only
//! print). Each row is the median of several timed runs after one warm-up run.

use std::time::Instant;
use vlm4vla::engine::{attention, AttentionMask, DType, Device, Result, RmsNormKind, Tensor};

fn median_secs(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[runs / 2])
}

fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    Tensor::rand_normal(0.0, 1.0, shape, DType::F32, Device::Cpu, seed)
}

struct Row {
    what: String,
    shape: String,
    ms: f64,
    rate: String,
}

fn matmul_row(m: usize, k: usize, n: usize, runs: usize) -> Result<Row> {
    let a = randn(&[m, k], 1)?;
    let b = randn(&[k, n], 2)?;
    let s = median_secs(runs, || a.matmul(&b).map(|_| ()))?;
    let gflops = 2.0 * (m * n * k) as f64 / s / 1e9;
    Ok(Row {
        what: "matmul f32".into(),
        shape: format!("{m}×{k} @ {k}×{n}"),
        ms: s * 1e3,
        rate: format!("{gflops:.1} GFLOP/s"),
    })
}

fn attention_rows(
    b: usize,
    l: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    mask: AttentionMask,
    label: &str,
) -> Result<Vec<Row>> {
    let q = randn(&[b, l, hq, d], 3)?.variable();
    let k = randn(&[b, l, hkv, d], 4)?.variable();
    let v = randn(&[b, l, hkv, d], 5)?.variable();
    let scale = 1.0 / (d as f64).sqrt();
    let causal = matches!(mask, AttentionMask::Causal);
    // Score and value GEMMs: 4·B·H·L²·D, halved when causal.
    let flops = 4.0 * (b * hq * l * l * d) as f64 * if causal { 0.5 } else { 1.0 };
    let fwd = median_secs(5, || vlm4vla::engine::no_grad(|| attention(&q, &k, &v, &mask, None, scale)).map(|_| ()))?;
    let fb = median_secs(5, || {
        let o = attention(&q, &k, &v, &mask, None, scale)?;
        o.out.sum_all()?.backward().map(|_| ())
    })?;
    let shape = format!("B{b} L{l} H{hq}/{hkv} D{d} {label}");
    Ok(vec![
        Row {
            what: "attention fwd".into(),
            shape: shape.clone(),
            ms: fwd * 1e3,
            rate: format!("{:.1} GFLOP/s", flops / fwd / 1e9),
        },
        // backward does 2.5× the forward's GEMM work
        Row {
            what: "attention fwd+bwd".into(),
            shape,
            ms: fb * 1e3,
            rate: format!("{:.1} GFLOP/s", 3.5 * flops / fb / 1e9),
        },
    ])
}

fn norm_rows(rows: usize, width: usize) -> Result<Vec<Row>> {
    let x = randn(&[rows, width], 6)?.variable();
    let w = randn(&[width], 7)?.variable();
    let bytes = 2.0 * (rows * width * 4) as f64; // read x, write y
    let fwd =
        median_secs(7, || vlm4vla::engine::no_grad(|| x.rms_norm(Some(&w), 1e-6, RmsNormKind::Plain)).map(|_| ()))?;
    let fb = median_secs(7, || x.rms_norm(Some(&w), 1e-6, RmsNormKind::Plain)?.sum_all()?.backward().map(|_| ()))?;
    let ln = median_secs(7, || vlm4vla::engine::no_grad(|| x.layer_norm(Some(&w), Some(&w), 1e-5)).map(|_| ()))?;
    let shape = format!("{rows}×{width}");
    Ok(vec![
        Row {
            what: "rms_norm fwd".into(),
            shape: shape.clone(),
            ms: fwd * 1e3,
            rate: format!("{:.1} GB/s", bytes / fwd / 1e9),
        },
        Row { what: "rms_norm fwd+bwd".into(), shape: shape.clone(), ms: fb * 1e3, rate: "-".into() },
        Row { what: "layer_norm fwd".into(), shape, ms: ln * 1e3, rate: format!("{:.1} GB/s", bytes / ln / 1e9) },
    ])
}

/// GELU-tanh (SigLIP's MLP) and GeGLU (Gemma's), forward and forward+backward: the tanh inside
/// dominated the demo's CPU training step before the libm-free `tanh_f32`.
fn gelu_rows(rows: usize, width: usize) -> Result<Vec<Row>> {
    let x = randn(&[rows, width], 7)?.variable();
    let shape = format!("{rows}×{width}");
    let elems = (rows * width) as f64;
    let f = median_secs(7, || x.gelu_tanh().map(|_| ()))?;
    let fb = median_secs(7, || x.gelu_tanh()?.sum_all()?.backward().map(|_| ()))?;
    let g = median_secs(7, || x.geglu().map(|_| ()))?;
    let gb = median_secs(7, || x.geglu()?.sum_all()?.backward().map(|_| ()))?;
    let rate = |s: f64, n: f64| format!("{:.0} Melem/s", n / s / 1e6);
    // The scalar function alone, one thread: glibc's tanhf against ours.
    let v: Vec<f32> = x.to_vec::<f32>()?;
    let mut sink = 0f32;
    let libm = median_secs(5, || {
        sink += v.iter().map(|&a| a.tanh()).sum::<f32>();
        Ok(())
    })?;
    let ours = median_secs(5, || {
        sink += v.iter().map(|&a| vlm4vla::engine::dtype::tanh_f32(a)).sum::<f32>();
        Ok(())
    })?;
    std::hint::black_box(sink);
    Ok(vec![
        Row {
            what: "tanh, glibc tanhf (1 thread)".into(),
            shape: shape.clone(),
            ms: libm * 1e3,
            rate: rate(libm, elems),
        },
        Row { what: "tanh, tanh_f32 (1 thread)".into(), shape: shape.clone(), ms: ours * 1e3, rate: rate(ours, elems) },
        Row { what: "gelu_tanh fwd".into(), shape: shape.clone(), ms: f * 1e3, rate: rate(f, elems) },
        Row { what: "gelu_tanh fwd+bwd".into(), shape: shape.clone(), ms: fb * 1e3, rate: rate(fb, elems) },
        Row { what: "geglu fwd".into(), shape: shape.clone(), ms: g * 1e3, rate: rate(g, elems / 2.0) },
        Row { what: "geglu fwd+bwd".into(), shape, ms: gb * 1e3, rate: rate(gb, elems / 2.0) },
    ])
}

/// The Linear shapes of the `pg-4x4` training step (`benches/step`): rows × in → out, as the
/// forward `x·Wᵀ`, the input gradient `G·W` and the weight gradient `Gᵀ·X` run them. The same
/// shapes through NumPy (OpenBLAS) and PyTorch (MKL): `benches/baseline/gemm.py`.
const LINEAR_SHAPES: [(usize, usize, usize); 6] =
    [(648, 512, 640), (648, 512, 4096), (648, 2048, 512), (512, 256, 768), (512, 256, 1024), (512, 1024, 256)];

fn linear_rows(runs: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (m, k, n) in LINEAR_SHAPES {
        let x = randn(&[m, k], 1)?;
        let w = randn(&[n, k], 2)?;
        let g = randn(&[m, n], 3)?;
        let gflops = |s: f64| format!("{:.1} GFLOP/s", 2.0 * (m * n * k) as f64 / s / 1e9);
        let fwd = median_secs(runs, || x.linear(&w, None).map(|_| ()))?;
        let dx = median_secs(runs, || g.matmul(&w).map(|_| ()))?;
        let dw = median_secs(runs, || g.t()?.matmul(&x).map(|_| ()))?;
        for (what, s) in [("linear x·Wᵀ", fwd), ("linear dX = G·W", dx), ("linear dW = Gᵀ·X", dw)] {
            rows.push(Row { what: what.into(), shape: format!("{m} rows, {k} → {n}"), ms: s * 1e3, rate: gflops(s) });
        }
    }
    Ok(rows)
}

fn main() -> Result<()> {
    // Other processes skew CPU timings badly on a 2-core machine: record the load we ran under.
    let load =
        std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next().map(String::from));
    let mut rows = Vec::new();
    rows.extend(linear_rows(9)?);
    for n in [512, 1024, 2048] {
        rows.push(matmul_row(n, n, n, if n == 2048 { 3 } else { 5 })?);
    }
    rows.push(matmul_row(1600, 2048, 11008, 3)?);
    // SigLIP-like vision attention, a Qwen2.5-LM-like GQA causal one, a Kosmos-text-like one.
    rows.extend(attention_rows(2, 256, 16, 16, 72, AttentionMask::Full, "full")?);
    rows.extend(attention_rows(2, 100, 16, 2, 128, AttentionMask::Causal, "causal GQA")?);
    rows.extend(attention_rows(2, 100, 32, 32, 64, AttentionMask::Causal, "causal")?);
    rows.extend(norm_rows(4096, 2048)?);
    rows.extend(gelu_rows(4096, 2048)?);

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let threads = rayon::current_num_threads();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut md = String::new();
    md.push_str("# CPU benchmarks\n\n");
    md.push_str(&format!(
        "Machine: {cpu}, {threads} threads. Commit {commit}, {date}. Command: `cargo bench --bench cpu`.\n\
         1-minute load average when the run started: {}.\n\
         Median of 3–7 runs after a warm-up; f32; attention GFLOP/s count the score and value GEMMs \
         (halved for causal; backward counted as 2.5× forward).\n\n",
        load.as_deref().unwrap_or("unknown")
    ));
    md.push_str("| op | shape | time (ms) | rate |\n|---|---|---:|---:|\n");
    for r in &rows {
        md.push_str(&format!("| {} | {} | {:.2} | {} |\n", r.what, r.shape, r.ms, r.rate));
    }
    print!("{md}");
    if std::env::var_os("BENCH_NO_WRITE").is_none() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
        std::fs::create_dir_all(&dir).map_err(|e| vlm4vla::engine::Error::io("benches/results", e))?;
        vlm4vla::engine::io::write_atomic(dir.join("cpu.md"), md.as_bytes())?;
    }
    Ok(())
}
