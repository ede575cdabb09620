//! Device memory: buffers from the device's stream-ordered pool (freed in stream order on drop),
//! uploads (batch-sized ones staged through pinned memory), downloads, and device-to-device copies.

use super::device::{drv, CudaDevice};
use super::poison_enabled;
use crate::{CpuStorage, DType, Error, Result, Tensor};
use cudarc::driver::{result as cu, sys};
use std::ffi::c_void;
use std::sync::Arc;

/// Pinned host memory that uploads of batch-sized buffers go through, so the host returns while
/// the DMA runs; `done` is recorded after each copy out of it and waited on before it is reused.
pub(crate) struct Staging {
    ptr: *mut c_void,
    cap: usize,
    done: sys::CUevent,
}
// SAFETY: the pinned buffer and the event are plain driver handles, used under the device's mutex.
unsafe impl Send for Staging {}

/// Uploads of at least this many bytes (and at most `STAGING_MAX`) go through pinned memory.
const STAGING_MIN: usize = 64 << 10;
const STAGING_MAX: usize = 64 << 20;

impl CudaDevice {
    /// A fresh uninitialised buffer of `len` elements of `dtype` (poisoned when asked).
    pub(crate) fn alloc(self: &Arc<Self>, op: &'static str, dtype: DType, len: usize) -> Result<CudaStorage> {
        check_dtype(op, dtype)?;
        let bytes = len * dtype.size_in_bytes();
        let mut ptr = 0;
        if bytes > 0 {
            self.bind(op)?;
            // SAFETY: the stream belongs to this device; the memory is used on that stream only.
            ptr = unsafe { cu::malloc_async(self.stream(), bytes) }
                .map_err(|e| Error::Cuda { op, msg: format!("allocating {bytes} bytes: {e:?}") })?;
            if poison_enabled() {
                // SAFETY: `ptr` addresses `bytes` bytes just allocated on this stream.
                unsafe { cu::memset_d8_async(ptr, 0xff, bytes, self.stream()) }.map_err(drv(op))?;
            }
        }
        Ok(CudaStorage { ptr, len, dtype, dev: self.clone() })
    }

    /// A buffer of `len` zeros.
    pub(crate) fn zeros(self: &Arc<Self>, op: &'static str, dtype: DType, len: usize) -> Result<CudaStorage> {
        let s = self.alloc(op, dtype, len)?;
        if s.bytes() > 0 {
            // SAFETY: `s` owns `bytes()` bytes on this device, used on this stream.
            unsafe { cu::memset_d8_async(s.ptr, 0, s.bytes(), self.stream()) }.map_err(drv(op))?;
        }
        Ok(s)
    }

    /// Copy a CPU buffer to the device (f32, bf16, u8, i64). Batch-sized buffers are staged in
    /// pinned memory, so the copy overlaps with the host's next work.
    pub(crate) fn upload(self: &Arc<Self>, op: &'static str, src: &CpuStorage) -> Result<CudaStorage> {
        let dst = self.alloc(op, src.dtype(), src.len())?;
        let bytes = src.as_bytes();
        if (STAGING_MIN..=STAGING_MAX).contains(&bytes.len()) {
            self.upload_staged(op, dst.ptr, bytes)?;
        } else if !bytes.is_empty() {
            // SAFETY: `dst` holds exactly `bytes.len()` bytes; a pageable source is staged by the
            // driver before this call returns, so `src` may be dropped afterwards.
            unsafe { cu::memcpy_htod_async(dst.ptr, bytes, self.stream()) }.map_err(drv(op))?;
        }
        Ok(dst)
    }

    fn upload_staged(&self, op: &'static str, dst: sys::CUdeviceptr, bytes: &[u8]) -> Result<()> {
        let mut guard = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the staging buffer is pinned host memory of `cap` bytes owned by this device;
        // before it is overwritten or freed, the event recorded after the last copy out of it is
        // waited on, so no DMA still reads it; the copy into `dst` (a live allocation of at least
        // `bytes.len()` bytes) is ordered on the device's stream.
        unsafe {
            if let Some(st) = guard.as_ref() {
                cu::event::synchronize(st.done).map_err(drv(op))?;
            }
            if guard.as_ref().is_none_or(|st| st.cap < bytes.len()) {
                if let Some(old) = guard.take() {
                    let _ = cu::free_host(old.ptr);
                    let _ = cu::event::destroy(old.done);
                }
                let cap = bytes.len().next_power_of_two().min(STAGING_MAX);
                let ptr = cu::malloc_host(cap, 0).map_err(drv(op))?;
                let done = cu::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(drv(op))?;
                *guard = Some(Staging { ptr, cap, done });
            }
            let st = guard.as_ref().expect("staging buffer set above");
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), st.ptr as *mut u8, bytes.len());
            let pinned = std::slice::from_raw_parts(st.ptr as *const u8, bytes.len());
            cu::memcpy_htod_async(dst, pinned, self.stream()).map_err(drv(op))?;
            cu::event::record(st.done, self.stream()).map_err(drv(op))?;
        }
        Ok(())
    }

    /// An i64 buffer holding `v` (index tables built on the host).
    pub(crate) fn upload_i64(self: &Arc<Self>, op: &'static str, v: Vec<i64>) -> Result<CudaStorage> {
        self.upload(op, &CpuStorage::I64(v))
    }
}

/// Dtypes a CUDA buffer may hold.
pub(crate) fn check_dtype(op: &'static str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::BF16 | DType::U8 | DType::I64 => Ok(()),
        other => Err(Error::dtype(op, other, "not supported on CUDA (f32, bf16, u8 and i64 are)")),
    }
}

/// A buffer on a GPU, from the device's stream-ordered pool; freed (stream-ordered) on drop.
pub struct CudaStorage {
    ptr: sys::CUdeviceptr,
    len: usize,
    dtype: DType,
    pub(super) dev: Arc<CudaDevice>,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({} x {}, cuda:{})", self.len, self.dtype, self.dev.ordinal)
    }
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        if self.ptr != 0 && self.dev.bind("free").is_ok() {
            // SAFETY: `ptr` came from malloc_async on this stream and is freed once, in stream
            // order, so kernels queued before the drop still see valid memory.
            let _ = unsafe { cu::free_async(self.ptr, self.dev.stream()) };
        }
    }
}

impl Clone for CudaStorage {
    /// A device-to-device copy. Panics only if the device fails (out of memory): `Clone` cannot
    /// return an error; the engine itself never clones storage.
    fn clone(&self) -> Self {
        let out = self.dev.alloc("clone", self.dtype, self.len).expect("CUDA allocation for a storage clone");
        if self.bytes() > 0 {
            // SAFETY: both buffers hold `bytes()` bytes on this device and stream.
            unsafe { cu::memcpy_dtod_async(out.ptr, self.ptr, self.bytes(), self.dev.stream()) }
                .expect("CUDA copy for a storage clone");
        }
        out
    }
}

impl CudaStorage {
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn ordinal(&self) -> usize {
        self.dev.ordinal
    }
    fn bytes(&self) -> usize {
        self.len * self.dtype.size_in_bytes()
    }
    /// The device address of element `offset`.
    pub(crate) fn ptr_at(&self, offset: usize) -> u64 {
        self.ptr + (offset * self.dtype.size_in_bytes()) as u64
    }

    /// Overwrite the whole buffer with `src` (exactly its size in bytes), queued on the device's
    /// stream after the work already there; `src` may be dropped when this returns.
    pub(crate) fn write(&self, op: &'static str, src: &[u8]) -> Result<()> {
        if src.len() != self.bytes() {
            return Err(Error::invalid(op, format!("writing {} bytes into a buffer of {}", src.len(), self.bytes())));
        }
        if src.is_empty() {
            return Ok(());
        }
        self.dev.bind(op)?;
        // SAFETY: the buffer holds exactly `src.len()` bytes on this device; a pageable source is
        // staged by the driver before this call returns, and the copy is ordered on the stream.
        unsafe { cu::memcpy_htod_async(self.ptr, src, self.dev.stream()) }.map_err(drv(op))
    }

    /// Elements `range` copied to the host (waits for the stream).
    pub(crate) fn download(&self, op: &'static str, range: std::ops::Range<usize>) -> Result<CpuStorage> {
        fn go<T: Default + Clone>(s: &CudaStorage, op: &'static str, r: std::ops::Range<usize>) -> Result<Vec<T>> {
            let mut v = vec![T::default(); r.len()];
            if !v.is_empty() {
                s.dev.bind(op)?;
                // SAFETY: the source range lies inside this buffer (callers pass a layout's range),
                // the destination has exactly its size, and the stream is synchronised before `v`
                // is read or dropped.
                unsafe {
                    cu::memcpy_dtoh_async(&mut v, s.ptr_at(r.start), s.dev.stream()).map_err(drv(op))?;
                }
            }
            s.dev.synchronize()?;
            Ok(v)
        }
        if range.end > self.len {
            return Err(Error::invalid(op, format!("range {range:?} outside a buffer of {} elements", self.len)));
        }
        Ok(match self.dtype {
            DType::F32 => CpuStorage::F32(go(self, op, range)?),
            DType::BF16 => CpuStorage::BF16(go(self, op, range)?),
            DType::U8 => CpuStorage::U8(go(self, op, range)?),
            DType::I64 => CpuStorage::I64(go(self, op, range)?),
            other => return Err(Error::dtype(op, other, "not supported on CUDA")),
        })
    }
}

/// Copy `src` into `dst` (contiguous tensors of one byte size on one GPU) with the driver's
/// device-to-device copy, queued on the device's stream: the copy-bandwidth ceiling that
/// `benches/kernels.rs` rates the bandwidth-bound kernels against. For copies within a model,
/// [`Tensor::assign`] converts dtypes and takes any layout.
pub fn copy(dst: &Tensor, src: &Tensor) -> Result<()> {
    let op = "copy";
    let bytes = src.elem_count() * src.dtype().size_in_bytes();
    if !dst.is_contiguous() || !src.is_contiguous() || bytes != dst.elem_count() * dst.dtype().size_in_bytes() {
        return Err(Error::shapes_note(op, &[dst.shape(), src.shape()], "contiguous tensors of one byte size"));
    }
    let dev = super::dev_of(op, src)?;
    if super::dev_of(op, dst)?.ordinal != dev.ordinal {
        return Err(Error::DeviceMismatch { op, a: dst.device(), b: src.device() });
    }
    if bytes == 0 {
        return Ok(());
    }
    let (d, s) = (super::ptr(op, dst)?, super::ptr(op, src)?);
    dev.bind(op)?;
    // SAFETY: both addresses hold `bytes` bytes on this device (checked above); the copy is
    // ordered on the device's stream like every kernel, so it sees their queued writes.
    unsafe { cu::memcpy_dtod_async(d, s, bytes, dev.stream()) }.map_err(drv(op))
}
