// flash_attention.cu: bf16 flash attention on the tensor cores (mma.sync m16n8k16 bf16 -> fp32,
// ldmatrix, cp.async), forward and backward, with exactly the semantics of attention.cu (masks,
// GQA/MQA, strides, lse, empty rows) so the engine can switch between the two per call.
//
// Shapes and strides: as attention.cu (AttnParams is the same struct): q [B, Hq, Lq, D],
// k [B, Hkv, Lk, D], v [B, Hkv, Lk, D], out and g (dOut) like q, dq/dk/dv like q/k/v, each given
// by (batch, head, seq) strides in elements with a contiguous last dim; query head h reads kv head
// h / (Hq / Hkv) (no repeated K/V is ever materialised). lse and delta are fp32 [B, Hq, Lq]
// contiguous. Here D == Dv, D is a multiple of 8 and at most the kernel's head-dim tile DT, every
// stride is a multiple of 8 elements and every base pointer is 16-byte aligned (16-byte cp.async
// and vector stores); the launch-geometry helper in kernels/src/flash.rs checks all of it.
// Masks (identical to attention.cu): query i of batch row b sees keys [lo, hi) of its mask kind,
// minus padded keys: full [0, Lk); causal [0, i + Lk - Lq + 1); prefix [0, max(i + 1, P[b]));
// segments [cu[s], cu[s + 1]) for the segment s holding i; key_padding [B, Lk] u8, 1 = real.
// A query row that sees no key gets out 0 and lse -inf, and contributes nothing to the backward.
//
// Head-dim tiles DT in {64, 80, 128, 256}: the symbol's `dNN` is DT. A head dim d < DT runs in the
// DT tile with columns d..DT zero-filled in shared memory (d = 72 uses the 80 tile: 10% padding
// instead of a 96-wide tile's 33%); only columns < d are stored.
// Shared-memory tiles are [rows][DT + 8] bf16: the 16-byte row pad makes ldmatrix's eight row
// addresses fall in distinct bank groups. All shared memory is dynamic (the launcher raises
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES when it exceeds 48 KiB).
//
// flash_attention_dDT_fwd_bf16(p, q, k, v, out, lse): grid (ceil(Lq / 64), B * Hq), 128 threads
//   (4 warps x 16 query rows). smem (64 + 2 BC) (DT + 8) 2 bytes, BC = 64 keys (32 for DT 256).
//   Q tile stays in smem; per key tile: S = Q K^T (fp32), masked, online softmax in base 2
//   (running max m, per-lane partial sums l), O = O corr + P V with P rounded to bf16. K(j+1) is
//   loaded (cp.async) while P V(j) runs and V(j) while Q K(j)^T runs. Key tiles cover the union
//   of the block's rows' ranges; the per-element mask is skipped on tiles inside every row's range
//   with no key padding. Out = O / l, lse = scale m + ln l. Overwrites out and lse.
// flash_attention_long_dDT_fwd_bf16 (DT 64, 80, 128), for long sequences: the same with two m16
//   row tiles per warp, 128 query rows a block, so each K / V fragment read from shared memory
//   feeds two mma; grid (ceil(Lq / 128), B * Hq), smem (128 + 2 BC) (DT + 8) 2 bytes, BC 64 (32
//   for DT 128).
// flash_attention_delta_bwd_bf16(p, out, g, delta): delta = rowsum(g * out) in fp32 [B, Hq, Lq];
//   grid ceil(B Hq Lq / 8), 256 threads, a warp per row (16-byte loads, d <= 256). Overwrites.
// flash_attention_dDT_bwd_bf16(p, q, k, v, g, lse, delta, dk, dv, dk_part, dv_part): dK and dV.
//   Grid (ceil(Lk / 64), B * Hkv, SPLIT * PARTS), 128 threads (4 warps x 16 keys); SPLIT = 2 for
//   DT 256 (block z % 2 computes output columns [z DT/2, (z+1) DT/2), recomputing the scores:
//   the fp32 accumulators of 16 keys x 256 columns x 2 would not fit in registers), else 1.
//   PARTS splits the query heads of a kv group (GQA/MQA) over blocks when the grid would be too
//   small to fill the GPU: with PARTS > 1 each block writes fp32 partials to dk_part / dv_part
//   [PARTS][B][Hkv][Lk][D] and flash_attention_dkdv_sum_bwd_bf16(p, dk_part, dv_part, PARTS, dk,
//   dv) (grid-stride, EW_THREADS) sums them in order into dk, dv; with PARTS = 1 they are null
//   and dk, dv are written directly.
//   smem (64 + 64 + NB x 2 x 32) (DT + 8) 2 + 1024 bytes. K and V tiles stay in smem; the steps
//   are (query head of the kv group, 32-query tile) pairs that can see the block's keys, their Q
//   and dO tiles in NB = 2 buffers up to DT 128 (cp.async of step i + 1 in flight during step i),
//   1 at DT 256. Per step: S^T = K Q^T,
//   P^T = exp(scale S^T - lse), dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - delta),
//   dK += dS^T Q; finally dK *= scale. Overwrites dk and dv; GQA heads are summed in registers:
//   deterministic, no atomics.
// flash_attention_dq_dDT_bwd_bf16(p, q, k, v, g, lse, delta, dq): dQ, deterministic (no atomics).
//   Grid and threads as the forward; smem (2 x 64 + 2 NB BC) (DT + 8) 2 bytes: NB = 2 buffers of
//   K and V tiles for DT <= 128 (the next key tile loads during this one), 1 for DT 256 (V then K
//   of the next tile load behind the current one's last uses). Per key tile:
//   S = Q K^T, P = exp(scale S - lse), dP = dO V^T, dS = P (dP - delta), dQ += dS K; dq = scale dQ.
//   Overwrites dq.
#include "common.cuh"

#define FA_WARPS 4
#define FA_THREADS (FA_WARPS * WARP)
#define FA_BR 64       // query rows per forward / dq block (16 per warp)
#define FA_BWD_BC 64   // keys per dk/dv block (16 per warp)
#define FA_BWD_BR 32   // query rows per dk/dv step
#define FA_DELTA_ROWS 8
#define LOG2E 1.4426950408889634f

// ----- PTX wrappers ----------------------------------------------------------------------------

__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// 16 bytes global -> shared, bypassing L1; zero-fills the destination when !valid (src unread).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
// Wait for all but the most recent commit group.
__device__ __forceinline__ void cp_async_wait_one() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }

// Four 8x8 b16 matrices; lane i gives the row address of matrix i / 8, row i % 8.
__device__ __forceinline__ void ldsm4(u32 (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm4_t(u32 (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// c (16x8 fp32) += a (16x16 bf16, row) b (16x8 bf16, col).
__device__ __forceinline__ void mma(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16 pair, the first in the low half (the lower column of a fragment).
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<u32*>(&v);
}

// ----- fragment helpers ------------------------------------------------------------------------
// Fragment layout of m16n8k16 (g = lane / 4, t = lane % 4): an accumulator c[4] holds
// (row g, cols 2t, 2t+1) in c[0], c[1] and (row g + 8, same cols) in c[2], c[3].

// The A fragment (16 rows x 16 cols at column k0) of a row-major [rows][pitch] tile whose row 0
// is `tile`.
template <int PITCH> __device__ __forceinline__ void load_a(u32 (&a)[4], const bf16* tile, int k0) {
    const int lane = threadIdx.x % WARP;
    ldsm4(a, tile + (lane % 16) * PITCH + k0 + (lane / 16) * 8);
}

// B fragments of two n8 tiles (rows n0..n0+15 of a row-major [n][k] tile, k0..k0+15): B = tile^T,
// as for S = Q K^T. r[0], r[1]: n tile n0; r[2], r[3]: n tile n0 + 8.
template <int PITCH> __device__ __forceinline__ void load_b_nk(u32 (&r)[4], const bf16* tile, int n0, int k0) {
    const int lane = threadIdx.x % WARP;
    ldsm4(r, tile + (n0 + lane % 8 + (lane / 16) * 8) * PITCH + k0 + ((lane / 8) % 2) * 8);
}

// B fragments of two n8 tiles from a row-major [k][n] tile (rows k0..k0+15, cols n0..n0+15), as
// for O = P V: r[0], r[1]: n tile n0; r[2], r[3]: n tile n0 + 8.
template <int PITCH> __device__ __forceinline__ void load_b_kn(u32 (&r)[4], const bf16* tile, int k0, int n0) {
    const int lane = threadIdx.x % WARP;
    ldsm4_t(r, tile + (k0 + lane % 8 + ((lane / 8) % 2) * 8) * PITCH + n0 + (lane / 16) * 8);
}

// The A fragment for k step kk of a product whose A is the accumulator tiles s[2kk], s[2kk+1].
__device__ __forceinline__ void acc_to_a(u32 (&a)[4], const float (&s0)[4], const float (&s1)[4]) {
    a[0] = pack_bf16(s0[0], s0[1]);
    a[1] = pack_bf16(s0[2], s0[3]);
    a[2] = pack_bf16(s1[0], s1[1]);
    a[3] = pack_bf16(s1[2], s1[3]);
}

// cp.async rows [r0, r0 + ROWS) of a [len, d] slice (row stride ls) into tile[ROWS][DT + 8];
// rows >= len and columns >= d are zero-filled.
template <int ROWS, int DT>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* base, i64 ls, int r0, int len, int d) {
    constexpr int CH = DT / 8;
    for (int idx = threadIdx.x; idx < ROWS * CH; idx += FA_THREADS) {
        const int r = idx / CH, c = (idx - r * CH) * 8;
        const bool valid = r0 + r < len && c < d;
        cp_async16(tile + r * (DT + 8) + c, valid ? base + (i64)(r0 + r) * ls + c : base, valid);
    }
}

// Rows [0, 16) of a warp's staged [16][PITCH] bf16 tile, columns [0, min(W, d)), to global rows
// r0.. (< len), 16 bytes per lane per store.
template <int PITCH, int W>
__device__ __forceinline__ void store_rows(bf16* dst, i64 ls, const bf16* tile, int r0, int len, int d) {
    constexpr int CH = W / 8;
    const int lane = threadIdx.x % WARP;
    for (int idx = lane; idx < 16 * CH; idx += WARP) {
        const int r = idx / CH, c = (idx - r * CH) * 8;
        if (r0 + r < len && c < d)
            *reinterpret_cast<float4*>(dst + (i64)(r0 + r) * ls + c) =
                *reinterpret_cast<const float4*>(tile + r * PITCH + c);
    }
}

// Write a warp's 16 x (8 NT) accumulator, times the row factors fa (row g) and fb (row g + 8),
// as bf16 into its staged tile rows (columns c0..).
template <int DT, int NT>
__device__ __forceinline__ void stage_acc(bf16* tile, const float (&acc)[NT][4], float fa, float fb) {
    const int lane = threadIdx.x % WARP, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
        *reinterpret_cast<u32*>(tile + g * (DT + 8) + n * 8 + 2 * t) = pack_bf16(acc[n][0] * fa, acc[n][1] * fa);
        *reinterpret_cast<u32*>(tile + (g + 8) * (DT + 8) + n * 8 + 2 * t) = pack_bf16(acc[n][2] * fb, acc[n][3] * fb);
    }
}

// The union [ulo, uhi) of the key ranges of the block's query rows (rows that see nothing left
// out) and their intersection [ilo, ihi) (rows >= Lq left out): a key tile inside the
// intersection needs no per-element range mask.
struct BlockRange {
    int ulo, uhi, ilo, ihi;
};
// One lane's part of a BlockRange: add query row `row` (< Lq to count) with key range [lo, hi).
struct RangeAcc {
    int ulo = 0x7fffffff, uhi = 0, ilo = 0, ihi = 0x7fffffff;
};
__device__ __forceinline__ void range_add(const AttnParams& p, RangeAcc& a, int row, int lo, int hi) {
    if (row >= p.lq) return;
    if (lo < hi) a.ulo = min(a.ulo, lo), a.uhi = max(a.uhi, hi);
    a.ilo = max(a.ilo, lo), a.ihi = min(a.ihi, hi);
}
// The block's range from every lane's part (all threads call it; it synchronises).
__device__ __forceinline__ BlockRange block_range(RangeAcc a, int* s_rng) {
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int ulo = __reduce_min_sync(FULL_MASK, a.ulo), uhi = __reduce_max_sync(FULL_MASK, a.uhi);
    const int ilo = __reduce_max_sync(FULL_MASK, a.ilo), ihi = __reduce_min_sync(FULL_MASK, a.ihi);
    if (lane == 0) {
        s_rng[warp] = ulo;
        s_rng[FA_WARPS + warp] = uhi;
        s_rng[2 * FA_WARPS + warp] = ilo;
        s_rng[3 * FA_WARPS + warp] = ihi;
    }
    __syncthreads();
    BlockRange r = {0x7fffffff, 0, 0, 0x7fffffff};
#pragma unroll
    for (int w = 0; w < FA_WARPS; ++w) {
        r.ulo = min(r.ulo, s_rng[w]);
        r.uhi = max(r.uhi, s_rng[FA_WARPS + w]);
        r.ilo = max(r.ilo, s_rng[2 * FA_WARPS + w]);
        r.ihi = min(r.ihi, s_rng[3 * FA_WARPS + w]);
    }
    return r;
}

// Set the scores a query-row pair (rows g, g + 8 of the warp, ranges [lo_a, hi_a), [lo_b, hi_b))
// may not see to -inf, for the key tile starting at k0.
template <int NT>
__device__ __forceinline__ void mask_scores(const AttnParams& p, int b, float (&s)[NT][4], int k0, int lo_a,
                                            int hi_a, int lo_b, int hi_b) {
    const int t = threadIdx.x % 4;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int key = k0 + n * 8 + 2 * t + e;
            const bool real = key < p.lk && key_real(p, b, key);
            if (!(real && key >= lo_a && key < hi_a)) s[n][e] = NEG_INF;
            if (!(real && key >= lo_b && key < hi_b)) s[n][2 + e] = NEG_INF;
        }
    }
}

// ----- forward ---------------------------------------------------------------------------------

// MT m16 row tiles per warp (16 MT query rows): MT = 2 reuses every K / V fragment read from
// shared memory for two tiles (half the shared-memory traffic per mma) at the cost of registers.
template <int DT, int BC, int MT>
__device__ void flash_fwd(const AttnParams& p, const bf16* __restrict__ q, const bf16* __restrict__ k,
                          const bf16* __restrict__ v, bf16* __restrict__ out, float* __restrict__ lse) {
    constexpr int PITCH = DT + 8, KS = DT / 16, NT = BC / 8, DN = DT / 8, WR = 16 * MT, BRT = FA_WARPS * WR;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    __shared__ int s_rng[4 * FA_WARPS];
    bf16* sq = reinterpret_cast<bf16*>(fa_smem);
    bf16* sk = sq + BRT * PITCH;
    bf16* sv = sk + BC * PITCH;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, g = lane / 4, t = lane % 4;
    const int b = blockIdx.y / p.hq, h = blockIdx.y % p.hq, hk = h / (p.hq / p.hkv);
    const int q0 = blockIdx.x * BRT, w0 = q0 + warp * WR;  // the block's and the warp's first row
    const bf16* kb = k + offset(p.k, b, hk, 0);
    const bf16* vb = v + offset(p.v, b, hk, 0);

    // Row tile mt holds rows w0 + 16 mt + g (a) and + 8 (b).
    int lo[MT][2], hi[MT][2];
    RangeAcc racc;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = w0 + 16 * mt + g + 8 * r;
            lo[mt][r] = hi[mt][r] = 0;
            if (row < p.lq) key_range(p, b, row, lo[mt][r], hi[mt][r]);
            range_add(p, racc, row, lo[mt][r], hi[mt][r]);
        }
    const BlockRange br = block_range(racc, s_rng);

    load_tile<BRT, DT>(sq, q + offset(p.q, b, h, 0), p.q.l, q0, p.lq, p.d);
    if (br.ulo < br.uhi) load_tile<BC, DT>(sk, kb, p.k.l, br.ulo, p.lk, p.d);
    cp_async_commit();

    const float sl2 = p.scale * LOG2E;
    float o[MT][DN][4], m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int n = 0; n < DN; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;
        m[mt][0] = m[mt][1] = NEG_INF;
        l[mt][0] = l[mt][1] = 0.0f;
    }
    const bf16* qw = sq + warp * WR * PITCH;

    for (int k0 = br.ulo; k0 < br.uhi; k0 += BC) {
        cp_async_wait_all();
        __syncthreads();  // K(k0) in; every warp is done with V(k0 - BC)
        load_tile<BC, DT>(sv, vb, p.v.l, k0, p.lk, p.d);
        cp_async_commit();

        float s[MT][NT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int n = 0; n < NT; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
            u32 a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) load_a<PITCH>(a[mt], qw + 16 * mt * PITCH, ks * 16);
#pragma unroll
            for (int n = 0; n < NT; n += 2) {
                u32 bb[4];
                load_b_nk<PITCH>(bb, sk, n * 8, ks * 16);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma(s[mt][n], a[mt], bb[0], bb[1]);
                    mma(s[mt][n + 1], a[mt], bb[2], bb[3]);
                }
            }
        }
        const bool need_mask = p.key_padding || k0 < br.ilo || k0 + BC > br.ihi;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            if (need_mask) mask_scores<NT>(p, b, s[mt], k0, lo[mt][0], hi[mt][0], lo[mt][1], hi[mt][1]);
            // Online softmax, base 2: p = 2^(s sl2 - m sl2); rows that have seen no key keep m = -inf.
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = m[mt][r];
#pragma unroll
                for (int n = 0; n < NT; ++n) mx = fmaxf(mx, fmaxf(s[mt][n][2 * r], s[mt][n][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 2));
                const float ms = mx == NEG_INF ? 0.0f : mx * sl2;
                const float corr = exp2f(m[mt][r] * sl2 - ms);
                m[mt][r] = mx;
                float sum = 0.0f;
#pragma unroll
                for (int n = 0; n < NT; ++n) {
                    s[mt][n][2 * r] = exp2f(s[mt][n][2 * r] * sl2 - ms);
                    s[mt][n][2 * r + 1] = exp2f(s[mt][n][2 * r + 1] * sl2 - ms);
                    sum += s[mt][n][2 * r] + s[mt][n][2 * r + 1];
                }
                l[mt][r] = l[mt][r] * corr + sum;
#pragma unroll
                for (int n = 0; n < DN; ++n) {
                    o[mt][n][2 * r] *= corr;
                    o[mt][n][2 * r + 1] *= corr;
                }
            }
        }

        cp_async_wait_all();
        __syncthreads();  // V(k0) in; every warp is done with K(k0)
        if (k0 + BC < br.uhi) load_tile<BC, DT>(sk, kb, p.k.l, k0 + BC, p.lk, p.d);
        cp_async_commit();
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            u32 a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) acc_to_a(a[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
            for (int n = 0; n < DN; n += 2) {
                u32 bb[4];
                load_b_kn<PITCH>(bb, sv, kk * 16, n * 8);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma(o[mt][n], a[mt], bb[0], bb[1]);
                    mma(o[mt][n + 1], a[mt], bb[2], bb[3]);
                }
            }
        }
    }
    cp_async_wait_all();
    __syncthreads();  // the Q tile is in even when no key tile ran; its rows are reused as staging

    float* lrow = lse + ((i64)b * p.hq + h) * p.lq;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        float inv[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float lt = l[mt][r];
            lt += __shfl_xor_sync(FULL_MASK, lt, 1);
            lt += __shfl_xor_sync(FULL_MASK, lt, 2);
            const int row = w0 + 16 * mt + g + 8 * r;
            if (t == 0 && row < p.lq) lrow[row] = lt > 0.0f ? m[mt][r] * p.scale + logf(lt) : NEG_INF;
            inv[r] = lt > 0.0f ? 1.0f / lt : 0.0f;
        }
        bf16* stage = sq + (warp * WR + 16 * mt) * PITCH;  // only this warp ever read these Q rows
        stage_acc<DT, DN>(stage, o[mt], inv[0], inv[1]);
        __syncwarp();
        store_rows<PITCH, DT>(out + offset(p.o, b, h, 0), p.o.l, stage, w0 + 16 * mt, p.lq, p.d);
    }
}

// ----- backward: delta = rowsum(dO * O) ------------------------------------------------------

__device__ void flash_delta(const AttnParams& p, const bf16* __restrict__ o, const bf16* __restrict__ g,
                            float* __restrict__ delta) {
    const int lane = threadIdx.x % WARP;
    const i64 rows = (i64)p.b * p.hq * p.lq;
    const i64 row = (i64)blockIdx.x * FA_DELTA_ROWS + threadIdx.x / WARP;
    if (row >= rows) return;
    const int i = (int)(row % p.lq);
    const int bh = (int)(row / p.lq), b = bh / p.hq, h = bh % p.hq;
    float s = 0.0f;
    const int c = lane * 8;
    if (c < p.d) {
        const Vec16<bf16> gv = load16(g + offset(p.g, b, h, i) + c);
        const Vec16<bf16> ov = load16(o + offset(p.o, b, h, i) + c);
#pragma unroll
        for (int e = 0; e < 8; ++e) s += to_f32(gv.v[e]) * to_f32(ov.v[e]);
    }
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

// ----- backward: sum of the dK / dV partials of a split kv group ------------------------------

__device__ void flash_dkdv_sum(const AttnParams& p, const float* __restrict__ dk_part,
                               const float* __restrict__ dv_part, int parts, bf16* __restrict__ dk,
                               bf16* __restrict__ dv) {
    const i64 rows = (i64)p.b * p.hkv * p.lk, vecs = p.d / 8, total = rows * p.d;
    FOR_EACH(e, rows * vecs) {
        const i64 r = e / vecs;
        const int c = (int)(e - r * vecs) * 8;
        const int j = (int)(r % p.lk), bh = (int)(r / p.lk), b = bh / p.hkv, hk = bh % p.hkv;
        float sk[8], sv[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) sk[i] = sv[i] = 0.0f;
        for (int q = 0; q < parts; ++q) {
            const i64 at = q * total + r * p.d + c;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float4 a = *reinterpret_cast<const float4*>(dk_part + at + 4 * h);
                const float4 v = *reinterpret_cast<const float4*>(dv_part + at + 4 * h);
                sk[4 * h] += a.x, sk[4 * h + 1] += a.y, sk[4 * h + 2] += a.z, sk[4 * h + 3] += a.w;
                sv[4 * h] += v.x, sv[4 * h + 1] += v.y, sv[4 * h + 2] += v.z, sv[4 * h + 3] += v.w;
            }
        }
        Vec16<bf16> ok, ov;
#pragma unroll
        for (int i = 0; i < 8; ++i) ok.v[i] = from_f32<bf16>(sk[i]), ov.v[i] = from_f32<bf16>(sv[i]);
        store16(dk + offset(p.dk, b, hk, j) + c, ok);
        store16(dv + offset(p.dv, b, hk, j) + c, ov);
    }
}

// ----- backward: dK, dV ------------------------------------------------------------------------

template <int DT, int SPLIT>
__device__ void flash_dkdv(const AttnParams& p, const bf16* __restrict__ q, const bf16* __restrict__ k,
                           const bf16* __restrict__ v, const bf16* __restrict__ g, const float* __restrict__ lse,
                           const float* __restrict__ delta, bf16* __restrict__ dk, bf16* __restrict__ dv,
                           float* __restrict__ dk_part, float* __restrict__ dv_part) {
    constexpr int PITCH = DT + 8, KS = DT / 16, COLS = DT / SPLIT, CN = COLS / 8;
    constexpr int BR = FA_BWD_BR, BC = FA_BWD_BC, NT = BR / 8;
    // Shared memory: K and V tiles, then NB buffers of (Q tile, dO tile), then two buffers of the
    // query rows' (lse log2(e) or +inf for rows that see nothing, delta, lo, hi). NB = 2 (the next
    // step's tiles load during this one) up to DT 128; at DT 256 a second buffer would halve the
    // blocks per SM, so the next step's tiles load after this one.
    constexpr int NB = DT <= 128 ? 2 : 1;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    bf16* sk = reinterpret_cast<bf16*>(fa_smem);
    bf16* sv = sk + BC * PITCH;
    bf16* sqg = sv + BC * PITCH;  // [NB][Q tile, dO tile]
    float* s_meta = reinterpret_cast<float*>(sqg + NB * 2 * BR * PITCH);  // [2][lse2, delta, lo, hi][BR]
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, g8 = lane / 4, t = lane % 4;
    const int b = blockIdx.y / p.hkv, hk = blockIdx.y % p.hkv, group = p.hq / p.hkv;
    // blockIdx.z = column part + SPLIT x head part: the block takes query heads
    // [h_first, h_first + heads) of the kv group (all of them unless the launcher splits it).
    const int parts = gridDim.z / SPLIT, part = blockIdx.z / SPLIT, heads = group / parts;
    const int h_first = hk * group + part * heads;
    const int c0 = (blockIdx.z % SPLIT) * COLS;
    const int kb0 = blockIdx.x * BC, kb1 = min(kb0 + BC, p.lk);
    const int ka = kb0 + warp * 16 + g8, kbb = ka + 8;  // this lane's two keys
    const bool real_a = ka < p.lk && key_real(p, b, ka), real_b = kbb < p.lk && key_real(p, b, kbb);

    load_tile<BC, DT>(sk, k + offset(p.k, b, hk, 0), p.k.l, kb0, p.lk, p.d);
    load_tile<BC, DT>(sv, v + offset(p.v, b, hk, 0), p.v.l, kb0, p.lk, p.d);
    cp_async_commit();

    const float sl2 = p.scale * LOG2E;
    float dka[CN][4], dva[CN][4];
#pragma unroll
    for (int n = 0; n < CN; ++n) {
        dka[n][0] = dka[n][1] = dka[n][2] = dka[n][3] = 0.0f;
        dva[n][0] = dva[n][1] = dva[n][2] = dva[n][3] = 0.0f;
    }
    const bf16* kw = sk + warp * 16 * PITCH;
    const bf16* vw = sv + warp * 16 * PITCH;
    // The work is a sequence of (query head of the group, query tile) steps. Causal: query i sees
    // key kb0 only if i >= kb0 - (Lk - Lq), so earlier query tiles are not steps at all.
    const int i_start = p.mask == MASK_CAUSAL ? max(0, kb0 - (p.lk - p.lq)) : 0;
    const int tiles = p.lq > i_start ? (p.lq - i_start + BR - 1) / BR : 0;
    const int steps = heads * tiles;

    // The first step at or after `st` whose query tile sees a key of this block (steps if none),
    // with its rows' metadata written into buffer `buf`. Every thread calls it (it synchronises).
    auto find_step = [&](int st, int buf) -> int {
        float* meta = s_meta + buf * 4 * BR;
        for (; st < steps; ++st) {
            const int h = h_first + st / tiles, i0 = i_start + (st % tiles) * BR;
            bool sees = false;
            if (threadIdx.x < BR) {
                const i64 row0 = ((i64)b * p.hq + h) * p.lq;
                const int i = i0 + threadIdx.x;
                int lo = 0, hi = 0;
                float l2 = POS_INF, dl = 0.0f;
                if (i < p.lq) {
                    key_range(p, b, i, lo, hi);
                    const float li = lse[row0 + i];
                    if (li != NEG_INF) l2 = li * LOG2E;
                    dl = delta[row0 + i];
                }
                sees = lo < hi && lo < kb1 && hi > kb0 && l2 != POS_INF;
                meta[threadIdx.x] = l2;
                meta[BR + threadIdx.x] = dl;
                reinterpret_cast<int*>(meta)[2 * BR + threadIdx.x] = lo;
                reinterpret_cast<int*>(meta)[3 * BR + threadIdx.x] = hi;
            }
            if (__syncthreads_or(sees)) return st;
        }
        return steps;
    };
    // Issue the cp.async loads of step st's Q and dO tiles into buffer buf (one commit group).
    auto load_step = [&](int st, int buf) {
        const int h = h_first + st / tiles, i0 = i_start + (st % tiles) * BR;
        bf16* bq = sqg + buf * 2 * BR * PITCH;
        load_tile<BR, DT>(bq, q + offset(p.q, b, h, 0), p.q.l, i0, p.lq, p.d);
        load_tile<BR, DT>(bq + BR * PITCH, g + offset(p.g, b, h, 0), p.g.l, i0, p.lq, p.d);
        cp_async_commit();
    };

    int cur = find_step(0, 0), buf = 0;
    if (cur < steps) load_step(cur, 0);
    while (cur < steps) {
        // The next visible step's metadata into the other buffer and, with two tile buffers, its
        // tiles too (their last reader, step cur - 1, finished before the barrier that ended the
        // previous iteration); then wait for this step's tiles.
        const int nxt = find_step(cur + 1, buf ^ 1);
        if (NB == 2 && nxt < steps) {
            load_step(nxt, buf ^ 1);
            cp_async_wait_one();  // everything but the group just committed
        } else {
            cp_async_wait_all();
        }
        __syncthreads();
        const bf16* sq = sqg + (NB == 2 ? buf : 0) * 2 * BR * PITCH;
        const bf16* sg = sq + BR * PITCH;
        const float* s_lse = s_meta + buf * 4 * BR;
        const float* s_delta = s_lse + BR;
        const int* s_lo = reinterpret_cast<const int*>(s_lse) + 2 * BR;
        const int* s_hi = s_lo + BR;
        {
            // S^T = K Q^T and dP^T = V dO^T: 16 keys x BR queries per warp.
            float s[NT][4], dp[NT][4];
#pragma unroll
            for (int n = 0; n < NT; ++n) {
                s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
                dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
            }
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {
                u32 a[4], av[4];
                load_a<PITCH>(a, kw, ks * 16);
                load_a<PITCH>(av, vw, ks * 16);
#pragma unroll
                for (int n = 0; n < NT; n += 2) {
                    u32 bb[4];
                    load_b_nk<PITCH>(bb, sq, n * 8, ks * 16);
                    mma(s[n], a, bb[0], bb[1]);
                    mma(s[n + 1], a, bb[2], bb[3]);
                    load_b_nk<PITCH>(bb, sg, n * 8, ks * 16);
                    mma(dp[n], av, bb[0], bb[1]);
                    mma(dp[n + 1], av, bb[2], bb[3]);
                }
            }
            // P^T and dS^T in place of S^T and dP^T.
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int qi = n * 8 + 2 * t + (e & 1);
                    const int key = e < 2 ? ka : kbb;
                    const bool vis = (e < 2 ? real_a : real_b) && key >= s_lo[qi] && key < s_hi[qi];
                    const float pr = vis ? exp2f(s[n][e] * sl2 - s_lse[qi]) : 0.0f;
                    s[n][e] = pr;
                    dp[n][e] = pr * (dp[n][e] - s_delta[qi]);
                }
            }
            // dV += P^T dO, dK += dS^T Q over this block's output columns.
#pragma unroll
            for (int kk = 0; kk < BR / 16; ++kk) {
                u32 ap[4], ad[4];
                acc_to_a(ap, s[2 * kk], s[2 * kk + 1]);
                acc_to_a(ad, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
                for (int n = 0; n < CN; n += 2) {
                    u32 bb[4];
                    load_b_kn<PITCH>(bb, sg, kk * 16, c0 + n * 8);
                    mma(dva[n], ap, bb[0], bb[1]);
                    mma(dva[n + 1], ap, bb[2], bb[3]);
                    load_b_kn<PITCH>(bb, sq, kk * 16, c0 + n * 8);
                    mma(dka[n], ad, bb[0], bb[1]);
                    mma(dka[n + 1], ad, bb[2], bb[3]);
                }
            }
        }
        __syncthreads();  // every warp is done with buffer buf and its metadata
        if (NB == 1 && nxt < steps) load_step(nxt, 0);
        cur = nxt;
        buf ^= 1;
    }
    cp_async_wait_all();
    if (dk_part) {
        // A part of the kv group's heads: fp32 partials [parts][B][Hkv][Lk][D], summed by
        // flash_attention_dkdv_sum in a fixed order.
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int key = r ? kbb : ka;
            if (key >= p.lk) continue;
            const i64 at = ((((i64)part * p.b + b) * p.hkv + hk) * p.lk + key) * p.d;
#pragma unroll
            for (int n = 0; n < CN; ++n) {
                const int col = c0 + n * 8 + 2 * t;
                if (col < p.d) {
                    *reinterpret_cast<float2*>(dk_part + at + col) =
                        make_float2(dka[n][2 * r] * p.scale, dka[n][2 * r + 1] * p.scale);
                    *reinterpret_cast<float2*>(dv_part + at + col) = make_float2(dva[n][2 * r], dva[n][2 * r + 1]);
                }
            }
        }
        return;
    }
    __syncthreads();  // done with K and V: their tiles become staging
    // Warp w stages its 16 keys' dK in sk rows [16 w, 16 w + 16) and dV in sv's, columns [0, COLS).
    stage_acc<DT, CN>(sk + warp * 16 * PITCH, dka, p.scale, p.scale);
    stage_acc<DT, CN>(sv + warp * 16 * PITCH, dva, 1.0f, 1.0f);
    __syncwarp();
    const int d_here = min(COLS, p.d - c0);
    if (d_here > 0) {
        store_rows<PITCH, COLS>(dk + offset(p.dk, b, hk, 0) + c0, p.dk.l, sk + warp * 16 * PITCH, kb0 + warp * 16, p.lk,
                         d_here);
        store_rows<PITCH, COLS>(dv + offset(p.dv, b, hk, 0) + c0, p.dv.l, sv + warp * 16 * PITCH, kb0 + warp * 16, p.lk,
                         d_here);
    }
}

// ----- backward: dQ ----------------------------------------------------------------------------

template <int DT, int BC>
__device__ void flash_dq(const AttnParams& p, const bf16* __restrict__ q, const bf16* __restrict__ k,
                         const bf16* __restrict__ v, const bf16* __restrict__ g, const float* __restrict__ lse,
                         const float* __restrict__ delta, bf16* __restrict__ dq) {
    constexpr int PITCH = DT + 8, KS = DT / 16, NT = BC / 8, DN = DT / 8;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    __shared__ int s_rng[4 * FA_WARPS];
    bf16* sq = reinterpret_cast<bf16*>(fa_smem);
    bf16* sg = sq + FA_BR * PITCH;
    // [NB][K tile, V tile]: with two buffers the next key tile loads during this one (DT <= 128;
    // at DT 256 a second buffer would halve the blocks per SM).
    constexpr int NB = DT <= 128 ? 2 : 1;
    bf16* skv = sg + FA_BR * PITCH;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, g8 = lane / 4;
    const int b = blockIdx.y / p.hq, h = blockIdx.y % p.hq, hk = h / (p.hq / p.hkv);
    const int q0 = blockIdx.x * FA_BR, ra = q0 + warp * 16 + g8, rb = ra + 8;
    const bf16* kb = k + offset(p.k, b, hk, 0);
    const bf16* vb = v + offset(p.v, b, hk, 0);
    const i64 row0 = ((i64)b * p.hq + h) * p.lq;

    int lo_a = 0, hi_a = 0, lo_b = 0, hi_b = 0;
    float lse_a = POS_INF, lse_b = POS_INF, del_a = 0.0f, del_b = 0.0f;
    if (ra < p.lq) {
        key_range(p, b, ra, lo_a, hi_a);
        const float l = lse[row0 + ra];
        if (l != NEG_INF) lse_a = l * LOG2E;
        del_a = delta[row0 + ra];
    }
    if (rb < p.lq) {
        key_range(p, b, rb, lo_b, hi_b);
        const float l = lse[row0 + rb];
        if (l != NEG_INF) lse_b = l * LOG2E;
        del_b = delta[row0 + rb];
    }
    RangeAcc racc;
    range_add(p, racc, ra, lo_a, hi_a);
    range_add(p, racc, rb, lo_b, hi_b);
    const BlockRange br = block_range(racc, s_rng);

    load_tile<FA_BR, DT>(sq, q + offset(p.q, b, h, 0), p.q.l, q0, p.lq, p.d);
    load_tile<FA_BR, DT>(sg, g + offset(p.g, b, h, 0), p.g.l, q0, p.lq, p.d);
    if (br.ulo < br.uhi) {
        load_tile<BC, DT>(skv, kb, p.k.l, br.ulo, p.lk, p.d);
        load_tile<BC, DT>(skv + BC * PITCH, vb, p.v.l, br.ulo, p.lk, p.d);
    }
    cp_async_commit();

    const float sl2 = p.scale * LOG2E;
    float acc[DN][4];
#pragma unroll
    for (int n = 0; n < DN; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    const bf16* qw = sq + warp * 16 * PITCH;
    const bf16* gw = sg + warp * 16 * PITCH;

    int buf = 0;
    for (int k0 = br.ulo; k0 < br.uhi; k0 += BC, buf ^= NB - 1) {
        const bool more = k0 + BC < br.uhi;
        if (NB == 2 && more) {
            // Load the next key tile into the other buffer (its last readers finished before the
            // barrier that ended the previous iteration), then wait for this one.
            bf16* nk = skv + (buf ^ 1) * 2 * BC * PITCH;
            load_tile<BC, DT>(nk, kb, p.k.l, k0 + BC, p.lk, p.d);
            load_tile<BC, DT>(nk + BC * PITCH, vb, p.v.l, k0 + BC, p.lk, p.d);
            cp_async_commit();
            cp_async_wait_one();
        } else {
            cp_async_wait_all();
        }
        __syncthreads();  // K(k0), V(k0) in
        bf16* sk = skv + buf * 2 * BC * PITCH;
        bf16* sv = sk + BC * PITCH;

        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
        }
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
            u32 a[4], ag[4];
            load_a<PITCH>(a, qw, ks * 16);
            load_a<PITCH>(ag, gw, ks * 16);
#pragma unroll
            for (int n = 0; n < NT; n += 2) {
                u32 bb[4];
                load_b_nk<PITCH>(bb, sk, n * 8, ks * 16);
                mma(s[n], a, bb[0], bb[1]);
                mma(s[n + 1], a, bb[2], bb[3]);
                load_b_nk<PITCH>(bb, sv, n * 8, ks * 16);
                mma(dp[n], ag, bb[0], bb[1]);
                mma(dp[n + 1], ag, bb[2], bb[3]);
            }
        }
        if (NB == 1) {
            // One buffer: V(k0 + BC) loads while dS and dQ += dS K run, K(k0 + BC) after.
            __syncthreads();  // every warp is done with V(k0)
            if (more) load_tile<BC, DT>(sv, vb, p.v.l, k0 + BC, p.lk, p.d);
            cp_async_commit();
        }
        if (p.key_padding || k0 < br.ilo || k0 + BC > br.ihi) mask_scores<NT>(p, b, s, k0, lo_a, hi_a, lo_b, hi_b);
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            // Masked scores are -inf and rows that see nothing have lse +inf: both give p = 0.
            s[n][0] = exp2f(s[n][0] * sl2 - lse_a) * (dp[n][0] - del_a);
            s[n][1] = exp2f(s[n][1] * sl2 - lse_a) * (dp[n][1] - del_a);
            s[n][2] = exp2f(s[n][2] * sl2 - lse_b) * (dp[n][2] - del_b);
            s[n][3] = exp2f(s[n][3] * sl2 - lse_b) * (dp[n][3] - del_b);
        }
        // dQ += dS K.
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            u32 a[4];
            acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int n = 0; n < DN; n += 2) {
                u32 bb[4];
                load_b_kn<PITCH>(bb, sk, kk * 16, n * 8);
                mma(acc[n], a, bb[0], bb[1]);
                mma(acc[n + 1], a, bb[2], bb[3]);
            }
        }
        __syncthreads();  // every warp is done with buffer buf
        if (NB == 1 && more) {
            load_tile<BC, DT>(sk, kb, p.k.l, k0 + BC, p.lk, p.d);
            cp_async_commit();
        }
    }
    cp_async_wait_all();
    __syncthreads();
    bf16* stage = sq + warp * 16 * PITCH;
    stage_acc<DT, DN>(stage, acc, p.scale, p.scale);
    __syncwarp();
    store_rows<PITCH, DT>(dq + offset(p.dq, b, h, 0), p.dq.l, stage, q0 + warp * 16, p.lq, p.d);
}

// ----- entry points ----------------------------------------------------------------------------

#define FA_KERNEL extern "C" __global__ void __launch_bounds__(FA_THREADS)
#define FLASH(DT, BC, SPLIT)                                                                                      \
    FA_KERNEL flash_attention_d##DT##_fwd_bf16(const AttnParams p, const bf16* q, const bf16* k, const bf16* v,   \
                                                bf16* out, float* lse) {                                          \
        flash_fwd<DT, BC, 1>(p, q, k, v, out, lse);                                                               \
    }                                                                                                             \
    FA_KERNEL flash_attention_d##DT##_bwd_bf16(const AttnParams p, const bf16* q, const bf16* k, const bf16* v,   \
                                                const bf16* g, const float* lse, const float* delta, bf16* dk,    \
                                                bf16* dv, float* dk_part, float* dv_part) {                       \
        flash_dkdv<DT, SPLIT>(p, q, k, v, g, lse, delta, dk, dv, dk_part, dv_part);                               \
    }                                                                                                             \
    FA_KERNEL flash_attention_dq_d##DT##_bwd_bf16(const AttnParams p, const bf16* q, const bf16* k,               \
                                                   const bf16* v, const bf16* g, const float* lse,                \
                                                   const float* delta, bf16* dq) {                                \
        flash_dq<DT, BC>(p, q, k, v, g, lse, delta, dq);                                                          \
    }
FLASH(64, 64, 1)
FLASH(80, 64, 1)
FLASH(128, 64, 1)
FLASH(256, 32, 2)

// Forward with two row tiles per warp (128 query rows a block) for long sequences.
#define FLASH_LONG(DT, BC)                                                                                         \
    FA_KERNEL flash_attention_long_d##DT##_fwd_bf16(const AttnParams p, const bf16* q, const bf16* k,             \
                                                    const bf16* v, bf16* out, float* lse) {                       \
        flash_fwd<DT, BC, 2>(p, q, k, v, out, lse);                                                               \
    }
FLASH_LONG(64, 64)
FLASH_LONG(80, 64)
FLASH_LONG(128, 32)

extern "C" __global__ void __launch_bounds__(FA_DELTA_ROWS * WARP)
    flash_attention_delta_bwd_bf16(const AttnParams p, const bf16* o, const bf16* g, float* delta) {
    flash_delta(p, o, g, delta);
}

extern "C" __global__ void __launch_bounds__(EW_THREADS)
    flash_attention_dkdv_sum_bwd_bf16(const AttnParams p, const float* dk_part, const float* dv_part, u64 parts,
                                      bf16* dk, bf16* dv) {
    flash_dkdv_sum(p, dk_part, dv_part, (int)parts, dk, dv);
}
