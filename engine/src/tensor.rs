//! The tensor handle: a cheap-to-clone `Arc` over storage, layout, dtype, device and an optional
//! autograd record.

use crate::autograd::{self, Op};
use crate::storage::SharedStorage;
use crate::{CpuStorage, DType, Device, Error, Layout, Result, Storage, WithDType};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};

/// A unique id per tensor handle created by an op (views get their own id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct TensorInner {
    id: TensorId,
    storage: Arc<SharedStorage>,
    layout: Layout,
    dtype: DType,
    device: Device,
    op: Option<Op>,
    is_variable: bool,
}

/// An n-dimensional array on a device, with optional gradient tracking.
///
/// ```
/// use vlm4vla_engine::{Tensor, Device};
/// let a = Tensor::from_vec(vec![1f32, 2., 3., 4.], &[2, 2], Device::Cpu).unwrap();
/// let b = a.transpose(0, 1).unwrap().matmul(&a).unwrap();
/// assert_eq!(b.to_vec::<f32>().unwrap(), vec![10., 14., 14., 20.]);
/// ```
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorInner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{:?}, {}, {}", self.shape(), self.dtype(), self.device())?;
        if let Some(op) = &self.0.op {
            write!(f, ", op={}", op.name())?;
        }
        if self.0.is_variable {
            write!(f, ", var")?;
        }
        write!(f, "]")
    }
}

impl Tensor {
    // ----- construction -------------------------------------------------------------------

    /// A new tensor over fresh storage; `op` is kept only when an input tracks gradients.
    pub(crate) fn from_storage(storage: Storage, shape: &[usize], op: Option<Op>) -> Tensor {
        crate::counters::allocation();
        let layout = Layout::contiguous(shape);
        Self::from_parts(Arc::new(SharedStorage::new(storage)), layout, op)
    }

    pub(crate) fn from_cpu(storage: CpuStorage, shape: &[usize], op: Option<Op>) -> Tensor {
        Self::from_storage(Storage::Cpu(storage), shape, op)
    }

    /// Host data (see [`SharedStorage::host_data`]) placed on `device`: on the CPU the tensor is the host
    /// data itself; elsewhere an upload.
    fn from_host(storage: CpuStorage, shape: &[usize], device: Device) -> Result<Tensor> {
        let t = Tensor::from_cpu(storage, shape, None);
        t.0.storage.host_data.store(true, std::sync::atomic::Ordering::Relaxed);
        t.to_device(device)
    }

    /// Whether this tensor is host data (see [`SharedStorage::host_data`]).
    fn is_host_data(&self) -> bool {
        self.0.storage.host_data.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn from_parts(storage: Arc<SharedStorage>, layout: Layout, op: Option<Op>) -> Tensor {
        let (dtype, device) = {
            let s = storage.read();
            (s.dtype(), s.device())
        };
        Tensor(Arc::new(TensorInner { id: TensorId::new(), storage, layout, dtype, device, op, is_variable: false }))
    }

    /// A view of this tensor's storage with another layout.
    pub(crate) fn view_with(&self, layout: Layout, op: Option<Op>) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: TensorId::new(),
            storage: self.0.storage.clone(),
            layout,
            dtype: self.0.dtype,
            device: self.0.device,
            op,
            is_variable: false,
        }))
    }

    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: &[usize], device: Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::invalid(
                "from_vec",
                format!("{} elements for shape {shape:?} ({n} elements)", data.len()),
            ));
        }
        Tensor::from_host(CpuStorage::from_vec(data), shape, device)
    }

    pub fn from_slice<T: WithDType>(data: &[T], shape: &[usize], device: Device) -> Result<Tensor> {
        Self::from_vec(data.to_vec(), shape, device)
    }

    /// A rank-0 tensor.
    pub fn scalar<T: WithDType>(v: T, device: Device) -> Result<Tensor> {
        Self::from_vec(vec![v], &[], device)
    }

    pub fn full(value: f64, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let n = shape.iter().product();
        if value == 0.0 {
            return crate::backend::placing(device)?.zeros(device, shape, dtype);
        }
        let s = match dtype {
            DType::U8 => CpuStorage::U8(vec![value as u8; n]),
            DType::I64 => CpuStorage::I64(vec![value as i64; n]),
            DType::F16 => CpuStorage::F16(vec![half::f16::from_f64(value); n]),
            DType::BF16 => CpuStorage::BF16(vec![half::bf16::from_f64(value); n]),
            DType::F32 => CpuStorage::F32(vec![value as f32; n]),
            DType::F64 => CpuStorage::F64(vec![value; n]),
        };
        Tensor::from_host(s, shape, device)
    }

    pub fn zeros(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        Self::full(0.0, shape, dtype, device)
    }

    pub fn ones(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        Self::full(1.0, shape, dtype, device)
    }

    pub fn zeros_like(&self) -> Result<Tensor> {
        Self::zeros(self.shape(), self.dtype(), self.device())
    }

    pub fn ones_like(&self) -> Result<Tensor> {
        Self::ones(self.shape(), self.dtype(), self.device())
    }

    /// `start, start + step, ...` up to (excluding) `end`.
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType, device: Device) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || (end - start) / step < 0.0 {
            return Err(Error::invalid("arange", format!("empty or infinite range {start}..{end} step {step}")));
        }
        let n = ((end - start) / step).ceil() as usize;
        let v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
        Tensor::from_vec(v, &[n], Device::Cpu)?.to_dtype(dtype)?.to_device(device)
    }

    /// Uniform samples in `[lo, hi)` from a seeded ChaCha8 stream (reproducible across platforms).
    pub fn rand_uniform(lo: f64, hi: f64, shape: &[usize], dtype: DType, device: Device, seed: u64) -> Result<Tensor> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| lo + (hi - lo) * rng.gen::<f64>()).collect();
        Tensor::from_vec(v, shape, Device::Cpu)?.to_dtype(dtype)?.to_device(device)
    }

    /// Normal samples (Box–Muller over a seeded ChaCha8 stream).
    pub fn rand_normal(
        mean: f64,
        std: f64,
        shape: &[usize],
        dtype: DType,
        device: Device,
        seed: u64,
    ) -> Result<Tensor> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            let u1: f64 = 1.0 - rng.gen::<f64>();
            let u2: f64 = rng.gen::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = 2.0 * std::f64::consts::PI * u2;
            v.push(mean + std * r * t.cos());
            v.push(mean + std * r * t.sin());
        }
        v.truncate(n);
        Tensor::from_vec(v, shape, Device::Cpu)?.to_dtype(dtype)?.to_device(device)
    }

    // ----- accessors ----------------------------------------------------------------------

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        self.0.layout.shape()
    }
    pub fn dims(&self) -> &[usize] {
        self.shape()
    }
    pub fn rank(&self) -> usize {
        self.0.layout.rank()
    }
    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// The size of dimension `d` (negative counts from the end).
    pub fn dim(&self, d: impl crate::Dim) -> Result<usize> {
        let d = d.resolve(self.rank(), "dim", self.shape())?;
        Ok(self.shape()[d])
    }

    pub(crate) fn op(&self) -> Option<&Op> {
        self.0.op.as_ref()
    }

    /// Whether gradients flow to or through this tensor.
    pub fn tracks_grad(&self) -> bool {
        self.0.is_variable || self.0.op.is_some()
    }

    pub fn is_variable(&self) -> bool {
        self.0.is_variable
    }

    pub(crate) fn read_storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read()
    }

    /// The storage for writing in place: from here on it is no longer host data.
    pub(crate) fn write_storage(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.host_data.store(false, std::sync::atomic::Ordering::Relaxed);
        self.0.storage.write()
    }

    pub(crate) fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    // ----- gradient tracking -------------------------------------------------------------

    /// A leaf that requires a gradient, sharing this tensor's storage.
    pub fn variable(&self) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: TensorId::new(),
            storage: self.0.storage.clone(),
            layout: self.0.layout.clone(),
            dtype: self.0.dtype,
            device: self.0.device,
            op: None,
            is_variable: true,
        }))
    }

    /// The same values with no graph and no gradient requirement.
    pub fn detach(&self) -> Tensor {
        self.view_with(self.0.layout.clone(), None)
    }

    /// Run reverse-mode differentiation from this scalar (or any-shape, seeded with ones) tensor.
    pub fn backward(&self) -> Result<autograd::GradStore> {
        autograd::backward(self)
    }

    /// Like [`backward`](Self::backward), adding into an existing store (micro-batch accumulation).
    pub fn backward_into(&self, store: &mut autograd::GradStore) -> Result<()> {
        autograd::backward_into(self, store)
    }

    // ----- data out -----------------------------------------------------------------------

    /// Count a host read of this tensor, unless it is host data (its elements are already on
    /// the host: nothing waits for a device).
    fn count_host_read(&self) {
        if !self.is_host_data() {
            crate::counters::host_read();
        }
    }

    /// All elements in row-major order, converted to `T`.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.count_host_read();
        crate::backend::of(self.device()).with_host(self, &mut |s, l| out = s.gather_as::<T>(l))?;
        Ok(out)
    }

    /// The single element of a one-element tensor.
    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::shapes_note("to_scalar", &[self.shape()], "expected one element"));
        }
        Ok(self.to_vec::<T>()?[0])
    }

    /// A contiguous CPU copy of the elements (same dtype).
    pub fn to_cpu_storage(&self) -> Result<CpuStorage> {
        let mut out = None;
        self.count_host_read();
        crate::backend::of(self.device()).with_host(self, &mut |s, l| out = Some(s.gather(l)))?;
        out.ok_or_else(|| Error::invalid("to_cpu_storage", "the backend gave no host copy"))
    }

    /// A copy on `device` (this tensor when it is already there). Not recorded by the autograd:
    /// move parameters and inputs before building the graph.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let target = crate::backend::placing(device)?;
        target.upload(self.to_cpu_storage()?, self.shape(), device)
    }

    /// Overwrite this tensor's elements with `src`'s (same shape; converted to this dtype). Used by
    /// optimizers on parameters; the tensor must be contiguous and own its whole storage range.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::shapes("assign", &[self.shape(), src.shape()]));
        }
        if self.layout().contiguous_range().is_none() {
            return Err(Error::invalid("assign", "destination must be contiguous"));
        }
        self.backend().assign(self, src)
    }

    /// Helper for ops: attach `op` to a backend primitive's fresh output, when an input tracks
    /// gradients (a handle nobody else holds keeps its id; a shared one becomes a new view).
    pub(crate) fn recorded(self, inputs: &[&Tensor], op: impl FnOnce() -> Op) -> Tensor {
        let Some(op) = autograd::record(inputs, op) else { return self };
        match Arc::try_unwrap(self.0) {
            Ok(mut inner) => {
                inner.op = Some(op);
                Tensor(Arc::new(inner))
            }
            Err(shared) => {
                let t = Tensor(shared);
                t.view_with(t.layout().clone(), Some(op))
            }
        }
    }

    /// Helper for ops: check that all tensors share dtype and device.
    pub(crate) fn same_dtype_device(op: &'static str, ts: &[&Tensor]) -> Result<()> {
        let a = ts[0];
        for t in &ts[1..] {
            if t.dtype() != a.dtype() {
                return Err(Error::dtype(
                    op,
                    t.dtype(),
                    format!("operands must share a dtype ({} and {})", a.dtype(), t.dtype()),
                ));
            }
            if t.device() != a.device() {
                return Err(Error::DeviceMismatch { op, a: a.device(), b: t.device() });
            }
        }
        Ok(())
    }
}
