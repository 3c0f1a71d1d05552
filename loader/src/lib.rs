//! hbridge's checkpoint loader: a model directory (DESIGN.md section 6) in, typed configs and validated,
//! memory-mapped tensors out. Nothing here computes; everything that can be wrong with the files is found
//! here, before any compute, and reported with the file, the tensor and what was expected.

pub mod config;
mod dtype;
pub mod error;
pub mod manifest;
mod store;
mod tensor_file;
mod validate;

pub use config::{ModelConfig, Topology};
pub use dtype::{to_f32 as dtype_to_f32, DType};
pub use error::{LoadError, Result, SafetensorsProblem, TensorIssue, TensorIssueKind};
pub use manifest::{Expected, Manifest, UndNames};
pub use store::{PartStore, TensorView};
pub use tensor_file::TensorFile;

use std::path::Path;

/// File stems of each part's weights (`<stem>.safetensors` or `<stem>.safetensors.index.json`).
pub const UND_WEIGHTS: &str = "model";
pub const GEN_WEIGHTS: &str = "diffusion_pytorch_model";
pub const VAE_WEIGHTS: &str = "diffusion_pytorch_model";
pub const BRIDGE_WEIGHTS: &str = "bridge";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Und,
    Gen,
    Vae,
    Bridge,
}

/// A loaded, validated model directory.
#[derive(Debug)]
pub struct Checkpoint {
    pub config: ModelConfig,
    pub und: PartStore,
    pub gen: PartStore,
    pub vae: PartStore,
    /// Present for the hbridge topology.
    pub bridge: Option<PartStore>,
    pub und_names: UndNames,
    pub manifest: Manifest,
    /// Whether the optional vision encoder / VAE encoder weights are present (and valid).
    pub has_vision: bool,
    pub has_vae_encoder: bool,
    /// Notices that do not stop loading (unused tensors).
    pub warnings: Vec<String>,
}

impl Checkpoint {
    /// Reads the configs, maps every weight file and validates every tensor the topology needs.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let root = dir.as_ref();
        let config = ModelConfig::read(root)?;
        let layout = &config.layout;
        let und = PartStore::open(root, &layout.und_dir, UND_WEIGHTS)?;
        let gen = PartStore::open(root, &layout.gen_dir, GEN_WEIGHTS)?;
        let vae = PartStore::open(root, &layout.vae_dir, VAE_WEIGHTS)?;
        let bridge = layout
            .bridge
            .as_ref()
            .map(|b| PartStore::open(root, &b.dir, BRIDGE_WEIGHTS))
            .transpose()?;

        let und_names = UndNames::detect(&und);
        let manifest = Manifest::new(&config, &und_names);
        let und_cfg = format!("{}/config.json", layout.und_dir);
        let gen_cfg = format!("{}/config.json", layout.gen_dir);
        let vae_cfg = format!("{}/config.json", layout.vae_dir);
        let files = |own: &'static str| -> validate::ConfigFiles<'_> {
            let own = match own {
                "und" => und_cfg.as_str(),
                "gen" => gen_cfg.as_str(),
                "vae" => vae_cfg.as_str(),
                _ => config::LAYOUT_FILE,
            };
            validate::ConfigFiles {
                own,
                und: &und_cfg,
                gen: &gen_cfg,
                layout: config::LAYOUT_FILE,
            }
        };
        let mut issues = Vec::new();
        let mut extra = Vec::new();
        extra.extend(validate::check_part(
            &manifest.und,
            &und,
            &files("und"),
            &mut issues,
        ));
        extra.extend(validate::check_part(
            &manifest.gen,
            &gen,
            &files("gen"),
            &mut issues,
        ));
        extra.extend(validate::check_part(
            &manifest.vae,
            &vae,
            &files("vae"),
            &mut issues,
        ));
        if let Some(b) = &bridge {
            extra.extend(validate::check_part(
                &manifest.bridge,
                b,
                &files("bridge"),
                &mut issues,
            ));
        }
        if !issues.is_empty() {
            return Err(LoadError::Tensors(issues));
        }
        let mut warnings = Vec::new();
        if !extra.is_empty() {
            let shown: Vec<&str> = extra.iter().take(5).map(String::as_str).collect();
            warnings.push(format!(
                "{} tensor{} not used by the {} topology and ignored: {}{}",
                extra.len(),
                if extra.len() == 1 { " is" } else { "s are" },
                layout.topology,
                shown.join(", "),
                if extra.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ));
        }
        let has_vision = config.und.vision.is_some()
            && und.contains(&und_names.visual("patch_embed.proj.weight"));
        let has_vae_encoder = vae.contains("encoder.conv_in.weight");
        Ok(Checkpoint {
            config,
            und,
            gen,
            vae,
            bridge,
            und_names,
            manifest,
            has_vision,
            has_vae_encoder,
            warnings,
        })
    }

    pub fn part(&self, part: Part) -> Option<&PartStore> {
        match part {
            Part::Und => Some(&self.und),
            Part::Gen => Some(&self.gen),
            Part::Vae => Some(&self.vae),
            Part::Bridge => self.bridge.as_ref(),
        }
    }

    /// A tensor by its full stored name.
    pub fn tensor(&self, part: Part, name: &str) -> Option<TensorView<'_>> {
        self.part(part)?.get(name)
    }

    /// An und text-model tensor by its name under the prefix (`layers.0.mlp.up_proj.weight`), whatever
    /// prefix the checkpoint uses. `lm_head.weight` falls back to the embedding when tied.
    pub fn und_text(&self, name: &str) -> Option<TensorView<'_>> {
        if name == "lm_head.weight" {
            return self
                .und
                .get(name)
                .or_else(|| self.und.get(&self.und_names.text("embed_tokens.weight")));
        }
        self.und.get(&self.und_names.text(name))
    }
}
