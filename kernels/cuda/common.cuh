// common.cuh: the prelude every kernel family includes. Self-contained apart from cuda_bf16.h
// (found through the include path NVRTC is given): integer types, bf16 <-> f32 conversion,
// warp and block reductions, 16-byte vector loads, atomics, and the launch-shape constants.
#pragma once
#include <cuda_bf16.h>

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned char u8;
typedef __nv_bfloat16 bf16;

#define WARP 32
#define FULL_MASK 0xffffffffu
// Threads per block of the row kernels (one block per row) and the elementwise kernels.
#define ROW_THREADS 256
#define EW_THREADS 256
#define NEG_INF (-__int_as_float(0x7f800000))
#define POS_INF (__int_as_float(0x7f800000))

// Every kernel computes in fp32: load converts to float, store rounds to nearest even.
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

template <typename T> __device__ __forceinline__ float load(const T* p, i64 i) { return to_f32(p[i]); }
template <typename T> __device__ __forceinline__ void store(T* p, i64 i, float v) { p[i] = from_f32<T>(v); }

// Warp reductions: every lane ends with the result.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}
__device__ __forceinline__ float warp_min(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Block reductions for blocks of a multiple of 32 threads (at most 1024): every thread gets the
// result. `scratch` is __shared__ float[32]; the call synchronises, so it may be reused after.
#define BLOCK_REDUCE(name, warp_op, identity)                                   \
    __device__ __forceinline__ float name(float v, float* scratch) {            \
        const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;         \
        const int warps = (blockDim.x + WARP - 1) / WARP;                       \
        v = warp_op(v);                                                         \
        __syncthreads();                                                        \
        if (lane == 0) scratch[warp] = v;                                       \
        __syncthreads();                                                        \
        v = lane < warps ? scratch[lane] : (identity);                          \
        return warp_op(v);                                                      \
    }
BLOCK_REDUCE(block_sum, warp_sum, 0.0f)
BLOCK_REDUCE(block_max, warp_max, NEG_INF)
BLOCK_REDUCE(block_min, warp_min, POS_INF)

// 16-byte vector access: 4 floats or 8 bf16 per load. The caller checks alignment (the launcher
// guarantees 16-byte aligned bases and a width that is a multiple of the vector length).
template <typename T> struct Vec16 {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};
template <typename T> __device__ __forceinline__ Vec16<T> load16(const T* p) {
    Vec16<T> out;
    *reinterpret_cast<float4*>(out.v) = *reinterpret_cast<const float4*>(p);
    return out;
}
template <typename T> __device__ __forceinline__ void store16(T* p, const Vec16<T>& x) {
    *reinterpret_cast<float4*>(p) = *reinterpret_cast<const float4*>(x.v);
}
__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<u64>(p) & 15) == 0; }

// Atomic adds in the storage type (bf16 atomics need sm_80, the oldest target).
__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(bf16* p, float v) { atomicAdd(p, __float2bfloat16_rn(v)); }

// Grid-stride loop over [0, n).
#define FOR_EACH(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (i64)(n); i += (i64)gridDim.x * blockDim.x)

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

// ----- Attention parameters and masks (attention.cu and flash_attention.cu) --------------------
// One definition of the launch parameters and of which keys a query row sees, so the simple and
// the flash kernels cannot drift apart.
enum MaskKind { MASK_FULL = 0, MASK_CAUSAL, MASK_PREFIX, MASK_SEGMENTS };

struct Strides {
    i64 b, h, l;
};

struct AttnParams {
    Strides q, k, v, o, g, dq, dk, dv;
    const i64* mask_data;
    const u8* key_padding;
    int b, hq, hkv, lq, lk, d, dv_dim;
    int mask;
    int n_segments;
    float scale;
};
static_assert(sizeof(AttnParams) == 248, "AttnParams layout");

__device__ __forceinline__ i64 offset(const Strides& s, int b, int h, int l) {
    return (i64)b * s.b + (i64)h * s.h + (i64)l * s.l;
}

// The key range [lo, hi) query i of batch row b may see (before key padding); empty when lo >= hi.
__device__ __forceinline__ void key_range(const AttnParams& p, int b, int i, int& lo, int& hi) {
    lo = 0;
    hi = p.lk;
    if (p.mask == MASK_CAUSAL) {
        hi = min(p.lk, i + (p.lk - p.lq) + 1);
    } else if (p.mask == MASK_PREFIX) {
        hi = min(p.lk, max(i + 1, (int)p.mask_data[b]));
    } else if (p.mask == MASK_SEGMENTS) {
        // The last s with cu[s] <= i.
        int a = 0, z = p.n_segments - 1;
        while (a < z) {
            const int mid = (a + z + 1) / 2;
            if (p.mask_data[mid] <= i) a = mid; else z = mid - 1;
        }
        lo = (int)p.mask_data[a];
        hi = min(p.lk, (int)p.mask_data[a + 1]);
    }
    hi = max(hi, 0);
}

__device__ __forceinline__ bool key_real(const AttnParams& p, int b, int j) {
    return !p.key_padding || p.key_padding[(i64)b * p.lk + j] != 0;
}
