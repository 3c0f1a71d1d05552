//! The loader never panics: mutated safetensors bytes and mutated configs give `Ok` or `Err`, nothing
//! else (no panic, no overflow, no runaway allocation).

mod common;

use common::*;
use hbridge::init::WeightDType;
use hbridge_loader::{Checkpoint, TensorFile};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use safetensors::Dtype;
use serde_json::{json, Value};
use std::cell::Cell;
use std::path::Path;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

// ---------------------------------------------------------------------------------------------------
// Safetensors bytes
// ---------------------------------------------------------------------------------------------------

/// A small valid file with several dtypes, a zero-sized tensor and metadata.
fn small_file() -> Vec<u8> {
    let e = |name: &str, dtype: Dtype, shape: &[usize]| {
        let bytes = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        Entry {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            data: (0..bytes).map(|i| (i * 37 % 251) as u8).collect(),
        }
    };
    let entries = [
        e("a.weight", Dtype::F32, &[3, 4]),
        e("b.bias", Dtype::BF16, &[5]),
        e("c", Dtype::F16, &[2, 1, 3]),
        e("ids", Dtype::I64, &[2]),
        e("empty", Dtype::F32, &[0, 7]),
        e("scalar", Dtype::F32, &[]),
    ];
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = entries
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                safetensors::tensor::TensorView::new(e.dtype, e.shape.clone(), &e.data).unwrap(),
            )
        })
        .collect();
    let meta = [("format".to_string(), "pt".to_string())]
        .into_iter()
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

fn header_end(bytes: &[u8]) -> usize {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    8 + n
}

#[derive(Debug, Clone)]
enum ByteEdit {
    Flip { header: bool, at: Index, bit: u8 },
    Set { header: bool, at: Index, byte: u8 },
    Insert { header: bool, at: Index, byte: u8 },
    Delete { header: bool, at: Index },
    Truncate { header: bool, at: Index },
}

fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        prop::sample::select(b"\"{}[],:-0123456789 e.\\\xff\x00".to_vec()),
    ]
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    // `header` biases the position into the 8-byte length and the JSON header, where parsing happens.
    let h = prop::bool::weighted(0.75);
    prop_oneof![
        (h, any::<Index>(), 0u8..8).prop_map(|(header, at, bit)| ByteEdit::Flip {
            header,
            at,
            bit
        }),
        (h, any::<Index>(), interesting_byte()).prop_map(|(header, at, byte)| ByteEdit::Set {
            header,
            at,
            byte
        }),
        (h, any::<Index>(), interesting_byte()).prop_map(|(header, at, byte)| ByteEdit::Insert {
            header,
            at,
            byte
        }),
        (h, any::<Index>()).prop_map(|(header, at)| ByteEdit::Delete { header, at }),
        (h, any::<Index>()).prop_map(|(header, at)| ByteEdit::Truncate { header, at }),
    ]
}

/// Applies `edit` to `bytes`; `focus` is the length of the prefix that header-biased edits land in.
fn apply_byte_edit(bytes: &mut Vec<u8>, edit: &ByteEdit, focus: usize) {
    let range = |header: bool, extra: usize| {
        let n = if header {
            focus.min(bytes.len())
        } else {
            bytes.len()
        };
        n + extra
    };
    match edit {
        ByteEdit::Flip { header, at, bit } => {
            let n = range(*header, 0);
            if n > 0 {
                bytes[at.index(n)] ^= 1 << bit;
            }
        }
        ByteEdit::Set { header, at, byte } => {
            let n = range(*header, 0);
            if n > 0 {
                bytes[at.index(n)] = *byte;
            }
        }
        ByteEdit::Insert { header, at, byte } => {
            let i = at.index(range(*header, 1));
            bytes.insert(i, *byte);
        }
        ByteEdit::Delete { header, at } => {
            let n = range(*header, 0);
            if n > 0 {
                bytes.remove(at.index(n));
            }
        }
        ByteEdit::Truncate { header, at } => {
            let n = at.index(range(*header, 1));
            bytes.truncate(n);
        }
    }
}

/// Opens `bytes` as a file: whatever the outcome, it must not panic, and what loads must be coherent.
fn open_bytes(dir: &TempDir, bytes: &[u8]) -> Result<usize, String> {
    let path = write_bytes(dir, "m.safetensors", bytes);
    match TensorFile::open(&path) {
        Ok(file) => {
            for (name, entry) in &file.entries {
                let bits = entry.dtype.size_bits().expect("a loaded dtype has a size");
                let numel: usize = entry.shape.iter().product();
                assert_eq!(file.bytes(entry).len() * 8, numel * bits, "{name}");
                assert!(entry.end <= file.len_bytes(), "{name}");
            }
            Ok(file.entries.len())
        }
        Err(e) => {
            // Every message names the file.
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            Err(msg)
        }
    }
}

#[test]
fn mutated_safetensors_bytes_never_panic() {
    let base = small_file();
    assert_eq!(open_bytes(&TempDir::new("pt-base"), &base), Ok(6));
    let focus = header_end(&base);
    let tmp = TempDir::new("pt-bytes");
    runner(256)
        .run(&prop::collection::vec(byte_edit(), 1..6), |edits| {
            let mut bytes = base.clone();
            for e in &edits {
                apply_byte_edit(&mut bytes, e, focus);
            }
            let _ = open_bytes(&tmp, &bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn mutated_real_weight_file_never_panics() {
    let ck = tiny_checkpoint(1, WeightDType::BF16);
    let base = std::fs::read(ck.join(VAE_FILE)).unwrap();
    let focus = header_end(&base);
    let tmp = TempDir::new("pt-vae");
    runner(64)
        .run(&prop::collection::vec(byte_edit(), 1..4), |edits| {
            let mut bytes = base.clone();
            for e in &edits {
                apply_byte_edit(&mut bytes, e, focus);
            }
            let _ = open_bytes(&tmp, &bytes);
            Ok(())
        })
        .unwrap();
}

/// Numbers worth trying in headers and configs: edges, overflowing products, huge counts.
fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..64,
        prop::sample::select(vec![
            0,
            1,
            2,
            255,
            256,
            1 << 20,
            1 << 31,
            1 << 32,
            (1 << 32) + 1,
            1 << 40,
            1 << 53,
            1 << 62,
            1 << 63,
            i64::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ]),
        any::<u64>(),
    ]
}

#[derive(Debug, Clone)]
enum HeaderEdit {
    /// Replace the `which`-th number in the header.
    Number {
        which: Index,
        value: u64,
    },
    /// Replace the `which`-th dtype string.
    DType {
        which: Index,
        dtype: String,
    },
    /// Append to or drop from the `which`-th shape or offsets list.
    Grow {
        which: Index,
        value: u64,
    },
    Shrink {
        which: Index,
    },
    /// Declare a header length off by `delta` from the truth.
    LengthDelta(i64),
    /// Pad the header with spaces.
    Pad(u8),
}

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    let dtypes: Vec<String> = [
        "F32",
        "F16",
        "BF16",
        "F64",
        "I64",
        "U8",
        "BOOL",
        "F4",
        "F6_E2M3",
        "F8_E4M3",
        "F8_E4M3FNUZ",
        "C64",
        "Q4",
        "",
        "f32",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    prop_oneof![
        4 => (any::<Index>(), interesting_u64()).prop_map(|(which, value)| HeaderEdit::Number { which, value }),
        2 => (any::<Index>(), prop::sample::select(dtypes)).prop_map(|(which, dtype)| HeaderEdit::DType { which, dtype }),
        1 => (any::<Index>(), interesting_u64()).prop_map(|(which, value)| HeaderEdit::Grow { which, value }),
        1 => any::<Index>().prop_map(|which| HeaderEdit::Shrink { which }),
        1 => (-20i64..20).prop_map(HeaderEdit::LengthDelta),
        1 => (0u8..16).prop_map(HeaderEdit::Pad),
    ]
}

fn count_numbers(v: &Value) -> usize {
    match v {
        Value::Number(_) => 1,
        Value::Array(a) => a.iter().map(count_numbers).sum(),
        Value::Object(o) => o.values().map(count_numbers).sum(),
        _ => 0,
    }
}

/// Replaces the `n`-th number (depth-first) of `v`; returns whether it was found.
fn replace_nth_number(v: &mut Value, n: &mut usize, new: &Value) -> bool {
    match v {
        Value::Number(_) if *n == 0 => {
            *v = new.clone();
            true
        }
        Value::Number(_) => {
            *n -= 1;
            false
        }
        Value::Array(a) => a.iter_mut().any(|x| replace_nth_number(x, n, new)),
        Value::Object(o) => o.values_mut().any(|x| replace_nth_number(x, n, new)),
        _ => false,
    }
}

/// Applies structured edits to the parsed header of `base` and re-serializes the file.
fn edit_header(base: &[u8], edits: &[HeaderEdit]) -> Vec<u8> {
    let end = header_end(base);
    let mut header: Value = serde_json::from_slice(&base[8..end]).unwrap();
    let data = &base[end..];
    let mut delta = 0i64;
    let mut pad = 0usize;
    for edit in edits {
        let tensors: Vec<String> = header
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect();
        match edit {
            HeaderEdit::Number { which, value } => {
                let count = count_numbers(&header);
                if count > 0 {
                    let mut n = which.index(count);
                    replace_nth_number(&mut header, &mut n, &json!(value));
                }
            }
            HeaderEdit::DType { which, dtype } => {
                let t = &tensors[which.index(tensors.len())];
                header[t]["dtype"] = json!(dtype);
            }
            HeaderEdit::Grow { which, value } => {
                let t = &tensors[which.index(tensors.len())];
                let key = if value % 2 == 0 {
                    "shape"
                } else {
                    "data_offsets"
                };
                if let Some(a) = header[t][key].as_array_mut() {
                    a.push(json!(value));
                }
            }
            HeaderEdit::Shrink { which } => {
                let t = &tensors[which.index(tensors.len())];
                let key = if which.index(2) == 0 {
                    "shape"
                } else {
                    "data_offsets"
                };
                if let Some(a) = header[t][key].as_array_mut() {
                    a.pop();
                }
            }
            HeaderEdit::LengthDelta(d) => delta = *d,
            HeaderEdit::Pad(p) => pad = *p as usize,
        }
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    text.extend(std::iter::repeat_n(b' ', pad));
    let len = (text.len() as i64 + delta).max(0) as u64;
    raw_st_with_len(len, &text, data)
}

#[test]
fn mutated_safetensors_headers_never_panic() {
    let base = small_file();
    let tmp = TempDir::new("pt-header");
    let (loaded, failed) = (Cell::new(0), Cell::new(0));
    runner(256)
        .run(&prop::collection::vec(header_edit(), 1..4), |edits| {
            let bytes = edit_header(&base, &edits);
            match open_bytes(&tmp, &bytes) {
                Ok(_) => loaded.set(loaded.get() + 1),
                Err(_) => failed.set(failed.get() + 1),
            }
            Ok(())
        })
        .unwrap();
    // Both outcomes occur: the edits are neither all harmless nor all fatal.
    let (loaded, failed) = (loaded.get(), failed.get());
    assert!(loaded > 0 && failed > 0, "loaded {loaded}, failed {failed}");
}

#[test]
fn every_truncation_and_header_byte_flip_is_handled() {
    let base = small_file();
    let tmp = TempDir::new("pt-sweep");
    for len in 0..base.len() {
        let r = open_bytes(&tmp, &base[..len]);
        assert!(
            r.is_err(),
            "a file cut to {len} of {} bytes loaded",
            base.len()
        );
    }
    for i in 0..header_end(&base) {
        for bit in [0, 3, 7] {
            let mut bytes = base.clone();
            bytes[i] ^= 1 << bit;
            let _ = open_bytes(&tmp, &bytes);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Checkpoint directories with mutated configs
// ---------------------------------------------------------------------------------------------------

const CONFIGS: [&str; 4] = [
    "hbridge.json",
    "und/config.json",
    "gen/config.json",
    "vae/config.json",
];
const UND_INDEX: &str = "und/model.safetensors.index.json";

/// The JSON files of a checkpoint that the proptests edit: the configs, and the und shard index if any.
fn json_files(dir: &Path) -> Vec<&'static str> {
    let mut files = CONFIGS.to_vec();
    if dir.join(UND_INDEX).exists() {
        files.push(UND_INDEX);
    }
    files
}

/// Fields a config may carry that the tiny preset leaves out or that steer the loader.
const EXTRA_FIELDS: [&str; 16] = [
    "head_dim",
    "text_config",
    "rope_parameters",
    "ffn_dim_multiplier",
    "multiple_of",
    "num_refiner_layers",
    "layers_per_block",
    "norm_num_groups",
    "out_channels",
    "text_feat_dim",
    "num_kv_heads",
    "vision_config",
    "topology",
    "bridge",
    "pairs",
    "num_srt_tokens",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        6 => interesting_u64().prop_map(|n| json!(n)),
        2 => prop_oneof![Just(i64::MIN), Just(-1i64), i64::MIN..0].prop_map(|n| json!(n)),
        1 => prop_oneof![Just(0.5f64), Just(1e300), Just(-0.0), any::<f64>()].prop_map(|f| json!(f)),
        1 => "[a-z_0-9]{0,8}".prop_map(|s| json!(s)),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(|b| json!(b)),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(interesting_u64(), 0..4).prop_map(|v| json!(v)),
            prop::collection::vec(prop::collection::vec(0u64..8, 2), 0..4).prop_map(|v| json!(v)),
            prop::collection::hash_map("[a-z_]{1,6}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum ConfigEdit {
    /// Replace the `leaf`-th leaf (number, string, bool, null; list elements included) of a file.
    Replace {
        file: Index,
        leaf: Index,
        value: Value,
    },
    /// Remove the `leaf`-th leaf's field or element.
    Remove { file: Index, leaf: Index },
    /// Set a top-level (or `vision_config.` / `bridge.`) field, present or not.
    Add {
        file: Index,
        field: Index,
        nested: bool,
        value: Value,
    },
    /// Edit the file's text bytes.
    Bytes { file: Index, edit: ByteEdit },
}

fn config_edit() -> impl Strategy<Value = ConfigEdit> {
    prop_oneof![
        5 => (any::<Index>(), any::<Index>(), json_value())
            .prop_map(|(file, leaf, value)| ConfigEdit::Replace { file, leaf, value }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(file, leaf)| ConfigEdit::Remove { file, leaf }),
        2 => (any::<Index>(), any::<Index>(), any::<bool>(), json_value())
            .prop_map(|(file, field, nested, value)| ConfigEdit::Add { file, field, nested, value }),
        2 => (any::<Index>(), byte_edit()).prop_map(|(file, edit)| ConfigEdit::Bytes { file, edit }),
    ]
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Idx(usize),
}

fn leaves(v: &Value, path: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Array(a) => {
            if a.is_empty() {
                out.push(path.clone());
            }
            for (i, x) in a.iter().enumerate() {
                path.push(Seg::Idx(i));
                leaves(x, path, out);
                path.pop();
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                path.push(Seg::Key(k.clone()));
                leaves(x, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

fn at_mut<'a>(v: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    path.iter().fold(v, |cur, seg| match seg {
        Seg::Key(k) => &mut cur[k.as_str()],
        Seg::Idx(i) => &mut cur[*i],
    })
}

/// The config texts after `edits`; a text that is no longer JSON stays bytes.
fn edit_configs(base: &[Vec<u8>], edits: &[ConfigEdit]) -> Vec<Vec<u8>> {
    let mut texts = base.to_vec();
    for edit in edits {
        let file = match edit {
            ConfigEdit::Replace { file, .. }
            | ConfigEdit::Remove { file, .. }
            | ConfigEdit::Add { file, .. }
            | ConfigEdit::Bytes { file, .. } => file.index(texts.len()),
        };
        if let ConfigEdit::Bytes { edit, .. } = edit {
            let n = texts[file].len();
            apply_byte_edit(&mut texts[file], edit, n);
            continue;
        }
        let Ok(mut value) = serde_json::from_slice::<Value>(&texts[file]) else {
            continue;
        };
        let mut paths = Vec::new();
        leaves(&value, &mut Vec::new(), &mut paths);
        match edit {
            ConfigEdit::Replace {
                leaf, value: new, ..
            } if !paths.is_empty() => {
                *at_mut(&mut value, &paths[leaf.index(paths.len())]) = new.clone();
            }
            ConfigEdit::Remove { leaf, .. } if !paths.is_empty() => {
                let path = &paths[leaf.index(paths.len())];
                if let Some((last, parent)) = path.split_last() {
                    match (at_mut(&mut value, parent), last) {
                        (Value::Object(o), Seg::Key(k)) => {
                            o.remove(k);
                        }
                        (Value::Array(a), Seg::Idx(i)) => {
                            a.remove(*i);
                        }
                        _ => {}
                    }
                }
            }
            ConfigEdit::Add {
                field,
                nested,
                value: new,
                ..
            } => {
                let name = EXTRA_FIELDS[field.index(EXTRA_FIELDS.len())];
                let target = match (nested, value.get_mut("vision_config").is_some()) {
                    (true, true) => &mut value["vision_config"],
                    (true, false) if value.get("bridge").is_some() => &mut value["bridge"],
                    _ => &mut value,
                };
                if let Some(o) = target.as_object_mut() {
                    o.insert(name.to_string(), new.clone());
                }
            }
            _ => {}
        }
        texts[file] = serde_json::to_vec_pretty(&value).unwrap();
    }
    texts
}

/// A copy of `base` whose weights are hard links (copies where links fail) and whose JSON files
/// (`json_files(base)`) are `texts`. The JSON files are written fresh, never through a link.
fn checkpoint_with_configs(base: &Path, texts: &[Vec<u8>]) -> TempDir {
    let files = json_files(base);
    let dir = TempDir::new("pt-ckpt");
    for part in ["und", "gen", "vae", "bridge"] {
        std::fs::create_dir_all(dir.join(part)).unwrap();
        for entry in std::fs::read_dir(base.join(part)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            let rel = format!("{part}/{}", name.to_string_lossy());
            if files.contains(&rel.as_str()) {
                continue;
            }
            let to = dir.join(&rel);
            if std::fs::hard_link(entry.path(), &to).is_err() {
                std::fs::copy(entry.path(), &to).unwrap();
            }
        }
    }
    for (rel, text) in files.iter().zip(texts) {
        std::fs::write(dir.join(rel), text).unwrap();
    }
    dir
}

fn read_configs(dir: &Path) -> Vec<Vec<u8>> {
    json_files(dir)
        .iter()
        .map(|rel| std::fs::read(dir.join(rel)).unwrap())
        .collect()
}

fn check_configs_never_panic(base: &Path, cases: u32) -> (usize, usize) {
    let texts = read_configs(base);
    let (loaded, failed) = (Cell::new(0), Cell::new(0));
    runner(cases)
        .run(&prop::collection::vec(config_edit(), 1..4), |edits| {
            let edited = edit_configs(&texts, &edits);
            let dir = checkpoint_with_configs(base, &edited);
            match Checkpoint::open(dir.path()) {
                Ok(_) => loaded.set(loaded.get() + 1),
                Err(e) => {
                    // Every failure renders a message (Display must not panic either).
                    assert!(!e.to_string().is_empty());
                    failed.set(failed.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "{}: {} loaded, {} failed",
        base.display(),
        loaded.get(),
        failed.get()
    );
    (loaded.get(), failed.get())
}

#[test]
fn mutated_hbridge_configs_never_panic() {
    let base = tiny_checkpoint(1, WeightDType::BF16);
    open_ok(base.path());
    let (loaded, failed) = check_configs_never_panic(base.path(), 128);
    assert!(failed > 0, "loaded {loaded}, failed {failed}");
}

#[test]
fn mutated_sharded_configs_and_index_never_panic() {
    let base = tiny_checkpoint(1, WeightDType::F32);
    flatten_und_names(base.path());
    split_und(base.path(), 3);
    open_ok(base.path());
    let (loaded, failed) = check_configs_never_panic(base.path(), 64);
    assert!(failed > 0, "loaded {loaded}, failed {failed}");
}

#[test]
fn mutated_omnigen2_configs_never_panic() {
    let base = write_preset(&omnigen2_preset(), 1, WeightDType::F16);
    open_ok(base.path());
    let (loaded, failed) = check_configs_never_panic(base.path(), 64);
    assert!(failed > 0, "loaded {loaded}, failed {failed}");
}

/// Targeted: every numeric field of every config set to each extreme value in turn.
#[test]
fn every_numeric_config_field_at_extremes() {
    let base = tiny_checkpoint(1, WeightDType::BF16);
    let texts = read_configs(base.path());
    let extremes = [
        json!(0),
        json!(1),
        json!(3),
        json!(1u64 << 32),
        json!(1u64 << 62),
        json!(u64::MAX),
        json!(-1),
        json!(1e300),
        json!("x"),
        Value::Null,
    ];
    let mut cases = 0;
    for (file, text) in texts.iter().enumerate() {
        let value: Value = serde_json::from_slice(text).unwrap();
        let mut paths = Vec::new();
        leaves(&value, &mut Vec::new(), &mut paths);
        for path in paths {
            if !at_mut(&mut value.clone(), &path).is_number() {
                continue;
            }
            for x in &extremes {
                let mut v = value.clone();
                *at_mut(&mut v, &path) = x.clone();
                let mut edited = texts.to_vec();
                edited[file] = serde_json::to_vec(&v).unwrap();
                let dir = checkpoint_with_configs(base.path(), &edited);
                let outcome = std::panic::catch_unwind(|| Checkpoint::open(dir.path()).map(|_| ()));
                assert!(
                    outcome.is_ok(),
                    "{}: {path:?} = {x} panicked",
                    json_files(base.path())[file]
                );
                cases += 1;
            }
        }
    }
    assert!(cases > 300, "{cases}");
}
