//! The one launch path, and the kernels the launchers ask for.
//!
//! Every kernel is launched by [`CudaDevice::launch`]: a [`KernelId`], a [`Geometry`] (grid,
//! block, dynamic shared memory), the kernel's `#[repr(C)]` params struct by value and a fixed-size
//! array of device pointers. The argument array lives on the stack and the function comes from the
//! device's table by the kernel's index, so a launch allocates nothing and formats nothing.
//!
//! The simple kernels are named here, once, as [`KernelSet`]s (an op, a direction and the dtypes
//! the launcher may ask for), checked against the kernels registry when the engine is compiled.
//! The performance kernels come from `vlm4vla_kernels::launch`, which picks them per shape.

use super::device::{drv, CudaDevice};
use crate::{DType, Error, Result};
use cudarc::driver::result as cu;
use std::ffi::c_void;
use vlm4vla_kernels::launch::Launch;
use vlm4vla_kernels::params::{KernelParams, EW_THREADS, ROW_THREADS};
use vlm4vla_kernels::{Dtype, KernelId, OpId};

/// The most device pointers a kernel takes after its params struct.
const MAX_PTRS: usize = 11;

/// Where a kernel runs: blocks per grid, threads per block, dynamic shared memory in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
}

impl Geometry {
    /// `grid` blocks of `threads` threads, no dynamic shared memory.
    pub(crate) fn new(grid: [u32; 3], threads: u32) -> Geometry {
        Geometry { grid, block: [threads, 1, 1], smem: 0 }
    }

    /// A grid-stride elementwise launch over `n` items: [`EW_THREADS`] a block, at most 65536
    /// blocks.
    pub(crate) fn elementwise(n: usize) -> Geometry {
        let blocks = n.div_ceil(EW_THREADS as usize).clamp(1, 1 << 16) as u32;
        Geometry::new([blocks, 1, 1], EW_THREADS)
    }

    /// One block of [`ROW_THREADS`] per row (the kernels stride over rows past 65535).
    pub(crate) fn rows(rows: usize) -> Geometry {
        Geometry::new([rows.clamp(1, 65535) as u32, 1, 1], ROW_THREADS)
    }
}

impl From<&Launch> for Geometry {
    fn from(l: &Launch) -> Geometry {
        Geometry { grid: l.grid, block: l.block, smem: l.smem }
    }
}

impl CudaDevice {
    /// Launch `kernel` on this device's stream with `params` and `ptrs` as its arguments, in that
    /// order. An empty grid launches nothing. Dynamic shared memory over the 48 KiB that needs no
    /// opt-in raises the function's limit first (once per kernel and size).
    ///
    /// # Safety
    /// The kernel's parameters must be exactly `(P, u64 × N)` in this order (a params struct of
    /// the kernel's type, then device pointers or 64-bit values), every pointer must address
    /// enough memory of this device, of the dtype the kernel reads or writes there, for the
    /// geometry and params given, and that memory must stay allocated until the kernel has run
    /// (buffers freed after the call are freed in stream order, which is enough).
    pub(crate) unsafe fn launch<P: KernelParams, const N: usize>(
        &self,
        op: &'static str,
        kernel: KernelId,
        geometry: Geometry,
        params: P,
        ptrs: [u64; N],
    ) -> Result<()> {
        const { assert!(N <= MAX_PTRS, "more kernel arguments than MAX_PTRS") };
        let Geometry { grid, block, smem } = geometry;
        if grid.contains(&0) {
            return Ok(());
        }
        let f = self.func(op, kernel)?;
        self.bind(op)?;
        let (mut params, mut ptrs) = (params, ptrs);
        let mut args = [std::ptr::null_mut::<c_void>(); MAX_PTRS + 1];
        args[0] = &mut params as *mut P as *mut c_void;
        for (arg, p) in args[1..].iter_mut().zip(ptrs.iter_mut()) {
            *arg = p as *mut u64 as *mut c_void;
        }
        self.allow_smem(op, kernel, f, smem)?;
        // The driver copies the arguments before returning; `params` and `ptrs` outlive the call.
        cu::launch_kernel(
            f.0,
            (grid[0], grid[1], grid[2]),
            (block[0], block[1], block[2]),
            smem,
            self.stream(),
            &mut args[..N + 1],
        )
        .map_err(drv(op))
    }
}

// ----- the simple kernels the launchers use ------------------------------------------------------

/// The dtypes a launcher may ask one op's kernels for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dtypes {
    /// f32 and bf16 (the compute kernels).
    Float,
    /// Every CUDA dtype: f32, bf16, u8, i64 (`view.cu`).
    Any,
}

impl Dtypes {
    const fn list(self) -> &'static [Dtype] {
        match self {
            Dtypes::Float => &[Dtype::F32, Dtype::Bf16],
            Dtypes::Any => &Dtype::ALL,
        }
    }
}

/// One op's kernel in one direction, for the dtypes a launcher asks for: `UNARY_FWD.at(op, dtype)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KernelSet {
    op: OpId,
    backward: bool,
    dtypes: Dtypes,
}

impl KernelSet {
    /// Checked when the engine is compiled: the op exists and has this direction for every dtype.
    const fn new(family: &str, name: &str, backward: bool, dtypes: Dtypes) -> KernelSet {
        let op = OpId::of(family, name);
        let list = dtypes.list();
        let mut i = 0;
        while i < list.len() {
            assert!(op.has(backward, list[i]), "the registry lacks a kernel a launcher asks for");
            i += 1;
        }
        KernelSet { op, backward, dtypes }
    }

    /// The kernel for `dtype`; an error naming `op` for a dtype this set does not cover.
    pub(crate) fn at(self, op: &'static str, dtype: DType) -> Result<KernelId> {
        let d = match (dtype, self.dtypes) {
            (DType::F32, _) => Dtype::F32,
            (DType::BF16, _) => Dtype::Bf16,
            (DType::U8, Dtypes::Any) => Dtype::U8,
            (DType::I64, Dtypes::Any) => Dtype::I64,
            (other, Dtypes::Float) => return Err(Error::dtype(op, other, "CUDA kernels compute f32 and bf16")),
            (other, Dtypes::Any) => {
                return Err(Error::dtype(op, other, "not supported on CUDA (f32, bf16, u8 and i64 are)"))
            }
        };
        Ok(self.op.dir(self.backward, d))
    }
}

/// `NAME = fwd|bwd(family, op, Float|Any);` for each kernel set, and [`ALL`] listing them.
macro_rules! kernel_sets {
    ($($name:ident = $dir:ident($family:literal, $op:literal, $dtypes:ident);)*) => {
        $(pub(crate) const $name: KernelSet =
            KernelSet::new($family, $op, kernel_sets!(@dir $dir), Dtypes::$dtypes);)*
        /// Every kernel set a launcher uses.
        #[cfg(test)]
        const ALL: &[(&str, KernelSet)] = &[$((stringify!($name), $name)),*];
    };
    (@dir fwd) => { false };
    (@dir bwd) => { true };
}

kernel_sets! {
    TO_F32 = fwd("view", "to_f32", Any);
    TO_BF16 = fwd("view", "to_bf16", Any);
    TO_U8 = fwd("view", "to_u8", Any);
    TO_I64 = fwd("view", "to_i64", Any);
    CMP = fwd("view", "cmp", Any);
    WHERE_COND = fwd("view", "where_cond", Any);
    UNARY_FWD = fwd("unary", "unary", Float);
    UNARY_BWD = bwd("unary", "unary", Float);
    BINARY = fwd("binary", "binary", Float);
    BINARY_STRIDED = fwd("binary", "binary_strided", Float);
    REDUCE_FWD = fwd("reduce", "reduce", Float);
    REDUCE_BWD = bwd("reduce", "reduce", Float);
    INDEX_SELECT_FWD = fwd("index", "index_select", Float);
    INDEX_SELECT_BWD = bwd("index", "index_select", Float);
    GATHER_FWD = fwd("index", "gather", Float);
    GATHER_BWD = bwd("index", "gather", Float);
    SCATTER_ADD = fwd("index", "scatter_add", Float);
    MASKED_SCATTER_FWD = fwd("index", "masked_scatter", Float);
    MASKED_SCATTER_BWD = bwd("index", "masked_scatter", Float);
    MASK_RANK = fwd("index", "mask_rank", Float);
    SOFTMAX_FWD = fwd("norm", "softmax", Float);
    SOFTMAX_BWD = bwd("norm", "softmax", Float);
    RMS_NORM_FWD = fwd("norm", "rms_norm", Float);
    RMS_NORM_BWD = bwd("norm", "rms_norm", Float);
    LAYER_NORM_FWD = fwd("norm", "layer_norm", Float);
    LAYER_NORM_BWD = bwd("norm", "layer_norm", Float);
    L2_NORMALIZE_FWD = fwd("norm", "l2_normalize", Float);
    L2_NORMALIZE_BWD = bwd("norm", "l2_normalize", Float);
    SWIGLU_FWD = fwd("activation", "swiglu", Float);
    SWIGLU_BWD = bwd("activation", "swiglu", Float);
    GEGLU_FWD = fwd("activation", "geglu", Float);
    GEGLU_BWD = bwd("activation", "geglu", Float);
    ROPE_FWD = fwd("rope", "rope", Float);
    ROPE_BWD = bwd("rope", "rope", Float);
    ATTENTION_FWD = fwd("attention", "attention", Float);
    ATTENTION_BWD = bwd("attention", "attention", Float);
    ATTENTION_DQ = bwd("attention", "attention_dq", Float);
    CROSS_ENTROPY_FWD = fwd("loss", "cross_entropy", Float);
    CROSS_ENTROPY_BWD = bwd("loss", "cross_entropy", Float);
    PAIR_LOSS_FWD = fwd("loss", "pair_loss", Float);
    PAIR_LOSS_BWD = bwd("loss", "pair_loss", Float);
    ADAMW = fwd("optim", "adamw", Float);
    SGD = fwd("optim", "sgd", Float);
    SUM_SQ = fwd("optim", "sum_sq", Float);
    SUM_SQ_TOTAL = fwd("optim", "sum_sq_total", Float);
}

/// The conversion kernel writing `dst` (`to_{dst}_fwd_{src}`, one per source dtype).
pub(crate) fn convert_to(op: &'static str, dst: DType) -> Result<KernelSet> {
    match dst {
        DType::F32 => Ok(TO_F32),
        DType::BF16 => Ok(TO_BF16),
        DType::U8 => Ok(TO_U8),
        DType::I64 => Ok(TO_I64),
        other => Err(Error::dtype(op, other, "not supported on CUDA (f32, bf16, u8 and i64 are)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlm4vla_kernels::{kernel, FAMILIES};

    /// Every kernel a simple launcher can ask for is in the registry under the mechanical name
    /// (the performance kernels' ids are checked in `vlm4vla_kernels::launch`).
    #[test]
    fn every_requested_kernel_is_registered() {
        let mut families = std::collections::HashSet::new();
        for &(name, set) in ALL {
            for dtype in [DType::F32, DType::BF16, DType::U8, DType::I64] {
                let Ok(id) = set.at("test", dtype) else {
                    assert_eq!(set.dtypes, Dtypes::Float, "{name}: {dtype} refused");
                    continue;
                };
                let symbol = id.symbol().unwrap_or_else(|| panic!("{name}: no kernel {id}"));
                let family = id.kernel();
                assert!(family.symbols().iter().any(|s| s == symbol), "{name}: {symbol} not in {}", family.file);
                let dir = if set.backward { "bwd" } else { "fwd" };
                assert_eq!(symbol, vlm4vla_kernels::symbol(id.op.name(), set.backward, id.dtype.name()));
                assert!(symbol.contains(dir), "{name}: {symbol}");
                families.insert(family.family);
            }
        }
        // Every family but the flash kernels (chosen by vlm4vla_kernels::launch) has a simple launcher.
        let expected: Vec<&str> = FAMILIES.iter().copied().filter(|f| *f != "flash_attention").collect();
        for f in expected {
            assert!(families.contains(f), "no launcher uses {f}");
            assert!(kernel(f).is_some());
        }
        assert!(convert_to("test", DType::F64).is_err());
        assert!(UNARY_FWD.at("test", DType::I64).is_err());
    }
}
