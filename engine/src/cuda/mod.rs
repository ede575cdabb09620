//! The CUDA backend (cargo feature `cuda`): one context and one stream per device, memory from the
//! driver's stream-ordered pool (release threshold raised so freed blocks are reused), kernels from
//! `vlm4vla-kernels` compiled once per process by NVRTC for the device's architecture, GEMMs on
//! cuBLASLt. Implements the primitives of [`crate::backend`] (`Cuda`), mirroring `cpu/` file for
//! file; `backend::of` picks it for tensors on a GPU.
//!
//! The driver is loaded at run time (cudarc's dynamic loading). Before cudarc is touched the
//! driver library is probed with `libloading`, and initialisation runs under `catch_unwind`, so a
//! machine without a driver or GPU gets [`Error::DeviceUnavailable`] rather than a panic.
//!
//! Debug hook: with `VLM4VLA_CUDA_POISON=1` in the environment (or [`set_poison`]), every fresh
//! allocation is filled with 0xFF bytes (NaN for f32/bf16, -1 for i64, 255 for u8) so elements a
//! kernel forgets to write show up in tests.
//!
//! Files: `device.rs` (the driver, contexts, loaded kernels), `storage.rs` (device memory),
//! `launch.rs` (the one launch path and the kernels it names), `blas.rs` (cuBLASLt: the handle,
//! the workspace and the cached GEMM plans), `memory.rs` (the backend's memory primitives), then
//! one file per op family, as in `cpu/`: its launchers and its `impl backend::<Family> for Cuda`.

pub(crate) mod activation;
pub(crate) mod attention;
pub(crate) mod binary;
mod blas;
mod device;
pub(crate) mod index;
mod launch;
pub(crate) mod loss;
pub(crate) mod matmul;
pub(crate) mod memory;
pub(crate) mod norm;
pub(crate) mod optim;
pub(crate) mod reduce;
pub(crate) mod rope;
mod storage;
pub(crate) mod unary;
pub(crate) mod view;

pub(crate) use device::{device, flash_long_min_lq, panic_message, CudaDevice};
pub use device::{
    device_count, device_info, driver_available, fast_kernels, is_available, poison_enabled, pool_memory,
    reset_pool_peak, set_fast_kernels, set_flash_long_min_lq, set_poison, sm_count, synchronize, EventTimer,
    PoolMemory,
};
pub(crate) use launch::Geometry;
pub use storage::{copy, CudaStorage};

use crate::{CpuStorage, DType, Device, Error, Layout, Result, Storage, Tensor};

/// The CUDA backend (see [`crate::backend`]); its primitives live in this folder's files.
pub(crate) struct Cuda;

use std::sync::Arc;
use vlm4vla_kernels::params::{StridedParams, MAX_RANK};

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
        match device::probe_driver() {
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
