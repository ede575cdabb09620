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
// Everything is updated in place (p, m, v, buf, copy); gradients are read only.
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

template <typename T, bool ADAM> __device__ void optim_step(const OptimParams p) {
    const i64 chunks = p.chunk_start[p.n_slots];
    for (i64 c = blockIdx.x; c < chunks; c += gridDim.x) {
        const int s = slot_of(p, c);
        const OptimSlot slot = p.slots[s];
        const T* g = static_cast<const T*>(slot.g);
        T* copy = static_cast<T*>(slot.copy);
        const i64 start = (c - p.chunk_start[s]) * OPTIM_CHUNK;
        const i64 end = min(start + (i64)OPTIM_CHUNK, slot.n);
        for (i64 i = start + threadIdx.x; i < end; i += blockDim.x) {
            const float gi = load(g, i);
            float w = slot.p[i];
            if (ADAM) {
                w *= 1.0f - p.lr * p.weight_decay;
                const float m = slot.m[i] + (1.0f - p.beta1) * (gi - slot.m[i]);
                const float v = p.beta2 * slot.v[i] + (1.0f - p.beta2) * gi * gi;
                w -= p.step_size * m / (sqrtf(v) / p.bc2_sqrt + p.eps);
                slot.m[i] = m;
                slot.v[i] = v;
            } else {
                const float d = gi + p.weight_decay * w;
                if (slot.m) {
                    const float b = p.first ? d : p.beta1 * slot.m[i] + d;
                    slot.m[i] = b;
                    w -= p.lr * b;
                } else {
                    w -= p.lr * d;
                }
            }
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
