//! CPU copies and conversions: strided gathers into contiguous buffers, and writes into views.

use super::{copy_into_view, host_storage, out_storage, Cpu, Reads};
use crate::{backend, DType, Error, Layout, Result, Storage, Tensor};

impl backend::View for Cpu {
    fn convert(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        let r = Reads::new(&[x]);
        let (s, l) = r.get(0)?;
        Ok(out_storage(s.to_dtype(l, dtype), x.shape()))
    }

    fn pad_into(&self, x: &Tensor, full: &[usize], dim: usize, start: usize) -> Result<Tensor> {
        let out = Tensor::zeros(full, x.dtype(), x.device())?;
        let src = host_storage(x)?;
        {
            let mut dst = out.write_storage();
            #[allow(irrefutable_let_patterns)] // a CUDA arm exists with the `cuda` feature
            let Storage::Cpu(d) = &mut *dst
            else {
                return Err(Error::invalid("narrow", "a CPU tensor expected"));
            };
            let view = Layout::contiguous(full).narrow(dim, start, x.shape()[dim]);
            copy_into_view(d, &view, &src)?;
        }
        Ok(out)
    }
}
