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
