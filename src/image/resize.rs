//! PIL's bicubic resize of 8-bit images, bit for bit (Pillow `libImaging/Resample.c`), because the HF image
//! processor resizes with `PIL.Image.resize(..., BICUBIC)` and a different bicubic would change every pixel
//! value the vision tower sees.
//!
//! Pillow's algorithm: separable, two passes (horizontal and vertical); per output sample a window of source
//! samples weighted by the Keys cubic (a = -0.5) stretched by the downscaling factor (antialiasing), weights
//! normalized to sum 1 in f64, then quantized to 22-bit fixed point; sums start at half an LSB, are floored
//! and clamped to 0..=255. A pass whose size does not change is skipped. Each pass rounds to bytes, so the
//! order of the two passes changes pixels by a level or two; see [`vertical_first`] for which runs first.

use super::decode::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `bicubic_filter` (a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output sample: the first source index and the fixed-point weights of the source window.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    weights: Vec<Vec<i32>>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for `in_size` -> `out_size` over the whole axis.
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's `(int)` truncates toward zero; both ends are then clamped to the axis.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut k: Vec<f64> = (0..n)
            .map(|x| bicubic(((x + xmin) as f64 - center + 0.5) * ss))
            .collect();
        let ww: f64 = k.iter().sum();
        if ww != 0.0 {
            k.iter_mut().for_each(|v| *v /= ww);
        }
        let one = (1u32 << PRECISION_BITS) as f64;
        let fixed = k
            .iter()
            .map(|&v| {
                if v < 0.0 {
                    (-0.5 + v * one) as i32
                } else {
                    (0.5 + v * one) as i32
                }
            })
            .collect();
        bounds.push((xmin, n));
        weights.push(fixed);
    }
    Coeffs { bounds, weights }
}

/// `sum` (started at half an LSB) back to a byte: Pillow's `clip8`.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Whether Pillow runs the vertical pass before the horizontal one for a full-image resize of `w0 x h0` to
/// `w x h`, with both passes needed.
///
/// Pillow 12 and older always ran the horizontal pass first. Pillow 13 (python-pillow/Pillow#9549, "If height
/// is scaled down significantly more than width, resize vertically first", in `ImagingResampleInner`) runs
/// the vertical pass first when the height shrinks and the rows it removes are more than twice the columns the
/// width loses (a width that grows always counts as less):
///
/// `h < h0 && h0 - h > 2 * (w0 - w)`
///
/// The merged C source was not available to read (the stored `Resample.c` predates #9549), so this rule was
/// determined against Pillow 13.0.0's `Image.resize` (RGB noise sources; Pillow's order found by comparing
/// the full resize with the two single-axis resizes in either order). It predicts the order in all of about
/// 18,600 cases: full w x h grids for seven sources up to 77 px, ~3,000 random sizes up to 300, 1,800 up to
/// 2000 within 2 of the boundary, and 50x500000, 20000x30 and 3000x3000 sources; `>=` instead of `>` fails
/// ~120 of them. `reference/check_resize_order.py` re-checks the rule and sweeps this module's pixels against
/// Pillow's. The intermediate image holds the same values whichever rows / columns Pillow restricts it to,
/// so only the order matters.
pub fn vertical_first(w0: usize, h0: usize, w: usize, h: usize) -> bool {
    let (w0, h0, w, h) = (w0 as i64, h0 as i64, w as i64, h as i64);
    w != w0 && h < h0 && h0 - h > 2 * (w0 - w)
}

/// The horizontal pass: `data` (`w0 x rows`, RGB) to `width x rows`.
fn horizontal(data: &[u8], w0: usize, rows: usize, width: usize) -> Vec<u8> {
    let c = coeffs(w0, width);
    let mut out = vec![0u8; width * rows * 3];
    for y in 0..rows {
        let src = &data[y * w0 * 3..(y + 1) * w0 * 3];
        let dst = &mut out[y * width * 3..(y + 1) * width * 3];
        for (xx, px) in dst.chunks_exact_mut(3).enumerate() {
            let (xmin, n) = c.bounds[xx];
            let k = &c.weights[xx];
            for (ch, o) in px.iter_mut().enumerate() {
                let mut ss = 1i32 << (PRECISION_BITS - 1);
                for x in 0..n {
                    ss = ss.wrapping_add(i32::from(src[(xmin + x) * 3 + ch]) * k[x]);
                }
                *o = clip8(ss);
            }
        }
    }
    out
}

/// The vertical pass: `data` (`cols x h0`, RGB) to `cols x height`.
fn vertical(data: &[u8], cols: usize, h0: usize, height: usize) -> Vec<u8> {
    let c = coeffs(h0, height);
    let row = cols * 3;
    let mut out = vec![0u8; height * row];
    for (yy, dst) in out.chunks_exact_mut(row).enumerate() {
        let (ymin, n) = c.bounds[yy];
        let k = &c.weights[yy];
        for (i, o) in dst.iter_mut().enumerate() {
            let mut ss = 1i32 << (PRECISION_BITS - 1);
            for y in 0..n {
                ss = ss.wrapping_add(i32::from(data[(ymin + y) * row + i]) * k[y]);
            }
            *o = clip8(ss);
        }
    }
    out
}

/// Resizes `img` to `width x height` exactly as `PIL.Image.resize((width, height), BICUBIC)` of Pillow 13
/// does on an RGB image (pass order: [`vertical_first`]). Both target sides must be positive.
pub fn resize_bicubic(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    assert!(width > 0 && height > 0, "resize to an empty image");
    let (w0, h0) = (img.width, img.height);
    // Pillow runs the first pass only over the source rows (columns) the second pass reads; the others
    // would not change the result, so every row (column) is resampled here.
    let data = if width == w0 && height == h0 {
        img.data.clone()
    } else if width == w0 {
        vertical(&img.data, w0, h0, height)
    } else if height == h0 {
        horizontal(&img.data, w0, h0, width)
    } else if vertical_first(w0, h0, width, height) {
        horizontal(&vertical(&img.data, w0, h0, height), w0, height, width)
    } else {
        vertical(&horizontal(&img.data, w0, h0, width), width, h0, height)
    };
    RgbImage {
        width,
        height,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> RgbImage {
        let data = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                [
                    (x * 255 / w) as u8,
                    (y * 255 / h) as u8,
                    ((x + y) % 2 * 200) as u8,
                ]
            })
            .collect();
        RgbImage::new(w, h, data).unwrap()
    }

    #[test]
    fn same_size_is_identity() {
        let img = gradient(7, 5);
        assert_eq!(resize_bicubic(&img, 7, 5), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        // Weights sum to one (up to the fixed-point rounding, absorbed by the half-LSB start).
        let img = RgbImage::new(9, 4, [10u8, 128, 250].repeat(36)).unwrap();
        for (w, h) in [(3, 2), (20, 11), (9, 13), (1, 1)] {
            let r = resize_bicubic(&img, w, h);
            assert!(r.data.chunks(3).all(|p| p == [10, 128, 250]), "{w}x{h}");
        }
    }

    #[test]
    fn pass_order_follows_pillow_13() {
        // (w0, h0, w, h, vertical first), each checked against Pillow 13.0.0's `Image.resize`.
        for (w0, h0, w, h, v) in [
            (50, 90, 56, 84, true), // width grows, height shrinks (the vision fixture's image b)
            (70, 45, 56, 56, false),
            (100, 100, 51, 1, true),  // 99 > 98
            (100, 100, 50, 1, false), // 99 > 100 is false
            (40, 40, 21, 2, false),   // 38 > 38 is false
            (40, 40, 21, 1, true),    // 39 > 38
            (50, 50000, 26, 49951, true),
            (50, 50000, 26, 49952, false),
            (20000, 30, 19990, 9, true),
            (3000, 3000, 1499, 1, false),
            (100, 100, 120, 101, false), // height grows
        ] {
            assert_eq!(vertical_first(w0, h0, w, h), v, "{w0}x{h0} -> {w}x{h}");
        }
    }

    #[test]
    fn weights_cover_the_axis_and_sum_to_one() {
        for (i, o) in [(70, 56), (45, 56), (200, 28), (28, 196)] {
            let c = coeffs(i, o);
            for ((xmin, n), k) in c.bounds.iter().zip(&c.weights) {
                assert!(xmin + n <= i && *n > 0);
                let s: i64 = k.iter().map(|&v| v as i64).sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}: {s}"
                );
            }
        }
    }
}
