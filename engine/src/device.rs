//! Which backend runs a request. CUDA is chosen only when a driver and a device are really there; the
//! CPU backend otherwise, with a one-line notice. cudarc panics (it does not return an error) when
//! libcuda is missing, so its presence is checked before any other cudarc call.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// What the user asked for (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda,
}

impl FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda),
            other => Err(format!(
                "unknown device \"{other}\"; expected auto, cpu or cuda"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("--device cuda: {0}")]
    CudaUnavailable(String),
}

/// The chosen backend and, when the choice deserves a word, the notice to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub device: Device,
    pub notice: Option<String>,
}

/// Number of usable CUDA devices, or why there are none. Never panics.
pub fn cuda_probe() -> Result<usize, String> {
    // SAFETY: only tries to dlopen libcuda and reports whether it loaded; touches no CUDA state.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda could not be loaded)".into());
    }
    match cudarc::driver::CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(n as usize),
        Ok(_) => Err("the CUDA driver reports no device".into()),
        Err(e) => Err(format!("the CUDA driver failed: {e}")),
    }
}

pub fn select(request: DeviceRequest) -> Result<Selection, DeviceError> {
    match request {
        DeviceRequest::Cpu => Ok(Selection {
            device: Device::Cpu,
            notice: None,
        }),
        DeviceRequest::Cuda => match cuda_probe() {
            Err(why) => Err(DeviceError::CudaUnavailable(why)),
            Ok(_) => Ok(Selection {
                device: Device::Cuda,
                notice: None,
            }),
        },
        DeviceRequest::Auto => match cuda_probe() {
            Err(why) => Ok(Selection {
                device: Device::Cpu,
                notice: Some(format!("{why}: using the CPU backend")),
            }),
            Ok(_) => Ok(Selection {
                device: Device::Cuda,
                notice: None,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        assert_eq!("AUTO".parse(), Ok(DeviceRequest::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceRequest::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Cuda));
        assert!("tpu".parse::<DeviceRequest>().unwrap_err().contains("tpu"));
    }

    /// On machines without a GPU (CI) auto falls back to the CPU with a notice and cuda is a clear error;
    /// on a GPU machine the probe finds the device. Either way, no panic.
    #[test]
    fn selection_never_panics_and_falls_back() {
        assert_eq!(select(DeviceRequest::Cpu).unwrap().device, Device::Cpu);
        let auto = select(DeviceRequest::Auto).unwrap();
        match cuda_probe() {
            Err(why) => {
                assert_eq!(auto.device, Device::Cpu);
                assert!(
                    auto.notice.as_deref().unwrap().contains("CPU backend"),
                    "{auto:?}"
                );
                assert_eq!(
                    select(DeviceRequest::Cuda),
                    Err(DeviceError::CudaUnavailable(why))
                );
            }
            Ok(n) => {
                assert!(n > 0);
                assert_eq!(auto.device, Device::Cuda);
                assert_eq!(select(DeviceRequest::Cuda).unwrap().device, Device::Cuda);
            }
        }
    }
}
