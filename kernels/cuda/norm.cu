// norm.cu: row-wise normalisations: softmax / log_softmax, rms_norm (plain and Gemma's (1 + w),
// optional fused residual add), layer_norm, l2_normalize; forward and backward.
//
// Every kernel takes contiguous [rows, width] tensors and runs one block of ROW_THREADS threads
// per row (grid-stride over rows), reducing with block_sum / block_max in fp32. Per-row
// statistics (rstd, mean, norm) are fp32 [rows].
// The rms_norm and layer_norm forwards keep the row in registers (NORM_PER_THREAD values per
// thread), so width <= NORM_MAX_WIDTH = 8192; the launcher checks. Other kernels read rows twice
// and take any width.
//
// softmax fwd:  y = exp(x - max) / sum exp(x - max); log: y = (x - max) - log sum exp(x - max).
// softmax bwd:  dx = y (g - sum g y); log: dx = g - exp(y) sum g.  (y is the forward output)
// rms_norm fwd: h = x + residual when residual is given (written to h, rounded to T; the norm is
//   of the rounded h, which is what the backward reads), else h = x;
//   y = h rstd w', rstd = 1 / sqrt(mean(h^2) + eps), w' = w | 1 + w (Gemma) | 1 (no weight).
// rms_norm bwd: reads h (the stored sum with a residual, else x itself);
//   dh = rstd (g w' - hhat mean(g w' hhat)) + dh_extra (the gradient reaching h
//   through the residual stream, may be null); dx and dresidual both equal dh.
//   dw partials: dw_part[block, j] = sum over the block's rows of g hhat (for Gemma too).
// layer_norm fwd: y = (x - mean) rstd w + b (biased variance; w, b may be null); writes mean, rstd.
// layer_norm bwd: dx = rstd (g w - mean(g w) - xhat mean(g w xhat));
//   dw_part[block, j] = sum g xhat, db_part[block, j] = sum g.
// l2_normalize fwd: y = x / max(|x|, eps), writes norm = |x|.
// l2_normalize bwd: dx = (g - y sum g y) / |x| where |x| >= eps, else g / eps.
// Outputs are overwritten. Parameter-gradient partials are fp32 [gridDim.x, width], overwritten;
// the launcher sums them over blocks (reduce kernel) and adds the result to the parameter's
// gradient, so the result does not depend on atomics' order.
// rms_norm_rowsV / rms_norm_wideV / layer_norm_rowsV / layer_norm_wideV (V = 1, 2, 4): 16-byte
// vectorised versions of rms_norm and layer_norm (a warp per row up to width 1024, a block per
// row up to 8192); see their section below for the grid and the partials' shape.
#include "common.cuh"

#define NORM_PER_THREAD 32
#define NORM_MAX_WIDTH (ROW_THREADS * NORM_PER_THREAD)

enum RmsKind { RMS_PLAIN = 0, RMS_GEMMA = 1 };

struct NormParams {
    i64 rows;
    i64 width;
    float eps;
    int flag;  // softmax: 1 = log_softmax; rms_norm: RmsKind
};
static_assert(sizeof(NormParams) == 24, "NormParams layout");

template <typename T> __device__ __forceinline__ float weight_of(const T* w, i64 j, int kind) {
    if (!w) return 1.0f;
    const float v = load(w, j);
    return kind == RMS_GEMMA ? 1.0f + v : v;
}

// ----- softmax ---------------------------------------------------------------------------------

template <typename T>
__device__ void softmax_fwd(const NormParams p, const T* __restrict__ x, T* __restrict__ y) {
    __shared__ float scratch[WARP];
    for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const T* xr = x + r * p.width;
        T* yr = y + r * p.width;
        float m = NEG_INF;
        for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) m = fmaxf(m, load(xr, j));
        m = block_max(m, scratch);
        float s = 0.0f;
        for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) s += expf(load(xr, j) - m);
        s = block_sum(s, scratch);
        if (p.flag) {
            const float ls = logf(s);
            for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) store(yr, j, (load(xr, j) - m) - ls);
        } else {
            const float inv = 1.0f / s;
            for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) store(yr, j, expf(load(xr, j) - m) * inv);
        }
    }
}

template <typename T>
__device__ void softmax_bwd(const NormParams p, const T* __restrict__ y, const T* __restrict__ g, T* __restrict__ dx) {
    __shared__ float scratch[WARP];
    for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const T *yr = y + r * p.width, *gr = g + r * p.width;
        T* dr = dx + r * p.width;
        float s = 0.0f;
        for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) s += p.flag ? load(gr, j) : load(gr, j) * load(yr, j);
        s = block_sum(s, scratch);
        for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) {
            const float yj = load(yr, j), gj = load(gr, j);
            store(dr, j, p.flag ? gj - expf(yj) * s : yj * (gj - s));
        }
    }
}

// ----- rms_norm --------------------------------------------------------------------------------

template <typename T>
__device__ void rms_norm_fwd(const NormParams p, const T* __restrict__ x, const T* __restrict__ residual,
                             const T* __restrict__ w, T* __restrict__ y, T* __restrict__ h, float* __restrict__ rstd) {
    __shared__ float scratch[WARP];
    for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const i64 base = r * p.width;
        float v[NORM_PER_THREAD];
        float ss = 0.0f;
#pragma unroll
        for (int t = 0; t < NORM_PER_THREAD; ++t) {
            const i64 j = threadIdx.x + (i64)t * ROW_THREADS;
            v[t] = 0.0f;
            if (j < p.width) {
                float hv = load(x, base + j);
                if (residual) {
                    // Round the sum to T first: the stored h is what the backward will see.
                    hv = to_f32(from_f32<T>(hv + load(residual, base + j)));
                    store(h, base + j, hv);
                }
                v[t] = hv;
                ss += hv * hv;
            }
        }
        ss = block_sum(ss, scratch);
        const float rs = rsqrtf(ss / (float)p.width + p.eps);
        if (threadIdx.x == 0) rstd[r] = rs;
#pragma unroll
        for (int t = 0; t < NORM_PER_THREAD; ++t) {
            const i64 j = threadIdx.x + (i64)t * ROW_THREADS;
            if (j < p.width) store(y, base + j, v[t] * rs * weight_of(w, j, p.flag));
        }
    }
}

template <typename T>
__device__ void rms_norm_bwd(const NormParams p, const T* __restrict__ h, const T* __restrict__ w,
                             const float* __restrict__ rstd, const T* __restrict__ g, const T* __restrict__ dh_extra,
                             T* __restrict__ dx, float* __restrict__ dw_part) {
    __shared__ float scratch[WARP];
    float* dwp = dw_part ? dw_part + (i64)blockIdx.x * p.width : nullptr;
    if (dwp)
        for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) dwp[j] = 0.0f;
    for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const i64 base = r * p.width;
        const float rs = rstd[r];
        float dot = 0.0f;
        for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) {
            const float gj = load(g, base + j), hhat = load(h, base + j) * rs;
            dot += gj * weight_of(w, j, p.flag) * hhat;
            if (dwp) dwp[j] += gj * hhat;  // each thread owns its columns: no race
        }
        if (!dx) continue;
        const float c = block_sum(dot, scratch) / (float)p.width;
        for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) {
            const float gj = load(g, base + j), hhat = load(h, base + j) * rs;
            float d = rs * (gj * weight_of(w, j, p.flag) - hhat * c);
            if (dh_extra) d += load(dh_extra, base + j);
            store(dx, base + j, d);
        }
    }
}

// ----- layer_norm ------------------------------------------------------------------------------

template <typename T>
__device__ void layer_norm_fwd(const NormParams p, const T* __restrict__ x, const T* __restrict__ w,
                               const T* __restrict__ b, T* __restrict__ y, float* __restrict__ mean_out,
                               float* __restrict__ rstd_out) {
    __shared__ float scratch[WARP];
    for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const i64 base = r * p.width;
        float v[NORM_PER_THREAD];
        float s = 0.0f;
#pragma unroll
        for (int t = 0; t < NORM_PER_THREAD; ++t) {
            const i64 j = threadIdx.x + (i64)t * ROW_THREADS;
            v[t] = j < p.width ? load(x, base + j) : 0.0f;
            s += v[t];
        }
        const float mean = block_sum(s, scratch) / (float)p.width;
        // Two-pass variance on the register copy: exact for rows with a large mean.
        float ss = 0.0f;
#pragma unroll
        for (int t = 0; t < NORM_PER_THREAD; ++t) {
            const i64 j = threadIdx.x + (i64)t * ROW_THREADS;
            const float d = j < p.width ? v[t] - mean : 0.0f;
            ss += d * d;
        }
        const float rs = rsqrtf(block_sum(ss, scratch) / (float)p.width + p.eps);
        if (threadIdx.x == 0) {
            mean_out[r] = mean;
            rstd_out[r] = rs;
        }
#pragma unroll
        for (int t = 0; t < NORM_PER_THREAD; ++t) {
            const i64 j = threadIdx.x + (i64)t * ROW_THREADS;
            if (j < p.width) {
                float o = (v[t] - mean) * rs;
                if (w) o *= load(w, j);
                if (b) o += load(b, j);
                store(y, base + j, o);
            }
        }
    }
}

template <typename T>
__device__ void layer_norm_bwd(const NormParams p, const T* __restrict__ x, const T* __restrict__ w,
                               const float* __restrict__ mean, const float* __restrict__ rstd, const T* __restrict__ g,
                               T* __restrict__ dx, float* __restrict__ dw_part, float* __restrict__ db_part) {
    __shared__ float scratch[WARP];
    float* dwp = dw_part ? dw_part + (i64)blockIdx.x * p.width : nullptr;
    float* dbp = db_part ? db_part + (i64)blockIdx.x * p.width : nullptr;
    for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) {
        if (dwp) dwp[j] = 0.0f;
        if (dbp) dbp[j] = 0.0f;
    }
    for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const i64 base = r * p.width;
        const float mu = mean[r], rs = rstd[r];
        float sg = 0.0f, sgx = 0.0f;
        for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) {
            const float gj = load(g, base + j), xhat = (load(x, base + j) - mu) * rs;
            const float gw = w ? gj * load(w, j) : gj;
            sg += gw;
            sgx += gw * xhat;
            if (dwp) dwp[j] += gj * xhat;
            if (dbp) dbp[j] += gj;
        }
        if (!dx) continue;
        const float mg = block_sum(sg, scratch) / (float)p.width;
        const float mgx = block_sum(sgx, scratch) / (float)p.width;
        for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) {
            const float gj = load(g, base + j), xhat = (load(x, base + j) - mu) * rs;
            const float gw = w ? gj * load(w, j) : gj;
            store(dx, base + j, rs * (gw - mg - xhat * mgx));
        }
    }
}

// ----- l2_normalize ----------------------------------------------------------------------------

template <typename T>
__device__ void l2_normalize_fwd(const NormParams p, const T* __restrict__ x, T* __restrict__ y, float* __restrict__ norm) {
    __shared__ float scratch[WARP];
    for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const i64 base = r * p.width;
        float ss = 0.0f;
        for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) {
            const float v = load(x, base + j);
            ss += v * v;
        }
        const float n = sqrtf(block_sum(ss, scratch));
        if (threadIdx.x == 0) norm[r] = n;
        const float inv = 1.0f / fmaxf(n, p.eps);
        for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) store(y, base + j, load(x, base + j) * inv);
    }
}

template <typename T>
__device__ void l2_normalize_bwd(const NormParams p, const T* __restrict__ y, const float* __restrict__ norm,
                                 const T* __restrict__ g, T* __restrict__ dx) {
    __shared__ float scratch[WARP];
    for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const i64 base = r * p.width;
        const float n = norm[r];
        if (n < p.eps) {
            // Clamped region: the denominator is the constant eps.
            for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) store(dx, base + j, load(g, base + j) / p.eps);
            continue;
        }
        float s = 0.0f;
        for (i64 j = threadIdx.x; j < p.width; j += blockDim.x) s += load(g, base + j) * load(y, base + j);
        s = block_sum(s, scratch);
        const float inv = 1.0f / n;
        for (i64 j = threadIdx.x; j < p.width; j += blockDim.x)
            store(dx, base + j, (load(g, base + j) - load(y, base + j) * s) * inv);
    }
}

#define ROW_KERNEL extern "C" __global__ void __launch_bounds__(ROW_THREADS)
#define NORM(dtype, T)                                                                                         \
    ROW_KERNEL softmax_fwd_##dtype(const NormParams p, const T* x, T* y) { softmax_fwd<T>(p, x, y); }         \
    ROW_KERNEL softmax_bwd_##dtype(const NormParams p, const T* y, const T* g, T* dx) { softmax_bwd<T>(p, y, g, dx); } \
    ROW_KERNEL rms_norm_fwd_##dtype(const NormParams p, const T* x, const T* residual, const T* w, T* y, T* h,  \
                                    float* rstd) {                                                             \
        rms_norm_fwd<T>(p, x, residual, w, y, h, rstd);                                                        \
    }                                                                                                          \
    ROW_KERNEL rms_norm_bwd_##dtype(const NormParams p, const T* h, const T* w, const float* rstd, const T* g, \
                                    const T* dh_extra, T* dx, float* dw_part) {                                \
        rms_norm_bwd<T>(p, h, w, rstd, g, dh_extra, dx, dw_part);                                              \
    }                                                                                                          \
    ROW_KERNEL layer_norm_fwd_##dtype(const NormParams p, const T* x, const T* w, const T* b, T* y, float* mean, \
                                      float* rstd) {                                                           \
        layer_norm_fwd<T>(p, x, w, b, y, mean, rstd);                                                          \
    }                                                                                                          \
    ROW_KERNEL layer_norm_bwd_##dtype(const NormParams p, const T* x, const T* w, const float* mean,            \
                                      const float* rstd, const T* g, T* dx, float* dw_part, float* db_part) {  \
        layer_norm_bwd<T>(p, x, w, mean, rstd, g, dx, dw_part, db_part);                                       \
    }                                                                                                          \
    ROW_KERNEL l2_normalize_fwd_##dtype(const NormParams p, const T* x, T* y, float* norm) {                   \
        l2_normalize_fwd<T>(p, x, y, norm);                                                                    \
    }                                                                                                          \
    ROW_KERNEL l2_normalize_bwd_##dtype(const NormParams p, const T* y, const float* norm, const T* g, T* dx) { \
        l2_normalize_bwd<T>(p, y, norm, g, dx);                                                                \
    }
NORM(f32, float)
NORM(bf16, bf16)

// ----- vectorised rms_norm / layer_norm (the bandwidth versions) --------------------------------
// Same params, pointers, semantics and outputs as rms_norm / layer_norm above, for rows whose
// width is a multiple of the 16-byte vector (N = 8 bf16, 4 f32) with 16-byte aligned bases. Each
// row is read once (16-byte loads) and kept in registers, V vectors per thread (V = 1, 2, 4 in
// the symbol: the launcher picks the smallest that holds the row, so registers and occupancy
// follow the width):
//   *_rowsV: a warp per row, ROW_THREADS / 32 rows per block: width <= 32 V N (1024 bf16 at V 4).
//   *_wideV: a block of ROW_THREADS per row: width <= ROW_THREADS V N (8192 bf16 at V 4).
// Grid: any (the rows loop is grid-stride over row workers: warps for _rows, blocks for _wide).
// The backward's parameter-gradient partials are fp32 [gridDim.x, width] as for the kernels
// above (overwritten; a block with no row writes zeros); each worker keeps its column sums in
// registers, and _rows sums its 8 warps through shared memory before writing. The weight is read
// once per worker. dx may be null (only parameter gradients).
#define NORM_VEC_MAX_V 4  // vectors per thread of the widest variants

template <typename T> struct VecN {
    static constexpr int N = 16 / sizeof(T);  // values per 16-byte vector
};

template <int TPR> __device__ __forceinline__ float row_sum(float v, float* scratch) {
    if (TPR == WARP) return warp_sum(v);
    return block_sum(v, scratch);
}

// This thread's index in its row group, the row worker index and the worker count.
template <int TPR> __device__ __forceinline__ void row_worker(int& tl, i64& worker, i64& workers) {
    tl = threadIdx.x % TPR;
    worker = (i64)blockIdx.x * (ROW_THREADS / TPR) + threadIdx.x / TPR;
    workers = (i64)gridDim.x * (ROW_THREADS / TPR);
}

template <typename T> __device__ __forceinline__ void load_vals(const T* p, float* out) {
    const Vec16<T> v = load16(p);
#pragma unroll
    for (int e = 0; e < Vec16<T>::N; ++e) out[e] = to_f32(v.v[e]);
}
template <typename T> __device__ __forceinline__ void store_vals(T* p, const float* in) {
    Vec16<T> v;
#pragma unroll
    for (int e = 0; e < Vec16<T>::N; ++e) v.v[e] = from_f32<T>(in[e]);
    store16(p, v);
}

// Write a thread's per-column partial sums acc (its columns of the row layout) as row blockIdx.x
// of part [gridDim.x, width]: with a warp per row the block's warps are first summed through
// shared memory, in a fixed order.
template <typename T, int TPR, int V>
__device__ __forceinline__ void write_partials(const float (&acc)[V][VecN<T>::N], float* __restrict__ part,
                                               i64 width, int tl) {
    constexpr int N = VecN<T>::N;
    float* dst = part + (i64)blockIdx.x * width;
    if (TPR == WARP) {
        __shared__ float red[ROW_THREADS / WARP][WARP * V * N];
        const int warp = threadIdx.x / WARP;
        __syncthreads();  // red may hold a previous call's sums
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const i64 c = ((i64)k * TPR + tl) * N;
            if (c < width)
#pragma unroll
                for (int e = 0; e < N; ++e) red[warp][c + e] = acc[k][e];
        }
        __syncthreads();
        for (i64 j = threadIdx.x; j < width; j += ROW_THREADS) {
            float s = 0.0f;
#pragma unroll
            for (int w = 0; w < ROW_THREADS / WARP; ++w) s += red[w][j];
            dst[j] = s;
        }
    } else {
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const i64 c = ((i64)k * TPR + tl) * N;
            if (c < width)
#pragma unroll
                for (int e = 0; e < N; e += 4)
                    *reinterpret_cast<float4*>(dst + c + e) = make_float4(acc[k][e], acc[k][e + 1], acc[k][e + 2], acc[k][e + 3]);
        }
    }
}

template <typename T, int TPR, int V>
__device__ void rms_norm_vec_fwd(const NormParams p, const T* __restrict__ x, const T* __restrict__ residual,
                                 const T* __restrict__ w, T* __restrict__ y, T* __restrict__ h,
                                 float* __restrict__ rstd) {
    constexpr int N = VecN<T>::N;
    __shared__ float scratch[WARP];
    int tl;
    i64 worker, workers;
    row_worker<TPR>(tl, worker, workers);
    for (i64 r = worker; r < p.rows; r += workers) {
        const i64 base = r * p.width;
        float v[V][N];
        float ss = 0.0f;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const i64 c = ((i64)k * TPR + tl) * N;
            if (c < p.width) {
                load_vals(x + base + c, v[k]);
                if (residual) {
                    float rv[N];
                    load_vals(residual + base + c, rv);
                    // Round the sum to T first: the stored h is what the backward will see.
#pragma unroll
                    for (int e = 0; e < N; ++e) v[k][e] = to_f32(from_f32<T>(v[k][e] + rv[e]));
                    store_vals(h + base + c, v[k]);
                }
#pragma unroll
                for (int e = 0; e < N; ++e) ss += v[k][e] * v[k][e];
            }
        }
        ss = row_sum<TPR>(ss, scratch);
        const float rs = rsqrtf(ss / (float)p.width + p.eps);
        if (tl == 0) rstd[r] = rs;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const i64 c = ((i64)k * TPR + tl) * N;
            if (c < p.width) {
                float wv[N];
                if (w) {
                    load_vals(w + c, wv);
#pragma unroll
                    for (int e = 0; e < N; ++e) wv[e] = p.flag == RMS_GEMMA ? 1.0f + wv[e] : wv[e];
                } else {
#pragma unroll
                    for (int e = 0; e < N; ++e) wv[e] = 1.0f;
                }
#pragma unroll
                for (int e = 0; e < N; ++e) v[k][e] = v[k][e] * rs * wv[e];
                store_vals(y + base + c, v[k]);
            }
        }
    }
}

template <typename T, int TPR, int V>
__device__ void rms_norm_vec_bwd(const NormParams p, const T* __restrict__ h, const T* __restrict__ w,
                                 const float* __restrict__ rstd, const T* __restrict__ g,
                                 const T* __restrict__ dh_extra, T* __restrict__ dx, float* __restrict__ dw_part) {
    // The row and the weight stay in registers in their storage type (fp32 only for the dw sums).
    constexpr int N = VecN<T>::N;
    __shared__ float scratch[WARP];
    int tl;
    i64 worker, workers;
    row_worker<TPR>(tl, worker, workers);
    const float w_add = p.flag == RMS_GEMMA ? 1.0f : 0.0f;
    Vec16<T> wr[V];
    float dw[V][N];
#pragma unroll
    for (int k = 0; k < V; ++k) {
        const i64 c = ((i64)k * TPR + tl) * N;
        if (w && c < p.width) wr[k] = load16(w + c);
#pragma unroll
        for (int e = 0; e < N; ++e) dw[k][e] = 0.0f;
    }
    for (i64 r = worker; r < p.rows; r += workers) {
        const i64 base = r * p.width;
        const float rs = rstd[r];
        Vec16<T> hr[V], gr[V];
        float dot = 0.0f;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const i64 c = ((i64)k * TPR + tl) * N;
            if (c < p.width) {
                hr[k] = load16(h + base + c);
                gr[k] = load16(g + base + c);
#pragma unroll
                for (int e = 0; e < N; ++e) {
                    const float hh = to_f32(hr[k].v[e]) * rs, gg = to_f32(gr[k].v[e]);
                    const float wv = w ? to_f32(wr[k].v[e]) + w_add : 1.0f;
                    dot += gg * wv * hh;
                    dw[k][e] += gg * hh;
                }
            }
        }
        if (!dx) continue;  // warp- / block-uniform
        const float mdot = row_sum<TPR>(dot, scratch) / (float)p.width;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const i64 c = ((i64)k * TPR + tl) * N;
            if (c < p.width) {
                float ex[N], o[N];
                if (dh_extra) load_vals(dh_extra + base + c, ex);
#pragma unroll
                for (int e = 0; e < N; ++e) {
                    const float hh = to_f32(hr[k].v[e]) * rs, gg = to_f32(gr[k].v[e]);
                    const float wv = w ? to_f32(wr[k].v[e]) + w_add : 1.0f;
                    o[e] = rs * (gg * wv - hh * mdot) + (dh_extra ? ex[e] : 0.0f);
                }
                store_vals(dx + base + c, o);
            }
        }
    }
    if (dw_part) write_partials<T, TPR, V>(dw, dw_part, p.width, tl);
}

template <typename T, int TPR, int V>
__device__ void layer_norm_vec_fwd(const NormParams p, const T* __restrict__ x, const T* __restrict__ w,
                                   const T* __restrict__ b, T* __restrict__ y, float* __restrict__ mean_out,
                                   float* __restrict__ rstd_out) {
    constexpr int N = VecN<T>::N;
    __shared__ float scratch[WARP];
    int tl;
    i64 worker, workers;
    row_worker<TPR>(tl, worker, workers);
    for (i64 r = worker; r < p.rows; r += workers) {
        const i64 base = r * p.width;
        float v[V][N];
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const i64 c = ((i64)k * TPR + tl) * N;
            if (c < p.width) {
                load_vals(x + base + c, v[k]);
#pragma unroll
                for (int e = 0; e < N; ++e) s += v[k][e];
            }
        }
        const float mean = row_sum<TPR>(s, scratch) / (float)p.width;
        // Two-pass variance on the register copy: exact for rows with a large mean.
        float ss = 0.0f;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const i64 c = ((i64)k * TPR + tl) * N;
            if (c < p.width) {
#pragma unroll
                for (int e = 0; e < N; ++e) ss += (v[k][e] - mean) * (v[k][e] - mean);
            }
        }
        const float rs = rsqrtf(row_sum<TPR>(ss, scratch) / (float)p.width + p.eps);
        if (tl == 0) {
            mean_out[r] = mean;
            rstd_out[r] = rs;
        }
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const i64 c = ((i64)k * TPR + tl) * N;
            if (c < p.width) {
                float wv[N], bv[N];
                if (w) load_vals(w + c, wv);
                if (b) load_vals(b + c, bv);
#pragma unroll
                for (int e = 0; e < N; ++e) {
                    float o = (v[k][e] - mean) * rs;
                    if (w) o *= wv[e];
                    if (b) o += bv[e];
                    v[k][e] = o;
                }
                store_vals(y + base + c, v[k]);
            }
        }
    }
}

template <typename T, int TPR, int V>
__device__ void layer_norm_vec_bwd(const NormParams p, const T* __restrict__ x, const T* __restrict__ w,
                                   const float* __restrict__ mean, const float* __restrict__ rstd,
                                   const T* __restrict__ g, T* __restrict__ dx, float* __restrict__ dw_part,
                                   float* __restrict__ db_part) {
    // The row and the weight stay in registers in their storage type (fp32 only for the sums).
    constexpr int N = VecN<T>::N;
    __shared__ float scratch[WARP];
    int tl;
    i64 worker, workers;
    row_worker<TPR>(tl, worker, workers);
    Vec16<T> wr[V];
    float dw[V][N], db[V][N];
#pragma unroll
    for (int k = 0; k < V; ++k) {
        const i64 c = ((i64)k * TPR + tl) * N;
        if (w && c < p.width) wr[k] = load16(w + c);
#pragma unroll
        for (int e = 0; e < N; ++e) dw[k][e] = db[k][e] = 0.0f;
    }
    for (i64 r = worker; r < p.rows; r += workers) {
        const i64 base = r * p.width;
        const float mu = mean[r], rs = rstd[r];
        Vec16<T> xr[V], gr[V];
        float sg = 0.0f, sgx = 0.0f;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const i64 c = ((i64)k * TPR + tl) * N;
            if (c < p.width) {
                xr[k] = load16(x + base + c);
                gr[k] = load16(g + base + c);
#pragma unroll
                for (int e = 0; e < N; ++e) {
                    const float xh = (to_f32(xr[k].v[e]) - mu) * rs, gg = to_f32(gr[k].v[e]);
                    const float gw = w ? gg * to_f32(wr[k].v[e]) : gg;
                    sg += gw;
                    sgx += gw * xh;
                    dw[k][e] += gg * xh;
                    db[k][e] += gg;
                }
            }
        }
        if (!dx) continue;  // warp- / block-uniform
        const float mg = row_sum<TPR>(sg, scratch) / (float)p.width;
        const float mgx = row_sum<TPR>(sgx, scratch) / (float)p.width;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const i64 c = ((i64)k * TPR + tl) * N;
            if (c < p.width) {
                float o[N];
#pragma unroll
                for (int e = 0; e < N; ++e) {
                    const float xh = (to_f32(xr[k].v[e]) - mu) * rs, gg = to_f32(gr[k].v[e]);
                    const float gw = w ? gg * to_f32(wr[k].v[e]) : gg;
                    o[e] = rs * (gw - mg - xh * mgx);
                }
                store_vals(dx + base + c, o);
            }
        }
    }
    if (dw_part) write_partials<T, TPR, V>(dw, dw_part, p.width, tl);
    if (db_part) write_partials<T, TPR, V>(db, db_part, p.width, tl);
}

#define NORM_VEC(dtype, T, name, TPR, V)                                                                            \
    ROW_KERNEL rms_norm_##name##_fwd_##dtype(const NormParams p, const T* x, const T* residual, const T* w,     \
                                             T* y, T* h, float* rstd) {                                        \
        rms_norm_vec_fwd<T, TPR, V>(p, x, residual, w, y, h, rstd);                                               \
    }                                                                                                          \
    ROW_KERNEL rms_norm_##name##_bwd_##dtype(const NormParams p, const T* h, const T* w, const float* rstd,     \
                                             const T* g, const T* dh_extra, T* dx, float* dw_part) {           \
        rms_norm_vec_bwd<T, TPR, V>(p, h, w, rstd, g, dh_extra, dx, dw_part);                                     \
    }                                                                                                          \
    ROW_KERNEL layer_norm_##name##_fwd_##dtype(const NormParams p, const T* x, const T* w, const T* b, T* y,    \
                                               float* mean, float* rstd) {                                     \
        layer_norm_vec_fwd<T, TPR, V>(p, x, w, b, y, mean, rstd);                                                 \
    }                                                                                                          \
    ROW_KERNEL layer_norm_##name##_bwd_##dtype(const NormParams p, const T* x, const T* w, const float* mean,   \
                                               const float* rstd, const T* g, T* dx, float* dw_part,           \
                                               float* db_part) {                                               \
        layer_norm_vec_bwd<T, TPR, V>(p, x, w, mean, rstd, g, dx, dw_part, db_part);                              \
    }
#define NORM_VEC_ALL(name, TPR, V)            \
    NORM_VEC(f32, float, name##V, TPR, V) \
    NORM_VEC(bf16, bf16, name##V, TPR, V)
NORM_VEC_ALL(rows, WARP, 1)
NORM_VEC_ALL(rows, WARP, 2)
NORM_VEC_ALL(rows, WARP, 4)
NORM_VEC_ALL(wide, ROW_THREADS, 1)
NORM_VEC_ALL(wide, ROW_THREADS, 2)
NORM_VEC_ALL(wide, ROW_THREADS, 4)
