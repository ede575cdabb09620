//! cuBLASLt on one device: the handle, the workspace, and the GEMM plans.
//!
//! A plan is what cuBLASLt needs for a GEMM besides its pointers: the matmul descriptor (compute
//! and scale types, transposes, epilogue), the layouts of A, B and D (C is D), and the algorithm
//! the heuristic chose for them. Making one costs a descriptor, three layouts, a preference and a
//! heuristic query, host work far longer than the launch itself; a training step runs the same
//! few dozen GEMMs every step, so a plan is made once per [`PlanKey`] and reused.
//!
//! The key holds everything the descriptors and the heuristic see: each matrix's shape, order
//! (transpose flag), leading dim and batch stride, the batch count, the data, compute and scale
//! types, the epilogue, the workspace size, and the alignment of every pointer (the heuristic
//! picks kernels that assume the alignments it is told). Pointers are not in the key: they are
//! passed per call (the bias pointer is written into the cached descriptor under the cache's lock
//! right before the call that reads it).
//!
//! At most [`PLAN_CAP`] plans are kept per device; past that the least recently used one is
//! dropped, which destroys its descriptor and layouts (RAII: every handle has one owner).

use super::{CudaDevice, CudaStorage};
use crate::{DType, Error, Result};
use cudarc::cublaslt::{result as lt, sys};
use std::collections::hash_map::{Entry, HashMap};
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// The most GEMM plans kept per device (least recently used evicted first). A model's step uses
/// a few dozen shapes (three GEMMs per linear layer, vision and language towers); the cap is far
/// above that and leaves room for the row counts varying from batch to batch. A plan is a few
/// hundred bytes of host memory.
pub(crate) const PLAN_CAP: usize = 1024;

/// A cuBLASLt handle, its workspace and the plans made so far, one per device.
pub(crate) struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaStorage,
    plans: Mutex<Lru<Option<Plan>>>,
}
// SAFETY: the handle is only used on the device's single stream, under the engine's calls, which
// cuBLASLt allows from any thread bound to the context; the plans are behind a mutex.
unsafe impl Send for Blas {}
// SAFETY: as above; cuBLASLt handles are thread safe for matmul calls, and a plan's descriptor is
// only written and read with the plans' lock held.
unsafe impl Sync for Blas {}

const BLAS_NAMES: &[&str] = &["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"];

/// The device's cuBLASLt state, created on its first GEMM.
pub(crate) fn blas(dev: &Arc<CudaDevice>) -> Result<&Blas> {
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
            Ok(Blas { handle, workspace, plans: Mutex::new(Lru::new(PLAN_CAP)) })
        })
        .as_ref()
        .map_err(|msg| Error::Cuda { op, msg: msg.clone() })
}

pub(crate) fn lt_err(op: &'static str, what: &'static str) -> impl Fn(lt::CublasError) -> Error {
    move |e| Error::Cuda { op, msg: format!("{what}: {e:?}") }
}

/// The largest power of two (up to 256) dividing `p`: the alignment cuBLASLt may assume.
pub(crate) fn alignment(p: u64) -> u32 {
    if p == 0 {
        256
    } else {
        (1u64 << p.trailing_zeros().min(8)) as u32
    }
}

// ----- keys --------------------------------------------------------------------------------------

/// One input matrix of a GEMM as cuBLASLt stores it (column-major), per batch entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct MatrixKey {
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
    /// Elements from one batch entry to the next: 0 for a broadcast operand, and 0 whenever the
    /// batch count is 1 (cuBLASLt is then not told a stride, so keys that differ only there meet).
    pub batch_stride: i64,
    /// Whether the GEMM reads it transposed (`op(X) = Xᵀ`).
    pub trans: bool,
    /// The alignment of its pointer in bytes ([`alignment`]).
    pub align: u32,
}

/// What happens to the product before it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Epilogue {
    /// `D = op(A) op(B) + beta·C`.
    Plain,
    /// Plus a packed bias vector with one entry per row of D, broadcast over D's columns and the
    /// batch, whose pointer is aligned to `align` bytes (at least 16, see the matmul docs).
    Bias { align: u32 },
}

/// Everything a plan depends on: the GEMM `D[rows_d, cols_d] = op(A) op(B) (+ bias)` per batch
/// entry, with D (and C, the same buffer) packed column-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PlanKey {
    /// The type of A, B, C, D and the bias.
    pub ty: sys::cudaDataType_t,
    pub compute: sys::cublasComputeType_t,
    /// The type of alpha and beta.
    pub scale: sys::cudaDataType_t,
    pub batch: i32,
    pub a: MatrixKey,
    pub b: MatrixKey,
    pub d_rows: u64,
    pub d_cols: u64,
    pub d_align: u32,
    pub epilogue: Epilogue,
    pub workspace: usize,
}

/// The pointers and `beta` of one GEMM (alpha is 1).
pub(crate) struct GemmArgs {
    pub a: u64,
    pub b: u64,
    /// D, also read as C when `beta` is not 0.
    pub d: u64,
    /// The bias vector (used with [`Epilogue::Bias`] only).
    pub bias: u64,
    pub beta: f32,
}

// ----- plans -------------------------------------------------------------------------------------

struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc, owned here alone, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}
struct MatLayout(sys::cublasLtMatrixLayout_t);
impl Drop for MatLayout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, owned here alone, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}
struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref, owned here alone, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

/// The descriptors of one [`PlanKey`] and the algorithm chosen for them.
struct Plan {
    desc: Desc,
    a: MatLayout,
    b: MatLayout,
    d: MatLayout,
    algo: sys::cublasLtMatmulAlgo_t,
}

/// Set one attribute of a matmul descriptor to `v`, of the type cuBLASLt documents for it (i32
/// for the transposes, u32 for the epilogue, a u64 device address for the bias pointer, i64 for
/// the bias batch stride).
fn set_desc<T: Copy>(op: &'static str, desc: &Desc, attr: sys::cublasLtMatmulDescAttributes_t, v: &T) -> Result<()> {
    // SAFETY: the descriptor is alive; cuBLASLt copies exactly `size_of::<T>()` bytes from `v`
    // and rejects a size that is not the attribute's.
    unsafe { lt::set_matmul_desc_attribute(desc.0, attr, v as *const T as *const c_void, std::mem::size_of::<T>()) }
        .map_err(lt_err(op, "matmul descriptor attribute"))
}

fn layout(
    op: &'static str,
    ty: sys::cudaDataType_t,
    rows: u64,
    cols: u64,
    ld: i64,
    batch: i32,
    stride: i64,
) -> Result<MatLayout> {
    let l = MatLayout(lt::create_matrix_layout(ty, rows, cols, ld).map_err(lt_err(op, "layout"))?);
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

impl Plan {
    /// The descriptors for `key` and the heuristic's first choice; `None` when cuBLASLt has no
    /// algorithm for a bias epilogue on these operands (the caller adds the bias another way).
    /// `bias` is the current call's bias pointer, set before the query as the call will see it.
    fn build(op: &'static str, handle: sys::cublasLtHandle_t, key: &PlanKey, bias: u64) -> Result<Option<Plan>> {
        use sys::cublasLtMatmulDescAttributes_t as D;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let mat = |m: &MatrixKey| layout(op, key.ty, m.rows, m.cols, m.ld, key.batch, m.batch_stride);
        let (a, b) = (mat(&key.a)?, mat(&key.b)?);
        let d_stride = (key.d_rows * key.d_cols) as i64;
        let d = layout(op, key.ty, key.d_rows, key.d_cols, key.d_rows as i64, key.batch, d_stride)?;
        let desc = Desc(lt::create_matmul_desc(key.compute, key.scale).map_err(lt_err(op, "matmul desc"))?);
        set_desc(op, &desc, D::CUBLASLT_MATMUL_DESC_TRANSA, &(key.a.trans as i32))?;
        set_desc(op, &desc, D::CUBLASLT_MATMUL_DESC_TRANSB, &(key.b.trans as i32))?;
        if let Epilogue::Bias { .. } = key.epilogue {
            set_desc(
                op,
                &desc,
                D::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &(sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS as u32),
            )?;
            set_desc(op, &desc, D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
            // One bias for every batch entry (0 is also cuBLASLt's default).
            set_desc(op, &desc, D::CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &0i64)?;
        }
        let pref = Pref(lt::create_matmul_pref().map_err(lt_err(op, "preference"))?);
        let ws = key.workspace as u64;
        let aligns = [
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.a.align),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.b.align),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.d_align),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.d_align),
        ];
        // SAFETY: the preference is alive; the workspace size is a u64 and the alignments are
        // u32, as cuBLASLt documents.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                8,
            )
            .map_err(lt_err(op, "workspace size"))?;
            for (attr, v) in aligns {
                lt::set_matmul_pref_attribute(pref.0, attr, &v as *const u32 as *const c_void, 4)
                    .map_err(lt_err(op, "alignment"))?;
            }
        }
        // SAFETY: every descriptor passed is alive; C and D share D's layout.
        let heuristic = unsafe { lt::get_matmul_algo_heuristic(handle, desc.0, a.0, b.0, d.0, d.0, pref.0) };
        match heuristic {
            Ok(h) => Ok(Some(Plan { desc, a, b, d, algo: h.algo })),
            Err(lt::CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED))
                if matches!(key.epilogue, Epilogue::Bias { .. }) =>
            {
                Ok(None)
            }
            Err(e) => Err(lt_err(op, "no cuBLASLt algorithm for these operands")(e)),
        }
    }
}

impl Blas {
    pub(crate) fn workspace_bytes(&self) -> usize {
        self.workspace.len()
    }

    /// Run the GEMM `key` describes with `args` on `dev`'s stream, with the plan made on the
    /// key's first call. `Ok(false)` (nothing queued): cuBLASLt has no algorithm for this
    /// [`Epilogue::Bias`] GEMM; a plain GEMM either runs or is an error.
    pub(crate) fn gemm(&self, op: &'static str, dev: &CudaDevice, key: &PlanKey, args: &GemmArgs) -> Result<bool> {
        dev.bind(op)?;
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        let Some(plan) = plans.get_or_try_insert(*key, || Plan::build(op, self.handle, key, args.bias))? else {
            return Ok(false);
        };
        if let Epilogue::Bias { .. } = key.epilogue {
            // The cached descriptor holds the previous call's pointer: this call's, under the lock.
            set_desc(
                op,
                &plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &args.bias,
            )?;
        }
        let (alpha, beta) = (1f32, args.beta);
        // SAFETY: the plan's layouts describe exactly the memory behind the pointers (the caller
        // built `key` from these operands, the output holds the packed D, and with a bias the
        // vector holds `d_rows` elements); the descriptors stay alive and unchanged while the
        // lock is held; the workspace belongs to this device; all of it runs on the device's
        // stream, which orders the later frees of these buffers after this GEMM.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc.0,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                args.a as *const c_void,
                plan.a.0,
                args.b as *const c_void,
                plan.b.0,
                args.d as *const c_void,
                plan.d.0,
                args.d as *mut c_void,
                plan.d.0,
                &plan.algo,
                self.workspace.ptr_at(0) as *mut c_void,
                self.workspace.len(),
                dev.stream() as *mut _,
            )
        }
        .map_err(lt_err(op, "cublasLtMatmul"))?;
        Ok(true)
    }
}

// ----- the cache ---------------------------------------------------------------------------------

/// A map from plan keys to values holding at most `cap` entries: a miss when full first evicts
/// the least recently used entry (dropping it). Lookups are one hash; an eviction scans the
/// entries, which happens only on a miss (next to which the heuristic query dominates).
pub(crate) struct Lru<V> {
    map: HashMap<PlanKey, (u64, V)>,
    clock: u64,
    cap: usize,
}

impl<V> Lru<V> {
    pub(crate) fn new(cap: usize) -> Lru<V> {
        Lru { map: HashMap::new(), clock: 0, cap: cap.max(1) }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    /// The value for `key`, made by `make` on a miss. A failed `make` stores nothing (though a
    /// full cache has already evicted one entry for it).
    pub(crate) fn get_or_try_insert(&mut self, key: PlanKey, make: impl FnOnce() -> Result<V>) -> Result<&V> {
        self.clock += 1;
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            let oldest = self.map.iter().min_by_key(|(_, (used, _))| *used).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.map.remove(&oldest);
            }
        }
        let slot = match self.map.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert((0, make()?)),
        };
        slot.0 = self.clock;
        Ok(&slot.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(m: u64) -> PlanKey {
        let mat = MatrixKey { rows: m, cols: 8, ld: m as i64, batch_stride: 0, trans: false, align: 256 };
        PlanKey {
            ty: sys::cudaDataType_t::CUDA_R_32F,
            compute: sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            scale: sys::cudaDataType_t::CUDA_R_32F,
            batch: 1,
            a: mat,
            b: mat,
            d_rows: m,
            d_cols: m,
            d_align: 256,
            epilogue: Epilogue::Plain,
            workspace: 1 << 20,
        }
    }

    /// Counts its drops, standing for a plan's handles.
    struct Handle(&'static AtomicUsize);
    impl Drop for Handle {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn plans_are_made_once_per_key() {
        let mut lru = Lru::new(8);
        let mut made = 0;
        for m in [3, 5, 3, 3, 5, 7] {
            lru.get_or_try_insert(key(m), || {
                made += 1;
                Ok(m)
            })
            .unwrap();
        }
        assert_eq!((made, lru.len()), (3, 3));
        let bias = PlanKey { epilogue: Epilogue::Bias { align: 16 }, ..key(3) };
        assert_eq!(*lru.get_or_try_insert(bias, || Ok(99)).unwrap(), 99, "the epilogue is part of the key");
        let moved = PlanKey { a: MatrixKey { align: 16, ..key(3).a }, ..key(3) };
        assert_eq!(*lru.get_or_try_insert(moved, || Ok(98)).unwrap(), 98, "so is every alignment");
    }

    #[test]
    fn the_least_recently_used_plan_is_evicted_and_dropped() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let mut lru = Lru::new(3);
        for m in [1, 2, 3] {
            lru.get_or_try_insert(key(m), || Ok(Handle(&DROPS))).unwrap();
        }
        // 1 is used again, so 2 is the oldest when 4 arrives.
        lru.get_or_try_insert(key(1), || panic!("1 is cached")).unwrap();
        lru.get_or_try_insert(key(4), || Ok(Handle(&DROPS))).unwrap();
        assert_eq!((lru.len(), DROPS.load(Ordering::Relaxed)), (3, 1));
        let mut remade = false;
        lru.get_or_try_insert(key(2), || {
            remade = true;
            Ok(Handle(&DROPS))
        })
        .unwrap();
        assert!(remade, "2 was evicted");
        lru.get_or_try_insert(key(1), || panic!("1 was kept")).unwrap();
        drop(lru);
        assert_eq!(DROPS.load(Ordering::Relaxed), 5, "every handle is released once");
    }

    #[test]
    fn a_failed_plan_is_not_cached() {
        let mut lru: Lru<u32> = Lru::new(4);
        assert!(lru.get_or_try_insert(key(1), || Err(Error::invalid("matmul", "no algorithm"))).is_err());
        assert_eq!(lru.len(), 0);
        assert_eq!(*lru.get_or_try_insert(key(1), || Ok(7)).unwrap(), 7);
    }

    #[test]
    fn alignments_are_powers_of_two_up_to_256() {
        assert_eq!([alignment(0), alignment(4096), alignment(0x100 + 16), alignment(6)], [256, 256, 16, 2]);
    }
}
