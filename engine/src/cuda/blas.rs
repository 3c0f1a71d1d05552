//! cuBLASLt state of one GPU: the handle, a preallocated workspace, and per-shape matmul plans
//! (descriptor, layouts, heuristic algorithm) created on the first GEMM of a shape and reused. After a
//! shape's first call, a GEMM allocates nothing and asks no heuristic, so it can be captured in a CUDA
//! graph (the executor always runs a graph eagerly once before capturing it).

use super::context::{DevPtr, Gpu};
use super::error::{CudaError, CudaResult};
use super::ops::gemm::{LtOperand, LtProblem};
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// cuBLASLt workspace: NVIDIA's recommendation for Hopper (32 MiB), enough for every algorithm we ask
/// the heuristic for (it is told this limit).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// One GEMM in cuBLASLt's terms (see `ops::gemm::problem`): `D = op(A) op(B) (+ bias) + beta * D`.
#[derive(Debug, Clone, Copy)]
pub struct Matmul {
    pub problem: LtProblem,
    /// Byte alignment of every row of A, B and D (what the heuristic may assume).
    pub align: [u32; 3],
    pub a: DevPtr,
    pub b: DevPtr,
    pub d: DevPtr,
    /// bf16, `problem.m` elements, added to every column of D (a row-major row).
    pub bias: Option<DevPtr>,
    pub alpha: f32,
    pub beta: f32,
    /// D in f32 instead of bf16 (attention scores of the wide-head path; no bias then).
    pub d_f32: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    problem: LtProblem,
    bias: bool,
    align: [u32; 3],
    d_f32: bool,
}

/// Descriptor, layouts and algorithm of one shape. Null handles are never destroyed, so a plan that
/// failed half-way cleans up what it created.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
    /// The heuristic's other candidates, timed on the first call and then dropped (`blas_algo`).
    untimed: Vec<sys::cublasLtMatmulAlgo_t>,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created by cuBLASLt, is owned by this plan alone and is destroyed once.
        // Errors are ignored: nothing can be done about them in a destructor.
        unsafe {
            for l in [self.a, self.b, self.d] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
        }
    }
}

/// The cuBLASLt handle, its workspace and the plan cache.
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    /// Held across setting a plan's bias pointer and enqueueing its matmul, so two threads sharing a
    /// plan cannot swap each other's bias.
    plans: Mutex<HashMap<PlanKey, Plan>>,
}

// SAFETY: the handle and plans are raw cuBLASLt objects; plans are only touched under the mutex, and the
// handle is only passed to cuBLASLt calls made under that same mutex.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        self.plans
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // SAFETY: created in `new`, destroyed once, after every plan that used it.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

fn blas_err(during: &str) -> impl FnOnce(lt::CublasError) -> CudaError + '_ {
    move |e| CudaError::blas(during, e)
}

impl Blas {
    /// Loads cuBLASLt (checked first: cudarc panics when the library is missing), creates the handle and
    /// allocates the workspace on `stream`.
    pub fn new(stream: &Arc<CudaStream>) -> CudaResult<Blas> {
        // SAFETY: only tries to dlopen libcublasLt.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::Unavailable(
                "libcublasLt could not be loaded (set LD_LIBRARY_PATH to the CUDA toolkit's lib folder)".into(),
            ));
        }
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| CudaError::driver("binding the context for cuBLASLt", e))?;
        let handle = lt::create_handle().map_err(blas_err("creating the handle"))?;
        let workspace = match stream.alloc_zeros::<u8>(WORKSPACE_BYTES) {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: just created, not used.
                unsafe {
                    let _ = lt::destroy_handle(handle);
                }
                return Err(CudaError::driver("allocating the cuBLASLt workspace", e));
            }
        };
        Ok(Blas {
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// Shapes planned so far.
    pub fn planned_shapes(&self) -> usize {
        self.plans.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Enqueues `mm` on the GPU's stream, planning its shape first if new.
    pub fn matmul(&self, gpu: &Gpu, mm: &Matmul) -> CudaResult<()> {
        let stream = gpu.stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| CudaError::driver("binding the context for cuBLASLt", e))?;
        let key = PlanKey {
            problem: mm.problem,
            bias: mm.bias.is_some(),
            align: mm.align,
            d_f32: mm.d_f32,
        };
        if mm.d_f32 && mm.bias.is_some() {
            return Err(CudaError::Unsupported {
                op: "gemm",
                label: "cuBLASLt".into(),
                problem: "a bias with an f32 output".into(),
            });
        }
        // The BIAS epilogue's vector loads want an aligned bias, which the plan key does not record
        // (every bias is its own weight allocation today; a slice of one would not be).
        if let Some(bias) = mm.bias.filter(|b| b.0 % 16 != 0) {
            return Err(CudaError::Unsupported {
                op: "gemm",
                label: "cuBLASLt".into(),
                problem: format!("a bias at {:#x}, not 16-byte aligned", bias.0),
            });
        }
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        let plan = match plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(self.plan(&key)?),
        };
        if !plan.untimed.is_empty() && super::blas_algo::may_time(gpu, mm) {
            let candidates: Vec<_> = std::iter::once(plan.algo)
                .chain(std::mem::take(&mut plan.untimed))
                .collect();
            plan.algo = super::blas_algo::fastest(gpu, &candidates, |algo| {
                self.enqueue(gpu, plan, algo, mm)
            })?;
        }
        plan.untimed.clear();
        self.enqueue(gpu, plan, &plan.algo, mm)
    }

    /// Enqueues `mm` with `plan`'s objects and algorithm `algo`.
    fn enqueue(
        &self,
        gpu: &Gpu,
        plan: &Plan,
        algo: &sys::cublasLtMatmulAlgo_t,
        mm: &Matmul,
    ) -> CudaResult<()> {
        let stream = gpu.stream();
        let alpha = mm.alpha;
        let ws = super::context::dev_ptr(&self.workspace, stream);
        // SAFETY: the plan's objects are alive (owned by the locked cache); the caller guarantees that the
        // pointers address operands of the planned shapes; the workspace is ours and as large as the
        // heuristic was allowed to ask for.
        unsafe {
            if let Some(bias) = mm.bias {
                let ptr: u64 = bias.0;
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &ptr as *const u64 as *const c_void,
                    std::mem::size_of::<u64>(),
                )
                .map_err(blas_err("setting the bias pointer"))?;
            }
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &mm.beta as *const f32 as *const c_void,
                mm.a.0 as *const c_void,
                plan.a,
                mm.b.0 as *const c_void,
                plan.b,
                mm.d.0 as *const c_void,
                plan.d,
                mm.d.0 as *mut c_void,
                plan.d,
                algo,
                ws.0 as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as sys::cudaStream_t,
            )
            .map_err(|e| {
                CudaError::blas(
                    format!(
                        "running a {}x{}x{} bf16 matmul (column-major m x n x k)",
                        mm.problem.m, mm.problem.n, mm.problem.k
                    ),
                    e,
                )
            })
        }
    }

    /// Descriptor, layouts and the heuristic's best algorithm for `key`.
    fn plan(&self, key: &PlanKey) -> CudaResult<Plan> {
        let p = &key.problem;
        let mut plan = Plan {
            desc: std::ptr::null_mut(),
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
            untimed: Vec::new(),
        };
        let during = format!("planning a {}x{}x{} bf16 matmul", p.m, p.n, p.k);
        let err = |e| CudaError::blas(during.clone(), e);
        use sys::cublasLtMatmulDescAttributes_t as D;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        // SAFETY: plain cuBLASLt object creation; every attribute is passed with its documented type
        // (cublasOperation_t and cudaDataType_t are int32, the epilogue and alignments uint32, the
        // workspace size uint64).
        unsafe {
            plan.desc = lt::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType_t::CUDA_R_32F,
            )
            .map_err(err)?;
            let set = |attr: D, v: *const c_void, size: usize| {
                lt::set_matmul_desc_attribute(plan.desc, attr, v, size)
            };
            let (ta, tb) = (p.a.trans as i32, p.b.trans as i32);
            set(D::CUBLASLT_MATMUL_DESC_TRANSA, &ta as *const i32 as _, 4).map_err(err)?;
            set(D::CUBLASLT_MATMUL_DESC_TRANSB, &tb as *const i32 as _, 4).map_err(err)?;
            if key.bias {
                let epi = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
                set(
                    D::CUBLASLT_MATMUL_DESC_EPILOGUE,
                    &epi as *const sys::cublasLtEpilogue_t as _,
                    std::mem::size_of::<sys::cublasLtEpilogue_t>(),
                )
                .map_err(err)?;
                let ty = sys::cudaDataType_t::CUDA_R_16BF;
                set(
                    D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                    &ty as *const sys::cudaDataType_t as _,
                    std::mem::size_of::<sys::cudaDataType_t>(),
                )
                .map_err(err)?;
            }
            let layout = |o: &LtOperand, ty| lt::create_matrix_layout(ty, o.rows, o.cols, o.ld);
            let bf16 = sys::cudaDataType_t::CUDA_R_16BF;
            let d_ty = if key.d_f32 {
                sys::cudaDataType_t::CUDA_R_32F
            } else {
                bf16
            };
            plan.a = layout(&p.a, bf16).map_err(err)?;
            plan.b = layout(&p.b, bf16).map_err(err)?;
            plan.d = layout(&p.d, d_ty).map_err(err)?;

            let pref = lt::create_matmul_pref().map_err(err)?;
            let ws = WORKSPACE_BYTES as u64;
            let mut r = lt::set_matmul_pref_attribute(
                pref,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as _,
                8,
            );
            let [aa, ab, ad] = key.align;
            for (attr, v) in [
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, aa),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, ab),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, ad),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, ad),
            ] {
                r = r.and_then(|_| {
                    lt::set_matmul_pref_attribute(pref, attr, &v as *const u32 as _, 4)
                });
            }
            let found = r.and_then(|_| {
                super::blas_algo::heuristics(
                    self.handle,
                    plan.desc,
                    [plan.a, plan.b, plan.d],
                    pref,
                    WORKSPACE_BYTES,
                )
            });
            let _ = lt::destroy_matmul_pref(pref);
            let mut found = found.map_err(|e| {
                CudaError::blas(
                    format!(
                        "{during} (A {:?}, B {:?}, D {:?}, bias {}, alignments {:?}): no algorithm",
                        p.a, p.b, p.d, key.bias, key.align
                    ),
                    e,
                )
            })?;
            if found.is_empty() {
                return Err(CudaError::Blas {
                    during,
                    message: format!(
                        "no algorithm within the {WORKSPACE_BYTES}-byte workspace (A {:?}, B {:?}, D {:?})",
                        p.a, p.b, p.d
                    ),
                });
            }
            plan.algo = found.remove(0);
            plan.untimed = found;
        }
        Ok(plan)
    }
}
