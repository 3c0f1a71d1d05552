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

mod decode;
mod pipeline;
mod sampling;
mod stream;

pub use decode::{default_stop_ids, generate, generate_with_images, ChatImages};
pub use pipeline::ChatPipeline;
pub use sampling::{argmax, sample, Rng};
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

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "no tokenizer at {}: text prompts need it; token ids still work through `generate_from_ids`",
        path.display()
    )]
    NoTokenizer { path: PathBuf },
    #[error(
        "{}: cannot read the tokenizer: {message}; token ids still work through `generate_from_ids`",
        path.display()
    )]
    BadTokenizer { path: PathBuf, message: String },
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("the prompt is {tokens} tokens long; the model's context holds {limit}")]
    PromptTooLong { tokens: usize, limit: usize },
    #[error(
        "the prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the model's context of {limit} tokens; lower max_tokens to at most {}",
        limit.saturating_sub(*prompt)
    )]
    ContextOverflow {
        prompt: usize,
        max_tokens: usize,
        limit: usize,
    },
    #[error("temperature must be a finite number >= 0 (0 = greedy), got {0}")]
    InvalidTemperature(f32),
    #[error("top_p must be in (0, 1], got {0}")]
    InvalidTopP(f32),
    #[error("token id {id} is outside the vocabulary of {vocab} entries")]
    TokenOutOfVocab { id: u32, vocab: usize },
    #[error(transparent)]
    Model(#[from] RunError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageInputError),
}

/// What to generate. Defaults: 256 tokens, greedy (temperature 0), top_p 1, seed 0, stopping at
/// `<|im_end|>` / `<|endoftext|>`. `max_tokens` 0 is allowed and yields an empty answer without running
/// the model (the prompt is still checked).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
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
    pub fn new() -> Self {
        Self::default()
    }

    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }

    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = p;
        self
    }

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

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChatTimings {
    /// Until the first token's logits: the prompt's prefill and the step of its last token.
    pub prefill: Duration,
    /// The decode steps after the first token.
    pub decode: Duration,
    /// Number of decode steps (each yields one token).
    pub decode_steps: usize,
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

#[derive(Debug, Clone, PartialEq)]
pub struct ChatOutput {
    /// The answer's token ids; a stop token that ended it is not included.
    pub tokens: Vec<u32>,
    /// The answer decoded with special tokens skipped (empty without a tokenizer).
    pub text: String,
    /// Length of the prompt in tokens (after templating).
    pub prompt_tokens: usize,
    pub timings: ChatTimings,
    pub stop_reason: StopReason,
}
