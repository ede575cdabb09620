"""Phase 1 of tools/gpu-check: the software versions and the two measured ceilings.

Prints one JSON object: torch / transformers / safetensors versions, torch's CUDA and cuDNN, the
device, and the ceilings the benchmarks divide by: the bf16 GEMM rate (N×N×N, fp32 accumulation,
TF32 off) and the device-to-device copy bandwidth (read + write of a buffer far larger than L2).
Timing: CUDA events around a batch of calls after a warm-up, the median of the repeats.

    python3 tools/gpu_check/env.py [--device cpu --n 512 --copy-mib 64]   # CPU: plumbing only
"""
import argparse
import json
import platform
import statistics
import sys
import time


def versions():
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "safetensors", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception as e:  # a missing package is reported, not fatal
            out[name] = f"missing ({type(e).__name__})"
    return out


def timed(fn, dev, reps, inner):
    import torch
    fn()
    if dev == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if dev == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(inner):
                fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3 / inner)
        else:
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t) / inner)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=8192, help="GEMM size N (N×N×N)")
    ap.add_argument("--copy-mib", type=int, default=1024, help="copy buffer size in MiB")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    out = {"versions": versions()}
    try:
        import torch
    except Exception as e:
        out["error"] = f"no torch: {e}"
        print(json.dumps(out))
        return 1
    out["torch_cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    dev = a.device
    if dev == "cuda":
        if not torch.cuda.is_available():
            out["error"] = "torch sees no CUDA device"
            print(json.dumps(out))
            return 1
        p = torch.cuda.get_device_properties(0)
        out["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": p.total_memory / 2**30,
                         "sms": p.multi_processor_count}
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        out["device"] = {"name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    n = a.n
    x = torch.randn(n, n, device=dev, dtype=dtype)
    y = torch.randn(n, n, device=dev, dtype=dtype)
    s = timed(lambda: torch.mm(x, y), dev, a.reps, 5 if dev == "cuda" else 1)
    out["gemm"] = {"n": n, "dtype": str(dtype), "seconds": s, "tflops": 2 * n**3 / s / 1e12}
    del x, y
    nbytes = a.copy_mib * 2**20
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    src.fill_(1)
    dst = torch.empty_like(src)
    s = timed(lambda: dst.copy_(src), dev, a.reps, 5 if dev == "cuda" else 1)
    out["copy"] = {"bytes": nbytes, "seconds": s, "gbps": 2 * nbytes / s / 1e9, "counted": "read + write"}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
