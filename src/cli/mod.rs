//! Subcommands of the `hbridge` binary, one file each. Each returns a message on failure; `main` prints it.

pub mod bench;
pub mod chat;
pub mod demo;
pub mod edit;
pub mod forward;
pub mod generate;

use hbridge::model::Model;
use hbridge_engine::device::Device;
use std::path::Path;

/// Opens `dir` on `device`, saying which backend runs it.
pub fn open_model(dir: &Path, device: Device) -> Result<Model, String> {
    let model = Model::open_on(dir, device).map_err(|e| e.to_string())?;
    match device {
        Device::Cpu => eprintln!(
            "backend    cpu (f32, {} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        Device::Cuda => {
            eprintln!("backend    cuda (bf16 weights and activations, f32 accumulation)")
        }
    }
    Ok(model)
}

/// The peak device memory line of a CUDA run (nothing on the CPU).
pub fn report_peak_memory(model: &Model) {
    if let Some(peak) = model.peak_device_memory() {
        eprintln!(
            "peak GPU memory in use {:.2} GiB (cuMemGetInfo after each upload and run)",
            peak as f64 / (1u64 << 30) as f64
        );
    }
}
