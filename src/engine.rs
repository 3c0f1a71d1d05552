//! The embedding API's entry point: one [`Engine`] per model, loaded once, serving chat, image generation,
//! editing and traced forwards on the backend it chose. The pipelines it calls (`chat`, `t2i`, `edit`,
//! `forward`) validate their requests themselves, so the CLI and this API refuse the same things with
//! the same errors.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use hbridge::chat::ChatRequest;
//! use hbridge::engine::{Engine, EngineOptions};
//! use hbridge::t2i::ImageRequest;
//! # let dir = std::env::temp_dir().join(format!("hbridge-doc-engine-{}", std::process::id()));
//! # let tiny = hbridge::presets::preset("tiny").unwrap();
//! # hbridge::init::write_checkpoint(&dir, &tiny, 0, hbridge::init::WeightDType::BF16, true)?;
//! // `dir` holds a checkpoint (here the built-in tiny model with random weights).
//! let engine = Engine::load(&dir, &EngineOptions::cpu())?;
//! let answer = engine.chat("What is a bridge?", &ChatRequest::new().max_tokens(4), |_, _| {
//!     std::ops::ControlFlow::Continue(())
//! })?;
//! assert!(answer.tokens.len() <= 4);
//! let image = engine.generate_image(&ImageRequest::new("a red cube").size(32, 32).steps(2), |_, _| {})?;
//! assert_eq!(image.rgb.len(), 32 * 32 * 3);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

use crate::chat::{ChatError, ChatOutput, ChatPipeline, ChatRequest};
use crate::edit::{EditOutput, EditRequest};
use crate::model::{Model, Outputs, RunError};
use crate::t2i::{ImageOutput, ImageRequest};
use hbridge_engine::device::{self, Device, DeviceRequest};
use std::ops::ControlFlow;
use std::path::Path;

/// How to load a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Which backend: `Auto` takes CUDA when a GPU is usable, else the CPU (see [`Engine::notice`]).
    pub device: DeviceRequest,
    /// CUDA: capture gen steps as CUDA graphs and replay them (on by default; off for measuring).
    pub cuda_graphs: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            device: DeviceRequest::Auto,
            cuda_graphs: true,
        }
    }
}

impl EngineOptions {
    /// The CPU backend, whatever the machine has.
    pub fn cpu() -> Self {
        EngineOptions {
            device: DeviceRequest::Cpu,
            ..Self::default()
        }
    }

    /// Sets the device request.
    pub fn device(mut self, device: DeviceRequest) -> Self {
        self.device = device;
        self
    }
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Device(#[from] device::DeviceError),
    #[error(transparent)]
    Model(#[from] ChatError),
}

/// A loaded model on its backend.
pub struct Engine {
    pipeline: ChatPipeline,
    notice: Option<String>,
}

impl Engine {
    /// Opens the checkpoint in `dir` (configs validated, weights memory-mapped; they become resident on
    /// the backend as requests first need them) on the backend `options` asks for.
    pub fn load(dir: impl AsRef<Path>, options: &EngineOptions) -> Result<Engine, LoadError> {
        let selection = device::select(options.device)?;
        let pipeline = ChatPipeline::open_on(dir.as_ref(), selection.device)?;
        pipeline.model().set_cuda_graphs(options.cuda_graphs);
        Ok(Engine {
            pipeline,
            notice: selection.notice,
        })
    }

    /// The backend the model runs on.
    pub fn device(&self) -> Device {
        self.pipeline.model().device()
    }

    /// Why `Auto` chose the CPU, when it did (for the caller to show or log).
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    /// The model (checkpoint, configs and lower-level runs).
    pub fn model(&self) -> &Model {
        self.pipeline.model()
    }

    /// Answers `prompt` with the chat template, calling `on_token(id, text)` as each token arrives;
    /// returning `ControlFlow::Break` from it stops (cancels) the answer there.
    pub fn chat(
        &self,
        prompt: &str,
        request: &ChatRequest,
        on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, ChatError> {
        self.pipeline.chat_stream(prompt, request, on_token)
    }

    /// Text to image; `progress(step, steps)` after every denoising step.
    pub fn generate_image(
        &self,
        request: &ImageRequest,
        progress: impl FnMut(usize, usize),
    ) -> Result<ImageOutput, RunError> {
        crate::t2i::generate(self.model(), self.text_tokenizer()?, request, progress)
    }

    /// Image editing with reference images; `progress(step, steps)` after every denoising step.
    pub fn edit_image(
        &self,
        request: &EditRequest,
        progress: impl FnMut(usize, usize),
    ) -> Result<EditOutput, RunError> {
        crate::edit::edit(self.model(), self.text_tokenizer()?, request, progress)
    }

    /// One traced und prefill and gen step on explicit inputs (named as in docs/FIXTURES.md), returning
    /// every intermediate.
    pub fn forward(&self, inputs: &Outputs) -> Result<Outputs, RunError> {
        crate::forward::forward(self.model(), inputs)
    }

    fn text_tokenizer(&self) -> Result<&tokenizers::Tokenizer, RunError> {
        self.pipeline
            .tokenizer()
            .map_err(|e| RunError::Request(e.to_string()))
    }
}
