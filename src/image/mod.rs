//! Image inputs for the vision tower: file decoding (`decode`: PNG, JPEG), the HF Qwen2-VL image
//! processor (`preprocess`, with PIL's bicubic in `resize`), and images in an und context (`context`:
//! prompt tokens, M-RoPE positions, the prefill with the vision tower).

pub mod context;
pub mod decode;
mod jpeg;
mod png;
pub mod preprocess;
pub mod resize;

pub use context::{ImageInputError, ImageSetup};
pub use decode::{load_rgb, ImageError, ImageLimits, RgbImage};
pub use preprocess::{preprocess, PreparedImage, ProcessorConfig};
