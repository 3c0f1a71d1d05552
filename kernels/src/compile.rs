//! NVRTC compilation of a kernel file. cudarc panics when libnvrtc is missing, so its presence is checked
//! first and reported as an error.

use crate::KernelFile;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

/// The virtual architecture a kernel is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
}

impl Arch {
    /// Hopper with its arch-specific features (wgmma, setmaxnreg): what CI checks and H100/H200 run.
    pub const HOPPER: Arch = Arch { major: 9, minor: 0 };

    /// `compute_90a` for Hopper (the `a` target unlocks wgmma/setmaxnreg), `compute_XY` otherwise.
    pub fn nvrtc_name(self) -> &'static str {
        match (self.major, self.minor) {
            (9, 0) => "compute_90a",
            (8, 0) => "compute_80",
            (8, 6) => "compute_86",
            (8, 9) => "compute_89",
            (10, 0) => "compute_100",
            (12, 0) => "compute_120",
            // Older or unknown: the kernels need bf16 MMA (sm_80+), so take the common denominator.
            _ => "compute_80",
        }
    }

    /// The real architecture ptxas assembles for (`sm_90a` for Hopper).
    pub fn sm_name(self) -> String {
        self.nvrtc_name().replace("compute_", "sm_")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "libnvrtc could not be loaded (set LD_LIBRARY_PATH to the folder holding libnvrtc.so.13)"
    )]
    NvrtcMissing,
    #[error("no kernel file named `{0}` in kernels/cuda/")]
    UnknownFile(String),
    #[error("NVRTC failed on {file}.cu for {arch}: {message}")]
    Compile {
        file: &'static str,
        arch: &'static str,
        message: String,
    },
}

/// Whether libnvrtc can be loaded. Never panics.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen libnvrtc; touches no CUDA state.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles one kernel file to PTX for `arch`.
pub fn compile_ptx(file: &KernelFile, arch: Arch) -> Result<Ptx, KernelError> {
    if !nvrtc_available() {
        return Err(KernelError::NvrtcMissing);
    }
    let arch_name = arch.nvrtc_name();
    let opts = CompileOptions {
        arch: Some(arch_name),
        name: Some(format!("{}.cu", file.name)),
        // Exact expf/tanhf/erff: the kernels are checked against an f64 reference, and the memory-bound
        // ones gain nothing from approximate math.
        use_fast_math: Some(false),
        options: vec![
            "-std=c++17".into(),
            "-lineinfo".into(),
            "-default-device".into(),
        ],
        ..Default::default()
    };
    compile_ptx_with_opts(file.full_source(), opts).map_err(|e| KernelError::Compile {
        file: file.name,
        arch: arch_name,
        message: match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        },
    })
}
