//! CPU matmul on the `gemm` crate. f32 and f64 natively; bf16/f16 are converted to f32.

use super::{out_storage, Cpu, Reads};
use crate::{backend, CpuStorage, DType, Layout, Result, Tensor};
use gemm::Parallelism;

impl backend::Matmul for Cpu {
    fn matmul(
        &self,
        a: &Tensor,
        la: &Layout,
        b: &Tensor,
        lb: &Layout,
        bias: Option<&Tensor>,
        out_shape: &[usize],
    ) -> Result<Tensor> {
        let mut ts = vec![a, b];
        ts.extend(bias);
        let r = Reads::new(&ts);
        let bias = if bias.is_some() { Some(r.get(2)?) } else { None };
        let data = matmul(r.get(0)?.0, la, r.get(1)?.0, lb, bias, a.dtype())?;
        Ok(out_storage(data, out_shape))
    }
}

/// `la` and `lb` are the operands' layouts already broadcast to `[batch..., m, k]` and
/// `[batch..., k, n]` (broadcast batch dims have stride 0); `bias` (`[n]`) is added to every row.
fn matmul(
    a: &CpuStorage,
    la: &Layout,
    b: &CpuStorage,
    lb: &Layout,
    bias: Option<(&CpuStorage, &Layout)>,
    dtype: DType,
) -> Result<CpuStorage> {
    match (a, b) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => {
            let bias = bias.map(|(s, l)| s.gather_as::<f32>(l));
            Ok(CpuStorage::F32(batched(x, la, y, lb, bias.as_deref())))
        }
        (CpuStorage::F64(x), CpuStorage::F64(y)) => {
            let bias = bias.map(|(s, l)| s.gather_as::<f64>(l));
            Ok(CpuStorage::F64(batched(x, la, y, lb, bias.as_deref())))
        }
        _ => {
            // Half types: convert to contiguous f32 first.
            let x = a.gather_as::<f32>(la);
            let y = b.gather_as::<f32>(lb);
            let bias = bias.map(|(s, l)| s.gather_as::<f32>(l));
            let lx = Layout::contiguous(la.shape());
            let ly = Layout::contiguous(lb.shape());
            let out = batched(&x, &lx, &y, &ly, bias.as_deref());
            let n = out.len();
            Ok(CpuStorage::F32(out).to_dtype(&Layout::contiguous(&[n]), dtype))
        }
    }
}

fn batched<T: crate::dtype::Float>(x: &[T], la: &Layout, y: &[T], lb: &Layout, bias: Option<&[T]>) -> Vec<T> {
    let r = la.rank();
    let (m, k, n) = (la.shape()[r - 2], la.shape()[r - 1], lb.shape()[r - 1]);
    let batch_shape = &la.shape()[..r - 2];
    let nb: usize = batch_shape.iter().product();
    // With a bias, every output row starts as the bias and the GEMM accumulates onto it.
    let mut out = match bias {
        Some(b) => b.repeat(nb * m),
        None => vec![T::ZERO; nb * m * n],
    };
    if m == 0 || n == 0 {
        return out;
    }
    let (a_rs, a_cs) = (la.strides()[r - 2] as isize, la.strides()[r - 1] as isize);
    let (b_rs, b_cs) = (lb.strides()[r - 2] as isize, lb.strides()[r - 1] as isize);
    // Offsets of each batch entry (a strided walk over the batch dims).
    let batch_offsets = |l: &Layout| -> Vec<usize> {
        let bl = Layout::new(batch_shape.to_vec(), l.strides()[..r - 2].to_vec(), l.offset());
        bl.offsets().collect()
    };
    let oa = batch_offsets(la);
    let ob = batch_offsets(lb);
    let flops = 2 * m * n * k;
    let par = if flops >= 1 << 20 { Parallelism::Rayon(0) } else { Parallelism::None };
    for bi in 0..nb {
        let dst = &mut out[bi * m * n..(bi + 1) * m * n];
        if k == 0 {
            continue;
        }
        // SAFETY: every pointer/stride pair addresses elements inside its slice: the layouts were
        // validated when the views were made, `dst` is an exclusively borrowed m×n row-major block.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                bias.is_some(),
                x.as_ptr().add(oa[bi]),
                a_cs,
                a_rs,
                y.as_ptr().add(ob[bi]),
                b_cs,
                b_rs,
                if bias.is_some() { T::ONE } else { T::ZERO },
                T::ONE,
                false,
                false,
                false,
                par,
            );
        }
    }
    out
}
