// optim.cu: fused multi-tensor optimizer steps, AdamW and SGD with momentum, one launch for
// every parameter tensor.
//
// Tensors are described by a device-resident table of `OptimSlot`s (pointers and sizes, written
// once by the launcher when the optimizer is built, so the addresses stay fixed and the step can
// be captured in a CUDA graph) and a table of cumulative chunk counts `chunk_start[n_slots + 1]`
// (tensor s owns chunks chunk_start[s] .. chunk_start[s + 1] of OPTIM_CHUNK elements). Grid:
// one block per chunk (grid-stride); a block finds its tensor by binary search.
// Parameters are fp32 masters `p`; gradients are in the kernel's dtype (bf16 for a bf16 compute
// copy); for bf16 the rounded compute copy `copy` is written in the same pass (may be null).
// adamw (as torch.optim.AdamW, single tensor): p *= 1 - lr wd; m = m + (1 - b1)(g - m);
//   v = b2 v + (1 - b2) g^2; p -= step_size m / (sqrt(v) / bc2_sqrt + eps), with step_size =
//   lr / (1 - b1^t) and bc2_sqrt = sqrt(1 - b2^t) computed on the host.
// sgd (torch.optim.SGD, dampening 0, no Nesterov): d = g + wd p; buf = first ? d : mu buf + d;
//   p -= lr buf; without momentum (buf null) p -= lr d.
// Everything is updated in place (p, m, v, buf, copy); gradients are read only. Each chunk takes
// 4 elements per thread per step (16-byte fp32 / 8-byte bf16 accesses) when its tensor's pointers
// are aligned for it (checked in the kernel, so any table works), else one at a time.
#include "common.cuh"

#define OPTIM_CHUNK 4096

struct OptimSlot {
    float* p;     // fp32 master weights
    const void* g;  // gradient, the kernel's dtype
    float* m;     // adamw: first moment; sgd: momentum buffer (may be null)
    float* v;     // adamw: second moment
    void* copy;   // low-precision copy of p in the kernel's dtype, or null
    i64 n;
};
static_assert(sizeof(OptimSlot) == 48, "OptimSlot layout");

struct OptimParams {
    const OptimSlot* slots;
    const i64* chunk_start;
    int n_slots;
    int first;  // sgd: first step (buf = d)
    float lr;
    float beta1;  // sgd: momentum
    float beta2;
    float eps;
    float weight_decay;
    float step_size;
    float bc2_sqrt;
    int pad;
};
static_assert(sizeof(OptimParams) == 56, "OptimParams layout");

// The slot owning chunk c: the last s with chunk_start[s] <= c.
__device__ __forceinline__ int slot_of(const OptimParams& p, i64 c) {
    int lo = 0, hi = p.n_slots - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (p.chunk_start[mid] <= c) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// One element's update; returns the new master weight.
// has_m: sgd with a momentum buffer (adamw always has its moments).
template <bool ADAM>
__device__ __forceinline__ float optim_one(const OptimParams& p, float w, float gi, bool has_m, float& m, float& v) {
    if (ADAM) {
        w *= 1.0f - p.lr * p.weight_decay;
        const float mn = m + (1.0f - p.beta1) * (gi - m);
        const float vn = p.beta2 * v + (1.0f - p.beta2) * gi * gi;
        w -= p.step_size * mn / (sqrtf(vn) / p.bc2_sqrt + p.eps);
        m = mn;
        v = vn;
    } else {
        const float d = gi + p.weight_decay * w;
        if (has_m) {
            const float b = p.first ? d : p.beta1 * m + d;
            m = b;
            w -= p.lr * b;
        } else {
            w -= p.lr * d;
        }
    }
    return w;
}

// Four consecutive values of T (8 bytes of bf16, 16 of f32), for the vector path.
template <typename T> struct Quad {
    T v[4];
};
template <typename T> __device__ __forceinline__ Quad<T> load4(const T* p) {
    Quad<T> q;
    if (sizeof(T) == 2) *reinterpret_cast<uint2*>(q.v) = *reinterpret_cast<const uint2*>(p);
    else *reinterpret_cast<float4*>(q.v) = *reinterpret_cast<const float4*>(p);
    return q;
}
template <typename T> __device__ __forceinline__ void store4(T* p, const Quad<T>& q) {
    if (sizeof(T) == 2) *reinterpret_cast<uint2*>(p) = *reinterpret_cast<const uint2*>(q.v);
    else *reinterpret_cast<float4*>(p) = *reinterpret_cast<const float4*>(q.v);
}
__device__ __forceinline__ bool aligned_to(const void* p, u64 a) { return (reinterpret_cast<u64>(p) & (a - 1)) == 0; }

// Each chunk runs 4 elements per thread per step (16-byte fp32 accesses, 8-byte bf16) when every
// pointer of its tensor is aligned for that; the tail of a tensor, and misaligned tensors, run
// one element at a time. Both paths compute the same function.
template <typename T, bool ADAM> __device__ void optim_step(const OptimParams p) {
    const i64 chunks = p.chunk_start[p.n_slots];
    for (i64 c = blockIdx.x; c < chunks; c += gridDim.x) {
        const int s = slot_of(p, c);
        const OptimSlot slot = p.slots[s];
        const T* g = static_cast<const T*>(slot.g);
        T* copy = static_cast<T*>(slot.copy);
        const i64 start = (c - p.chunk_start[s]) * OPTIM_CHUNK;
        const i64 end = min(start + (i64)OPTIM_CHUNK, slot.n);
        const u64 ta = 4 * sizeof(T);
        const bool vec = aligned_to(slot.p, 16) && (!slot.m || aligned_to(slot.m, 16)) &&
                         (!ADAM || aligned_to(slot.v, 16)) && aligned_to(g, ta) && (!copy || aligned_to(copy, ta));
        i64 i = start + threadIdx.x;
        if (vec) {
            const i64 vend = start + ((end - start) & ~(i64)3);
            for (i64 j = start + 4 * (i64)threadIdx.x; j < vend; j += 4 * (i64)blockDim.x) {
                float4 w = *reinterpret_cast<const float4*>(slot.p + j);
                float4 m = slot.m ? *reinterpret_cast<const float4*>(slot.m + j) : make_float4(0, 0, 0, 0);
                float4 v = ADAM ? *reinterpret_cast<const float4*>(slot.v + j) : make_float4(0, 0, 0, 0);
                const Quad<T> gq = load4(g + j);
                const bool has_m = slot.m != nullptr;
                w.x = optim_one<ADAM>(p, w.x, to_f32(gq.v[0]), has_m, m.x, v.x);
                w.y = optim_one<ADAM>(p, w.y, to_f32(gq.v[1]), has_m, m.y, v.y);
                w.z = optim_one<ADAM>(p, w.z, to_f32(gq.v[2]), has_m, m.z, v.z);
                w.w = optim_one<ADAM>(p, w.w, to_f32(gq.v[3]), has_m, m.w, v.w);
                *reinterpret_cast<float4*>(slot.p + j) = w;
                if (slot.m) *reinterpret_cast<float4*>(slot.m + j) = m;
                if (ADAM) *reinterpret_cast<float4*>(slot.v + j) = v;
                if (copy) {
                    Quad<T> cq;
                    cq.v[0] = from_f32<T>(w.x);
                    cq.v[1] = from_f32<T>(w.y);
                    cq.v[2] = from_f32<T>(w.z);
                    cq.v[3] = from_f32<T>(w.w);
                    store4(copy + j, cq);
                }
            }
            i = vend + threadIdx.x;
        }
        for (; i < end; i += blockDim.x) {
            float m = slot.m ? slot.m[i] : 0.0f, v = ADAM ? slot.v[i] : 0.0f;
            const float w = optim_one<ADAM>(p, slot.p[i], load(g, i), slot.m != nullptr, m, v);
            if (slot.m) slot.m[i] = m;
            if (ADAM) slot.v[i] = v;
            slot.p[i] = w;
            if (copy) store(copy, i, w);
        }
    }
}

#define OPTIM_KERNEL extern "C" __global__ void __launch_bounds__(EW_THREADS)
#define OPTIM(dtype, T)                                                                     \
    OPTIM_KERNEL adamw_fwd_##dtype(const OptimParams p) { optim_step<T, true>(p); }         \
    OPTIM_KERNEL sgd_fwd_##dtype(const OptimParams p) { optim_step<T, false>(p); }
OPTIM(f32, float)
OPTIM(bf16, bf16)
