"""The Linear GEMMs of the pg-4x4 training step through NumPy (OpenBLAS) and PyTorch (MKL), f32.

Prints one row per shape and form (x·Wᵀ, dX = G·W, dW = Gᵀ·X) with the median of 9 runs after a
warm-up, to compare with the `linear` rows of `cargo bench --bench cpu` (benches/cpu.rs,
LINEAR_SHAPES). Threads: NumPy's OpenBLAS and torch use OPENBLAS_NUM_THREADS / the torch default;
run with `OPENBLAS_NUM_THREADS=2` and `torch.set_num_threads(2)` (done here) on a 2-core machine.

    OPENBLAS_NUM_THREADS=2 python3 benches/baseline/gemm.py
"""

import statistics
import time

import numpy as np
import torch

SHAPES = [(648, 512, 640), (648, 512, 4096), (648, 2048, 512), (512, 256, 768), (512, 256, 1024), (512, 1024, 256)]


def median_secs(f, runs=9):
    f()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}, torch {torch.__version__}")
    print("| op | shape | numpy (OpenBLAS) GFLOP/s | torch (MKL) GFLOP/s |")
    print("|---|---|---:|---:|")
    for m, k, n in SHAPES:
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((n, k), dtype=np.float32)
        g = rng.standard_normal((m, n), dtype=np.float32)
        tx, tw, tg = (torch.from_numpy(a) for a in (x, w, g))
        forms = [
            ("linear x·Wᵀ", lambda: x @ w.T, lambda: torch.nn.functional.linear(tx, tw)),
            ("linear dX = G·W", lambda: g @ w, lambda: tg @ tw),
            ("linear dW = Gᵀ·X", lambda: g.T @ x, lambda: tg.T @ tx),
        ]
        flops = 2.0 * m * n * k
        for name, f_np, f_torch in forms:
            a = flops / median_secs(f_np) / 1e9
            b = flops / median_secs(f_torch) / 1e9
            print(f"| {name} | {m} rows, {k} → {n} | {a:.1f} | {b:.1f} |")


if __name__ == "__main__":
    main()
