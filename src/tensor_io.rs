//! Named tensors to and from safetensors files, as `forward` reads its inputs and writes its traces
//! (integer tensors as I64, `vae.image` as U8, as the fixtures store them).

use hbridge_engine::cpu::{HostData, HostTensor};
use hbridge_loader::{DType, LoadError, TensorFile};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why a safetensors file of named tensors could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TensorIoError {
    /// The file could not be opened or its header is not valid safetensors.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A tensor has a dtype this reader does not convert.
    #[error(
        "{path}: tensor `{tensor}` has dtype {dtype}; expected F32, BF16, F16, I64, I32 or U8"
    )]
    DType {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its dtype as the header spells it.
        dtype: String,
    },
    /// Serializing or writing the output file failed.
    #[error("{path}: {message}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The safetensors or I/O error.
        message: String,
    },
}

/// Reads every tensor of a safetensors file; floats become f32, integers i32.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, HostTensor>, TensorIoError> {
    let file = TensorFile::open(path)?;
    let mut out = HashMap::new();
    for (name, e) in &file.entries {
        let b = file.bytes(e);
        let t = match &e.dtype {
            DType::F32 | DType::BF16 | DType::F16 => HostTensor::f32(
                e.shape.clone(),
                hbridge_loader::dtype_to_f32(&e.dtype, b).unwrap_or_default(),
            ),
            DType::Other(d) if d == "I64" => HostTensor::i32(
                e.shape.clone(),
                b.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as i32)
                    .collect(),
            ),
            DType::Other(d) if d == "I32" => HostTensor::i32(
                e.shape.clone(),
                b.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            ),
            DType::Other(d) if d == "U8" => {
                HostTensor::i32(e.shape.clone(), b.iter().map(|&x| x as i32).collect())
            }
            other => {
                return Err(TensorIoError::DType {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    dtype: other.to_string(),
                })
            }
        };
        out.insert(name.clone(), t);
    }
    Ok(out)
}

/// Writes tensors sorted by name.
pub fn write_tensors(
    path: &Path,
    tensors: &HashMap<String, HostTensor>,
) -> Result<(), TensorIoError> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let encoded: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = names
        .into_iter()
        .map(|name| {
            let t = &tensors[name];
            let (dtype, bytes) = match &t.data {
                HostData::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                HostData::I32(v) if name == "vae.image" => (
                    Dtype::U8,
                    v.iter().map(|&x| x.clamp(0, 255) as u8).collect(),
                ),
                HostData::I32(v) => (
                    Dtype::I64,
                    v.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect(),
                ),
            };
            (name.as_str(), dtype, t.shape.clone(), bytes)
        })
        .collect();
    let write_err = |message: String| TensorIoError::Write {
        path: path.to_path_buf(),
        message,
    };
    let views = encoded
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes).map(|v| (*name, v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| write_err(e.to_string()))?;
    let bytes = safetensors::serialize(views, None).map_err(|e| write_err(e.to_string()))?;
    // Whole or not at all (a trace is hundreds of MB at full size).
    crate::atomic_file::write(path, &bytes).map_err(|e| write_err(e.to_string()))
}
