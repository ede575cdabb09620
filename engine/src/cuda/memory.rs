//! GPU buffers: zeros from the stream-ordered pool, uploads, host access (a download that waits
//! for the stream) and overwrites in place.

use super::{assign, from_cpu, to_cpu, Cuda, CudaStorage};
use crate::{backend, CpuStorage, DType, Device, Error, Layout, Result, Storage, Tensor};

fn ordinal(op: &'static str, device: Device) -> Result<usize> {
    match device {
        Device::Cuda(o) => Ok(o),
        Device::Cpu => Err(Error::DeviceMismatch { op, a: Device::Cuda(0), b: Device::Cpu }),
    }
}

fn wrap(s: CudaStorage, shape: &[usize]) -> Tensor {
    Tensor::from_storage(Storage::Cuda(s), shape, None)
}

impl backend::Memory for Cuda {
    fn zeros(&self, device: Device, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let s = super::device(ordinal("zeros", device)?)?.zeros("zeros", dtype, shape.iter().product())?;
        Ok(wrap(s, shape))
    }

    fn upload(&self, host: CpuStorage, shape: &[usize], device: Device) -> Result<Tensor> {
        Ok(wrap(from_cpu(&host, ordinal("to_device", device)?)?, shape))
    }

    fn with_host(&self, x: &Tensor, f: &mut dyn FnMut(&CpuStorage, &Layout)) -> Result<()> {
        let host = to_cpu(x)?;
        f(&host, &Layout::contiguous(x.shape()));
        Ok(())
    }

    fn assign(&self, dst: &Tensor, src: &Tensor) -> Result<()> {
        assign(dst, src)
    }
}
