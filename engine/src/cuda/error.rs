//! What can go wrong on the CUDA backend. Driver, NVRTC and cuBLASLt errors are kept as text (with what
//! was being done) so the engine's error type stays `Clone + PartialEq` like the CPU backend's.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    #[error("CUDA driver call failed while {during}: {message}")]
    Driver { during: String, message: String },
    #[error("compiling the CUDA kernels: {0}")]
    Compile(String),
    #[error("cuBLASLt failed while {during}: {message}")]
    Blas { during: String, message: String },
    /// Device memory ran out, or would: `need` bytes asked for while `free` of `total` were free.
    #[error(
        "{during} needs {:.2} GB of GPU memory, but the GPU has {:.2} GB free of {:.2} GB{hint}",
        *need as f64 / 1e9,
        *free as f64 / 1e9,
        *total as f64 / 1e9
    )]
    DeviceMemory {
        during: String,
        need: u64,
        free: u64,
        total: u64,
        /// What would need less, or how to skip a check (empty when nothing applies).
        hint: String,
    },
    #[error("{op} at `{label}` is not supported by the CUDA backend: {problem}")]
    Unsupported {
        op: &'static str,
        label: String,
        problem: String,
    },
}

impl CudaError {
    pub fn driver(during: impl Into<String>, e: impl std::fmt::Debug) -> Self {
        CudaError::Driver {
            during: during.into(),
            message: format!("{e:?}"),
        }
    }

    pub fn blas(during: impl Into<String>, e: impl std::fmt::Debug) -> Self {
        CudaError::Blas {
            during: during.into(),
            message: format!("{e:?}"),
        }
    }
}

pub type CudaResult<T> = std::result::Result<T, CudaError>;
