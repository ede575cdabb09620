// reduce.cu: reductions along one dim (sum, max, min), argmax, and the max/min backward.
//
// The input is viewed as contiguous [outer, len, inner] (the reduced dim in the middle); outputs
// are [outer, inner]. One warp per output element when inner == 1 (rows: coalesced along len),
// one thread per output element otherwise (coalesced along inner).
// fwd (`reduce`): out = sum / max / min over len; for max/min, idx (i64, may be null) receives the
//   index of the first extreme element (NaN counts as extreme, as torch). Overwrites out and idx.
// fwd (`argmax`): idx only (first maximum). Overwrites idx.
// bwd (`reduce`, max/min only; sum's backward is a broadcast): dx[o, k, i] = (k == idx[o, i]) ?
//   g[o, i] : 0, written for every element of dx (overwrite, no memset needed).
// Sums accumulate in fp32 in a fixed order, so results are deterministic.
#include "common.cuh"

enum ReduceCode { R_SUM = 0, R_MAX, R_MIN };

struct ReduceParams {
    i64 outer;
    i64 len;
    i64 inner;
    int op;
    int pad;
};
static_assert(sizeof(ReduceParams) == 32, "ReduceParams layout");

// Whether v replaces the current extreme `best` (strictly better or a first NaN).
__device__ __forceinline__ bool better(int op, float v, float best) {
    if (isnan(best)) return false;
    if (isnan(v)) return true;
    return op == R_MIN ? v < best : v > best;
}

// Combine (v, k) into (best, bi) keeping the first index on ties.
__device__ __forceinline__ void combine(int op, float v, i64 k, float& best, i64& bi) {
    const bool same = v == best || (isnan(v) && isnan(best));
    if (bi < 0 || better(op, v, best) || (same && k < bi)) {
        best = v;
        bi = k;
    }
}

template <typename T>
__device__ void reduce_fwd(const ReduceParams p, const T* __restrict__ x, T* __restrict__ out, i64* __restrict__ idx) {
    const i64 n_out = p.outer * p.inner;
    if (p.inner == 1) {
        // A warp per row: lanes stride along len, then a shuffle reduction.
        const int lane = threadIdx.x % WARP;
        const i64 warps = (i64)gridDim.x * (blockDim.x / WARP);
        for (i64 row = (i64)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP; row < n_out; row += warps) {
            const T* r = x + row * p.len;
            if (p.op == R_SUM) {
                float s = 0.0f;
                for (i64 k = lane; k < p.len; k += WARP) s += load(r, k);
                s = warp_sum(s);
                if (lane == 0) store(out, row, s);
            } else {
                float best = p.op == R_MAX ? NEG_INF : POS_INF;
                i64 bi = -1;
                for (i64 k = lane; k < p.len; k += WARP) combine(p.op, load(r, k), k, best, bi);
                for (int o = WARP / 2; o > 0; o >>= 1) {
                    const float ov = __shfl_xor_sync(FULL_MASK, best, o);
                    const i64 oi = __shfl_xor_sync(FULL_MASK, bi, o);
                    if (oi >= 0) combine(p.op, ov, oi, best, bi);
                }
                if (lane == 0) {
                    if (out) store(out, row, best);
                    if (idx) idx[row] = bi;
                }
            }
        }
        return;
    }
    FOR_EACH(e, n_out) {
        const i64 o = e / p.inner, i = e % p.inner;
        const T* base = x + o * p.len * p.inner + i;
        if (p.op == R_SUM) {
            float s = 0.0f;
            for (i64 k = 0; k < p.len; ++k) s += load(base, k * p.inner);
            store(out, e, s);
        } else {
            float best = p.op == R_MAX ? NEG_INF : POS_INF;
            i64 bi = -1;
            for (i64 k = 0; k < p.len; ++k) combine(p.op, load(base, k * p.inner), k, best, bi);
            if (out) store(out, e, best);
            if (idx) idx[e] = bi;
        }
    }
}

template <typename T>
__device__ void reduce_bwd(const ReduceParams p, const T* __restrict__ g, const i64* __restrict__ idx, T* __restrict__ dx) {
    FOR_EACH(e, p.outer * p.len * p.inner) {
        // Two divisions, the remainders by multiply-subtract.
        const i64 q = e / p.inner, o = q / p.len;
        const i64 i = e - q * p.inner, k = q - o * p.len;
        const i64 oi = o * p.inner + i;
        store(dx, e, idx[oi] == k ? load(g, oi) : 0.0f);
    }
}

template <typename T>
__device__ void argmax_fwd(ReduceParams p, const T* __restrict__ x, i64* __restrict__ idx) {
    p.op = R_MAX;
    reduce_fwd<T>(p, x, (T*)nullptr, idx);
}

#define REDUCE(dtype, T)                                                                                \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                            \
        reduce_fwd_##dtype(const ReduceParams p, const T* x, T* out, i64* idx) { reduce_fwd<T>(p, x, out, idx); } \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                            \
        reduce_bwd_##dtype(const ReduceParams p, const T* g, const i64* idx, T* dx) { reduce_bwd<T>(p, g, idx, dx); } \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                            \
        argmax_fwd_##dtype(const ReduceParams p, const T* x, i64* idx) { argmax_fwd<T>(p, x, idx); }
REDUCE(f32, float)
REDUCE(bf16, bf16)
