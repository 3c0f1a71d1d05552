//! The chat pipeline of the und expert: chat template (DESIGN.md 6), tokenization, a prefill, then
//! token-by-token decoding against a K/V cache kept across steps, with greedy or temperature + top-p
//! (nucleus) sampling from a seeded RNG, stop tokens, and a per-token streaming callback.
//!
//! ```no_run
//! use hbridge::chat::{ChatPipeline, ChatRequest};
//! use std::ops::ControlFlow;
//! let chat = ChatPipeline::open("model_dir".as_ref())?;
//! let request = ChatRequest::new().max_tokens(64).temperature(0.7).top_p(0.9).seed(1);
//! let out = chat.chat_stream("Tell me about the tree.", &request, |_id, piece| {
//!     print!("{piece}");
//!     ControlFlow::Continue(())
//! })?;
//! eprintln!("{} tokens, stopped: {}", out.tokens.len(), out.stop_reason);
//! # Ok::<(), hbridge::chat::ChatError>(())
//! ```
//!
//! Without a tokenizer, [`ChatPipeline::generate_from_ids`] (or the free [`generate`]) runs on token ids;
//! the answer's text is then empty.

use crate::model::RunError;
use std::fmt;

mod conversation;
mod decode;
mod pipeline;
mod sampling;
mod session;
mod stream;

pub use conversation::{check_turns, conversation_template, Role, Turn};
pub(crate) use decode::CACHE_ROWS;
pub use decode::{
    default_stop_ids, generate, generate_with_images, profile_decode_step, time_decode_step,
    ChatImages,
};
pub use pipeline::ChatPipeline;
pub use sampling::{argmax, sample, Rng};
pub use session::ChatSession;
use std::path::PathBuf;
use std::time::Duration;
pub use stream::TextStream;

/// The system prompt of the chat template.
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant.";
/// The end-of-turn token; decoding stops on it by default.
pub const IM_END: &str = "<|im_end|>";
/// The end-of-text token; decoding stops on it by default.
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// The tokenizer file, relative to the und folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The Qwen2.5-VL chat prompt of one user turn, ready for the assistant's answer (DESIGN.md 6).
pub fn chat_template(user_text: &str) -> String {
    format!(
        "<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{user_text}<|im_end|>\n<|im_start|>assistant\n"
    )
}

/// Why a chat request (or opening the chat pipeline) failed. Request errors are detected before any
/// compute.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The prompt holds no tokens (after templating, for token-id prompts: an empty id list).
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The und folder has no `tokenizer.json`; text prompts cannot be encoded (token ids still work).
    #[error(
        "no tokenizer at {}: text prompts need it; token ids still work through `generate_from_ids`",
        path.display()
    )]
    NoTokenizer {
        /// Where the tokenizer was looked for.
        path: PathBuf,
    },
    /// `tokenizer.json` exists but cannot be read or parsed.
    #[error(
        "{}: cannot read the tokenizer: {message}; token ids still work through `generate_from_ids`",
        path.display()
    )]
    BadTokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizers library's message.
        message: String,
    },
    /// The tokenizer failed to encode the templated prompt (its message).
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    /// The templated prompt alone is longer than the und expert's `max_position_embeddings`.
    #[error("the prompt is {tokens} tokens long; the model's context holds {limit}")]
    PromptTooLong {
        /// Prompt length in tokens, after templating.
        tokens: usize,
        /// The und context length (`max_position_embeddings`).
        limit: usize,
    },
    /// The prompt fits, but the prompt plus `max_tokens` would run past the und context.
    #[error(
        "the prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the model's context of {limit} tokens; lower max_tokens to at most {}",
        limit.saturating_sub(*prompt)
    )]
    ContextOverflow {
        /// Prompt length in tokens, after templating.
        prompt: usize,
        /// The request's `max_tokens`.
        max_tokens: usize,
        /// The und context length (`max_position_embeddings`).
        limit: usize,
    },
    /// The temperature is negative, NaN or infinite.
    #[error("temperature must be a finite number >= 0 (0 = greedy), got {0}")]
    InvalidTemperature(f32),
    /// `top_p` is outside (0, 1] (or NaN).
    #[error("top_p must be in (0, 1], got {0}")]
    InvalidTopP(f32),
    /// A prompt token id is not below the und expert's `vocab_size`.
    #[error("token id {id} is outside the vocabulary of {vocab} entries")]
    TokenOutOfVocab {
        /// The first offending token id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// Loading or running the model failed (checkpoint, backend, memory limit, a cancelled run, ...).
    #[error(transparent)]
    Model(#[from] RunError),
    /// A multi-turn conversation the assistant cannot answer (turn `turn`, counted from 0).
    #[error("conversation turn {turn}: {problem}")]
    Conversation {
        /// The offending turn's index.
        turn: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// An input image could not be used (file, preprocessing, or a checkpoint without a vision tower).
    #[error(transparent)]
    Image(#[from] crate::image::ImageInputError),
}

/// What to generate. Defaults: 256 tokens, greedy (temperature 0), top_p 1, seed 0, stopping at
/// `<|im_end|>` / `<|endoftext|>`. `max_tokens` 0 is allowed and yields an empty answer without running
/// the model (the prompt is still checked).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use hbridge::chat::{ChatRequest, StopReason};
/// use hbridge::engine::{Engine, EngineOptions};
/// use std::ops::ControlFlow;
/// # let dir = std::env::temp_dir().join(format!("hbridge-doc-chat-{}", std::process::id()));
/// # let tiny = hbridge::presets::preset("tiny").unwrap();
/// # hbridge::init::write_checkpoint(&dir, &tiny, 0, hbridge::init::WeightDType::BF16, true)?;
/// // `dir` holds a checkpoint (here the built-in tiny model with random weights).
/// let engine = Engine::load(&dir, &EngineOptions::cpu())?;
/// // Sampled decoding of exactly 5 tokens (no stop tokens), reproducible through the seed.
/// let request = ChatRequest::new()
///     .max_tokens(5)
///     .temperature(0.7)
///     .top_p(0.9)
///     .seed(1)
///     .no_stop();
/// let mut streamed = String::new();
/// let answer = engine.chat("What is a bridge?", &request, |_id, piece| {
///     streamed.push_str(piece);
///     ControlFlow::Continue(())
/// })?;
/// assert_eq!(answer.tokens.len(), 5);
/// assert_eq!(answer.stop_reason, StopReason::MaxTokens);
/// let again = engine.chat("What is a bridge?", &request, |_, _| ControlFlow::Continue(()))?;
/// assert_eq!(answer.tokens, again.tokens);
/// // Parameters are checked before any compute.
/// assert!(ChatRequest::new().top_p(0.0).validate().is_err());
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// Most tokens to generate (default 256); prompt plus `max_tokens` must fit the und context.
    pub max_tokens: usize,
    /// 0 = greedy (argmax); otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Nucleus sampling: sample among the most likely tokens whose probabilities sum to at least `top_p`.
    pub top_p: f32,
    /// Seed of the sampling RNG: the same seed and request give the same tokens.
    pub seed: u64,
    /// Stop at the model's end tokens: the tokenizer's `<|im_end|>` and `<|endoftext|>`, or the und
    /// config's `eos_token_id` when the tokenizer has neither (or there is no tokenizer).
    pub stop_at_eos: bool,
    /// Further token ids that end the answer.
    pub stop_ids: Vec<u32>,
}

impl Default for ChatRequest {
    fn default() -> Self {
        ChatRequest {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_at_eos: true,
            stop_ids: Vec::new(),
        }
    }
}

impl ChatRequest {
    /// The defaults: 256 tokens, greedy, top_p 1, seed 0, stop at the model's end tokens.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the most tokens to generate.
    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }

    /// Sets the sampling temperature: 0 = greedy; otherwise finite and positive.
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    /// Sets the nucleus mass, in (0, 1]; 1 samples from the whole distribution.
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = p;
        self
    }

    /// Sets the seed of the sampling RNG (no effect when greedy).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Greedy decoding (temperature 0).
    pub fn greedy(self) -> Self {
        self.temperature(0.0)
    }

    /// No stop tokens at all (neither the model's end tokens nor any added): exactly `max_tokens`.
    pub fn no_stop(mut self) -> Self {
        self.stop_at_eos = false;
        self.stop_ids.clear();
        self
    }

    /// Also stop at `id`.
    pub fn stop_token(mut self, id: u32) -> Self {
        self.stop_ids.push(id);
        self
    }

    /// Checks the sampling parameters ([`crate::validate::chat_params`]; the prompt is checked when it
    /// is known).
    pub fn validate(&self) -> Result<(), ChatError> {
        crate::validate::chat_params(self)
    }
}

/// Why decoding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `max_tokens` were generated.
    MaxTokens,
    /// The model produced this stop token (not part of the answer).
    StopToken(u32),
    /// The callback returned `ControlFlow::Break` (the token it was given is part of the answer).
    Cancelled,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::MaxTokens => write!(f, "max tokens"),
            StopReason::StopToken(id) => write!(f, "stop token {id}"),
            StopReason::Cancelled => write!(f, "cancelled"),
        }
    }
}

/// Wall-clock time of a chat answer's stages.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChatTimings {
    /// Until the first token's logits: the prompt's prefill and the step of its last token.
    pub prefill: Duration,
    /// The decode steps after the first token.
    pub decode: Duration,
    /// Number of decode steps (each yields one token).
    pub decode_steps: usize,
    /// Making weights resident during the request (a first request's one-time cost: converting them
    /// on the CPU, uploading them to the GPU), not counted in `prefill` or `decode`.
    pub weights: Duration,
}

impl ChatTimings {
    /// Decode throughput in tokens per second (0 without decode steps).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let s = self.decode.as_secs_f64();
        if self.decode_steps == 0 || s <= 0.0 {
            0.0
        } else {
            self.decode_steps as f64 / s
        }
    }
}

/// A chat answer: its tokens and text, and how and how fast it was produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatOutput {
    /// The answer's token ids; a stop token that ended it is not included.
    pub tokens: Vec<u32>,
    /// The answer decoded with special tokens skipped (empty without a tokenizer).
    pub text: String,
    /// Length of the prompt in tokens (after templating).
    pub prompt_tokens: usize,
    /// Prefill and decode times.
    pub timings: ChatTimings,
    /// Why decoding ended (token limit, stop token, or cancelled by the callback).
    pub stop_reason: StopReason,
}

impl ChatOutput {
    /// No answer yet to a prompt of `prompt_tokens` tokens.
    pub(crate) fn empty(prompt_tokens: usize) -> Self {
        ChatOutput {
            tokens: Vec::new(),
            text: String::new(),
            prompt_tokens,
            timings: ChatTimings::default(),
            stop_reason: StopReason::MaxTokens,
        }
    }
}
