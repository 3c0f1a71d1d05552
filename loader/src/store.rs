//! The weights of one part (und, gen, vae, bridge): a single safetensors file or shards listed by a
//! `*.safetensors.index.json`, looked up by tensor name.

use crate::config::json::read_json;
use crate::dtype::{self, DType};
use crate::error::{LoadError, Result};
use crate::tensor_file::{TensorEntry, TensorFile};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A borrowed tensor: zero-copy bytes from the memory map.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: &'a DType,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
    /// The file, relative to the model directory.
    pub file: &'a str,
}

impl TensorView<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (a copy; bf16 and f16 are widened exactly).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        dtype::to_f32(self.dtype, self.bytes)
    }

    /// The values without a copy, when stored as f32 and 4-byte aligned in the map.
    pub fn as_f32(&self) -> Option<&[f32]> {
        if *self.dtype != DType::F32 || cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes).ok()
    }
}

#[derive(Debug)]
pub struct PartStore {
    /// The index file if sharded, else the single file; relative to the model directory.
    origin: String,
    /// Files, each with its path relative to the model directory.
    files: Vec<(String, TensorFile)>,
    index: HashMap<String, (usize, TensorEntry)>,
}

impl PartStore {
    /// Opens `<dir>/<stem>.safetensors.index.json` with its shards if present, else `<dir>/<stem>.safetensors`.
    /// `rel_dir` is `dir` relative to the model directory, used in messages.
    pub fn open(root: &Path, rel_dir: &str, stem: &str) -> Result<Self> {
        let dir = root.join(rel_dir);
        let index_name = format!("{stem}.safetensors.index.json");
        let single_name = format!("{stem}.safetensors");
        let index_path = dir.join(&index_name);
        if index_path.is_file() {
            return Self::open_sharded(root, rel_dir, &index_path);
        }
        let single = dir.join(&single_name);
        if !single.is_file() {
            return Err(LoadError::MissingFile {
                path: single,
                what: format!(
                    "the weights of {rel_dir}/: {single_name} or {index_name} with its shards"
                ),
            });
        }
        let mut store = PartStore {
            origin: format!("{rel_dir}/{single_name}"),
            files: Vec::new(),
            index: HashMap::new(),
        };
        store.add_file(
            format!("{rel_dir}/{single_name}"),
            TensorFile::open(&single)?,
        )?;
        Ok(store)
    }

    fn open_sharded(root: &Path, rel_dir: &str, index_path: &Path) -> Result<Self> {
        let index_name = index_path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let json = read_json(index_path)?;
        let field_err = |expected: &str, found: String| LoadError::ConfigField {
            path: index_path.to_path_buf(),
            field: "weight_map".into(),
            expected: expected.into(),
            found,
        };
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                field_err(
                    "an object of tensor name -> shard file",
                    "something else or nothing".into(),
                )
            })?;
        let mut shard_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tensor, shard) in map {
            let shard = shard
                .as_str()
                .filter(|s| !s.is_empty() && !s.contains('/') && !s.contains('\\') && *s != "..")
                .ok_or_else(|| {
                    field_err(
                        "shard file names in the same folder",
                        format!("{shard} for `{tensor}`"),
                    )
                })?;
            shard_of.entry(shard).or_default().push(tensor);
        }
        let mut store = PartStore {
            origin: format!("{rel_dir}/{index_name}"),
            files: Vec::new(),
            index: HashMap::new(),
        };
        for (shard, tensors) in &shard_of {
            let path = root.join(rel_dir).join(shard);
            let file = TensorFile::open(&path)?;
            if let Some(missing) = tensors.iter().find(|t| !file.entries.contains_key(**t)) {
                return Err(LoadError::Index {
                    path: index_path.to_path_buf(),
                    tensor: missing.to_string(),
                    shard: shard.to_string(),
                    detail: format!("{shard} does not contain it"),
                });
            }
            store.add_file(format!("{rel_dir}/{shard}"), file)?;
        }
        Ok(store)
    }

    fn add_file(&mut self, rel: String, file: TensorFile) -> Result<()> {
        let n = self.files.len();
        for (name, entry) in &file.entries {
            if let Some((other, _)) = self.index.insert(name.clone(), (n, entry.clone())) {
                return Err(LoadError::Index {
                    path: file.path.clone(),
                    tensor: name.clone(),
                    shard: rel.clone(),
                    detail: format!("{} holds a tensor of the same name", self.files[other].0),
                });
            }
        }
        self.files.push((rel, file));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        let (name, (file, entry)) = self.index.get_key_value(name)?;
        let (rel, tf) = &self.files[*file];
        Some(TensorView {
            name,
            dtype: &entry.dtype,
            shape: &entry.shape,
            bytes: tf.bytes(entry),
            file: rel,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Where a missing tensor was looked for: the single file, or the shard index.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|(rel, _)| rel.as_str())
    }

    /// Bytes of tensor data (not headers) held by this part.
    pub fn data_bytes(&self) -> usize {
        self.index.values().map(|(_, e)| e.end - e.start).sum()
    }
}
