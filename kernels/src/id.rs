//! Kernel ids: every (family, op, direction, dtype) the registry can name, as a small `Copy` value
//! with a fixed position in one dense table. A launcher finds its loaded function by that position
//! (no string building, no map, no lock), and op names are resolved by [`OpId::of`] when the crate
//! that names them is compiled, so a misspelt or removed op fails the build.
//!
//! ```
//! use vlm4vla_kernels::{Dtype, OpId};
//! const RMS_NORM: OpId = OpId::of("norm", "rms_norm");
//! let k = RMS_NORM.bwd(Dtype::Bf16);
//! assert_eq!(k.symbol(), Some("rms_norm_bwd_bf16"));
//! assert_eq!(RMS_NORM.fwd(Dtype::I64).symbol(), None); // norm.cu has no i64 instance
//! ```

use crate::{symbol, Dirs, Dtype, Kernel, KERNELS, REGISTRY};
use std::sync::OnceLock;

/// The number of kernel families.
pub const FAMILY_COUNT: usize = REGISTRY.len();

/// Table slots per op: two directions times every dtype.
const PER_OP: usize = 2 * Dtype::ALL.len();

/// The first slot of each family in the dense table (and the table's size last).
const FAMILY_BASE: [usize; FAMILY_COUNT + 1] = {
    let mut base = [0; FAMILY_COUNT + 1];
    let mut f = 0;
    while f < FAMILY_COUNT {
        base[f + 1] = base[f] + REGISTRY[f].ops.len() * PER_OP;
        f += 1;
    }
    base
};

/// The size of the dense kernel table: every (family, op, direction, dtype), instantiated or not.
pub const KERNEL_SLOTS: usize = FAMILY_BASE[FAMILY_COUNT];

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// One op of one kernel family (e.g. `rms_norm` of `norm.cu`), by position in the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId {
    family: u8,
    op: u8,
}

impl OpId {
    /// The op `name` of `family`. A `const fn`: used in a constant, an unknown name fails the
    /// build (called at run time it panics).
    pub const fn of(family: &str, name: &str) -> OpId {
        let mut f = 0;
        while f < REGISTRY.len() {
            if str_eq(REGISTRY[f].family, family) {
                let ops = REGISTRY[f].ops;
                let mut o = 0;
                while o < ops.len() {
                    if str_eq(ops[o].name, name) {
                        return OpId { family: f as u8, op: o as u8 };
                    }
                    o += 1;
                }
                panic!("OpId::of: the kernel family has no op of that name");
            }
            f += 1;
        }
        panic!("OpId::of: no kernel family of that name");
    }

    /// The forward kernel for `dtype`.
    pub const fn fwd(self, dtype: Dtype) -> KernelId {
        KernelId { op: self, backward: false, dtype }
    }

    /// The backward kernel for `dtype`.
    pub const fn bwd(self, dtype: Dtype) -> KernelId {
        KernelId { op: self, backward: true, dtype }
    }

    /// The kernel of direction `backward` for `dtype`.
    pub const fn dir(self, backward: bool, dtype: Dtype) -> KernelId {
        KernelId { op: self, backward, dtype }
    }

    /// The family's position in [`KERNELS`] (and in [`crate::FAMILIES`]).
    pub const fn family_index(self) -> usize {
        self.family as usize
    }

    /// The family's registry entry.
    pub fn kernel(self) -> &'static Kernel {
        &KERNELS[self.family as usize]
    }

    /// The op's name in symbols.
    pub fn name(self) -> &'static str {
        self.kernel().ops[self.op as usize].name
    }

    /// Whether the family instantiates this op in direction `backward` for `dtype`.
    pub const fn has(self, backward: bool, dtype: Dtype) -> bool {
        let k = &REGISTRY[self.family as usize];
        let dir_ok = match k.ops[self.op as usize].dirs {
            Dirs::Fwd => !backward,
            Dirs::Bwd => backward,
            Dirs::Both => true,
        };
        let mut i = 0;
        while i < k.dtypes.len() {
            if k.dtypes[i] as u8 == dtype as u8 {
                return dir_ok;
            }
            i += 1;
        }
        false
    }
}

/// One kernel entry point: an op, a direction and a dtype. Its symbol is `{op}_{fwd|bwd}_{dtype}`
/// ([`symbol`]); [`index`](Self::index) is its slot in a table of [`KERNEL_SLOTS`] entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelId {
    pub op: OpId,
    pub backward: bool,
    pub dtype: Dtype,
}

impl KernelId {
    /// The slot of this kernel in the dense table (below [`KERNEL_SLOTS`]).
    pub const fn index(self) -> usize {
        FAMILY_BASE[self.op.family as usize]
            + self.op.op as usize * PER_OP
            + self.backward as usize * Dtype::ALL.len()
            + self.dtype as usize
    }

    /// Whether the registry instantiates this kernel (its direction and dtype exist).
    pub const fn exists(self) -> bool {
        self.op.has(self.backward, self.dtype)
    }

    /// The kernel's symbol, None when the registry does not instantiate it. Built once per
    /// process for the whole table; afterwards a lookup is an index.
    pub fn symbol(self) -> Option<&'static str> {
        symbols()[self.index()].as_deref()
    }

    /// The family's registry entry.
    pub fn kernel(self) -> &'static Kernel {
        self.op.kernel()
    }
}

impl std::fmt::Display for KernelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&symbol(self.op.name(), self.backward, self.dtype.name()))
    }
}

/// The symbol of every slot of the dense table (None where nothing is instantiated).
fn symbols() -> &'static [Option<String>] {
    static TABLE: OnceLock<Vec<Option<String>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![None; KERNEL_SLOTS];
        for (f, k) in KERNELS.iter().enumerate() {
            for o in 0..k.ops.len() {
                let op = OpId { family: f as u8, op: o as u8 };
                for backward in [false, true] {
                    for dtype in Dtype::ALL {
                        let id = op.dir(backward, dtype);
                        if id.exists() {
                            table[id.index()] = Some(symbol(op.name(), backward, dtype.name()));
                        }
                    }
                }
            }
        }
        table
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FAMILIES;
    use std::collections::HashSet;

    /// Every instantiated kernel of every family, through the ids.
    fn every_id() -> Vec<KernelId> {
        let mut out = Vec::new();
        for (f, k) in KERNELS.iter().enumerate() {
            for o in 0..k.ops.len() {
                for backward in [false, true] {
                    for dtype in Dtype::ALL {
                        let id = OpId { family: f as u8, op: o as u8 }.dir(backward, dtype);
                        if id.exists() {
                            out.push(id);
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_table_holds_exactly_the_registry_symbols() {
        let from_ids: Vec<&str> = every_id().into_iter().map(|id| id.symbol().unwrap()).collect();
        let from_registry: Vec<String> = KERNELS.iter().flat_map(|k| k.symbols()).collect();
        let a: HashSet<&str> = from_ids.iter().copied().collect();
        let b: HashSet<&str> = from_registry.iter().map(String::as_str).collect();
        assert_eq!(a, b);
        assert_eq!(from_ids.len(), from_registry.len(), "no symbol twice");
        let slots: HashSet<usize> = every_id().into_iter().map(KernelId::index).collect();
        assert_eq!(slots.len(), from_ids.len(), "distinct slots");
        assert!(slots.iter().all(|&s| s < KERNEL_SLOTS));
        assert_eq!(FAMILY_COUNT, FAMILIES.len());
    }

    #[test]
    fn ids_name_their_symbols() {
        const LONG: OpId = OpId::of("flash_attention", "flash_attention_long_d128");
        assert_eq!(LONG.fwd(Dtype::Bf16).symbol(), Some("flash_attention_long_d128_fwd_bf16"));
        assert_eq!(LONG.bwd(Dtype::Bf16).symbol(), None);
        assert_eq!(LONG.fwd(Dtype::F32).symbol(), None);
        assert_eq!(LONG.fwd(Dtype::F32).to_string(), "flash_attention_long_d128_fwd_f32");
        let to_u8 = OpId::of("view", "to_u8");
        assert_eq!(to_u8.fwd(Dtype::I64).symbol(), Some("to_u8_fwd_i64"));
        assert_eq!(to_u8.kernel().family, "view");
        assert_eq!(to_u8.family_index(), 0);
        assert!(OpId::of("optim", "adamw").fwd(Dtype::F32).exists());
        assert!(!OpId::of("optim", "adamw").bwd(Dtype::F32).exists());
    }

    #[test]
    #[should_panic(expected = "no op of that name")]
    fn unknown_ops_panic() {
        let _ = OpId::of("norm", "rms_nrom");
    }
}
