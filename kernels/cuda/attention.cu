// attention.cu: scaled dot-product attention, a simple correct version: online softmax (the score
// matrix is never materialised), masks full / causal / prefix-LM / block-diagonal segments plus
// an optional key-padding mask, GQA/MQA, head dims up to 256; the backward recomputes the
// probabilities from the saved log-sum-exp. Tuned Hopper kernels (wgmma, TMA) come later and
// are checked against this one.
//
// Shapes: q [B, Hq, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv], out and g (dOut) [B, Hq, Lq, Dv],
// dq like q, dk like k, dv like v; each tensor is given by (batch, head, seq) strides in elements
// with a contiguous last dim, so heads-first and seq-first layouts both work. Query head h reads
// kv head h / (Hq / Hkv). lse is fp32 [B, Hq, Lq] contiguous. D, Dv <= ATT_MAX_D (the launcher
// checks).
// Masks: query i of batch row b sees the keys [lo, hi) of its mask kind and not padded out:
//   full [0, Lk); causal [0, i + Lk - Lq + 1) (bottom-right aligned); prefix [0, max(i + 1, P[b]))
//   with P = mask_data [B]; segments [cu[s], cu[s + 1]) for the segment s holding i, with
//   cu = mask_data [n_segments + 1] (shared by all batch rows); key_padding [B, Lk] u8, 1 = real key.
//
// attention fwd: grid (ceil(Lq / ATT_WARPS), B * Hq), a warp per query row. Key tiles of 32 rows
//   go through shared memory (K, then V in the same buffer); lane j scores key j of the tile,
//   the row keeps a running max m and sum l, and each lane accumulates Dv / 32 output columns.
//   out = sum_j softmax_j v_j, lse = m + log l; a row that sees no key gets out 0, lse -inf.
//   Overwrites out and lse.
// attention bwd (dk, dv): grid (ceil(Lk / ATT_WARPS), B * Hkv), a warp per key j; for every query
//   head of the group and every query i that sees j (tiles of ATT_QTILE rows in shared memory):
//   p = exp(scale q.k - lse), dv_j += p dO_i, ds = p (dO_i.v_j - delta_i), dk_j += scale ds q_i,
//   with delta_i = dO_i.out_i. Overwrites dk and dv (no atomics: deterministic).
// attention_dq bwd: grid as the forward, a warp per query row; per key tile, lane j computes
//   dp_j = dO_i.v_j (V tile) and then p_j, ds_j (K tile); dq_i = scale sum_j ds_j k_j.
//   Overwrites dq.
#include "common.cuh"

#define ATT_WARPS 4
#define ATT_THREADS (ATT_WARPS * WARP)
#define ATT_MAX_D 256
#define ATT_COLS (ATT_MAX_D / WARP)
#define ATT_KTILE WARP
#define ATT_QTILE 16
#define ATT_PITCH (ATT_MAX_D + 1)  // +1 float: lane j reading row j hits bank (j + c) % 32

// Load rows [k0, k0 + ATT_KTILE) (zeros past `hi`) of `width` columns into tile[ATT_KTILE][ATT_PITCH].
template <typename T>
__device__ __forceinline__ void load_tile(float* tile, const T* src, const Strides& s, int b, int h, int k0, int hi,
                                          int width) {
    for (int idx = threadIdx.x; idx < ATT_KTILE * width; idx += blockDim.x) {
        const int j = idx / width, c = idx - j * width;
        tile[j * ATT_PITCH + c] = k0 + j < hi ? load(src, offset(s, b, h, k0 + j) + c) : 0.0f;
    }
}

// The union of the key ranges of this block's query rows, through shared memory.
__device__ __forceinline__ void block_range(const AttnParams& p, int b, int row, int& lo, int& hi, int* s_lo, int* s_hi) {
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int rlo = 0, rhi = 0;
    if (row < p.lq) key_range(p, b, row, rlo, rhi);
    if (lane == 0) {
        s_lo[warp] = rlo < rhi ? rlo : 0x7fffffff;
        s_hi[warp] = rlo < rhi ? rhi : 0;
    }
    __syncthreads();
    lo = 0x7fffffff;
    hi = 0;
    for (int w = 0; w < ATT_WARPS; ++w) {
        lo = min(lo, s_lo[w]);
        hi = max(hi, s_hi[w]);
    }
}

template <typename T>
__device__ void attention_fwd(const AttnParams p, const T* __restrict__ q, const T* __restrict__ k,
                              const T* __restrict__ v, T* __restrict__ out, float* __restrict__ lse) {
    __shared__ float tile[ATT_KTILE * ATT_PITCH];
    __shared__ float qs[ATT_WARPS][ATT_MAX_D];
    __shared__ int s_lo[ATT_WARPS], s_hi[ATT_WARPS];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int b = blockIdx.y / p.hq, h = blockIdx.y % p.hq, hk = h / (p.hq / p.hkv);
    const int row = blockIdx.x * ATT_WARPS + warp;
    const bool active = row < p.lq;
    int rlo = 0, rhi = 0;
    if (active) {
        key_range(p, b, row, rlo, rhi);
        // q pre-multiplied by the scale: one multiply per element instead of one per score.
        for (int c = lane; c < p.d; c += WARP) qs[warp][c] = load(q, offset(p.q, b, h, row) + c) * p.scale;
    }
    int lo, hi;
    block_range(p, b, row, lo, hi, s_lo, s_hi);

    float m = NEG_INF, l = 0.0f;
    float acc[ATT_COLS];
#pragma unroll
    for (int t = 0; t < ATT_COLS; ++t) acc[t] = 0.0f;

    for (int k0 = lo; k0 < hi; k0 += ATT_KTILE) {
        __syncthreads();
        load_tile(tile, k, p.k, b, hk, k0, hi, p.d);
        __syncthreads();
        const int key = k0 + lane;
        float s = NEG_INF;
        if (active && key >= rlo && key < rhi && key_real(p, b, key)) {
            s = 0.0f;
            for (int c = 0; c < p.d; ++c) s += qs[warp][c] * tile[lane * ATT_PITCH + c];
        }
        const float m_new = fmaxf(m, warp_max(s));
        // Until the row has seen a key, m_new is -inf: nothing to add or rescale.
        const float pj = m_new == NEG_INF ? 0.0f : expf(s - m_new);
        const float corr = m == NEG_INF ? 0.0f : expf(m - m_new);
        l = l * corr + warp_sum(pj);
        m = m_new;
#pragma unroll
        for (int t = 0; t < ATT_COLS; ++t) acc[t] *= corr;
        __syncthreads();
        load_tile(tile, v, p.v, b, hk, k0, hi, p.dv_dim);
        __syncthreads();
        for (int jj = 0; jj < ATT_KTILE; ++jj) {
            const float pw = __shfl_sync(FULL_MASK, pj, jj);
            if (pw == 0.0f) continue;  // warp-uniform
#pragma unroll
            for (int t = 0; t < ATT_COLS; ++t) {
                const int c = lane + t * WARP;
                if (c < p.dv_dim) acc[t] += pw * tile[jj * ATT_PITCH + c];
            }
        }
    }
    if (!active) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int t = 0; t < ATT_COLS; ++t) {
        const int c = lane + t * WARP;
        if (c < p.dv_dim) store(out, offset(p.o, b, h, row) + c, acc[t] * inv);
    }
    if (lane == 0) lse[((i64)b * p.hq + h) * p.lq + row] = l > 0.0f ? m + logf(l) : NEG_INF;
}

// dO_i . out_i for one row, by one warp.
template <typename T>
__device__ __forceinline__ float row_delta(const AttnParams& p, const T* o, const T* g, int b, int h, int i) {
    float s = 0.0f;
    for (int c = threadIdx.x % WARP; c < p.dv_dim; c += WARP)
        s += load(g, offset(p.g, b, h, i) + c) * load(o, offset(p.o, b, h, i) + c);
    return warp_sum(s);
}

template <typename T>
__device__ void attention_bwd(const AttnParams p, const T* __restrict__ q, const T* __restrict__ k,
                              const T* __restrict__ v, const T* __restrict__ o, const T* __restrict__ g,
                              const float* __restrict__ lse, T* __restrict__ dk, T* __restrict__ dv) {
    __shared__ float qt[ATT_QTILE][ATT_PITCH];
    __shared__ float gt[ATT_QTILE][ATT_PITCH];
    __shared__ float s_lse[ATT_QTILE], s_delta[ATT_QTILE];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int b = blockIdx.y / p.hkv, hk = blockIdx.y % p.hkv, group = p.hq / p.hkv;
    const int key = blockIdx.x * ATT_WARPS + warp;
    const bool active = key < p.lk && key_real(p, b, key);
    float kr[ATT_COLS], vr[ATT_COLS], dka[ATT_COLS], dva[ATT_COLS];
#pragma unroll
    for (int t = 0; t < ATT_COLS; ++t) {
        const int c = lane + t * WARP;
        kr[t] = active && c < p.d ? load(k, offset(p.k, b, hk, key) + c) : 0.0f;
        vr[t] = active && c < p.dv_dim ? load(v, offset(p.v, b, hk, key) + c) : 0.0f;
        dka[t] = 0.0f;
        dva[t] = 0.0f;
    }
    // Causal: query i sees key j only if i >= j - (Lk - Lq), so earlier queries are skipped.
    const int i_start = p.mask == MASK_CAUSAL ? max(0, (int)blockIdx.x * ATT_WARPS - (p.lk - p.lq)) : 0;
    for (int h = hk * group; h < (hk + 1) * group; ++h) {
        for (int i0 = i_start; i0 < p.lq; i0 += ATT_QTILE) {
            __syncthreads();
            for (int idx = threadIdx.x; idx < ATT_QTILE * p.d; idx += blockDim.x) {
                const int r = idx / p.d, c = idx - r * p.d;
                qt[r][c] = i0 + r < p.lq ? load(q, offset(p.q, b, h, i0 + r) + c) : 0.0f;
            }
            for (int idx = threadIdx.x; idx < ATT_QTILE * p.dv_dim; idx += blockDim.x) {
                const int r = idx / p.dv_dim, c = idx - r * p.dv_dim;
                gt[r][c] = i0 + r < p.lq ? load(g, offset(p.g, b, h, i0 + r) + c) : 0.0f;
            }
            for (int r = warp; r < ATT_QTILE; r += ATT_WARPS) {
                const bool in = i0 + r < p.lq;
                const float dl = in ? row_delta(p, o, g, b, h, i0 + r) : 0.0f;
                if (lane == 0) {
                    s_delta[r] = dl;
                    s_lse[r] = in ? lse[((i64)b * p.hq + h) * p.lq + i0 + r] : NEG_INF;
                }
            }
            __syncthreads();
            if (!active) continue;
            for (int r = 0; r < ATT_QTILE && i0 + r < p.lq; ++r) {
                int lo, hi;
                key_range(p, b, i0 + r, lo, hi);
                if (key < lo || key >= hi || s_lse[r] == NEG_INF) continue;  // warp-uniform
                float s = 0.0f, dp = 0.0f;
#pragma unroll
                for (int t = 0; t < ATT_COLS; ++t) {
                    const int c = lane + t * WARP;
                    if (c < p.d) s += qt[r][c] * kr[t];
                    if (c < p.dv_dim) dp += gt[r][c] * vr[t];
                }
                s = warp_sum(s);
                dp = warp_sum(dp);
                const float pr = expf(s * p.scale - s_lse[r]);
                const float ds = pr * (dp - s_delta[r]) * p.scale;
#pragma unroll
                for (int t = 0; t < ATT_COLS; ++t) {
                    const int c = lane + t * WARP;
                    if (c < p.d) dka[t] += ds * qt[r][c];
                    if (c < p.dv_dim) dva[t] += pr * gt[r][c];
                }
            }
        }
    }
    if (key >= p.lk) return;
#pragma unroll
    for (int t = 0; t < ATT_COLS; ++t) {
        const int c = lane + t * WARP;
        if (c < p.d) store(dk, offset(p.dk, b, hk, key) + c, dka[t]);
        if (c < p.dv_dim) store(dv, offset(p.dv, b, hk, key) + c, dva[t]);
    }
}

template <typename T>
__device__ void attention_dq_bwd(const AttnParams p, const T* __restrict__ q, const T* __restrict__ k,
                                 const T* __restrict__ v, const T* __restrict__ o, const T* __restrict__ g,
                                 const float* __restrict__ lse, T* __restrict__ dq) {
    __shared__ float tile[ATT_KTILE * ATT_PITCH];
    __shared__ float qs[ATT_WARPS][ATT_MAX_D];
    __shared__ float gs[ATT_WARPS][ATT_MAX_D];
    __shared__ int s_lo[ATT_WARPS], s_hi[ATT_WARPS];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int b = blockIdx.y / p.hq, h = blockIdx.y % p.hq, hk = h / (p.hq / p.hkv);
    const int row = blockIdx.x * ATT_WARPS + warp;
    const bool active = row < p.lq;
    int rlo = 0, rhi = 0;
    float row_lse = NEG_INF, delta = 0.0f;
    if (active) {
        key_range(p, b, row, rlo, rhi);
        for (int c = lane; c < p.d; c += WARP) qs[warp][c] = load(q, offset(p.q, b, h, row) + c) * p.scale;
        for (int c = lane; c < p.dv_dim; c += WARP) gs[warp][c] = load(g, offset(p.g, b, h, row) + c);
        row_lse = lse[((i64)b * p.hq + h) * p.lq + row];
        delta = row_delta(p, o, g, b, h, row);
    }
    int lo, hi;
    block_range(p, b, row, lo, hi, s_lo, s_hi);
    float acc[ATT_COLS];
#pragma unroll
    for (int t = 0; t < ATT_COLS; ++t) acc[t] = 0.0f;

    for (int k0 = lo; k0 < hi; k0 += ATT_KTILE) {
        const int key = k0 + lane;
        const bool sees = active && row_lse != NEG_INF && key >= rlo && key < rhi && key_real(p, b, key);
        __syncthreads();
        load_tile(tile, v, p.v, b, hk, k0, hi, p.dv_dim);
        __syncthreads();
        float dp = 0.0f;
        if (sees)
            for (int c = 0; c < p.dv_dim; ++c) dp += gs[warp][c] * tile[lane * ATT_PITCH + c];
        __syncthreads();
        load_tile(tile, k, p.k, b, hk, k0, hi, p.d);
        __syncthreads();
        float ds = 0.0f;
        if (sees) {
            float s = 0.0f;
            for (int c = 0; c < p.d; ++c) s += qs[warp][c] * tile[lane * ATT_PITCH + c];
            ds = expf(s - row_lse) * (dp - delta);
        }
        for (int jj = 0; jj < ATT_KTILE; ++jj) {
            const float w = __shfl_sync(FULL_MASK, ds, jj);
            if (w == 0.0f) continue;  // warp-uniform
#pragma unroll
            for (int t = 0; t < ATT_COLS; ++t) {
                const int c = lane + t * WARP;
                if (c < p.d) acc[t] += w * tile[jj * ATT_PITCH + c];
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (int t = 0; t < ATT_COLS; ++t) {
        const int c = lane + t * WARP;
        if (c < p.d) store(dq, offset(p.dq, b, h, row) + c, acc[t] * p.scale);
    }
}

#define ATT_KERNEL extern "C" __global__ void __launch_bounds__(ATT_THREADS)
#define ATTENTION(dtype, T)                                                                                   \
    ATT_KERNEL attention_fwd_##dtype(const AttnParams p, const T* q, const T* k, const T* v, T* out, float* lse) { \
        attention_fwd<T>(p, q, k, v, out, lse);                                                               \
    }                                                                                                         \
    ATT_KERNEL attention_bwd_##dtype(const AttnParams p, const T* q, const T* k, const T* v, const T* o,       \
                                     const T* g, const float* lse, T* dk, T* dv) {                            \
        attention_bwd<T>(p, q, k, v, o, g, lse, dk, dv);                                                      \
    }                                                                                                         \
    ATT_KERNEL attention_dq_bwd_##dtype(const AttnParams p, const T* q, const T* k, const T* v, const T* o,    \
                                        const T* g, const float* lse, T* dq) {                                \
        attention_dq_bwd<T>(p, q, k, v, o, g, lse, dq);                                                       \
    }
ATTENTION(f32, float)
ATTENTION(bf16, bf16)
