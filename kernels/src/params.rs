//! `#[repr(C)]` mirrors of the kernels' params structs (passed by value at launch, never copied to
//! the device) and launch-shape constants. The tests check every size against the `static_assert`
//! in the CUDA source and every constant against its `#define`, so Rust and CUDA cannot drift
//! apart silently. The op codes live with the engine's kinds (`engine/src/kinds.rs`), whose test
//! holds them to the sources' enums.
//!
//! Device pointers are `u64` (a `CUdeviceptr`); 0 means null where a kernel takes an optional
//! tensor.

/// Threads per block of the elementwise kernels (`EW_THREADS`).
pub const EW_THREADS: u32 = 256;
/// Threads per block of the row kernels, one block per row (`ROW_THREADS`).
pub const ROW_THREADS: u32 = 256;
/// Widest row the rms_norm / layer_norm forwards take (`NORM_MAX_WIDTH`).
pub const NORM_MAX_WIDTH: usize = 8192;
/// Largest rank of the strided binary kernel (`MAX_RANK`).
pub const MAX_RANK: usize = 6;
/// Warps (query rows, or keys in the dk/dv backward) per attention block (`ATT_WARPS`).
pub const ATT_WARPS: u32 = 4;
/// Largest head dim of the attention kernels (`ATT_MAX_D`).
pub const ATT_MAX_D: usize = 256;
/// Elements per block of the optimizer kernels (`OPTIM_CHUNK`).
pub const OPTIM_CHUNK: usize = 4096;

/// `unary.cu`: `a`/`b` are powf's exponent, clamp's bounds, affine's mul/add.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UnaryParams {
    pub n: i64,
    pub op: i32,
    pub a: f32,
    pub b: f32,
}

/// `binary.cu`: dims and strides (elements) are used by the strided kernel only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BinaryParams {
    pub n: i64,
    pub op: i32,
    pub rank: i32,
    pub dims: [i64; MAX_RANK],
    pub a_strides: [i64; MAX_RANK],
    pub b_strides: [i64; MAX_RANK],
    pub a_offset: i64,
    pub b_offset: i64,
}

/// `view.cu`: the logical shape `dims` and each operand's strides and offset (elements). For the
/// conversions `a` is the source and `b` the destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StridedParams {
    pub n: i64,
    pub op: i32,
    pub rank: i32,
    pub dims: [i64; MAX_RANK],
    pub a_strides: [i64; MAX_RANK],
    pub b_strides: [i64; MAX_RANK],
    pub a_offset: i64,
    pub b_offset: i64,
}

/// `reduce.cu`: the input viewed as `[outer, len, inner]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReduceParams {
    pub outer: i64,
    pub len: i64,
    pub inner: i64,
    pub op: i32,
    pub pad: i32,
}

/// `index.cu`: source `[outer, src_len, inner]`, indexed side `[outer, idx_len, inner]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IndexParams {
    pub outer: i64,
    pub src_len: i64,
    pub idx_len: i64,
    pub inner: i64,
    pub n: i64,
}

/// `norm.cu`: `flag` is 1 for log_softmax, the [`RMS_KINDS`] code for rms_norm.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NormParams {
    pub rows: i64,
    pub width: i64,
    pub eps: f32,
    pub flag: i32,
}

/// `activation.cu`: x is `[rows, 2f]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GateParams {
    pub rows: i64,
    pub f: i64,
}

/// `rope.cu`: x is `[b, l, h, d]`; tables `[l, d]`, or `[b, l, d]` when `batched` is 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RopeParams {
    pub b: i64,
    pub l: i64,
    pub h: i64,
    pub d: i64,
    pub batched: i32,
    pub pad: i32,
}

/// Batch, head and sequence strides of one attention tensor, in elements.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Strides {
    pub b: i64,
    pub h: i64,
    pub l: i64,
}

/// `attention.cu`. `mask_data`: prefix lengths `[B]` or cumulative segment lengths
/// `[n_segments + 1]` (i64, device); `key_padding`: `[B, Lk]` u8, 1 = real key, or 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttnParams {
    pub q: Strides,
    pub k: Strides,
    pub v: Strides,
    pub o: Strides,
    pub g: Strides,
    pub dq: Strides,
    pub dk: Strides,
    pub dv: Strides,
    pub mask_data: u64,
    pub key_padding: u64,
    pub b: i32,
    pub hq: i32,
    pub hkv: i32,
    pub lq: i32,
    pub lk: i32,
    pub d: i32,
    pub dv_dim: i32,
    pub mask: i32,
    pub n_segments: i32,
    pub scale: f32,
}

/// `loss.cu`: `g_stride` is 0 for a single upstream gradient, 1 for one per row/element.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LossParams {
    pub n: i64,
    pub c: i64,
    pub ignore: i64,
    pub g_stride: i64,
    pub scale: f32,
    pub delta: f32,
    pub op: i32,
    pub pad: i32,
}

/// One tensor of the optimizer's device-resident table (`optim.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OptimSlot {
    pub p: u64,
    pub g: u64,
    pub m: u64,
    pub v: u64,
    pub copy: u64,
    pub n: i64,
}

/// `optim.cu`: `slots` and `chunk_start` are device pointers to the tables; `clip_sum_sq` the
/// device address of the gradients' sum of squares to clip by (0: no clipping). For SGD `beta1`
/// is the momentum; for `sum_sq_total` `n_slots` is the number of partial sums.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OptimParams {
    pub slots: u64,
    pub chunk_start: u64,
    pub clip_sum_sq: u64,
    pub n_slots: i32,
    pub first: i32,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub max_norm: f32,
}

/// A params struct a kernel takes by value as its first argument.
///
/// # Safety
/// The type is `#[repr(C)]` plain data whose layout matches the struct of the same name in the
/// CUDA source (the tests below check every size against its `static_assert`).
pub unsafe trait KernelParams: Copy + 'static {}

// SAFETY: each is a #[repr(C)] mirror of its CUDA struct, sizes checked by
// `params_sizes_match_the_cuda_static_asserts`.
unsafe impl KernelParams for UnaryParams {}
// SAFETY: as above.
unsafe impl KernelParams for BinaryParams {}
// SAFETY: as above.
unsafe impl KernelParams for StridedParams {}
// SAFETY: as above.
unsafe impl KernelParams for ReduceParams {}
// SAFETY: as above.
unsafe impl KernelParams for IndexParams {}
// SAFETY: as above.
unsafe impl KernelParams for NormParams {}
// SAFETY: as above.
unsafe impl KernelParams for GateParams {}
// SAFETY: as above.
unsafe impl KernelParams for RopeParams {}
// SAFETY: as above.
unsafe impl KernelParams for AttnParams {}
// SAFETY: as above.
unsafe impl KernelParams for LossParams {}
// SAFETY: as above.
unsafe impl KernelParams for OptimParams {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kernel, COMMON};
    use std::mem::size_of;

    /// A family's source, or the shared prelude for `"common"`.
    fn source(family: &str) -> &'static str {
        if family == "common" {
            return crate::COMMON;
        }
        kernel(family).map(|k| k.source).unwrap_or_else(|| panic!("no family {family}"))
    }

    /// The N of `static_assert(sizeof(name) == N` in `src`.
    fn c_size(src: &str, name: &str) -> usize {
        let pat = format!("static_assert(sizeof({name}) == ");
        let at = src.find(&pat).unwrap_or_else(|| panic!("no static_assert for {name}")) + pat.len();
        src[at..].split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).unwrap()
    }

    /// The value of `#define name value` in `src`.
    fn c_define(src: &str, name: &str) -> String {
        let pat = format!("#define {name} ");
        let line = src.lines().find(|l| l.starts_with(&pat)).unwrap_or_else(|| panic!("no #define {name}"));
        line[pat.len()..].split("//").next().unwrap_or("").trim().to_string()
    }

    #[test]
    fn params_sizes_match_the_cuda_static_asserts() {
        let cases: &[(&str, &str, usize)] = &[
            ("view", "StridedParams", size_of::<StridedParams>()),
            ("unary", "UnaryParams", size_of::<UnaryParams>()),
            ("binary", "BinaryParams", size_of::<BinaryParams>()),
            ("reduce", "ReduceParams", size_of::<ReduceParams>()),
            ("index", "IndexParams", size_of::<IndexParams>()),
            ("norm", "NormParams", size_of::<NormParams>()),
            ("activation", "GateParams", size_of::<GateParams>()),
            ("rope", "RopeParams", size_of::<RopeParams>()),
            ("common", "AttnParams", size_of::<AttnParams>()),
            ("loss", "LossParams", size_of::<LossParams>()),
            ("optim", "OptimSlot", size_of::<OptimSlot>()),
            ("optim", "OptimParams", size_of::<OptimParams>()),
        ];
        for &(family, name, rust) in cases {
            assert_eq!(c_size(source(family), name), rust, "{name} in {family}.cu");
        }
    }

    #[test]
    fn constants_match_the_cuda_defines() {
        assert_eq!(c_define(COMMON, "EW_THREADS"), EW_THREADS.to_string());
        assert_eq!(c_define(COMMON, "ROW_THREADS"), ROW_THREADS.to_string());
        assert_eq!(c_define(source("binary"), "MAX_RANK"), MAX_RANK.to_string());
        assert_eq!(c_define(source("view"), "MAX_RANK"), MAX_RANK.to_string());
        assert_eq!(c_define(source("attention"), "ATT_WARPS"), ATT_WARPS.to_string());
        assert_eq!(c_define(source("attention"), "ATT_MAX_D"), ATT_MAX_D.to_string());
        assert_eq!(c_define(source("optim"), "OPTIM_CHUNK"), OPTIM_CHUNK.to_string());
        let per_thread: usize = c_define(source("norm"), "NORM_PER_THREAD").parse().unwrap();
        assert_eq!(per_thread * ROW_THREADS as usize, NORM_MAX_WIDTH);
    }
}
