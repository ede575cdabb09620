//! CUDA matmul on cuBLASLt: f32, and bf16 inputs with fp32 accumulation (compute type 32F, no
//! TF32, so f32 results match the CPU to rounding). Transposed operands go through layout flags and
//! leading dimensions, batches through one strided-batch offset per operand (0 for a broadcast
//! operand); an operand whose strides fit neither (e.g. a batch broadcast on one of two batch
//! dims) is first copied contiguous. Each GEMM runs from a cached plan (`blas.rs`).
//!
//! Row-major `C[m, n] = A[m, k] B[k, n]` is computed as the column-major `Cᵀ = Bᵀ Aᵀ`: cuBLASLt's
//! "A" is our B and its "B" is our A, and its D is our output seen as `n` rows by `m` columns.
//!
//! A bias `[n]` (the Linear layer's) is one entry per row of that D, broadcast over its columns
//! (our rows) and over the batch: exactly what cuBLASLt's bias epilogue adds. It takes the
//! epilogue when it is of the output's dtype, packed (stride 1) and 16-byte aligned: cuBLASLt
//! reads the bias as a packed vector of D's type, and its alignment preferences do not cover the
//! bias pointer, so the heuristic may pick a kernel that assumes 16 bytes (an under-aligned
//! bias, e.g. a narrowed slice, faults with a misaligned address). Any other bias, or one whose
//! epilogue cuBLASLt has no algorithm for, goes in as C instead: the output is first filled with
//! the bias on every row (one strided copy, converting the dtype), and the GEMM accumulates onto
//! it with beta = 1, rounding once as the epilogue does. That copy is a second launch, counted as
//! a second primitive.

use super::blas::{alignment, blas, Epilogue, GemmArgs, MatrixKey, PlanKey};
use super::{dev_of, CudaStorage};
use crate::{backend, counters, DType, Error, Layout, Result, Tensor};
use cudarc::cublaslt::sys;

/// One operand as cuBLASLt sees it (row-major `[rows, cols]` per batch entry).
struct Operand {
    ptr: u64,
    /// Row-major (`cols` contiguous) or column-major (`rows` contiguous).
    row_major: bool,
    ld: i64,
    batch_stride: i64,
    /// A contiguous copy made when the strides did not fit.
    _copy: Option<CudaStorage>,
}

/// `(row_major, ld)` when a `[r, c]` matrix with strides `(rs, cs)` is a plain row- or
/// column-major matrix for cuBLASLt.
fn matrix_form(r: usize, c: usize, rs: usize, cs: usize) -> Option<(bool, i64)> {
    if cs == 1 || c == 1 {
        let ld = if r == 1 { c.max(1) } else { rs };
        if ld >= c.max(1) {
            return Some((true, ld as i64));
        }
    }
    if rs == 1 || r == 1 {
        let ld = if c == 1 { r.max(1) } else { cs };
        if ld >= r.max(1) {
            return Some((false, ld as i64));
        }
    }
    None
}

/// One stride for all batch dims flattened, if there is one.
fn batch_stride(shape: &[usize], strides: &[usize]) -> Option<i64> {
    let dims: Vec<(usize, usize)> = shape.iter().zip(strides).filter(|(&d, _)| d != 1).map(|(&d, &s)| (d, s)).collect();
    let Some(&(_, last)) = dims.last() else { return Some(0) };
    if dims.iter().all(|&(_, s)| s == 0) {
        return Some(0);
    }
    for w in dims.windows(2) {
        if w[0].1 != w[1].1 * w[1].0 {
            return None;
        }
    }
    Some(last as i64)
}

fn operand(op: &'static str, t: &Tensor, l: &Layout, dtype: DType) -> Result<Operand> {
    let r = l.rank();
    let (rows, cols) = (l.shape()[r - 2], l.shape()[r - 1]);
    let (rs, cs) = (l.strides()[r - 2], l.strides()[r - 1]);
    let batch = &l.shape()[..r - 2];
    if let (Some((row_major, ld)), Some(bs)) =
        (matrix_form(rows, cols, rs, cs), batch_stride(batch, &l.strides()[..r - 2]))
    {
        let view = t.view_with(l.clone(), None);
        return Ok(Operand { ptr: super::ptr(op, &view)?, row_major, ld, batch_stride: bs, _copy: None });
    }
    let view = t.view_with(l.clone(), None);
    let copy = super::to_contiguous(op, &view, dtype)?;
    Ok(Operand {
        ptr: copy.ptr_at(0),
        row_major: true,
        ld: cols.max(1) as i64,
        batch_stride: (rows * cols) as i64,
        _copy: Some(copy),
    })
}

/// Our operand `[r, c]` (per batch entry) as cuBLASLt's column-major matrix `X` with
/// `op(X) = operandᵀ` (`[c, r]`): a row-major operand is that transpose as stored, a column-major
/// one is read transposed.
fn matrix_key(o: &Operand, r: usize, c: usize, batch: i32) -> MatrixKey {
    let (rows, cols) = if o.row_major { (c, r) } else { (r, c) };
    MatrixKey {
        rows: rows as u64,
        cols: cols as u64,
        ld: o.ld,
        batch_stride: if batch > 1 { o.batch_stride } else { 0 },
        trans: !o.row_major,
        align: alignment(o.ptr),
    }
}

/// The epilogue for `bias` when cuBLASLt's bias epilogue can read it in place (the output's
/// dtype, packed, 16-byte aligned; see the module docs), with its pointer.
fn bias_epilogue(op: &'static str, bias: &Tensor, dtype: DType) -> Result<Option<(Epilogue, u64)>> {
    let packed = bias.elem_count() <= 1 || bias.layout().strides()[0] == 1;
    if bias.dtype() != dtype || !packed {
        return Ok(None);
    }
    let p = super::ptr(op, bias)?;
    let align = alignment(p);
    Ok((align >= 16).then_some((Epilogue::Bias { align }, p)))
}

/// Every one of the `rows` rows of the packed `[rows, n]` `out` set to `bias` (any layout,
/// converted to `out`'s dtype).
fn fill_rows(op: &'static str, bias: &Tensor, out: &CudaStorage, rows: usize, n: usize) -> Result<()> {
    let shape = [rows, n];
    let rows_of_bias = bias.view_with(bias.layout().broadcast_to(&shape), None);
    super::view::convert_into(op, &rows_of_bias, out, &Layout::contiguous(&shape))
}

/// `a @ b (+ bias)` with `la = [batch..., m, k]`, `lb = [batch..., k, n]` (batch dims already
/// broadcast, as views of `a` and `b`) and `bias` `[n]` added to every row: a contiguous
/// `[batch..., m, n]` buffer.
pub(crate) fn matmul(
    a: &Tensor,
    la: &Layout,
    b: &Tensor,
    lb: &Layout,
    bias: Option<&Tensor>,
    dtype: DType,
) -> Result<CudaStorage> {
    let op = "matmul";
    let dev = dev_of(op, a)?;
    let ty = match dtype {
        DType::F32 => sys::cudaDataType_t::CUDA_R_32F,
        DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        other => return Err(Error::dtype(op, other, "CUDA matmul takes f32 and bf16")),
    };
    let r = la.rank();
    let (m, k, n) = (la.shape()[r - 2], la.shape()[r - 1], lb.shape()[r - 1]);
    let nb: usize = la.shape()[..r - 2].iter().product();
    if let Some(bias) = bias.filter(|t| t.shape() != [n]) {
        return Err(Error::shapes_note(op, &[la.shape(), lb.shape(), bias.shape()], format!("the bias must be [{n}]")));
    }
    let total = nb * m * n;
    if total == 0 {
        return dev.alloc(op, dtype, 0);
    }
    if k == 0 {
        return match bias {
            Some(bias) => {
                let out = dev.alloc(op, dtype, total)?;
                fill_rows(op, bias, &out, nb * m, n)?;
                Ok(out)
            }
            None => dev.zeros(op, dtype, total),
        };
    }
    let batch = i32::try_from(nb).map_err(|_| Error::invalid(op, format!("{nb} batch entries is too many")))?;
    let out = dev.alloc(op, dtype, total)?;
    let (oa, ob) = (operand(op, a, la, dtype)?, operand(op, b, lb, dtype)?);
    let blas = blas(&dev)?;
    let key = PlanKey {
        ty,
        compute: sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        scale: sys::cudaDataType_t::CUDA_R_32F,
        batch,
        // cuBLASLt's A is our B (op(A) = Bᵀ, [n, k]), its B our A (op(B) = Aᵀ, [k, m]).
        a: matrix_key(&ob, k, n, batch),
        b: matrix_key(&oa, m, k, batch),
        d_rows: n as u64,
        d_cols: m as u64,
        d_align: alignment(out.ptr_at(0)),
        epilogue: Epilogue::Plain,
        workspace: blas.workspace_bytes(),
    };
    let mut args = GemmArgs { a: ob.ptr, b: oa.ptr, d: out.ptr_at(0), bias: 0, beta: 0.0 };
    if let Some(bias) = bias {
        if let Some((epilogue, p)) = bias_epilogue(op, bias, dtype)? {
            if blas.gemm(op, &dev, &PlanKey { epilogue, ..key }, &GemmArgs { bias: p, ..args })? {
                return Ok(out);
            }
        }
        fill_rows(op, bias, &out, nb * m, n)?;
        counters::primitive();
        args.beta = 1.0;
    }
    if !blas.gemm(op, &dev, &key, &args)? {
        return Err(Error::Cuda { op, msg: "no cuBLASLt plan for a plain GEMM".into() });
    }
    Ok(out)
}

impl backend::Matmul for super::Cuda {
    fn matmul(
        &self,
        a: &Tensor,
        la: &Layout,
        b: &Tensor,
        lb: &Layout,
        bias: Option<&Tensor>,
        out_shape: &[usize],
    ) -> Result<Tensor> {
        Ok(super::tensor(matmul(a, la, b, lb, bias, a.dtype())?, out_shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operand(ptr: u64, row_major: bool, ld: i64, batch_stride: i64) -> Operand {
        Operand { ptr, row_major, ld, batch_stride, _copy: None }
    }

    /// Plan keys follow layouts and alignments, never addresses: another buffer of the same
    /// alignment meets the same plan, a batch of one drops the batch stride, and the transpose
    /// flag and the stored shape follow the operand's order.
    #[test]
    fn matrix_keys_follow_layouts_not_addresses() {
        let x = matrix_key(&operand(0x1000, true, 16, 80), 5, 16, 1);
        assert_eq!((x.rows, x.cols, x.ld, x.batch_stride, x.trans, x.align), (16, 5, 16, 0, false, 256));
        assert_eq!(x, matrix_key(&operand(0x7f00, true, 16, 0), 5, 16, 1));
        assert_ne!(x, matrix_key(&operand(0x7f10, true, 16, 0), 5, 16, 1), "a 16-byte aligned view");
        let t = matrix_key(&operand(0x1004, false, 5, 80), 5, 16, 3);
        assert_eq!((t.rows, t.cols, t.ld, t.batch_stride, t.trans, t.align), (5, 16, 5, 80, true, 4));
    }

    #[test]
    fn strides_that_fit_a_gemm_layout() {
        assert_eq!(matrix_form(5, 16, 16, 1), Some((true, 16)));
        assert_eq!(matrix_form(5, 16, 1, 8), Some((false, 8)));
        assert_eq!(matrix_form(5, 16, 32, 2), None);
        assert_eq!(batch_stride(&[2, 3], &[240, 80]), Some(80));
        assert_eq!(batch_stride(&[2, 3], &[0, 0]), Some(0));
        assert_eq!(batch_stride(&[2, 3], &[80, 0]), None);
    }
}
