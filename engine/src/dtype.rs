//! Element types. Few on purpose: f32/bf16 compute, f16 for checkpoints that store it, f64 on the
//! CPU for gradchecks, i64 for ids and indices, u8 for pixels and masks.

use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    U8,
    I64,
    F16,
    BF16,
    F32,
    F64,
}

impl DType {
    pub const ALL: [DType; 6] = [DType::U8, DType::I64, DType::F16, DType::BF16, DType::F32, DType::F64];

    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// The dtype CPU kernels compute in: f64 stays f64, every other float computes in f32.
    pub fn compute(self) -> DType {
        match self {
            DType::F64 => DType::F64,
            _ => DType::F32,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::I64 => "i64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }

    /// The safetensors name of this dtype.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::U8 => "U8",
            DType::I64 => "I64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "u8" => DType::U8,
            "i64" => DType::I64,
            "f16" | "float16" => DType::F16,
            "bf16" | "bfloat16" => DType::BF16,
            "f32" | "float32" => DType::F32,
            "f64" | "float64" => DType::F64,
            other => return Err(format!("unknown dtype `{other}` (expected u8, i64, f16, bf16, f32 or f64)")),
        })
    }
}

/// A Rust element type that a tensor can hold.
pub trait WithDType:
    Copy + Send + Sync + 'static + std::fmt::Debug + PartialOrd + bytemuck::Pod + crate::storage::StorageElem
{
    const DTYPE: DType;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

macro_rules! with_dtype {
    ($t:ty, $dt:ident, $from:expr, $to:expr) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$dt;
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            fn to_f64(self) -> f64 {
                $to(self)
            }
        }
    };
}
with_dtype!(u8, U8, |v: f64| v as u8, |v: u8| v as f64);
with_dtype!(i64, I64, |v: f64| v as i64, |v: i64| v as f64);
with_dtype!(f16, F16, f16::from_f64, f16::to_f64);
with_dtype!(bf16, BF16, bf16::from_f64, bf16::to_f64);
with_dtype!(f32, F32, |v: f64| v as f32, |v: f32| v as f64);
with_dtype!(f64, F64, |v: f64| v, |v: f64| v);

/// The two types CPU kernels compute in.
pub trait Float:
    WithDType
    + num_like::NumLike
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
    + std::iter::Sum
{
}
impl Float for f32 {}
impl Float for f64 {}

/// The math functions the CPU kernels need, for f32 and f64.
pub mod num_like {
    pub trait NumLike: Sized {
        const ZERO: Self;
        const ONE: Self;
        const NEG_INFINITY: Self;
        fn c(v: f64) -> Self;
        fn exp(self) -> Self;
        fn ln(self) -> Self;
        fn ln_1p(self) -> Self;
        fn sqrt(self) -> Self;
        fn powf(self, e: Self) -> Self;
        fn abs(self) -> Self;
        fn sin(self) -> Self;
        fn cos(self) -> Self;
        fn tanh(self) -> Self;
        fn erf(self) -> Self;
        fn max(self, o: Self) -> Self;
        fn min(self, o: Self) -> Self;
        fn is_finite(&self) -> bool;
        fn is_nan(&self) -> bool;
    }

    macro_rules! num_like {
        ($t:ty, $erf:path, $tanh:path) => {
            impl NumLike for $t {
                const ZERO: Self = 0.0;
                const ONE: Self = 1.0;
                const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
                #[inline(always)]
                fn c(v: f64) -> Self {
                    v as $t
                }
                #[inline(always)]
                fn exp(self) -> Self {
                    <$t>::exp(self)
                }
                #[inline(always)]
                fn ln(self) -> Self {
                    <$t>::ln(self)
                }
                #[inline(always)]
                fn ln_1p(self) -> Self {
                    <$t>::ln_1p(self)
                }
                #[inline(always)]
                fn sqrt(self) -> Self {
                    <$t>::sqrt(self)
                }
                #[inline(always)]
                fn powf(self, e: Self) -> Self {
                    <$t>::powf(self, e)
                }
                #[inline(always)]
                fn abs(self) -> Self {
                    <$t>::abs(self)
                }
                #[inline(always)]
                fn sin(self) -> Self {
                    <$t>::sin(self)
                }
                #[inline(always)]
                fn cos(self) -> Self {
                    <$t>::cos(self)
                }
                #[inline(always)]
                fn tanh(self) -> Self {
                    $tanh(self)
                }
                #[inline(always)]
                fn erf(self) -> Self {
                    $erf(self)
                }
                #[inline(always)]
                fn max(self, o: Self) -> Self {
                    <$t>::max(self, o)
                }
                #[inline(always)]
                fn min(self, o: Self) -> Self {
                    <$t>::min(self, o)
                }
                #[inline(always)]
                fn is_finite(&self) -> bool {
                    <$t>::is_finite(*self)
                }
                #[inline(always)]
                fn is_nan(&self) -> bool {
                    <$t>::is_nan(*self)
                }
            }
        };
    }
    num_like!(f32, super::erf_f32, super::tanh_f32);
    num_like!(f64, super::erf_f64, f64::tanh);
}

/// `e^x` in f32 without a libm call (so loops over it vectorise): `x = n·ln 2 + r` with
/// `|r| ≤ ln 2 / 2` (ln 2 split in two for an exact product), a degree-7 Taylor polynomial for
/// `e^r` (truncation below 1e-8 there), and `2^n` built in the exponent bits. Relative error
/// under 1.2e-7 on `[-87, 88]`; larger arguments saturate to `f32::MAX`-scale values, smaller
/// ones to 0. Only [`tanh_f32`] uses it, on `[1.25, 20]`.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest without a libm call: adding 1.5·2^23 pushes the fraction out.
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let mut p = 1.0 / 5040.0;
    for k in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + k;
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// tanh in f32 without a libm call, within 3 ulp of the true value (checked against f64 over
/// the whole range in the dtype tests). Near zero an odd polynomial `x + x³·P(x²)` whose five
/// coefficients are a least-squares fit of `tanh(x)/x − 1` on Chebyshev nodes of `[0, 0.625]`
/// (relative error 8e-8 there); beyond, `1 − 2/(e^{2|x|} + 1)` (no cancellation once
/// tanh > 0.55); from |x| = 10 on, exactly ±1. Both branches are computed and one is
/// selected, so the GELU loops that call it stay branch-free. glibc's `tanhf` was 22% of a
/// CPU training step of the demo model.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs().min(10.0);
    let z = a * a;
    let mut p = -0.005_718_962_6_f32;
    for c in [0.020_653_125, -0.053_744_66, 0.133_315_13, -0.333_332_85] {
        p = p * z + c;
    }
    let small = a + a * z * p;
    let large = 1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0);
    let t = if a < 0.625 { small } else { large };
    if x.is_nan() {
        x
    } else {
        t.copysign(x)
    }
}

/// erf in f64 to full precision: a Taylor series near zero and a continued fraction for erfc in
/// the tails (both converge fast in their ranges; the switch point 2.5 keeps both well inside).
pub fn erf_f64(x: f64) -> f64 {
    let ax = x.abs();
    let r = if ax < 2.5 {
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
        let x2 = ax * ax;
        let mut term = ax;
        let mut sum = ax;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -x2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() <= 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if ax < 27.0 {
        // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + 2/(x + ...)))))
        let mut f = ax;
        for k in (1..80).rev() {
            f = ax + (k as f64 / 2.0) / f;
        }
        1.0 - (-ax * ax).exp() / (std::f64::consts::PI.sqrt() * f)
    } else {
        1.0
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

pub fn erf_f32(x: f32) -> f32 {
    erf_f64(x as f64) as f32
}
