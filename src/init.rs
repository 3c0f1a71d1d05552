//! Writes a complete checkpoint for a named preset with deterministic random weights: the configs, one
//! safetensors file per part, and the tiny tokenizer. Every tensor the loader's manifest expects (the
//! optional vision tower and VAE encoder included) is written, so the result loads and validates.

use crate::presets::{PresetConfigs, TINY_TOKENIZER_JSON};
use hbridge_loader::config::{ModelConfig, CONFIG_FILE, LAYOUT_FILE};
use hbridge_loader::manifest::{Expected, Manifest, UndNames};
use hbridge_loader::{BRIDGE_WEIGHTS, GEN_WEIGHTS, UND_WEIGHTS, VAE_WEIGHTS};
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

    /// Encodes each value `next()` yields into `out`, little-endian, until `out` is full.
    fn encode(self, out: &mut [u8], mut next: impl FnMut() -> f32) {
        // One loop per dtype: the match stays out of the per-value path.
        match self {
            WeightDType::F32 => out
                .chunks_exact_mut(4)
                .for_each(|b| b.copy_from_slice(&next().to_le_bytes())),
            WeightDType::BF16 => out.chunks_exact_mut(2).for_each(|b| {
                b.copy_from_slice(&half::bf16::from_f32(next()).to_bits().to_le_bytes())
            }),
            WeightDType::F16 => out.chunks_exact_mut(2).for_each(|b| {
                b.copy_from_slice(&half::f16::from_f32(next()).to_bits().to_le_bytes())
            }),
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
    /// The target's filesystem has less free space than the checkpoint needs.
    #[error(
        "{path}: writing this checkpoint needs {:.2} GB, but its filesystem has {:.2} GB free",
        *need as f64 / 1e9,
        *free as f64 / 1e9
    )]
    Space {
        /// The target folder.
        path: PathBuf,
        /// Bytes of weights to write.
        need: u64,
        /// Bytes free there (with those of the weight files being replaced).
        free: u64,
    },
    /// The configs just written do not load back (a bug in the preset, not in the caller's input).
    #[error("the preset's own configs do not load: {0}")]
    Preset(#[from] hbridge_loader::LoadError),
}

/// SplitMix64: a tiny, well-mixed generator, so that weights depend only on the seed and the tensor name.
/// Its state after `i` draws is `start + i * GAMMA`, so any stretch of a tensor's stream can be made
/// on its own: the big parts are generated on every core.
#[derive(Clone, Copy)]
struct Rng(u64);

const GAMMA: u64 = 0x9e3779b97f4a7c15;

impl Rng {
    fn new(seed: u64, name: &str) -> Self {
        // FNV-1a over the name keeps each tensor's stream independent of the order of writing.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        Rng(seed ^ h)
    }
    /// The generator after `n` draws.
    fn skip(self, n: u64) -> Self {
        Rng(self.0.wrapping_add(n.wrapping_mul(GAMMA)))
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
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

/// How one tensor's values are drawn: `center + scale * uniform[-1, 1)` from its own stream. Norms near
/// 1, biases and embeddings small, matrices scaled by fan-in so that activations stay O(1) through the
/// layers.
struct Init {
    rng: Rng,
    center: f32,
    scale: f32,
}

impl Init {
    fn new(e: &Expected, seed: u64) -> Self {
        let shape = e.shape();
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
        Init {
            rng: Rng::new(seed, &e.name),
            center: if is_norm { 1.0 } else { 0.0 },
            scale,
        }
    }

    /// Encodes values `first..` of the stream into `out` (whole values of `dtype`), in parallel stretches.
    fn fill(&self, first: usize, dtype: WeightDType, out: &mut [u8]) {
        use rayon::prelude::*;
        const STRETCH: usize = 1 << 16;
        let elem = dtype.bytes();
        out.par_chunks_mut(STRETCH * elem)
            .enumerate()
            .for_each(|(i, bytes)| {
                let mut rng = self.rng.skip((first + i * STRETCH) as u64);
                dtype.encode(bytes, || self.center + self.scale * rng.symmetric());
            });
    }
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
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 22, file);
    out.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(text.as_bytes()).map_err(io)?;
    let total = offset;
    // Pieces of at most 64 MB are generated on every core while the previous one is written, so memory
    // stays bounded and the disk, not one core's RNG, sets the pace.
    const PIECE: usize = 64 << 20;
    let (send, receive) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> std::io::Result<()> {
            let (mut written, mut reported) = (0usize, 0usize);
            for piece in receive {
                out.write_all(&piece)?;
                written += piece.len();
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
            out.flush()
        });
        'tensors: for e in expected {
            let init = Init::new(e, seed);
            let n: usize = e.shape().iter().product();
            let per_piece = (PIECE / elem).max(1);
            for first in (0..n).step_by(per_piece) {
                let mut piece = vec![0u8; (n - first).min(per_piece) * elem];
                init.fill(first, dtype, &mut piece);
                // A closed channel means the writer failed; its error is returned below.
                if send.send(piece).is_err() {
                    break 'tensors;
                }
            }
        }
        drop(send);
        writer.join().expect("the writer thread does not panic")
    })
    .map_err(io)
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
    // A config that fails to write (or to load back) leaves no layout file either.
    let manifest = write_configs(dir, preset).inspect_err(|_| {
        let _ = std::fs::remove_file(dir.join(LAYOUT_FILE));
    })?;
    // Until every weight is written the layout file is kept aside, so that an init that fails or is
    // interrupted leaves no folder that looks like a checkpoint (`bench PRESET` writes the preset
    // again where it finds no layout file).
    let layout = dir.join(LAYOUT_FILE);
    let aside = dir.join(format!("{LAYOUT_FILE}.incomplete"));
    std::fs::rename(&layout, &aside).map_err(|source| InitError::Io {
        path: layout.clone(),
        source,
    })?;
    write_weights(dir, &manifest, seed, dtype)?;
    std::fs::rename(&aside, &layout).map_err(|source| InitError::Io {
        path: layout,
        source,
    })
}

/// The weight files `manifest` calls for, after checking that their filesystem has room for them.
fn write_weights(
    dir: &Path,
    manifest: &Manifest,
    seed: u64,
    dtype: WeightDType,
) -> Result<(), InitError> {
    let files = [
        (
            dir.join("und").join(format!("{UND_WEIGHTS}.safetensors")),
            &manifest.und,
        ),
        (
            dir.join("gen").join(format!("{GEN_WEIGHTS}.safetensors")),
            &manifest.gen,
        ),
        (
            dir.join("vae").join(format!("{VAE_WEIGHTS}.safetensors")),
            &manifest.vae,
        ),
        (
            dir.join("bridge")
                .join(format!("{BRIDGE_WEIGHTS}.safetensors")),
            &manifest.bridge,
        ),
    ];
    let need: u64 = files
        .iter()
        .flat_map(|(_, expected)| expected.iter())
        .map(|e| (e.shape().iter().product::<usize>() * dtype.bytes()) as u64)
        .sum();
    // Files overwritten (`--force`) give their space back as they are truncated.
    let replaced: u64 = files
        .iter()
        .filter_map(|(path, _)| std::fs::metadata(path).ok())
        .map(|m| m.len())
        .sum();
    if let Some(free) = free_bytes(dir) {
        if need > free + replaced {
            return Err(InitError::Space {
                path: dir.to_path_buf(),
                need,
                free: free + replaced,
            });
        }
    }
    for (path, expected) in &files {
        if !expected.is_empty() {
            write_tensors(path, expected, seed, dtype)?;
        }
    }
    Ok(())
}

/// Bytes an unprivileged user may still write on the filesystem holding `dir` (statvfs), or `None`
/// where that cannot be asked.
#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; an all-zero value is valid and the call fills it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is writable for the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Some(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An init whose weights fail to write leaves no layout file (so nothing takes the folder for a
    /// checkpoint), and a later init into the same folder completes it without `--force`.
    #[test]
    fn a_failed_init_leaves_no_checkpoint_behind() {
        let dir = std::env::temp_dir().join(format!("hbridge-init-fail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let preset = crate::presets::preset("tiny").expect("the tiny preset");
        // A folder where the gen weights' file goes: creating the file fails.
        let blocker = dir.join("gen").join(format!("{GEN_WEIGHTS}.safetensors"));
        std::fs::create_dir_all(&blocker).unwrap();
        let err = write_checkpoint(&dir, &preset, 0, WeightDType::BF16, false).unwrap_err();
        assert!(
            matches!(&err, InitError::Io { path, .. } if *path == blocker),
            "{err}"
        );
        assert!(!dir.join(LAYOUT_FILE).exists());
        assert!(dir.join(format!("{LAYOUT_FILE}.incomplete")).exists());
        std::fs::remove_dir(&blocker).unwrap();
        write_checkpoint(&dir, &preset, 0, WeightDType::BF16, false).unwrap();
        assert!(dir.join(LAYOUT_FILE).exists());
        assert!(!dir.join(format!("{LAYOUT_FILE}.incomplete")).exists());
        hbridge_loader::Checkpoint::open(&dir).unwrap();
        std::fs::remove_dir_all(&dir).ok();
    }

    #[cfg(unix)]
    #[test]
    fn free_space_is_known_on_unix() {
        let free = free_bytes(&std::env::temp_dir()).expect("statvfs of the temp folder");
        assert!(free > 0);
        assert!(free_bytes(Path::new("/no/such/folder/anywhere")).is_none());
    }

    /// Pieces made from any offset equal the one sequential stream, in every dtype: the checkpoint's
    /// bytes do not depend on how the work was split.
    #[test]
    fn pieces_from_any_offset_equal_the_sequential_stream() {
        let init = Init {
            rng: Rng::new(7, "w"),
            center: 0.0,
            scale: 0.5,
        };
        let n = 200_003;
        for dtype in [WeightDType::F32, WeightDType::BF16, WeightDType::F16] {
            let elem = dtype.bytes();
            let mut rng = init.rng;
            let mut sequential = vec![0u8; n * elem];
            dtype.encode(&mut sequential, || init.scale * rng.symmetric());
            let mut pieces = vec![0u8; n * elem];
            let cut = 70_001;
            init.fill(0, dtype, &mut pieces[..cut * elem]);
            init.fill(cut, dtype, &mut pieces[cut * elem..]);
            assert!(sequential == pieces, "{dtype:?}");
            assert!(sequential.iter().any(|b| *b != 0));
        }
    }
}
