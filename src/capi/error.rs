//! Status codes, the per-thread last error message, and the guard that keeps panics on the Rust side.

use crate::chat::ChatError;
use crate::engine::LoadError;
use crate::model::RunError;
use hbridge_engine::{CudaError, EngineError};
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The status every `hbridge_*` function that can fail returns; `HBRIDGE_STATUS_OK` is 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbridgeStatus {
    /// Success.
    Ok = 0,
    /// A null pointer, non-UTF-8 text, or a request argument the model cannot serve.
    InvalidArgument = 1,
    /// The checkpoint (or its tokenizer) could not be read or is inconsistent.
    Load = 2,
    /// The requested backend is not usable (no GPU, no driver, unsupported dtype).
    Device = 3,
    /// The model failed while running.
    Run = 4,
    /// The callback asked to stop an image request.
    Cancelled = 5,
    /// The request's state does not fit the engine's memory limit, or the weights or activations do
    /// not fit the host's available memory (CPU backend) or the GPU's free memory (CUDA backend).
    Memory = 6,
    /// The caller's output buffer is too small.
    BufferTooSmall = 7,
    /// A bug inside hbridge (a caught panic); the engine may be unusable.
    Internal = 8,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `message` as this thread's last error and returns `status`.
pub(crate) fn fail(status: HbridgeStatus, message: impl Into<String>) -> HbridgeStatus {
    // A message with a NUL byte would be cut there by C; replace them so nothing is lost silently.
    let text = message.into().replace('\0', "\u{FFFD}");
    let c = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
    status
}

fn clear() {
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::default());
}

/// This thread's last error message (empty after a success). The pointer stays valid until the next
/// `hbridge_*` call on the same thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Runs `body`, turning its error into a status with the message recorded, and a panic into
/// `Internal`: no unwinding crosses into C.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), (HbridgeStatus, String)>) -> HbridgeStatus {
    clear();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => HbridgeStatus::Ok,
        Ok(Err((status, message))) => fail(status, message),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            fail(
                HbridgeStatus::Internal,
                format!("internal error (please report): {what}"),
            )
        }
    }
}

/// The status of a run error.
pub(crate) fn run_status(e: &RunError) -> HbridgeStatus {
    match e {
        RunError::Invalid(_) | RunError::Request(_) => HbridgeStatus::InvalidArgument,
        RunError::Cancelled { .. } => HbridgeStatus::Cancelled,
        RunError::Memory(_)
        | RunError::Engine(
            EngineError::HostMemory { .. }
            | EngineError::ActivationMemory { .. }
            | EngineError::Cuda(CudaError::DeviceMemory { .. }),
        ) => HbridgeStatus::Memory,
        RunError::Load(_) => HbridgeStatus::Load,
        RunError::Graph(_) | RunError::Engine(_) => HbridgeStatus::Run,
    }
}

/// The status of a chat error.
pub(crate) fn chat_status(e: &ChatError) -> HbridgeStatus {
    match e {
        ChatError::Model(run) => run_status(run),
        ChatError::NoTokenizer { .. } | ChatError::BadTokenizer { .. } => HbridgeStatus::Load,
        _ => HbridgeStatus::InvalidArgument,
    }
}

/// The status of a load error.
pub(crate) fn load_status(e: &LoadError) -> HbridgeStatus {
    match e {
        LoadError::Device(_) | LoadError::DType { .. } | LoadError::CpuCompute(_) => {
            HbridgeStatus::Device
        }
        LoadError::Model(ChatError::Model(RunError::Engine(_))) => HbridgeStatus::Device,
        LoadError::Model(_) => HbridgeStatus::Load,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory refusals, the engine's budget and the host's, share one status.
    #[test]
    fn memory_refusals_map_to_the_memory_status() {
        let host = RunError::Engine(EngineError::ActivationMemory {
            need: 2,
            available: 1,
        });
        assert_eq!(run_status(&host), HbridgeStatus::Memory);
        let weights = RunError::Engine(EngineError::HostMemory {
            tensors: 1,
            need: 2,
            available: 1,
            storage: "f32".into(),
            hint: String::new(),
        });
        assert_eq!(run_status(&weights), HbridgeStatus::Memory);
        let device = RunError::Engine(EngineError::Cuda(CudaError::DeviceMemory {
            during: "allocating 1 elements".into(),
            need: 2,
            free: 1,
            total: 8,
            hint: String::new(),
        }));
        assert_eq!(run_status(&device), HbridgeStatus::Memory);
        let other = RunError::Engine(EngineError::Plan("x".into()));
        assert_eq!(run_status(&other), HbridgeStatus::Run);
    }
}
