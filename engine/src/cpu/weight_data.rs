//! How the CPU backend holds one weight's values: f32, or bf16 for the large matrices linear ops and
//! embedding lookups read, which widen them to f32 block by block as they compute, or (f32 storage,
//! x86_64 with AVX2+FMA) f32 packed for the CPU GEMM when only linear ops read the matrix.

use super::error::{EngineError, Result};
use super::ops::bf16::widen_into;
use super::ops::packed_gemm::PackedB;
use half::bf16;
use hbridge_loader::{DType, Part, TensorView};
use std::sync::{Arc, OnceLock};

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

/// One weight's values: row-major, or packed.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightData {
    F32(Arc<[f32]>),
    Bf16(Arc<[bf16]>),
    /// A matrix `[out, in]` that only linear ops read (as their weight), held as f32 packed in
    /// 16-column panels of its transpose, so the CPU GEMM reads it without repacking it per call.
    /// Held instead of the row-major copy: [`WeightData::as_f32`] rebuilds that on request.
    PackedF32(Arc<PackedWeight>),
}

/// A linear weight packed for the CPU GEMM (see [`WeightData::PackedF32`]).
pub struct PackedWeight {
    packed: PackedB,
    /// The row-major values, rebuilt only if someone asks for them as a slice.
    rows: OnceLock<Arc<[f32]>>,
}

impl PackedWeight {
    /// Packs a row-major `[out, in]` matrix.
    pub(crate) fn from_rows(w: &[f32], out: usize, inp: usize) -> Self {
        PackedWeight {
            packed: PackedB::from_rows(w, out, inp),
            rows: OnceLock::new(),
        }
    }

    pub(crate) fn packed(&self) -> &PackedB {
        &self.packed
    }

    /// The row-major values (rebuilt once and kept, so they count in [`WeightData::bytes`] from then).
    pub fn rows(&self) -> &[f32] {
        self.rows.get_or_init(|| self.packed.to_rows().into())
    }

    /// Values held (`out * in`).
    pub fn len(&self) -> usize {
        self.packed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    fn bytes(&self) -> usize {
        let rows = self
            .rows
            .get()
            .map_or(0, |r| std::mem::size_of_val::<[f32]>(r));
        4 * self.packed.len() + rows
    }
}

impl PartialEq for PackedWeight {
    fn eq(&self, other: &Self) -> bool {
        self.packed == other.packed
    }
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeight")
            .field("out", &self.packed.n())
            .field("in", &self.packed.k())
            .finish_non_exhaustive()
    }
}

impl WeightData {
    pub fn len(&self) -> usize {
        match self {
            WeightData::F32(v) => v.len(),
            WeightData::Bf16(v) => v.len(),
            WeightData::PackedF32(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn storage(&self) -> WeightStorage {
        match self {
            WeightData::F32(_) | WeightData::PackedF32(_) => WeightStorage::F32,
            WeightData::Bf16(_) => WeightStorage::Bf16,
        }
    }

    /// Bytes of values held (for a packed matrix, also its row-major copy once `as_f32` made one).
    pub fn bytes(&self) -> usize {
        match self {
            WeightData::F32(v) => std::mem::size_of_val::<[f32]>(v),
            WeightData::Bf16(v) => std::mem::size_of_val::<[bf16]>(v),
            WeightData::PackedF32(p) => p.bytes(),
        }
    }

    /// Whether the values are held packed for the CPU GEMM.
    pub fn is_packed(&self) -> bool {
        matches!(self, WeightData::PackedF32(_))
    }

    /// The values row-major, when held as f32. A packed matrix is unpacked on the first call and the
    /// copy kept alongside (the engine itself never asks; `to_f32_vec` copies without keeping).
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            WeightData::F32(v) => Some(v),
            WeightData::PackedF32(p) => Some(p.rows()),
            WeightData::Bf16(_) => None,
        }
    }

    /// The values, when held as bf16.
    pub fn as_bf16(&self) -> Option<&[bf16]> {
        match self {
            WeightData::Bf16(v) => Some(v),
            WeightData::F32(_) | WeightData::PackedF32(_) => None,
        }
    }

    /// The values as f32, row-major (a copy; bf16 widens exactly, packed unpacks exactly).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            WeightData::F32(v) => v.to_vec(),
            WeightData::Bf16(v) => {
                let mut out = vec![0.0; v.len()];
                widen_into(v, &mut out);
                out
            }
            WeightData::PackedF32(p) => p.packed().to_rows(),
        }
    }

    /// The same values row-major and unpacked (itself when not packed).
    pub(crate) fn unpacked(&self) -> WeightData {
        match self {
            WeightData::PackedF32(p) => WeightData::F32(p.packed().to_rows().into()),
            other => other.clone(),
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
            let f = to_f32(part, name, view)?;
            match storage {
                WeightStorage::F32 => WeightData::F32(f.into()),
                WeightStorage::Bf16 => {
                    WeightData::Bf16(f.iter().map(|&v| bf16::from_f32(v)).collect())
                }
            }
        }
    };
    check_numel(name, view, data.len())?;
    Ok(data)
}

/// A 2-D checkpoint matrix `[out, in]` that only linear ops read, as f32 packed for the CPU GEMM.
pub(crate) fn packed_from_view(
    part: Part,
    name: &str,
    view: &TensorView<'_>,
) -> Result<WeightData> {
    let f = to_f32(part, name, view)?;
    check_numel(name, view, f.len())?;
    let (out, inp) = match view.shape {
        &[out, inp] => (out, inp),
        _ => return Ok(WeightData::F32(f.into())),
    };
    Ok(WeightData::PackedF32(Arc::new(PackedWeight::from_rows(
        &f, out, inp,
    ))))
}

fn to_f32(part: Part, name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    view.to_f32().ok_or_else(|| EngineError::WeightDtype {
        part,
        name: name.to_string(),
        file: view.file.to_string(),
        dtype: view.dtype.to_string(),
    })
}

fn check_numel(name: &str, view: &TensorView<'_>, found: usize) -> Result<()> {
    if found != view.numel() {
        return Err(EngineError::DataLength {
            name: name.to_string(),
            shape: view.shape.to_vec(),
            expected: view.numel(),
            found,
        });
    }
    Ok(())
}
