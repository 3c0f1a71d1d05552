//! Writes a complete checkpoint for a named preset with deterministic random weights: the configs, one
//! safetensors file per part, and the tiny tokenizer. Every tensor the loader's manifest expects (the
//! optional vision tower and VAE encoder included) is written, so the result loads and validates.

use crate::presets::{PresetConfigs, TINY_TOKENIZER_JSON};
use hbridge_loader::config::{ModelConfig, CONFIG_FILE, LAYOUT_FILE};
use hbridge_loader::manifest::{Expected, Manifest, UndNames};
use hbridge_loader::{BRIDGE_WEIGHTS, GEN_WEIGHTS, UND_WEIGHTS, VAE_WEIGHTS};
use safetensors::Dtype;
use std::path::{Path, PathBuf};

/// Storage dtype of written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDType {
    /// bfloat16, 2 bytes per value (what real checkpoints ship; the CUDA backend's compute type).
    BF16,
    /// IEEE half precision, 2 bytes per value.
    F16,
    /// IEEE single precision, 4 bytes per value (exact weights for f32 reference comparisons).
    F32,
}

impl WeightDType {
    /// Parses `bf16`, `f16` or `f32` (any case), as the CLI's `--dtype` takes them; `None` otherwise.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "bf16" => Some(WeightDType::BF16),
            "f16" => Some(WeightDType::F16),
            "f32" => Some(WeightDType::F32),
            _ => None,
        }
    }

    fn bytes(self) -> usize {
        match self {
            WeightDType::F32 => 4,
            WeightDType::BF16 | WeightDType::F16 => 2,
        }
    }

    fn safetensors_name(self) -> &'static str {
        match self {
            WeightDType::F32 => "F32",
            WeightDType::BF16 => "BF16",
            WeightDType::F16 => "F16",
        }
    }

    fn encode(self, values: &[f32]) -> (Dtype, Vec<u8>) {
        match self {
            WeightDType::F32 => (
                Dtype::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            WeightDType::BF16 => (
                Dtype::BF16,
                values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
                    .collect(),
            ),
            WeightDType::F16 => (
                Dtype::F16,
                values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
                    .collect(),
            ),
        }
    }
}

/// Why a checkpoint could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Creating a folder or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The folder or file being written.
        path: PathBuf,
        /// The I/O error from the operating system.
        #[source]
        source: std::io::Error,
    },
    /// The target folder already has `hbridge.json` and `force` was not given.
    #[error(
        "{path}: already holds a checkpoint ({LAYOUT_FILE} exists); pass --force to overwrite"
    )]
    Exists {
        /// The target folder.
        path: PathBuf,
    },
    /// The configs just written do not load back (a bug in the preset, not in the caller's input).
    #[error("the preset's own configs do not load: {0}")]
    Preset(#[from] hbridge_loader::LoadError),
}

/// SplitMix64: a tiny, well-mixed generator, so that weights depend only on the seed and the tensor name.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, name: &str) -> Self {
        // FNV-1a over the name keeps each tensor's stream independent of the order of writing.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        Rng(seed ^ h)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn symmetric(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Values for one tensor: norms near 1, biases and embeddings small, matrices scaled by fan-in so that
/// activations stay O(1) through the layers.
fn init_values(e: &Expected, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed, &e.name);
    let shape = e.shape();
    let n: usize = shape.iter().product();
    let is_norm = e.name.contains("norm") && e.name.ends_with(".weight") && shape.len() == 1;
    let is_bias = e.name.ends_with(".bias");
    let scale = if is_norm {
        0.1
    } else if is_bias {
        0.02
    } else if e.name.contains("embed_tokens")
        || e.name == "srt.tokens"
        || e.name == "image_index_embedding"
    {
        0.5
    } else {
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        (3.0 / fan_in as f32).sqrt()
    };
    (0..n)
        .map(|_| if is_norm { 1.0 } else { 0.0 } + scale * rng.symmetric())
        .collect()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), InitError> {
    std::fs::write(path, bytes).map_err(|source| InitError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), InitError> {
    let text = serde_json::to_string_pretty(value).expect("a JSON value serializes");
    write_file(path, format!("{text}\n").as_bytes())
}

/// Streams one safetensors file: the header (computable from the shapes alone), then each tensor as it
/// is generated, so a 15 GB part never sits in memory twice (hbridge-7b4b is written on the GPU machine).
fn write_tensors(
    path: &Path,
    expected: &[Expected],
    seed: u64,
    dtype: WeightDType,
) -> Result<(), InitError> {
    use std::io::Write;
    let io = |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    };
    let elem = dtype.bytes();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for e in expected {
        let len = e.shape().iter().product::<usize>() * elem;
        header.insert(
            e.name.clone(),
            serde_json::json!({
                "dtype": dtype.safetensors_name(),
                "shape": e.shape(),
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut text = serde_json::to_string(&header).expect("a JSON map serializes");
    // The data section starts 8-byte aligned, as the format asks.
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 22, file);
    out.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(text.as_bytes()).map_err(io)?;
    let total = offset;
    let mut written = 0usize;
    let mut reported = 0usize;
    for e in expected {
        let (_, bytes) = dtype.encode(&init_values(e, seed));
        out.write_all(&bytes).map_err(io)?;
        written += bytes.len();
        // Big parts take a while: a line per GB so the user sees progress.
        if total > 1 << 30 && written - reported >= 1 << 30 {
            reported = written;
            eprintln!(
                "  {}: {:.1} / {:.1} GB",
                path.display(),
                written as f64 / 1e9,
                total as f64 / 1e9
            );
        }
    }
    out.flush().map_err(io)?;
    Ok(())
}

/// Writes the preset's config files and tokenizer under `dir` (created if absent) and returns the manifest
/// of the weights they call for.
pub fn write_configs(dir: &Path, preset: &PresetConfigs) -> Result<Manifest, InitError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitError::Io { path, source }
    };
    for sub in ["und", "gen", "vae", "bridge"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(io(&dir.join(sub)))?;
    }
    write_json(&dir.join(LAYOUT_FILE), &preset.layout)?;
    write_json(&dir.join("und").join(CONFIG_FILE), &preset.und)?;
    write_json(&dir.join("gen").join(CONFIG_FILE), &preset.gen)?;
    write_json(&dir.join("vae").join(CONFIG_FILE), &preset.vae)?;
    write_file(
        &dir.join("und").join("tokenizer.json"),
        TINY_TOKENIZER_JSON.as_bytes(),
    )?;
    // The manifest is derived from the configs just written, so the weights match them by construction.
    let config = ModelConfig::read(dir)?;
    Ok(Manifest::new(&config, &UndNames::NESTED))
}

/// Writes the preset under `dir` (created if absent).
pub fn write_checkpoint(
    dir: &Path,
    preset: &PresetConfigs,
    seed: u64,
    dtype: WeightDType,
    force: bool,
) -> Result<(), InitError> {
    if dir.join(LAYOUT_FILE).exists() && !force {
        return Err(InitError::Exists {
            path: dir.to_path_buf(),
        });
    }
    let manifest = write_configs(dir, preset)?;
    write_tensors(
        &dir.join("und").join(format!("{UND_WEIGHTS}.safetensors")),
        &manifest.und,
        seed,
        dtype,
    )?;
    write_tensors(
        &dir.join("gen").join(format!("{GEN_WEIGHTS}.safetensors")),
        &manifest.gen,
        seed,
        dtype,
    )?;
    write_tensors(
        &dir.join("vae").join(format!("{VAE_WEIGHTS}.safetensors")),
        &manifest.vae,
        seed,
        dtype,
    )?;
    if !manifest.bridge.is_empty() {
        write_tensors(
            &dir.join("bridge")
                .join(format!("{BRIDGE_WEIGHTS}.safetensors")),
            &manifest.bridge,
            seed,
            dtype,
        )?;
    }
    Ok(())
}
