//! The CUDA backend (cargo feature `cuda`): one context and one stream per device, memory from the
//! driver's stream-ordered pool (release threshold raised so freed blocks are reused), kernels from
//! `vlm4vla-kernels` compiled once per process by NVRTC for the device's architecture, GEMMs on
//! cuBLASLt. Mirrors `cpu/` file for file; `ops/` dispatches here when a tensor lives on a GPU.
//!
//! The driver is loaded at run time (cudarc's dynamic loading). Before cudarc is touched the
//! driver library is probed with `libloading`, and initialisation runs under `catch_unwind`, so a
//! machine without a driver or GPU gets [`Error::DeviceUnavailable`] rather than a panic.
//!
//! Debug hook: with `VLM4VLA_CUDA_POISON=1` in the environment (or [`set_poison`]), every fresh
//! allocation is filled with 0xFF bytes (NaN for f32/bf16, -1 for i64, 255 for u8) so elements a
//! kernel forgets to write show up in tests.

pub(crate) mod activation;
pub(crate) mod attention;
pub mod bench;
pub(crate) mod binary;
pub(crate) mod index;
pub(crate) mod loss;
pub(crate) mod matmul;
pub(crate) mod memory;
pub(crate) mod norm;
pub(crate) mod optim;
pub(crate) mod reduce;
pub(crate) mod rope;
pub(crate) mod unary;
pub(crate) mod view;

use crate::{CpuStorage, DType, Device, Error, Layout, Result, Storage, Tensor};

/// The CUDA backend (see [`crate::backend`]); its primitives live in this folder's files.
pub(crate) struct Cuda;
use cudarc::driver::{result as cu, sys, CudaContext, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use vlm4vla_kernels::params::{StridedParams, EW_THREADS, MAX_RANK};

/// Launch `symbol` of `family` with a params struct by value followed by device pointers (u64):
/// `launch!(dev, op, "norm", symbol, grid, block, params, [x, y])`. Expands to an unsafe call (see
/// [`CudaDevice::launch`] for what the caller guarantees).
macro_rules! launch {
    ($dev:expr, $op:expr, $family:expr, $symbol:expr, $grid:expr, $block:expr, $p:expr, [$($ptr:expr),* $(,)?]) => {{
        let mut p = $p;
        let mut ptrs: Vec<u64> = vec![$($ptr),*];
        let mut args: Vec<*mut std::ffi::c_void> = vec![&mut p as *mut _ as *mut std::ffi::c_void];
        for q in ptrs.iter_mut() {
            args.push(q as *mut u64 as *mut std::ffi::c_void);
        }
        let f = $dev.func($op, $family, &$symbol)?;
        $dev.launch($op, f, $grid, $block, &mut args)
    }};
}
pub(crate) use launch;

/// As [`launch!`] with a [`vlm4vla_kernels::launch::Launch`] (symbol, grid, block, dynamic shared
/// memory): `launch_geom!(dev, op, family, l, params, [ptrs])`.
macro_rules! launch_geom {
    ($dev:expr, $op:expr, $family:expr, $l:expr, $p:expr, [$($ptr:expr),* $(,)?]) => {{
        let l = &$l;
        let mut p = $p;
        let mut ptrs: Vec<u64> = vec![$($ptr),*];
        let mut args: Vec<*mut std::ffi::c_void> = vec![&mut p as *mut _ as *mut std::ffi::c_void];
        for q in ptrs.iter_mut() {
            args.push(q as *mut u64 as *mut std::ffi::c_void);
        }
        let f = $dev.func($op, $family, &l.symbol)?;
        $dev.launch_smem($op, f, (l.grid[0], l.grid[1], l.grid[2]), l.block[0], l.smem, &mut args)
    }};
}
pub(crate) use launch_geom;

/// Blocks for a grid-stride elementwise launch over `n` items.
pub(crate) fn ew_grid(n: usize) -> (u32, u32, u32) {
    (ew_blocks(n), 1, 1)
}

/// Blocks for a one-block-per-row launch (grid-stride over rows).
pub(crate) fn row_grid(rows: usize) -> (u32, u32, u32) {
    (rows.clamp(1, 65535) as u32, 1, 1)
}

// ----- availability and the debug hook ----------------------------------------------------------

/// Driver library names, as the loader knows them.
const DRIVER_NAMES: &[&str] = &["libcuda.so.1", "libcuda.so"];

/// Whether the CUDA driver library can be loaded (the reason when not). Probed once.
fn probe_driver() -> std::result::Result<(), String> {
    static PROBE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let mut tried = Vec::new();
            for name in DRIVER_NAMES {
                // SAFETY: loading the driver library runs its initialisers, which have no
                // preconditions; the handle is dropped right away (cudarc loads it again).
                match unsafe { libloading::Library::new(name) } {
                    Ok(_) => return Ok(()),
                    Err(e) => tried.push(format!("{name} ({e})")),
                }
            }
            Err(format!(
                "no CUDA driver on this machine: could not load {} (install the NVIDIA driver, or put its \
                 folder on LD_LIBRARY_PATH)",
                tried.join(", ")
            ))
        })
        .clone()
}

fn poison_flag() -> &'static AtomicBool {
    static POISON: OnceLock<AtomicBool> = OnceLock::new();
    POISON.get_or_init(|| AtomicBool::new(std::env::var("VLM4VLA_CUDA_POISON").is_ok_and(|v| v == "1")))
}

/// Fill every fresh CUDA allocation with 0xFF bytes (NaN in f32 and bf16) from now on, so that
/// elements an op does not write show up in tests. Also enabled by `VLM4VLA_CUDA_POISON=1`.
pub fn set_poison(on: bool) {
    poison_flag().store(on, Ordering::Relaxed);
}

/// Whether fresh allocations are poisoned (see [`set_poison`]).
pub fn poison_enabled() -> bool {
    poison_flag().load(Ordering::Relaxed)
}

fn fast_flag() -> &'static AtomicBool {
    static FAST: OnceLock<AtomicBool> = OnceLock::new();
    FAST.get_or_init(|| AtomicBool::new(!std::env::var("VLM4VLA_CUDA_SIMPLE_KERNELS").is_ok_and(|v| v == "1")))
}

/// Use the performance kernels (tensor-core flash attention, 16-byte vectorised norms, gated
/// activations and rope) where they take a call (the default), or only the simple kernels (for
/// comparisons; also `VLM4VLA_CUDA_SIMPLE_KERNELS=1`). Both compute the same functions.
pub fn set_fast_kernels(on: bool) {
    fast_flag().store(on, Ordering::Relaxed);
}

/// Whether the performance kernels are used (see [`set_fast_kernels`]).
pub fn fast_kernels() -> bool {
    fast_flag().load(Ordering::Relaxed)
}

fn flash_long_min() -> &'static std::sync::atomic::AtomicUsize {
    static MIN: OnceLock<std::sync::atomic::AtomicUsize> = OnceLock::new();
    MIN.get_or_init(|| std::sync::atomic::AtomicUsize::new(vlm4vla_kernels::launch::FA_LONG_MIN_LQ))
}

/// From how many query rows the flash forward uses its 128-row blocks (`usize::MAX`: never); for
/// benchmarks comparing the two forms. Default [`vlm4vla_kernels::launch::FA_LONG_MIN_LQ`].
pub fn set_flash_long_min_lq(rows: usize) {
    flash_long_min().store(rows, Ordering::Relaxed);
}

pub(crate) fn flash_long_min_lq() -> usize {
    flash_long_min().load(Ordering::Relaxed)
}

/// Whether the CUDA driver library loads on this machine (a GPU may still be missing).
pub fn driver_available() -> bool {
    probe_driver().is_ok()
}

/// Whether `cuda:ordinal` can be used: the driver loads, the device exists and initialises.
pub fn is_available(ordinal: usize) -> bool {
    device(ordinal).is_ok()
}

/// The number of CUDA devices the driver reports (0 without a driver).
pub fn device_count() -> usize {
    if probe_driver().is_err() {
        return 0;
    }
    std::panic::catch_unwind(|| CudaContext::device_count().map(|n| n.max(0) as usize).unwrap_or(0)).unwrap_or(0)
}

/// The device's name and compute architecture (e.g. `("NVIDIA H100 80GB HBM3", "sm_90a")`).
pub fn device_info(ordinal: usize) -> Result<(String, String)> {
    let d = device(ordinal)?;
    Ok((d.name.clone(), d.arch.clone()))
}

/// Wait until all work queued on `cuda:ordinal` has finished (for timing and tests).
pub fn synchronize(ordinal: usize) -> Result<()> {
    device(ordinal)?.synchronize()
}

/// The number of multiprocessors of `cuda:ordinal` (for sizing grids and benchmarks).
pub fn sm_count(ordinal: usize) -> Result<usize> {
    let d = device(ordinal)?;
    d.bind("sm_count")?;
    // SAFETY: the device handle belongs to the bound context.
    let n = unsafe {
        cu::device::get_attribute(d.ctx.cu_device(), sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
    }
    .map_err(drv("sm_count"))?;
    Ok(n.max(1) as usize)
}

/// Times work queued on a device's stream with a pair of CUDA events:
/// `let t = EventTimer::start(0)?; ...; let ms = t.stop()?;` (stop synchronises on the end event).
pub struct EventTimer {
    dev: Arc<CudaDevice>,
    start: sys::CUevent,
    end: sys::CUevent,
}

impl EventTimer {
    /// Record the start event on `cuda:ordinal`'s stream.
    pub fn start(ordinal: usize) -> Result<EventTimer> {
        let dev = device(ordinal)?;
        dev.bind("EventTimer")?;
        let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
        let start = cu::event::create(flags).map_err(drv("EventTimer"))?;
        let end = cu::event::create(flags).map_err(drv("EventTimer"))?;
        let t = EventTimer { dev, start, end };
        // SAFETY: the event was just created in this context; the stream is the device's.
        unsafe { cu::event::record(t.start, t.dev.stream()) }.map_err(drv("EventTimer"))?;
        Ok(t)
    }

    /// Record the end event, wait for it, and return the milliseconds between the two.
    pub fn stop(self) -> Result<f32> {
        self.dev.bind("EventTimer")?;
        // SAFETY: both events belong to this context and were recorded (start) or are recorded
        // now (end) on the device's stream; synchronising on `end` makes the elapsed time valid.
        unsafe {
            cu::event::record(self.end, self.dev.stream()).map_err(drv("EventTimer"))?;
            cu::event::synchronize(self.end).map_err(drv("EventTimer"))?;
            cu::event::elapsed(self.start, self.end).map_err(drv("EventTimer"))
        }
    }
}

impl Drop for EventTimer {
    fn drop(&mut self) {
        if self.dev.bind("EventTimer").is_ok() {
            // SAFETY: the events were created in this context and are destroyed once.
            unsafe {
                let _ = cu::event::destroy(self.start);
                let _ = cu::event::destroy(self.end);
            }
        }
    }
}

// ----- the device --------------------------------------------------------------------------------

/// A loaded kernel entry point.
#[derive(Clone, Copy)]
pub(crate) struct Func(sys::CUfunction);
// SAFETY: a CUfunction is an immutable handle valid in every thread that binds its context.
unsafe impl Send for Func {}
// SAFETY: as above.
unsafe impl Sync for Func {}

struct Module(sys::CUmodule);
// SAFETY: a loaded module is an immutable handle, usable from any thread bound to its context.
unsafe impl Send for Module {}

/// One GPU: its context, the stream every op runs on, the kernels loaded so far and cuBLASLt.
pub(crate) struct CudaDevice {
    pub(crate) ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pub(crate) arch: String,
    name: String,
    modules: Mutex<HashMap<&'static str, Module>>,
    funcs: Mutex<HashMap<String, Func>>,
    pub(crate) blas: OnceLock<std::result::Result<matmul::Blas, String>>,
    staging: Mutex<Option<Staging>>,
}

/// Pinned host memory that uploads of batch-sized buffers go through, so the host returns while
/// the DMA runs; `done` is recorded after each copy out of it and waited on before it is reused.
struct Staging {
    ptr: *mut c_void,
    cap: usize,
    done: sys::CUevent,
}
// SAFETY: the pinned buffer and the event are plain driver handles, used under the device's mutex.
unsafe impl Send for Staging {}

/// Uploads of at least this many bytes (and at most `STAGING_MAX`) go through pinned memory.
const STAGING_MIN: usize = 64 << 10;
const STAGING_MAX: usize = 64 << 20;

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice(cuda:{}, {}, {})", self.ordinal, self.name, self.arch)
    }
}

/// The device for `ordinal`, initialised on first use.
pub(crate) fn device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
    let unavailable = |reason: String| Error::DeviceUnavailable { device: Device::Cuda(ordinal), reason };
    probe_driver().map_err(unavailable)?;
    let mut map = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = map.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Arc::new(init(ordinal).map_err(unavailable)?);
    map.insert(ordinal, d.clone());
    Ok(d)
}

fn init(ordinal: usize) -> std::result::Result<CudaDevice, String> {
    let r = std::panic::catch_unwind(|| -> std::result::Result<CudaDevice, String> {
        fn e(what: &'static str) -> impl Fn(cu::DriverError) -> String {
            move |err| format!("{what}: {err:?}")
        }
        let count = CudaContext::device_count().map_err(e("cuDeviceGetCount"))?;
        if ordinal >= count.max(0) as usize {
            return Err(format!("the driver reports {count} CUDA device(s)"));
        }
        let ctx = CudaContext::new(ordinal).map_err(e("creating the context"))?;
        let (major, minor) = ctx.compute_capability().map_err(e("compute capability"))?;
        let arch = vlm4vla_kernels::arch_for_capability(major as u32, minor as u32);
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let stream = ctx.new_stream().map_err(e("creating the stream"))?;
        // SAFETY: the device handle comes from the context just created; the attribute value is a
        // u64 as CU_MEMPOOL_ATTR_RELEASE_THRESHOLD requires.
        unsafe {
            let pool = cu::device::get_default_mem_pool(ctx.cu_device()).map_err(e("default memory pool"))?;
            let mut threshold: u64 = u64::MAX;
            cu::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut c_void,
            )
            .map_err(e("raising the pool's release threshold"))?;
        }
        Ok(CudaDevice {
            ordinal,
            ctx,
            stream,
            arch,
            name,
            modules: Mutex::new(HashMap::new()),
            funcs: Mutex::new(HashMap::new()),
            blas: OnceLock::new(),
            staging: Mutex::new(None),
        })
    });
    r.unwrap_or_else(|p| Err(format!("the CUDA driver failed during initialisation: {}", panic_message(&p))))
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// A driver error as an engine error naming the op.
pub(crate) fn drv(op: &'static str) -> impl Fn(cu::DriverError) -> Error {
    move |e| Error::Cuda { op, msg: format!("{e:?}") }
}

impl CudaDevice {
    pub(crate) fn stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Make this device's context current on the calling thread (cheap when it already is).
    pub(crate) fn bind(&self, op: &'static str) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv(op))
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.bind("synchronize")?;
        // SAFETY: the stream belongs to this device's context, which is current.
        unsafe { cu::stream::synchronize(self.stream()) }.map_err(drv("synchronize"))
    }

    /// The kernel `symbol` of `family`, compiling and loading the family on first use.
    pub(crate) fn func(&self, op: &'static str, family: &'static str, symbol: &str) -> Result<Func> {
        let mut funcs = self.funcs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = funcs.get(symbol) {
            return Ok(*f);
        }
        self.bind(op)?;
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match modules.get(family) {
                Some(m) => m.0,
                None => {
                    let m = self.load_family(op, family)?;
                    modules.insert(family, Module(m));
                    m
                }
            }
        };
        let name = std::ffi::CString::new(symbol).map_err(|_| Error::invalid(op, "kernel name with a NUL"))?;
        // SAFETY: `module` was loaded into this device's context, which is current.
        let f = unsafe { cu::module::get_function(module, name) }
            .map_err(|e| Error::Cuda { op, msg: format!("no kernel {symbol} in {family}.cu: {e:?}") })?;
        funcs.insert(symbol.to_string(), Func(f));
        Ok(Func(f))
    }

    fn load_family(&self, op: &'static str, family: &'static str) -> Result<sys::CUmodule> {
        let kernel = vlm4vla_kernels::kernel(family)
            .ok_or_else(|| Error::Cuda { op, msg: format!("no kernel family {family}") })?;
        let compiler = vlm4vla_kernels::Compiler::global()
            .map_err(|e| Error::Cuda { op, msg: format!("cannot compile kernels: {e}") })?;
        let compiled = compiler
            .compile(kernel, &self.arch)
            .map_err(|e| Error::Cuda { op, msg: format!("compiling {family}.cu: {e}") })?;
        // The CUBIN for this exact architecture when NVRTC produced one, else the PTX (JIT).
        // SAFETY: both images are complete outputs of NVRTC; the PTX is NUL-terminated.
        let module = match &compiled.cubin {
            Some(cubin) => unsafe { cu::module::load_data(cubin.as_ptr() as *const c_void) },
            None => {
                let ptx = std::ffi::CString::new(compiled.ptx.as_str())
                    .map_err(|_| Error::Cuda { op, msg: "PTX with a NUL byte".into() })?;
                unsafe { cu::module::load_data(ptx.as_ptr() as *const c_void) }
            }
        };
        module.map_err(|e| Error::Cuda { op, msg: format!("loading {family}.cu for {}: {e:?}", self.arch) })
    }

    /// Launch `f` on this device's stream.
    ///
    /// # Safety
    /// `args` must point at values whose types and order match the kernel's parameters, every
    /// device pointer among them must address enough memory of this device for the launch, and
    /// the values must stay alive until this call returns (the driver copies them).
    pub(crate) unsafe fn launch(
        &self,
        op: &'static str,
        f: Func,
        grid: (u32, u32, u32),
        block: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        self.bind(op)?;
        cu::launch_kernel(f.0, grid, (block, 1, 1), 0, self.stream(), args).map_err(drv(op))
    }

    /// Launch `f` with `smem` bytes of dynamic shared memory, first raising the kernel's limit
    /// when `smem` is over the 48 KiB that needs no opt-in.
    ///
    /// # Safety
    /// As [`CudaDevice::launch`].
    pub(crate) unsafe fn launch_smem(
        &self,
        op: &'static str,
        f: Func,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        self.bind(op)?;
        if smem > vlm4vla_kernels::launch::SMEM_DEFAULT_LIMIT {
            cu::function::set_function_attribute(
                f.0,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(drv(op))?;
        }
        cu::launch_kernel(f.0, grid, (block, 1, 1), smem, self.stream(), args).map_err(drv(op))
    }

    /// Launch the elementwise kernel `symbol` over `n` items (grid-stride, EW_THREADS a block).
    ///
    /// # Safety
    /// As [`CudaDevice::launch`].
    pub(crate) unsafe fn launch_ew(
        &self,
        op: &'static str,
        family: &'static str,
        symbol: &str,
        n: usize,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let f = self.func(op, family, symbol)?;
        self.launch(op, f, (ew_blocks(n), 1, 1), EW_THREADS, args)
    }

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

fn ew_blocks(n: usize) -> u32 {
    n.div_ceil(EW_THREADS as usize).clamp(1, 1 << 16) as u32
}

/// Dtypes a CUDA buffer may hold.
pub(crate) fn check_dtype(op: &'static str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::BF16 | DType::U8 | DType::I64 => Ok(()),
        other => Err(Error::dtype(op, other, "not supported on CUDA (f32, bf16, u8 and i64 are)")),
    }
}

/// The symbol suffix of a float kernel: f32 or bf16.
pub(crate) fn float_name(op: &'static str, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => Err(Error::dtype(op, other, "CUDA kernels compute f32 and bf16")),
    }
}

/// The symbol suffix of a `view.cu` kernel: any CUDA dtype.
pub(crate) fn any_name(op: &'static str, dtype: DType) -> Result<&'static str> {
    check_dtype(op, dtype)?;
    Ok(dtype.as_str())
}

// ----- storage -----------------------------------------------------------------------------------

/// A buffer on a GPU, from the device's stream-ordered pool; freed (stream-ordered) on drop.
pub struct CudaStorage {
    ptr: sys::CUdeviceptr,
    len: usize,
    dtype: DType,
    dev: Arc<CudaDevice>,
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

// ----- tensors on the device ---------------------------------------------------------------------

/// The device of a CUDA tensor (an error naming `op` for a CPU tensor).
pub(crate) fn dev_of(op: &'static str, t: &Tensor) -> Result<Arc<CudaDevice>> {
    match &*t.read_storage() {
        Storage::Cuda(c) => Ok(c.dev.clone()),
        Storage::Cpu(_) => Err(Error::DeviceMismatch { op, a: Device::Cuda(0), b: Device::Cpu }),
    }
}

/// The device address of `t`'s first element (its layout's offset applied). The pointer stays
/// valid while `t` lives, and past its drop for work already queued (frees are stream-ordered).
pub(crate) fn ptr(op: &'static str, t: &Tensor) -> Result<u64> {
    match &*t.read_storage() {
        Storage::Cuda(c) => Ok(c.ptr_at(t.layout().offset())),
        Storage::Cpu(_) => Err(Error::DeviceMismatch { op, a: Device::Cuda(0), b: Device::Cpu }),
    }
}

/// Like [`ptr`] for an optional tensor (0 = null).
pub(crate) fn opt_ptr(op: &'static str, t: Option<&Tensor>) -> Result<u64> {
    t.map_or(Ok(0), |t| ptr(op, t))
}

/// `t` made contiguous on its device without recording an op (for kernels that need it).
pub(crate) fn contig(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() {
        Ok(t.clone())
    } else {
        crate::no_grad(|| t.detach().contiguous())
    }
}

/// A fresh tensor over `s` with a contiguous layout, no graph.
pub(crate) fn tensor(s: CudaStorage, shape: &[usize]) -> Tensor {
    Tensor::from_storage(Storage::Cuda(s), shape, None)
}

/// Dims and per-operand strides of a strided walk, with size-1 dims dropped and adjacent dims
/// merged where every operand allows it. Errors past `MAX_RANK` dims.
pub(crate) fn strided_params(op: &'static str, shape: &[usize], layouts: [&Layout; 2]) -> Result<StridedParams> {
    let mut dims: Vec<usize> = Vec::new();
    let mut st: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
    for (d, &size) in shape.iter().enumerate() {
        if size == 1 {
            continue;
        }
        let s = [layouts[0].strides()[d], layouts[1].strides()[d]];
        if let Some(&last) = dims.last() {
            let r = dims.len() - 1;
            if (0..2).all(|i| st[i][r] == s[i] * size) {
                dims[r] = last * size;
                st[0][r] = s[0];
                st[1][r] = s[1];
                continue;
            }
        }
        dims.push(size);
        st[0].push(s[0]);
        st[1].push(s[1]);
    }
    if dims.len() > MAX_RANK {
        return Err(Error::shapes_note(op, &[shape], format!("CUDA strided kernels take at most {MAX_RANK} dims")));
    }
    let mut p = StridedParams {
        n: shape.iter().product::<usize>() as i64,
        rank: dims.len() as i32,
        a_offset: layouts[0].offset() as i64,
        b_offset: layouts[1].offset() as i64,
        ..Default::default()
    };
    for (i, &d) in dims.iter().enumerate() {
        p.dims[i] = d as i64;
        p.a_strides[i] = st[0][i] as i64;
        p.b_strides[i] = st[1][i] as i64;
    }
    Ok(p)
}

/// `src` (any layout) as a contiguous buffer of `dtype` on its device.
pub(crate) fn to_contiguous(op: &'static str, src: &Tensor, dtype: DType) -> Result<CudaStorage> {
    let dev = dev_of(op, src)?;
    let out = dev.alloc(op, dtype, src.elem_count())?;
    view::convert_into(op, src, &out, &Layout::contiguous(src.shape()))?;
    Ok(out)
}

/// The host copy of a CUDA tensor's elements, row-major, in its dtype.
pub(crate) fn to_cpu(t: &Tensor) -> Result<CpuStorage> {
    let op = "to_cpu";
    if let Some(r) = t.layout().contiguous_range() {
        let s = t.read_storage();
        let Storage::Cuda(c) = &*s else { return Err(Error::invalid(op, "not a CUDA tensor")) };
        return c.download(op, r);
    }
    to_contiguous(op, t, t.dtype())?.download(op, 0..t.elem_count())
}

/// Upload a CPU tensor's elements (row-major) to `cuda:ordinal`.
pub(crate) fn from_cpu(src: &CpuStorage, ordinal: usize) -> Result<CudaStorage> {
    let dev = device(ordinal)?;
    dev.upload("to_device", src)
}

/// Write `src` (same shape, any layout, converted to the destination's dtype) into the contiguous
/// range of `dst` its layout covers.
pub(crate) fn assign(dst: &Tensor, src: &Tensor) -> Result<()> {
    let op = "assign";
    let src = if src.device() == dst.device() { src.clone() } else { src.to_device(dst.device())? };
    let guard = dst.read_storage();
    let Storage::Cuda(d) = &*guard else { return Err(Error::invalid(op, "not a CUDA tensor")) };
    view::convert_into(op, &src, d, dst.layout())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver (the CI machine) asking for a GPU is a clear error and the CPU still
    /// works; with one, a round trip through the device is exact.
    #[test]
    fn missing_driver_is_an_error_not_a_panic() {
        let r = Tensor::zeros(&[2, 3], DType::F32, Device::Cuda(0));
        match probe_driver() {
            Err(_) => {
                let e = r.expect_err("no driver, yet a CUDA tensor was made");
                let msg = e.to_string();
                assert!(matches!(e, Error::DeviceUnavailable { device: Device::Cuda(0), .. }), "{msg}");
                assert!(msg.contains("libcuda"), "{msg}");
                assert!(!is_available(0));
                assert_eq!(device_count(), 0);
                assert_eq!(Device::available(), vec![Device::Cpu]);
                let cpu = Tensor::from_vec(vec![1f32, 2., 3.], &[3], Device::Cpu).unwrap();
                assert!(cpu.to_device(Device::Cuda(0)).is_err());
                assert_eq!(cpu.exp().unwrap().to_vec::<f32>().unwrap().len(), 3);
            }
            Ok(()) if is_available(0) => {
                let x = Tensor::from_vec(vec![1f32, -2., 3.5], &[3], Device::Cpu).unwrap();
                let back = x.to_device(Device::Cuda(0)).unwrap().to_device(Device::Cpu).unwrap();
                assert_eq!(back.to_vec::<f32>().unwrap(), vec![1., -2., 3.5]);
            }
            Ok(()) => assert!(r.is_err()),
        }
    }
}
