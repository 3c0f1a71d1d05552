//! How the CPU backend holds one weight's values: f32, or bf16 for the large matrices linear ops and
//! embedding lookups read, which widen them to f32 block by block as they compute.

use super::error::{EngineError, Result};
use super::ops::bf16::widen_into;
use half::bf16;
use hbridge_loader::{DType, Part, TensorView};
use std::sync::Arc;

/// The dtype `CpuWeights` keeps checkpoint weights in.
///
/// `Bf16` keeps each 2-D weight that only linear ops (as their weight) and embedding lookups (as their
/// table) read as bf16, half the bytes of f32; every other weight (norms, biases, convolution kernels,
/// anything another op reads) stays f32. Kernels widen bf16 to f32 exactly, so:
/// - a weight the checkpoint stores as BF16 gives results bit-identical to `F32` storage;
/// - a weight the checkpoint stores as F32 (or F16) is rounded to the nearest bf16 when loaded, so its
///   results differ from `F32` storage by bf16 rounding (about 3 significant digits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WeightStorage {
    #[default]
    F32,
    Bf16,
}

/// One weight's values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightData {
    F32(Arc<[f32]>),
    Bf16(Arc<[bf16]>),
}

impl WeightData {
    pub fn len(&self) -> usize {
        match self {
            WeightData::F32(v) => v.len(),
            WeightData::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn storage(&self) -> WeightStorage {
        match self {
            WeightData::F32(_) => WeightStorage::F32,
            WeightData::Bf16(_) => WeightStorage::Bf16,
        }
    }

    /// Bytes of values held.
    pub fn bytes(&self) -> usize {
        match self {
            WeightData::F32(v) => std::mem::size_of_val::<[f32]>(v),
            WeightData::Bf16(v) => std::mem::size_of_val::<[bf16]>(v),
        }
    }

    /// The values, when held as f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            WeightData::F32(v) => Some(v),
            WeightData::Bf16(_) => None,
        }
    }

    /// The values, when held as bf16.
    pub fn as_bf16(&self) -> Option<&[bf16]> {
        match self {
            WeightData::Bf16(v) => Some(v),
            WeightData::F32(_) => None,
        }
    }

    /// The values as f32 (a copy; bf16 widens exactly).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            WeightData::F32(v) => v.to_vec(),
            WeightData::Bf16(v) => {
                let mut out = vec![0.0; v.len()];
                widen_into(v, &mut out);
                out
            }
        }
    }
}

/// A checkpoint tensor's values in `storage`. bf16 bytes are copied without a round trip through f32;
/// f32 and f16 go through f32 (exact) and round once to bf16.
pub(crate) fn from_view(
    part: Part,
    name: &str,
    view: &TensorView<'_>,
    storage: WeightStorage,
) -> Result<WeightData> {
    let data = match (storage, view.dtype) {
        (WeightStorage::Bf16, DType::BF16) => WeightData::Bf16(
            view.bytes
                .chunks_exact(2)
                .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
        ),
        _ => {
            let f = view.to_f32().ok_or_else(|| EngineError::WeightDtype {
                part,
                name: name.to_string(),
                file: view.file.to_string(),
                dtype: view.dtype.to_string(),
            })?;
            match storage {
                WeightStorage::F32 => WeightData::F32(f.into()),
                WeightStorage::Bf16 => {
                    WeightData::Bf16(f.iter().map(|&v| bf16::from_f32(v)).collect())
                }
            }
        }
    };
    if data.len() != view.numel() {
        return Err(EngineError::DataLength {
            name: name.to_string(),
            shape: view.shape.to_vec(),
            expected: view.numel(),
            found: data.len(),
        });
    }
    Ok(data)
}
