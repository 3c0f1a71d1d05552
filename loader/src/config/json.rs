//! Typed reads of config.json fields with errors that name the file and the field.

use crate::error::{LoadError, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Upper bound on one dimension (widths, heads, vocabulary, channels, patch sizes, token counts): far
/// above any real model, and low enough that the products of up to three dimensions that the manifest
/// forms cannot overflow.
pub const MAX_DIM: usize = 1 << 21;
/// Upper bound on layer and block counts: far above any real model, and low enough that the manifest
/// (tens of tensors per layer) stays small.
pub const MAX_LAYERS: usize = 1 << 10;

/// Reads and parses a JSON file, reporting the line and column of a syntax error.
pub fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            LoadError::MissingFile {
                path: path.to_path_buf(),
                what: "a JSON config file".into(),
            }
        } else {
            LoadError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| LoadError::Json {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// A JSON object together with the file it came from, for error messages.
#[derive(Clone, Copy)]
pub struct Fields<'a> {
    pub path: &'a Path,
    pub value: &'a Value,
    /// Prefix of field names in messages (e.g. `vision_config.`).
    pub scope: &'a str,
}

impl<'a> Fields<'a> {
    pub fn new(path: &'a Path, value: &'a Value) -> Result<Self> {
        if !value.is_object() {
            return Err(LoadError::ConfigField {
                path: path.to_path_buf(),
                field: "(top level)".into(),
                expected: "a JSON object".into(),
                found: kind(value),
            });
        }
        Ok(Fields {
            path,
            value,
            scope: "",
        })
    }

    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.value.get(field).filter(|v| !v.is_null())
    }

    pub fn has(&self, field: &str) -> bool {
        self.get(field).is_some()
    }

    fn err(&self, field: &str, expected: &str, found: String) -> LoadError {
        LoadError::ConfigField {
            path: self.path.to_path_buf(),
            field: format!("{}{field}", self.scope),
            expected: expected.into(),
            found,
        }
    }

    fn missing(&self, field: &str, expected: &str) -> LoadError {
        self.err(field, expected, "nothing (field absent)".into())
    }

    /// A nested object, e.g. `vision_config`.
    pub fn object(&self, field: &str, scope: &'a str) -> Result<Option<Fields<'a>>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) if v.is_object() => Ok(Some(Fields {
                path: self.path,
                value: v,
                scope,
            })),
            Some(v) => Err(self.err(field, "an object", kind(v))),
        }
    }

    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.err(field, "a non-negative integer", kind(v))),
        }
    }

    pub fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| self.missing(field, "a non-negative integer"))
    }

    /// A positive integer of at most [`MAX_DIM`]: dimensions and counts that divide or size something.
    pub fn positive(&self, field: &str) -> Result<usize> {
        self.positive_at_most(field, MAX_DIM)
    }

    fn positive_at_most(&self, field: &str, max: usize) -> Result<usize> {
        let n = self.usize(field)?;
        if n == 0 {
            return Err(self.err(field, "a positive integer", "0".into()));
        }
        self.at_most(field, n, max)
    }

    /// A dimension that may be absent: a non-negative integer of at most [`MAX_DIM`].
    pub fn opt_dim(&self, field: &str) -> Result<Option<usize>> {
        self.opt_usize(field)?
            .map(|n| self.at_most(field, n, MAX_DIM))
            .transpose()
    }

    /// A positive layer count of at most [`MAX_LAYERS`].
    pub fn layers(&self, field: &str) -> Result<usize> {
        self.positive_at_most(field, MAX_LAYERS)
    }

    /// A layer count that may be absent, of at most [`MAX_LAYERS`].
    pub fn opt_layers(&self, field: &str) -> Result<Option<usize>> {
        self.opt_usize(field)?
            .map(|n| self.at_most(field, n, MAX_LAYERS))
            .transpose()
    }

    fn at_most(&self, field: &str, n: usize, max: usize) -> Result<usize> {
        if n > max {
            return Err(self.err(
                field,
                &format!("at most {max} (a bound far above any real model)"),
                n.to_string(),
            ));
        }
        Ok(n)
    }

    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(field, "a number", kind(v))),
        }
    }

    pub fn f64_or(&self, field: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(field)?.unwrap_or(default))
    }

    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(field, "true or false", kind(v))),
        }
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<&'a str>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(field, "a string", kind(v))),
        }
    }

    pub fn opt_usize_list(&self, field: &str) -> Result<Option<Vec<usize>>> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        let list = v
            .as_array()
            .ok_or_else(|| self.err(field, "a list of integers", kind(v)))?;
        list.iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|&n| n <= MAX_DIM)
                    .ok_or_else(|| {
                        self.err(
                            field,
                            &format!("a list of non-negative integers of at most {MAX_DIM}"),
                            kind(v),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub fn usize_list(&self, field: &str) -> Result<Vec<usize>> {
        self.opt_usize_list(field)?
            .ok_or_else(|| self.missing(field, "a list of integers"))
    }

    /// The error for a field whose value is well-formed but unsupported.
    pub fn unsupported(&self, field: &str, expected: &str, found: impl ToString) -> LoadError {
        self.err(field, expected, found.to_string())
    }

    pub fn inconsistent(&self, problem: impl Into<String>) -> LoadError {
        LoadError::ConfigInconsistent {
            path: self.path.to_path_buf(),
            problem: problem.into(),
        }
    }

    pub fn path_buf(&self) -> PathBuf {
        self.path.to_path_buf()
    }
}

/// A short description of a JSON value for "found ..." messages.
pub fn kind(v: &Value) -> String {
    let text = v.to_string();
    let short = if text.chars().count() > 40 {
        format!("{}...", text.chars().take(40).collect::<String>())
    } else {
        text
    };
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => format!("the boolean {short}"),
        Value::Number(_) => format!("the number {short}"),
        Value::String(_) => format!("the string {short}"),
        Value::Array(_) => format!("the list {short}"),
        Value::Object(_) => "an object".into(),
    }
}
