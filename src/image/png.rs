//! PNG decoding through the `png` crate, normalized to 8-bit RGB the way PIL's `convert("RGB")` does.

use super::decode::{check_dims, ImageError, ImageLimits, RgbImage};
use png::{BitDepth, ColorType, Transformations};
use std::io::Cursor;
use std::path::Path;

pub(crate) fn decode(
    bytes: &[u8],
    path: &Path,
    limits: &ImageLimits,
) -> Result<RgbImage, ImageError> {
    let decode_err = |e: &dyn std::fmt::Display| ImageError::Decode {
        path: path.to_path_buf(),
        format: "PNG",
        detail: e.to_string(),
    };
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // EXPAND: palette -> RGB(A), low bit depths -> 8, tRNS -> alpha; STRIP_16: keep the high byte.
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    // The crate's allocation limit (64 MiB) would reject images the caller's pixel limit allows.
    decoder.set_limits(png::Limits {
        bytes: usize::try_from(limits.max_pixels.saturating_mul(8)).unwrap_or(usize::MAX),
    });
    let mut reader = decoder.read_info().map_err(|e| decode_err(&e))?;
    let (width, height) = reader.info().size();
    check_dims(path, u64::from(width), u64::from(height), limits)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| decode_err(&"image too large for this platform"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(|e| decode_err(&e))?;
    let (color, depth) = (frame.color_type, frame.bit_depth);
    if depth != BitDepth::Eight {
        return Err(decode_err(&format!(
            "unexpected bit depth {depth:?} after expansion"
        )));
    }
    let (w, h) = (frame.width as usize, frame.height as usize);
    let stride = frame.line_size;
    let channels = match color {
        ColorType::Grayscale => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
        ColorType::Indexed => {
            return Err(decode_err(&"palette left unexpanded"));
        }
    };
    let mut data = Vec::with_capacity(w * h * 3);
    for row in buf.chunks(stride).take(h) {
        for px in row[..w * channels].chunks_exact(channels) {
            // Gray replicates; alpha is dropped without compositing, as PIL's convert("RGB") does.
            match channels {
                1 | 2 => data.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => data.extend_from_slice(&px[..3]),
            }
        }
    }
    RgbImage::new(w, h, data).ok_or_else(|| decode_err(&"truncated pixel data"))
}
