// loss.cu: cross-entropy per row with an ignore index, and the elementwise pair losses (mse,
// huber, bce_with_logits) with the gradients of both operands in one pass.
//
// cross_entropy fwd: x [n, c] contiguous logits, t [n] i64 classes. One block per row:
//   loss[i] = (max - x[i, t]) + log sum exp(x[i] - max) (never logsumexp - x_t: with large logits
//   that would lose the small losses), stats[i] = (max, 1 / sum exp(x[i] - max)) in fp32.
//   Ignored rows (t == ignore) get loss 0 and stats (0, 0); a class outside [0, c) gives NaN.
//   Overwrites loss and stats. The launcher reduces loss (sum or mean) with the reduce kernel.
// cross_entropy bwd: dx[i, j] = g_i scale (softmax(x_i)_j - [j == t_i]), zero on ignored rows;
//   the softmax is rebuilt from stats. g has one value (g_stride 0: a reduced loss) or one per
//   row (g_stride 1). Overwrites dx.
//   Both read each row once (the forward keeps an online max and sum of exp), never an fp32
//   copy of the logits, with 16-byte loads when rows are 16-byte aligned (checked in the kernel).
// pair_loss fwd: out[e] = l(p[e], t[e]) over n elements (contiguous, same shape):
//   mse (p - t)^2; huber |d| < delta ? d^2 / 2 : delta (|d| - delta / 2);
//   bce_with_logits max(p, 0) - p t + log1p(exp(-|p|)). Overwrites out.
// pair_loss bwd: dp = g scale dl/dp, dt = g scale dl/dt (either may be null), g one value
//   (g_stride 0) or one per element (g_stride 1). Overwrites dp, dt.
#include "common.cuh"

enum PairCode { P_MSE = 0, P_HUBER, P_BCE };

struct LossParams {
    i64 n;       // rows (cross_entropy) or elements (pair_loss)
    i64 c;       // classes (cross_entropy)
    i64 ignore;  // ignored class (cross_entropy)
    i64 g_stride;
    float scale;
    float delta;  // huber
    int op;       // PairCode
    int pad;
};
static_assert(sizeof(LossParams) == 48, "LossParams layout");

// Online (max, sum of exp) of this thread's share of row r, in one pass: 16-byte loads when the
// rows are 16-byte aligned (x aligned and c a multiple of the vector), else one value at a time.
__device__ __forceinline__ void online_add(float& m, float& s, float v) {
    if (v > m) {
        s = s * expf(m - v) + 1.0f;  // m = -inf: exp(-inf) = 0
        m = v;
    } else if (m != NEG_INF) {
        s += expf(v - m);
    }
}

template <typename T>
__device__ __forceinline__ void row_online(const T* r, i64 c, bool vec, float& m, float& s) {
    m = NEG_INF;
    s = 0.0f;
    if (vec) {
        constexpr int N = Vec16<T>::N;
        for (i64 j = (i64)threadIdx.x * N; j < c; j += (i64)blockDim.x * N) {
            const Vec16<T> x = load16(r + j);
#pragma unroll
            for (int e = 0; e < N; ++e) online_add(m, s, to_f32(x.v[e]));
        }
    } else {
        for (i64 j = threadIdx.x; j < c; j += blockDim.x) online_add(m, s, load(r, j));
    }
}

template <typename T>
__device__ void cross_entropy_fwd(const LossParams p, const T* __restrict__ x, const i64* __restrict__ t,
                                  T* __restrict__ loss, float* __restrict__ stats) {
    __shared__ float scratch[WARP];
    const bool vec = aligned16(x) && p.c % Vec16<T>::N == 0;
    for (i64 i = blockIdx.x; i < p.n; i += gridDim.x) {
        const i64 ti = t[i];
        if (ti == p.ignore) {
            if (threadIdx.x == 0) {
                store(loss, i, 0.0f);
                stats[2 * i] = 0.0f;
                stats[2 * i + 1] = 0.0f;
            }
            continue;
        }
        const T* r = x + i * p.c;
        float m, s;
        row_online(r, p.c, vec, m, s);
        const float mx = block_max(m, scratch);
        s = block_sum(m == NEG_INF ? 0.0f : s * expf(m - mx), scratch);
        if (threadIdx.x == 0) {
            const bool valid = ti >= 0 && ti < p.c;
            store(loss, i, valid ? (mx - load(r, ti)) + logf(s) : __int_as_float(0x7fc00000));
            stats[2 * i] = mx;
            stats[2 * i + 1] = 1.0f / s;
        }
    }
}

template <typename T>
__device__ void cross_entropy_bwd(const LossParams p, const T* __restrict__ x, const i64* __restrict__ t,
                                  const float* __restrict__ stats, const T* __restrict__ g, T* __restrict__ dx) {
    constexpr int N = Vec16<T>::N;
    const bool vec = aligned16(x) && aligned16(dx) && p.c % N == 0;
    for (i64 i = blockIdx.x; i < p.n; i += gridDim.x) {
        const i64 ti = t[i];
        const T* r = x + i * p.c;
        T* d = dx + i * p.c;
        const bool ignored = ti == p.ignore;
        const float gi = ignored ? 0.0f : load(g, i * p.g_stride) * p.scale;
        const float m = stats[2 * i], inv = stats[2 * i + 1];
        if (vec) {
            for (i64 j = (i64)threadIdx.x * N; j < p.c; j += (i64)blockDim.x * N) {
                const Vec16<T> xv = load16(r + j);
                Vec16<T> o;
#pragma unroll
                for (int e = 0; e < N; ++e) {
                    const float sm = expf(to_f32(xv.v[e]) - m) * inv;
                    o.v[e] = from_f32<T>(ignored ? 0.0f : (sm - (j + e == ti ? 1.0f : 0.0f)) * gi);
                }
                store16(d + j, o);
            }
        } else {
            for (i64 j = threadIdx.x; j < p.c; j += blockDim.x) {
                const float sm = expf(load(r, j) - m) * inv;
                store(d, j, ignored ? 0.0f : (sm - (j == ti ? 1.0f : 0.0f)) * gi);
            }
        }
    }
}

__device__ __forceinline__ float pair_l(const LossParams& p, float x, float t) {
    const float d = x - t;
    switch (p.op) {
        case P_MSE: return d * d;
        case P_HUBER: {
            const float a = fabsf(d);
            return a < p.delta ? 0.5f * d * d : p.delta * (a - 0.5f * p.delta);
        }
        case P_BCE: return fmaxf(x, 0.0f) - x * t + log1pf(expf(-fabsf(x)));
        default: return __int_as_float(0x7fc00000);
    }
}

// (dl/dp, dl/dt), as engine/src/cpu/loss.rs::pair_grad.
__device__ __forceinline__ float2 pair_dl(const LossParams& p, float x, float t) {
    switch (p.op) {
        case P_MSE: {
            const float d = 2.0f * (x - t);
            return make_float2(d, -d);
        }
        case P_HUBER: {
            const float d = fminf(fmaxf(x - t, -p.delta), p.delta);
            return make_float2(d, -d);
        }
        case P_BCE: return make_float2(sigmoidf_(x) - t, -x);
        default: return make_float2(__int_as_float(0x7fc00000), __int_as_float(0x7fc00000));
    }
}

// Pair losses take 16-byte vectors over the largest multiple of the vector when every tensor is
// 16-byte aligned (checked in the kernel), then the tail (or everything) one element at a time.
template <typename T>
__device__ void pair_loss_fwd(const LossParams p, const T* __restrict__ x, const T* __restrict__ t, T* __restrict__ out) {
    constexpr int N = Vec16<T>::N;
    i64 done = 0;
    if (aligned16(x) && aligned16(t) && aligned16(out)) {
        done = p.n / N * N;
        FOR_EACH(v, p.n / N) {
            const Vec16<T> xv = load16(x + v * N), tv = load16(t + v * N);
            Vec16<T> o;
#pragma unroll
            for (int e = 0; e < N; ++e) o.v[e] = from_f32<T>(pair_l(p, to_f32(xv.v[e]), to_f32(tv.v[e])));
            store16(out + v * N, o);
        }
    }
    FOR_EACH(e, p.n - done) store(out, done + e, pair_l(p, load(x, done + e), load(t, done + e)));
}

template <typename T>
__device__ void pair_loss_bwd(const LossParams p, const T* __restrict__ x, const T* __restrict__ t,
                              const T* __restrict__ g, T* __restrict__ dx, T* __restrict__ dt) {
    constexpr int N = Vec16<T>::N;
    i64 done = 0;
    if (aligned16(x) && aligned16(t) && (p.g_stride == 0 || aligned16(g)) && (!dx || aligned16(dx)) &&
        (!dt || aligned16(dt))) {
        done = p.n / N * N;
        FOR_EACH(v, p.n / N) {
            const Vec16<T> xv = load16(x + v * N), tv = load16(t + v * N);
            Vec16<T> gv, ox, ot;
            if (p.g_stride) gv = load16(g + v * N);
            const float g0 = p.g_stride ? 0.0f : load(g, 0);
#pragma unroll
            for (int e = 0; e < N; ++e) {
                const float ge = (p.g_stride ? to_f32(gv.v[e]) : g0) * p.scale;
                const float2 d = pair_dl(p, to_f32(xv.v[e]), to_f32(tv.v[e]));
                ox.v[e] = from_f32<T>(ge * d.x);
                ot.v[e] = from_f32<T>(ge * d.y);
            }
            if (dx) store16(dx + v * N, ox);
            if (dt) store16(dt + v * N, ot);
        }
    }
    FOR_EACH(e0, p.n - done) {
        const i64 e = done + e0;
        const float ge = load(g, e * p.g_stride) * p.scale;
        const float2 d = pair_dl(p, load(x, e), load(t, e));
        if (dx) store(dx, e, ge * d.x);
        if (dt) store(dt, e, ge * d.y);
    }
}

#define ROW_KERNEL extern "C" __global__ void __launch_bounds__(ROW_THREADS)
#define EW_KERNEL extern "C" __global__ void __launch_bounds__(EW_THREADS)
#define LOSS(dtype, T)                                                                                          \
    ROW_KERNEL cross_entropy_fwd_##dtype(const LossParams p, const T* x, const i64* t, T* loss, float* stats) { \
        cross_entropy_fwd<T>(p, x, t, loss, stats);                                                             \
    }                                                                                                           \
    ROW_KERNEL cross_entropy_bwd_##dtype(const LossParams p, const T* x, const i64* t, const float* stats,      \
                                         const T* g, T* dx) {                                                   \
        cross_entropy_bwd<T>(p, x, t, stats, g, dx);                                                            \
    }                                                                                                           \
    EW_KERNEL pair_loss_fwd_##dtype(const LossParams p, const T* x, const T* t, T* out) { pair_loss_fwd<T>(p, x, t, out); } \
    EW_KERNEL pair_loss_bwd_##dtype(const LossParams p, const T* x, const T* t, const T* g, T* dx, T* dt) {     \
        pair_loss_bwd<T>(p, x, t, g, dx, dt);                                                                   \
    }
LOSS(f32, float)
LOSS(bf16, bf16)
