// index.cu: indexing along one dim and its scatter-style backward.
//
// Tensors are contiguous and viewed as [outer, len, inner] around the indexed dim: the source
// [outer, src_len, inner], the indexed side [outer, idx_len, inner]. Indices are i64 and were
// validated by the engine; an index outside [0, src_len) is still never dereferenced (the
// forward writes NaN there, the backward drops it).
// index_select fwd: out[o, j, i] = src[o, idx[j], i] (idx is [idx_len]). Overwrites out.
// index_select bwd: dsrc[o, idx[j], i] += g[o, j, i] with atomics (accumulates; zero dsrc first).
// gather fwd:  out[o, j, i] = src[o, idx[o, j, i], i] (idx shaped like out). Overwrites out.
// gather bwd:  dsrc[o, idx[o, j, i], i] += g[o, j, i] with atomics (accumulates).
// scatter_add fwd: out[o, idx[o, j, i], i] += src[o, j, i] with atomics; the launcher first
//   copies dst into out (accumulates). Its backward is gather (dsrc) and the identity (ddst).
// masked_scatter fwd: out[e] = mask[e] ? src[pos[e]] : dst[e] over n elements, with mask (u8)
//   already broadcast to out's shape and pos its exclusive prefix sum (computed by the launcher).
//   Overwrites out.
// masked_scatter bwd: ddst[e] = mask[e] ? 0 : g[e] (overwrite, ddst may be null);
//   dsrc[pos[e]] = g[e] where mask[e] (overwrites those positions; the launcher zeroes the rest).
// Atomic accumulation order varies between runs (fp32 rounding differs in the last bits).
#include "common.cuh"

struct IndexParams {
    i64 outer;
    i64 src_len;
    i64 idx_len;
    i64 inner;
    i64 n;  // masked_scatter: elements of out
};
static_assert(sizeof(IndexParams) == 40, "IndexParams layout");

// (o, j, i) of element e of the indexed side [outer, idx_len, inner].
__device__ __forceinline__ void split(const IndexParams& p, i64 e, i64& o, i64& j, i64& i) {
    // Unsigned division: all values are non-negative, and its subroutine is shorter.
    const u64 q = (u64)e / (u64)p.inner;
    i = e - (i64)q * p.inner;
    o = (i64)(q / (u64)p.idx_len);
    j = (i64)q - o * p.idx_len;
}

template <typename T>
__device__ void index_select_fwd(const IndexParams p, const T* __restrict__ src, const i64* __restrict__ idx,
                                 T* __restrict__ out) {
    FOR_EACH(e, p.outer * p.idx_len * p.inner) {
        i64 o, j, i;
        split(p, e, o, j, i);
        const i64 k = idx[j];
        store(out, e, (k >= 0 && k < p.src_len) ? load(src, (o * p.src_len + k) * p.inner + i) : __int_as_float(0x7fc00000));
    }
}

template <typename T>
__device__ void index_select_bwd(const IndexParams p, const T* __restrict__ g, const i64* __restrict__ idx,
                                 T* __restrict__ dsrc) {
    FOR_EACH(e, p.outer * p.idx_len * p.inner) {
        i64 o, j, i;
        split(p, e, o, j, i);
        const i64 k = idx[j];
        if (k >= 0 && k < p.src_len) atomic_add(dsrc + (o * p.src_len + k) * p.inner + i, load(g, e));
    }
}

template <typename T>
__device__ void gather_fwd(const IndexParams p, const T* __restrict__ src, const i64* __restrict__ idx, T* __restrict__ out) {
    FOR_EACH(e, p.outer * p.idx_len * p.inner) {
        i64 o, j, i;
        split(p, e, o, j, i);
        const i64 k = idx[e];
        store(out, e, (k >= 0 && k < p.src_len) ? load(src, (o * p.src_len + k) * p.inner + i) : __int_as_float(0x7fc00000));
    }
}

// Shared by gather's backward and scatter_add's forward: dst[o, idx[e], i] += v[e].
template <typename T>
__device__ void scatter_add_rows(const IndexParams p, const T* __restrict__ v, const i64* __restrict__ idx, T* __restrict__ dst) {
    FOR_EACH(e, p.outer * p.idx_len * p.inner) {
        i64 o, j, i;
        split(p, e, o, j, i);
        const i64 k = idx[e];
        if (k >= 0 && k < p.src_len) atomic_add(dst + (o * p.src_len + k) * p.inner + i, load(v, e));
    }
}

template <typename T>
__device__ void masked_scatter_fwd(const IndexParams p, const T* __restrict__ dst, const u8* __restrict__ mask,
                                   const i64* __restrict__ pos, const T* __restrict__ src, T* __restrict__ out) {
    FOR_EACH(e, p.n) {
        if (mask[e]) {
            const i64 k = pos[e];
            store(out, e, (k >= 0 && k < p.src_len) ? load(src, k) : __int_as_float(0x7fc00000));
        } else {
            store(out, e, load(dst, e));
        }
    }
}

template <typename T>
__device__ void masked_scatter_bwd(const IndexParams p, const T* __restrict__ g, const u8* __restrict__ mask,
                                   const i64* __restrict__ pos, T* __restrict__ ddst, T* __restrict__ dsrc) {
    FOR_EACH(e, p.n) {
        const float ge = load(g, e);
        if (ddst) store(ddst, e, mask[e] ? 0.0f : ge);
        if (dsrc && mask[e]) {
            const i64 k = pos[e];
            if (k >= 0 && k < p.src_len) store(dsrc, k, ge);
        }
    }
}

#define INDEX(dtype, T)                                                                                         \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                                    \
        index_select_fwd_##dtype(const IndexParams p, const T* src, const i64* idx, T* out) {                   \
        index_select_fwd<T>(p, src, idx, out);                                                                  \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                                    \
        index_select_bwd_##dtype(const IndexParams p, const T* g, const i64* idx, T* dsrc) {                    \
        index_select_bwd<T>(p, g, idx, dsrc);                                                                   \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                                    \
        gather_fwd_##dtype(const IndexParams p, const T* src, const i64* idx, T* out) { gather_fwd<T>(p, src, idx, out); } \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                                    \
        gather_bwd_##dtype(const IndexParams p, const T* g, const i64* idx, T* dsrc) {                          \
        scatter_add_rows<T>(p, g, idx, dsrc);                                                                   \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                                    \
        scatter_add_fwd_##dtype(const IndexParams p, const T* src, const i64* idx, T* out) {                    \
        scatter_add_rows<T>(p, src, idx, out);                                                                  \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(EW_THREADS) masked_scatter_fwd_##dtype(                        \
        const IndexParams p, const T* dst, const u8* mask, const i64* pos, const T* src, T* out) {              \
        masked_scatter_fwd<T>(p, dst, mask, pos, src, out);                                                     \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(EW_THREADS) masked_scatter_bwd_##dtype(                        \
        const IndexParams p, const T* g, const u8* mask, const i64* pos, T* ddst, T* dsrc) {                    \
        masked_scatter_bwd<T>(p, g, mask, pos, ddst, dsrc);                                                     \
    }
INDEX(f32, float)
INDEX(bf16, bf16)
