//! CPU kernels for elementwise binary ops and comparisons (operands of one shape).

use super::{out, out_storage, Cpu, Reads};
use crate::dtype::Float;
use crate::kinds::{BinaryKind, CmpKind};
use crate::{backend, CpuStorage, Result, Tensor};

/// `f` over `a` and `b` elementwise, on several threads when the tensors are large.
#[inline(always)]
fn zip_map<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync + Send) -> Vec<T> {
    if a.len() >= 1 << 16 {
        const CHUNK: usize = 1 << 14;
        super::new_rows(a.len(), CHUNK, T::ZERO, |c, out| {
            let (a, b) = (&a[c * CHUNK..], &b[c * CHUNK..]);
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *o = f(x, y);
            }
        })
    } else {
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
    }
}

/// The kind is matched once, outside the loop, so each loop is a plain (vectorisable) one.
fn binary_kernel<T: Float>(kind: BinaryKind, a: &[T], b: &[T]) -> Vec<T> {
    match kind {
        BinaryKind::Add => zip_map(a, b, |x, y| x + y),
        BinaryKind::Sub => zip_map(a, b, |x, y| x - y),
        BinaryKind::Mul => zip_map(a, b, |x, y| x * y),
        BinaryKind::Div => zip_map(a, b, |x, y| x / y),
        BinaryKind::Maximum => zip_map(a, b, |x, y| if x >= y { x } else { y }),
        BinaryKind::Minimum => zip_map(a, b, |x, y| if x <= y { x } else { y }),
    }
}

impl backend::Binary for Cpu {
    fn binary(&self, a: &Tensor, b: &Tensor, kind: BinaryKind) -> Result<Tensor> {
        let r = Reads::new(&[a, b]);
        let v = crate::float_zip!(kind.name(), (r.floats(0)?, r.floats(1)?), (x, y) => binary_kernel(kind, &x, &y))?;
        Ok(out(v, a.dtype(), a.shape()))
    }

    fn cmp(&self, a: &Tensor, b: &Tensor, kind: CmpKind) -> Result<Tensor> {
        let av: Vec<f64> = super::host_vec(a)?;
        let bv: Vec<f64> = super::host_vec(b)?;
        let mask: Vec<u8> = av
            .iter()
            .zip(&bv)
            .map(|(&x, &y)| {
                let r = match kind {
                    CmpKind::Eq => x == y,
                    CmpKind::Ne => x != y,
                    CmpKind::Lt => x < y,
                    CmpKind::Le => x <= y,
                    CmpKind::Gt => x > y,
                    CmpKind::Ge => x >= y,
                };
                r as u8
            })
            .collect();
        Ok(out_storage(CpuStorage::U8(mask), a.shape()))
    }
}
