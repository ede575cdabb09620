//! AVX-512 f32 `exp`, `tanh` and the gated activations' value and derivative, sixteen lanes at a
//! time, for the loops libm would otherwise run one element at a time (softmax rows, GELU-tanh,
//! SiLU). Accuracy is that of the classic Cephes single-precision approximations (a couple of
//! ulp): `exp` by `x = n·ln2 + r` with a degree-5 polynomial on `r` and `scalef` for `2ⁿ`, `tanh`
//! by an odd polynomial below 0.625 and `1 − 2/(e^{2|x|} + 1)` above.
//!
//! Callers check [`available`] and fall back to their scalar loops elsewhere.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::kinds::GateKind;

/// Whether this CPU has AVX-512F (the same switch as our GEMM: `VLM4VLA_SGEMM=gemm` turns both off).
pub(crate) fn available() -> bool {
    super::sgemm::available()
}

/// `s` as f32 when `T` is f32 and the AVX-512 path is on.
pub(crate) fn f32s<T: crate::WithDType>(s: &[T]) -> Option<&[f32]> {
    (T::DTYPE == crate::DType::F32 && available()).then(|| bytemuck::cast_slice(s))
}

/// `s` as f32 when `T` is f32 and the AVX-512 path is on.
pub(crate) fn f32s_mut<T: crate::WithDType>(s: &mut [T]) -> Option<&mut [f32]> {
    (T::DTYPE == crate::DType::F32 && available()).then(|| bytemuck::cast_slice_mut(s))
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::*;

    /// `e^x` per lane; `-inf` gives 0, NaN stays NaN.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp(x: __m512) -> __m512 {
        // max/min return their second operand when either is NaN: NaN passes through.
        let x = _mm512_min_ps(_mm512_set1_ps(89.0), _mm512_max_ps(_mm512_set1_ps(-103.972_08), x));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5e-1] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(y, n)
    }

    /// `tanh(x)` per lane.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tanh(x: __m512) -> __m512 {
        let sign = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN)));
        let ax = _mm512_castsi512_ps(_mm512_andnot_si512(_mm512_set1_epi32(i32::MIN), _mm512_castps_si512(x)));
        // Large |x|: 1 − 2 / (e^{2|x|} + 1), sign restored.
        let e = exp(_mm512_add_ps(ax, ax));
        let big = _mm512_sub_ps(
            _mm512_set1_ps(1.0),
            _mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(e, _mm512_set1_ps(1.0))),
        );
        let big = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(big), _mm512_castps_si512(sign)));
        // Small |x|: x + x³ P(x²).
        let z = _mm512_mul_ps(x, x);
        let mut p = _mm512_set1_ps(-5.704_988_7e-3);
        for c in [2.063_909e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328e-1] {
            p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(c));
        }
        let small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
        let is_small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(ax, _mm512_set1_ps(0.625));
        _mm512_mask_blend_ps(is_small, big, small)
    }

    /// `(act(x), act'(x))` per lane, as `cpu::activation::act` computes them.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn act(kind: GateKind, x: __m512) -> (__m512, __m512) {
        let one = _mm512_set1_ps(1.0);
        match kind {
            GateKind::Silu => {
                let s = _mm512_div_ps(one, _mm512_add_ps(one, exp(_mm512_sub_ps(_mm512_setzero_ps(), x))));
                let d = _mm512_mul_ps(s, _mm512_fmadd_ps(x, _mm512_sub_ps(one, s), one));
                (_mm512_mul_ps(x, s), d)
            }
            GateKind::GeluTanh => {
                let half = _mm512_set1_ps(0.5);
                let x2 = _mm512_mul_ps(x, x);
                let u = _mm512_mul_ps(
                    _mm512_set1_ps(SQRT_2_OVER_PI),
                    _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(GELU_C), x2), x, x),
                );
                let t = tanh(u);
                let du = _mm512_mul_ps(
                    _mm512_set1_ps(SQRT_2_OVER_PI),
                    _mm512_fmadd_ps(_mm512_set1_ps(3.0 * GELU_C), x2, one),
                );
                let one_t = _mm512_add_ps(one, t);
                let a = _mm512_mul_ps(_mm512_mul_ps(half, x), one_t);
                let sech2 = _mm512_fnmadd_ps(t, t, one);
                let d = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_mul_ps(half, x), sech2), du, _mm512_mul_ps(half, one_t));
                (a, d)
            }
        }
    }

    /// Lanes `i..i+16` of `n`: the load/store mask (all ones but at the tail).
    #[inline(always)]
    pub(super) fn mask(i: usize, n: usize) -> __mmask16 {
        let left = n - i;
        if left >= 16 {
            0xffff
        } else {
            ((1u32 << left) - 1) as __mmask16
        }
    }

    #[inline(always)]
    pub(super) unsafe fn load(p: &[f32], i: usize, m: __mmask16) -> __m512 {
        _mm512_maskz_loadu_ps(m, p.as_ptr().add(i))
    }

    #[inline(always)]
    pub(super) unsafe fn store(p: &mut [f32], i: usize, m: __mmask16, v: __m512) {
        _mm512_mask_storeu_ps(p.as_mut_ptr().add(i), m, v)
    }
}

/// `o[i] = act(x[i])` (`derivative = false`) or `o[i] = g[i] · act'(x[i])` (`g` given).
///
/// # Safety
/// [`available`] returned true; `o`, `x` (and `g`) have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn act_map(kind: GateKind, o: &mut [f32], x: &[f32], g: Option<&[f32]>) {
    use simd::*;
    let n = o.len();
    for i in (0..n).step_by(16) {
        let m = mask(i, n);
        let (a, d) = act(kind, load(x, i, m));
        let v = match g {
            Some(g) => _mm512_mul_ps(load(g, i, m), d),
            None => a,
        };
        store(o, i, m, v);
    }
}

/// `o[j] = act(gate[j]) · up[j]`.
///
/// # Safety
/// [`available`] returned true; all slices have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gate_forward(kind: GateKind, o: &mut [f32], gate: &[f32], up: &[f32]) {
    use simd::*;
    let n = o.len();
    for i in (0..n).step_by(16) {
        let m = mask(i, n);
        let (a, _) = act(kind, load(gate, i, m));
        store(o, i, m, _mm512_mul_ps(a, load(up, i, m)));
    }
}

/// `dgate[j] = g[j] · up[j] · act'(gate[j])`, `dup[j] = g[j] · act(gate[j])`.
///
/// # Safety
/// [`available`] returned true; all slices have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gate_backward(
    kind: GateKind,
    dgate: &mut [f32],
    dup: &mut [f32],
    gate: &[f32],
    up: &[f32],
    g: &[f32],
) {
    use simd::*;
    let n = dgate.len();
    for i in (0..n).step_by(16) {
        let m = mask(i, n);
        let (a, d) = act(kind, load(gate, i, m));
        let gv = load(g, i, m);
        store(dgate, i, m, _mm512_mul_ps(_mm512_mul_ps(gv, load(up, i, m)), d));
        store(dup, i, m, _mm512_mul_ps(gv, a));
    }
}

/// `row[i] = e^(row[i] − shift)`; returns the sum of the new values.
///
/// # Safety
/// [`available`] returned true.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exp_shift(row: &mut [f32], shift: f32) -> f32 {
    use simd::*;
    let n = row.len();
    let s = _mm512_set1_ps(shift);
    let mut acc = _mm512_setzero_ps();
    for i in (0..n).step_by(16) {
        let m = mask(i, n);
        let e = exp(_mm512_sub_ps(load(row, i, m), s));
        let e = _mm512_maskz_mov_ps(m, e);
        acc = _mm512_add_ps(acc, e);
        store(row, i, m, e);
    }
    _mm512_reduce_add_ps(acc)
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn act_map(_: GateKind, _: &mut [f32], _: &[f32], _: Option<&[f32]>) {
    unreachable!("vmath::available() is false off x86_64")
}
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn gate_forward(_: GateKind, _: &mut [f32], _: &[f32], _: &[f32]) {
    unreachable!("vmath::available() is false off x86_64")
}
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn gate_backward(_: GateKind, _: &mut [f32], _: &mut [f32], _: &[f32], _: &[f32], _: &[f32]) {
    unreachable!("vmath::available() is false off x86_64")
}
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn exp_shift(_: &mut [f32], _: f32) -> f32 {
    unreachable!("vmath::available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Vec<f32> {
        let mut v: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.01).collect();
        v.extend([-120.0, -103.0, -88.0, -30.0, -1e-7, 0.0, 1e-7, 0.6249, 0.6251, 30.0, 88.0, f32::NEG_INFINITY]);
        v
    }

    /// Relative error against f64 libm, with an absolute floor for results near zero.
    fn close(got: f32, want: f64, ulps: f64) -> bool {
        let tol = ulps * f32::EPSILON as f64 * want.abs().max(1e-30);
        (got as f64 - want).abs() <= tol.max(1e-37) || (got.is_nan() && want.is_nan())
    }

    #[test]
    fn exp_is_within_a_few_ulp_and_handles_infinities() {
        if !available() {
            return;
        }
        let x = grid();
        let mut row = x.clone();
        let sum = unsafe { exp_shift(&mut row, 0.0) };
        let mut want_sum = 0.0f64;
        for (&xi, &yi) in x.iter().zip(&row) {
            let w = (xi as f64).exp().min(f32::MAX as f64);
            want_sum += yi as f64;
            assert!(close(yi, w, 4.0), "exp({xi}) = {yi}, want {w}");
        }
        assert!((sum as f64 - want_sum).abs() <= 1e-5 * want_sum);
        let mut nan = [f32::NAN; 3];
        unsafe { exp_shift(&mut nan, 0.0) };
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn gated_activations_match_the_scalar_formulas() {
        if !available() {
            return;
        }
        let x: Vec<f32> = grid().into_iter().filter(|v| v.is_finite() && v.abs() < 50.0).collect();
        let g: Vec<f32> = x.iter().map(|v| 1.0 + v * 0.1).collect();
        for kind in [GateKind::Silu, GateKind::GeluTanh] {
            let (mut a, mut d) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            unsafe {
                act_map(kind, &mut a, &x, None);
                act_map(kind, &mut d, &x, Some(&g));
            }
            for i in 0..x.len() {
                let xi = x[i] as f64;
                let (wa, wd) = match kind {
                    GateKind::Silu => {
                        let s = 1.0 / (1.0 + (-xi).exp());
                        (xi * s, s * (1.0 + xi * (1.0 - s)))
                    }
                    GateKind::GeluTanh => {
                        let c = 0.797_884_560_802_865_4;
                        let t = (c * (xi + 0.044715 * xi * xi * xi)).tanh();
                        let du = c * (1.0 + 3.0 * 0.044715 * xi * xi);
                        (0.5 * xi * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * xi * (1.0 - t * t) * du)
                    }
                };
                // Absolute floor 1e-6: both values pass through zero (x·s, 1 + t) where a relative
                // bound is meaningless; f32 rounding of the inputs alone is ~1e-7 there.
                assert!(
                    (a[i] as f64 - wa).abs() <= 1e-6 + 8.0 * f32::EPSILON as f64 * wa.abs(),
                    "{kind:?} act({xi}) = {}, want {wa}",
                    a[i]
                );
                let wdg = wd * g[i] as f64;
                assert!(
                    (d[i] as f64 - wdg).abs() <= 1e-6 + 8.0 * f32::EPSILON as f64 * wdg.abs(),
                    "{kind:?} act'({xi}) = {}, want {wdg}",
                    d[i]
                );
            }
        }
    }
}
