//! CUDA matmul on cuBLASLt: f32, and bf16 inputs with fp32 accumulation (compute type 32F, no
//! TF32, so f32 results match the CPU to rounding). Transposed operands go through layout flags and
//! leading dimensions, batches through one strided-batch offset per operand (0 for a broadcast
//! operand); an operand whose strides fit neither (e.g. a batch broadcast on one of two batch
//! dims) is first copied contiguous.
//!
//! Row-major `C[m, n] = A[m, k] B[k, n]` is computed as the column-major `Cᵀ = Bᵀ Aᵀ`: cuBLASLt's
//! "A" is our B and its "B" is our A.

use super::{dev_of, CudaDevice, CudaStorage};
use crate::{backend, DType, Error, Layout, Result, Tensor};
use cudarc::cublaslt::{result as lt, sys};
use std::ffi::c_void;
use std::sync::Arc;

/// A cuBLASLt handle and its workspace, one per device.
pub(crate) struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaStorage,
}
// SAFETY: the handle is only used on the device's single stream, under the engine's calls, which
// cuBLASLt allows from any thread bound to the context.
unsafe impl Send for Blas {}
// SAFETY: as above; cuBLASLt handles are thread safe for matmul calls.
unsafe impl Sync for Blas {}

const BLAS_NAMES: &[&str] = &["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"];

fn blas(dev: &Arc<CudaDevice>) -> Result<&Blas> {
    let op = "matmul";
    dev.blas
        .get_or_init(|| {
            // cudarc panics when the library is missing: probe first, and catch what remains.
            // SAFETY: loading cuBLASLt runs its initialisers, which have no preconditions.
            if !BLAS_NAMES.iter().any(|n| unsafe { libloading::Library::new(n) }.is_ok()) {
                return Err(format!(
                    "cuBLASLt not found (tried {}; add its folder to LD_LIBRARY_PATH)",
                    BLAS_NAMES.join(", ")
                ));
            }
            dev.bind(op).map_err(|e| e.to_string())?;
            let handle = std::panic::catch_unwind(lt::create_handle)
                .map_err(|p| super::panic_message(&p))?
                .map_err(|e| format!("cublasLtCreate: {e:?}"))?;
            let size = if dev.arch.starts_with("sm_9") || dev.arch.starts_with("sm_1") { 32 << 20 } else { 4 << 20 };
            let workspace = dev.alloc(op, DType::U8, size).map_err(|e| e.to_string())?;
            Ok(Blas { handle, workspace })
        })
        .as_ref()
        .map_err(|msg| Error::Cuda { op, msg: msg.clone() })
}

fn lt_err(op: &'static str, what: &'static str) -> impl Fn(lt::CublasError) -> Error {
    move |e| Error::Cuda { op, msg: format!("{what}: {e:?}") }
}

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

/// The largest power of two (up to 256) dividing `p`: the alignment cuBLASLt may assume.
fn alignment(p: u64) -> u32 {
    if p == 0 {
        256
    } else {
        (1u64 << p.trailing_zeros().min(8)) as u32
    }
}

/// RAII guards for the cuBLASLt descriptors of one call.
struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}
struct MatLayout(sys::cublasLtMatrixLayout_t);
impl Drop for MatLayout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}
struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

fn layout(
    op: &'static str,
    ty: sys::cudaDataType,
    rows: usize,
    cols: usize,
    ld: i64,
    batch: i32,
    stride: i64,
) -> Result<MatLayout> {
    let l = MatLayout(lt::create_matrix_layout(ty, rows as u64, cols as u64, ld).map_err(lt_err(op, "layout"))?);
    if batch > 1 {
        // SAFETY: the attribute types are i32 (count) and i64 (offset) as cuBLASLt documents.
        unsafe {
            lt::set_matrix_layout_attribute(
                l.0,
                sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                &batch as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )
            .map_err(lt_err(op, "batch count"))?;
            lt::set_matrix_layout_attribute(
                l.0,
                sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                &stride as *const i64 as *const c_void,
                std::mem::size_of::<i64>(),
            )
            .map_err(lt_err(op, "batch stride"))?;
        }
    }
    Ok(l)
}

/// `a @ b` with `la = [batch..., m, k]`, `lb = [batch..., k, n]` (batch dims already broadcast, as
/// views of `a` and `b`): a contiguous `[batch..., m, n]` buffer.
pub(crate) fn matmul(a: &Tensor, la: &Layout, b: &Tensor, lb: &Layout, dtype: DType) -> Result<CudaStorage> {
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
    let total = nb * m * n;
    if total == 0 {
        return dev.alloc(op, dtype, 0);
    }
    if k == 0 {
        return dev.zeros(op, dtype, total);
    }
    let batch = i32::try_from(nb).map_err(|_| Error::invalid(op, format!("{nb} batch entries is too many")))?;
    let out = dev.alloc(op, dtype, total)?;
    let (oa, ob) = (operand(op, a, la, dtype)?, operand(op, b, lb, dtype)?);
    let blas = blas(&dev)?;
    dev.bind(op)?;

    // cuBLASLt "A" = our B seen column-major: op(A) must be Bᵀ as an [n, k] matrix.
    let (a_lt_layout, trans_a) = if ob.row_major {
        (layout(op, ty, n, k, ob.ld, batch, ob.batch_stride)?, 0i32)
    } else {
        (layout(op, ty, k, n, ob.ld, batch, ob.batch_stride)?, 1i32)
    };
    // cuBLASLt "B" = our A: op(B) must be Aᵀ as a [k, m] matrix.
    let (b_lt_layout, trans_b) = if oa.row_major {
        (layout(op, ty, k, m, oa.ld, batch, oa.batch_stride)?, 0i32)
    } else {
        (layout(op, ty, m, k, oa.ld, batch, oa.batch_stride)?, 1i32)
    };
    let d_layout = layout(op, ty, n, m, n as i64, batch, (m * n) as i64)?;

    let desc = Desc(
        lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType_t::CUDA_R_32F)
            .map_err(lt_err(op, "matmul desc"))?,
    );
    let pref = Pref(lt::create_matmul_pref().map_err(lt_err(op, "preference"))?);
    let ws_bytes = blas.workspace.len() as u64;
    let aligns = [alignment(ob.ptr), alignment(oa.ptr), alignment(out.ptr_at(0)), alignment(out.ptr_at(0))];
    // SAFETY: every attribute value has the type cuBLASLt documents for it (i32 for the
    // transposes, u64 for the workspace size, u32 for the alignments).
    unsafe {
        for (attr, v) in [
            (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, trans_a),
            (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, trans_b),
        ] {
            lt::set_matmul_desc_attribute(desc.0, attr, &v as *const i32 as *const c_void, 4)
                .map_err(lt_err(op, "transpose flag"))?;
        }
        lt::set_matmul_pref_attribute(
            pref.0,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &ws_bytes as *const u64 as *const c_void,
            8,
        )
        .map_err(lt_err(op, "workspace size"))?;
        for (attr, v) in [
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
        ]
        .into_iter()
        .zip(aligns)
        {
            lt::set_matmul_pref_attribute(pref.0, attr, &v as *const u32 as *const c_void, 4)
                .map_err(lt_err(op, "alignment"))?;
        }
        let heuristic = lt::get_matmul_algo_heuristic(
            blas.handle,
            desc.0,
            a_lt_layout.0,
            b_lt_layout.0,
            d_layout.0,
            d_layout.0,
            pref.0,
        )
        .map_err(lt_err(op, "no cuBLASLt algorithm for these operands"))?;
        let (alpha, beta) = (1f32, 0f32);
        let d = out.ptr_at(0);
        // SAFETY: the layouts describe exactly the memory of the operands (views of their
        // storages, or the contiguous copies kept alive in `oa`/`ob`), `out` holds the
        // [batch, m, n] result, and everything runs on the device's stream.
        lt::matmul(
            blas.handle,
            desc.0,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            ob.ptr as *const c_void,
            a_lt_layout.0,
            oa.ptr as *const c_void,
            b_lt_layout.0,
            d as *const c_void,
            d_layout.0,
            d as *mut c_void,
            d_layout.0,
            &heuristic.algo,
            blas.workspace.ptr_at(0) as *mut c_void,
            blas.workspace.len(),
            dev.stream() as *mut _,
        )
        .map_err(lt_err(op, "cublasLtMatmul"))?;
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
        let y = super::tensor(matmul(a, la, b, lb, a.dtype())?, out_shape);
        match bias {
            // The bias as a second pass (a broadcast add); the cuBLASLt bias epilogue is the
            // next step once it can be checked on a GPU.
            Some(bias) => {
                let b = bias.view_with(bias.layout().broadcast_to(out_shape), None);
                backend::Binary::binary(self, &y, &b, crate::kinds::BinaryKind::Add)
            }
            None => Ok(y),
        }
    }
}
