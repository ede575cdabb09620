// unary.cu: elementwise unary ops and their derivatives, every engine unary kind selected by an
// op code in the params struct (one kernel per direction and dtype instead of one per op).
//
// Shapes: contiguous x, y, g, dx of n elements (the engine makes strided inputs contiguous).
// fwd: y[i] = f(x[i]). bwd: dx[i] = g[i] * f'(x[i]) (some derivatives read the output y).
// Both overwrite their output. bf16 is computed in fp32 and rounded once on store.
#include "common.cuh"

// Op codes: the values of engine/src/kinds.rs::UnaryKind (held to this enum by its test).
enum UnaryCode {
    U_NEG = 0, U_EXP, U_LOG, U_SQRT, U_RSQRT, U_SQR, U_RECIP, U_POWF, U_ABS, U_CLAMP, U_AFFINE,
    U_SIN, U_COS, U_TANH, U_SIGMOID, U_RELU, U_SILU, U_GELU, U_GELU_TANH, U_QUICK_GELU, U_SOFTPLUS
};

struct UnaryParams {
    i64 n;
    int op;
    float a;  // powf: exponent; clamp: lo; affine: mul
    float b;  // clamp: hi; affine: add
};
static_assert(sizeof(UnaryParams) == 24, "UnaryParams layout");

#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_C 0.044715f
#define INV_SQRT_2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

__device__ __forceinline__ float unary_f(const UnaryParams& p, float x) {
    switch (p.op) {
        case U_NEG: return -x;
        case U_EXP: return expf(x);
        case U_LOG: return logf(x);
        case U_SQRT: return sqrtf(x);
        case U_RSQRT: return 1.0f / sqrtf(x);
        case U_SQR: return x * x;
        case U_RECIP: return 1.0f / x;
        case U_POWF: return powf(x, p.a);
        case U_ABS: return fabsf(x);
        case U_CLAMP: return fminf(fmaxf(x, p.a), p.b);
        case U_AFFINE: return x * p.a + p.b;
        case U_SIN: return sinf(x);
        case U_COS: return cosf(x);
        case U_TANH: return tanhf(x);
        case U_SIGMOID: return sigmoidf_(x);
        case U_RELU: return fmaxf(x, 0.0f);
        case U_SILU: return x * sigmoidf_(x);
        case U_GELU: return 0.5f * x * (1.0f + erff(x * INV_SQRT_2));
        case U_GELU_TANH: {
            const float u = SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
            return 0.5f * x * (1.0f + tanhf(u));
        }
        case U_QUICK_GELU: return x * sigmoidf_(1.702f * x);
        case U_SOFTPLUS: return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
        default: return __int_as_float(0x7fc00000);  // unknown op code: NaN, never silent
    }
}

// f'(x) given x and y = f(x), as engine/src/cpu/unary.rs::df (subgradient 0 at kinks).
__device__ __forceinline__ float unary_df(const UnaryParams& p, float x, float y) {
    switch (p.op) {
        case U_NEG: return -1.0f;
        case U_EXP: return y;
        case U_LOG: return 1.0f / x;
        case U_SQRT: return 0.5f / y;
        case U_RSQRT: return -0.5f * y * y * y;
        case U_SQR: return 2.0f * x;
        case U_RECIP: return -(y * y);
        case U_POWF: return p.a * powf(x, p.a - 1.0f);
        case U_ABS: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
        case U_CLAMP: return (x >= p.a && x <= p.b) ? 1.0f : 0.0f;
        case U_AFFINE: return p.a;
        case U_SIN: return cosf(x);
        case U_COS: return -sinf(x);
        case U_TANH: return 1.0f - y * y;
        case U_SIGMOID: return y * (1.0f - y);
        case U_RELU: return x > 0.0f ? 1.0f : 0.0f;
        case U_SILU: {
            const float s = sigmoidf_(x);
            return s * (1.0f + x * (1.0f - s));
        }
        case U_GELU: {
            const float cdf = 0.5f * (1.0f + erff(x * INV_SQRT_2));
            return cdf + x * expf(-0.5f * x * x) * INV_SQRT_2PI;
        }
        case U_GELU_TANH: {
            const float u = SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
            const float t = tanhf(u);
            const float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_C * x * x);
            return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
        }
        case U_QUICK_GELU: {
            const float s = sigmoidf_(1.702f * x);
            return s + 1.702f * x * s * (1.0f - s);
        }
        case U_SOFTPLUS: return sigmoidf_(x);
        default: return __int_as_float(0x7fc00000);
    }
}

template <typename T> __device__ void unary_fwd(const UnaryParams p, const T* __restrict__ x, T* __restrict__ y) {
    FOR_EACH(i, p.n) store(y, i, unary_f(p, load(x, i)));
}

// y may be null for ops whose derivative does not read it; it is recomputed from x then.
template <typename T>
__device__ void unary_bwd(const UnaryParams p, const T* __restrict__ x, const T* __restrict__ y,
                          const T* __restrict__ g, T* __restrict__ dx) {
    FOR_EACH(i, p.n) {
        const float xi = load(x, i);
        const float yi = y ? load(y, i) : unary_f(p, xi);
        store(dx, i, load(g, i) * unary_df(p, xi, yi));
    }
}

#define UNARY(dtype, T)                                                                                  \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                             \
        unary_fwd_##dtype(const UnaryParams p, const T* x, T* y) { unary_fwd<T>(p, x, y); }              \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                             \
        unary_bwd_##dtype(const UnaryParams p, const T* x, const T* y, const T* g, T* dx) {              \
        unary_bwd<T>(p, x, y, g, dx);                                                                    \
    }
UNARY(f32, float)
UNARY(bf16, bf16)
