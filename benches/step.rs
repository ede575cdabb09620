//! One full VLA training step per backbone, ours against PyTorch + transformers (eager with SDPA,
//! and `torch.compile`), on the cases of `benches/baseline/step_cases.json`.
//!
//! Run: `cargo bench --bench step` (CPU; `--features cuda` on a GPU machine, where the real-size
//! cases run too). Writes `benches/results/step-<device>.md` and `.jsonl` (`BENCH_NO_WRITE=1` only
//! prints). Knobs: `BENCH_ONLY=<substrings of case names, comma-separated>` (a `gpu_only` case
//! runs on the CPU only when an entry is its exact name), `BENCH_REPS=<n>` (paired repeats, default 3), `BENCH_NO_TORCH=1`,
//! `BENCH_PYTHON=<interpreter>` (default `python3`), `BENCH_PEAK_TFLOPS=<peak>` (adds MFU),
//! `BENCH_MIN_STEPS` / `BENCH_MIN_SECONDS` / `BENCH_WARMUP` (the timing rule of every block),
//! `BENCH_TORCH_MODES=eager` (the PyTorch modes to run; `eager,compile` by default). The case file,
//! the baseline script and the results folder are found under the checkout it was built from or,
//! for a staged binary on another machine, relative to the current directory (the repo root).
//!
//! The step is the trainer's (`src/train/trainer.rs`, `Trainer::train_step` for one micro-batch):
//! `trainable_params`, `forward_loss_with_state`, `backward_into` a fresh `GradStore`,
//! `GradNorm::of`, one packed host read (the loss parts and the norm), `AdamW::step_clipped`; every backbone parameter and the head train.
//!
//! Method: every measurement block is a fresh process, so peak memory is per case: ours is this
//! binary re-run as a child (`BENCH_STEP_CHILD=<case>`), PyTorch is
//! `benches/baseline/train_step.py`. For each case the blocks alternate ours / eager / compile,
//! `BENCH_REPS` times (the machine is shared and noisy: pairing keeps the ratios honest); a block
//! builds the model (random weights), runs `BENCH_WARMUP` steps, then times steps until both
//! `BENCH_MIN_STEPS` steps and `BENCH_MIN_SECONDS` seconds are done, and reports the median step.
//! The table shows the median over the blocks. Our first block writes the batch it trained on
//! (safetensors) and its parameter count; PyTorch trains on that same batch and asserts the same
//! count. Counters come from one step after the warm-up: `engine::counters` (FLOPs of the GEMMs and
//! attention, host reads, primitives = launches on a GPU, allocations), the bytes the forward and
//! loss leave alive for the backward (live tensor bytes after them minus before), and peak memory
//! (the child's VmHWM on the CPU; the CUDA pool's high-water mark over the timed steps on a GPU).

use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;
use vlm4vla::engine::{counters, Device, Error, Result};

#[path = "step/case.rs"]
mod case;
use case::{Case, Measured};

const CASES: &str = "benches/baseline/step_cases.json";
const BASELINE: &str = "benches/baseline/train_step.py";

/// A repository path: under the checkout this binary was built from or, for a binary staged on
/// another machine (`tools/gpu-prepare`) and run from the repo root, relative to the current
/// directory.
fn repo_path(rel: &str) -> String {
    let built = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
    if Path::new(&built).exists() {
        built
    } else {
        rel.to_string()
    }
}
const CHILD_ENV: &str = "BENCH_STEP_CHILD";
const BATCH_ENV: &str = "BENCH_STEP_BATCH_OUT";

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// How many steps a block warms up and times.
#[derive(Clone, Copy, Debug)]
struct Rule {
    warmup: usize,
    min_steps: usize,
    min_seconds: f64,
    max_steps: usize,
}

impl Rule {
    fn from_env() -> Rule {
        Rule {
            warmup: env_num("BENCH_WARMUP", 2.0) as usize,
            min_steps: env_num("BENCH_MIN_STEPS", 5.0).max(1.0) as usize,
            min_seconds: env_num("BENCH_MIN_SECONDS", 2.0),
            max_steps: 200,
        }
    }
}

fn device() -> Device {
    #[cfg(feature = "cuda")]
    if vlm4vla::engine::cuda::is_available(0) {
        return Device::Cuda(0);
    }
    Device::Cpu
}

/// Bytes of the process's resident-set high-water mark (VmHWM), on Linux.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

// ----- the child: one measurement block of ours --------------------------------------------------

fn sync(dev: Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(o) = dev {
        return vlm4vla::engine::cuda::synchronize(o);
    }
    let _ = dev;
    Ok(())
}

fn reset_device_peak(dev: Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(o) = dev {
        return vlm4vla::engine::cuda::reset_pool_peak(o);
    }
    let _ = dev;
    Ok(())
}

/// Peak memory of the block: the CUDA pool's high-water mark on a GPU, else the peak RSS.
fn peak_memory(dev: Device) -> Result<(Option<u64>, &'static str)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(o) = dev {
        return Ok((Some(vlm4vla::engine::cuda::pool_memory(o)?.peak_bytes), "cuda pool high-water mark"));
    }
    let _ = dev;
    Ok((peak_rss_bytes(), "peak RSS (VmHWM)"))
}

fn child(name: &str, rule: Rule) -> Result<Value> {
    let dev = device();
    let case = Case::by_name(&repo_path(CASES), name)?;
    let mut run = case.build(dev, 7)?;
    if let Ok(path) = std::env::var(BATCH_ENV) {
        run.save_batch(Path::new(&path))?;
    }
    for _ in 0..rule.warmup {
        run.step()?;
    }
    sync(dev)?;
    // One instrumented step: counters, and the bytes the forward and loss leave for the backward.
    let before = counters::snapshot();
    counters::reset_peak_bytes();
    let m: Measured = run.step_measured()?;
    sync(dev)?;
    let used = counters::snapshot().since(&before);
    let peak_tensor_bytes = counters::memory().peak_bytes;
    reset_device_peak(dev)?;
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < rule.max_steps
        && (times.len() < rule.min_steps || started.elapsed().as_secs_f64() < rule.min_seconds)
    {
        let t = Instant::now();
        run.step()?;
        sync(dev)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (peak, peak_kind) = peak_memory(dev)?;
    let (params, trainable) = run.num_params();
    Ok(json!({
        "case": name,
        "device": dev.to_string(),
        "threads": rayon::current_num_threads(),
        "params": params,
        "trainable_params": trainable,
        "seq_len": run.seq_len(),
        "lm_tokens_per_sample": run.lm_tokens_per_sample(),
        "ms": median(&times),
        "steps": times.len(),
        "step_ms": times,
        "loss": m.loss,
        "flops": used.flops,
        "host_reads": used.host_reads,
        "launches": used.primitives,
        "allocations": used.allocations,
        "saved_activation_bytes": m.saved_activation_bytes,
        "peak_tensor_bytes": peak_tensor_bytes,
        "peak_mem_bytes": peak,
        "peak_mem_kind": peak_kind,
    }))
}

// ----- the parent: paired blocks, results ------------------------------------------------------

/// The last line of `stdout` that parses as a JSON object.
fn last_json(stdout: &[u8]) -> Option<Value> {
    String::from_utf8_lossy(stdout).lines().rev().find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
}

fn run_block(cmd: &mut std::process::Command, what: &str) -> std::result::Result<Value, String> {
    let out = cmd.output().map_err(|e| format!("{what}: could not start: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!("{what}: exited with {}:\n{}", out.status, tail.join("\n")));
    }
    last_json(&out.stdout).ok_or_else(|| format!("{what}: printed no JSON result"))
}

fn ours_block(name: &str, batch_out: Option<&Path>) -> std::result::Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| format!("ours: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.env(CHILD_ENV, name).stderr(std::process::Stdio::piped());
    if let Some(p) = batch_out {
        cmd.env(BATCH_ENV, p);
    }
    run_block(&mut cmd, &format!("ours ({name})"))
}

fn torch_block(name: &str, mode: &str, batch: &Path, params: u64, threads: usize, rule: Rule, dev: Device) -> Value {
    let python = std::env::var("BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(repo_path(BASELINE))
        .args(["--cases", &repo_path(CASES), "--case", name, "--mode", mode])
        .arg("--batch")
        .arg(batch)
        .args(["--params", &params.to_string(), "--threads", &threads.to_string()])
        .args(["--device", if dev.is_cpu() { "cpu" } else { "cuda" }])
        .args(["--warmup", &rule.warmup.to_string(), "--min-steps", &rule.min_steps.to_string()])
        .args(["--min-seconds", &rule.min_seconds.to_string(), "--max-steps", &rule.max_steps.to_string()])
        .stderr(std::process::Stdio::piped());
    match run_block(&mut cmd, &format!("torch {mode} ({name}, {python})")) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("  {e}");
            json!({ "error": e })
        }
    }
}

/// The result of one case: the blocks of each side.
struct CaseResult {
    case: Case,
    ours: Vec<Value>,
    eager: Vec<Value>,
    compile: Vec<Value>,
}

fn ms_of(blocks: &[Value]) -> Option<f64> {
    let v: Vec<f64> = blocks.iter().filter_map(|b| b["ms"].as_f64()).collect();
    (!v.is_empty()).then(|| median(&v))
}

fn max_of(blocks: &[Value], key: &str) -> Option<u64> {
    blocks.iter().filter_map(|b| b[key].as_u64()).max()
}

fn first<'a>(blocks: &'a [Value], key: &str) -> &'a Value {
    blocks.iter().map(|b| &b[key]).find(|v| !v.is_null()).unwrap_or(&Value::Null)
}

fn mfu(flops: Option<f64>, ms: Option<f64>, peak_tflops: Option<f64>) -> Option<f64> {
    Some(flops? / (ms? * 1e-3) / (peak_tflops? * 1e12))
}

impl CaseResult {
    fn row(&self, device: &str, commit: &str, threads: usize, peak_tflops: Option<f64>) -> Value {
        let c = &self.case;
        let o = &self.ours;
        let (ours_ms, eager_ms, compile_ms) = (ms_of(o), ms_of(&self.eager), ms_of(&self.compile));
        let per_s = |ms: Option<f64>| ms.map(|m| c.batch as f64 / (m * 1e-3));
        let ratio = |other: Option<f64>| Some(other? / ours_ms?);
        let flops = first(o, "flops").as_f64();
        let torch_flops = first(&self.eager, "flops").as_f64().or_else(|| first(&self.compile, "flops").as_f64());
        let lm_tokens = first(o, "lm_tokens_per_sample").as_f64();
        let tokens_per_s = per_s(ours_ms).zip(lm_tokens).map(|(s, t)| s * t);
        json!({
            "case": c.name, "backbone": c.backbone, "batch": c.batch, "image_size": c.image_size,
            "seq_len": first(o, "seq_len"), "dtype": c.dtype, "device": device, "threads": threads,
            "commit": commit, "params": first(o, "params"), "torch_params": first(&self.eager, "params"),
            "ours_ms": ours_ms, "torch_eager_ms": eager_ms, "torch_compile_ms": compile_ms,
            "ours_ms_blocks": o.iter().map(|b| b["ms"].clone()).collect::<Vec<_>>(),
            "torch_eager_ms_blocks": self.eager.iter().map(|b| b["ms"].clone()).collect::<Vec<_>>(),
            "torch_compile_ms_blocks": self.compile.iter().map(|b| b["ms"].clone()).collect::<Vec<_>>(),
            "samples_per_s": per_s(ours_ms), "torch_eager_samples_per_s": per_s(eager_ms),
            "torch_compile_samples_per_s": per_s(compile_ms),
            "ours_vs_eager": ratio(eager_ms), "ours_vs_compile": ratio(compile_ms),
            "tokens_per_s": tokens_per_s,
            "flops": flops, "torch_flops": torch_flops,
            "mfu": mfu(flops, ours_ms, peak_tflops), "torch_eager_mfu": mfu(torch_flops, eager_ms, peak_tflops),
            "torch_compile_mfu": mfu(torch_flops, compile_ms, peak_tflops),
            "peak_mem_bytes": max_of(o, "peak_mem_bytes"), "peak_mem_kind": first(o, "peak_mem_kind"),
            "torch_eager_peak_mem_bytes": max_of(&self.eager, "peak_mem_bytes"),
            "torch_compile_peak_mem_bytes": max_of(&self.compile, "peak_mem_bytes"),
            "peak_tensor_bytes": first(o, "peak_tensor_bytes"),
            "saved_activation_bytes": first(o, "saved_activation_bytes"),
            "torch_saved_activation_bytes": first(&self.eager, "saved_activation_bytes"),
            "host_reads_per_step": first(o, "host_reads"), "launches_per_step": first(o, "launches"),
            "allocations_per_step": first(o, "allocations"),
            "errors": self.ours.iter().chain(&self.eager).chain(&self.compile)
                .filter_map(|b| b["error"].as_str()).collect::<Vec<_>>(),
        })
    }
}

fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(repo_path("."))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let hash = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{hash}-dirty")
    } else {
        hash
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn device_label(dev: Device) -> (String, String) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(o) = dev {
        let name = vlm4vla::engine::cuda::device_info(o).map(|(n, _)| n).unwrap_or_else(|_| "gpu".into());
        return (case::slug(&name), name);
    }
    let _ = dev;
    ("cpu".into(), cpu_model())
}

fn fmt_ms(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.2}") })
}

fn fmt_x(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.2}×"))
}

fn fmt_mib(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{:.1}", x / (1 << 20) as f64))
}

fn fmt_g(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{:.2}", x / 1e9))
}

fn markdown(rows: &[Value], header: &[String]) -> String {
    let mut md = String::from("# Training step: ours vs PyTorch\n\n");
    for h in header {
        let _ = writeln!(md, "{h}  ");
    }
    md.push_str(
        "\n| case | batch | ours ms | eager ms | compile ms | ours/eager | ours/compile | samples/s | tokens/s | \
         GFLOP/step (ours / torch) | MFU | peak MiB (ours / eager / compile) | saved act. MiB (ours / torch) | \
         host reads | launches | allocations |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let mfu = r["mfu"].as_f64().map_or("-".into(), |m| format!("{:.1}%", m * 100.0));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} / {} / {} | {} / {} | {} | {} | {} |",
            r["case"].as_str().unwrap_or(""),
            r["batch"],
            fmt_ms(&r["ours_ms"]),
            fmt_ms(&r["torch_eager_ms"]),
            fmt_ms(&r["torch_compile_ms"]),
            fmt_x(&r["ours_vs_eager"]),
            fmt_x(&r["ours_vs_compile"]),
            r["samples_per_s"].as_f64().map_or("-".into(), |x| format!("{x:.1}")),
            r["tokens_per_s"].as_f64().map_or("-".into(), |x| format!("{x:.0}")),
            fmt_g(&r["flops"]),
            fmt_g(&r["torch_flops"]),
            mfu,
            fmt_mib(&r["peak_mem_bytes"]),
            fmt_mib(&r["torch_eager_peak_mem_bytes"]),
            fmt_mib(&r["torch_compile_peak_mem_bytes"]),
            fmt_mib(&r["saved_activation_bytes"]),
            fmt_mib(&r["torch_saved_activation_bytes"]),
            r["host_reads_per_step"],
            r["launches_per_step"],
            r["allocations_per_step"],
        );
    }
    md
}

fn parent() -> Result<()> {
    let rule = Rule::from_env();
    let dev = device();
    let reps = (env_num("BENCH_REPS", 3.0) as usize).max(1);
    let no_torch = env_flag("BENCH_NO_TORCH");
    let peak_tflops = std::env::var("BENCH_PEAK_TFLOPS").ok().and_then(|v| v.parse::<f64>().ok());
    let only = std::env::var("BENCH_ONLY").ok();
    // BENCH_TORCH_MODES: which PyTorch modes run (comma-separated; `eager,compile` by default).
    let torch_modes: Vec<String> = std::env::var("BENCH_TORCH_MODES")
        .unwrap_or_else(|_| "eager,compile".into())
        .split(',')
        .map(|m| m.trim().to_string())
        .filter(|m| m == "eager" || m == "compile")
        .collect();
    let threads = rayon::current_num_threads();
    let (slug, device_name) = device_label(dev);
    let commit = commit();
    let load_start = load_average();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // BENCH_ONLY: comma-separated substrings; a `gpu_only` case runs on the CPU only when named.
    let wanted: Vec<&str> = only.as_deref().map(|o| o.split(',').map(str::trim).collect()).unwrap_or_default();
    let cases: Vec<Case> = Case::all(&repo_path(CASES))?
        .into_iter()
        .filter(|c| {
            let picked = wanted.is_empty() || wanted.iter().any(|w| c.name.contains(w));
            let named = wanted.contains(&c.name.as_str());
            picked && (!c.gpu_only || !dev.is_cpu() || named)
        })
        .collect();
    eprintln!("step bench on {device_name} ({dev}), {threads} threads, {reps} paired blocks per case, commit {commit}");
    let tmp = std::env::temp_dir().join(format!("vlm4vla-step-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    let mut rows = Vec::new();
    for case in cases {
        let name = case.name.clone();
        let batch: PathBuf = tmp.join(format!("{}.safetensors", case::slug(&name)));
        let mut res = CaseResult { case, ours: Vec::new(), eager: Vec::new(), compile: Vec::new() };
        for rep in 0..reps {
            let ours = ours_block(&name, (rep == 0).then_some(batch.as_path())).unwrap_or_else(|e| {
                eprintln!("  {e}");
                json!({ "error": e })
            });
            let params = ours["params"].as_u64();
            eprintln!("{name} block {}: ours {} ms", rep + 1, fmt_ms(&ours["ms"]));
            res.ours.push(ours);
            let Some(params) = params.or_else(|| res.ours[0]["params"].as_u64()) else { break };
            if no_torch || !batch.exists() {
                continue;
            }
            for mode in torch_modes.iter().map(String::as_str) {
                let v = torch_block(&name, mode, &batch, params, threads, rule, dev);
                eprintln!("{name} block {}: torch {mode} {} ms", rep + 1, fmt_ms(&v["ms"]));
                if mode == "eager" {
                    res.eager.push(v)
                } else {
                    res.compile.push(v)
                }
            }
        }
        let row = res.row(&slug, &commit, threads, peak_tflops);
        eprintln!("{row}");
        rows.push(row);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let mut knobs: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("BENCH_") || k == "RAYON_NUM_THREADS")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    knobs.sort();
    let features = if cfg!(feature = "cuda") { " --features cuda" } else { "" };
    let command = format!("{} cargo bench{features} --bench step", knobs.join(" "));
    let header = vec![
        format!("Machine: {device_name}; {threads} threads (rayon; torch.set_num_threads the same)."),
        format!("Commit {commit}, {date}. Command: `{}`.", command.trim()),
        format!("Load average (1, 5, 15 min) at the start: {load_start}; at the end: {}.", load_average()),
        format!(
            "Each figure is the median over {reps} paired blocks (ours, eager, compile in turn); a block is a fresh \
             process timing at least {} steps and {} s after {} warm-up steps, its median step. Ratios are ours/torch \
             in samples/s (> 1: ours is faster). See benches/README.md.",
            rule.min_steps, rule.min_seconds, rule.warmup
        ),
    ];
    let md = markdown(&rows, &header);
    println!("{md}");
    if !env_flag("BENCH_NO_WRITE") {
        let base = format!("{}/step-{slug}", repo_path("benches/results"));
        let jsonl: String = rows.iter().map(|r| format!("{r}\n")).collect();
        vlm4vla::engine::io::write_atomic(format!("{base}.md"), md.as_bytes())?;
        vlm4vla::engine::io::write_atomic(format!("{base}.jsonl"), jsonl.as_bytes())?;
        eprintln!("wrote {base}.md and {base}.jsonl");
    }
    Ok(())
}

fn main() -> Result<()> {
    if let Ok(name) = std::env::var(CHILD_ENV) {
        let v = child(&name, Rule::from_env())?;
        println!("{v}");
        return Ok(());
    }
    parent()
}
