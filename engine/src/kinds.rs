//! The ground floor: every op-kind enum, defined once, below `ops/`, `cpu/` and `cuda/` (which all
//! import from here and never from each other).
//!
//! Each kind family is one table (`kind_table!`): a row gives the variant, the op name users and
//! errors see, and the member of the kernel source's enum with its value, which is the code a CUDA
//! launch passes. `tests::kernel_codes_match_the_cuda_enums` reads `kernels/cuda/*.cu` and holds
//! every row to the source's enum, so Rust and CUDA cannot drift apart. The CPU math of a kind is
//! the one `match` in its `cpu/` file.

/// Declare an op-kind enum from its table: `Variant[(payload)] => "name", CU_MEMBER = code;`.
/// Generates the enum, `name()`, `code()` and `NAMES`/`TABLE`/`CUDA_ENUM`.
macro_rules! kind_table {
    (
        $(#[$meta:meta])*
        $vis:vis enum $Name:ident in ($file:literal, $cu_enum:literal) {
            $( $(#[$vmeta:meta])* $Var:ident $( ( $($ty:ty),* ) )? => $name:literal, $cu:ident = $code:literal; )*
        }
    ) => {
        $(#[$meta])*
        $vis enum $Name {
            $( $(#[$vmeta])* $Var $( ( $($ty),* ) )?, )*
        }

        #[allow(dead_code)]
        impl $Name {
            /// Every kind's name, in table order.
            pub const NAMES: &'static [&'static str] = &[$($name),*];
            /// The kernel source (`kernels/cuda/<file>`) and the enum there that holds the codes.
            pub(crate) const CUDA_ENUM: (&'static str, &'static str) = ($file, $cu_enum);
            /// `(name, CUDA enum member, code)` per row.
            pub(crate) const TABLE: &'static [(&'static str, &'static str, i32)] =
                &[$(($name, stringify!($cu), $code)),*];

            /// The op name (as in errors and the autograd graph).
            pub const fn name(&self) -> &'static str {
                match self {
                    $( Self::$Var { .. } => $name, )*
                }
            }

            /// The op code the kernels read (the value of the row's member of the CUDA enum).
            pub(crate) const fn code(&self) -> i32 {
                match self {
                    $( Self::$Var { .. } => $code, )*
                }
            }
        }
    };
}

kind_table! {
    /// Elementwise unary ops; `Powf`'s exponent, `Clamp`'s bounds and `Affine`'s (mul, add) travel
    /// with the kind.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(crate) enum UnaryKind in ("unary.cu", "UnaryCode") {
        Neg => "neg", U_NEG = 0;
        Exp => "exp", U_EXP = 1;
        Log => "log", U_LOG = 2;
        Sqrt => "sqrt", U_SQRT = 3;
        Rsqrt => "rsqrt", U_RSQRT = 4;
        Sqr => "sqr", U_SQR = 5;
        Recip => "recip", U_RECIP = 6;
        Powf(f64) => "powf", U_POWF = 7;
        Abs => "abs", U_ABS = 8;
        Clamp(f64, f64) => "clamp", U_CLAMP = 9;
        Affine(f64, f64) => "affine", U_AFFINE = 10;
        Sin => "sin", U_SIN = 11;
        Cos => "cos", U_COS = 12;
        Tanh => "tanh", U_TANH = 13;
        Sigmoid => "sigmoid", U_SIGMOID = 14;
        Relu => "relu", U_RELU = 15;
        Silu => "silu", U_SILU = 16;
        Gelu => "gelu", U_GELU = 17;
        GeluTanh => "gelu_tanh", U_GELU_TANH = 18;
        QuickGelu => "quick_gelu", U_QUICK_GELU = 19;
        Softplus => "softplus", U_SOFTPLUS = 20;
    }
}

impl UnaryKind {
    /// The kind's scalar arguments as the kernels read them (`a`, `b`).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn args(&self) -> (f64, f64) {
        match *self {
            UnaryKind::Powf(e) => (e, 0.0),
            UnaryKind::Clamp(lo, hi) => (lo, hi),
            UnaryKind::Affine(m, a) => (m, a),
            _ => (0.0, 0.0),
        }
    }
}

kind_table! {
    /// Elementwise binary ops on same-shape operands (broadcasting is a view below them).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum BinaryKind in ("binary.cu", "BinaryCode") {
        Add => "add", B_ADD = 0;
        Sub => "sub", B_SUB = 1;
        Mul => "mul", B_MUL = 2;
        Div => "div", B_DIV = 3;
        Maximum => "maximum", B_MAX = 4;
        Minimum => "minimum", B_MIN = 5;
    }
}

kind_table! {
    /// Elementwise comparisons; they produce u8 masks (1 where true) and are not differentiable.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum CmpKind in ("view.cu", "CmpCode") {
        Eq => "eq", C_EQ = 0;
        Ne => "ne", C_NE = 1;
        Lt => "lt", C_LT = 2;
        Le => "le", C_LE = 3;
        Gt => "gt", C_GT = 4;
        Ge => "ge", C_GE = 5;
    }
}

kind_table! {
    /// Reductions along a dim (the max/min carry their index); the CPU reduces by dedicated loops.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) enum ReduceKind in ("reduce.cu", "ReduceCode") {
        Sum => "sum", R_SUM = 0;
        Max => "max", R_MAX = 1;
        Min => "min", R_MIN = 2;
    }
}

kind_table! {
    /// The gate's activation of a gated MLP on a merged `gate|up` input.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum GateKind in ("activation.cu", "GateKind") {
        /// SwiGLU (LLaMA, Qwen).
        Silu => "swiglu", GATE_SILU = 0;
        /// GeGLU with the tanh GELU (Gemma, PaliGemma).
        GeluTanh => "geglu", GATE_GELU_TANH = 1;
    }
}

kind_table! {
    /// Which RMSNorm: `x̂·w` (Qwen, LLaMA) or Gemma's `x̂·(1 + w)` (zero-centred stored weight).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum RmsNormKind in ("norm.cu", "RmsKind") {
        Plain => "plain", RMS_PLAIN = 0;
        Gemma => "gemma", RMS_GEMMA = 1;
    }
}

kind_table! {
    /// The elementwise losses of a prediction against a target of the same shape.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(crate) enum PairKind in ("loss.cu", "PairCode") {
        Mse => "mse", P_MSE = 0;
        /// Huber with its delta.
        Huber(f64) => "huber", P_HUBER = 1;
        BceWithLogits => "bce_with_logits", P_BCE = 2;
    }
}

kind_table! {
    /// Which keys each query may see (combined with an optional key-padding mask).
    #[derive(Clone, Debug, PartialEq)]
    pub enum AttentionMask in ("common.cuh", "MaskKind") {
        /// Every query sees every key.
        Full => "full", MASK_FULL = 0;
        /// Query `i` sees keys `j ≤ i + (Lk − Lq)` (bottom-right aligned).
        Causal => "causal", MASK_CAUSAL = 1;
        /// Per batch row `b`, a prefix length `p[b]`: query `i` sees key `j` if `j ≤ i` or `j < p[b]`.
        PrefixLm(Vec<usize>) => "prefix_lm", MASK_PREFIX = 2;
        /// Block-diagonal segments given by cumulative lengths over the sequence (`[0, l1, l1+l2, …,
        /// L]`), shared by all batch rows: a query sees the keys of its own segment.
        Segments(Vec<usize>) => "segments", MASK_SEGMENTS = 3;
    }
}

/// One optimizer step's update rule for a tensor, with the step's hyper-parameters folded in
/// (the per-tensor step count enters `step_size`, `bias_correction2_sqrt` and `first`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum OptimRule {
    /// `p ← p·decay;  m ← lerp(m, g, 1 − β1);  v ← β2·v + (1 − β2)·g²;
    ///  p ← p − step_size · m / (√v / bias_correction2_sqrt + eps)` (buffers `[m, v]`).
    AdamW { decay: f64, beta1: f64, beta2: f64, eps: f64, step_size: f64, bias_correction2_sqrt: f64 },
    /// `d = g + wd·p;  b = d (first step) or μ·b + d;  p ← p − lr·b` (buffer `[b]` with momentum,
    /// none without: then `b = d`).
    Sgd { lr: f64, momentum: f64, weight_decay: f64, first: bool },
}

/// How per-element losses are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// The mean over counted elements (cross-entropy: over rows whose target is not ignored).
    Mean,
    /// The sum over all elements.
    Sum,
    /// No reduction: the per-element losses, shaped like the input (cross-entropy: `[N]`).
    None,
}

/// The problem sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AttnDims {
    pub b: usize,
    pub lq: usize,
    pub lk: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub dv: usize,
}

impl AttnDims {
    /// The sizes of q `[B, Lq, Hq, D]`, k `[B, Lk, Hkv, D]` and v `[B, Lk, Hkv, Dv]` (unchecked).
    pub(crate) fn of(q: &[usize], k: &[usize], v: &[usize]) -> AttnDims {
        AttnDims { b: q[0], lq: q[1], lk: k[1], hq: q[2], hkv: k[2], d: q[3], dv: v[3] }
    }
}

/// The resolved mask: for every (batch, query) the key range `[lo, hi)` its mask kind allows,
/// and the key-padding flags (`[B, Lk]`, true = real key) if any.
#[derive(Clone, Debug)]
pub(crate) struct KeyMask {
    pub ranges: Vec<(usize, usize)>,
    pub padding: Option<std::sync::Arc<[bool]>>,
}

impl KeyMask {
    /// Whether query `i` of batch row `b` sees key `j`.
    #[inline]
    pub(crate) fn allows(&self, dims: &AttnDims, b: usize, i: usize, j: usize) -> bool {
        let (lo, hi) = self.ranges[b * dims.lq + i];
        j >= lo && j < hi && self.padding.as_ref().is_none_or(|p| p[b * dims.lk + j])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(member, value)` of `enum NAME { A = 0, B, C = 5, ... }` in a CUDA source.
    fn c_enum(src: &str, name: &str) -> Vec<(String, i32)> {
        let pat = format!("enum {name} {{");
        let at = src.find(&pat).unwrap_or_else(|| panic!("no enum {name}")) + pat.len();
        let body = &src[at..at + src[at..].find('}').unwrap()];
        let mut next = 0;
        body.split(',')
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let (member, value) = e.split_once('=').map_or((e, None), |(m, v)| (m, Some(v)));
                let value = value.map_or(next, |v| v.trim().parse().unwrap());
                next = value + 1;
                (member.trim().to_string(), value)
            })
            .collect()
    }

    fn source(file: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/cuda").join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// A kind family's CUDA enum and its table rows.
    type Family = ((&'static str, &'static str), &'static [(&'static str, &'static str, i32)]);

    #[test]
    fn kernel_codes_match_the_cuda_enums() {
        let families: &[Family] = &[
            (UnaryKind::CUDA_ENUM, UnaryKind::TABLE),
            (BinaryKind::CUDA_ENUM, BinaryKind::TABLE),
            (CmpKind::CUDA_ENUM, CmpKind::TABLE),
            (ReduceKind::CUDA_ENUM, ReduceKind::TABLE),
            (GateKind::CUDA_ENUM, GateKind::TABLE),
            (RmsNormKind::CUDA_ENUM, RmsNormKind::TABLE),
            (PairKind::CUDA_ENUM, PairKind::TABLE),
            (AttentionMask::CUDA_ENUM, AttentionMask::TABLE),
        ];
        for &((file, name), table) in families {
            let cu = c_enum(&source(file), name);
            let rust: Vec<(String, i32)> = table.iter().map(|&(_, m, c)| (m.to_string(), c)).collect();
            assert_eq!(rust, cu, "enum {name} in {file} against its kind table");
        }
    }

    #[test]
    fn names_and_codes_come_from_the_table() {
        assert_eq!(UnaryKind::GeluTanh.code(), 18);
        assert_eq!(UnaryKind::Powf(2.0).name(), "powf");
        assert_eq!(UnaryKind::Clamp(-1.0, 1.0).args(), (-1.0, 1.0));
        assert_eq!(AttentionMask::Segments(vec![0, 2]).code(), 3);
        assert_eq!(AttentionMask::PrefixLm(vec![1]).name(), "prefix_lm");
        assert_eq!(BinaryKind::NAMES, ["add", "sub", "mul", "div", "maximum", "minimum"]);
        assert_eq!(PairKind::Huber(1.0).code(), 1);
    }
}
