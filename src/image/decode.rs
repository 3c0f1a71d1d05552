//! Image files to 8-bit RGB: PNG (the `png` crate) and baseline / progressive JPEG (`zune-jpeg`).
//!
//! Colour handling follows what the HF image processor gets from PIL's `convert("RGB")`: grayscale is
//! replicated to three channels, palettes are expanded, alpha is dropped (not composited), 16-bit samples
//! keep their high byte. The format is sniffed from the file's first bytes, not from its extension.

use std::fmt;
use std::path::{Path, PathBuf};

/// An 8-bit RGB image, row-major, `data.len() == width * height * 3`.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels (positive).
    pub width: usize,
    /// Height in pixels (positive).
    pub height: usize,
    /// Row-major `r, g, b` bytes: pixel (x, y) starts at `(y * width + x) * 3`.
    pub data: Vec<u8>,
}

impl fmt::Debug for RgbImage {
    // The pixel bytes would drown any assertion message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    /// Wraps RGB bytes; `None` when the length is not `width * height * 3` or a side is zero.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Option<RgbImage> {
        let expected = width.checked_mul(height)?.checked_mul(3)?;
        (width > 0 && height > 0 && data.len() == expected).then_some(RgbImage {
            width,
            height,
            data,
        })
    }

    /// The (r, g, b) bytes of pixel (x, y).
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// What a caller accepts before any pixel is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Most pixels (width * height) an input image may have.
    pub max_pixels: u64,
    /// Largest file, in bytes, that is read at all.
    pub max_file_bytes: u64,
}

impl Default for ImageLimits {
    /// 64 Mpixel and 256 MiB: far above what the vision encoder can use (it resizes to its own budget),
    /// low enough that a corrupt header cannot make the decoder allocate gigabytes.
    fn default() -> ImageLimits {
        ImageLimits {
            max_pixels: 64 << 20,
            max_file_bytes: 256 << 20,
        }
    }
}

/// Why an image could not be loaded; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read (missing, unreadable, a directory, ...).
    #[error("{path}: cannot read the image: {source}")]
    Read {
        /// The image file.
        path: PathBuf,
        /// The I/O error from the operating system.
        source: std::io::Error,
    },
    /// The first bytes carry neither the PNG nor the JPEG signature.
    #[error("{path}: not a PNG or JPEG file ({detail})")]
    UnsupportedFormat {
        /// The image file.
        path: PathBuf,
        /// What the file starts with instead.
        detail: String,
    },
    /// The header or pixel data is corrupt, or uses a feature the decoder lacks.
    #[error("{path}: corrupt or unsupported {format} data: {detail}")]
    Decode {
        /// The image file.
        path: PathBuf,
        /// `"PNG"` or `"JPEG"`, as sniffed.
        format: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// The header declares a zero width or height.
    #[error("{path}: the image has zero size ({width}x{height})")]
    ZeroSized {
        /// The image file.
        path: PathBuf,
        /// Width from the header, in pixels.
        width: u64,
        /// Height from the header, in pixels.
        height: u64,
    },
    /// The header declares more pixels than [`ImageLimits::max_pixels`]; nothing was decoded.
    #[error("{path}: {width}x{height} = {pixels} pixels is over the limit of {limit} pixels")]
    TooManyPixels {
        /// The image file.
        path: PathBuf,
        /// Width from the header, in pixels.
        width: u64,
        /// Height from the header, in pixels.
        height: u64,
        /// `width * height`.
        pixels: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// The file is larger than [`ImageLimits::max_file_bytes`]; it was not read.
    #[error("{path}: the file is {size} bytes, over the limit of {limit} bytes")]
    FileTooLarge {
        /// The image file.
        path: PathBuf,
        /// The file's size in bytes.
        size: u64,
        /// The limit it exceeds, in bytes.
        limit: u64,
    },
}

impl ImageError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ImageError::Read { path, .. }
            | ImageError::UnsupportedFormat { path, .. }
            | ImageError::Decode { path, .. }
            | ImageError::ZeroSized { path, .. }
            | ImageError::TooManyPixels { path, .. }
            | ImageError::FileTooLarge { path, .. } => path,
        }
    }
}

/// The container formats understood, sniffed from the first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// PNG (`\x89PNG\r\n\x1a\n` signature).
    Png,
    /// JPEG, baseline or progressive (`FF D8 FF` start).
    Jpeg,
}

/// Recognizes PNG and JPEG by their signatures.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else {
        None
    }
}

/// Reads and decodes a PNG or JPEG file to RGB, checking `limits` from the header before decoding pixels.
pub fn load_rgb(path: &Path, limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    let read_err = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    if size > limits.max_file_bytes {
        return Err(ImageError::FileTooLarge {
            path: path.to_path_buf(),
            size,
            limit: limits.max_file_bytes,
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    decode_rgb(&bytes, path, limits)
}

/// Decodes in-memory PNG or JPEG bytes; `path` only names the source in errors.
pub fn decode_rgb(bytes: &[u8], path: &Path, limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    match sniff_format(bytes) {
        Some(ImageFormat::Png) => super::png::decode(bytes, path, limits),
        Some(ImageFormat::Jpeg) => super::jpeg::decode(bytes, path, limits),
        None => Err(ImageError::UnsupportedFormat {
            path: path.to_path_buf(),
            detail: if bytes.is_empty() {
                "the file is empty".to_string()
            } else {
                let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
                format!("first bytes {}", head.join(" "))
            },
        }),
    }
}

/// Rejects zero-sized and over-limit images from their header dimensions.
pub(crate) fn check_dims(
    path: &Path,
    width: u64,
    height: u64,
    limits: &ImageLimits,
) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSized {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    let pixels = width.saturating_mul(height);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            path: path.to_path_buf(),
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}
