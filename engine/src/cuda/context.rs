//! One GPU as the CUDA backend sees it: its context, the stream all work is ordered on, the kernel
//! modules, compiled with NVRTC at first use and cached for the life of the context, and cuBLASLt (loaded
//! at the first GEMM).

use super::blas::Blas;
use super::error::{CudaError, CudaResult};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use hbridge_kernels::{compile_ptx, Arch, KernelFile};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// A raw device address inside an allocation the caller keeps alive (an arena, a weight buffer). Kernels
/// take these instead of cudarc views so that one arena can be read and written by the same launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevPtr(pub u64);

impl DevPtr {
    /// The address `elems` elements of `elem_bytes` each past this one.
    pub fn offset(self, elems: usize, elem_bytes: usize) -> DevPtr {
        DevPtr(self.0 + (elems * elem_bytes) as u64)
    }
}

/// The device, its stream, and the compiled kernel modules.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: Arch,
    name: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Entry points looked up so far, by (file, entry): an eager step launches hundreds of kernels,
    /// each would otherwise ask the driver for its function again.
    functions: Mutex<HashMap<&'static str, HashMap<String, CudaFunction>>>,
    blas: OnceLock<Result<Blas, CudaError>>,
    /// Held by whoever needs the stream to itself for a while (an executor's run, a capture, a weight
    /// upload, a stream-ordered free): work from another thread must not land inside a stream capture.
    exclusive: Arc<Mutex<()>>,
    /// Hand-written kernels launch with programmatic dependent launch (see `launch.rs`).
    pdl: AtomicBool,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Gpu({}, sm_{}{})",
            self.name, self.arch.major, self.arch.minor
        )
    }
}

impl Gpu {
    /// Opens device `ordinal`. Checks for libcuda first (cudarc panics without it), so on a machine
    /// without a GPU this is an error, never a panic.
    pub fn new(ordinal: usize) -> CudaResult<Arc<Gpu>> {
        crate::device::cuda_probe().map_err(CudaError::Unavailable)?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| CudaError::driver(format!("opening device {ordinal}"), e))?;
        // All work runs on one stream in order; raw-pointer launches need no per-buffer events, and
        // stream capture (CUDA graphs) rejects the event records cudarc would add.
        // SAFETY: called before any buffer of this context exists.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| CudaError::driver("reading the compute capability", e))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        if major < 8 {
            return Err(CudaError::Unavailable(format!(
                "{name} is sm_{major}{minor}; the kernels need bf16 tensor cores (sm_80 or newer)"
            )));
        }
        // A stream of our own, not the legacy default stream: CUDA graphs cannot be captured from the
        // legacy stream, and it would serialize with every other stream of the process.
        let stream = ctx
            .new_stream()
            .map_err(|e| CudaError::driver("creating the stream", e))?;
        Ok(Arc::new(Gpu {
            ctx,
            stream,
            arch: Arch {
                major: major as u32,
                minor: minor as u32,
            },
            name,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            blas: OnceLock::new(),
            exclusive: Arc::new(Mutex::new(())),
            pdl: AtomicBool::new(major >= 9 && super::launch::pdl_requested()),
        }))
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Whether hand-written kernels launch with programmatic dependent launch (`HBRIDGE_PDL=1` on
    /// sm_90 or newer).
    pub fn pdl(&self) -> bool {
        self.pdl.load(Ordering::Relaxed)
    }

    /// Turns programmatic dependent launch on or off for the launches that follow (a comparison of the
    /// two in one process); on only where the GPU has it (sm_90 or newer). Returns what is now in
    /// effect. A CUDA graph captured before keeps the launches it captured.
    pub fn set_pdl(&self, on: bool) -> bool {
        let on = on && self.arch.major >= 9;
        self.pdl.store(on, Ordering::Relaxed);
        on
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry point `entry` of kernel file `file` (e.g. `("norm", "rmsnorm_fused")`), compiling the file
    /// on first use.
    pub fn function(&self, file: &'static str, entry: &str) -> CudaResult<CudaFunction> {
        let mut functions = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = functions.get(file).and_then(|m| m.get(entry)) {
            return Ok(f.clone());
        }
        let f = self.load_function(file, entry)?;
        functions
            .entry(file)
            .or_default()
            .insert(entry.to_string(), f.clone());
        Ok(f)
    }

    fn load_function(&self, file: &'static str, entry: &str) -> CudaResult<CudaFunction> {
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match modules.get(file) {
                Some(m) => m.clone(),
                None => {
                    let kf = KernelFile::by_name(file)
                        .ok_or_else(|| CudaError::Compile(format!("no kernel file `{file}`")))?;
                    let ptx = compile_ptx(kf, self.arch)
                        .map_err(|e| CudaError::Compile(e.to_string()))?;
                    let m = self
                        .ctx
                        .load_module(ptx)
                        .map_err(|e| CudaError::driver(format!("loading {file}.cu"), e))?;
                    modules.insert(kf.name, m.clone());
                    m
                }
            }
        };
        module
            .load_function(entry)
            .map_err(|e| CudaError::driver(format!("finding {entry} in {file}.cu"), e))
    }

    /// `n` elements of device memory, zeroed (allocation is rare: arenas and weights). Refused while
    /// the stream is being captured: cudarc allocates with `cuMemAllocAsync`, which a capture records
    /// as a graph memory node instead of failing, and the slice's later `cuMemFreeAsync` outside the
    /// graph would free memory the graph owns.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> CudaResult<CudaSlice<T>> {
        use cudarc::driver::sys::CUstreamCaptureStatus as Status;
        match self.stream.capture_status() {
            Ok(Status::CU_STREAM_CAPTURE_STATUS_NONE) => {}
            Ok(status) => {
                return Err(CudaError::Driver {
                    during: format!("allocating {n} elements"),
                    message: format!(
                        "the stream is being captured ({status:?}): allocate before the capture"
                    ),
                })
            }
            Err(e) => {
                return Err(CudaError::driver(
                    format!("querying the stream's capture state before allocating {n} elements"),
                    e,
                ))
            }
        }
        self.stream.alloc_zeros::<T>(n.max(1)).map_err(|e| {
            let during = format!("allocating {n} elements");
            let bytes = (n.max(1) * std::mem::size_of::<T>()) as u64;
            self.alloc_error(during, bytes, e)
        })
    }

    /// An allocation's failure: out of memory says how much was free (a typed error the caller can
    /// act on, [`CudaError::DeviceMemory`]), anything else stays a driver error.
    pub(crate) fn alloc_error(
        &self,
        during: String,
        need: u64,
        e: cudarc::driver::DriverError,
    ) -> CudaError {
        use cudarc::driver::sys::CUresult;
        if e.0 != CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            return CudaError::driver(during, e);
        }
        match self.memory_info() {
            Ok((free, total)) => CudaError::DeviceMemory {
                during,
                need,
                free,
                total,
                hint: " (a smaller image or a shorter context needs less)".into(),
            },
            Err(_) => CudaError::driver(during, e),
        }
    }

    /// cuBLASLt for this GPU, loaded and given its workspace on first use (an error if libcublasLt is
    /// missing; the error is kept, so later calls fail the same way without retrying).
    pub fn blas(&self) -> CudaResult<&Blas> {
        self.blas
            .get_or_init(|| Blas::new(&self.stream))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Exclusive use of the stream until the guard drops (see the field). Not reentrant.
    pub fn exclusive(&self) -> MutexGuard<'_, ()> {
        self.exclusive.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock behind [`exclusive`](Self::exclusive), for an owner of device memory that must free it
    /// under the lock from its `Drop` (cudarc frees on the stream) without holding the `Gpu`.
    pub(crate) fn exclusive_lock(&self) -> Arc<Mutex<()>> {
        self.exclusive.clone()
    }

    /// Device memory in use by every process on this GPU (total minus free, cuMemGetInfo), in bytes.
    pub fn memory_in_use(&self) -> CudaResult<u64> {
        let (free, total) = self.memory_info()?;
        Ok(total - free)
    }

    /// Free and total device memory (cuMemGetInfo), in bytes.
    pub fn memory_info(&self) -> CudaResult<(u64, u64)> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| CudaError::driver("binding the context", e))?;
        let (free, total) = cudarc::driver::result::mem_get_info()
            .map_err(|e| CudaError::driver("querying device memory", e))?;
        Ok((free as u64, total as u64))
    }

    pub fn synchronize(&self) -> CudaResult<()> {
        self.stream
            .synchronize()
            .map_err(|e| CudaError::driver("synchronizing the stream", e))
    }
}

/// The device address of a whole allocation.
pub fn dev_ptr<T>(slice: &CudaSlice<T>, stream: &CudaStream) -> DevPtr {
    use cudarc::driver::DevicePtr;
    let (ptr, _sync) = slice.device_ptr(stream);
    DevPtr(ptr)
}
