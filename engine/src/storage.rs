//! Typed buffers. `Storage` is the per-device enum; ops dispatch on it so a CUDA arm slots in
//! beside the CPU one.

use crate::{DType, Error, Layout, Result, WithDType};
use half::{bf16, f16};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A CPU buffer of one dtype.
#[derive(Clone, Debug)]
pub enum CpuStorage {
    U8(Vec<u8>),
    I64(Vec<i64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Storage on some device.
#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaStorage),
}

impl From<CpuStorage> for Storage {
    fn from(s: CpuStorage) -> Self {
        Storage::Cpu(s)
    }
}

#[cfg(feature = "cuda")]
impl From<crate::cuda::CudaStorage> for Storage {
    fn from(s: crate::cuda::CudaStorage) -> Self {
        Storage::Cuda(s)
    }
}

/// Apply `$body` with `$v` bound to the typed vector of a `CpuStorage`.
#[macro_export]
#[doc(hidden)]
macro_rules! map_cpu_storage {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            $crate::CpuStorage::U8($v) => $body,
            $crate::CpuStorage::I64($v) => $body,
            $crate::CpuStorage::F16($v) => $body,
            $crate::CpuStorage::BF16($v) => $body,
            $crate::CpuStorage::F32($v) => $body,
            $crate::CpuStorage::F64($v) => $body,
        }
    };
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::U8(_) => DType::U8,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
        }
    }

    pub fn len(&self) -> usize {
        map_cpu_storage!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn from_vec<T: WithDType>(v: Vec<T>) -> CpuStorage {
        T::into_storage(v)
    }

    pub fn as_slice<T: WithDType>(&self) -> Result<&[T]> {
        T::slice_of(self).ok_or_else(|| Error::dtype("as_slice", self.dtype(), format!("expected {}", T::DTYPE)))
    }

    pub fn as_mut_slice<T: WithDType>(&mut self) -> Result<&mut [T]> {
        let dt = self.dtype();
        T::mut_slice_of(self).ok_or_else(|| Error::dtype("as_mut_slice", dt, format!("expected {}", T::DTYPE)))
    }

    /// The elements of `layout` in row-major order, converted to `T`.
    pub fn gather_as<T: WithDType>(&self, layout: &Layout) -> Vec<T> {
        map_cpu_storage!(self, v => gather_convert(v, layout))
    }

    /// The elements of `layout` as a contiguous storage of the same dtype.
    pub fn gather(&self, layout: &Layout) -> CpuStorage {
        map_cpu_storage!(self, v => CpuStorage::from_vec(gather_same(v, layout)))
    }

    /// Convert the elements of `layout` to `dtype`, contiguous.
    pub fn to_dtype(&self, layout: &Layout, dtype: DType) -> CpuStorage {
        match dtype {
            DType::U8 => CpuStorage::U8(self.gather_as(layout)),
            DType::I64 => CpuStorage::I64(self.gather_as(layout)),
            DType::F16 => CpuStorage::F16(self.gather_as(layout)),
            DType::BF16 => CpuStorage::BF16(self.gather_as(layout)),
            DType::F32 => CpuStorage::F32(self.gather_as(layout)),
            DType::F64 => CpuStorage::F64(self.gather_as(layout)),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        map_cpu_storage!(self, v => bytemuck::cast_slice(v.as_slice()))
    }
}

fn gather_same<T: WithDType>(v: &[T], layout: &Layout) -> Vec<T> {
    gather_convert::<T, T>(v, layout)
}

fn gather_convert<S: WithDType, T: WithDType>(v: &[S], layout: &Layout) -> Vec<T> {
    // Same-type contiguous: a memcpy.
    if S::DTYPE == T::DTYPE {
        if let Some(r) = layout.contiguous_range() {
            return bytemuck::cast_slice::<S, T>(&v[r]).to_vec();
        }
        let src: &[T] = bytemuck::cast_slice(v);
        return gather_runs(src, layout, |x| x);
    }
    let conv = |x: S| -> T { convert::<S, T>(x) };
    match layout.contiguous_range() {
        Some(r) => v[r].iter().map(|&x| conv(x)).collect(),
        None => gather_runs(v, layout, conv),
    }
}

/// The elements of a strided `layout` of `v`, converted by `conv`, run by run ([`Layout::runs`]);
/// large layouts are copied by rayon's threads, a block of runs each.
pub(crate) fn gather_runs<S: Copy + Sync, T: Copy + Send>(
    v: &[S],
    layout: &Layout,
    conv: impl Fn(S) -> T + Sync,
) -> Vec<T> {
    let n = layout.elem_count();
    if n == 0 {
        return Vec::new();
    }
    // n > 0, so every run is at least one element long.
    let (outer, len, stride) = layout.runs();
    let copy = |o: usize, dst: &mut [std::mem::MaybeUninit<T>]| {
        if stride == 1 {
            dst.iter_mut().zip(&v[o..o + len]).for_each(|(d, &x)| _ = d.write(conv(x)));
        } else if stride == 0 {
            let x = conv(v[o]);
            dst.iter_mut().for_each(|d| _ = d.write(x));
        } else {
            dst.iter_mut().zip(v[o..].iter().step_by(stride)).for_each(|(d, &x)| _ = d.write(conv(x)));
        }
    };
    let mut out = Vec::with_capacity(n);
    let dst = &mut out.spare_capacity_mut()[..n];
    if n >= PAR_GATHER_MIN {
        let starts: Vec<usize> = outer.offsets().collect();
        let per_task = (PAR_GATHER_MIN / 4).div_ceil(len);
        crate::cpu::threads::for_chunks_mut(dst, per_task * len, |t, dst| {
            for (d, &o) in dst.chunks_mut(len).zip(&starts[t * per_task..]) {
                copy(o, d);
            }
        });
    } else {
        for (d, o) in dst.chunks_mut(len).zip(outer.offsets()) {
            copy(o, d);
        }
    }
    // SAFETY: the runs tile the layout's `n` elements in order, so every slot of `dst` (the
    // first `n` of the capacity) was written above.
    unsafe { out.set_len(n) };
    out
}

/// Elements from which a strided gather runs on several threads.
const PAR_GATHER_MIN: usize = 1 << 17;

/// Element conversion with the fast paths that matter (half ↔ f32) and f64 as the pivot otherwise.
#[inline]
fn convert<S: WithDType, T: WithDType>(x: S) -> T {
    use std::any::Any;
    let any: &dyn Any = &x;
    if let Some(v) = any.downcast_ref::<bf16>() {
        return T::from_f32_fast(v.to_f32());
    }
    if let Some(v) = any.downcast_ref::<f16>() {
        return T::from_f32_fast(v.to_f32());
    }
    if let Some(v) = any.downcast_ref::<f32>() {
        return T::from_f32_fast(*v);
    }
    T::from_f64(x.to_f64())
}

/// Storage plumbing for the element types.
pub trait StorageElem: Sized {
    fn into_storage(v: Vec<Self>) -> CpuStorage;
    fn slice_of(s: &CpuStorage) -> Option<&[Self]>;
    fn mut_slice_of(s: &mut CpuStorage) -> Option<&mut [Self]>;
    fn from_f32_fast(v: f32) -> Self;
}

macro_rules! storage_elem {
    ($t:ty, $var:ident, $from32:expr) => {
        impl StorageElem for $t {
            fn into_storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$var(v)
            }
            fn slice_of(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$var(v) => Some(v),
                    _ => None,
                }
            }
            fn mut_slice_of(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$var(v) => Some(v),
                    _ => None,
                }
            }
            #[inline]
            fn from_f32_fast(v: f32) -> Self {
                $from32(v)
            }
        }
    };
}
storage_elem!(u8, U8, |v: f32| v as u8);
storage_elem!(i64, I64, |v: f32| v as i64);
storage_elem!(f16, F16, f16::from_f32);
storage_elem!(bf16, BF16, bf16::from_f32);
storage_elem!(f32, F32, |v: f32| v);
storage_elem!(f64, F64, |v: f32| v as f64);

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.dtype(),
        }
    }

    pub fn cpu(&self) -> Option<&CpuStorage> {
        match self {
            Storage::Cpu(s) => Some(s),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => None,
        }
    }

    pub fn device(&self) -> crate::Device {
        match self {
            Storage::Cpu(_) => crate::Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => crate::Device::Cuda(s.ordinal()),
        }
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held.
    pub fn size_in_bytes(&self) -> usize {
        self.len() * self.dtype().size_in_bytes()
    }
}

/// The storage tensors share (views included), behind its lock. Its bytes count in
/// [`crate::counters::memory`] from creation until the last tensor over it drops.
pub(crate) struct SharedStorage {
    lock: RwLock<Storage>,
    bytes: u64,
    /// Whether the buffer is host data: a CPU buffer the host filled from its own memory
    /// (`from_vec`, `full`, a loaded file) that no primitive and no in-place write has touched
    /// since. Reading host data back waits for no device (on a GPU run such tensors are the
    /// CPU-side inputs), so it is not counted as a host read.
    pub(crate) host_data: std::sync::atomic::AtomicBool,
}

impl SharedStorage {
    pub(crate) fn new(storage: Storage) -> SharedStorage {
        let bytes = storage.size_in_bytes() as u64;
        crate::counters::storage_created(bytes);
        SharedStorage { lock: RwLock::new(storage), bytes, host_data: std::sync::atomic::AtomicBool::new(false) }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Storage> {
        self.lock.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Storage> {
        self.lock.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for SharedStorage {
    fn drop(&mut self) {
        crate::counters::storage_dropped(self.bytes);
    }
}
