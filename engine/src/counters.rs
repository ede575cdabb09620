//! What crosses the seam, counted per thread: backend primitive calls (a kernel launch, a copy or
//! a memset on a GPU), host reads (a download that waits for a GPU) and fresh buffers. A training
//! step's counts say where a GPU step would stall or launch too often, on the CPU as on the GPU,
//! so a test can hold a step to its budget.
//!
//! ```
//! use vlm4vla_engine::{counters, Device, DType, Tensor};
//! let x = Tensor::ones(&[4], DType::F32, Device::Cpu).unwrap();
//! let before = counters::snapshot();
//! let y = x.exp().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
//! let used = counters::snapshot().since(&before);
//! assert!(y > 10.0);
//! assert_eq!(used.host_reads, 1);
//! assert!(used.primitives >= 2 && used.allocations >= 2);
//! ```
//!
//! Memory is counted globally (over every thread and device): the bytes of tensor storage alive
//! now and the most alive at once since [`reset_peak_bytes`]. A step benchmark reads the bytes
//! its forward saves for the backward from the live count before and after the forward.
//!
//! ```
//! use vlm4vla_engine::{counters, Device, DType, Tensor};
//! let before = counters::memory().live_bytes;
//! let x = Tensor::zeros(&[256], DType::F32, Device::Cpu).unwrap();
//! let view = x.reshape(&[16, 16]).unwrap();
//! assert_eq!(counters::memory().live_bytes, before + 1024);
//! drop((x, view));
//! assert_eq!(counters::memory().live_bytes, before);
//! assert!(counters::memory().peak_bytes >= before + 1024);
//! ```

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    static PRIMITIVES: Cell<u64> = const { Cell::new(0) };
    static HOST_READS: Cell<u64> = const { Cell::new(0) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static FLOPS: Cell<u64> = const { Cell::new(0) };
}

/// The counts of this thread since it started (see [`Counts::since`] for a difference).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Backend primitive calls: ops' forward and backward primitives, optimizer steps (one per
    /// device and step count), gradient-norm reductions (one per device), zeros and uploads.
    pub primitives: u64,
    /// Reads of a tensor's elements by the host (`to_vec`, `to_scalar`, `to_cpu_storage`): a
    /// synchronisation on a GPU. Reading host data back is not one: a CPU tensor the host filled
    /// from its own memory (`from_vec`, `full`, a loaded file) that no primitive or in-place
    /// write has touched since (on a GPU run, the CPU-side inputs). A tensor placed on a GPU is
    /// device data; code that uploads host data and reads it back is counted there, so it
    /// should keep the host copy instead.
    pub host_reads: u64,
    /// Fresh tensor buffers (op outputs, uploads, zeros).
    pub allocations: u64,
    /// Floating-point operations of the GEMMs and attention products executed (2 per
    /// multiply-add; attention counts the score and value products over the visible scores). The
    /// model FLOPs a step benchmark reports.
    pub flops: u64,
}

impl Counts {
    /// The counts from `earlier` to `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            primitives: self.primitives - earlier.primitives,
            host_reads: self.host_reads - earlier.host_reads,
            allocations: self.allocations - earlier.allocations,
            flops: self.flops - earlier.flops,
        }
    }
}

/// This thread's counts so far.
pub fn snapshot() -> Counts {
    Counts {
        primitives: PRIMITIVES.with(Cell::get),
        host_reads: HOST_READS.with(Cell::get),
        allocations: ALLOCATIONS.with(Cell::get),
        flops: FLOPS.with(Cell::get),
    }
}

fn bump(c: &'static std::thread::LocalKey<Cell<u64>>) {
    c.with(|c| c.set(c.get() + 1));
}

pub(crate) fn primitive() {
    bump(&PRIMITIVES);
}

pub(crate) fn host_read() {
    bump(&HOST_READS);
}

pub(crate) fn allocation() {
    bump(&ALLOCATIONS);
}

/// Count `n` floating-point operations (see [`Counts::flops`]).
pub(crate) fn flops(n: u64) {
    FLOPS.with(|c| c.set(c.get() + n));
}

static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
static PEAK_BYTES: AtomicU64 = AtomicU64::new(0);

/// Tensor storage bytes, over every thread and device (CPU and GPU buffers alike; views share
/// their storage's bytes, which count once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Bytes of the tensor storages alive now.
    pub live_bytes: u64,
    /// The most bytes alive at once since the process started or the last [`reset_peak_bytes`].
    pub peak_bytes: u64,
}

/// The storage bytes alive now and their peak.
pub fn memory() -> Memory {
    Memory { live_bytes: LIVE_BYTES.load(Ordering::Relaxed), peak_bytes: PEAK_BYTES.load(Ordering::Relaxed) }
}

/// Start a new peak from the bytes alive now (e.g. before the step a benchmark measures).
pub fn reset_peak_bytes() {
    PEAK_BYTES.store(LIVE_BYTES.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// A tensor storage of `bytes` was created.
pub(crate) fn storage_created(bytes: u64) {
    let live = LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
}

/// A tensor storage of `bytes` was dropped.
pub(crate) fn storage_dropped(bytes: u64) {
    LIVE_BYTES.fetch_sub(bytes, Ordering::Relaxed);
}
