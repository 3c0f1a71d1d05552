//! How the CPU backend holds one weight's values: f32, or bf16 for the large matrices linear ops and
//! embedding lookups read, which widen them to f32 block by block as they compute; and (x86_64 with
//! AVX2+FMA) a matrix that only linear ops read packed for the CPU GEMM, as f32 or, under bf16
//! storage, as bf16 that the GEMM's micro-kernels widen as they load it.

use super::error::{EngineError, Result};
use super::ops::bf16::widen_into;
use super::ops::packed_gemm::{Elem, PackedB};
use half::bf16;
use half::slice::HalfBitsSliceExt;
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
///
/// `Exact` keeps those weights as bf16 only where the checkpoint stores them as BF16: results are
/// bit-identical to `F32` storage, in as few bytes as that allows (half, on a bf16 checkpoint).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WeightStorage {
    #[default]
    F32,
    Bf16,
    Exact,
}

impl WeightStorage {
    /// What a weight stored in the checkpoint as `dtype` is held as: `Exact` resolves to `Bf16` for a
    /// BF16 tensor and to `F32` for any other.
    pub fn for_dtype(self, dtype: &DType) -> WeightStorage {
        match (self, dtype) {
            (WeightStorage::Exact, DType::BF16) => WeightStorage::Bf16,
            (WeightStorage::Exact, _) => WeightStorage::F32,
            (s, _) => s,
        }
    }
}

/// One weight's values: row-major, or packed.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightData {
    F32(Arc<[f32]>),
    Bf16(Arc<[bf16]>),
    /// A matrix `[out, in]` that only linear ops read (as their weight), held as f32 packed in
    /// 16-column panels of its transpose, so the CPU GEMM reads it without repacking it per call.
    /// Held instead of the row-major copy: [`WeightData::as_f32`] rebuilds that on request.
    PackedF32(Arc<PackedWeight<f32>>),
    /// The same under bf16 storage: bf16 in the same panels (half the bytes), widened to f32 by the
    /// GEMM's micro-kernels as they load it, so results equal `PackedF32` on the same values. Held
    /// instead of the row-major copy: [`WeightData::as_bf16`] rebuilds that on request. Under bf16
    /// compute on AMX ([`MatmulMode::Bf16Amx`](super::MatmulMode)) held only as AMX tiles instead,
    /// which linears of every row count read.
    PackedBf16(Arc<PackedWeight<bf16>>),
}

/// A linear weight packed for the CPU GEMM (see [`WeightData::PackedF32`],
/// [`WeightData::PackedBf16`]).
// `Elem` is the GEMM's own (crate-private) trait: f32 and bf16 are the only value types, and
// callers outside the crate only see `PackedWeight<f32>` and `PackedWeight<bf16>` through `WeightData`.
#[allow(private_bounds)]
pub struct PackedWeight<T: Elem> {
    packed: PackedB<T>,
    /// The row-major values, rebuilt only if someone asks for them as a slice. (The AMX tile copy,
    /// where bf16 linears made one, lives in `packed` and counts in [`WeightData::bytes`] too.)
    rows: OnceLock<Arc<[T]>>,
}

#[allow(private_bounds)]
impl<T: Elem> PackedWeight<T> {
    /// Packs a row-major `[out, in]` matrix.
    pub(crate) fn from_rows(w: &[T], out: usize, inp: usize) -> Self {
        PackedWeight {
            packed: PackedB::from_rows(w, out, inp),
            rows: OnceLock::new(),
        }
    }

    /// The tiles' share of [`WeightData::bytes`] and the packed values' (none when held only as
    /// tiles).
    fn held_bytes(&self) -> usize {
        let values = if self.packed.is_tiles_only() {
            0
        } else {
            std::mem::size_of::<T>() * self.packed.len()
        };
        values + self.packed.tile_bytes()
    }

    pub(crate) fn packed(&self) -> &PackedB<T> {
        &self.packed
    }

    /// The row-major values (rebuilt once and kept, so they count in [`WeightData::bytes`] from then).
    pub fn rows(&self) -> &[T] {
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
            .map_or(0, |r| std::mem::size_of_val::<[T]>(r));
        self.held_bytes() + rows
    }
}

impl PackedWeight<bf16> {
    /// A row-major `[out, in]` bf16 matrix that only linear ops read, in the form the process's
    /// linears read it: under bf16 compute on AMX only as tiles (every row count runs on them, so
    /// the panels would be a second copy; half the memory), otherwise packed in panels.
    pub(crate) fn bf16_for_linears(w: &[bf16], out: usize, inp: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if super::MatmulMode::current() == super::MatmulMode::Bf16Amx {
            return PackedWeight {
                packed: PackedB::tiles_only(w, out, inp),
                rows: OnceLock::new(),
            };
        }
        Self::from_rows(w, out, inp)
    }
}

#[allow(private_bounds)]
impl<T: Elem> PartialEq for PackedWeight<T> {
    fn eq(&self, other: &Self) -> bool {
        self.packed == other.packed
    }
}

#[allow(private_bounds)]
impl<T: Elem> std::fmt::Debug for PackedWeight<T> {
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
            WeightData::PackedBf16(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn storage(&self) -> WeightStorage {
        match self {
            WeightData::F32(_) | WeightData::PackedF32(_) => WeightStorage::F32,
            WeightData::Bf16(_) | WeightData::PackedBf16(_) => WeightStorage::Bf16,
        }
    }

    /// Bytes of values held (for a packed matrix, also its row-major copy once `as_f32` made one).
    pub fn bytes(&self) -> usize {
        match self {
            WeightData::F32(v) => std::mem::size_of_val::<[f32]>(v),
            WeightData::Bf16(v) => std::mem::size_of_val::<[bf16]>(v),
            WeightData::PackedF32(p) => p.bytes(),
            WeightData::PackedBf16(p) => p.bytes(),
        }
    }

    /// Whether the values are held packed for the CPU GEMM.
    pub fn is_packed(&self) -> bool {
        matches!(self, WeightData::PackedF32(_) | WeightData::PackedBf16(_))
    }

    /// The values row-major, when held as f32. A packed matrix is unpacked on the first call and the
    /// copy kept alongside (the engine itself never asks; `to_f32_vec` copies without keeping).
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            WeightData::F32(v) => Some(v),
            WeightData::PackedF32(p) => Some(p.rows()),
            WeightData::Bf16(_) | WeightData::PackedBf16(_) => None,
        }
    }

    /// The values row-major, when held as bf16. A packed matrix is unpacked on the first call and
    /// the copy kept alongside, as in `as_f32`.
    pub fn as_bf16(&self) -> Option<&[bf16]> {
        match self {
            WeightData::Bf16(v) => Some(v),
            WeightData::PackedBf16(p) => Some(p.rows()),
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
            WeightData::PackedBf16(p) => p.packed().packed_ref().to_f32_rows(),
        }
    }

    /// The same values row-major and unpacked (itself when not packed).
    pub(crate) fn unpacked(&self) -> WeightData {
        match self {
            WeightData::PackedF32(p) => WeightData::F32(p.packed().to_rows().into()),
            WeightData::PackedBf16(p) => WeightData::Bf16(p.packed().to_rows().into()),
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
    let storage = storage.for_dtype(view.dtype);
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
                WeightStorage::Bf16 => {
                    WeightData::Bf16(f.iter().map(|&v| bf16::from_f32(v)).collect())
                }
                _ => WeightData::F32(f.into()),
            }
        }
    };
    check_numel(name, view, data.len())?;
    Ok(data)
}

/// A 2-D checkpoint matrix `[out, in]` that only linear ops read, in `storage` packed for the CPU
/// GEMM. Values are converted as [`from_view`] converts them; when the checkpoint already holds the
/// storage's dtype (aligned in the map) they are packed straight from the map, so no row-major copy
/// exists even while loading (the largest matrices are tens of MB, and several convert at once).
pub(crate) fn packed_from_view(
    part: Part,
    name: &str,
    view: &TensorView<'_>,
    storage: WeightStorage,
) -> Result<WeightData> {
    let &[out, inp] = view.shape else {
        return from_view(part, name, view, storage);
    };
    Ok(match storage.for_dtype(view.dtype) {
        WeightStorage::F32 | WeightStorage::Exact => {
            let owned;
            let v = match view.as_f32() {
                Some(v) => v,
                None => {
                    owned = to_f32(part, name, view)?;
                    &owned
                }
            };
            check_numel(name, view, v.len())?;
            WeightData::PackedF32(Arc::new(PackedWeight::from_rows(v, out, inp)))
        }
        WeightStorage::Bf16 => {
            let owned;
            let v = match bf16_in_place(view) {
                Some(v) => v,
                None => {
                    owned = to_bf16(part, name, view)?;
                    &owned
                }
            };
            check_numel(name, view, v.len())?;
            WeightData::PackedBf16(Arc::new(PackedWeight::bf16_for_linears(v, out, inp)))
        }
    })
}

/// The values of a BF16 view without a copy, when 2-byte aligned in the map (little-endian hosts).
fn bf16_in_place<'a>(view: &TensorView<'a>) -> Option<&'a [bf16]> {
    if *view.dtype != DType::BF16 || cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every bit pattern is a valid u16; `align_to` puts only aligned whole values in `mid`.
    let (pre, mid, post) = unsafe { view.bytes.align_to::<u16>() };
    (pre.is_empty() && post.is_empty()).then(|| mid.reinterpret_cast::<bf16>())
}

/// The values as bf16: BF16 bytes copied, other dtypes through f32 (exact) and rounded once.
fn to_bf16(part: Part, name: &str, view: &TensorView<'_>) -> Result<Vec<bf16>> {
    Ok(match view.dtype {
        DType::BF16 => view
            .bytes
            .chunks_exact(2)
            .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        _ => to_f32(part, name, view)?
            .into_iter()
            .map(bf16::from_f32)
            .collect(),
    })
}

/// `data` (a row-major `[out, in]` matrix) packed for the CPU GEMM in its own dtype; None when
/// already packed.
pub(crate) fn pack(data: &WeightData, out: usize, inp: usize) -> Option<WeightData> {
    Some(match data {
        WeightData::F32(v) => WeightData::PackedF32(Arc::new(PackedWeight::from_rows(v, out, inp))),
        WeightData::Bf16(v) => {
            WeightData::PackedBf16(Arc::new(PackedWeight::bf16_for_linears(v, out, inp)))
        }
        WeightData::PackedF32(_) | WeightData::PackedBf16(_) => return None,
    })
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
