//! Launch geometry of the performance kernels (`flash_attention.cu`, and the 16-byte vectorised
//! `*_rows` / `*_wide` norms, `*_vec` gated activations and rope): for a shape, the kernel (a
//! [`KernelId`]), grid, block and dynamic shared memory, after checking that the kernel takes the
//! shape (head dim, alignment, widths); pure Rust, so it is unit-tested without a GPU.
//!
//! The engine's CUDA backend calls these and launches the result; a shape a kernel does not take
//! is an [`Error::Invalid`] naming the kernel and the shape, and the engine then uses the simple
//! kernel instead (see [`flash_supported`]).
//!
//! ```
//! use vlm4vla_kernels::launch::{flash_fwd, FlashShape};
//! let s = FlashShape { b: 16, hq: 16, hkv: 16, lq: 257, lk: 257, d: 64, dv: 64, strides_aligned: true };
//! let l = flash_fwd(&s).unwrap();
//! assert_eq!(l.kernel.symbol(), Some("flash_attention_d64_fwd_bf16"));
//! assert_eq!(l.grid, [5, 256, 1]);
//! assert_eq!(l.block, [128, 1, 1]);
//! ```

use crate::params::{AttnParams, EW_THREADS, NORM_MAX_WIDTH, ROW_THREADS};
use crate::{Dtype, Error, KernelId, OpId};

/// A kernel launch: the kernel, grid, block, dynamic shared memory in bytes. Kernels whose `smem`
/// is over 48 KiB need `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` raised to it first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub kernel: KernelId,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
}

/// The largest dynamic shared memory that needs no opt-in.
pub const SMEM_DEFAULT_LIMIT: u32 = 48 * 1024;

/// Threads per flash-attention block (`FA_THREADS`).
pub const FA_THREADS: u32 = 128;
/// Query rows per forward / dq block (`FA_BR`).
pub const FA_BR: usize = 64;
/// Keys per dK/dV block (`FA_BWD_BC`).
pub const FA_BWD_BC: usize = 64;
/// Query rows per dK/dV step (`FA_BWD_BR`).
pub const FA_BWD_BR: usize = 32;
/// Rows (warps) per block of the delta kernel (`FA_DELTA_ROWS`).
pub const FA_DELTA_ROWS: usize = 8;
/// The head-dim tiles, each with its own kernels (`FLASH(DT, ...)` in the source).
pub const FA_TILES: &[usize] = &[64, 80, 128, 256];

const fn flash_op(name: &str) -> OpId {
    OpId::of("flash_attention", name)
}

/// Per tile of [`FA_TILES`]: the forward / dK-dV kernels, the dQ kernels and the 128-row forward
/// (no 256 tile).
const FLASH: [OpId; 4] = [
    flash_op("flash_attention_d64"),
    flash_op("flash_attention_d80"),
    flash_op("flash_attention_d128"),
    flash_op("flash_attention_d256"),
];
const FLASH_DQ: [OpId; 4] = [
    flash_op("flash_attention_dq_d64"),
    flash_op("flash_attention_dq_d80"),
    flash_op("flash_attention_dq_d128"),
    flash_op("flash_attention_dq_d256"),
];
const FLASH_LONG: [OpId; 3] =
    [flash_op("flash_attention_long_d64"), flash_op("flash_attention_long_d80"), flash_op("flash_attention_long_d128")];
const FLASH_DELTA: OpId = flash_op("flash_attention_delta");
const FLASH_DKDV_SUM: OpId = flash_op("flash_attention_dkdv_sum");

/// The position of head-dim tile `tile` in [`FA_TILES`].
fn tile_index(tile: usize) -> usize {
    FA_TILES.iter().position(|&t| t == tile).unwrap_or(0)
}

/// What the flash kernels need to know about an attention call. `strides_aligned`: every
/// (batch, head, seq) stride of q, k, v, out, dOut, dq, dk, dv is a multiple of 8 elements and
/// every base pointer is 16-byte aligned (see [`strides_aligned`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashShape {
    pub b: usize,
    pub hq: usize,
    pub hkv: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    pub dv: usize,
    pub strides_aligned: bool,
}

impl FlashShape {
    /// The shape of `p`; `ptrs` are the device addresses of the tensors the launch uses.
    pub fn from_params(p: &AttnParams, ptrs: &[u64]) -> FlashShape {
        FlashShape {
            b: p.b.max(0) as usize,
            hq: p.hq.max(0) as usize,
            hkv: p.hkv.max(0) as usize,
            lq: p.lq.max(0) as usize,
            lk: p.lk.max(0) as usize,
            d: p.d.max(0) as usize,
            dv: p.dv_dim.max(0) as usize,
            strides_aligned: strides_aligned(p, ptrs),
        }
    }
}

/// Whether every stride in `p` is a multiple of 8 elements (16 bytes of bf16) and every pointer in
/// `ptrs` is 16-byte aligned.
pub fn strides_aligned(p: &AttnParams, ptrs: &[u64]) -> bool {
    let s = [p.q, p.k, p.v, p.o, p.g, p.dq, p.dk, p.dv];
    s.iter().all(|s| s.b % 8 == 0 && s.h % 8 == 0 && s.l % 8 == 0) && ptrs.iter().all(|&a| a % 16 == 0)
}

/// The head-dim tile for head dim `d` (the smallest tile that holds it), if any.
pub fn flash_tile(d: usize) -> Option<usize> {
    if d == 0 || !d.is_multiple_of(8) {
        return None;
    }
    FA_TILES.iter().copied().find(|&t| t >= d)
}

/// Keys per forward / dq key tile for a head-dim tile (`BC` in `FLASH(DT, BC, SPLIT)`).
pub fn flash_bc(tile: usize) -> usize {
    if tile > 128 {
        32
    } else {
        64
    }
}

/// Column splits of the dK/dV kernel (`SPLIT` in `FLASH(DT, BC, SPLIT)`).
pub fn flash_split(tile: usize) -> usize {
    if tile > 128 {
        2
    } else {
        1
    }
}

/// The head-dim tile, or why the flash kernels do not take `s`.
pub fn flash_check(s: &FlashShape) -> Result<usize, Error> {
    let bad = |why: String| Err(Error::Invalid(format!("flash_attention does not take {s:?}: {why}")));
    if s.d != s.dv {
        return bad(format!("head dim of q/k ({}) differs from v's ({})", s.d, s.dv));
    }
    let Some(tile) = flash_tile(s.d) else {
        return bad(format!("head dim {} is not a multiple of 8 in 8..=256", s.d));
    };
    if s.hkv == 0 || !s.hq.is_multiple_of(s.hkv) {
        return bad(format!("{} query heads are not a multiple of {} kv heads", s.hq, s.hkv));
    }
    if !s.strides_aligned {
        return bad("strides must be multiples of 8 elements and pointers 16-byte aligned".into());
    }
    let grid_y = s.b * s.hq;
    if grid_y > 65535 || s.lq > i32::MAX as usize || s.lk > i32::MAX as usize {
        return bad("batch x heads over 65535 or a sequence over i32".into());
    }
    Ok(tile)
}

/// Whether the flash kernels take `s` (else the engine runs the simple `attention.cu`).
pub fn flash_supported(s: &FlashShape) -> bool {
    flash_check(s).is_ok()
}

fn tile_bytes(rows: usize, tile: usize) -> usize {
    rows * (tile + 8) * 2
}

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

/// Query rows from which the forward uses the 128-row blocks (`flash_attention_long_*`, head-dim
/// tiles up to 128): each K / V fragment then feeds two row tiles; below it the 64-row blocks
/// waste fewer rows on short sequences.
pub const FA_LONG_MIN_LQ: usize = 1024;

/// `flash_attention_dDT_fwd_bf16(p, q, k, v, out, lse)`, or `flash_attention_long_dDT_fwd_bf16`
/// for long sequences (from [`FA_LONG_MIN_LQ`] query rows).
pub fn flash_fwd(s: &FlashShape) -> Result<Launch, Error> {
    flash_fwd_with(s, FA_LONG_MIN_LQ)
}

/// [`flash_fwd`] with the 128-row blocks from `long_min_lq` query rows (`usize::MAX`: never).
pub fn flash_fwd_with(s: &FlashShape, long_min_lq: usize) -> Result<Launch, Error> {
    let tile = flash_check(s)?;
    if s.lq >= long_min_lq && tile <= 128 {
        let (rows, bc) = (2 * FA_BR, if tile == 128 { 32 } else { 64 });
        return Ok(Launch {
            kernel: FLASH_LONG[tile_index(tile)].fwd(Dtype::Bf16),
            grid: [blocks(s.lq, rows), (s.b * s.hq) as u32, 1],
            block: [FA_THREADS, 1, 1],
            smem: tile_bytes(rows + 2 * bc, tile) as u32,
        });
    }
    let smem = tile_bytes(FA_BR + 2 * flash_bc(tile), tile);
    Ok(Launch {
        kernel: FLASH[tile_index(tile)].fwd(Dtype::Bf16),
        grid: [blocks(s.lq, FA_BR), (s.b * s.hq) as u32, 1],
        block: [FA_THREADS, 1, 1],
        smem: smem as u32,
    })
}

/// `flash_attention_delta_bwd_bf16(p, out, g, delta)`: run first in the backward.
pub fn flash_delta(s: &FlashShape) -> Result<Launch, Error> {
    flash_check(s)?;
    Ok(Launch {
        kernel: FLASH_DELTA.bwd(Dtype::Bf16),
        grid: [blocks(s.b * s.hq * s.lq, FA_DELTA_ROWS), 1, 1],
        block: [(FA_DELTA_ROWS * 32) as u32, 1, 1],
        smem: 0,
    })
}

/// The dK/dV grid the launcher aims for (two blocks on each of an H100's 132 SMs): below it, the
/// query heads of a kv group are split over blocks.
pub const FA_DKDV_MIN_BLOCKS: usize = 264;

/// The dK/dV launch and, when the kv groups' query heads are split over `head_parts` blocks, the
/// sum of their fp32 partials (`partial_elems` floats each for dK and dV).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlashDkDv {
    /// `flash_attention_dDT_bwd_bf16(p, q, k, v, g, lse, delta, dk, dv, dk_part, dv_part)`: the
    /// partial pointers are 0 when `head_parts` is 1.
    pub launch: Launch,
    pub head_parts: usize,
    /// `flash_attention_dkdv_sum_bwd_bf16(p, dk_part, dv_part, head_parts as u64, dk, dv)`, run
    /// after it when `head_parts` > 1.
    pub sum: Option<Launch>,
    pub partial_elems: usize,
}

/// dK and dV, splitting each kv group's query heads over blocks (a power of two dividing the
/// group) until the grid has `min_blocks` blocks (e.g. [`FA_DKDV_MIN_BLOCKS`]).
pub fn flash_dkdv(s: &FlashShape, min_blocks: usize) -> Result<FlashDkDv, Error> {
    let tile = flash_check(s)?;
    // K and V tiles, two buffers of (Q, dO) tiles (one at DT 256), two buffers of 4 per-row words.
    let buffers = if tile <= 128 { 2 } else { 1 };
    let smem = tile_bytes(2 * FA_BWD_BC + 2 * buffers * FA_BWD_BR, tile) + 2 * 4 * 4 * FA_BWD_BR;
    let split = flash_split(tile);
    let base = s.lk.div_ceil(FA_BWD_BC).max(1) * s.b * s.hkv * split;
    let group = s.hq / s.hkv;
    let mut parts = 1;
    while base * parts < min_blocks && parts * 2 <= group && group.is_multiple_of(parts * 2) {
        parts *= 2;
    }
    let partial_elems = parts * s.b * s.hkv * s.lk * s.d;
    Ok(FlashDkDv {
        launch: Launch {
            kernel: FLASH[tile_index(tile)].bwd(Dtype::Bf16),
            grid: [blocks(s.lk, FA_BWD_BC), (s.b * s.hkv) as u32, (split * parts) as u32],
            block: [FA_THREADS, 1, 1],
            smem: smem as u32,
        },
        head_parts: parts,
        sum: (parts > 1).then(|| Launch {
            kernel: FLASH_DKDV_SUM.bwd(Dtype::Bf16),
            grid: [blocks(s.b * s.hkv * s.lk * s.d / 8, EW_THREADS as usize).min(1 << 16), 1, 1],
            block: [EW_THREADS, 1, 1],
            smem: 0,
        }),
        partial_elems: if parts > 1 { partial_elems } else { 0 },
    })
}

/// `flash_attention_dq_dDT_bwd_bf16(p, q, k, v, g, lse, delta, dq)`.
pub fn flash_dq(s: &FlashShape) -> Result<Launch, Error> {
    let tile = flash_check(s)?;
    // Q and dO tiles, two buffers of (K, V) tiles (one at DT 256).
    let buffers = if tile <= 128 { 2 } else { 1 };
    let smem = tile_bytes(2 * FA_BR + 2 * buffers * flash_bc(tile), tile);
    Ok(Launch {
        kernel: FLASH_DQ[tile_index(tile)].bwd(Dtype::Bf16),
        grid: [blocks(s.lq, FA_BR), (s.b * s.hq) as u32, 1],
        block: [FA_THREADS, 1, 1],
        smem: smem as u32,
    })
}

/// Values per 16-byte vector of `dtype`.
pub fn vector_len(dtype: Dtype) -> usize {
    match dtype {
        Dtype::F32 => 4,
        Dtype::Bf16 => 8,
        Dtype::U8 => 16,
        Dtype::I64 => 2,
    }
}

const fn norm_op(name: &str) -> OpId {
    OpId::of("norm", name)
}

/// The vectorised norms: [rms_norm, layer_norm] x [warp rows, block rows] x V = 1, 2, 4.
const NORM_VEC: [[[OpId; 3]; 2]; 2] = [
    [
        [norm_op("rms_norm_rows1"), norm_op("rms_norm_rows2"), norm_op("rms_norm_rows4")],
        [norm_op("rms_norm_wide1"), norm_op("rms_norm_wide2"), norm_op("rms_norm_wide4")],
    ],
    [
        [norm_op("layer_norm_rows1"), norm_op("layer_norm_rows2"), norm_op("layer_norm_rows4")],
        [norm_op("layer_norm_wide1"), norm_op("layer_norm_wide2"), norm_op("layer_norm_wide4")],
    ],
];

const SWIGLU_VEC: OpId = OpId::of("activation", "swiglu_vec");
const GEGLU_VEC: OpId = OpId::of("activation", "geglu_vec");

/// Vectors per thread of the widest vectorised norm variants (`NORM_VEC_MAX_V`); the variants
/// hold V = 1, 2 or 4 vectors per thread.
pub const NORM_VEC_MAX_V: usize = 4;

/// A vectorised norm launch and the rows of its backward's parameter-gradient partials, fp32
/// `[partials, width]` (= the grid, as for the simple kernels; summed by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormLaunch {
    pub launch: Launch,
    pub partials: usize,
}

/// `rms_norm_{rows|wide}{V}_{fwd|bwd}_{dtype}` (`op` = "rms_norm") or `layer_norm_...` (`op` =
/// "layer_norm") for `rows` x `width`: a warp per row while a warp holds the row in at most 2
/// vectors per lane (512 bf16), else a block per row, with the fewest vectors per thread V in
/// {1, 2, 4} that hold it (registers, and so occupancy, follow V: the block-per-row kernel at
/// V 1 beats a warp per row at V 4, whose backward needs about 200 registers). `max_blocks` caps the grid (the rows loop is grid-stride), e.g. a few
/// blocks per SM for the backward so that its partials stay small. The caller checks that every
/// pointer is 16-byte aligned; the width must be a multiple of the vector.
pub fn norm_vec(
    op: &str,
    backward: bool,
    dtype: Dtype,
    rows: usize,
    width: usize,
    max_blocks: usize,
) -> Result<NormLaunch, Error> {
    let n = vector_len(dtype);
    if op != "rms_norm" && op != "layer_norm" {
        return Err(Error::Invalid(format!("norm_vec: no vectorised kernel for {op}")));
    }
    let max_width = (ROW_THREADS as usize * NORM_VEC_MAX_V * n).min(NORM_MAX_WIDTH);
    if width == 0 || !width.is_multiple_of(n) || width > max_width {
        return Err(Error::Invalid(format!(
            "{op}: width {width} must be a multiple of {n} in 1..={max_width} for the vectorised kernel"
        )));
    }
    let vectors = width / n;
    let warp_rows = vectors <= 32 * 2;
    let threads = if warp_rows { 32 } else { ROW_THREADS as usize };
    let v = [1, 2, 4].into_iter().find(|&v| threads * v >= vectors).unwrap_or(NORM_VEC_MAX_V);
    let rows_per_block = if warp_rows { (ROW_THREADS / 32) as usize } else { 1 };
    let grid = rows.div_ceil(rows_per_block).clamp(1, max_blocks.max(1));
    let family = if op == "rms_norm" { &NORM_VEC[0] } else { &NORM_VEC[1] };
    let by_v = if warp_rows { &family[0] } else { &family[1] };
    let kernel = by_v[v.trailing_zeros() as usize].dir(backward, dtype);
    Ok(NormLaunch {
        launch: Launch { kernel, grid: [grid as u32, 1, 1], block: [ROW_THREADS, 1, 1], smem: 0 },
        partials: grid,
    })
}

/// Grid of a grid-stride elementwise kernel over `n` items: enough blocks to fill the chip
/// (`max_blocks`, e.g. 8 per SM) without one block per item.
fn ew_grid(n: usize, max_blocks: usize) -> u32 {
    n.div_ceil(EW_THREADS as usize).clamp(1, max_blocks.max(1)) as u32
}

/// `swiglu_vec_*` / `geglu_vec_*` (`op` = "swiglu" | "geglu") for x `[rows, 2f]`.
pub fn gate_vec(
    op: &str,
    backward: bool,
    dtype: Dtype,
    rows: usize,
    f: usize,
    max_blocks: usize,
) -> Result<Launch, Error> {
    let n = vector_len(dtype);
    if op != "swiglu" && op != "geglu" {
        return Err(Error::Invalid(format!("gate_vec: no vectorised kernel for {op}")));
    }
    if f == 0 || !f.is_multiple_of(n) {
        return Err(Error::Invalid(format!("{op}: width {f} must be a multiple of {n} for the vectorised kernel")));
    }
    Ok(Launch {
        kernel: if op == "swiglu" { SWIGLU_VEC } else { GEGLU_VEC }.dir(backward, dtype),
        grid: [ew_grid(rows * f / n, max_blocks), 1, 1],
        block: [EW_THREADS, 1, 1],
        smem: 0,
    })
}

/// `rope_vec_*` for x `[b, l, h, d]`: d / 2 must be a multiple of the vector (d = 72 is not for
/// bf16: it runs the scalar `rope`).
pub fn rope_vec(backward: bool, dtype: Dtype, rows: usize, d: usize, max_blocks: usize) -> Result<Launch, Error> {
    let n = vector_len(dtype);
    if d == 0 || !d.is_multiple_of(2 * n) {
        return Err(Error::Invalid(format!(
            "rope: head dim {d} must be a multiple of {} for the vectorised kernel",
            2 * n
        )));
    }
    Ok(Launch {
        kernel: OpId::of("rope", "rope_vec").dir(backward, dtype),
        grid: [ew_grid(rows * d / 2 / n, max_blocks), 1, 1],
        block: [EW_THREADS, 1, 1],
        smem: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel;

    fn shape(d: usize) -> FlashShape {
        FlashShape { b: 2, hq: 8, hkv: 2, lq: 100, lk: 130, d, dv: d, strides_aligned: true }
    }

    fn c_define(src: &str, name: &str) -> String {
        let pat = format!("#define {name} ");
        let line = src.lines().find(|l| l.starts_with(&pat)).unwrap_or_else(|| panic!("no #define {name}"));
        line[pat.len()..].split("//").next().unwrap_or("").trim().to_string()
    }

    #[test]
    fn constants_match_the_source() {
        let src = kernel("flash_attention").unwrap().source;
        assert_eq!(c_define(src, "FA_BR"), FA_BR.to_string());
        assert_eq!(c_define(src, "FA_BWD_BC"), FA_BWD_BC.to_string());
        assert_eq!(c_define(src, "FA_BWD_BR"), FA_BWD_BR.to_string());
        assert_eq!(c_define(src, "FA_DELTA_ROWS"), FA_DELTA_ROWS.to_string());
        assert_eq!(c_define(src, "FA_WARPS").parse::<u32>().unwrap() * 32, FA_THREADS);
        // Each tile's instantiation says its BC and SPLIT as the helpers do.
        for &t in FA_TILES {
            let inst = format!("FLASH({t}, {}, {})", flash_bc(t), flash_split(t));
            assert!(src.contains(&inst), "{inst} in flash_attention.cu");
        }
        for (t, bc) in [(64, 64), (80, 64), (128, 32)] {
            assert!(src.contains(&format!("FLASH_LONG({t}, {bc})")), "FLASH_LONG({t}, {bc})");
        }
    }

    #[test]
    fn tiles_cover_the_backbone_head_dims() {
        assert_eq!(flash_tile(64), Some(64));
        assert_eq!(flash_tile(72), Some(80));
        assert_eq!(flash_tile(80), Some(80));
        assert_eq!(flash_tile(96), Some(128));
        assert_eq!(flash_tile(128), Some(128));
        assert_eq!(flash_tile(256), Some(256));
        assert_eq!(flash_tile(32), Some(64));
        assert_eq!(flash_tile(260), None);
        assert_eq!(flash_tile(70), None);
        assert_eq!(flash_tile(0), None);
    }

    #[test]
    fn every_symbol_is_registered() {
        let syms = kernel("flash_attention").unwrap().symbols();
        for d in [64, 72, 80, 128, 256] {
            let s = shape(d);
            let kv = flash_dkdv(&s, 1 << 20).unwrap();
            assert!(kv.head_parts > 1);
            let sum = kv.sum.unwrap();
            for l in [flash_fwd(&s).unwrap(), flash_delta(&s).unwrap(), kv.launch, sum, flash_dq(&s).unwrap()] {
                assert!(l.kernel.symbol().is_some() && syms.contains(&l.kernel.to_string()), "{} registered", l.kernel);
            }
        }
    }

    #[test]
    fn grids_and_shared_memory() {
        let s = shape(128);
        let f = flash_fwd(&s).unwrap();
        assert_eq!((f.grid, f.block, f.smem), ([2, 16, 1], [128, 1, 1], 192 * 136 * 2));
        let kv = flash_dkdv(&s, 1).unwrap();
        assert_eq!((kv.launch.grid, kv.head_parts, kv.sum.is_none()), ([3, 4, 1], 1, true));
        assert_eq!(kv.launch.smem, 256 * 136 * 2 + 1024);
        // 12 blocks, groups of 4 query heads: split in 4 to reach 40 blocks (no further: 4 | 4).
        let kv = flash_dkdv(&s, 40).unwrap();
        assert_eq!((kv.launch.grid, kv.head_parts), ([3, 4, 4], 4));
        assert_eq!(kv.partial_elems, 4 * 2 * 2 * 130 * 128);
        assert_eq!(kv.sum.unwrap().grid, [(2 * 2 * 130 * 128usize / 8).div_ceil(256) as u32, 1, 1]);
        let dq = flash_dq(&s).unwrap();
        assert_eq!((dq.grid, dq.smem), ([2, 16, 1], 384 * 136 * 2));
        let dl = flash_delta(&s).unwrap();
        assert_eq!((dl.grid, dl.block), ([200, 1, 1], [256, 1, 1]));
        let mut long = shape(128);
        long.lq = 2048;
        let f = flash_fwd(&long).unwrap();
        assert_eq!(f.kernel.to_string(), "flash_attention_long_d128_fwd_bf16");
        assert_eq!((f.grid, f.smem), ([16, 16, 1], 192 * 136 * 2));
        assert!(kernel("flash_attention").unwrap().symbols().contains(&f.kernel.to_string()));
        assert_eq!(flash_fwd_with(&long, usize::MAX).unwrap().kernel.to_string(), "flash_attention_d128_fwd_bf16");
        long.d = 256;
        long.dv = 256;
        assert_eq!(flash_fwd(&long).unwrap().kernel.to_string(), "flash_attention_d256_fwd_bf16");
        let s256 = shape(256);
        assert_eq!(flash_dkdv(&s256, 1).unwrap().launch.grid, [3, 4, 2]);
        assert_eq!(flash_dkdv(&s256, 48).unwrap().launch.grid, [3, 4, 4]);
        // Empty problems launch nothing and never split.
        let empty = FlashShape { b: 0, hq: 0, ..shape(64) };
        assert_eq!(flash_dkdv(&empty, 264).unwrap().head_parts, 1);
        assert_eq!(flash_fwd(&s256).unwrap().smem, 128 * 264 * 2);
        assert_eq!(flash_dq(&s256).unwrap().smem, (128 + 64) * 264 * 2);
        assert_eq!(flash_dkdv(&s256, 1).unwrap().launch.smem, (128 + 64) * 264 * 2 + 1024);
        // Every variant fits the 227 KiB an H100 block may opt into (163 KiB on A100).
        for d in [64, 80, 128, 256] {
            for l in [flash_fwd(&shape(d)), flash_dkdv(&shape(d), 1).map(|k| k.launch), flash_dq(&shape(d))] {
                assert!(l.unwrap().smem <= 163 * 1024);
            }
        }
    }

    #[test]
    fn unsupported_shapes_are_errors() {
        let mut s = shape(64);
        s.dv = 32;
        assert!(flash_fwd(&s).unwrap_err().to_string().contains("differs"));
        let mut s = shape(64);
        s.hkv = 3;
        assert!(!flash_supported(&s));
        let mut s = shape(64);
        s.strides_aligned = false;
        assert!(flash_dq(&s).is_err());
        assert!(flash_fwd(&shape(100)).is_err());
    }

    #[test]
    fn vectorised_norms_pick_warp_or_block_rows() {
        let src = kernel("norm").unwrap().source;
        assert_eq!(c_define(src, "NORM_VEC_MAX_V"), NORM_VEC_MAX_V.to_string());
        let norm = kernel("norm").unwrap().symbols();
        let sym = |op, bwd, dt, w| norm_vec(op, bwd, dt, 100, w, 1 << 20).unwrap().launch.kernel.to_string();
        // (width, variant) for bf16: a warp holds up to 1024, a block up to 8192.
        for (w, v) in [
            (8, "rows1"),
            (256, "rows1"),
            (264, "rows2"),
            (512, "rows2"),
            (520, "wide1"),
            (1024, "wide1"),
            (1152, "wide1"),
            (2048, "wide1"),
            (3072, "wide2"),
            (4104, "wide4"),
            (8192, "wide4"),
        ] {
            let s = sym("rms_norm", false, Dtype::Bf16, w);
            assert_eq!(s, format!("rms_norm_{v}_fwd_bf16"), "width {w}");
            assert!(norm.contains(&s));
        }
        assert_eq!(sym("layer_norm", true, Dtype::F32, 4096), "layer_norm_wide4_bwd_f32");
        let l = norm_vec("rms_norm", false, Dtype::Bf16, 4000, 1152, 1 << 20).unwrap();
        assert_eq!((l.launch.grid[0], l.partials), (4000, 4000));
        let l = norm_vec("layer_norm", true, Dtype::Bf16, 4000, 512, 264).unwrap();
        assert_eq!(l.launch.kernel.to_string(), "layer_norm_rows2_bwd_bf16");
        assert_eq!((l.launch.grid[0], l.partials), (264, 264));
        assert_eq!(norm_vec("rms_norm", false, Dtype::Bf16, 3, 1000, 100).unwrap().launch.grid[0], 3);
        assert_eq!(norm_vec("rms_norm", false, Dtype::Bf16, 9, 496, 100).unwrap().launch.grid[0], 2);
        assert!(norm_vec("rms_norm", false, Dtype::Bf16, 3, 8200, 100).is_err());
        assert!(norm_vec("rms_norm", false, Dtype::Bf16, 3, 1020, 100).is_err());
        assert!(norm_vec("rms_norm", false, Dtype::F32, 3, 1020, 100).is_ok());
        assert!(norm_vec("rms_norm", false, Dtype::F32, 3, 8192, 100).is_err());
        assert_eq!(sym("rms_norm", false, Dtype::F32, 512), "rms_norm_wide1_fwd_f32");
        assert!(norm_vec("softmax", false, Dtype::F32, 3, 1024, 100).is_err());
    }

    #[test]
    fn vectorised_elementwise_kernels() {
        let act = kernel("activation").unwrap().symbols();
        let l = gate_vec("swiglu", true, Dtype::Bf16, 1600, 11008, 1056).unwrap();
        assert!(act.contains(&l.kernel.to_string()));
        assert_eq!(l.grid[0], 1056);
        assert_eq!(gate_vec("geglu", false, Dtype::Bf16, 2, 16, 1056).unwrap().grid[0], 1);
        assert!(gate_vec("geglu", false, Dtype::Bf16, 2, 20, 1056).is_err());
        let rope = kernel("rope").unwrap().symbols();
        let l = rope_vec(false, Dtype::Bf16, 16 * 256 * 16, 80, 1 << 20).unwrap();
        assert!(rope.contains(&l.kernel.to_string()));
        assert_eq!(l.grid[0], (16 * 256 * 16 * 5usize).div_ceil(256) as u32);
        assert!(rope_vec(false, Dtype::Bf16, 10, 72, 1056).is_err());
        assert!(rope_vec(false, Dtype::F32, 10, 72, 1056).is_ok());
    }

    #[test]
    fn alignment_from_params() {
        let mut p = AttnParams { d: 80, dv_dim: 80, b: 1, hq: 2, hkv: 1, lq: 5, lk: 5, ..Default::default() };
        let st = crate::params::Strides { b: 800, h: 400, l: 80 };
        (p.q, p.k, p.v, p.o, p.g, p.dq, p.dk, p.dv) = (st, st, st, st, st, st, st, st);
        assert!(FlashShape::from_params(&p, &[0x1000, 0x2010]).strides_aligned);
        assert!(!FlashShape::from_params(&p, &[0x1008]).strides_aligned);
        p.k.l = 84;
        assert!(!FlashShape::from_params(&p, &[]).strides_aligned);
    }
}
