//! Images in an und context (DESIGN.md 2 and 6): files -> prepared images, their prompt text
//! (`<|vision_start|>` + one `<|image_pad|>` per merged token + `<|vision_end|>`), and the und prefill
//! whose pads are replaced by the vision tower's output, at HF `get_rope_index` positions.

use super::decode::{load_rgb, ImageError, ImageLimits, RgbImage};
use super::preprocess::{preprocess, PreparedImage, PreprocessError, ProcessorConfig};
use crate::backend::States;
use crate::model::{Model, Outputs, RunError};
use hbridge_engine::cpu::HostTensor;
use hbridge_graph::build::vision::{self, VisionGrid};
use hbridge_graph::build::{names, UndPrefillSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Special token that opens an image's run of pads in the und prompt.
pub const VISION_START: &str = "<|vision_start|>";
/// Special token that closes an image's run of pads in the und prompt.
pub const VISION_END: &str = "<|vision_end|>";
/// Placeholder token, one per merged vision token; its embedding is replaced by the vision tower's output.
pub const IMAGE_PAD: &str = "<|image_pad|>";

/// Why image inputs cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageInputError {
    /// An image file could not be read or decoded.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A decoded image could not be prepared for the vision tower (size or aspect ratio).
    #[error("{path}: {source}")]
    Preprocess {
        /// The image (its file, or a name such as `image 0` for one passed as bytes).
        path: PathBuf,
        /// What the image processor rejected.
        source: PreprocessError,
    },
    /// The checkpoint's image processor settings are invalid (`preprocessor_config.json`, input channels).
    #[error("{0}")]
    Processor(PreprocessError),
    /// The checkpoint has no usable vision tower: no `vision_config`, no `visual.*` weights, or no
    /// `image_token_id`.
    #[error("{model}: this checkpoint cannot take images: {why}")]
    NoVision {
        /// The checkpoint directory.
        model: PathBuf,
        /// What is missing.
        why: String,
    },
}

/// What the vision tower needs to know about a checkpoint's images: its processor settings and the
/// token id of the image pads. Fails when the checkpoint has no usable vision tower.
#[derive(Debug, Clone)]
pub struct ImageSetup {
    /// The Qwen2-VL image processor's settings (HF defaults, the tower's geometry, the checkpoint's
    /// `preprocessor_config.json`).
    pub processor: ProcessorConfig,
    /// Token id of `<|image_pad|>` (`image_token_id` of the und config).
    pub image_token_id: i32,
    /// `spatial_merge_size` of the vision config: patches merged per side into one und token.
    pub merge: usize,
}

impl ImageSetup {
    /// The image setup of `model`'s checkpoint; [`ImageInputError::NoVision`] when it cannot take images,
    /// [`ImageInputError::Processor`] when its processor settings are invalid.
    pub fn new(model: &Model) -> Result<ImageSetup, ImageInputError> {
        let ck = &model.checkpoint;
        let no = |why: &str| ImageInputError::NoVision {
            model: ck.config.root.clone(),
            why: why.to_string(),
        };
        let c = &ck.config.und;
        let vc = c
            .vision
            .as_ref()
            .ok_or_else(|| no("the und config has no vision_config"))?;
        if !ck.has_vision {
            return Err(no(
                "the und weights hold no vision tower (`visual.*` tensors)",
            ));
        }
        if vc.in_channels != 3 {
            return Err(ImageInputError::Processor(PreprocessError::Channels {
                got: vc.in_channels,
            }));
        }
        let image_token_id = c
            .special_tokens
            .image_token_id
            .and_then(|i| i32::try_from(i).ok())
            .ok_or_else(|| no("the und config names no image_token_id"))?;
        let und_dir = ck.config.root.join(&ck.config.layout.und_dir);
        let processor = ProcessorConfig::load(&und_dir, vc).map_err(ImageInputError::Processor)?;
        Ok(ImageSetup {
            processor,
            image_token_id,
            merge: vc.spatial_merge_size,
        })
    }

    /// Decodes and preprocesses image files, in order; errors name the file.
    pub fn load_files(
        &self,
        paths: &[PathBuf],
        limits: &ImageLimits,
    ) -> Result<Vec<PreparedImage>, ImageInputError> {
        paths
            .iter()
            .map(|path| self.prepare(path, &load_rgb(path, limits)?))
            .collect()
    }

    /// Preprocesses a decoded image; `path` names it in errors.
    pub fn prepare(&self, path: &Path, img: &RgbImage) -> Result<PreparedImage, ImageInputError> {
        preprocess(img, &self.processor).map_err(|source| ImageInputError::Preprocess {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The prompt text of the images, in order (DESIGN.md 6).
    pub fn prompt_text(&self, images: &[PreparedImage]) -> String {
        images
            .iter()
            .map(|img| image_prompt(img.grid, self.merge))
            .collect()
    }
}

/// `<|vision_start|>` + one `<|image_pad|>` per merged token of `grid` + `<|vision_end|>`.
pub fn image_prompt(grid: VisionGrid, merge: usize) -> String {
    format!(
        "{VISION_START}{}{VISION_END}",
        IMAGE_PAD.repeat(grid.merged_tokens(merge))
    )
}

/// The und M-RoPE positions `[3, L]` of `ids` holding the images' pads (HF `get_rope_index`).
pub fn context_positions(
    ids: &[i32],
    setup: &ImageSetup,
    images: &[PreparedImage],
) -> Result<Vec<i32>, RunError> {
    let grids: Vec<VisionGrid> = images.iter().map(|i| i.grid).collect();
    let (pos, _) = vision::image_context(ids, setup.image_token_id, &grids, setup.merge)?;
    Ok(pos)
}

/// Und prefill of `ids` (whose image-pad runs belong to `images`, in order) with the images encoded by the
/// vision tower: `spec`'s outputs plus `vision.embeds`. Also returns the positions used (`[3, L]`), whose
/// maximum + 1 is where text after the context continues.
pub fn prefill_with_images(
    model: &Model,
    setup: &ImageSetup,
    ids: &[i32],
    images: &[PreparedImage],
    spec: &UndPrefillSpec,
) -> Result<(Outputs, Vec<i32>), RunError> {
    prefill(model, setup, ids, images, None, spec, None)
}

/// [`prefill_with_images`] of a spec with a `kv_cache`: the K/V go into `cache`'s states from row
/// `cache.1` on.
pub(crate) fn prefill_with_images_into(
    model: &Model,
    setup: &ImageSetup,
    ids: &[i32],
    images: &[PreparedImage],
    spec: &UndPrefillSpec,
    cache: Option<(&mut States, usize)>,
) -> Result<(Outputs, Vec<i32>), RunError> {
    prefill(model, setup, ids, images, None, spec, cache)
}

/// [`prefill_with_images`] with the images already encoded (`embeds` from [`encode_images`] of the same
/// `images`): contexts that share images run the vision tower once.
pub fn prefill_with_image_embeds(
    model: &Model,
    setup: &ImageSetup,
    ids: &[i32],
    images: &[PreparedImage],
    embeds: &HostTensor,
    spec: &UndPrefillSpec,
) -> Result<(Outputs, Vec<i32>), RunError> {
    prefill(model, setup, ids, images, Some(embeds), spec, None)
}

fn prefill(
    model: &Model,
    setup: &ImageSetup,
    ids: &[i32],
    images: &[PreparedImage],
    embeds: Option<&HostTensor>,
    spec: &UndPrefillSpec,
    cache: Option<(&mut States, usize)>,
) -> Result<(Outputs, Vec<i32>), RunError> {
    let ck = &model.checkpoint;
    let c = &ck.config.und;
    if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= c.vocab_size) {
        return Err(RunError::Request(format!(
            "token id {bad} is outside the vocabulary of {} entries",
            c.vocab_size
        )));
    }
    let grids: Vec<VisionGrid> = images.iter().map(|i| i.grid).collect();
    let (positions, spans) = vision::image_context(ids, setup.image_token_id, &grids, setup.merge)?;
    let graph = match embeds {
        None => vision::und_prefill_with_images(c, &ck.und_names, spec, &spans)?,
        Some(_) => vision::und_prefill_with_image_embeds(c, &ck.und_names, spec, &spans)?,
    };
    let mut inputs = HashMap::from([
        (
            names::UND_IDS.to_string(),
            HostTensor::i32(vec![ids.len()], ids.to_vec()),
        ),
        (
            names::UND_POSITIONS.to_string(),
            HostTensor::i32(vec![3, ids.len()], positions.clone()),
        ),
    ]);
    match embeds {
        Some(e) if !images.is_empty() => {
            inputs.insert(vision::VISION_EMBEDS.to_string(), e.clone());
        }
        None if !images.is_empty() => inputs.extend(tower_inputs(model, images)?),
        _ => {}
    }
    Ok((model.run_into(&graph, inputs, cache)?, positions))
}

/// The vision tower alone: `[sum merged tokens, out_hidden_size]` for `images`, concatenated.
pub fn encode_images(model: &Model, images: &[PreparedImage]) -> Result<HostTensor, RunError> {
    let ck = &model.checkpoint;
    let grids: Vec<VisionGrid> = images.iter().map(|i| i.grid).collect();
    let graph = vision::vision_encoder(&ck.config.und, &ck.und_names, &grids)?;
    let inputs: Outputs = tower_inputs(model, images)?.into_iter().collect();
    let mut out = model.run(&graph, &inputs)?;
    out.remove(vision::VISION_EMBEDS)
        .ok_or_else(|| RunError::Request("the vision graph produced no embeddings".into()))
}

/// `vision.pixel_values` (the images' rows concatenated) and `vision.positions`.
fn tower_inputs(
    model: &Model,
    images: &[PreparedImage],
) -> Result<Vec<(String, HostTensor)>, RunError> {
    let vc = model.checkpoint.config.und.vision.as_ref().ok_or_else(|| {
        RunError::Request("image inputs need a vision tower; the und config has none".into())
    })?;
    let grids: Vec<VisionGrid> = images.iter().map(|i| i.grid).collect();
    let n: usize = grids.iter().map(VisionGrid::patches).sum();
    let pixels: Vec<f32> = images
        .iter()
        .flat_map(|i| i.pixel_values.iter().copied())
        .collect();
    if n == 0 || !pixels.len().is_multiple_of(n) {
        return Err(RunError::Request(format!(
            "{} pixel values do not fill {n} patches",
            pixels.len()
        )));
    }
    let feat = pixels.len() / n;
    Ok(vec![
        (
            vision::VISION_PIXELS.to_string(),
            HostTensor::f32(vec![n, feat], pixels),
        ),
        (
            vision::VISION_POSITIONS.to_string(),
            HostTensor::i32(vec![2, n], vision::vision_positions(vc, &grids)),
        ),
    ])
}

/// Reads the image files given on a command line, for `model`.
pub fn load_for_model(
    model: &Model,
    paths: &[PathBuf],
    limits: &ImageLimits,
) -> Result<(ImageSetup, Vec<PreparedImage>), ImageInputError> {
    let setup = ImageSetup::new(model)?;
    let images = setup.load_files(paths, limits)?;
    Ok((setup, images))
}
