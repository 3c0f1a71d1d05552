//! Host tensors: what callers feed a graph and what they read back.

use super::error::{EngineError, Result};
use hbridge_graph::DataType;

#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// A dense row-major tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    pub fn f32(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Self {
        HostTensor {
            shape: shape.into(),
            data: HostData::F32(data),
        }
    }

    pub fn i32(shape: impl Into<Vec<usize>>, data: Vec<i32>) -> Self {
        HostTensor {
            shape: shape.into(),
            data: HostData::I32(data),
        }
    }

    pub fn dtype(&self) -> DataType {
        match self.data {
            HostData::F32(_) => DataType::F32,
            HostData::I32(_) => DataType::I32,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of stored values (equals `numel` for a well-formed tensor).
    pub fn len(&self) -> usize {
        match &self.data {
            HostData::F32(v) => v.len(),
            HostData::I32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            HostData::F32(v) => Some(v),
            HostData::I32(_) => None,
        }
    }

    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.data {
            HostData::F32(v) => Some(v),
            HostData::I32(_) => None,
        }
    }

    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            HostData::I32(v) => Some(v),
            HostData::F32(_) => None,
        }
    }

    pub fn into_f32(self) -> Option<Vec<f32>> {
        match self.data {
            HostData::F32(v) => Some(v),
            HostData::I32(_) => None,
        }
    }

    /// Checks that the data holds exactly `numel` values (`name` is for the error).
    pub fn check_len(&self, name: &str) -> Result<()> {
        if self.len() != self.numel() {
            return Err(EngineError::DataLength {
                name: name.to_string(),
                shape: self.shape.clone(),
                expected: self.numel(),
                found: self.len(),
            });
        }
        Ok(())
    }
}

/// The element range that `len` values (whole rows) take in state `name` of `shape` (`[capacity,
/// cols]`) from row `row` on, or the error naming the state when they are not whole rows or overrun
/// its capacity. Host writes into a state (either backend) go through this check.
pub fn state_rows(
    name: &str,
    shape: &[usize],
    row: usize,
    len: usize,
) -> Result<std::ops::Range<usize>> {
    let cols = shape.get(1).copied().unwrap_or(1).max(1);
    let capacity = shape.first().copied().unwrap_or(0);
    let rows = len.div_ceil(cols);
    if !len.is_multiple_of(cols) || row.saturating_add(rows) > capacity {
        return Err(EngineError::StateRow {
            state: name.to_string(),
            input: "host write".into(),
            row: row as i64,
            rows,
            capacity,
        });
    }
    Ok(row * cols..row * cols + len)
}
