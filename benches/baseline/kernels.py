#!/usr/bin/env python3
"""PyTorch baselines for the kernel benchmarks (benches/kernels.rs): every row of cases.json timed
with PyTorch's own kernels, the same way the Rust side times ours.

    python3 benches/baseline/kernels.py --json [--out FILE]     # on the GPU: one JSON object
    python3 benches/baseline/kernels.py --device cpu --tiny      # smoke test, any machine

Per row: `torch_us`, the eager equivalent (attention: SDPA, FLASH_ATTENTION backend where the shape
allows it, else the next backend that runs, named in `torch_impl`; norms and the rest: the eager
ops a transformers model runs, or torch's fused functional op when that is faster), and
`torch_compile_us`, the same function under torch.compile (None where it does not apply or fails).
Method (as benches/kernels.rs): inputs rotated over enough copies to exceed twice the L2 cache,
warm-up first, CUDA events around a batch of calls, the median over repeats of the per-call time.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


# ----- timing -----------------------------------------------------------------------------------

class Timer:
    def __init__(self, device, reps, min_batch_ms):
        self.device = device
        self.cuda = device.type == "cuda"
        self.reps = reps
        self.min_batch_ms = min_batch_ms

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def batch_ms(self, fns, n):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(n):
                fns[i % len(fns)]()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        for i in range(n):
            fns[i % len(fns)]()
        return (time.perf_counter() - t0) * 1e3

    def us(self, fns):
        """Median microseconds per call of fns (callables over rotated inputs)."""
        for f in fns:  # warm-up: compilation, autotuning, caches
            f()
        self.sync()
        n = len(fns)
        ms = self.batch_ms(fns, n)
        while ms < self.min_batch_ms and n < 1 << 16:
            n *= 2
            ms = self.batch_ms(fns, n)
        return statistics.median(self.batch_ms(fns, n) * 1e3 / n for _ in range(self.reps))


def copies_for(bytes_per_set, l2_bytes, tiny):
    """Input sets to rotate over so that one pass over them exceeds twice the L2 cache."""
    if tiny:
        return 2
    return max(2, min(64, math.ceil(2 * l2_bytes / max(bytes_per_set, 1))))


# ----- cases ------------------------------------------------------------------------------------

def shrink(cases):
    """--tiny: the same rows at toy sizes (CPU smoke test)."""
    out = json.loads(json.dumps(cases))
    for c in out["attention"]:
        c["b"] = 2
        scale = 48 / max(c["lq"], 1)
        c["lq"] = c["lk"] = max(8, int(c["lq"] * scale))
        if c["mask"] == "segments":
            c["window"] = 16
            c["lq"] = c["lk"] = 48
        if c["mask"] == "prefix":
            c["prefix"] = min(c["prefix"], c["lq"] - 4)
    for fam in ("rms_norm", "layer_norm"):
        for c in out[fam]:
            c["rows"] = 16
    for fam in ("swiglu", "geglu"):
        for c in out[fam]:
            c["rows"], c["f"] = 8, min(c["f"], 512)
    for c in out["rope"]:
        c["b"], c["l"] = 2, 8
    for c in out["adamw"]:
        c["shapes"] = [[min(d, 64) for d in s] for s in c["shapes"]]
    for c in out["cross_entropy"]:
        c["rows"], c["classes"] = 8, min(c["classes"], 1000)
    for fam in ("huber", "bce"):
        for c in out[fam]:
            c["n"] = min(c["n"], 4096)
    return out


def randn(*shape, dev, dtype, grad=False):
    t = torch.randn(*shape, device=dev, dtype=torch.float32).to(dtype)
    return t.requires_grad_(grad)


# ----- attention --------------------------------------------------------------------------------

def sdpa_backends():
    from torch.nn.attention import SDPBackend
    return [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH)]


def attention_fn(c, q, k, v, backend):
    """SDPA for case c on [B, H, L, D] tensors: windows become batch rows (as a varlen flash call
    would), prefix-LM needs a boolean mask, GQA uses enable_gqa (else repeated K/V)."""
    from torch.nn.attention import sdpa_kernel
    b, hq, hkv, l, d = c["b"], c["hq"], c["hkv"], c["lq"], c["d"]
    scale = d ** -0.5
    mask = None
    causal = c["mask"] == "causal"
    if c["mask"] == "prefix":
        i = torch.arange(l, device=q.device)
        mask = (i[None, :] <= i[:, None]) | (i[None, :] < c["prefix"])
    gqa = hq != hkv

    def run(repeat_kv):
        qq, kk, vv = q, k, v
        if c["mask"] == "segments":
            w = c["window"]
            qq = q.reshape(b, hq, l // w, w, d).transpose(1, 2).reshape(b * l // w, hq, w, d)
            kk = k.reshape(b, hkv, l // w, w, d).transpose(1, 2).reshape(b * l // w, hkv, w, d)
            vv = v.reshape(b, hkv, l // w, w, d).transpose(1, 2).reshape(b * l // w, hkv, w, d)
        kw = {}
        if gqa and repeat_kv:
            kk = kk.repeat_interleave(hq // hkv, dim=1)
            vv = vv.repeat_interleave(hq // hkv, dim=1)
        elif gqa:
            kw["enable_gqa"] = True
        with sdpa_kernel([backend]):
            out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, is_causal=causal, scale=scale, **kw)
        if c["mask"] == "segments":
            out = out.reshape(b, l // c["window"], hq, c["window"], d).transpose(1, 2).reshape(b, hq, l, d)
        return out

    return run


def bench_attention(c, dev, timer, l2, tiny):
    dtype = torch.bfloat16
    b, hq, hkv, l, d = c["b"], c["hq"], c["hkv"], c["lq"], c["d"]
    per_set = 2 * (b * hq * l * d * 3 + b * hkv * l * d * 2)
    sets = []
    for _ in range(copies_for(per_set, l2, tiny)):
        q = randn(b, hq, l, d, dev=dev, dtype=dtype, grad=True)
        k = randn(b, hkv, l, d, dev=dev, dtype=dtype, grad=True)
        v = randn(b, hkv, l, d, dev=dev, dtype=dtype, grad=True)
        g = randn(b, hq, l, d, dev=dev, dtype=dtype)
        sets.append((q, k, v, g))
    backends = sdpa_backends() if dev.type == "cuda" else [("math", sdpa_backends()[-1][1])]
    for name, backend in backends:
        for repeat in (False, True):
            try:
                fns = [attention_fn(c, q, k, v, backend) for q, k, v, _ in sets]
                outs = [f(False if not repeat else True) for f in fns]
                impl = f"sdpa {name}" + (", repeated kv" if repeat and hq != hkv else "")
                fwd = timer.us([lambda f=f, r=repeat: f(r) for f in fns])
                grads = [lambda o=o, s=s: torch.autograd.grad(o, s[:3], s[3], retain_graph=True)
                         for o, s in zip(outs, sets)]
                bwd = timer.us(grads)
                return [
                    {"kernel": "attention_fwd", "case": c["case"], "torch_us": fwd, "torch_compile_us": None,
                     "torch_impl": impl},
                    {"kernel": "attention_bwd", "case": c["case"], "torch_us": bwd, "torch_compile_us": None,
                     "torch_impl": impl},
                ]
            except RuntimeError:
                continue
            finally:
                pass
    return [{"kernel": k, "case": c["case"], "torch_us": None, "torch_compile_us": None, "torch_impl": "none ran"}
            for k in ("attention_fwd", "attention_bwd")]


# ----- elementwise and row ops: eager and compiled ----------------------------------------------

def fwd_bwd_rows(kernel, case, make_sets, fns, timer, compile_ok, wrt):
    """Rows kernel_fwd / kernel_bwd for each (impl name, fn) in fns: fn(*inputs) -> output;
    wrt(inputs) -> tensors to differentiate; the backward row times autograd.grad of the output."""
    sets = make_sets()
    best = {"fwd": (None, None), "bwd": (None, None)}
    compiled = {"fwd": None, "bwd": None}
    for impl, fn in fns:
        for variant in ("eager", "compile"):
            if variant == "compile" and not compile_ok():
                continue
            try:
                f = torch.compile(fn, dynamic=False) if variant == "compile" else fn
                outs = [f(*s["inputs"]) for s in sets]
                fwd = timer.us([lambda f=f, s=s: f(*s["inputs"]) for s in sets])
                bwd = timer.us([lambda o=o, s=s: torch.autograd.grad(o, wrt(s["inputs"]), s["g"], retain_graph=True)
                                for o, s in zip(outs, sets)])
            except Exception as e:  # a compile that fails is reported as None
                print(f"# {kernel} {case} {impl} {variant}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
                continue
            if variant == "eager":
                for key, t in (("fwd", fwd), ("bwd", bwd)):
                    if best[key][0] is None or t < best[key][0]:
                        best[key] = (t, impl)
            else:
                compiled["fwd"] = fwd if compiled["fwd"] is None else min(compiled["fwd"], fwd)
                compiled["bwd"] = bwd if compiled["bwd"] is None else min(compiled["bwd"], bwd)
    return [{"kernel": f"{kernel}_{key}", "case": case, "torch_us": best[key][0], "torch_compile_us": compiled[key],
             "torch_impl": best[key][1]} for key in ("fwd", "bwd")]


def hf_rms_norm(x, w, eps=1e-6):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def hf_gemma_rms_norm(x, w, eps=1e-6):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * (1.0 + w.float())).to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def hf_rope(x, cos, sin):
    # x [B, L, H, D], tables [L, D] broadcast over batch and heads.
    return x * cos[None, :, None, :] + rotate_half(x) * sin[None, :, None, :]


def run_rows(cases, dev, timer, l2, tiny, compile_ok, only):
    dtype = torch.bfloat16
    rows = []

    def want(kernel, case):
        return not only or only in kernel or only in case

    for c in cases["attention"]:
        if want("attention", c["case"]):
            rows += bench_attention(c, dev, timer, l2, tiny)

    def sets_of(per_set_bytes, make):
        return lambda: [make() for _ in range(copies_for(per_set_bytes, l2, tiny))]

    for c in cases["rms_norm"]:
        if not want("rms_norm", c["case"]):
            continue
        r, w_ = c["rows"], c["width"]
        gemma = c["kind"] == "gemma"

        def make(r=r, w_=w_):
            return {"inputs": (randn(r, w_, dev=dev, dtype=dtype, grad=True), randn(w_, dev=dev, dtype=dtype, grad=True)),
                    "g": randn(r, w_, dev=dev, dtype=dtype)}
        fused = (lambda x, w: F.rms_norm(x, (x.shape[-1],), 1.0 + w, 1e-6)) if gemma else \
            (lambda x, w: F.rms_norm(x, (x.shape[-1],), w, 1e-6))
        fns = [("transformers eager", hf_gemma_rms_norm if gemma else hf_rms_norm), ("F.rms_norm", fused)]
        rows += fwd_bwd_rows("rms_norm", c["case"], sets_of(3 * r * w_ * 2, make), fns, timer, compile_ok,
                             lambda i: i)

    for c in cases["layer_norm"]:
        if not want("layer_norm", c["case"]):
            continue
        r, w_ = c["rows"], c["width"]

        def make(r=r, w_=w_):
            return {"inputs": (randn(r, w_, dev=dev, dtype=dtype, grad=True), randn(w_, dev=dev, dtype=dtype, grad=True),
                               randn(w_, dev=dev, dtype=dtype, grad=True)),
                    "g": randn(r, w_, dev=dev, dtype=dtype)}
        fns = [("F.layer_norm", lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, 1e-6))]
        rows += fwd_bwd_rows("layer_norm", c["case"], sets_of(3 * r * w_ * 2, make), fns, timer, compile_ok,
                             lambda i: i)

    for name in ("swiglu", "geglu"):
        for c in cases[name]:
            if not want(name, c["case"]):
                continue
            r, f = c["rows"], c["f"]

            def make(r=r, f=f):
                return {"inputs": (randn(r, 2 * f, dev=dev, dtype=dtype, grad=True),), "g": randn(r, f, dev=dev, dtype=dtype)}
            if name == "swiglu":
                def fn(x):
                    gate, up = x.chunk(2, dim=-1)
                    return F.silu(gate) * up
            else:
                def fn(x):
                    gate, up = x.chunk(2, dim=-1)
                    return F.gelu(gate, approximate="tanh") * up
            rows += fwd_bwd_rows(name, c["case"], sets_of(5 * r * f * 2, make), [("eager", fn)], timer, compile_ok,
                                 lambda i: i)

    for c in cases["rope"]:
        if not want("rope", c["case"]):
            continue
        b, l, h, d = c["b"], c["l"], c["h"], c["d"]

        def make(b=b, l=l, h=h, d=d):
            return {"inputs": (randn(b, l, h, d, dev=dev, dtype=dtype, grad=True), randn(l, d, dev=dev, dtype=dtype),
                               randn(l, d, dev=dev, dtype=dtype)),
                    "g": randn(b, l, h, d, dev=dev, dtype=dtype)}
        rows += fwd_bwd_rows("rope", c["case"], sets_of(2 * b * l * h * d * 2, make),
                             [("transformers eager", hf_rope)], timer, compile_ok, lambda i: i[:1])

    for c in cases["cross_entropy"]:
        if not want("cross_entropy", c["case"]):
            continue
        r, k = c["rows"], c["classes"]

        def make(r=r, k=k):
            return {"inputs": (randn(r, k, dev=dev, dtype=dtype, grad=True),
                               torch.randint(0, k, (r,), device=dev)),
                    "g": randn(r, dev=dev, dtype=dtype)}
        rows += fwd_bwd_rows("cross_entropy", c["case"], sets_of(2 * r * k * 2, make),
                             [("F.cross_entropy", lambda x, t: F.cross_entropy(x, t, reduction="none"))], timer,
                             compile_ok, lambda i: i[:1])

    for name in ("huber", "bce"):
        for c in cases[name]:
            if not want(name, c["case"]):
                continue
            n = c["n"]

            def make(n=n):
                return {"inputs": (randn(n, dev=dev, dtype=dtype, grad=True), randn(n, dev=dev, dtype=dtype, grad=True)),
                        "g": randn(n, dev=dev, dtype=dtype)}
            if name == "huber":
                delta = c["delta"]
                fns = [("F.huber_loss", lambda p, t, delta=delta: F.huber_loss(p, t, reduction="none", delta=delta))]
            else:
                fns = [("F.binary_cross_entropy_with_logits",
                        lambda p, t: F.binary_cross_entropy_with_logits(p, t, reduction="none"))]
            rows += fwd_bwd_rows(name, c["case"], sets_of(5 * n * 2, make), fns, timer, compile_ok, lambda i: i)

    for c in cases["adamw"]:
        if not want("adamw", c["case"]):
            continue
        # fp32 parameters and gradients with torch's fused AdamW (the fp32 state traffic of ours,
        # which keeps fp32 masters and moments and reads bf16 gradients).
        params = [torch.randn(*s, device=dev, dtype=torch.float32, requires_grad=True) for s in c["shapes"]]
        for p in params:
            p.grad = torch.randn_like(p)
        try:
            opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=dev.type == "cuda")
            impl = "torch.optim.AdamW(fused=True), fp32 params" if dev.type == "cuda" else "torch.optim.AdamW, fp32"
            us = timer.us([opt.step])
        except RuntimeError as e:
            us, impl = None, f"failed: {str(e)[:80]}"
        rows.append({"kernel": "adamw_step", "case": c["case"], "torch_us": us, "torch_compile_us": None,
                     "torch_impl": impl})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout (else a table)")
    ap.add_argument("--out", help="also write the JSON object to this file (atomically)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (a smoke test, e.g. with --device cpu)")
    ap.add_argument("--cases", default=os.path.join(HERE, "cases.json"))
    ap.add_argument("--only", help="only rows whose kernel or case contains this")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--compile-budget-s", type=float, default=300.0,
                    help="stop trying torch.compile after this many seconds in total")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device for torch", file=sys.stderr)
        return 2
    cases = json.load(open(args.cases))
    if args.tiny:
        cases = shrink(cases)
    torch.manual_seed(0)
    l2 = 50 * 2 ** 20
    gpu = "cpu"
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        l2 = getattr(props, "L2_cache_size", l2) or l2
        gpu = props.name
    timer = Timer(dev, args.reps, 0.05 if args.tiny else 2.0)
    t0 = time.time()

    def compile_ok():
        return not args.no_compile and time.time() - t0 < args.compile_budget_s

    rows = run_rows(cases, dev, timer, l2, args.tiny, compile_ok, args.only)
    result = {"gpu": gpu, "torch": torch.__version__, "device": str(dev), "tiny": args.tiny, "rows": rows}
    text = json.dumps(result, indent=1)
    if args.out:
        tmp = f"{args.out}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
    if args.json:
        print(text)
    else:
        fmt = lambda x: "-" if x is None else f"{x:.1f}"
        print(f"{'kernel':<16} {'case':<52} {'torch us':>10} {'compile us':>10}  impl")
        for r in rows:
            print(f"{r['kernel']:<16} {r['case'][:52]:<52} {fmt(r['torch_us']):>10} {fmt(r['torch_compile_us']):>10}  "
                  f"{r['torch_impl']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
