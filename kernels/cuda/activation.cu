// activation.cu: gated activations on a merged gate|up projection: swiglu (silu gate) and geglu
// (tanh-approximated gelu gate, as Gemma's gelu_pytorch_tanh).
//
// Shapes: x is contiguous [rows, 2F] (gate = x[:, :F], up = x[:, F:]), out and g are [rows, F],
// dx is [rows, 2F]. One thread per output element (grid-stride).
// fwd: out[r, j] = act(gate[r, j]) * up[r, j]. Overwrites out.
// bwd: dx[r, j] = g[r, j] * up[r, j] * act'(gate[r, j]), dx[r, F + j] = g[r, j] * act(gate[r, j]):
//   the whole 2F-wide gradient row in one pass. Overwrites dx.
// swiglu_vec / geglu_vec (fwd, bwd): the same with 16-byte accesses, one thread per 16-byte
//   vector of the output (8 bf16 / 4 f32); F a multiple of the vector, 16-byte aligned bases.
//   Grid-stride over rows * F / vector, EW_THREADS threads.
#include "common.cuh"

struct GateParams {
    i64 rows;
    i64 f;  // F: width of the output, half the width of x
};
static_assert(sizeof(GateParams) == 16, "GateParams layout");

#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_C 0.044715f

enum GateKind { GATE_SILU = 0, GATE_GELU_TANH = 1 };

// (act(x), act'(x)), as engine/src/cpu/activation.rs.
template <int KIND> __device__ __forceinline__ float2 act(float x) {
    if (KIND == GATE_SILU) {
        const float s = sigmoidf_(x);
        return make_float2(x * s, s * (1.0f + x * (1.0f - s)));
    } else {
        const float u = SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
        const float t = tanhf(u);
        const float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_C * x * x);
        return make_float2(0.5f * x * (1.0f + t), 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
    }
}

template <typename T, int KIND>
__device__ void gate_fwd(const GateParams p, const T* __restrict__ x, T* __restrict__ out) {
    FOR_EACH(e, p.rows * p.f) {
        const i64 r = (i64)((u64)e / (u64)p.f), j = e - r * p.f;
        const T* row = x + r * 2 * p.f;
        store(out, e, act<KIND>(load(row, j)).x * load(row, p.f + j));
    }
}

template <typename T, int KIND>
__device__ void gate_bwd(const GateParams p, const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ dx) {
    FOR_EACH(e, p.rows * p.f) {
        const i64 r = (i64)((u64)e / (u64)p.f), j = e - r * p.f;
        const T* row = x + r * 2 * p.f;
        T* drow = dx + r * 2 * p.f;
        const float ge = load(g, e), up = load(row, p.f + j);
        const float2 a = act<KIND>(load(row, j));
        store(drow, j, ge * up * a.y);
        store(drow, p.f + j, ge * a.x);
    }
}

#define EW_KERNEL extern "C" __global__ void __launch_bounds__(EW_THREADS)
#define ACTIVATION(dtype, T)                                                                                   \
    EW_KERNEL swiglu_fwd_##dtype(const GateParams p, const T* x, T* out) { gate_fwd<T, GATE_SILU>(p, x, out); } \
    EW_KERNEL swiglu_bwd_##dtype(const GateParams p, const T* x, const T* g, T* dx) {                          \
        gate_bwd<T, GATE_SILU>(p, x, g, dx);                                                                   \
    }                                                                                                          \
    EW_KERNEL geglu_fwd_##dtype(const GateParams p, const T* x, T* out) { gate_fwd<T, GATE_GELU_TANH>(p, x, out); } \
    EW_KERNEL geglu_bwd_##dtype(const GateParams p, const T* x, const T* g, T* dx) {                           \
        gate_bwd<T, GATE_GELU_TANH>(p, x, g, dx);                                                              \
    }
ACTIVATION(f32, float)
ACTIVATION(bf16, bf16)

template <typename T, int KIND>
__device__ void gate_vec_fwd(const GateParams p, const T* __restrict__ x, T* __restrict__ out) {
    constexpr int N = Vec16<T>::N;
    const i64 fv = p.f / N;
    FOR_EACH(e, p.rows * fv) {
        const i64 r = (i64)((u64)e / (u64)fv), j = (e - r * fv) * N;
        const T* row = x + r * 2 * p.f;
        const Vec16<T> gate = load16(row + j), up = load16(row + p.f + j);
        Vec16<T> o;
#pragma unroll
        for (int k = 0; k < N; ++k) o.v[k] = from_f32<T>(act<KIND>(to_f32(gate.v[k])).x * to_f32(up.v[k]));
        store16(out + r * p.f + j, o);
    }
}

template <typename T, int KIND>
__device__ void gate_vec_bwd(const GateParams p, const T* __restrict__ x, const T* __restrict__ g,
                             T* __restrict__ dx) {
    constexpr int N = Vec16<T>::N;
    const i64 fv = p.f / N;
    FOR_EACH(e, p.rows * fv) {
        const i64 r = (i64)((u64)e / (u64)fv), j = (e - r * fv) * N;
        const T* row = x + r * 2 * p.f;
        T* drow = dx + r * 2 * p.f;
        const Vec16<T> gate = load16(row + j), up = load16(row + p.f + j), gv = load16(g + r * p.f + j);
        Vec16<T> dg, du;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const float ge = to_f32(gv.v[k]);
            const float2 a = act<KIND>(to_f32(gate.v[k]));
            dg.v[k] = from_f32<T>(ge * to_f32(up.v[k]) * a.y);
            du.v[k] = from_f32<T>(ge * a.x);
        }
        store16(drow + j, dg);
        store16(drow + p.f + j, du);
    }
}

#define ACTIVATION_VEC(dtype, T)                                                                               \
    EW_KERNEL swiglu_vec_fwd_##dtype(const GateParams p, const T* x, T* out) {                                 \
        gate_vec_fwd<T, GATE_SILU>(p, x, out);                                                                 \
    }                                                                                                          \
    EW_KERNEL swiglu_vec_bwd_##dtype(const GateParams p, const T* x, const T* g, T* dx) {                      \
        gate_vec_bwd<T, GATE_SILU>(p, x, g, dx);                                                               \
    }                                                                                                          \
    EW_KERNEL geglu_vec_fwd_##dtype(const GateParams p, const T* x, T* out) {                                  \
        gate_vec_fwd<T, GATE_GELU_TANH>(p, x, out);                                                            \
    }                                                                                                          \
    EW_KERNEL geglu_vec_bwd_##dtype(const GateParams p, const T* x, const T* g, T* dx) {                       \
        gate_vec_bwd<T, GATE_GELU_TANH>(p, x, g, dx);                                                          \
    }
ACTIVATION_VEC(f32, float)
ACTIVATION_VEC(bf16, bf16)
