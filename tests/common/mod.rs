//! Shared helpers of the loader tests: throwaway directories, tiny checkpoints written by
//! `hbridge::init`, and small editors for their safetensors files and JSON configs.
#![allow(dead_code)]

use hbridge::init::{write_checkpoint, WeightDType};
use hbridge::presets::{preset, PresetConfigs};
use hbridge_loader::{Checkpoint, LoadError, TensorIssue};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

// ---------------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------------

/// A directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A fresh, empty directory whose name contains `tag`, the process id, a counter and the time.
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "hbridge-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------------------

pub fn tiny_preset() -> PresetConfigs {
    preset("tiny").expect("the tiny preset exists")
}

/// Writes `preset` into a fresh temp dir.
pub fn write_preset(preset: &PresetConfigs, seed: u64, dtype: WeightDType) -> TempDir {
    let dir = TempDir::new(&format!("ckpt-{}", preset.name));
    write_checkpoint(dir.path(), preset, seed, dtype, false)
        .unwrap_or_else(|e| panic!("writing the {} checkpoint: {e}", preset.name));
    dir
}

/// A complete, valid tiny checkpoint (nested und prefixes, vision tower and VAE encoder included).
pub fn tiny_checkpoint(seed: u64, dtype: WeightDType) -> TempDir {
    write_preset(&tiny_preset(), seed, dtype)
}

/// The tiny preset with the omnigen2 topology: no bridge; caption_embedder and context_refiner instead.
pub fn omnigen2_preset() -> PresetConfigs {
    let mut p = tiny_preset();
    p.layout = serde_json::json!({
        "topology": "omnigen2", "und": "und", "gen": "gen", "vae": "vae"
    });
    p
}

/// Opens a checkpoint that must load, with the error in the panic message otherwise.
pub fn open_ok(dir: &Path) -> Checkpoint {
    Checkpoint::open(dir).unwrap_or_else(|e| panic!("{} should load, got: {e}", dir.display()))
}

/// Opens a checkpoint that must fail.
pub fn open_err(dir: &Path) -> LoadError {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("{} should fail to load, but it loaded", dir.display()),
        Err(e) => e,
    }
}

/// The issues of a `LoadError::Tensors`, panicking on any other variant.
pub fn tensor_issues(err: &LoadError) -> &[TensorIssue] {
    match err {
        LoadError::Tensors(issues) => issues,
        other => panic!("expected LoadError::Tensors, got {other:?}: {other}"),
    }
}

/// Asserts that `text` contains every one of `needles`.
#[track_caller]
pub fn assert_mentions(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "message does not mention {n:?}:\n{text}");
    }
}

/// Path display of a file relative to a dir, as messages print paths (`<dir>/und/config.json`).
pub fn shown(dir: &Path, rel: &str) -> String {
    dir.join(rel).display().to_string()
}

// ---------------------------------------------------------------------------------------------------
// Safetensors files
// ---------------------------------------------------------------------------------------------------

/// One tensor of a safetensors file, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Entry {
    /// Changes the shape, resizing the data (zero-filled) to match.
    pub fn reshape(&mut self, shape: &[usize]) {
        self.shape = shape.to_vec();
        self.resize_data();
    }

    /// Changes the dtype, resizing the data (zero-filled) to match the shape.
    pub fn retype(&mut self, dtype: Dtype) {
        self.dtype = dtype;
        self.resize_data();
    }

    fn resize_data(&mut self) {
        let bits = self.shape.iter().product::<usize>() * self.dtype.bitsize();
        assert_eq!(bits % 8, 0, "{}: not a whole number of bytes", self.name);
        self.data.resize(bits / 8, 0);
    }
}

/// Reads every tensor of a safetensors file, sorted by name.
pub fn read_st(path: &Path) -> Vec<Entry> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{} is not valid safetensors: {e}", path.display()));
    let mut entries: Vec<Entry> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| Entry {
            name,
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

/// Serializes `entries` as a safetensors file's bytes.
pub fn st_bytes(entries: &[Entry]) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = entries
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                TensorView::new(e.dtype, e.shape.clone(), &e.data)
                    .unwrap_or_else(|err| panic!("{}: {err}", e.name)),
            )
        })
        .collect();
    safetensors::serialize(views, None).expect("serializing safetensors")
}

/// Writes `entries` as a safetensors file.
pub fn write_st(path: &Path, entries: &[Entry]) {
    std::fs::write(path, st_bytes(entries))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Reads, edits and rewrites a safetensors file.
pub fn edit_st(path: &Path, edit: impl FnOnce(&mut Vec<Entry>)) {
    let mut entries = read_st(path);
    edit(&mut entries);
    write_st(path, &entries);
}

/// The entry named `name`, panicking when there is none.
pub fn entry<'a>(entries: &'a mut [Entry], name: &str) -> &'a mut Entry {
    entries
        .iter_mut()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

/// Removes the tensor `name` (which must exist) from the file `rel` under `dir`.
pub fn drop_tensor(dir: &Path, rel: &str, name: &str) {
    edit_st(&dir.join(rel), |entries| {
        let before = entries.len();
        entries.retain(|e| e.name != name);
        assert_eq!(entries.len() + 1, before, "{rel} has no tensor {name}");
    });
}

/// Gives the tensor `name` of file `rel` a new shape (data zero-filled).
pub fn reshape_tensor(dir: &Path, rel: &str, name: &str, shape: &[usize]) {
    edit_st(&dir.join(rel), |entries| {
        entry(entries, name).reshape(shape)
    });
}

/// Gives the tensor `name` of file `rel` a new dtype (same shape, data zero-filled).
pub fn retype_tensor(dir: &Path, rel: &str, name: &str, dtype: Dtype) {
    edit_st(&dir.join(rel), |entries| entry(entries, name).retype(dtype));
}

pub const UND_FILE: &str = "und/model.safetensors";
pub const GEN_FILE: &str = "gen/diffusion_pytorch_model.safetensors";
pub const VAE_FILE: &str = "vae/diffusion_pytorch_model.safetensors";
pub const BRIDGE_FILE: &str = "bridge/bridge.safetensors";

/// The flat (pre-4.52 transformers) name of a nested und tensor name.
pub fn flat_und_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("model.language_model.") {
        format!("model.{rest}")
    } else if let Some(rest) = name.strip_prefix("model.visual.") {
        format!("visual.{rest}")
    } else {
        name.to_string()
    }
}

/// Renames the und tensors from the nested prefixes to the flat `model.` / `visual.` ones.
pub fn flatten_und_names(dir: &Path) {
    edit_st(&dir.join(UND_FILE), |entries| {
        for e in entries.iter_mut() {
            e.name = flat_und_name(&e.name);
        }
    });
}

/// Names of the shards `split_und` writes.
pub fn shard_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
}

/// Splits `und/model.safetensors` into `n` shards plus `model.safetensors.index.json` (round-robin by
/// name), and removes the single file. Returns the index's `weight_map` (tensor -> shard).
pub fn split_und(dir: &Path, n: usize) -> serde_json::Map<String, Value> {
    let single = dir.join(UND_FILE);
    let entries = read_st(&single);
    let mut shards: Vec<Vec<Entry>> = vec![Vec::new(); n];
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for (i, e) in entries.into_iter().enumerate() {
        weight_map.insert(e.name.clone(), Value::String(shard_name(i % n, n)));
        total += e.data.len();
        shards[i % n].push(e);
    }
    for (i, shard) in shards.iter().enumerate() {
        write_st(&dir.join("und").join(shard_name(i, n)), shard);
    }
    let index = serde_json::json!({
        "metadata": { "total_size": total },
        "weight_map": weight_map,
    });
    write_json(&dir.join("und/model.safetensors.index.json"), &index);
    std::fs::remove_file(&single).expect("removing the single und file");
    weight_map
}

// ---------------------------------------------------------------------------------------------------
// Hand-built safetensors bytes
// ---------------------------------------------------------------------------------------------------

/// `header_len` (as declared), then `header`, then `data`: for files whose length field lies.
pub fn raw_st_with_len(header_len: u64, header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = header_len.to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// A safetensors file made of a header and data, with a truthful header length.
pub fn raw_st(header: &[u8], data: &[u8]) -> Vec<u8> {
    raw_st_with_len(header.len() as u64, header, data)
}

/// Writes `bytes` to `<dir>/<name>` and returns the path.
pub fn write_bytes(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

// ---------------------------------------------------------------------------------------------------
// JSON configs
// ---------------------------------------------------------------------------------------------------

pub fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn write_json(path: &Path, value: &Value) {
    let text = serde_json::to_string_pretty(value).expect("JSON serializes");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Reads, edits and rewrites a JSON file (`rel` relative to `dir`).
pub fn edit_json(dir: &Path, rel: &str, edit: impl FnOnce(&mut Value)) {
    let path = dir.join(rel);
    let mut value = read_json(&path);
    edit(&mut value);
    write_json(&path, &value);
}

/// Sets a (possibly nested, `a.b.c`) field of a JSON object.
pub fn set_field(value: &mut Value, dotted: &str, new: Value) {
    let mut cur = value;
    let parts: Vec<&str> = dotted.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        cur = cur
            .get_mut(*p)
            .unwrap_or_else(|| panic!("no object field {p} on the way to {dotted}"));
    }
    cur.as_object_mut()
        .unwrap_or_else(|| panic!("the parent of {dotted} is not an object"))
        .insert(parts[parts.len() - 1].to_string(), new);
}

/// Removes a (possibly nested) field of a JSON object.
pub fn remove_field(value: &mut Value, dotted: &str) {
    let mut cur = value;
    let parts: Vec<&str> = dotted.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        cur = cur.get_mut(*p).expect("parent field");
    }
    cur.as_object_mut()
        .expect("an object")
        .remove(parts[parts.len() - 1])
        .unwrap_or_else(|| panic!("no field {dotted}"));
}

/// Edits one field of `<dir>/<rel>`.
pub fn set_config(dir: &Path, rel: &str, dotted: &str, new: Value) {
    edit_json(dir, rel, |v| set_field(v, dotted, new));
}
