//! vlm4vla's CUDA C++ kernel sources, their registry and NVRTC compilation.
//!
//! The sources will live in `kernels/cuda/*.cu` (one file per op family, mirroring
//! `engine/src/ops/`), embedded into the binary and compiled once per process for the device's
//! architecture. The CUDA backend issue fills this crate in; until then it only names the op
//! families the kernels will cover, so the engine and the kernels cannot drift apart silently.

/// The op families that will have kernels, named as the engine's `ops/` files are.
pub const FAMILIES: &[&str] =
    &["unary", "binary", "reduce", "index", "norm", "activation", "rope", "attention", "loss", "optim"];

/// The kernel symbol for an op, direction and dtype: `{op}_{fwd|bwd}_{dtype}`.
pub fn symbol(op: &str, backward: bool, dtype: &str) -> String {
    format!("{op}_{}_{dtype}", if backward { "bwd" } else { "fwd" })
}

#[cfg(test)]
mod tests {
    #[test]
    fn symbols_are_built_mechanically() {
        assert_eq!(super::symbol("rms_norm", false, "bf16"), "rms_norm_fwd_bf16");
        assert_eq!(super::symbol("attention", true, "f32"), "attention_bwd_f32");
    }
}
