//! Every way a checkpoint can fail to load, each naming the file and (where there is one) the tensor or
//! config field at fault, what was expected and what was found.

use std::fmt;
use std::path::PathBuf;

/// A loader failure. Problems with individual tensors are gathered into [`LoadError::Tensors`] so that
/// one run reports all of them, not only the first.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: missing; expected {what}")]
    MissingFile { path: PathBuf, what: String },

    #[error("{path}: invalid JSON at line {line}, column {column}: {message}")]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("{path}: field `{field}`: expected {expected}, found {found}")]
    ConfigField {
        path: PathBuf,
        field: String,
        expected: String,
        found: String,
    },

    #[error("{path}: inconsistent config: {problem}")]
    ConfigInconsistent { path: PathBuf, problem: String },

    #[error("{path}: not a valid safetensors file: {problem}")]
    Safetensors {
        path: PathBuf,
        problem: SafetensorsProblem,
    },

    #[error("{path}: index names `{tensor}` in {shard}, but {detail}")]
    Index {
        path: PathBuf,
        tensor: String,
        shard: String,
        detail: String,
    },

    #[error("{}", TensorList(.0))]
    Tensors(Vec<TensorIssue>),
}

/// What is wrong with the bytes of a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SafetensorsProblem {
    /// Shorter than the 8-byte header length that starts every file.
    Truncated { file_len: usize },
    /// The header length points past the end of the file.
    HeaderBeyondFile { header_len: u64, file_len: usize },
    /// The header length exceeds the format's 100 MB bound.
    HeaderTooLarge { header_len: u64 },
    /// The header is not UTF-8.
    HeaderNotUtf8 { detail: String },
    /// The header is not the JSON the format defines.
    HeaderMalformed { detail: String },
    /// A tensor's data offsets run backwards, overlap the tensor before it, or leave a gap after it
    /// (the format requires the tensors to tile the data section).
    BadOffsets {
        tensor: String,
        offsets: [usize; 2],
        /// What the offsets should have been, e.g. "a start at byte 16, where `a` ends".
        expected: String,
    },
    /// A tensor's data reaches past the end of the data section.
    OutOfBounds {
        tensor: String,
        offsets: [usize; 2],
        data_len: usize,
    },
    /// A tensor's byte length does not match its shape and dtype.
    SizeMismatch {
        tensor: String,
        /// The size its shape and dtype imply, e.g. "shape [4] x F32 = 16 bytes".
        expected: String,
        /// The length of its data_offsets range, in bytes.
        found: usize,
    },
    /// The data section is shorter or longer than the header declares.
    DataLengthMismatch {
        declared: Option<usize>,
        found: usize,
    },
    /// Shape times element size overflows.
    Overflow { tensor: String, shape: Vec<usize> },
}

impl fmt::Display for SafetensorsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SafetensorsProblem::*;
        match self {
            Truncated { file_len } => write!(
                f,
                "file is {file_len} bytes, shorter than the 8-byte header length: truncated file?"
            ),
            HeaderBeyondFile {
                header_len,
                file_len,
            } => write!(
                f,
                "header length {header_len} reaches past the end of the {file_len}-byte file: truncated or not a safetensors file?"
            ),
            HeaderTooLarge { header_len } => {
                write!(f, "header length {header_len} exceeds the 100 MB limit: not a safetensors file?")
            }
            HeaderNotUtf8 { detail } => write!(f, "header is not UTF-8 ({detail})"),
            HeaderMalformed { detail } => write!(f, "header is not valid safetensors JSON ({detail})"),
            BadOffsets {
                tensor,
                offsets,
                expected,
            } => write!(f, "`{tensor}` has data_offsets {offsets:?}, expected {expected}"),
            OutOfBounds {
                tensor,
                offsets,
                data_len,
            } => write!(
                f,
                "`{tensor}` has data_offsets {offsets:?}, past the end of the {data_len}-byte data section: truncated file?"
            ),
            SizeMismatch {
                tensor,
                expected,
                found,
            } => write!(
                f,
                "`{tensor}`: data_offsets span {found} bytes, expected {expected}"
            ),
            DataLengthMismatch {
                declared: Some(d),
                found,
            } => write!(
                f,
                "header declares {d} data bytes, file holds {found}: {}",
                if d < found {
                    "padded file, or a tensor missing from the header?"
                } else {
                    "truncated file?"
                }
            ),
            DataLengthMismatch {
                declared: None,
                found,
            } => write!(
                f,
                "data section of {found} bytes does not match the header's offsets: truncated or padded file?"
            ),
            Overflow { tensor, shape } => write!(
                f,
                "`{tensor}`: shape {shape:?} overflows when multiplied out"
            ),
        }
    }
}

/// One tensor that is missing or does not match what the configs imply.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorIssue {
    /// The file that holds (or should hold) the tensor, relative to the model directory.
    pub file: String,
    /// The tensor's name as stored in the file.
    pub tensor: String,
    pub kind: TensorIssueKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TensorIssueKind {
    Missing {
        expected: String,
    },
    Shape {
        expected: String,
        found: Vec<usize>,
        hint: String,
    },
    DType {
        expected: String,
        found: String,
    },
}

impl fmt::Display for TensorIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (file, tensor) = (&self.file, &self.tensor);
        match &self.kind {
            TensorIssueKind::Missing { expected } => {
                write!(f, "{file}: {tensor} is missing (expected shape {expected})")
            }
            TensorIssueKind::Shape {
                expected,
                found,
                hint,
            } => write!(
                f,
                "{file}: {tensor} has shape {found:?}, expected {expected}: {hint}"
            ),
            TensorIssueKind::DType { expected, found } => {
                write!(f, "{file}: {tensor} has dtype {found}, expected {expected}")
            }
        }
    }
}

struct TensorList<'a>(&'a [TensorIssue]);

impl fmt::Display for TensorList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        let n = self.0.len();
        write!(f, "{n} tensor problem{}:", if n == 1 { "" } else { "s" })?;
        for issue in self.0.iter().take(SHOWN) {
            write!(f, "\n  {issue}")?;
        }
        if n > SHOWN {
            write!(f, "\n  ... and {} more", n - SHOWN)?;
        }
        Ok(())
    }
}

pub type Result<T, E = LoadError> = std::result::Result<T, E>;
