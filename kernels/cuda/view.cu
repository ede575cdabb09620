// view.cu: the kernels that work on every storage dtype (f32, bf16, u8, i64): strided copies
// with dtype conversion (`contiguous`, `to_dtype`, writes into a view), comparisons into u8 masks,
// and `where_cond`.
//
// Every kernel walks the n elements of the logical shape `dims` (row-major, rank <= MAX_RANK) and
// finds each operand by its own strides and offset (in elements; zero strides broadcast).
// to_{f32|bf16|u8|i64} fwd (symbol dtype = the source's): b[off_b(i)] = convert(a[off_a(i)]);
//   a and b both strided, so this is also the strided copy (same source and destination dtype).
//   float -> integer truncates toward zero and saturates, NaN -> 0 (as Rust's `as`); integer ->
//   bf16 rounds once from double. Overwrites the addressed elements of b only.
// cmp fwd: out[i] = a[off_a(i)] OP b[off_b(i)] ? 1 : 0 (u8, contiguous), compared in the
//   operands' own type (exact for i64). Overwrites out.
// where_cond fwd: out[i] = mask[i] ? a[off_a(i)] : b[off_b(i)], mask u8 contiguous [n] (already
//   broadcast), out contiguous. Overwrites out.
#include "common.cuh"

#define MAX_RANK 6

enum CmpCode { C_EQ = 0, C_NE, C_LT, C_LE, C_GT, C_GE };

struct StridedParams {
    i64 n;
    int op;  // cmp: CmpCode
    int rank;
    i64 dims[MAX_RANK];
    i64 a_strides[MAX_RANK];
    i64 b_strides[MAX_RANK];
    i64 a_offset;
    i64 b_offset;
};
static_assert(sizeof(StridedParams) == 176, "StridedParams layout");

// Element offsets of logical element i in a and b.
__device__ __forceinline__ void offsets(const StridedParams& p, i64 i, i64& ia, i64& ib) {
    i64 rest = i;
    ia = p.a_offset;
    ib = p.b_offset;
    for (int d = p.rank - 1; d >= 0; --d) {
        const i64 c = rest % p.dims[d];
        rest /= p.dims[d];
        ia += c * p.a_strides[d];
        ib += c * p.b_strides[d];
    }
}

// Conversions through the widest exact type of the source.
__device__ __forceinline__ double wide(float x) { return x; }
__device__ __forceinline__ double wide(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ double wide(u8 x) { return x; }
__device__ __forceinline__ double wide(i64 x) { return (double)x; }

template <typename D> struct Conv;
template <> struct Conv<float> {
    template <typename S> __device__ static float of(S x) { return (float)wide(x); }
    __device__ static float of(float x) { return x; }
    __device__ static float of(bf16 x) { return __bfloat162float(x); }
};
template <> struct Conv<bf16> {
    template <typename S> __device__ static bf16 of(S x) { return __double2bfloat16(wide(x)); }
    __device__ static bf16 of(float x) { return __float2bfloat16_rn(x); }
    __device__ static bf16 of(bf16 x) { return x; }
};
template <> struct Conv<u8> {
    template <typename S> __device__ static u8 of(S x) {
        const double v = wide(x);
        if (isnan(v) || v <= 0.0) return 0;
        return v >= 255.0 ? (u8)255 : (u8)v;
    }
    __device__ static u8 of(u8 x) { return x; }
    __device__ static u8 of(i64 x) { return x <= 0 ? (u8)0 : (x >= 255 ? (u8)255 : (u8)x); }
};
template <> struct Conv<i64> {
    template <typename S> __device__ static i64 of(S x) {
        const double v = wide(x);
        if (isnan(v)) return 0;
        if (v >= 9.2233720368547758e18) return 0x7fffffffffffffffLL;
        if (v <= -9.2233720368547758e18) return (i64)(-0x7fffffffffffffffLL - 1);
        return (i64)v;
    }
    __device__ static i64 of(i64 x) { return x; }
    __device__ static i64 of(u8 x) { return x; }
};

template <typename S, typename D>
__device__ void convert_strided(const StridedParams p, const S* __restrict__ a, D* __restrict__ b) {
    FOR_EACH(i, p.n) {
        i64 ia, ib;
        offsets(p, i, ia, ib);
        b[ib] = Conv<D>::of(a[ia]);
    }
}

// Comparison in the operand type: floats via float, integers exactly.
__device__ __forceinline__ float cmp_val(float x) { return x; }
__device__ __forceinline__ float cmp_val(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ i64 cmp_val(u8 x) { return x; }
__device__ __forceinline__ i64 cmp_val(i64 x) { return x; }

template <typename T>
__device__ void cmp_fwd(const StridedParams p, const T* __restrict__ a, const T* __restrict__ b, u8* __restrict__ out) {
    FOR_EACH(i, p.n) {
        i64 ia, ib;
        offsets(p, i, ia, ib);
        const auto x = cmp_val(a[ia]);
        const auto y = cmp_val(b[ib]);
        bool r;
        switch (p.op) {
            case C_EQ: r = x == y; break;
            case C_NE: r = x != y; break;
            case C_LT: r = x < y; break;
            case C_LE: r = x <= y; break;
            case C_GT: r = x > y; break;
            case C_GE: r = x >= y; break;
            default: r = false;
        }
        out[i] = r ? 1 : 0;
    }
}

template <typename T>
__device__ void where_cond_fwd(const StridedParams p, const u8* __restrict__ mask, const T* __restrict__ a,
                               const T* __restrict__ b, T* __restrict__ out) {
    FOR_EACH(i, p.n) {
        i64 ia, ib;
        offsets(p, i, ia, ib);
        out[i] = mask[i] ? a[ia] : b[ib];
    }
}

#define EW_KERNEL extern "C" __global__ void __launch_bounds__(EW_THREADS)
#define VIEW(dtype, T)                                                                                        \
    EW_KERNEL to_f32_fwd_##dtype(const StridedParams p, const T* a, float* b) { convert_strided<T, float>(p, a, b); } \
    EW_KERNEL to_bf16_fwd_##dtype(const StridedParams p, const T* a, bf16* b) { convert_strided<T, bf16>(p, a, b); } \
    EW_KERNEL to_u8_fwd_##dtype(const StridedParams p, const T* a, u8* b) { convert_strided<T, u8>(p, a, b); }    \
    EW_KERNEL to_i64_fwd_##dtype(const StridedParams p, const T* a, i64* b) { convert_strided<T, i64>(p, a, b); } \
    EW_KERNEL cmp_fwd_##dtype(const StridedParams p, const T* a, const T* b, u8* out) { cmp_fwd<T>(p, a, b, out); } \
    EW_KERNEL where_cond_fwd_##dtype(const StridedParams p, const u8* mask, const T* a, const T* b, T* out) {    \
        where_cond_fwd<T>(p, mask, a, b, out);                                                                \
    }
VIEW(f32, float)
VIEW(bf16, bf16)
VIEW(u8, u8)
VIEW(i64, i64)
