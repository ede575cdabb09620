//! CPU matmul: f32 on our AVX-512 GEMM (`sgemm.rs`) where the CPU has it, else and for f64 on the
//! `gemm` crate; bf16/f16 are converted to f32.

use super::{out_storage, sgemm, Cpu, Reads};
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
    let use_sgemm = T::DTYPE == DType::F32 && sgemm::available();
    if use_sgemm && m > 0 && n > 0 && k > 0 {
        return batched_sgemm(x, la, y, lb, bias, (m, n, k));
    }
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
    let (oa, ob) = (batch_offsets(la), batch_offsets(lb));
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

/// The offset of each batch entry of a `[batch..., rows, cols]` layout (a strided walk over the
/// batch dims).
fn batch_offsets(l: &Layout) -> Vec<usize> {
    let r = l.rank();
    Layout::new(l.shape()[..r - 2].to_vec(), l.strides()[..r - 2].to_vec(), l.offset()).offsets().collect()
}

/// [`batched`] on our AVX-512 f32 GEMM (`T` is f32): without a bias the output is written, never
/// zeroed first.
fn batched_sgemm<T: crate::dtype::Float>(
    x: &[T],
    la: &Layout,
    y: &[T],
    lb: &Layout,
    bias: Option<&[T]>,
    (m, n, k): (usize, usize, usize),
) -> Vec<T> {
    let r = la.rank();
    let nb: usize = la.shape()[..r - 2].iter().product();
    let len = nb * m * n;
    let mut out = match bias {
        Some(b) => super::repeat_rows(b, nb * m),
        None => Vec::with_capacity(len),
    };
    let (oa, ob) = (batch_offsets(la), batch_offsets(lb));
    let dst = out.as_mut_ptr();
    for bi in 0..nb {
        // SAFETY: `T` is f32 (the caller checked), so the casts are identities; the layouts were
        // validated when the views were made, so every strided element lies inside `x` / `y`;
        // `dst` has capacity for `nb` row-major m×n blocks and nothing else aliases it.
        unsafe {
            sgemm::sgemm(
                (m, n, k),
                sgemm::Mat { ptr: x.as_ptr().add(oa[bi]).cast(), rs: la.strides()[r - 2], cs: la.strides()[r - 1] },
                sgemm::Mat { ptr: y.as_ptr().add(ob[bi]).cast(), rs: lb.strides()[r - 2], cs: lb.strides()[r - 1] },
                dst.add(bi * m * n).cast(),
                n,
                bias.is_some(),
                1.0,
                true,
            );
        }
    }
    // SAFETY: the GEMMs wrote all `len` elements (k > 0, so every output element is written).
    unsafe { out.set_len(len) };
    out
}
