//! CPU buffers: zeros, placing host elements, host access and overwrites in place.

use super::Cpu;
use crate::{backend, CpuStorage, DType, Device, Error, Layout, Result, Storage, Tensor};

impl backend::Memory for Cpu {
    fn zeros(&self, _device: Device, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = shape.iter().product();
        let s = match dtype {
            DType::U8 => CpuStorage::U8(super::filled(n, 0)),
            DType::I64 => CpuStorage::I64(super::filled(n, 0)),
            DType::F16 => CpuStorage::F16(super::filled(n, half::f16::ZERO)),
            DType::BF16 => CpuStorage::BF16(super::filled(n, half::bf16::ZERO)),
            DType::F32 => CpuStorage::F32(super::filled(n, 0.0)),
            DType::F64 => CpuStorage::F64(super::filled(n, 0.0)),
        };
        Ok(Tensor::from_cpu(s, shape, None))
    }

    fn upload(&self, host: CpuStorage, shape: &[usize], _device: Device) -> Result<Tensor> {
        Ok(Tensor::from_cpu(host, shape, None))
    }

    fn with_host(&self, x: &Tensor, f: &mut dyn FnMut(&CpuStorage, &Layout)) -> Result<()> {
        let r = super::Reads::new(&[x]);
        let (s, l) = r.get(0)?;
        f(s, l);
        Ok(())
    }

    fn assign(&self, dst: &Tensor, src: &Tensor) -> Result<()> {
        let range = dst
            .layout()
            .contiguous_range()
            .ok_or_else(|| Error::invalid("assign", "destination must be contiguous"))?;
        let src = src.to_dtype(dst.dtype())?;
        let data = if src.device().is_cpu() { super::host_storage(&src)? } else { src.to_cpu_storage()? };
        let mut guard = dst.write_storage();
        #[allow(irrefutable_let_patterns)] // a CUDA arm exists with the `cuda` feature
        let Storage::Cpu(d) = &mut *guard
        else {
            return Err(Error::DeviceMismatch { op: "assign", a: Device::Cpu, b: dst.device() });
        };
        let bytes = dst.dtype().size_in_bytes();
        let dst_bytes: &mut [u8] = crate::map_cpu_storage!(d, v => bytemuck::cast_slice_mut(v.as_mut_slice()));
        dst_bytes[range.start * bytes..range.end * bytes].copy_from_slice(data.as_bytes());
        Ok(())
    }
}

/// Keep freed memory in the process for the next op's outputs instead of returning it to the
/// OS: a training step allocates and frees the same sizes every step, and memory handed back
/// is faulted in (and zeroed by the kernel) again on the next step. On glibc this raises the
/// `mmap` threshold to its maximum (32 MiB: smaller buffers come from the heap and are reused)
/// and the trim threshold to 1 GiB, once per process, the first time the CPU backend is used.
/// `VLM4VLA_MALLOC_DEFAULTS=1` leaves the allocator's defaults alone.
pub(crate) fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if std::env::var_os("VLM4VLA_MALLOC_DEFAULTS").is_some_and(|v| v != "0") {
                return;
            }
            use std::ffi::c_int;
            extern "C" {
                fn mallopt(param: c_int, value: c_int) -> c_int;
            }
            const M_TRIM_THRESHOLD: c_int = -1;
            const M_TOP_PAD: c_int = -2;
            const M_MMAP_THRESHOLD: c_int = -3;
            // SAFETY: mallopt only adjusts glibc's tunables; any value is accepted or refused
            // (returning 0), never undefined behaviour.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, 1 << 30);
                mallopt(M_TOP_PAD, 64 << 20);
            }
        });
    }
}
