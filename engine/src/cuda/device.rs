//! The device: whether a driver and GPU are there, the debug and kernel-choice switches, one
//! context and stream per GPU, and the kernels loaded on it. Kernel functions are resolved once
//! per device into a table indexed by [`KernelId::index`]: after the first launch of a kernel a
//! lookup is one atomic load, with no string built and no lock taken. Each family's source is
//! compiled (NVRTC) and loaded on the first launch of one of its kernels.

use super::blas;
use super::storage::Staging;
use crate::{Device, Error, Result};
use cudarc::driver::{result as cu, sys, CudaContext, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use vlm4vla_kernels::launch::SMEM_DEFAULT_LIMIT;
use vlm4vla_kernels::{Kernel, KernelId, FAMILY_COUNT, KERNEL_SLOTS};

// ----- availability and the debug hook ----------------------------------------------------------

/// Driver library names, as the loader knows them.
const DRIVER_NAMES: &[&str] = &["libcuda.so.1", "libcuda.so"];

/// Whether the CUDA driver library can be loaded (the reason when not). Probed once.
pub(super) fn probe_driver() -> std::result::Result<(), String> {
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

fn flash_long_min() -> &'static AtomicUsize {
    static MIN: OnceLock<AtomicUsize> = OnceLock::new();
    MIN.get_or_init(|| AtomicUsize::new(vlm4vla_kernels::launch::FA_LONG_MIN_LQ))
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

/// The memory pool of a GPU: bytes its allocations use now and their high-water mark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolMemory {
    /// Bytes of live allocations (the driver's `CU_MEMPOOL_ATTR_USED_MEM_CURRENT`).
    pub used_bytes: u64,
    /// The most bytes in use at once since the device started or the last [`reset_pool_peak`]
    /// (`CU_MEMPOOL_ATTR_USED_MEM_HIGH`). Frees count when the stream reaches them.
    pub peak_bytes: u64,
}

/// The default memory pool's use on `cuda:ordinal` (the pool every engine buffer comes from).
pub fn pool_memory(ordinal: usize) -> Result<PoolMemory> {
    let d = device(ordinal)?;
    d.bind("pool_memory")?;
    let attr = |a: sys::CUmemPool_attribute| -> Result<u64> {
        let mut v: u64 = 0;
        // SAFETY: the device handle belongs to the bound context; both attributes are u64s.
        unsafe {
            let pool = cu::device::get_default_mem_pool(d.ctx.cu_device()).map_err(drv("pool_memory"))?;
            cu::mem_pool::get_attribute(pool, a, &mut v as *mut u64 as *mut c_void).map_err(drv("pool_memory"))?;
        }
        Ok(v)
    };
    Ok(PoolMemory {
        used_bytes: attr(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
        peak_bytes: attr(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
    })
}

/// Restart `cuda:ordinal`'s pool high-water mark from the bytes in use now (call after
/// [`synchronize`], so frees already queued are counted).
pub fn reset_pool_peak(ordinal: usize) -> Result<()> {
    let d = device(ordinal)?;
    d.bind("reset_pool_peak")?;
    let mut zero: u64 = 0;
    // SAFETY: as in `pool_memory`; the driver only accepts 0 for this attribute, which resets it.
    unsafe {
        let pool = cu::device::get_default_mem_pool(d.ctx.cu_device()).map_err(drv("reset_pool_peak"))?;
        cu::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            &mut zero as *mut u64 as *mut c_void,
        )
        .map_err(drv("reset_pool_peak"))
    }
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
pub(crate) struct Func(pub(super) sys::CUfunction);
// SAFETY: a CUfunction is an immutable handle valid in every thread that binds its context.
unsafe impl Send for Func {}
// SAFETY: as above.
unsafe impl Sync for Func {}

struct Module(sys::CUmodule);
// SAFETY: a loaded module is an immutable handle, usable from any thread bound to its context.
unsafe impl Send for Module {}
// SAFETY: as above; it is only read after it is set.
unsafe impl Sync for Module {}

/// One GPU: its context, the stream every op runs on, the kernels loaded so far and cuBLASLt.
pub(crate) struct CudaDevice {
    pub(crate) ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pub(crate) arch: String,
    name: String,
    /// Each family's module, loaded on the first launch of one of its kernels.
    modules: [OnceLock<Module>; FAMILY_COUNT],
    /// Each kernel's function, by [`KernelId::index`], set on its first launch.
    funcs: Box<[OnceLock<Func>]>,
    /// The dynamic shared memory each kernel has been allowed beyond the default, by index.
    smem_allowed: Box<[AtomicU32]>,
    /// Held while a module or function is being loaded (never on the launch path).
    loading: Mutex<()>,
    pub(crate) blas: OnceLock<std::result::Result<blas::Blas, String>>,
    pub(super) staging: Mutex<Option<Staging>>,
}

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
            modules: [const { OnceLock::new() }; FAMILY_COUNT],
            funcs: (0..KERNEL_SLOTS).map(|_| OnceLock::new()).collect(),
            smem_allowed: (0..KERNEL_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            loading: Mutex::new(()),
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

    /// The loaded function of `kernel`: an index into the device's table once it has been
    /// launched, else compiled (its family, once) and loaded now.
    pub(crate) fn func(&self, op: &'static str, kernel: KernelId) -> Result<Func> {
        match self.funcs[kernel.index()].get() {
            Some(f) => Ok(*f),
            None => self.load_func(op, kernel),
        }
    }

    /// Allow `f` (the function of `kernel`) `smem` bytes of dynamic shared memory when that is
    /// over the 48 KiB that needs no opt-in; one driver call per kernel and size, not per launch.
    pub(crate) fn allow_smem(&self, op: &'static str, kernel: KernelId, f: Func, smem: u32) -> Result<()> {
        let allowed = &self.smem_allowed[kernel.index()];
        if smem <= SMEM_DEFAULT_LIMIT || smem <= allowed.load(Ordering::Relaxed) {
            return Ok(());
        }
        // SAFETY: `f` is a function loaded in this device's context, which the caller made
        // current; the attribute takes a byte count.
        unsafe {
            cu::function::set_function_attribute(
                f.0,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
        }
        .map_err(drv(op))?;
        allowed.fetch_max(smem, Ordering::Relaxed);
        Ok(())
    }

    #[cold]
    fn load_func(&self, op: &'static str, kernel: KernelId) -> Result<Func> {
        let family = kernel.kernel();
        let symbol = kernel.symbol().ok_or_else(|| Error::Cuda {
            op,
            msg: format!("no kernel {kernel}: {} does not instantiate it", family.file),
        })?;
        let _loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &self.funcs[kernel.index()];
        if let Some(f) = slot.get() {
            return Ok(*f);
        }
        self.bind(op)?;
        let module = &self.modules[kernel.op.family_index()];
        let module = match module.get() {
            Some(m) => m.0,
            None => {
                let m = self.load_family(op, family)?;
                let _ = module.set(Module(m));
                m
            }
        };
        let name = std::ffi::CString::new(symbol).map_err(|_| Error::invalid(op, "kernel name with a NUL"))?;
        // SAFETY: `module` was loaded into this device's context, which is current.
        let f = unsafe { cu::module::get_function(module, name) }
            .map_err(|e| Error::Cuda { op, msg: format!("no kernel {symbol} in {}: {e:?}", family.file) })?;
        let _ = slot.set(Func(f));
        Ok(Func(f))
    }

    fn load_family(&self, op: &'static str, kernel: &'static Kernel) -> Result<sys::CUmodule> {
        let family = kernel.family;
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
}
