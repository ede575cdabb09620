// optim.cu: fused multi-tensor optimizer steps, AdamW and SGD with momentum, one launch for
// every parameter tensor, with gradient clipping in the same pass; and the multi-tensor sum of
// squares the clipping reads (the global gradient norm), without a host round trip.
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
// Clipping (clip_sum_sq not null): every gradient element is first multiplied by
//   c = max_norm / (sqrt(*clip_sum_sq) + 1e-6) when c < 1 (as torch's clip_grad_norm_; a
//   non-finite norm leaves the gradients as they are), read from device memory by every block.
// sum_sq fwd: partials[c] = sum of g^2 over chunk c of the slot table (the gradients `g` and
//   sizes `n`; the other slot fields unused), fp32, overwritten. sum_sq_total fwd: one block,
//   out[0] = the sum of partials[0 .. n_slots) in a fixed order (deterministic), overwritten.
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
    const float* clip_sum_sq;  // the gradients' sum of squares to clip by, or null
    int n_slots;  // sum_sq_total: the number of partials
    int first;  // sgd: first step (buf = d)
    float lr;
    float beta1;  // sgd: momentum
    float beta2;
    float eps;
    float weight_decay;
    float step_size;
    float bc2_sqrt;
    float max_norm;
};
static_assert(sizeof(OptimParams) == 64, "OptimParams layout");

// The factor every gradient is multiplied by: max_norm / (norm + 1e-6) below 1, else 1.
__device__ __forceinline__ float clip_factor(const OptimParams& p) {
    if (!p.clip_sum_sq) return 1.0f;
    const float c = p.max_norm / (sqrtf(*p.clip_sum_sq) + 1e-6f);
    return c < 1.0f ? c : 1.0f;
}

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
    const float clip = clip_factor(p);
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
                w.x = optim_one<ADAM>(p, w.x, to_f32(gq.v[0]) * clip, has_m, m.x, v.x);
                w.y = optim_one<ADAM>(p, w.y, to_f32(gq.v[1]) * clip, has_m, m.y, v.y);
                w.z = optim_one<ADAM>(p, w.z, to_f32(gq.v[2]) * clip, has_m, m.z, v.z);
                w.w = optim_one<ADAM>(p, w.w, to_f32(gq.v[3]) * clip, has_m, m.w, v.w);
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
            const float w = optim_one<ADAM>(p, slot.p[i], load(g, i) * clip, slot.m != nullptr, m, v);
            if (slot.m) slot.m[i] = m;
            if (ADAM) slot.v[i] = v;
            slot.p[i] = w;
            if (copy) store(copy, i, w);
        }
    }
}

// One block per chunk (grid-stride): the chunk's sum of squares in fp32.
template <typename T> __device__ void sum_sq_chunks(const OptimParams p, float* __restrict__ partials) {
    __shared__ float scratch[WARP];
    const i64 chunks = p.chunk_start[p.n_slots];
    for (i64 c = blockIdx.x; c < chunks; c += gridDim.x) {
        const int s = slot_of(p, c);
        const OptimSlot slot = p.slots[s];
        const T* g = static_cast<const T*>(slot.g);
        const i64 start = (c - p.chunk_start[s]) * OPTIM_CHUNK;
        const i64 end = min(start + (i64)OPTIM_CHUNK, slot.n);
        float acc = 0.0f;
        for (i64 i = start + threadIdx.x; i < end; i += blockDim.x) {
            const float x = load(g, i);
            acc += x * x;
        }
        acc = block_sum(acc, scratch);
        if (threadIdx.x == 0) partials[c] = acc;
    }
}

// One block: the partials summed in a fixed order (per thread strided, then the block tree).
__device__ void sum_sq_total(const OptimParams p, const float* __restrict__ partials, float* __restrict__ out) {
    __shared__ float scratch[WARP];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < p.n_slots; i += blockDim.x) acc += partials[i];
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[0] = acc;
}

#define OPTIM_KERNEL extern "C" __global__ void __launch_bounds__(EW_THREADS)
#define OPTIM(dtype, T)                                                                     \
    OPTIM_KERNEL adamw_fwd_##dtype(const OptimParams p) { optim_step<T, true>(p); }         \
    OPTIM_KERNEL sgd_fwd_##dtype(const OptimParams p) { optim_step<T, false>(p); }          \
    OPTIM_KERNEL sum_sq_fwd_##dtype(const OptimParams p, float* partials) { sum_sq_chunks<T>(p, partials); } \
    OPTIM_KERNEL sum_sq_total_fwd_##dtype(const OptimParams p, const float* partials, float* out) { \
        sum_sq_total(p, partials, out);                                                     \
    }
OPTIM(f32, float)
OPTIM(bf16, bf16)
