//! vlm4vla's CUDA C++ kernel sources, their registry and NVRTC compilation.
//!
//! The sources live in `kernels/cuda/*.cu`, one file per op family (mirroring `engine/src/ops/`),
//! plus the self-contained prelude `common.cuh`. They are embedded into the binary, and compiled
//! once per process with NVRTC (loaded at run time, so this crate builds without CUDA) for the
//! device's architecture; results are cached by source hash + options + arch.
//!
//! Kernel symbols are built mechanically, `{op}_{fwd|bwd}_{dtype}`, from the table in
//! [`KERNELS`], and every kernel is `extern "C"` so the PTX entry carries exactly that name.
//! Callers name a kernel by [`KernelId`] (an [`OpId`] resolved from the registry at compile time,
//! a direction and a dtype), which has a fixed slot in one dense table of every kernel.
//!
//! ```
//! let norm = vlm4vla_kernels::kernel("norm").unwrap();
//! assert!(norm.symbols().contains(&"rms_norm_bwd_bf16".to_string()));
//! ```

mod compile;
mod id;
pub mod launch;
mod nvrtc;
pub mod params;
pub mod paths;

pub use compile::{
    arch_for_capability, cache_entry_stem, cache_key, compile_options, parse_ptxas, Compiled, Compiler, Resources,
};
pub use id::{KernelId, OpId, FAMILY_COUNT, KERNEL_SLOTS};
pub use nvrtc::Nvrtc;

/// The op families that have kernels, named as the engine's `ops/` files are.
pub const FAMILIES: &[&str] = &[
    "view",
    "unary",
    "binary",
    "reduce",
    "index",
    "norm",
    "activation",
    "rope",
    "attention",
    "loss",
    "optim",
    "flash_attention",
];

/// The kernel symbol for an op, direction and dtype: `{op}_{fwd|bwd}_{dtype}`.
pub fn symbol(op: &str, backward: bool, dtype: &str) -> String {
    format!("{op}_{}_{dtype}", if backward { "bwd" } else { "fwd" })
}

/// The element type a kernel is instantiated for (bf16 kernels compute in fp32). Only the `view`
/// family (copies, conversions, comparisons) has u8 and i64 instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Dtype {
    F32,
    Bf16,
    U8,
    I64,
}

impl Dtype {
    /// Every dtype, in the order of the kernel table (see [`KernelId::index`]).
    pub const ALL: [Dtype; 4] = [Dtype::F32, Dtype::Bf16, Dtype::U8, Dtype::I64];

    /// The name used in symbols.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::U8 => "u8",
            Dtype::I64 => "i64",
        }
    }
}

/// Which directions an op has kernels for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dirs {
    Fwd,
    Bwd,
    Both,
}

/// One op of a family: its name in symbols and the directions it has.
#[derive(Clone, Copy, Debug)]
pub struct KernelOp {
    pub name: &'static str,
    pub dirs: Dirs,
}

/// One family's source file and the kernels it defines.
#[derive(Debug)]
pub struct Kernel {
    pub family: &'static str,
    /// The file name, as NVRTC reports it in diagnostics.
    pub file: &'static str,
    pub source: &'static str,
    pub ops: &'static [KernelOp],
    /// Instantiated dtypes (every op of the family has all of them).
    pub dtypes: &'static [Dtype],
    /// Whether `--use_fast_math` is safe here (approximate exp/div; flushes denormals).
    pub fast_math: bool,
    /// Whether a ptxas spill in this family fails the compile check.
    pub must_not_spill: bool,
}

impl Kernel {
    /// Every symbol the source defines, built with [`symbol`].
    pub fn symbols(&self) -> Vec<String> {
        let mut out = Vec::new();
        for op in self.ops {
            let dirs: &[bool] = match op.dirs {
                Dirs::Fwd => &[false],
                Dirs::Bwd => &[true],
                Dirs::Both => &[false, true],
            };
            for &bwd in dirs {
                for d in self.dtypes {
                    out.push(symbol(op.name, bwd, d.name()));
                }
            }
        }
        out
    }
}

/// The shared prelude every kernel source includes as `"common.cuh"`.
pub const COMMON: &str = include_str!("../cuda/common.cuh");

const BOTH: &[Dtype] = &[Dtype::F32, Dtype::Bf16];
const BF16: &[Dtype] = &[Dtype::Bf16];
const EVERY: &[Dtype] = &[Dtype::F32, Dtype::Bf16, Dtype::U8, Dtype::I64];

const fn op(name: &'static str, dirs: Dirs) -> KernelOp {
    KernelOp { name, dirs }
}

macro_rules! family {
    ($family:literal, [$($op:expr),* $(,)?], fast_math: $fast:expr, must_not_spill: $spill:expr) => {
        family!($family, [$($op),*], dtypes: BOTH, fast_math: $fast, must_not_spill: $spill)
    };
    ($family:literal, [$($op:expr),* $(,)?], dtypes: $dtypes:expr, fast_math: $fast:expr, must_not_spill: $spill:expr) => {
        Kernel {
            family: $family,
            file: concat!($family, ".cu"),
            source: include_str!(concat!("../cuda/", $family, ".cu")),
            ops: &[$($op),*],
            dtypes: $dtypes,
            fast_math: $fast,
            must_not_spill: $spill,
        }
    };
}

/// Every kernel family, in [`FAMILIES`] order.
pub static KERNELS: &[Kernel] = REGISTRY;

/// The registry as a constant, so that [`OpId::of`] resolves op names at compile time.
const REGISTRY: &[Kernel] = &[
    family!(
        "view",
        [
            op("to_f32", Dirs::Fwd),
            op("to_bf16", Dirs::Fwd),
            op("to_u8", Dirs::Fwd),
            op("to_i64", Dirs::Fwd),
            op("cmp", Dirs::Fwd),
            op("where_cond", Dirs::Fwd),
        ],
        dtypes: EVERY,
        fast_math: false,
        must_not_spill: true
    ),
    family!("unary", [op("unary", Dirs::Both)], fast_math: false, must_not_spill: true),
    family!(
        "binary",
        [op("binary", Dirs::Both), op("binary_strided", Dirs::Fwd)],
        fast_math: false,
        must_not_spill: true
    ),
    family!("reduce", [op("reduce", Dirs::Both), op("argmax", Dirs::Fwd)], fast_math: false, must_not_spill: true),
    family!(
        "index",
        [
            op("index_select", Dirs::Both),
            op("gather", Dirs::Both),
            op("scatter_add", Dirs::Fwd),
            op("masked_scatter", Dirs::Both),
            op("mask_rank", Dirs::Fwd),
        ],
        fast_math: false,
        must_not_spill: true
    ),
    family!(
        "norm",
        [
            op("softmax", Dirs::Both),
            op("rms_norm", Dirs::Both),
            op("layer_norm", Dirs::Both),
            op("l2_normalize", Dirs::Both),
            op("rms_norm_rows1", Dirs::Both),
            op("rms_norm_rows2", Dirs::Both),
            op("rms_norm_rows4", Dirs::Both),
            op("rms_norm_wide1", Dirs::Both),
            op("rms_norm_wide2", Dirs::Both),
            op("rms_norm_wide4", Dirs::Both),
            op("layer_norm_rows1", Dirs::Both),
            op("layer_norm_rows2", Dirs::Both),
            op("layer_norm_rows4", Dirs::Both),
            op("layer_norm_wide1", Dirs::Both),
            op("layer_norm_wide2", Dirs::Both),
            op("layer_norm_wide4", Dirs::Both),
        ],
        fast_math: false,
        must_not_spill: true
    ),
    family!(
        "activation",
        [op("swiglu", Dirs::Both), op("geglu", Dirs::Both), op("swiglu_vec", Dirs::Both), op("geglu_vec", Dirs::Both)],
        fast_math: false,
        must_not_spill: true
    ),
    family!("rope", [op("rope", Dirs::Both), op("rope_vec", Dirs::Both)], fast_math: false, must_not_spill: true),
    family!(
        "attention",
        [op("attention", Dirs::Both), op("attention_dq", Dirs::Bwd)],
        fast_math: true,
        must_not_spill: true
    ),
    family!(
        "loss",
        [op("cross_entropy", Dirs::Both), op("pair_loss", Dirs::Both)],
        fast_math: false,
        must_not_spill: true
    ),
    family!(
        "optim",
        [op("adamw", Dirs::Fwd), op("sgd", Dirs::Fwd), op("sum_sq", Dirs::Fwd), op("sum_sq_total", Dirs::Fwd)],
        fast_math: false,
        must_not_spill: true
    ),
    // Tensor-core flash attention, bf16 only, one op per head-dim tile (see flash.rs for the
    // launch geometry): `_fwd` is the forward, `_bwd` dK/dV, `flash_attention_dq_*_bwd` dQ,
    // `flash_attention_delta_bwd` the rowsum(dO * O) preprocessing and `flash_attention_long_*_fwd`
    // the forward with 128-row blocks for long sequences.
    family!(
        "flash_attention",
        [
            op("flash_attention_d64", Dirs::Both),
            op("flash_attention_d80", Dirs::Both),
            op("flash_attention_d128", Dirs::Both),
            op("flash_attention_d256", Dirs::Both),
            op("flash_attention_dq_d64", Dirs::Bwd),
            op("flash_attention_dq_d80", Dirs::Bwd),
            op("flash_attention_dq_d128", Dirs::Bwd),
            op("flash_attention_dq_d256", Dirs::Bwd),
            op("flash_attention_delta", Dirs::Bwd),
            op("flash_attention_dkdv_sum", Dirs::Bwd),
            op("flash_attention_long_d64", Dirs::Fwd),
            op("flash_attention_long_d80", Dirs::Fwd),
            op("flash_attention_long_d128", Dirs::Fwd),
        ],
        dtypes: BF16,
        fast_math: true,
        must_not_spill: true
    ),
];

/// The kernel family named `family`, if there is one.
pub fn kernel(family: &str) -> Option<&'static Kernel> {
    KERNELS.iter().find(|k| k.family == family)
}

/// What can go wrong finding NVRTC or compiling a kernel.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("could not find {what}; tried: {}; {hint}", tried.join(", "))]
    NotFound { what: String, tried: Vec<String>, hint: &'static str },
    #[error("could not load {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("{call} failed with NVRTC status {status}: {message}")]
    Nvrtc { call: &'static str, status: i32, message: String },
    #[error("NVRTC could not compile {name} ({options}):\n{log}")]
    Compile { name: String, options: String, log: String },
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_built_mechanically() {
        assert_eq!(symbol("rms_norm", false, "bf16"), "rms_norm_fwd_bf16");
        assert_eq!(symbol("attention", true, "f32"), "attention_bwd_f32");
    }

    #[test]
    fn registry_covers_every_family_once() {
        let names: Vec<&str> = KERNELS.iter().map(|k| k.family).collect();
        assert_eq!(names, FAMILIES);
        let k = kernel("binary").unwrap();
        assert_eq!(
            k.symbols(),
            [
                "binary_fwd_f32",
                "binary_fwd_bf16",
                "binary_bwd_f32",
                "binary_bwd_bf16",
                "binary_strided_fwd_f32",
                "binary_strided_fwd_bf16"
            ]
        );
    }
}
