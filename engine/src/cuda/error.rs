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
