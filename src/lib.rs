#![deny(missing_docs)]
//! hbridge: an inference runtime for unified multimodal models built from two heterogeneous experts, a
//! Qwen2.5-VL understanding expert and an OmniGen2-style diffusion transformer, joined by bridged
//! attention in their middle layers. See DESIGN.md for the model and README.md for use.

mod atomic_file;
mod backend;
pub mod bench;
pub mod budget;
pub mod capi;
pub mod chat;
pub mod edit;
pub mod engine;
pub mod forward;
pub mod image;
pub mod init;
pub mod inspect;
pub mod model;
pub mod noise;
pub mod presets;
pub mod prompt;
pub mod sampler;
pub mod t2i;
pub mod tensor_io;
pub mod validate;

pub use hbridge_loader as loader;
pub use hbridge_loader::{Checkpoint, LoadError, ModelConfig, Topology};
