//! One memory-mapped safetensors file: header parsed and checked, tensor bytes borrowed from the map.

use crate::dtype::DType;
use crate::error::{LoadError, Result, SafetensorsProblem};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Where one tensor lives inside its file.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte range within the whole file.
    pub start: usize,
    pub end: usize,
}

#[derive(Debug)]
pub struct TensorFile {
    pub path: PathBuf,
    map: Mmap,
    pub entries: HashMap<String, TensorEntry>,
}

const HEADER_LEN_BYTES: usize = 8;
const MAX_HEADER_LEN: u64 = 100_000_000;

impl TensorFile {
    /// Maps `path` and validates its header: lengths, JSON, offsets covering the data exactly.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |problem| LoadError::Safetensors {
            path: path.to_path_buf(),
            problem,
        };
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                LoadError::MissingFile {
                    path: path.to_path_buf(),
                    what: "a safetensors weight file".into(),
                }
            } else {
                io(source)
            }
        })?;
        let file_len = file.metadata().map_err(io)?.len() as usize;
        if file_len < HEADER_LEN_BYTES {
            return Err(bad(SafetensorsProblem::Truncated { file_len }));
        }
        // SAFETY: the map is read-only and lives as long as this struct. A file truncated by another
        // process while mapped would fault; that is the documented contract of memory-mapped weights.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header_len = u64::from_le_bytes(map[..HEADER_LEN_BYTES].try_into().expect("8 bytes"));
        if header_len > MAX_HEADER_LEN {
            return Err(bad(SafetensorsProblem::HeaderTooLarge { header_len }));
        }
        if header_len as usize > file_len - HEADER_LEN_BYTES {
            return Err(bad(SafetensorsProblem::HeaderBeyondFile {
                header_len,
                file_len,
            }));
        }
        let data_start = HEADER_LEN_BYTES + header_len as usize;
        let data_len = file_len - data_start;
        let entries = parse_header(&map[HEADER_LEN_BYTES..data_start], data_len)
            .map_err(bad)?
            .into_iter()
            .map(|(name, mut entry)| {
                entry.start += data_start;
                entry.end += data_start;
                (name, entry)
            })
            .collect();
        Ok(TensorFile {
            path: path.to_path_buf(),
            map,
            entries,
        })
    }

    pub fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        &self.map[entry.start..entry.end]
    }

    pub fn len_bytes(&self) -> usize {
        self.map.len()
    }
}

/// Parses and checks the JSON header. Done here rather than through the safetensors crate so that every
/// problem names its tensor and says which rule it breaks.
fn parse_header(
    header: &[u8],
    data_len: usize,
) -> std::result::Result<Vec<(String, TensorEntry)>, SafetensorsProblem> {
    use SafetensorsProblem::*;
    let text = std::str::from_utf8(header).map_err(|e| HeaderNotUtf8 {
        detail: e.to_string(),
    })?;
    let malformed = |detail: String| HeaderMalformed { detail };
    let root: serde_json::Value = serde_json::from_str(text.trim_end_matches(' '))
        .map_err(|e| malformed(format!("JSON error at column {}: {e}", e.column())))?;
    let object = root
        .as_object()
        .ok_or_else(|| malformed("the header is not a JSON object".into()))?;

    let mut entries = Vec::with_capacity(object.len());
    for (name, info) in object {
        if name == "__metadata__" {
            continue;
        }
        let field = |key: &str| {
            info.get(key)
                .ok_or_else(|| malformed(format!("`{name}` has no `{key}`")))
        };
        let dtype_name = field("dtype")?
            .as_str()
            .ok_or_else(|| malformed(format!("`{name}`: dtype is not a string")))?;
        let dtype = DType::from_name(dtype_name);
        let shape = field("shape")?
            .as_array()
            .and_then(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect::<Option<Vec<usize>>>()
            })
            .ok_or_else(|| {
                malformed(format!(
                    "`{name}`: shape is not a list of non-negative integers"
                ))
            })?;
        let offsets = field("data_offsets")?
            .as_array()
            .filter(|o| o.len() == 2)
            .and_then(|o| {
                Some((
                    usize::try_from(o[0].as_u64()?).ok()?,
                    usize::try_from(o[1].as_u64()?).ok()?,
                ))
            })
            .ok_or_else(|| {
                malformed(format!(
                    "`{name}`: data_offsets is not a pair of non-negative integers"
                ))
            })?;
        let overflow = || Overflow {
            tensor: name.clone(),
            shape: shape.clone(),
        };
        let elements = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(overflow)?;
        let bits = dtype.size_bits().ok_or_else(|| {
            malformed(format!(
                "`{name}`: dtype \"{dtype_name}\" is not a safetensors dtype"
            ))
        })?;
        let bits = elements.checked_mul(bits).ok_or_else(overflow)?;
        if offsets.1 < offsets.0 {
            return Err(BadOffsets {
                tensor: name.clone(),
                offsets: [offsets.0, offsets.1],
                expected: "an end not before the start".into(),
            });
        }
        if bits % 8 != 0 || offsets.1 - offsets.0 != bits / 8 {
            return Err(SizeMismatch {
                tensor: name.clone(),
                expected: if bits % 8 == 0 {
                    format!("shape {shape:?} x {dtype} = {} bytes", bits / 8)
                } else {
                    format!("shape {shape:?} x {dtype} = {bits} bits, a whole number of bytes")
                },
                found: offsets.1 - offsets.0,
            });
        }
        entries.push((
            name.clone(),
            TensorEntry {
                dtype,
                shape,
                start: offsets.0,
                end: offsets.1,
            },
        ));
    }

    // The format requires the tensors to tile the data section exactly: no overlap, no hole.
    let mut order: Vec<&(String, TensorEntry)> = entries.iter().collect();
    order.sort_by_key(|(_, e)| (e.start, e.end));
    let mut covered = 0;
    let mut previous: Option<&str> = None;
    for (name, entry) in order {
        if entry.start != covered {
            return Err(BadOffsets {
                tensor: name.clone(),
                offsets: [entry.start, entry.end],
                expected: match previous {
                    Some(p) => format!(
                        "a start at byte {covered}, where `{p}` ends: {}",
                        if entry.start < covered {
                            "the two overlap"
                        } else {
                            "a gap lies between them"
                        }
                    ),
                    None => "a start at byte 0: the first tensor begins the data section".into(),
                },
            });
        }
        if entry.end > data_len {
            return Err(OutOfBounds {
                tensor: name.clone(),
                offsets: [entry.start, entry.end],
                data_len,
            });
        }
        covered = entry.end;
        previous = Some(name);
    }
    if covered != data_len {
        return Err(DataLengthMismatch {
            declared: Some(covered),
            found: data_len,
        });
    }
    Ok(entries)
}
