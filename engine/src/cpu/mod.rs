//! The CPU backend: the reference implementation of every primitive of [`crate::backend`],
//! mirrored file for file with `ops/` and `cuda/`. Kernels are generic over the two compute types
//! (f32, f64); bf16 and f16 tensors are converted to f32 on the way in and back on the way out.

pub(crate) mod activation;
pub(crate) mod attention;
pub(crate) mod binary;
pub(crate) mod index;
pub(crate) mod loss;
pub(crate) mod matmul;
pub(crate) mod memory;
pub(crate) mod norm;
pub(crate) mod optim;
pub(crate) mod reduce;
pub(crate) mod rope;
pub(crate) mod sgemm;
pub(crate) mod threads;
pub(crate) mod unary;
pub(crate) mod view;
pub(crate) mod vmath;

use crate::{CpuStorage, DType, Error, Layout, Result, Storage, Tensor, WithDType};
use std::borrow::Cow;
use std::sync::RwLockReadGuard;

/// The CPU backend (see [`crate::backend`]); its primitives live in this folder's files.
pub(crate) struct Cpu;

/// Read guards over several tensors' CPU storages at once, so a primitive borrows all its inputs
/// without nesting closures.
pub(crate) struct Reads<'a> {
    guards: Vec<(RwLockReadGuard<'a, Storage>, &'a Layout)>,
}

impl<'a> Reads<'a> {
    pub(crate) fn new(ts: &[&'a Tensor]) -> Reads<'a> {
        Reads { guards: ts.iter().map(|t| (t.read_storage(), t.layout())).collect() }
    }

    /// The `i`-th tensor's storage and layout (an error for a tensor not on the CPU).
    pub(crate) fn get(&self, i: usize) -> Result<(&CpuStorage, &Layout)> {
        let (g, l) = &self.guards[i];
        match &**g {
            Storage::Cpu(c) => Ok((c, l)),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => {
                Err(Error::Cuda { op: "cpu kernel", msg: "a CPU primitive was given a tensor on a GPU".into() })
            }
        }
    }

    /// The `i`-th tensor's elements in compute precision.
    pub(crate) fn floats(&self, i: usize) -> Result<Floats<'_>> {
        let (s, l) = self.get(i)?;
        Ok(floats(s, l))
    }
}

/// `t`'s elements, contiguous, in its dtype: the backend reading its own memory (no host read:
/// on a GPU this is a kernel's input, not a download).
pub(crate) fn host_storage(t: &Tensor) -> Result<CpuStorage> {
    let r = Reads::new(&[t]);
    let (s, l) = r.get(0)?;
    Ok(s.gather(l))
}

/// `t`'s elements converted to `T`, row-major (see [`host_storage`]).
pub(crate) fn host_vec<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    let r = Reads::new(&[t]);
    let (s, l) = r.get(0)?;
    Ok(s.gather_as::<T>(l))
}

/// A fresh graph-less CPU tensor holding `v` stored as `dtype`.
pub(crate) fn out(v: FloatVec, dtype: DType, shape: &[usize]) -> Tensor {
    Tensor::from_cpu(v.into_storage(dtype), shape, None)
}

/// A fresh graph-less CPU tensor over `s`.
pub(crate) fn out_storage(s: CpuStorage, shape: &[usize]) -> Tensor {
    Tensor::from_cpu(s, shape, None)
}

/// A tensor's elements in compute precision, contiguous, borrowed when no conversion is needed.
pub(crate) enum Floats<'a> {
    F32(Cow<'a, [f32]>),
    F64(Cow<'a, [f64]>),
}

/// A kernel's output in compute precision.
pub(crate) enum FloatVec {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The elements of layout `l` over `v`, contiguous: borrowed when `l` already is, else gathered.
pub(crate) fn borrow<'a, T: WithDType>(v: &'a [T], l: &Layout) -> Cow<'a, [T]> {
    match l.contiguous_range() {
        Some(r) => Cow::Borrowed(&v[r]),
        None => Cow::Owned(crate::storage::gather_runs(v, l, |x| x)),
    }
}

pub(crate) fn floats<'a>(s: &'a CpuStorage, l: &Layout) -> Floats<'a> {
    match s {
        CpuStorage::F32(v) => Floats::F32(borrow(v, l)),
        CpuStorage::F64(v) => Floats::F64(borrow(v, l)),
        other => Floats::F32(Cow::Owned(other.gather_as::<f32>(l))),
    }
}

impl FloatVec {
    /// Store in `dtype` (bf16/f16 are rounded from f32).
    pub(crate) fn into_storage(self, dtype: DType) -> CpuStorage {
        match self {
            FloatVec::F64(v) => {
                if dtype == DType::F64 {
                    CpuStorage::F64(v)
                } else {
                    CpuStorage::F64(v).to_dtype(&Layout::contiguous(&[0]), dtype)
                }
            }
            FloatVec::F32(v) => match dtype {
                DType::F32 => CpuStorage::F32(v),
                DType::BF16 => CpuStorage::BF16(v.iter().map(|&x| half::bf16::from_f32(x)).collect()),
                DType::F16 => CpuStorage::F16(v.iter().map(|&x| half::f16::from_f32(x)).collect()),
                _ => {
                    let n = v.len();
                    CpuStorage::F32(v).to_dtype(&Layout::contiguous(&[n]), dtype)
                }
            },
        }
    }
}

/// Apply a generic kernel to one input: `float_map!(floats, x => kernel(&x))`.
#[macro_export]
#[doc(hidden)]
macro_rules! float_map {
    ($a:expr, $x:ident => $body:expr) => {
        match $a {
            $crate::cpu::Floats::F32($x) => $crate::cpu::FloatVec::F32($body),
            $crate::cpu::Floats::F64($x) => $crate::cpu::FloatVec::F64($body),
        }
    };
}

/// Apply a generic kernel to inputs that share a compute type. Evaluates to `Result<T>`; the
/// closure-like body gets typed slices.
#[macro_export]
#[doc(hidden)]
macro_rules! float_zip {
    ($op:expr, ($($a:expr),+), ($($x:ident),+) => $body:expr) => {{
        #[allow(unused_parens)]
        match ($($a),+) {
            ($($crate::cpu::Floats::F32($x)),+) => Ok($crate::cpu::FloatVec::F32($body)),
            ($($crate::cpu::Floats::F64($x)),+) => Ok($crate::cpu::FloatVec::F64($body)),
            #[allow(unreachable_patterns)]
            _ => Err($crate::Error::invalid($op, "operands computed in different precisions")),
        }
    }};
}

/// Copy `src` (row-major, contiguous) into the strided view `dst_layout` of `dst`.
pub(crate) fn copy_into_view(dst: &mut CpuStorage, dst_layout: &Layout, src: &CpuStorage) -> Result<()> {
    if dst.dtype() != src.dtype() {
        return Err(Error::dtype("copy_into_view", src.dtype(), format!("destination is {}", dst.dtype())));
    }
    fn go<T: WithDType>(d: &mut [T], l: &Layout, s: &[T]) {
        match l.contiguous_range() {
            Some(r) => d[r].copy_from_slice(s),
            None => {
                for (o, &v) in l.offsets().zip(s) {
                    d[o] = v;
                }
            }
        }
    }
    match (dst, src) {
        (CpuStorage::U8(d), CpuStorage::U8(s)) => go(d, dst_layout, s),
        (CpuStorage::I64(d), CpuStorage::I64(s)) => go(d, dst_layout, s),
        (CpuStorage::F16(d), CpuStorage::F16(s)) => go(d, dst_layout, s),
        (CpuStorage::BF16(d), CpuStorage::BF16(s)) => go(d, dst_layout, s),
        (CpuStorage::F32(d), CpuStorage::F32(s)) => go(d, dst_layout, s),
        (CpuStorage::F64(d), CpuStorage::F64(s)) => go(d, dst_layout, s),
        _ => unreachable!("dtypes checked above"),
    }
    Ok(())
}

/// At least this many elements: a loop over rows runs on the backend's threads.
const PAR_MIN_ELEMS: usize = 1 << 15;
/// Elements per task of a parallel loop over rows (whole rows, at least one).
const TASK_ELEMS: usize = 1 << 13;

/// Run `f` over row chunks in parallel when the work is big enough to pay for the threads.
pub(crate) fn par_rows<T: Send>(out: &mut [T], width: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if width == 0 {
        return;
    }
    if out.len() >= PAR_MIN_ELEMS {
        let per = (TASK_ELEMS / width).max(1);
        threads::for_chunks_mut(out, per * width, |t, rows| {
            rows.chunks_mut(width).enumerate().for_each(|(j, row)| f(t * per + j, row))
        });
    } else {
        out.chunks_mut(width).enumerate().for_each(|(i, row)| f(i, row));
    }
}

/// A new `len`-element buffer, every `width`-element row of it written by `init(i, row)`, rows
/// in parallel like [`par_rows`]. `init` must write every element of its row.
///
/// Outputs are made this way instead of `vec![zero; len]` followed by a parallel loop: on memory
/// the allocator hands back for reuse (every step's outputs), `vec!` is one serial `memset` over
/// the whole buffer on the calling thread while the pool's threads wait (about 5% of a training
/// step on two cores).
fn build_rows<T: Copy + Send + Sync>(
    len: usize,
    width: usize,
    init: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    if len == 0 {
        return Vec::new();
    }
    let mut buf: Vec<std::mem::MaybeUninit<T>> = Vec::with_capacity(len);
    // SAFETY: `MaybeUninit` elements need no initialisation.
    unsafe { buf.set_len(len) };
    // `width` is at least 1 here: the chunks cover the whole buffer.
    par_rows(&mut buf, width.max(1), init);
    let mut buf = std::mem::ManuallyDrop::new(buf);
    // SAFETY: `init` wrote every element of every row, and the rows cover the buffer;
    // `MaybeUninit<T>` has the layout of `T`, so pointer, length and capacity carry over.
    unsafe { Vec::from_raw_parts(buf.as_mut_ptr().cast::<T>(), buf.len(), buf.capacity()) }
}

/// Write `value` over every element of `row`, and view it as initialised.
fn fill_row<T: Copy>(row: &mut [std::mem::MaybeUninit<T>], value: T) -> &mut [T] {
    for x in row.iter_mut() {
        x.write(value);
    }
    // SAFETY: every element was just written; `MaybeUninit<T>` has the layout of `T`.
    unsafe { &mut *(row as *mut [std::mem::MaybeUninit<T>] as *mut [T]) }
}

/// `len` copies of `value`, written in parallel chunks when the buffer is large (see
/// [`build_rows`]).
pub(crate) fn filled<T: Copy + Send + Sync>(len: usize, value: T) -> Vec<T> {
    build_rows(len, 1 << 14, |_, row| {
        fill_row(row, value);
    })
}

/// `times` copies of `row` one after another, written in parallel when the result is large.
pub(crate) fn repeat_rows<T: Copy + Send + Sync>(row: &[T], times: usize) -> Vec<T> {
    let len = row.len() * times;
    if row.is_empty() {
        return Vec::new();
    }
    build_rows(len, row.len(), |_, dst| {
        for (d, &v) in dst.iter_mut().zip(row) {
            d.write(v);
        }
    })
}

/// [`par_rows`] over a new `len`-element buffer: each row is set to `zero` by the thread that
/// then runs `f` on it (while it is in that core's cache), so no serial pass precedes the loop.
pub(crate) fn new_rows<T: Copy + Send + Sync>(
    len: usize,
    width: usize,
    zero: T,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    if width == 0 {
        return filled(len, zero);
    }
    build_rows(len, width, |i, row| f(i, fill_row(row, zero)))
}

/// Whether elementwise loops may run their AVX2 + FMA copies (`#[target_feature]` functions
/// whose loop bodies are the same code; the results are the same as without, since Rust never
/// contracts `a·b + c` into an FMA on its own).
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `$avx2(args)` (the `#[target_feature(enable = "avx2,fma")]` copy of `$plain`) where `$simd`
/// (from [`has_avx2`]) holds, else `$plain(args)`.
macro_rules! dispatch_avx2 {
    ($simd:expr, $avx2:ident, $plain:ident($($arg:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        let out = if $simd {
            // SAFETY: `has_avx2` checked the CPU for the features `$avx2` is compiled with.
            unsafe { $avx2($($arg),*) }
        } else {
            $plain($($arg),*)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let out = {
            let _ = $simd;
            $plain($($arg),*)
        };
        out
    }};
}
pub(crate) use dispatch_avx2;
