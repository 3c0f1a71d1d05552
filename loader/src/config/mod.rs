//! The four config files of a model directory, parsed and checked against each other.

mod gen;
pub mod json;
mod layout;
mod und;
mod vae;

pub use gen::{GenConfig, MAX_REF_IMAGES, TIMESTEP_FREQ_DIM};
pub use layout::{default_pairs, BridgeLayout, Layout, Topology};
pub use und::{SpecialTokens, UndConfig, VisionConfig};
pub use vae::VaeConfig;

use crate::error::{LoadError, Result};
use std::path::{Path, PathBuf};

pub const LAYOUT_FILE: &str = "hbridge.json";
pub const CONFIG_FILE: &str = "config.json";

/// Every config of a model directory, consistent with each other.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub root: PathBuf,
    pub layout: Layout,
    pub und: UndConfig,
    pub gen: GenConfig,
    pub vae: VaeConfig,
}

impl ModelConfig {
    /// Reads `hbridge.json` and the three `config.json` files under `root`.
    pub fn read(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(LoadError::MissingFile {
                path: root.to_path_buf(),
                what: "a model directory holding hbridge.json".into(),
            });
        }
        let layout_path = root.join(LAYOUT_FILE);
        let layout = Layout::parse(&layout_path, &json::read_json(&layout_path)?)?;
        let und_path = root.join(&layout.und_dir).join(CONFIG_FILE);
        let gen_path = root.join(&layout.gen_dir).join(CONFIG_FILE);
        let vae_path = root.join(&layout.vae_dir).join(CONFIG_FILE);
        let config = ModelConfig {
            root: root.to_path_buf(),
            und: UndConfig::parse(&und_path, &json::read_json(&und_path)?)?,
            gen: GenConfig::parse(&gen_path, &json::read_json(&gen_path)?)?,
            vae: VaeConfig::parse(&vae_path, &json::read_json(&vae_path)?)?,
            layout,
        };
        config.check_consistent()?;
        Ok(config)
    }

    /// Path of a file relative to the model directory, for messages.
    pub fn part_path(&self, dir: &str, file: &str) -> PathBuf {
        self.root.join(dir).join(file)
    }

    /// Width of the SRT output: the vision tower's `out_hidden_size`, or the und hidden size without one.
    pub fn srt_out_dim(&self) -> usize {
        self.und
            .vision
            .as_ref()
            .map_or(self.und.hidden_size, |v| v.out_hidden_size)
    }

    /// Cross-file checks: what each file is fine with alone but not together.
    fn check_consistent(&self) -> Result<()> {
        let layout_path = self.root.join(LAYOUT_FILE);
        let gen_path = self.part_path(&self.layout.gen_dir, CONFIG_FILE);
        let inconsistent = |path: &Path, problem: String| LoadError::ConfigInconsistent {
            path: path.to_path_buf(),
            problem,
        };
        if self.gen.in_channels != self.vae.latent_channels {
            return Err(inconsistent(
                &gen_path,
                format!(
                    "in_channels {} differs from the VAE's latent_channels {} in {}/config.json",
                    self.gen.in_channels, self.vae.latent_channels, self.layout.vae_dir
                ),
            ));
        }
        if self.gen.out_channels != self.vae.latent_channels {
            return Err(inconsistent(
                &gen_path,
                format!(
                    "out_channels {} differs from the VAE's latent_channels {} in {}/config.json",
                    self.gen.out_channels, self.vae.latent_channels, self.layout.vae_dir
                ),
            ));
        }
        if self.layout.topology == Topology::Omnigen2
            && self.gen.text_feat_dim != self.und.hidden_size
        {
            return Err(inconsistent(
                &gen_path,
                format!(
                    "text_feat_dim {} differs from the und hidden_size {}: the omnigen2 topology feeds und hidden states to caption_embedder",
                    self.gen.text_feat_dim, self.und.hidden_size
                ),
            ));
        }
        if let Some(bridge) = &self.layout.bridge {
            if bridge.pairs.is_empty() {
                return Err(inconsistent(
                    &layout_path,
                    "bridge.pairs is empty: the hbridge topology needs at least one bridged layer"
                        .into(),
                ));
            }
            let mut seen = vec![false; self.gen.num_layers];
            for &(g, u) in &bridge.pairs {
                if g >= self.gen.num_layers {
                    return Err(inconsistent(
                        &layout_path,
                        format!(
                            "bridge pair [{g}, {u}] names gen layer {g}, but the gen expert has num_layers = {} (layers 0..{})",
                            self.gen.num_layers,
                            self.gen.num_layers - 1
                        ),
                    ));
                }
                if u >= self.und.num_layers {
                    return Err(inconsistent(
                        &layout_path,
                        format!(
                            "bridge pair [{g}, {u}] names und layer {u}, but the und expert has num_hidden_layers = {} (layers 0..{})",
                            self.und.num_layers,
                            self.und.num_layers - 1
                        ),
                    ));
                }
                if std::mem::replace(&mut seen[g], true) {
                    return Err(inconsistent(
                        &layout_path,
                        format!("gen layer {g} appears in more than one bridge pair (a gen layer bridges to at most one und layer)"),
                    ));
                }
            }
        }
        Ok(())
    }
}
