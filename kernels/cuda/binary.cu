// binary.cu: elementwise binary ops (add, sub, mul, div, maximum, minimum) and their backward.
//
// fwd (`binary`): contiguous a, b, out of n elements, same shape; 16-byte vector loads when every
//   pointer is aligned and n is a multiple of the vector length, scalar otherwise.
// fwd (`binary_strided`): a and b given by dims/strides (in elements, max rank 6, zero strides for
//   broadcast dims), out contiguous with shape `dims`.
// bwd (`binary`): contiguous g, a, b of n elements (broadcasting is reduced by the engine's own
//   broadcast op, never here); da = g * d(op)/da, db = g * d(op)/db, either may be null.
//   maximum/minimum route the gradient to a on ties (as the CPU reference).
// All kernels overwrite their outputs.
#include "common.cuh"

enum BinaryCode { B_ADD = 0, B_SUB, B_MUL, B_DIV, B_MAX, B_MIN };

#define MAX_RANK 6

struct BinaryParams {
    i64 n;
    int op;
    int rank;                  // used by the strided kernel only
    i64 dims[MAX_RANK];        // output shape, outermost first
    i64 a_strides[MAX_RANK];
    i64 b_strides[MAX_RANK];
    i64 a_offset;
    i64 b_offset;
};
static_assert(sizeof(BinaryParams) == 176, "BinaryParams layout");

__device__ __forceinline__ float binary_f(int op, float a, float b) {
    switch (op) {
        case B_ADD: return a + b;
        case B_SUB: return a - b;
        case B_MUL: return a * b;
        case B_DIV: return a / b;
        case B_MAX: return a >= b ? a : b;  // as the CPU reference: ties and NaN as written
        case B_MIN: return a <= b ? a : b;
        default: return __int_as_float(0x7fc00000);
    }
}

template <typename T>
__device__ void binary_fwd(const BinaryParams p, const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out) {
    constexpr int N = Vec16<T>::N;
    if (aligned16(a) && aligned16(b) && aligned16(out) && p.n % N == 0) {
        FOR_EACH(v, p.n / N) {
            const Vec16<T> va = load16(a + v * N), vb = load16(b + v * N);
            Vec16<T> vo;
#pragma unroll
            for (int j = 0; j < N; ++j) vo.v[j] = from_f32<T>(binary_f(p.op, to_f32(va.v[j]), to_f32(vb.v[j])));
            store16(out + v * N, vo);
        }
    } else {
        FOR_EACH(i, p.n) store(out, i, binary_f(p.op, load(a, i), load(b, i)));
    }
}

template <typename T>
__device__ void binary_strided_fwd(const BinaryParams p, const T* __restrict__ a, const T* __restrict__ b,
                                   T* __restrict__ out) {
    FOR_EACH(i, p.n) {
        i64 rest = i, ia = p.a_offset, ib = p.b_offset;
        for (int d = p.rank - 1; d >= 0; --d) {
            const i64 c = rest % p.dims[d];
            rest /= p.dims[d];
            ia += c * p.a_strides[d];
            ib += c * p.b_strides[d];
        }
        store(out, i, binary_f(p.op, load(a, ia), load(b, ib)));
    }
}

template <typename T>
__device__ void binary_bwd(const BinaryParams p, const T* __restrict__ g, const T* __restrict__ a,
                           const T* __restrict__ b, T* __restrict__ da, T* __restrict__ db) {
    FOR_EACH(i, p.n) {
        const float gi = load(g, i), ai = load(a, i), bi = load(b, i);
        float ga, gb;
        switch (p.op) {
            case B_ADD: ga = gi; gb = gi; break;
            case B_SUB: ga = gi; gb = -gi; break;
            case B_MUL: ga = gi * bi; gb = gi * ai; break;
            case B_DIV: ga = gi / bi; gb = -gi * ai / (bi * bi); break;
            case B_MAX: ga = ai >= bi ? gi : 0.0f; gb = ai >= bi ? 0.0f : gi; break;
            case B_MIN: ga = ai <= bi ? gi : 0.0f; gb = ai <= bi ? 0.0f : gi; break;
            default: ga = gb = __int_as_float(0x7fc00000);
        }
        if (da) store(da, i, ga);
        if (db) store(db, i, gb);
    }
}

#define BINARY(dtype, T)                                                                                   \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                               \
        binary_fwd_##dtype(const BinaryParams p, const T* a, const T* b, T* out) { binary_fwd<T>(p, a, b, out); } \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                               \
        binary_strided_fwd_##dtype(const BinaryParams p, const T* a, const T* b, T* out) {                 \
        binary_strided_fwd<T>(p, a, b, out);                                                               \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                               \
        binary_bwd_##dtype(const BinaryParams p, const T* g, const T* a, const T* b, T* da, T* db) {       \
        binary_bwd<T>(p, g, a, b, da, db);                                                                 \
    }
BINARY(f32, float)
BINARY(bf16, bf16)
