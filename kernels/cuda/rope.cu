// rope.cu: rotary position embedding in the rotate-half form, with caller-given cos/sin tables
// (so 1-D rope, Qwen's 2-D vision rope and M-RoPE are all the same kernel).
//
// Shapes: x, out, g, dx contiguous [B, L, H, D] (D even); cos and sin contiguous fp32 [L, D], or
// [B, L, D] when `batched` (per-sample positions, M-RoPE). One thread per (row, j < D/2) pair,
// rows = B*L*H; a row (b, l, h) reads table row l (or (b, l)).
// fwd: out[j] = x[j] c[j] - x[j+D/2] s[j];  out[j+D/2] = x[j+D/2] c[j+D/2] + x[j] s[j+D/2].
// bwd: dx[j] = g[j] c[j] + g[j+D/2] s[j+D/2];  dx[j+D/2] = g[j+D/2] c[j+D/2] - g[j] s[j].
// Both overwrite their output (in place, out == x, is allowed: each thread reads its pair first).
// rope_vec (fwd, bwd): the same with 16-byte accesses, one thread per 16-byte vector of the first
//   half of a row (8 bf16 / 4 f32 pairs): D/2 a multiple of the vector, 16-byte aligned bases.
//   Grid-stride over rows * (D/2) / vector, EW_THREADS threads; in place allowed.
#include "common.cuh"

struct RopeParams {
    i64 b;
    i64 l;
    i64 h;
    i64 d;
    int batched;
    int pad;
};
static_assert(sizeof(RopeParams) == 40, "RopeParams layout");

// The element offsets of pair e: (row start, table row start, j).
__device__ __forceinline__ void rope_pair(const RopeParams& p, i64 e, i64& xo, i64& to, i64& j) {
    const i64 half = p.d / 2;
    const i64 row = (i64)((u64)e / (u64)half);
    j = e - row * half;
    const i64 pos = (i64)((u64)row / (u64)p.h);  // (batch, position)
    const i64 t = p.batched ? pos : pos - (i64)((u64)pos / (u64)p.l) * p.l;
    xo = row * p.d;
    to = t * p.d;
}

// sign = +1: forward rotation; -1: its transpose (backward).
template <typename T>
__device__ void rope_apply(const RopeParams p, const T* x, const float* __restrict__ cos_t,
                           const float* __restrict__ sin_t, T* out, float sign) {
    const i64 half = p.d / 2;
    FOR_EACH(e, p.b * p.l * p.h * half) {
        i64 xo, to, j;
        rope_pair(p, e, xo, to, j);
        const float a = load(x, xo + j), b = load(x, xo + j + half);
        const float c0 = load(cos_t, to + j), c1 = load(cos_t, to + j + half);
        const float s0 = load(sin_t, to + j), s1 = load(sin_t, to + j + half);
        if (sign > 0.0f) {
            store(out, xo + j, a * c0 - b * s0);
            store(out, xo + j + half, b * c1 + a * s1);
        } else {
            store(out, xo + j, a * c0 + b * s1);
            store(out, xo + j + half, b * c1 - a * s0);
        }
    }
}

#define EW_KERNEL extern "C" __global__ void __launch_bounds__(EW_THREADS)
#define ROPE(dtype, T)                                                                                          \
    EW_KERNEL rope_fwd_##dtype(const RopeParams p, const T* x, const float* cos_t, const float* sin_t, T* out) { \
        rope_apply<T>(p, x, cos_t, sin_t, out, 1.0f);                                                           \
    }                                                                                                           \
    EW_KERNEL rope_bwd_##dtype(const RopeParams p, const T* g, const float* cos_t, const float* sin_t, T* dx) {  \
        rope_apply<T>(p, g, cos_t, sin_t, dx, -1.0f);                                                           \
    }
ROPE(f32, float)
ROPE(bf16, bf16)

template <typename T>
__device__ void rope_vec_apply(const RopeParams p, const T* x, const T* __restrict__ cos_t,
                               const T* __restrict__ sin_t, T* out, float sign) {
    constexpr int N = Vec16<T>::N;
    const i64 half = p.d / 2, hv = half / N;
    FOR_EACH(e, p.b * p.l * p.h * hv) {
        const i64 row = (i64)((u64)e / (u64)hv), j = (e - row * hv) * N;
        const i64 pos = (i64)((u64)row / (u64)p.h);  // (batch, position)
        const i64 t = p.batched ? pos : pos - (i64)((u64)pos / (u64)p.l) * p.l;
        const i64 xo = row * p.d, to = t * p.d;
        const Vec16<T> a = load16(x + xo + j), b = load16(x + xo + j + half);
        const Vec16<T> c0 = load16(cos_t + to + j), c1 = load16(cos_t + to + j + half);
        const Vec16<T> s0 = load16(sin_t + to + j), s1 = load16(sin_t + to + j + half);
        Vec16<T> lo, hi;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const float av = to_f32(a.v[k]), bv = to_f32(b.v[k]);
            if (sign > 0.0f) {
                lo.v[k] = from_f32<T>(av * to_f32(c0.v[k]) - bv * to_f32(s0.v[k]));
                hi.v[k] = from_f32<T>(bv * to_f32(c1.v[k]) + av * to_f32(s1.v[k]));
            } else {
                lo.v[k] = from_f32<T>(av * to_f32(c0.v[k]) + bv * to_f32(s1.v[k]));
                hi.v[k] = from_f32<T>(bv * to_f32(c1.v[k]) - av * to_f32(s0.v[k]));
            }
        }
        store16(out + xo + j, lo);
        store16(out + xo + j + half, hi);
    }
}

#define ROPE_VEC(dtype, T)                                                                                      \
    EW_KERNEL rope_vec_fwd_##dtype(const RopeParams p, const T* x, const T* cos_t, const T* sin_t, T* out) {    \
        rope_vec_apply<T>(p, x, cos_t, sin_t, out, 1.0f);                                                       \
    }                                                                                                           \
    EW_KERNEL rope_vec_bwd_##dtype(const RopeParams p, const T* g, const T* cos_t, const T* sin_t, T* dx) {     \
        rope_vec_apply<T>(p, g, cos_t, sin_t, dx, -1.0f);                                                       \
    }
ROPE_VEC(f32, float)
ROPE_VEC(bf16, bf16)
