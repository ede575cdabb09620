// index.cu: indexing along one dim and its scatter-style backward.
//
// Tensors are contiguous and viewed as [outer, len, inner] around the indexed dim: the source
// [outer, src_len, inner], the indexed side [outer, idx_len, inner]. Indices are i64 tensors on
// the device, never checked by the host: an index outside [0, src_len) is never dereferenced
// (the forward writes NaN there, the backward drops it), so bad ids surface as NaN.
// index_select fwd: out[o, j, i] = src[o, idx[j], i] (idx is [idx_len]). Overwrites out.
// index_select bwd: dsrc[o, idx[j], i] += g[o, j, i] with atomics (accumulates; zero dsrc first).
// gather fwd:  out[o, j, i] = src[o, idx[o, j, i], i] (idx shaped like out). Overwrites out.
// gather bwd:  dsrc[o, idx[o, j, i], i] += g[o, j, i] with atomics (accumulates).
// scatter_add fwd: out[o, idx[o, j, i], i] += src[o, j, i] with atomics; the launcher first
//   copies dst into out (accumulates). Its backward is gather (dsrc) and the identity (ddst).
// mask_rank fwd: rank[r] = the number of set rows of mask (u8, one per row, nonzero = set)
//   before row r, over n rows: one block scanning tiles of blockDim rows in order, carrying the
//   count; rank[n] = the total. Overwrites rank (n + 1 entries).
// masked_scatter fwd: over n = rows * w elements (rows of width w = inner), with r = e / w and
//   c = e % w: out[e] = mask[r] ? src[rank[r] * w + c] : dst[e], where src has src_len rows; a
//   set row past the last source row gets NaN. Overwrites out.
// masked_scatter bwd: ddst[e] = mask[r] ? 0 : g[e] (overwrite, ddst may be null);
//   dsrc[rank[r] * w + c] = g[e] where mask[r] and rank[r] < src_len (overwrites those rows; the
//   launcher zeroes dsrc first).
// Atomic accumulation order varies between runs (fp32 rounding differs in the last bits).
#include "common.cuh"

struct IndexParams {
    i64 outer;
    i64 src_len;  // masked_scatter: rows of src
    i64 idx_len;
    i64 inner;    // masked_scatter: the row width w
    i64 n;        // masked_scatter: elements of out; mask_rank: rows
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

// One block: an inclusive scan of each tile of blockDim flags in shared memory (Hillis-Steele),
// plus the count of the tiles before it.
__device__ void mask_rank(const IndexParams p, const u8* __restrict__ mask, i64* __restrict__ rank) {
    __shared__ int scan[EW_THREADS];
    __shared__ i64 carry;
    const int t = threadIdx.x;
    if (t == 0) carry = 0;
    __syncthreads();
    for (i64 base = 0; base < p.n; base += blockDim.x) {
        const i64 r = base + t;
        const int set = (r < p.n && mask[r]) ? 1 : 0;
        scan[t] = set;
        __syncthreads();
        for (int o = 1; o < (int)blockDim.x; o <<= 1) {
            const int add = t >= o ? scan[t - o] : 0;
            __syncthreads();
            scan[t] += add;
            __syncthreads();
        }
        if (r < p.n) rank[r] = carry + scan[t] - set;
        __syncthreads();
        if (t == 0) carry += scan[blockDim.x - 1];
        __syncthreads();
    }
    if (t == 0) rank[p.n] = carry;
}

template <typename T>
__device__ void masked_scatter_fwd(const IndexParams p, const T* __restrict__ dst, const u8* __restrict__ mask,
                                   const i64* __restrict__ rank, const T* __restrict__ src, T* __restrict__ out) {
    FOR_EACH(e, p.n) {
        const i64 r = e / p.inner;
        if (mask[r]) {
            const i64 k = rank[r];
            store(out, e, k < p.src_len ? load(src, k * p.inner + (e - r * p.inner)) : __int_as_float(0x7fc00000));
        } else {
            store(out, e, load(dst, e));
        }
    }
}

template <typename T>
__device__ void masked_scatter_bwd(const IndexParams p, const T* __restrict__ g, const u8* __restrict__ mask,
                                   const i64* __restrict__ rank, T* __restrict__ ddst, T* __restrict__ dsrc) {
    FOR_EACH(e, p.n) {
        const i64 r = e / p.inner;
        const float ge = load(g, e);
        if (ddst) store(ddst, e, mask[r] ? 0.0f : ge);
        if (dsrc && mask[r]) {
            const i64 k = rank[r];
            if (k < p.src_len) store(dsrc, k * p.inner + (e - r * p.inner), ge);
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
        const IndexParams p, const T* dst, const u8* mask, const i64* rank, const T* src, T* out) {             \
        masked_scatter_fwd<T>(p, dst, mask, rank, src, out);                                                    \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(EW_THREADS) masked_scatter_bwd_##dtype(                        \
        const IndexParams p, const T* g, const u8* mask, const i64* rank, T* ddst, T* dsrc) {                   \
        masked_scatter_bwd<T>(p, g, mask, rank, ddst, dsrc);                                                    \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                                    \
        mask_rank_fwd_##dtype(const IndexParams p, const u8* mask, i64* rank) { mask_rank(p, mask, rank); }
INDEX(f32, float)
INDEX(bf16, bf16)
