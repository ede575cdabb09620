"""The last step of tools/gpu-check: drafts of the files issue 17 commits to benches/results/, made
from the run's logs, and their figures printed for summary.txt.

    python3 tools/gpu_check/results.py WORKDIR GPU_NAME

WORKDIR holds env.json, commit.txt (or the repo's .gpu/commit.txt), logs/gpu_*.log (the suite),
logs/step-<case>.log (the step bench: one JSON row per case on stderr) and results/ (the kernel
bench's files, copied). Writes WORKDIR/results/gpu-tests.md and, when the step bench produced rows,
WORKDIR/results/step-<gpu>.md and .jsonl with the step bench's keys plus `ours_samples_s`,
`torch_eager_samples_s`, `mfu`, `peak_gib`, `torch_peak_gib`, `gpu`, `driver`. Only what the logs
hold goes in: a figure the run did not measure stays null.
"""
import datetime
import glob
import json
import os
import re
import subprocess
import sys


def slug(s):
    out = ""
    for ch in s.lower():
        if ch.isascii() and (ch.isalnum() or ch in "._"):
            out += ch
        elif not out.endswith("-"):
            out += "-"
    return out.strip("-")


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def driver():
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    except Exception:
        return None


def suite(work):
    """One row per test binary: passed, failed, ignored, seconds, the failing tests."""
    rows = []
    for log in sorted(glob.glob(os.path.join(work, "logs", "gpu_*.log"))):
        text = read(log)
        name = os.path.basename(log)[:-4].rsplit("-", 1)[0]
        m = None
        for m in re.finditer(r"test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored.*finished in ([\d.]+)s", text):
            pass
        failed = re.findall(r"^test (\S+) \.\.\. FAILED$", text, re.M)
        ran = re.findall(r"^test (\S+) \.\.\. (ok|FAILED)$", text, re.M)
        started = re.findall(r"^test (\S+) \.\.\. $", text, re.M)
        if m:
            rows.append({"binary": name, "result": m.group(1), "passed": int(m.group(2)), "failed": int(m.group(3)),
                         "ignored": int(m.group(4)), "seconds": float(m.group(5)), "failures": failed})
        else:  # killed by its timeout or crashed: count what finished
            rows.append({"binary": name, "result": "incomplete", "passed": sum(1 for _, r in ran if r == "ok"),
                         "failed": len(failed), "ignored": 0, "seconds": None, "failures": failed,
                         "unfinished": started[-1:] if started else []})
    return rows


def step_rows(work, gpu, drv):
    rows = []
    for log in sorted(glob.glob(os.path.join(work, "logs", "step-*.log"))):
        for line in read(log).splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "ours_ms" not in r or "case" not in r:
                continue
            gib = lambda b: None if b is None else b / 2**30
            r.update({
                "ours_samples_s": r.get("samples_per_s"),
                "torch_eager_samples_s": r.get("torch_eager_samples_per_s"),
                "torch_compile_samples_s": r.get("torch_compile_samples_per_s"),
                "peak_gib": gib(r.get("peak_mem_bytes")),
                "torch_peak_gib": gib(r.get("torch_eager_peak_mem_bytes")),
                "gpu": gpu, "driver": drv,
            })
            rows.append(r)
    return rows


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def main():
    work, gpu = sys.argv[1], sys.argv[2]
    os.makedirs(os.path.join(work, "results"), exist_ok=True)
    commit = (read(os.path.join(work, "commit.txt")) or read(".gpu/commit.txt")).split()
    commit = commit[0] if commit else "unknown"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    drv = driver()
    env = {}
    try:
        env = json.loads(read(os.path.join(work, "env.json")).strip().splitlines()[-1])
    except (ValueError, IndexError):
        pass
    v = env.get("versions", {})
    head = [f"GPU: {gpu}; driver {drv}; torch {v.get('torch')} (CUDA {env.get('torch_cuda')}), "
            f"transformers {v.get('transformers')}.",
            f"Commit {commit}, {date}. Command: `bash tools/gpu-check $OUT` (PROPTEST_CASES="
            f"{os.environ.get('PROPTEST_CASES', '100')}).", ""]
    if env.get("gemm") and env.get("copy"):
        head.insert(1, f"Ceilings (torch): bf16 GEMM {env['gemm']['n']}³ {env['gemm']['tflops']:.0f} TFLOP/s; "
                       f"device-to-device copy {env['copy']['gbps']:.0f} GB/s (read + write).")

    rows = suite(work)
    md = ["# The GPU suite on the device", ""] + head
    md += ["| binary | result | passed | failed | ignored | s |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['binary']} | {r['result']} | {r['passed']} | {r['failed']} | {r['ignored']} | "
                  f"{fmt(r['seconds'], '.1f')} |")
    tot = {k: sum(r[k] for r in rows) for k in ("passed", "failed", "ignored")}
    md += [f"| **total** | | {tot['passed']} | {tot['failed']} | {tot['ignored']} | |", ""]
    for r in rows:
        for f in r["failures"]:
            md.append(f"- FAILED {r['binary']}::{f}")
        for f in r.get("unfinished", []):
            md.append(f"- UNFINISHED {r['binary']}::{f} (the binary's time box ended or it crashed)")
    with open(os.path.join(work, "results", "gpu-tests.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"suite totals: {tot['passed']} passed, {tot['failed']} failed, {tot['ignored']} ignored over "
          f"{len(rows)} binaries ({sum(1 for r in rows if r['result'] == 'incomplete')} incomplete)")

    srows = step_rows(work, gpu, drv)
    if srows:
        s = slug(gpu)
        with open(os.path.join(work, "results", f"step-{s}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in srows)
        md = [f"# The training step on {gpu}", ""] + head
        md += ["| case | params | ours ms | eager ms | compile ms | ours samples/s | eager samples/s | ours/eager | "
               "ours/compile | MFU | eager MFU | peak GiB | torch peak GiB | errors |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in srows:
            md.append(" | ".join([
                f"| {r['case']}", fmt(r.get("params"), ","), fmt(r.get("ours_ms"), ".1f"),
                fmt(r.get("torch_eager_ms"), ".1f"), fmt(r.get("torch_compile_ms"), ".1f"),
                fmt(r.get("ours_samples_s"), ".2f"), fmt(r.get("torch_eager_samples_s"), ".2f"),
                fmt(r.get("ours_vs_eager"), ".2f"), fmt(r.get("ours_vs_compile"), ".2f"),
                fmt(r.get("mfu"), ".1%"), fmt(r.get("torch_eager_mfu"), ".1%"), fmt(r.get("peak_gib"), ".1f"),
                fmt(r.get("torch_peak_gib"), ".1f"), "; ".join(r.get("errors") or []) or "–"]) + " |")
        with open(os.path.join(work, "results", f"step-{s}.md"), "w") as f:
            f.write("\n".join(md) + "\n")
        for r in srows:
            print(f"step {r['case']}: ours {fmt(r.get('ours_ms'), '.1f')} ms, eager {fmt(r.get('torch_eager_ms'), '.1f')} ms, "
                  f"ours/eager {fmt(r.get('ours_vs_eager'), '.2f')}, MFU {fmt(r.get('mfu'), '.1%')}, "
                  f"peak {fmt(r.get('peak_gib'), '.2f')} GiB vs torch {fmt(r.get('torch_peak_gib'), '.2f')} GiB"
                  + (f", errors: {r['errors']}" if r.get("errors") else ""))
    else:
        print("step: no rows (see logs/step-*.log)")
    kern = sorted(glob.glob(os.path.join(work, "results", "kernels-*.jsonl")))
    n = sum(len(read(k).splitlines()) for k in kern)
    print(f"kernels: {n} rows in {', '.join(os.path.basename(k) for k in kern) or 'no file'}")
    print(f"results drafts: {', '.join(sorted(os.listdir(os.path.join(work, 'results'))))}")


if __name__ == "__main__":
    main()
