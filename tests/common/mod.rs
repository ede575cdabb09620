//! The one op-check harness shared by every op test.
//!
//! - [`arb_shape`] draws shapes with size-1 dims and awkward sizes (5, 45, 65, 123, ...);
//! - [`input`] builds a tensor of a shape as a contiguous tensor, a transposed view, a narrowed
//!   view or a broadcast view, so kernels see every layout;
//! - [`Nd`] is a plain row-major f64 array for writing naive references;
//! - [`assert_close`] compares with abs + rel tolerance and names the op and the worst element;
//! - [`gradcheck`] compares autograd against central finite differences in f64;
//! - [`count`] records how many cases ran per op and kind (`.ci/run` prints the totals);
//! - [`copy_dir`] copies a directory tree (checkpoints, datasets) for tests that damage a copy.
#![allow(dead_code)]

use proptest::prelude::*;
use vlm4vla::engine::{DType, Device, Result, Tensor};

/// Sizes a dimension is drawn from: size 1, small odd sizes and sizes that are multiples of
/// nothing nice.
pub fn arb_dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => Just(1usize),
        4 => 2usize..8,
        2 => prop::sample::select(vec![5usize, 9, 13, 17, 31, 33]),
        1 => prop::sample::select(vec![45usize, 65, 123]),
    ]
}

/// A shape of rank in `ranks`, capped at `max_elems` elements (large dims are shrunk to fit).
pub fn arb_shape(ranks: std::ops::RangeInclusive<usize>, max_elems: usize) -> impl Strategy<Value = Vec<usize>> {
    ranks.prop_flat_map(move |r| prop::collection::vec(arb_dim(), r)).prop_map(move |mut s| {
        while s.iter().product::<usize>() > max_elems {
            let i = (0..s.len()).max_by_key(|&i| s[i]).unwrap();
            s[i] = (s[i] / 2).max(1);
        }
        s
    })
}

/// How an input tensor is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewKind {
    Contiguous,
    /// Stored transposed (last two dims swapped) and transposed back: a non-contiguous view.
    Transposed,
    /// A window of a larger tensor along the first dim: a view with an offset.
    Narrowed,
    /// Size-1 stored dims expanded to the shape (only where the shape has a 1, else contiguous).
    Broadcast,
}

pub fn arb_view() -> impl Strategy<Value = ViewKind> {
    prop_oneof![
        Just(ViewKind::Contiguous),
        Just(ViewKind::Transposed),
        Just(ViewKind::Narrowed),
        Just(ViewKind::Broadcast)
    ]
}

/// Random values in `[lo, hi)` of `shape`, laid out as `view`, in `dtype`, on `device`.
pub fn input(shape: &[usize], view: ViewKind, lo: f64, hi: f64, dtype: DType, seed: u64, device: Device) -> Tensor {
    let make = |s: &[usize]| Tensor::rand_uniform(lo, hi, s, dtype, device, seed).unwrap();
    let r = shape.len();
    match view {
        ViewKind::Transposed if r >= 2 => {
            let mut s = shape.to_vec();
            s.swap(r - 2, r - 1);
            let t = make(&s).transpose(r - 2, r - 1).unwrap();
            assert_eq!(t.shape(), shape);
            t
        }
        ViewKind::Narrowed if r >= 1 => {
            let mut s = shape.to_vec();
            s[0] += 3;
            make(&s).narrow(0, 2, shape[0]).unwrap()
        }
        ViewKind::Broadcast if shape.contains(&1) => {
            // Store a tensor whose non-unit dims are 1 where the shape has 1 (already the case),
            // then broadcast a size-1 leading dim: view [1, ...] as the same shape via expand.
            let t = make(shape);
            let mut s1 = shape.to_vec();
            s1.insert(0, 1);
            t.reshape(&s1).unwrap().broadcast_as(&s1).unwrap().squeeze(0).unwrap()
        }
        _ => make(shape),
    }
}

/// Random values as a row-major f64 array.
pub fn values(t: &Tensor) -> Nd {
    Nd { shape: t.shape().to_vec(), data: t.to_vec::<f64>().unwrap() }
}

/// A naive row-major f64 array for references.
#[derive(Clone, Debug, PartialEq)]
pub struct Nd {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Nd {
    pub fn zeros(shape: &[usize]) -> Nd {
        Nd { shape: shape.to_vec(), data: vec![0.0; shape.iter().product()] }
    }
    pub fn strides(&self) -> Vec<usize> {
        let mut st = vec![1; self.shape.len()];
        for i in (0..self.shape.len().saturating_sub(1)).rev() {
            st[i] = st[i + 1] * self.shape[i + 1];
        }
        st
    }
    pub fn offset(&self, idx: &[usize]) -> usize {
        idx.iter().zip(self.strides()).map(|(i, s)| i * s).sum()
    }
    pub fn get(&self, idx: &[usize]) -> f64 {
        self.data[self.offset(idx)]
    }
    pub fn set(&mut self, idx: &[usize], v: f64) {
        let o = self.offset(idx);
        self.data[o] = v;
    }
    /// The multi-index of flat position `i`.
    pub fn index_of(&self, mut i: usize) -> Vec<usize> {
        let mut idx = vec![0; self.shape.len()];
        for d in (0..self.shape.len()).rev() {
            idx[d] = i % self.shape[d];
            i /= self.shape[d];
        }
        idx
    }
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Nd {
        Nd { shape: self.shape.clone(), data: self.data.iter().map(|&v| f(v)).collect() }
    }
}

/// Assert `|ours − ref| ≤ atol + rtol·|ref|` elementwise (NaNs must match), naming the op.
pub fn assert_close(op: &str, ours: &Tensor, reference: &Nd, atol: f64, rtol: f64) {
    assert_eq!(ours.shape(), reference.shape.as_slice(), "{op}: shape");
    let got = ours.to_vec::<f64>().unwrap();
    for (i, (&a, &b)) in got.iter().zip(&reference.data).enumerate() {
        let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + rtol * b.abs();
        assert!(
            ok,
            "{op}: element {i} ({:?}) ours {a} reference {b} (shape {:?})",
            reference.index_of(i),
            reference.shape
        );
    }
}

/// Tolerances per dtype for forward checks against an f64 reference. f32: a few ulps of the
/// reductions these ops do; bf16/f16: the storage rounding of inputs and outputs (8 and 11
/// mantissa bits) plus accumulation.
pub fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-12, 1e-10),
        DType::F32 => (1e-5, 1e-5),
        DType::F16 => (2e-3, 2e-3),
        DType::BF16 => (2e-2, 2e-2),
        _ => (0.0, 0.0),
    }
}

/// Central finite differences against autograd, in f64. `f` maps the inputs to any tensor; the
/// loss is `Σ f(x) · probe` with a fixed random probe. Passes if the relative error
/// `‖analytic − numeric‖ / max(‖numeric‖, 1e-8)` is at most 1e-6 for every input.
pub fn gradcheck(op: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    for t in inputs {
        assert_eq!(t.dtype(), DType::F64, "{op}: gradcheck inputs must be f64");
    }
    let vars: Vec<Tensor> = inputs.iter().map(|t| t.contiguous().unwrap().variable()).collect();
    let out = f(&vars).unwrap_or_else(|e| panic!("{op}: forward failed: {e}"));
    let probe = Tensor::rand_uniform(-1.0, 1.0, out.shape(), DType::F64, Device::Cpu, 4242).unwrap();
    let loss = out.mul(&probe).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap_or_else(|e| panic!("{op}: backward failed: {e}"));
    let eval = |xs: &[Tensor]| -> f64 {
        let out = vlm4vla::engine::no_grad(|| f(xs)).unwrap();
        out.mul(&probe).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let eps = 1e-6;
    for (i, v) in vars.iter().enumerate() {
        let base = v.to_vec::<f64>().unwrap();
        let analytic = match grads.get(v) {
            Some(g) => g.to_vec::<f64>().unwrap(),
            None => vec![0.0; base.len()],
        };
        let mut numeric = vec![0.0; base.len()];
        for j in 0..base.len() {
            let mut plus = base.clone();
            plus[j] += eps;
            let mut minus = base.clone();
            minus[j] -= eps;
            let mut xs: Vec<Tensor> = vars.iter().map(|t| t.detach()).collect();
            xs[i] = Tensor::from_vec(plus, v.shape(), Device::Cpu).unwrap();
            let lp = eval(&xs);
            xs[i] = Tensor::from_vec(minus, v.shape(), Device::Cpu).unwrap();
            let lm = eval(&xs);
            numeric[j] = (lp - lm) / (2.0 * eps);
        }
        let diff: f64 = analytic.iter().zip(&numeric).map(|(a, n)| (a - n) * (a - n)).sum::<f64>().sqrt();
        let norm: f64 = numeric.iter().map(|n| n * n).sum::<f64>().sqrt();
        let rel = diff / norm.max(1e-8);
        assert!(
            rel <= 1e-6,
            "{op}: gradcheck failed for input {i} (shape {:?}): relative error {rel:e}\n analytic {analytic:?}\n numeric  {numeric:?}",
            v.shape()
        );
    }
    count("gradcheck", op, 1);
}

/// Record that `n` cases of `kind` ran for `op` (totals are printed by `.ci/run`).
pub fn count(kind: &str, op: &str, n: usize) {
    use std::io::Write;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("case-counts");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{}.txt", std::process::id()));
    // One write per line: O_APPEND keeps lines from parallel test threads whole.
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(format!("{kind} {op} {n}\n").as_bytes());
    }
}

/// The proptest config every property test uses: enough cases to find layout bugs, few enough
/// to keep CI fast on two cores. `PROPTEST_CASES` overrides it.
pub fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// The probe loss every parity fixture's gradients are taken of (see `tools/golden/gen_*.py`):
/// `Σ last_hidden · probe + Σ logits · probe2`.
pub fn probe_loss(last_hidden: &Tensor, logits: &Tensor, probe: &Tensor, probe2: &Tensor) -> Tensor {
    last_hidden.mul(probe).unwrap().sum_all().unwrap().add(&logits.mul(probe2).unwrap().sum_all().unwrap()).unwrap()
}

/// Compares a model output with its reference row by row (a row is the last dimension) over the
/// rows where `keep` holds (all rows when None): asserts `|ours − ref| ≤ tol + tol·|ref|` there
/// and returns the largest `|ours − ref| / (1 + |ref|)`.
pub fn compare_rows(what: &str, ours: &Tensor, reference: &Tensor, keep: Option<&[bool]>, tol: f64) -> f64 {
    assert_eq!(ours.shape(), reference.shape(), "{what}: shape");
    let a = ours.to_vec::<f64>().unwrap();
    let b = reference.to_vec::<f64>().unwrap();
    let row = *ours.shape().last().unwrap();
    let mut worst = 0f64;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if keep.is_some_and(|k| !k[i / row]) {
            continue;
        }
        let err = (x - y).abs();
        assert!(err <= tol + tol * y.abs(), "{what}: element {i}: ours {x}, reference {y}");
        worst = worst.max(err / (1.0 + y.abs()));
    }
    worst
}

/// The sum of squares of a tensor's elements (in f64).
pub fn sq_norm(t: &Tensor) -> f64 {
    t.to_vec::<f64>().unwrap().iter().map(|x| x * x).sum()
}

/// The backbone input of a Qwen2.5-VL parity fixture case (`tools/golden/gen_qwen2_5_vl.py`):
/// the grid as `[t, h, w]` triples, the masks as u8.
pub fn qwen_case_input(t: &std::collections::HashMap<String, Tensor>) -> vlm4vla::models::BackboneInput {
    let grid = t["image_grid_thw"].to_vec::<i64>().unwrap();
    let grids = grid.chunks(3).map(|g| [g[0] as usize, g[1] as usize, g[2] as usize]).collect();
    let u8s = |x: &Tensor| Tensor::from_vec(x.to_vec::<u8>().unwrap(), x.shape(), Device::Cpu).unwrap();
    vlm4vla::models::BackboneInput {
        pixel_values: t["pixel_values"].clone(),
        image_grid_thw: Some(grids),
        input_ids: t["input_ids"].clone(),
        attention_mask: u8s(&t["attention_mask"]),
        token_type: u8s(&t["mm_token_type_ids"]),
    }
}

/// Copy the directory tree `from` to `to` (created; files overwritten).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
