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
//! let image = engine.generate_image(&ImageRequest::new("a red cube").size(32, 32).steps(2), |_, _| {
//!     std::ops::ControlFlow::Continue(())
//! })?;
//! assert_eq!(image.rgb.len(), 32 * 32 * 3);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

use crate::budget::{MemoryBudget, OverLimit, Reservation};
use crate::chat::{
    check_turns, ChatError, ChatOutput, ChatPipeline, ChatRequest, ChatSession, Turn,
};
use crate::edit::{EditOutput, EditRequest};
use crate::image::{PreparedImage, RgbImage};
use crate::model::{Model, Outputs, RunError};
use crate::t2i::{ImageOutput, ImageRequest};
use crate::validate;
use hbridge_engine::device::{self, Device, DeviceRequest};
pub use hbridge_engine::{CpuCompute, CpuComputeFixed};
use std::ops::ControlFlow;
use std::path::Path;

/// The number type a backend keeps the model's weights in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DType {
    /// The backend's own: on the CPU, the checkpoint's where that computes the same bits (bf16 matrices
    /// stay bf16 and are widened as products read them, everything else f32); bf16 on CUDA.
    #[default]
    Auto,
    /// f32 weights (CPU only: the CUDA kernels read bf16).
    F32,
    /// bf16 weights. On the CPU this halves the weights' memory: matrices stay bf16 and are widened to f32
    /// as each product reads them (exact for a bf16 checkpoint; an f32 checkpoint is rounded).
    BF16,
}

/// How to load a model. Builder-style: `EngineOptions::default().memory_limit(8 << 30)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Which backend: `Auto` takes CUDA when a GPU is usable, else the CPU (see [`Engine::notice`]).
    pub device: DeviceRequest,
    /// The weights' number type on the backend.
    pub dtype: DType,
    /// CUDA: capture gen steps as CUDA graphs and replay them (on by default; off for measuring).
    pub cuda_graphs: bool,
    /// Bound on the memory all running requests hold for their state (K/V caches, contexts, activation
    /// arenas), in bytes; `None` = unbounded. Weights are not counted.
    pub memory_limit: Option<u64>,
    /// What a request that fits the limit alone but not beside the running ones does.
    pub over_limit: OverLimit,
    /// The CPU backend's arithmetic (f32, or bf16 on AMX tiles), a choice fixed once per process:
    /// see [`CpuCompute::request`]. `FromEnv` (the default) leaves it to `HBRIDGE_CPU_MATMUL`.
    pub cpu_compute: CpuCompute,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            device: DeviceRequest::Auto,
            dtype: DType::Auto,
            cuda_graphs: true,
            memory_limit: None,
            over_limit: OverLimit::Wait,
            cpu_compute: CpuCompute::FromEnv,
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

    /// Sets the weights' number type.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Turns CUDA graph capture and replay on or off.
    pub fn cuda_graphs(mut self, on: bool) -> Self {
        self.cuda_graphs = on;
        self
    }

    /// Bounds the memory of running requests' state to `bytes`.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Sets what a request over the free part of the limit does (wait, the default, or fail).
    pub fn over_limit(mut self, policy: OverLimit) -> Self {
        self.over_limit = policy;
        self
    }

    /// Asks for the CPU backend's arithmetic (fixed once per process; [`Engine::load`] fails with
    /// [`LoadError::CpuCompute`] when the process already computes otherwise).
    pub fn cpu_compute(mut self, compute: CpuCompute) -> Self {
        self.cpu_compute = compute;
        self
    }
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The requested backend is not usable.
    #[error(transparent)]
    Device(#[from] device::DeviceError),
    /// The checkpoint could not be opened.
    #[error(transparent)]
    Model(#[from] ChatError),
    /// The backend does not keep weights in the requested type.
    #[error("dtype {dtype:?}: the {device:?} backend does not support it ({hint})")]
    DType {
        /// The weight type the options asked for.
        dtype: DType,
        /// The backend that was selected (explicitly or by `Auto`).
        device: Device,
        /// What to ask for instead.
        hint: &'static str,
    },
    /// The CPU arithmetic asked for differs from the one this process already uses.
    #[error(transparent)]
    CpuCompute(#[from] CpuComputeFixed),
}

/// What [`Engine::warm_up`] prepares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmUp {
    /// The und prefill and decode step (chat).
    pub chat: bool,
    /// The gen step, the bridge and the VAE decode (text to image; editing shares them).
    pub images: bool,
}

impl WarmUp {
    /// Chat and images.
    pub const ALL: WarmUp = WarmUp {
        chat: true,
        images: true,
    };
}

/// A loaded model on its backend, serving requests from any number of threads (`Engine` is `Sync`).
pub struct Engine {
    pipeline: ChatPipeline,
    notice: Option<String>,
    budget: MemoryBudget,
}

impl Engine {
    /// Opens the checkpoint in `dir` (configs validated, weights memory-mapped; they become resident on
    /// the backend as requests first need them) on the backend `options` asks for.
    pub fn load(dir: impl AsRef<Path>, options: &EngineOptions) -> Result<Engine, LoadError> {
        let selection = device::select(options.device)?;
        if selection.device == Device::Cpu {
            options.cpu_compute.request()?;
        }
        let storage = match (selection.device, options.dtype) {
            (Device::Cuda, DType::F32) => {
                return Err(LoadError::DType {
                    dtype: DType::F32,
                    device: Device::Cuda,
                    hint: "its kernels read bf16 weights; use Auto or BF16",
                })
            }
            (Device::Cpu, DType::BF16) => crate::model::WeightStorage::Bf16,
            (Device::Cpu, DType::Auto) => crate::model::WeightStorage::Exact,
            _ => crate::model::WeightStorage::F32,
        };
        let pipeline = ChatPipeline::open_with(dir.as_ref(), selection.device, storage)?;
        pipeline.model().set_cuda_graphs(options.cuda_graphs);
        Ok(Engine {
            pipeline,
            notice: selection.notice,
            budget: MemoryBudget::new(options.memory_limit, options.over_limit),
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

    /// The request memory limit and what running requests hold of it.
    pub fn memory_budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Answers `prompt` with the chat template, calling `on_token(id, text)` as each token arrives;
    /// returning `ControlFlow::Break` from it stops (cancels) the answer there.
    pub fn chat(
        &self,
        prompt: &str,
        request: &ChatRequest,
        on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, ChatError> {
        self.chat_with_images(prompt, &[], request, on_token)
    }

    /// [`Engine::chat`] about `images` (their tokens come first in the user turn, DESIGN.md 6); needs a
    /// checkpoint with a vision tower.
    pub fn chat_with_images(
        &self,
        prompt: &str,
        images: &[RgbImage],
        request: &ChatRequest,
        on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, ChatError> {
        self.chat_turns(&[Turn::user(prompt).with_images(images)], request, on_token)
    }

    /// Answers the last user turn of a conversation: an optional system turn first, then user and
    /// assistant turns, a user turn last; a user turn's images come before its text (see [`Turn`]).
    /// The whole conversation is prefilled on every call.
    pub fn chat_turns(
        &self,
        turns: &[Turn<'_, RgbImage>],
        request: &ChatRequest,
        on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, ChatError> {
        validate::chat_params(request)?;
        // Before the images are prepared (encode_turns checks again, for the pipeline's callers).
        check_turns(turns)?;
        let prepared: Vec<Vec<PreparedImage>> = turns
            .iter()
            .enumerate()
            .map(|(t, turn)| {
                self.prepare_images(turn.images, |i| match turns.len() {
                    1 => format!("image {i}"),
                    _ => format!("turn {t} image {i}"),
                })
            })
            .collect::<Result<_, _>>()?;
        let turns: Vec<Turn<'_, PreparedImage>> = turns
            .iter()
            .zip(&prepared)
            .map(|(t, p)| Turn {
                role: t.role,
                text: t.text,
                images: p,
            })
            .collect();
        let ids = self.pipeline.encode_turns(&turns)?;
        validate::chat_prompt(self.model(), &ids, request)?;
        let _held =
            self.reserve(|| self.model().chat_state_bytes(ids.len(), request.max_tokens))?;
        self.pipeline
            .answer_encoded(&ids, &turns, request, on_token)
    }

    /// Answers `prompt` (with `images` before it) as the next turn of `session`: the session keeps the
    /// conversation's K/V cache on this engine's backend, so a text turn prefills only its own tokens
    /// (see [`ChatSession`]). A turn's memory is reserved like a request's while it runs; between
    /// turns the session holds its cache outside the engine's memory limit.
    pub fn send(
        &self,
        session: &mut ChatSession,
        prompt: &str,
        images: &[RgbImage],
        request: &ChatRequest,
        on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, ChatError> {
        validate::chat_params(request)?;
        let prepared = self.prepare_images(images, |i| format!("image {i}"))?;
        // An upper bound on the turn's tokens before it is encoded: a token holds at least one byte
        // of text, an image fewer tokens than patches; plus the template's few.
        let image_tokens: usize = prepared.iter().map(|p| p.grid.patches() + 2).sum();
        let bound = session.context_tokens() + prompt.len() + image_tokens + 32;
        let _held = self.reserve(|| self.model().chat_state_bytes(bound, request.max_tokens))?;
        self.pipeline
            .send(session, prompt, &prepared, request, on_token)
    }

    /// `images` resized and patched for the vision tower (none: no vision tower needed); `name(i)`
    /// names image `i` in errors.
    fn prepare_images(
        &self,
        images: &[RgbImage],
        name: impl Fn(usize) -> String,
    ) -> Result<Vec<PreparedImage>, ChatError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let setup = self.pipeline.image_setup()?;
        images
            .iter()
            .enumerate()
            .map(|(i, img)| Ok(setup.prepare(Path::new(&name(i)), img)?))
            .collect()
    }

    /// Text to image; `progress(step, steps)` after every denoising step, and its `ControlFlow::Break`
    /// cancels the request ([`RunError::Cancelled`]).
    pub fn generate_image(
        &self,
        request: &ImageRequest,
        progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<ImageOutput, RunError> {
        validate::image(self.model(), request)?;
        let tokenizer = self.text_tokenizer()?;
        let _held = self.reserve(|| crate::t2i::state_bytes(self.model(), tokenizer, request))?;
        crate::t2i::generate(self.model(), tokenizer, request, progress)
    }

    /// Image editing with reference images; `progress(step, steps)` after every denoising step, and its
    /// `ControlFlow::Break` cancels the request ([`RunError::Cancelled`]).
    pub fn edit_image(
        &self,
        request: &EditRequest,
        progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<EditOutput, RunError> {
        validate::edit(self.model(), request)?;
        let tokenizer = self.text_tokenizer()?;
        let _held = self.reserve(|| crate::edit::state_bytes(self.model(), tokenizer, request))?;
        crate::edit::edit(self.model(), tokenizer, request, progress)
    }

    /// Runs the smallest request of each kind `what` names, so that the first real one does not pay
    /// for what a first request does once per engine: its weights converted (CPU) or uploaded
    /// (CUDA), and on CUDA its kernels compiled and its cuBLASLt plans made. Chat: a one-token
    /// answer (the und prefill and decode step). Images: one denoising step with text guidance at the
    /// smallest size (the gen step with the bridge, the VAE decode). Not the vision tower or the VAE
    /// encoder (a first request with images pays for those). Returns the time it took; the requests'
    /// outputs are dropped.
    pub fn warm_up(&self, what: WarmUp) -> Result<std::time::Duration, ChatError> {
        let start = std::time::Instant::now();
        if what.chat {
            self.chat("hi", &ChatRequest::new().max_tokens(1), |_, _| {
                ControlFlow::Continue(())
            })?;
        }
        if what.images {
            let c = &self.model().checkpoint.config;
            let side = c.vae.downscale() * c.gen.patch_size;
            let request = ImageRequest::new("hi").steps(1).size(side, side);
            self.generate_image(&request, |_, _| ControlFlow::Continue(()))?;
        }
        Ok(start.elapsed())
    }

    /// One traced und prefill and gen step on explicit inputs (named as in docs/FIXTURES.md), returning
    /// every intermediate. Not counted against the memory limit (a debugging entry point).
    pub fn forward(&self, inputs: &Outputs) -> Result<Outputs, RunError> {
        crate::forward::forward(self.model(), inputs)
    }

    /// Reserves the request's `estimate` under the memory limit; without a limit the estimate (which
    /// builds and plans graphs) is not computed at all.
    fn reserve(
        &self,
        estimate: impl FnOnce() -> Result<u64, RunError>,
    ) -> Result<Reservation<'_>, RunError> {
        let bytes = match self.budget.limit() {
            Some(_) => estimate()?,
            None => 0,
        };
        Ok(self.budget.reserve(bytes)?)
    }

    fn text_tokenizer(&self) -> Result<&tokenizers::Tokenizer, RunError> {
        self.pipeline
            .tokenizer()
            .map_err(|e| RunError::Request(e.to_string()))
    }
}
