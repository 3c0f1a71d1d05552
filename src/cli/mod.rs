//! Subcommands of the `hbridge` binary, one file each. Each returns a message on failure; `main` prints it.

pub mod bench;
pub mod chat;
pub mod demo;
pub mod edit;
pub mod forward;
pub mod generate;

use hbridge::model::{Model, WeightStorage};
use hbridge_engine::device::Device;
use std::path::Path;

/// The backend the global `--device` and `--weight-dtype` options chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub device: Device,
    /// How the CPU backend keeps its weight matrices (CUDA: always bf16).
    pub storage: WeightStorage,
}

impl Backend {
    /// `--weight-dtype auto|f32|bf16` on `device`: auto on the CPU keeps bf16 matrices of a bf16 checkpoint
    /// as bf16 (the same results as f32, half the bytes), bf16 is CUDA's own (and on the CPU rounds an f32
    /// checkpoint); f32 on CUDA is refused.
    pub fn new(device: Device, dtype: &str) -> Result<Backend, String> {
        let storage = match (dtype, device) {
            ("auto", Device::Cpu) => WeightStorage::Exact,
            ("auto", Device::Cuda) | ("f32", Device::Cpu) | ("bf16", Device::Cuda) => WeightStorage::F32,
            ("bf16", Device::Cpu) => WeightStorage::Bf16,
            ("f32", Device::Cuda) => {
                return Err("--weight-dtype f32: the CUDA backend keeps bf16 weights; use auto or bf16, or --device cpu".into())
            }
            (other, _) => return Err(format!("--weight-dtype: '{other}' is not one of auto, f32, bf16")),
        };
        Ok(Backend { device, storage })
    }
}

/// Fails at once, before any long work, when the output `path` could not be written later: it names a
/// folder, its folder is missing, or the folder refuses a new file (checked by creating and removing
/// an empty probe file beside it). A generation is minutes of work on the CPU; it should not be lost
/// to a typo in `-o`.
pub fn check_output(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!(
            "{}: is a folder; expected the path of the file to write",
            path.display()
        ));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "{}: the folder {} does not exist",
            path.display(),
            dir.display()
        ));
    }
    let name = path
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    let probe = dir.join(format!(".{name}.hbridge-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("{}: cannot write in {}: {e}", path.display(), dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Opens `dir` on the chosen backend, saying which backend runs it.
pub fn open_model(dir: &Path, backend: Backend) -> Result<Model, String> {
    let model =
        Model::open_with(dir, backend.device, backend.storage).map_err(|e| e.to_string())?;
    match backend.device {
        Device::Cpu => eprintln!(
            "backend    cpu ({} weights, {}, {} threads)",
            match backend.storage {
                WeightStorage::Bf16 => "bf16",
                WeightStorage::Exact => "bf16 where the checkpoint has bf16",
                WeightStorage::F32 => "f32",
            },
            hbridge_engine::MatmulMode::current().describe(),
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

/// What a request spent making weights resident (its first use of them), for its timing line: empty
/// when nothing was.
pub(crate) fn weights_note(weights: std::time::Duration) -> String {
    if weights.is_zero() {
        String::new()
    } else {
        format!("; weights made resident on first use {weights:.2?} (not in the times above)")
    }
}
