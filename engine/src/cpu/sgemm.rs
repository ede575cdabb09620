//! Our own f32 GEMM for CPUs with AVX-512: `C = [C +] s · A B` with arbitrary strides on A and
//! B and a row-major C.
//!
//! The `gemm` crate runs only its AVX2 kernels on stable Rust, half of what an AVX-512 core with
//! two FMA units can do; this file is the AVX-512 path, the crate stays the fallback (and the f64
//! path). The structure is the classic one (Goto; BLIS):
//!
//! - the K dimension in blocks of [`KC`], N in blocks of [`NC`], M in blocks of [`MC`];
//! - each `KC × NC` block of B packed once into `NR`-wide column panels (`KC × NR`, row by row;
//!   a column-major B, the transposed weight of a Linear, by 16-lane gathers), edges padded with
//!   zeros, so the microkernel reads B sequentially whatever its strides;
//! - A read in place when it is row-major, or column-major with short columns (the kernel
//!   broadcasts its elements straight from memory), else packed into `MR`-tall row panels; a
//!   partial last panel is always packed;
//! - the microkernel keeps an `MR × NR` tile of C (12 × 32: 24 of the 32 zmm registers) in
//!   registers for the whole `KC` loop: per `k`, two vector loads of B, twelve broadcasts of A,
//!   twenty-four FMAs; a partial tile at an edge goes through a small buffer.
//!
//! Threads split the larger of M and N into contiguous parts (multiples of the tile), each part a
//! whole GEMM with its own packing buffers; every element of C is summed in the same order
//! whatever the split, so results do not depend on the thread count.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Rows of the register tile.
const MR: usize = 12;
/// Columns of the register tile (two zmm vectors).
const NR: usize = 32;
/// Depth of a packed block. 512 measured faster in the training step than 256 (the C tile is
/// read and written half as often) and than 384 or 768.
const KC: usize = 512;
/// Rows of a packed A block (`MC × KC`, 384 KiB, stays in L2).
const MC: usize = 16 * MR;
/// Columns of a packed B block.
const NC: usize = 64 * NR;
/// The longest column stride (in floats) at which a column-major A is read in place.
const COLS_IN_PLACE_MAX: usize = 512;
/// Below this many multiply-adds a GEMM runs on the calling thread.
const PARALLEL_MIN_MADDS: usize = 1 << 20;

/// Whether this CPU runs the AVX-512 path (and `VLM4VLA_SGEMM=gemm` does not turn it off).
pub(crate) fn available() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("VLM4VLA_SGEMM").is_ok_and(|v| v == "gemm");
        #[cfg(target_arch = "x86_64")]
        let has = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        has && !off
    })
}

/// A strided matrix operand: element `(i, j)` at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

/// `c` (`m × n`, row stride `c_rs`, unit column stride) `= [c +] scale · a b` with `a` `m × k`
/// and `b` `k × n`. `accumulate` keeps what `c` holds (else it is overwritten, never read).
/// `parallel` lets the GEMM use the rayon pool when it is large enough.
///
/// # Safety
/// [`available`] returned true; every element of `a`, `b` and `c` the shapes and strides address
/// is valid (for reads; `c` for writes too, and not aliased by `a` or `b`).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    a: Mat,
    b: Mat,
    c: *mut f32,
    c_rs: usize,
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::ptr::write_bytes(c.add(i * c_rs), 0, n);
            }
        }
        return;
    }
    let threads = if parallel && m * n * k >= PARALLEL_MIN_MADDS { super::threads::count() } else { 1 };
    // Splitting M has every thread pack all of B; splitting N has every thread read all of A,
    // which costs nothing more when A is read in place (row-major). So N is split when it is the
    // larger, or when A is row-major and N has at least two panels per thread.
    let split_n = n >= m || (a.cs == 1 && n.div_ceil(NR) >= 2 * threads);
    let c = SendPtr(c);
    let (a, b) = (SendMat(a), SendMat(b));
    let (len, tile) = if split_n { (n, NR) } else { (m, MR) };
    let tiles = len.div_ceil(tile);
    let parts = threads.min(tiles).max(1);
    if parts == 1 {
        serial((m, n, k), a.0, b.0, c.0, c_rs, accumulate, scale);
        return;
    }
    // One part per thread.
    let part = |t0: usize, t1: usize| {
        let (lo, hi) = (t0 * tile, (t1 * tile).min(len));
        let (a, b, c) = (a.get(), b.get(), c.get());
        // SAFETY: the parts cover disjoint columns (or rows) of C; the operands are only read.
        unsafe {
            if split_n {
                let bp = Mat { ptr: b.ptr.add(lo * b.cs), ..b };
                serial((m, hi - lo, k), a, bp, c.add(lo), c_rs, accumulate, scale);
            } else {
                let ap = Mat { ptr: a.ptr.add(lo * a.rs), ..a };
                serial((hi - lo, n, k), ap, b, c.add(lo * c_rs), c_rs, accumulate, scale);
            }
        }
    };
    super::threads::run(parts, &|p| part(tiles * p / parts, tiles * (p + 1) / parts));
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: each thread writes a disjoint region (see `sgemm`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

#[derive(Clone, Copy)]
struct SendMat(Mat);

impl SendMat {
    fn get(&self) -> Mat {
        self.0
    }
}
// SAFETY: operands are only read.
unsafe impl Send for SendMat {}
unsafe impl Sync for SendMat {}

thread_local! {
    /// Per-thread packing buffers (A block, B block), reused across calls.
    static PACK: RefCell<(AlignedBuf, AlignedBuf)> = RefCell::new((AlignedBuf::default(), AlignedBuf::default()));
}

/// A growable f32 buffer whose slice starts on a 64-byte boundary.
#[derive(Default)]
struct AlignedBuf {
    raw: Vec<f32>,
}

impl AlignedBuf {
    fn get(&mut self, len: usize) -> &mut [f32] {
        if self.raw.len() < len + 16 {
            self.raw = vec![0.0; len + 16];
        }
        let off = self.raw.as_ptr().align_offset(64).min(15);
        &mut self.raw[off..off + len]
    }
}

/// One thread's GEMM (see [`sgemm`]).
unsafe fn serial(
    (m, n, k): (usize, usize, usize),
    a: Mat,
    b: Mat,
    c: *mut f32,
    c_rs: usize,
    accumulate: bool,
    scale: f32,
) {
    PACK.with(|bufs| {
        let mut bufs = bufs.borrow_mut();
        let (abuf, bbuf) = &mut *bufs;
        let ap = abuf.get(MC.min(m.next_multiple_of(MR)) * KC).as_mut_ptr();
        let bp = bbuf.get(NC.min(n.next_multiple_of(NR)) * KC).as_mut_ptr();
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let acc = accumulate || pc > 0;
                pack_b(kc, nc, Mat { ptr: b.ptr.add(pc * b.rs + jc * b.cs), ..b }, bp);
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    let ablk = Mat { ptr: a.ptr.add(ic * a.rs + pc * a.cs), ..a };
                    // A row-major, or column-major with short columns or few B panels to reuse it
                    // over: the kernel reads full panels in place; only a partial last panel is
                    // packed (zero rows past the edge). Otherwise a long column stride (often a
                    // power of two) maps the K loop's steps onto a few cache sets: pack.
                    let in_place = a.cs == 1 || (a.rs == 1 && (a.cs <= COLS_IN_PLACE_MAX || nc <= 2 * NR));
                    let full = if in_place { mc / MR * MR } else { 0 };
                    if full < mc {
                        pack_a(mc - full, kc, Mat { ptr: ablk.ptr.add(full * a.rs), ..a }, ap);
                    }
                    for jr in (0..nc).step_by(NR) {
                        let nr = NR.min(nc - jr);
                        let bpan = bp.add(jr * kc);
                        for ir in (0..mc).step_by(MR) {
                            let mr = MR.min(mc - ir);
                            let apan = if ir < full {
                                Mat { ptr: ablk.ptr.add(ir * a.rs), ..a }
                            } else {
                                Mat { ptr: ap.add((ir - full) * kc), rs: 1, cs: MR }
                            };
                            let cpt = c.add((ic + ir) * c_rs + jc + jr);
                            tile(kc, apan, bpan, cpt, c_rs, mr, nr, acc, scale);
                        }
                    }
                }
            }
        }
    });
}

/// Pack `mc × kc` of A into `MR`-row panels: panel `p`, depth `l` holds rows `p·MR..` at column
/// `l`, contiguous (`MR` floats), rows past `mc` zero.
unsafe fn pack_a(mc: usize, kc: usize, a: Mat, dst: *mut f32) {
    for (p, i0) in (0..mc).step_by(MR).enumerate() {
        let rows = MR.min(mc - i0);
        let panel = dst.add(p * MR * kc);
        if a.cs == 1 {
            // Row-major A: read each row sequentially.
            for i in 0..rows {
                let src = a.ptr.add((i0 + i) * a.rs);
                for l in 0..kc {
                    *panel.add(l * MR + i) = *src.add(l);
                }
            }
        } else if a.rs == 1 && rows == MR {
            pack_a_columns(kc, Mat { ptr: a.ptr.add(i0), ..a }, panel);
        } else {
            for l in 0..kc {
                let src = a.ptr.add(l * a.cs + i0 * a.rs);
                for i in 0..rows {
                    *panel.add(l * MR + i) = *src.add(i * a.rs);
                }
            }
        }
        for i in rows..MR {
            for l in 0..kc {
                *panel.add(l * MR + i) = 0.0;
            }
        }
    }
}

/// One full `MR × kc` panel of a column-major A (`a.rs = 1`): each depth's `MR` floats are
/// contiguous, one masked vector copy.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_a_columns(kc: usize, a: Mat, panel: *mut f32) {
    const MASK: __mmask16 = (1 << MR) - 1;
    for l in 0..kc {
        let v = _mm512_maskz_loadu_ps(MASK, a.ptr.add(l * a.cs));
        _mm512_mask_storeu_ps(panel.add(l * MR), MASK, v);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_a_columns(_: usize, _: Mat, _: *mut f32) {
    unreachable!("sgemm::available() is false off x86_64")
}

/// Pack `kc × nc` of B into `NR`-column panels: panel `p`, depth `l` holds columns `p·NR..`,
/// contiguous (`NR` floats), columns past `nc` zero.
unsafe fn pack_b(kc: usize, nc: usize, b: Mat, dst: *mut f32) {
    for (p, j0) in (0..nc).step_by(NR).enumerate() {
        let cols = NR.min(nc - j0);
        let panel = dst.add(p * NR * kc);
        if b.cs == 1 {
            if cols == NR {
                pack_b_rows(kc, Mat { ptr: b.ptr.add(j0), ..b }, panel);
                continue;
            }
            for l in 0..kc {
                let src = b.ptr.add(l * b.rs + j0);
                let row = panel.add(l * NR);
                std::ptr::copy_nonoverlapping(src, row, cols);
                std::ptr::write_bytes(row.add(cols), 0, NR - cols);
            }
        } else {
            if b.rs == 1 && cols == NR && b.cs * NR < i32::MAX as usize {
                pack_b_columns(kc, Mat { ptr: b.ptr.add(j0 * b.cs), ..b }, panel);
                continue;
            }
            // Strided B: read each column sequentially.
            for j in 0..cols {
                let src = b.ptr.add((j0 + j) * b.cs);
                for l in 0..kc {
                    *panel.add(l * NR + j) = *src.add(l * b.rs);
                }
            }
            for l in 0..kc {
                std::ptr::write_bytes(panel.add(l * NR + cols), 0, NR - cols);
            }
        }
    }
}

/// One full `kc × NR` panel of a row-major B (`b.cs = 1`): each row of the panel is two vector
/// copies (a `memcpy` call per 128 bytes cost more than the copy).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_b_rows(kc: usize, b: Mat, panel: *mut f32) {
    for l in 0..kc {
        let src = b.ptr.add(l * b.rs);
        _mm512_storeu_ps(panel.add(l * NR), _mm512_loadu_ps(src));
        _mm512_storeu_ps(panel.add(l * NR + 16), _mm512_loadu_ps(src.add(16)));
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_b_rows(_: usize, _: Mat, _: *mut f32) {
    unreachable!("sgemm::available() is false off x86_64")
}

/// One full `kc × NR` panel of a column-major B (`b.rs = 1`): each row of the panel is two
/// 16-lane gathers across the columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_b_columns(kc: usize, b: Mat, panel: *mut f32) {
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(b.cs as i32),
    );
    for l in 0..kc {
        let src = b.ptr.add(l);
        let lo = _mm512_i32gather_ps::<4>(idx, src.cast());
        let hi = _mm512_i32gather_ps::<4>(idx, src.add(16 * b.cs).cast());
        _mm512_storeu_ps(panel.add(l * NR), lo);
        _mm512_storeu_ps(panel.add(l * NR + 16), hi);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_b_columns(_: usize, _: Mat, _: *mut f32) {
    unreachable!("sgemm::available() is false off x86_64")
}

/// One `mr × nr` tile of C; a partial tile computes the full tile into a buffer and copies the
/// valid part. `a` is a packed panel (`cs = MR`, `rs = 1`) or read in place (unit `rs` or `cs`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile(
    kc: usize,
    a: Mat,
    b: *const f32,
    c: *mut f32,
    c_rs: usize,
    mr: usize,
    nr: usize,
    acc: bool,
    scale: f32,
) {
    let run = |c: *mut f32, c_rs: usize, acc: bool| {
        if a.rs == 1 && a.cs == MR {
            kernel::<PACKED>(kc, a, b, c, c_rs, acc, scale)
        } else if a.cs == 1 {
            kernel::<ROWS>(kc, a, b, c, c_rs, acc, scale)
        } else {
            kernel::<COLS>(kc, a, b, c, c_rs, acc, scale)
        }
    };
    if mr == MR && nr == NR {
        run(c, c_rs, acc);
        return;
    }
    let mut buf = [0.0f32; MR * NR];
    run(buf.as_mut_ptr(), NR, false);
    for i in 0..mr {
        let (src, dst) = (buf.as_ptr().add(i * NR), c.add(i * c_rs));
        for j in 0..nr {
            *dst.add(j) = if acc { *dst.add(j) + *src.add(j) } else { *src.add(j) };
        }
    }
}

/// How the kernel reads A: a packed panel (`rs = 1`, `cs = MR`), or MR rows of a row-major
/// (`cs = 1`) or column-major (`rs = 1`) matrix in place.
const PACKED: u8 = 0;
const ROWS: u8 = 1;
const COLS: u8 = 2;

/// The register tile: `c[0..MR, 0..NR] = [c +] scale · Σ_l a[l] ⊗ b[l]` over `kc` steps of the
/// packed B panel, A read as [`PACKED`], [`ROWS`] or [`COLS`] says.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const A: u8>(kc: usize, a: Mat, b: *const f32, c: *mut f32, c_rs: usize, acc: bool, scale: f32) {
    let (a_rs, a_cs) = match A {
        PACKED => (1, MR),
        ROWS => (a.rs, 1),
        _ => (1, a.cs),
    };
    // The C tile is read (or written) only after the K loop: ask for its lines now.
    for i in 0..MR {
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * c_rs).cast());
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * c_rs + 16).cast());
    }
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    let (mut ap, mut b) = (a.ptr, b);
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        for i in 0..MR {
            let ai = _mm512_set1_ps(*ap.add(i * a_rs));
            lo[i] = _mm512_fmadd_ps(ai, b0, lo[i]);
            hi[i] = _mm512_fmadd_ps(ai, b1, hi[i]);
        }
        ap = ap.add(a_cs);
        b = b.add(NR);
    }
    let s = _mm512_set1_ps(scale);
    for i in 0..MR {
        let row = c.add(i * c_rs);
        let (mut x, mut y) = (lo[i], hi[i]);
        if scale != 1.0 {
            x = _mm512_mul_ps(x, s);
            y = _mm512_mul_ps(y, s);
        }
        if acc {
            x = _mm512_add_ps(_mm512_loadu_ps(row), x);
            y = _mm512_add_ps(_mm512_loadu_ps(row.add(16)), y);
        }
        _mm512_storeu_ps(row, x);
        _mm512_storeu_ps(row.add(16), y);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel<const A: u8>(_: usize, _: Mat, _: *const f32, _: *mut f32, _: usize, _: bool, _: f32) {
    unreachable!("sgemm::available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: the naive triple loop in f64.
    fn naive(
        (m, n, k): (usize, usize, usize),
        (a, ars, acs): (&[f32], usize, usize),
        (b, brs, bcs): (&[f32], usize, usize),
    ) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    c[i * n + j] += a[i * ars + l * acs] as f64 * b[l * brs + j * bcs] as f64;
                }
            }
        }
        c
    }

    #[test]
    fn matches_the_naive_product_over_edges_strides_and_blocks() {
        if !available() {
            return;
        }
        let mut seed = 1u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for &(m, n, k) in &[
            (1, 1, 1),
            (13, 33, 7),
            (12, 32, 256),
            (25, 70, 300),
            (200, 65, 513),
            (3, 2100, 9),
            (250, 40, 33),
            (602, 70, 20),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
                let (ars, acs) = if ta { (1, m) } else { (k, 1) };
                let (brs, bcs) = if tb { (1, k) } else { (n, 1) };
                let want = naive((m, n, k), (&a, ars, acs), (&b, brs, bcs));
                for (acc, par) in [(false, false), (true, true)] {
                    let init: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
                    let mut c = if acc { init.clone() } else { vec![f32::NAN; m * n] };
                    unsafe {
                        sgemm(
                            (m, n, k),
                            Mat { ptr: a.as_ptr(), rs: ars, cs: acs },
                            Mat { ptr: b.as_ptr(), rs: brs, cs: bcs },
                            c.as_mut_ptr(),
                            n,
                            acc,
                            0.5,
                            par,
                        );
                    }
                    for i in 0..m * n {
                        let w = 0.5 * want[i] + if acc { init[i] as f64 } else { 0.0 };
                        let tol = 1e-5 * (k as f64).sqrt() * 4.0 + 1e-6;
                        assert!(
                            (c[i] as f64 - w).abs() <= tol,
                            "{m}x{n}x{k} ta={ta} tb={tb} acc={acc}: [{i}] {} vs {w}",
                            c[i]
                        );
                    }
                }
            }
        }
    }
}
