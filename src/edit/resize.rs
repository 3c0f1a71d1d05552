//! Reference-image sizing for the VAE, as OmniGen2 does it (`OmniGen2ImageProcessor`): shrink (never
//! enlarge) to fit a pixel budget and a longest-side limit, round each side down to a multiple of
//! VAE factor x patch, and resample with PIL's Lanczos filter. The resampler reproduces Pillow's 8-bit
//! path exactly (same coefficients, 22-bit fixed point, horizontal pass to an 8-bit intermediate, then the
//! vertical pass), so a reference image gives the same bytes here as in the Python pipeline.

use crate::image::RgbImage;

/// OmniGen2's default pixel budget for input (reference) images (`max_pixels`): 1024 x 1024; larger
/// images are shrunk to fit it, keeping their aspect ratio.
pub const DEFAULT_MAX_PIXELS: usize = 1024 * 1024;
/// OmniGen2's default longest side for input (reference) images (`max_side_length`), in pixels.
pub const DEFAULT_MAX_SIDE: usize = 1024;

/// `(height, width)` an input image is resized to: `ratio = min(sqrt(max_pixels / (h*w)),
/// max_side / max(h, w), 1)`, then `int(side * ratio)` rounded down to a multiple of `multiple`.
/// Either side can come out 0 for a tiny image; the caller rejects that.
pub fn target_size(
    height: usize,
    width: usize,
    multiple: usize,
    max_pixels: usize,
    max_side: usize,
) -> (usize, usize) {
    let (h, w) = (height as f64, width as f64);
    let side_ratio = max_side as f64 / if height > width { h } else { w };
    // `** 0.5` in Python is pow(x, 0.5): the same libm call, so the same rounding at side boundaries.
    let pixels_ratio = (max_pixels as f64 / (h * w)).powf(0.5);
    let ratio = pixels_ratio.min(side_ratio).min(1.0);
    let round = |side: f64| ((side * ratio) as usize) / multiple * multiple;
    (round(h), round(w))
}

/// Pillow's fixed-point precision for 8-bit images (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;
const LANCZOS_SUPPORT: f64 = 3.0;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

fn lanczos(x: f64) -> f64 {
    if (-LANCZOS_SUPPORT..LANCZOS_SUPPORT).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// One output sample's taps: the first input index and the fixed-point weights.
struct Taps {
    start: usize,
    weights: Vec<i64>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for resampling `in_size` samples to `out_size`.
fn coefficients(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = LANCZOS_SUPPORT * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero; the clamp to 0 makes that equal to Rust's `as`.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| lanczos((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = raw.iter().sum();
            let one = (1i64 << PRECISION_BITS) as f64;
            let weights = raw
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    if k < 0.0 {
                        (-0.5 + k * one) as i64
                    } else {
                        (0.5 + k * one) as i64
                    }
                })
                .collect();
            Taps {
                start: xmin,
                weights,
            }
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One resampling pass over row-major RGB bytes. `along_rows` (horizontal): `lines` rows of `width`
/// pixels -> `lines` rows of `taps.len()` pixels. Otherwise (vertical): an image `lines` pixels wide
/// whose columns are resampled to `taps.len()` rows (`width` is unused then).
fn pass(src: &[u8], lines: usize, along_rows: bool, width: usize, taps: &[Taps]) -> Vec<u8> {
    let n_out = taps.len();
    if along_rows {
        let mut out = vec![0u8; lines * n_out * 3];
        for y in 0..lines {
            let row = &src[y * width * 3..(y + 1) * width * 3];
            for (xx, t) in taps.iter().enumerate() {
                for ch in 0..3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &k) in t.weights.iter().enumerate() {
                        acc += row[(t.start + i) * 3 + ch] as i64 * k;
                    }
                    out[(y * n_out + xx) * 3 + ch] = clip8(acc);
                }
            }
        }
        out
    } else {
        let cols = lines;
        let mut out = vec![0u8; n_out * cols * 3];
        for (yy, t) in taps.iter().enumerate() {
            for x in 0..cols {
                for ch in 0..3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &k) in t.weights.iter().enumerate() {
                        acc += src[((t.start + i) * cols + x) * 3 + ch] as i64 * k;
                    }
                    out[(yy * cols + x) * 3 + ch] = clip8(acc);
                }
            }
        }
        out
    }
}

/// `PIL.Image.resize((width, height), Image.LANCZOS)` of an RGB image. Same size: a copy. Each axis is
/// resampled only when its size changes (Pillow skips an unneeded pass, and rounding to 8 bits between
/// passes makes that observable).
pub fn resize_lanczos(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    let mut data = img.data.clone();
    let mut w = img.width;
    if width != img.width {
        data = pass(
            &data,
            img.height,
            true,
            img.width,
            &coefficients(img.width, width),
        );
        w = width;
    }
    if height != img.height {
        data = pass(&data, w, false, 0, &coefficients(img.height, height));
    }
    RgbImage {
        width,
        height,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omnigen2_size_rule() {
        // Already a multiple of 16 and within limits: unchanged.
        assert_eq!(
            target_size(512, 768, 16, DEFAULT_MAX_PIXELS, 1024),
            (512, 768)
        );
        // Round down, never up.
        assert_eq!(target_size(53, 35, 8, DEFAULT_MAX_PIXELS, 1024), (48, 32));
        // Longest side limited to 1024, aspect kept before rounding: 2048x1000 -> 1024x500 -> 1024x496.
        assert_eq!(target_size(1000, 2048, 16, 4 << 20, 1024), (496, 1024));
        // Pixel budget: 2000x2000 -> sqrt(1024^2 / 2000^2) -> 1024x1024 with no side limit.
        assert_eq!(
            target_size(2000, 2000, 16, DEFAULT_MAX_PIXELS, 4096),
            (1024, 1024)
        );
        // Smaller than one multiple: zero (the caller reports it).
        assert_eq!(target_size(10, 40, 16, DEFAULT_MAX_PIXELS, 1024).0, 0);
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(35, 32), (53, 48), (100, 7), (7, 100), (1024, 1000)] {
            for t in coefficients(i, o) {
                let s: i64 = t.weights.iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= t.weights.len() as i64,
                    "{i}->{o}: {s}"
                );
                assert!(t.start + t.weights.len() <= i);
            }
        }
    }

    #[test]
    fn constant_image_stays_constant_and_same_size_is_a_copy() {
        let img = RgbImage::new(9, 7, [10u8, 200, 77].repeat(63)).unwrap();
        let out = resize_lanczos(&img, 5, 4);
        assert_eq!((out.width, out.height), (5, 4));
        assert!(out.data.chunks(3).all(|p| p == [10, 200, 77]));
        assert_eq!(resize_lanczos(&img, 9, 7), img);
    }
}
