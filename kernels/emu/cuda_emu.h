// cuda_emu.h: just enough of CUDA to run a kernel family on the CPU, for checking kernels on a
// machine without a GPU. Every CUDA thread of a block is a std::thread; blocks run one after
// another, so function-static `__shared__` variables are per-block shared memory. Warp-collective
// operations (shuffles, warp reductions, ldmatrix, mma.sync) follow the PTX ISA's fragment
// layouts, written here from the ISA's description independently of the kernels; cp.async copies
// are deferred, at random, to the thread's next wait, so a read before the wait sees stale data.
// Dynamic and static shared memory start as NaN-pattern garbage.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

using std::max;
using std::min;

struct emu_dim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 blockDim, gridDim;

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

struct __nv_bfloat16 {
    uint16_t x;
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.x << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) return {0x7fc0};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(uint16_t)(u >> 16)};
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

inline std::mutex emu_atomic_mutex;
inline float atomicAdd(float* p, float v) {
    std::lock_guard<std::mutex> l(emu_atomic_mutex);
    float old = *p;
    *p = old + v;
    return old;
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
    std::lock_guard<std::mutex> l(emu_atomic_mutex);
    __nv_bfloat16 old = *p;
    *p = __float2bfloat16_rn(__bfloat162float(old) + __bfloat162float(v));
    return old;
}

// ----- per-block state -------------------------------------------------------------------------

struct EmuWarp {
    std::barrier<> bar{32};
    uint64_t slot[32][16];
    const void* ptr[32];
};
struct EmuBlock {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<EmuWarp>> warps;
    std::vector<int> flags;
};
inline EmuBlock* emu_block = nullptr;
inline EmuWarp& emu_warp() { return *emu_block->warps[threadIdx.x / 32]; }
inline int emu_lane() { return threadIdx.x % 32; }

inline void __syncthreads() { emu_block->bar->arrive_and_wait(); }
inline int __syncthreads_or(int pred) {
    emu_block->bar->arrive_and_wait();
    emu_block->flags[threadIdx.x] = pred != 0;
    emu_block->bar->arrive_and_wait();
    int any = 0;
    for (int f : emu_block->flags) any |= f;
    emu_block->bar->arrive_and_wait();
    return any;
}
inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp().bar.arrive_and_wait(); }

// Exchange one 64-bit value per lane; f(lane's values) -> result.
template <typename T> inline T emu_exchange(T v, const std::function<T(const uint64_t (*)[16], int)>& f) {
    EmuWarp& w = emu_warp();
    const int lane = emu_lane();
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.slot[lane][0] = bits;
    w.bar.arrive_and_wait();
    T r = f(w.slot, lane);
    w.bar.arrive_and_wait();
    return r;
}
template <typename T> inline T emu_get(const uint64_t (*s)[16], int lane) {
    T v;
    std::memcpy(&v, &s[lane][0], sizeof(T));
    return v;
}
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int o) {
    return emu_exchange<T>(v, [o](const uint64_t (*s)[16], int lane) { return emu_get<T>(s, lane ^ o); });
}
template <typename T> inline T __shfl_sync(unsigned, T v, int src) {
    return emu_exchange<T>(v, [src](const uint64_t (*s)[16], int) { return emu_get<T>(s, src % 32); });
}
inline int __reduce_min_sync(unsigned, int v) {
    return emu_exchange<int>(v, [](const uint64_t (*s)[16], int) {
        int r = emu_get<int>(s, 0);
        for (int l = 1; l < 32; ++l) r = std::min(r, emu_get<int>(s, l));
        return r;
    });
}
inline int __reduce_max_sync(unsigned, int v) {
    return emu_exchange<int>(v, [](const uint64_t (*s)[16], int) {
        int r = emu_get<int>(s, 0);
        for (int l = 1; l < 32; ++l) r = std::max(r, emu_get<int>(s, l));
        return r;
    });
}

// ----- asynchronous copies ---------------------------------------------------------------------

struct EmuCopy {
    void* dst;
    const void* src;
    bool valid;
};
inline thread_local std::vector<EmuCopy> emu_pending;
inline thread_local std::mt19937 emu_rng{12345};
inline void emu_do_copy(const EmuCopy& c) {
    if (c.valid) std::memcpy(c.dst, c.src, 16);
    else std::memset(c.dst, 0, 16);
}
// Copies of the open group, and of the committed groups oldest first.
inline thread_local std::vector<std::vector<EmuCopy>> emu_groups;
inline void emu_cp_async16(void* dst, const void* src, bool valid) {
    EmuCopy c{dst, src, valid};
    if (emu_rng() % 2) emu_do_copy(c);
    else emu_pending.push_back(c);
}
inline void emu_cp_async_commit() {
    emu_groups.push_back(std::move(emu_pending));
    emu_pending.clear();
}
// cp.async.wait_group n: every committed group but the newest n has landed.
inline void emu_cp_async_wait(size_t n) {
    while (emu_groups.size() > n) {
        for (auto& c : emu_groups.front()) emu_do_copy(c);
        emu_groups.erase(emu_groups.begin());
    }
}
inline void emu_cp_async_wait_all() {
    emu_cp_async_wait(0);
    // Copies never committed complete too (the kernels always commit; this only drains).
    for (auto& c : emu_pending) emu_do_copy(c);
    emu_pending.clear();
}
inline void emu_cp_async_wait_one() { emu_cp_async_wait(1); }

// ----- ldmatrix and mma.sync m16n8k16 (PTX ISA fragment layouts) --------------------------------

inline uint32_t emu_pack(uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); }
inline uint16_t emu_b16(const void* row, int i) { return static_cast<const uint16_t*>(row)[i]; }

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane i gives the address of row i % 8 of
// matrix i / 8. Without .trans lane l receives (row l / 4, cols 2 (l % 4), +1) of each matrix;
// with .trans it receives (rows 2 (l % 4), +1, col l / 4).
inline void emu_ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
    EmuWarp& w = emu_warp();
    const int lane = emu_lane();
    w.ptr[lane] = p;
    w.bar.arrive_and_wait();
    for (int m = 0; m < 4; ++m) {
        if (!trans) {
            const void* row = w.ptr[m * 8 + lane / 4];
            r[m] = emu_pack(emu_b16(row, 2 * (lane % 4)), emu_b16(row, 2 * (lane % 4) + 1));
        } else {
            r[m] = emu_pack(emu_b16(w.ptr[m * 8 + 2 * (lane % 4)], lane / 4),
                            emu_b16(w.ptr[m * 8 + 2 * (lane % 4) + 1], lane / 4));
        }
    }
    w.bar.arrive_and_wait();
}

inline float emu_bf(uint32_t reg, int half) {
    __nv_bfloat16 h{(uint16_t)(half ? reg >> 16 : reg & 0xffff)};
    return __bfloat162float(h);
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, g = lane / 4, t = lane % 4:
// A regs {a0,a1} (g, 2t..2t+1), {a2,a3} (g+8, 2t..), {a4,a5} (g, 2t+8..), {a6,a7} (g+8, 2t+8..);
// B regs {b0,b1} (k 2t..2t+1, n g), {b2,b3} (k 2t+8.., n g); C/D {c0,c1} (g, 2t..), {c2,c3} (g+8, 2t..).
inline void emu_mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    EmuWarp& w = emu_warp();
    const int lane = emu_lane();
    for (int i = 0; i < 4; ++i) w.slot[lane][i] = a[i];
    w.slot[lane][4] = b0;
    w.slot[lane][5] = b1;
    w.bar.arrive_and_wait();
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int h = 0; h < 2; ++h) {
            A[g][2 * t + h] = emu_bf((uint32_t)w.slot[l][0], h);
            A[g + 8][2 * t + h] = emu_bf((uint32_t)w.slot[l][1], h);
            A[g][2 * t + 8 + h] = emu_bf((uint32_t)w.slot[l][2], h);
            A[g + 8][2 * t + 8 + h] = emu_bf((uint32_t)w.slot[l][3], h);
            B[2 * t + h][g] = emu_bf((uint32_t)w.slot[l][4], h);
            B[2 * t + 8 + h][g] = emu_bf((uint32_t)w.slot[l][5], h);
        }
    }
    const int g = lane / 4, t = lane % 4;
    for (int e = 0; e < 4; ++e) {
        const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float s = c[e];
        for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
        c[e] = s;
    }
    w.bar.arrive_and_wait();
}

// ----- launching -------------------------------------------------------------------------------

inline std::vector<unsigned char> emu_dyn_smem_buf;
inline unsigned char* emu_dyn_smem = nullptr;

// Run f on every thread of every block of the grid.
inline void emu_launch(emu_dim3 grid, emu_dim3 block, size_t smem, const std::function<void()>& f) {
    blockDim = block;
    gridDim = grid;
    const unsigned nthreads = block.x * block.y * block.z;
    emu_dyn_smem_buf.assign(smem + 64, 0xff);
    emu_dyn_smem = emu_dyn_smem_buf.data() + (16 - (reinterpret_cast<uintptr_t>(emu_dyn_smem_buf.data()) % 16)) % 16;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                std::fill(emu_dyn_smem_buf.begin(), emu_dyn_smem_buf.end(), 0xff);
                EmuBlock b;
                b.bar = std::make_unique<std::barrier<>>(nthreads);
                for (unsigned wi = 0; wi < (nthreads + 31) / 32; ++wi) b.warps.push_back(std::make_unique<EmuWarp>());
                b.flags.assign(nthreads, 0);
                emu_block = &b;
                std::vector<std::thread> threads;
                threads.reserve(nthreads);
                for (unsigned t = 0; t < nthreads; ++t) {
                    threads.emplace_back([&, t, x, y, z] {
                        threadIdx = {t, 0, 0};
                        blockIdx = {x, y, z};
                        emu_rng.seed(t * 7919 + x * 31 + y * 17 + z);
                        emu_groups.clear();
                        emu_pending.clear();
                        f();
                        emu_cp_async_wait_all();
                        // An exited thread no longer holds up barriers.
                        emu_block->warps[t / 32]->bar.arrive_and_drop();
                        emu_block->bar->arrive_and_drop();
                    });
                }
                for (auto& th : threads) th.join();
                emu_block = nullptr;
            }
}
