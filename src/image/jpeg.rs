//! JPEG decoding through `zune-jpeg` (pure Rust), converted to RGB by the decoder itself.

use super::decode::{check_dims, ImageError, ImageLimits, RgbImage};
use std::path::Path;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

pub(crate) fn decode(
    bytes: &[u8],
    path: &Path,
    limits: &ImageLimits,
) -> Result<RgbImage, ImageError> {
    let decode_err = |e: &dyn std::fmt::Display| ImageError::Decode {
        path: path.to_path_buf(),
        format: "JPEG",
        detail: e.to_string(),
    };
    // JPEG sides are u16; the pixel limit below is what bounds memory, so the decoder's own (16384) side
    // limit is lifted to the format's maximum.
    let options = DecoderOptions::default()
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(|e| match e {
        zune_jpeg::errors::DecodeErrors::ZeroError => ImageError::ZeroSized {
            path: path.to_path_buf(),
            width: 0,
            height: 0,
        },
        e => decode_err(&e),
    })?;
    let info = decoder
        .info()
        .ok_or_else(|| decode_err(&"no frame header"))?;
    let (width, height) = (usize::from(info.width), usize::from(info.height));
    check_dims(path, width as u64, height as u64, limits)?;
    let data = decoder.decode().map_err(|e| decode_err(&e))?;
    RgbImage::new(width, height, data).ok_or_else(|| {
        decode_err(&format!(
            "the decoder returned the wrong number of bytes for {width}x{height} RGB"
        ))
    })
}
