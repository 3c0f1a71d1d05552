//! Element types of stored tensors, and their conversion to f32.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DType {
    BF16,
    F16,
    F32,
    /// Any other safetensors dtype (integer, f64, fp8, ...): readable, never a valid weight.
    Other(String),
}

impl DType {
    /// The safetensors header name.
    pub fn from_name(name: &str) -> Self {
        match name {
            "BF16" => DType::BF16,
            "F16" => DType::F16,
            "F32" => DType::F32,
            other => DType::Other(other.to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::F32 => "F32",
            DType::Other(n) => n,
        }
    }

    /// Bits per element; `None` for a name the format does not define.
    pub fn size_bits(&self) -> Option<usize> {
        Some(match self.name() {
            "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ"
            | "F8_E5M2FNUZ" => 8,
            "F4" => 4,
            "F6_E2M3" | "F6_E3M2" => 6,
            "I16" | "U16" | "F16" | "BF16" => 16,
            "I32" | "U32" | "F32" => 32,
            "I64" | "U64" | "F64" | "C64" => 64,
            _ => return None,
        })
    }

    pub fn is_float_weight(&self) -> bool {
        matches!(self, DType::BF16 | DType::F16 | DType::F32)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Converts little-endian weight bytes to f32. `None` for a dtype that is not a float weight.
pub fn to_f32(dtype: &DType, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        DType::Other(_) => return None,
    })
}
