//! The HF Qwen2-VL image processor (`Qwen2VLImageProcessorPil`, what Qwen2.5-VL uses): `smart_resize` to
//! sides that are multiples of `patch * merge` within the pixel budget, PIL bicubic resampling, rescale by
//! 1/255 (f64, then f32), CLIP mean / std normalization (f32), a still image repeated over the temporal
//! patch, and the flattening of patches merge-block-major with features `(c, t, py, px)`.

use super::decode::RgbImage;
use super::resize::resize_bicubic;
use hbridge_graph::build::vision::VisionGrid;
use hbridge_loader::config::VisionConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// OpenAI CLIP's per-channel (R, G, B) mean, HF's default `image_mean` for this processor; subtracted
/// after the rescale to [0, 1].
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's per-channel (R, G, B) standard deviation, HF's default `image_std`; divides after the
/// mean is subtracted.
#[allow(clippy::excessive_precision)] // HF's constants, verbatim
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_1];

/// The processor's parameters: HF's defaults, the vision config's patch geometry, and whatever
/// `preprocessor_config.json` overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    /// Fewest pixels (height x width) after `smart_resize`; smaller images are scaled up. Default 56 x 56.
    pub min_pixels: u64,
    /// Most pixels after `smart_resize`; larger images are scaled down. Default 28 x 28 x 1280 (1280
    /// merged tokens per image for Qwen2.5-VL).
    pub max_pixels: u64,
    /// Side of a vision patch in pixels (`vision_config.patch_size`, 14).
    pub patch_size: usize,
    /// Frames per temporal patch (`temporal_patch_size`, 2); a still image is repeated to fill it.
    pub temporal_patch_size: usize,
    /// Patches merged per side by the PatchMerger (`spatial_merge_size`, 2): one und token per 2 x 2
    /// patches.
    pub merge_size: usize,
    /// Per-channel mean subtracted after the rescale to [0, 1] (default [`CLIP_MEAN`]).
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation divided by after the mean (default [`CLIP_STD`]); no zeros.
    pub image_std: [f32; 3],
}

/// Why an image cannot be prepared for the vision tower, or the processor cannot be configured.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// `preprocessor_config.json` is unreadable or holds an invalid or inconsistent value.
    #[error("{path}: {message}")]
    Config {
        /// The `preprocessor_config.json` file.
        path: PathBuf,
        /// Which field is wrong and why.
        message: String,
    },
    /// The longer side is more than 200 times the shorter one, which HF's `smart_resize` rejects.
    #[error("{width}x{height}: the aspect ratio is over 200, which the image processor rejects")]
    AspectRatio {
        /// Input width in pixels.
        width: usize,
        /// Input height in pixels.
        height: usize,
    },
    /// No size with both sides multiples of `factor` fits the pixel budget (a zero side, or an image so
    /// elongated that a side rounds to 0).
    #[error("{width}x{height} cannot be resized to sides that are multiples of {factor} within {min_pixels}..={max_pixels} pixels")]
    NoSize {
        /// Input width in pixels.
        width: usize,
        /// Input height in pixels.
        height: usize,
        /// The side multiple, `patch_size * merge_size`.
        factor: usize,
        /// The processor's `min_pixels`.
        min_pixels: u64,
        /// The processor's `max_pixels`.
        max_pixels: u64,
    },
    /// The vision config's `in_chans` is not 3, so RGB images cannot feed the tower.
    #[error("the vision tower has {got} input channels; images are RGB (3)")]
    Channels {
        /// `vision_config.in_chans` of the checkpoint.
        got: usize,
    },
}

impl ProcessorConfig {
    /// HF's defaults (min_pixels 56*56, max_pixels 28*28*1280, CLIP mean / std) with the tower's patch
    /// size, temporal patch and merge size.
    pub fn for_vision(vc: &VisionConfig) -> ProcessorConfig {
        ProcessorConfig {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: vc.patch_size,
            temporal_patch_size: vc.temporal_patch_size,
            merge_size: vc.spatial_merge_size,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }

    /// [`ProcessorConfig::for_vision`] overridden by `<und_dir>/preprocessor_config.json` when present:
    /// `min_pixels` / `max_pixels` (or `size.shortest_edge` / `size.longest_edge`), `image_mean`,
    /// `image_std`. Patch geometry that disagrees with the vision config is an error.
    pub fn load(und_dir: &Path, vc: &VisionConfig) -> Result<ProcessorConfig, PreprocessError> {
        let mut cfg = ProcessorConfig::for_vision(vc);
        let path = und_dir.join("preprocessor_config.json");
        if !path.is_file() {
            return Ok(cfg);
        }
        let err = |message: String| PreprocessError::Config {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let num =
            |v: Option<&Value>, field: &str| -> Result<Option<u64>, PreprocessError> {
                match v {
                    None | Some(Value::Null) => Ok(None),
                    Some(x) => x.as_u64().filter(|&n| n > 0).map(Some).ok_or_else(|| {
                        err(format!("`{field}` must be a positive integer, got {x}"))
                    }),
                }
            };
        let size = v.get("size");
        if let Some(n) = num(v.get("min_pixels"), "min_pixels")?.or(num(
            size.and_then(|s| s.get("shortest_edge")),
            "size.shortest_edge",
        )?) {
            cfg.min_pixels = n;
        }
        if let Some(n) = num(v.get("max_pixels"), "max_pixels")?.or(num(
            size.and_then(|s| s.get("longest_edge")),
            "size.longest_edge",
        )?) {
            cfg.max_pixels = n;
        }
        for (field, want) in [
            ("patch_size", vc.patch_size),
            ("temporal_patch_size", vc.temporal_patch_size),
            ("merge_size", vc.spatial_merge_size),
        ] {
            if let Some(n) = num(v.get(field), field)? {
                if n as usize != want {
                    return Err(err(format!(
                        "`{field}` {n} disagrees with the vision config's {want}"
                    )));
                }
            }
        }
        for (field, slot) in [
            ("image_mean", &mut cfg.image_mean),
            ("image_std", &mut cfg.image_std),
        ] {
            if let Some(x) = v.get(field) {
                let vals: Option<Vec<f32>> = x.as_array().map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_f64().map(|f| f as f32))
                        .collect()
                });
                match vals {
                    Some(vals) if vals.len() == 3 && vals.iter().all(|f| f.is_finite()) => {
                        slot.copy_from_slice(&vals)
                    }
                    _ => return Err(err(format!("`{field}` must be 3 numbers, got {x}"))),
                }
            }
        }
        if cfg.image_std.contains(&0.0) {
            return Err(err("`image_std` has a zero".into()));
        }
        if cfg.min_pixels > cfg.max_pixels {
            return Err(err(format!(
                "min_pixels {} exceeds max_pixels {}",
                cfg.min_pixels, cfg.max_pixels
            )));
        }
        Ok(cfg)
    }

    /// The side multiple: `patch_size * merge_size` (28 for Qwen2.5-VL).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }
}

/// HF's `smart_resize`: `(height, width)` rounded to multiples of `factor` (Python's round-half-even),
/// scaled down (floor) when over `max_pixels` or up (ceil) when under `min_pixels`, in f64 as Python does.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize), PreprocessError> {
    let no_size = || PreprocessError::NoSize {
        width,
        height,
        factor,
        min_pixels,
        max_pixels,
    };
    if height == 0 || width == 0 || factor == 0 {
        return Err(no_size());
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(PreprocessError::AspectRatio { width, height });
    }
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    let area = (height as u64 * width as u64) as f64;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (area / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / area).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    // A very elongated image can round a side to 0 (HF then fails inside PIL); no valid size exists.
    if h_bar < f || w_bar < f || !h_bar.is_finite() || !w_bar.is_finite() {
        return Err(no_size());
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// One image ready for the vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedImage {
    /// `[grid.patches(), 3 * T * p * p]`, HF's `pixel_values` rows of this image.
    pub pixel_values: Vec<f32>,
    /// The image's patch grid `(t, h, w)`: `t = 1` for a still image, `h` / `w` the resized sides over
    /// the patch size (each a multiple of the merge size).
    pub grid: VisionGrid,
    /// The resized image's width in pixels (a multiple of `patch_size * merge_size`).
    pub width: usize,
    /// The resized image's height in pixels (a multiple of `patch_size * merge_size`).
    pub height: usize,
}

impl PreparedImage {
    /// Image tokens this image contributes to the und context.
    pub fn tokens(&self, merge: usize) -> usize {
        self.grid.merged_tokens(merge)
    }
}

/// Resizes (when needed), normalizes and patchifies `img` as the HF processor does.
pub fn preprocess(img: &RgbImage, cfg: &ProcessorConfig) -> Result<PreparedImage, PreprocessError> {
    let (h, w) = smart_resize(
        img.height,
        img.width,
        cfg.factor(),
        cfg.min_pixels,
        cfg.max_pixels,
    )?;
    let resized;
    let img = if (w, h) == (img.width, img.height) {
        img
    } else {
        resized = resize_bicubic(img, w, h);
        &resized
    };
    Ok(PreparedImage {
        pixel_values: patchify(img, cfg),
        grid: VisionGrid {
            t: 1,
            h: h / cfg.patch_size,
            w: w / cfg.patch_size,
        },
        width: w,
        height: h,
    })
}

/// Normalized patches of an image whose sides are multiples of `patch * merge`.
fn patchify(img: &RgbImage, cfg: &ProcessorConfig) -> Vec<f32> {
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    // HF rescales in f64 and stores f32, then normalizes in f32.
    let norm: Vec<[f32; 3]> = (0..=255u8)
        .map(|v| {
            let x = (v as f64 * (1.0 / 255.0)) as f32;
            std::array::from_fn(|c| (x - cfg.image_mean[c]) / cfg.image_std[c])
        })
        .collect();
    let (gh, gw) = (img.height / p, img.width / p);
    let feat = 3 * t * p * p;
    let mut out = Vec::with_capacity(gh * gw * feat);
    for by in 0..gh / m {
        for bx in 0..gw / m {
            for dy in 0..m {
                for dx in 0..m {
                    let (y0, x0) = ((by * m + dy) * p, (bx * m + dx) * p);
                    for c in 0..3 {
                        // A still image fills every temporal slot with the same frame.
                        for _ in 0..t {
                            for py in 0..p {
                                for px in 0..p {
                                    let [r, g, b] = img.pixel(x0 + px, y0 + py);
                                    let v = [r, g, b][c];
                                    out.push(norm[v as usize][c]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from HF's `smart_resize` (transformers 5.23), including its rounding edge cases.
    /// (height, width, min pixels, max pixels, expected (height, width)).
    type ResizeCase = (usize, usize, u64, u64, (usize, usize));

    #[test]
    fn smart_resize_matches_hf() {
        let cases: &[ResizeCase] = &[
            (45, 70, 3136, 1003520, (56, 56)),
            (90, 50, 3136, 1003520, (84, 56)),
            (30, 30, 3136, 1003520, (56, 56)),
            (90, 120, 3136, 4704, (56, 56)),
        ];
        for &(h, w, lo, hi, want) in cases {
            assert_eq!(smart_resize(h, w, 28, lo, hi).unwrap(), want, "{h}x{w}");
        }
    }

    #[test]
    fn smart_resize_rejects_extreme_aspect() {
        assert!(matches!(
            smart_resize(1, 201, 28, 3136, 1003520),
            Err(PreprocessError::AspectRatio { .. })
        ));
    }

    #[test]
    fn patch_order_is_merge_block_major() {
        // A 56x28 (w x h) image with one distinct value per 14x14 patch: patch (row, col) has red = 10*row
        // + col. HF's order: block row, block col, then (dy, dx) inside the 2x2 block.
        let (w, h) = (56, 28);
        let data = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                [(10 * (y / 14) + x / 14) as u8, 0, 0]
            })
            .collect();
        let img = RgbImage::new(w, h, data).unwrap();
        let cfg = ProcessorConfig {
            min_pixels: 1,
            max_pixels: 1 << 20,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: [0.0; 3],
            image_std: [1.0 / 255.0; 3],
        };
        let out = preprocess(&img, &cfg).unwrap();
        assert_eq!(out.grid, VisionGrid { t: 1, h: 2, w: 4 });
        let feat = 3 * 2 * 14 * 14;
        let reds: Vec<f32> = out.pixel_values.chunks(feat).map(|r| r[0]).collect();
        let want = [0.0, 1.0, 10.0, 11.0, 2.0, 3.0, 12.0, 13.0];
        for (got, want) in reds.iter().zip(want) {
            assert!((got - want).abs() < 1e-3, "{reds:?}");
        }
    }
}
