//! CPU buffers: zeros, placing host elements, host access and overwrites in place.

use super::Cpu;
use crate::{backend, CpuStorage, DType, Device, Error, Layout, Result, Storage, Tensor};

impl backend::Memory for Cpu {
    fn zeros(&self, _device: Device, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = shape.iter().product();
        let s = match dtype {
            DType::U8 => CpuStorage::U8(vec![0; n]),
            DType::I64 => CpuStorage::I64(vec![0; n]),
            DType::F16 => CpuStorage::F16(vec![half::f16::ZERO; n]),
            DType::BF16 => CpuStorage::BF16(vec![half::bf16::ZERO; n]),
            DType::F32 => CpuStorage::F32(vec![0.0; n]),
            DType::F64 => CpuStorage::F64(vec![0.0; n]),
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
