//! The chat pipeline of the und expert: chat template (DESIGN.md 6), tokenization, a prefill, then
//! token-by-token decoding against a K/V cache kept across steps, with greedy or temperature + top-p
//! (nucleus) sampling from a seeded RNG, stop tokens, and a per-token streaming callback.
//!
//! ```no_run
//! use hbridge::chat::{ChatPipeline, ChatRequest};
//! use std::ops::ControlFlow;
//!
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

use crate::cpu_model::{CpuModel, Outputs, RunError};
use hbridge_engine::cpu::HostTensor;
use hbridge_graph::build::{self, names, positions, UndPrefillSpec};
use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;

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

    /// Checks the sampling parameters (the prompt is checked when it is known).
    pub fn validate(&self) -> Result<(), ChatError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(ChatError::InvalidTemperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ChatError::InvalidTopP(self.top_p));
        }
        Ok(())
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

/// Deterministic SplitMix64 random numbers: the same seed gives the same sequence on every platform.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Index of the largest logit (the first on ties; NaN never wins; 0 for an empty or all-NaN row).
pub fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0 as u32
}

/// Picks the next token from one row of logits: argmax at temperature 0, else a draw from
/// `softmax(logits / temperature)` restricted to the top-`top_p` nucleus. Expects parameters that passed
/// [`ChatRequest::validate`]; degenerate rows (all NaN, infinities) fall back to argmax.
pub fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut Rng) -> u32 {
    if temperature <= 0.0 || logits.is_empty() || temperature.is_nan() {
        return argmax(logits);
    }
    let best = argmax(logits);
    let max = logits[best as usize];
    if !max.is_finite() {
        return best;
    }
    let t = temperature as f64;
    let probs: Vec<f64> = logits
        .iter()
        .map(|&x| {
            if x.is_nan() {
                0.0
            } else {
                ((x as f64 - max as f64) / t).exp()
            }
        })
        .collect();
    let total: f64 = probs.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return best;
    }
    let draw = rng.next_f64();
    if top_p >= 1.0 {
        return pick(probs.iter().copied().enumerate(), total, draw).unwrap_or(best);
    }
    // The nucleus: the most likely tokens (ties by index) until their mass reaches top_p.
    let mut order: Vec<usize> = (0..probs.len()).filter(|&i| probs[i] > 0.0).collect();
    order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let target = top_p as f64 * total;
    let mut mass = 0.0;
    let mut keep = 0;
    for &i in &order {
        mass += probs[i];
        keep += 1;
        if mass >= target {
            break;
        }
    }
    order.truncate(keep.max(1));
    let kept: f64 = order.iter().map(|&i| probs[i]).sum();
    pick(order.iter().map(|&i| (i, probs[i])), kept, draw).unwrap_or(best)
}

/// The entry where the running mass first exceeds `draw * total`.
fn pick(items: impl Iterator<Item = (usize, f64)>, total: f64, draw: f64) -> Option<u32> {
    let target = draw * total;
    let mut acc = 0.0;
    let mut last = None;
    for (i, p) in items {
        if p <= 0.0 {
            continue;
        }
        acc += p;
        last = Some(i as u32);
        if acc > target {
            return last;
        }
    }
    last
}

/// Incremental detokenization (special tokens skipped): each step decodes a short window of the
/// generated ids and returns only the new text, holding back a trailing incomplete UTF-8 sequence
/// (decoded as U+FFFD) until the token that completes it arrives.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the window whose text has been emitted up to `read`.
    prefix: usize,
    read: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        TextStream {
            tokenizer,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }

    /// Adds the next token; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        let before = self.decode(&self.ids[self.prefix..self.read]);
        let now = self.decode(&self.ids[self.prefix..]);
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') {
            return String::new();
        }
        let piece = match now.strip_prefix(before.as_str()) {
            Some(p) => p,
            None => now.get(before.len()..).unwrap_or_default(),
        };
        let piece = piece.to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        piece
    }
}

fn take(out: &mut Outputs, name: &str) -> Result<HostTensor, RunError> {
    out.remove(name)
        .ok_or_else(|| RunError::Request(format!("graph produced no `{name}`")))
}

fn take_f32(out: &mut Outputs, name: &str) -> Result<Vec<f32>, RunError> {
    take(out, name)?
        .into_f32()
        .ok_or_else(|| RunError::Request(format!("graph output `{name}` is not f32")))
}

/// The und expert's K/V cache: post-RoPE K and V `[len, K*D]` per layer, appended to at each step.
struct KvCache {
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
    kv_dim: usize,
}

impl KvCache {
    fn new(num_layers: usize, kv_dim: usize, capacity: usize) -> Self {
        KvCache {
            layers: (0..num_layers)
                .map(|_| {
                    (
                        Vec::with_capacity(capacity * kv_dim),
                        Vec::with_capacity(capacity * kv_dim),
                    )
                })
                .collect(),
            len: 0,
            kv_dim,
        }
    }

    /// Appends `n` positions' K/V of every layer from a graph's `und.k.{i}` / `und.v.{i}` outputs.
    fn append(&mut self, out: &mut Outputs, n: usize) -> Result<(), RunError> {
        for (i, (k, v)) in self.layers.iter_mut().enumerate() {
            let nk = take_f32(out, &names::und_k(i))?;
            let nv = take_f32(out, &names::und_v(i))?;
            if nk.len() != n * self.kv_dim || nv.len() != n * self.kv_dim {
                return Err(RunError::Request(format!(
                    "und layer {i}: K/V of {} / {} values, expected {}",
                    nk.len(),
                    nv.len(),
                    n * self.kv_dim
                )));
            }
            k.extend_from_slice(&nk);
            v.extend_from_slice(&nv);
        }
        self.len += n;
        Ok(())
    }
}

/// One decode step of `token` at position `cache.len`: returns its logits `[V]` and appends its K/V.
/// The cache's vectors are lent to the step's inputs (moved, not copied) and taken back afterwards.
fn decode_step(model: &CpuModel, cache: &mut KvCache, token: u32) -> Result<Vec<f32>, RunError> {
    let c = &model.checkpoint.config.und;
    let pos = cache.len;
    let graph = build::und_decode_step(c, &model.checkpoint.und_names, pos)?;
    let mut inputs: Outputs = HashMap::with_capacity(2 + 2 * cache.layers.len());
    inputs.insert(
        names::UND_IDS.to_string(),
        HostTensor::i32(vec![1], vec![token as i32]),
    );
    inputs.insert(
        names::UND_POSITIONS.to_string(),
        HostTensor::i32(vec![3, 1], vec![pos as i32; 3]),
    );
    if pos > 0 {
        for (i, (k, v)) in cache.layers.iter_mut().enumerate() {
            let shape = vec![pos, cache.kv_dim];
            inputs.insert(
                names::past_k(i),
                HostTensor::f32(shape.clone(), std::mem::take(k)),
            );
            inputs.insert(names::past_v(i), HostTensor::f32(shape, std::mem::take(v)));
        }
    }
    let result = model.run(&graph, &inputs);
    if pos > 0 {
        for (i, (k, v)) in cache.layers.iter_mut().enumerate() {
            *k = inputs
                .remove(&names::past_k(i))
                .and_then(HostTensor::into_f32)
                .unwrap_or_default();
            *v = inputs
                .remove(&names::past_v(i))
                .and_then(HostTensor::into_f32)
                .unwrap_or_default();
        }
    }
    let mut out = result?;
    cache.append(&mut out, 1)?;
    take_f32(&mut out, "und.logits")
}

/// The model's default stop tokens: `<|im_end|>` and `<|endoftext|>` from the tokenizer, or the und
/// config's `eos_token_id` when the tokenizer has neither (or is absent).
pub fn default_stop_ids(model: &CpuModel, tokenizer: Option<&Tokenizer>) -> Vec<u32> {
    let mut ids: Vec<u32> = tokenizer
        .map(|t| {
            [IM_END, END_OF_TEXT]
                .iter()
                .filter_map(|s| t.token_to_id(s))
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        let eos = model.checkpoint.config.und.special_tokens.eos_token_id;
        ids.extend(eos.and_then(|e| u32::try_from(e).ok()));
    }
    ids.dedup();
    ids
}

/// Checks a request against a prompt of `prompt` ids: parameters, emptiness, vocabulary, context.
fn check(model: &CpuModel, prompt: &[u32], request: &ChatRequest) -> Result<(), ChatError> {
    request.validate()?;
    if prompt.is_empty() {
        return Err(ChatError::EmptyPrompt);
    }
    let c = &model.checkpoint.config.und;
    let vocab = c.vocab_size.min(i32::MAX as usize);
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(ChatError::TokenOutOfVocab { id, vocab });
    }
    if let Some(limit) = c.max_position_embeddings {
        if prompt.len() > limit {
            return Err(ChatError::PromptTooLong {
                tokens: prompt.len(),
                limit,
            });
        }
        if prompt.len().saturating_add(request.max_tokens) > limit {
            return Err(ChatError::ContextOverflow {
                prompt: prompt.len(),
                max_tokens: request.max_tokens,
                limit,
            });
        }
    }
    Ok(())
}

/// Generates the answer to `prompt` (token ids, already templated) on `model`. `default_stops` are the
/// ids `request.stop_at_eos` stands for (see [`default_stop_ids`]); `tokenizer` only serves the text
/// (pieces and `text` are empty without one). `on_token(id, piece)` is called once per answer token
/// (never for the stop token), `piece` being the text it completes (possibly empty, e.g. inside a
/// multi-byte character); returning `ControlFlow::Break` ends decoding, that token included. The
/// pieces concatenate to `text`, except for a trailing incomplete UTF-8 sequence.
pub fn generate(
    model: &CpuModel,
    prompt: &[u32],
    request: &ChatRequest,
    default_stops: &[u32],
    tokenizer: Option<&Tokenizer>,
    mut on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
) -> Result<ChatOutput, ChatError> {
    check(model, prompt, request)?;
    let c = &model.checkpoint.config.und;
    let mut stops: Vec<u32> = request.stop_ids.clone();
    if request.stop_at_eos {
        stops.extend_from_slice(default_stops);
    }
    let mut out = ChatOutput {
        tokens: Vec::new(),
        text: String::new(),
        prompt_tokens: prompt.len(),
        timings: ChatTimings::default(),
        stop_reason: StopReason::MaxTokens,
    };
    if request.max_tokens == 0 {
        return Ok(out);
    }

    // Prefill: the prompt but its last token fills the cache (no logits: no [L, V] head), then the last
    // token's decode step gives the first answer token's logits.
    let start = Instant::now();
    // Room for the whole answer up front when the context bounds it; else a first 1024 tokens.
    let room = match c.max_position_embeddings {
        Some(_) => request.max_tokens,
        None => request.max_tokens.min(1024),
    };
    let mut cache = KvCache::new(c.num_layers, c.kv_dim(), prompt.len().saturating_add(room));
    let ids: Vec<i32> = prompt.iter().map(|&id| id as i32).collect();
    let (head, last) = ids.split_at(ids.len() - 1);
    if !head.is_empty() {
        let spec = UndPrefillSpec {
            len: head.len(),
            kv_layers: (0..c.num_layers).collect(),
            logits: false,
            hidden_states: false,
            final_hidden: false,
        };
        let mut o = model.und_prefill(head, positions::text_positions(head.len()), &spec)?;
        cache.append(&mut o, head.len())?;
    }
    let mut rng = Rng::new(request.seed);
    let logits = decode_step(model, &mut cache, last[0] as u32)?;
    let mut next = sample(&logits, request.temperature, request.top_p, &mut rng);
    out.timings.prefill = start.elapsed();

    let start = Instant::now();
    let mut stream = tokenizer.map(TextStream::new);
    loop {
        if stops.contains(&next) {
            out.stop_reason = StopReason::StopToken(next);
            break;
        }
        out.tokens.push(next);
        let piece = stream.as_mut().map(|s| s.push(next)).unwrap_or_default();
        if on_token(next, &piece).is_break() {
            out.stop_reason = StopReason::Cancelled;
            break;
        }
        if out.tokens.len() >= request.max_tokens {
            out.stop_reason = StopReason::MaxTokens;
            break;
        }
        let logits = decode_step(model, &mut cache, next)?;
        out.timings.decode_steps += 1;
        next = sample(&logits, request.temperature, request.top_p, &mut rng);
    }
    out.timings.decode = start.elapsed();
    if let Some(t) = tokenizer {
        out.text = t.decode(&out.tokens, true).unwrap_or_default();
    }
    Ok(out)
}

/// Where the tokenizer stands: text prompts need it, token ids do not.
enum TokenizerState {
    Loaded(Box<Tokenizer>),
    Missing(PathBuf),
    Invalid(PathBuf, String),
}

/// A model ready to chat: the CPU model, its tokenizer (when there is one) and its stop tokens.
pub struct ChatPipeline {
    model: CpuModel,
    tokenizer: TokenizerState,
    default_stops: Vec<u32>,
}

impl ChatPipeline {
    /// Opens the checkpoint in `dir` and `<und>/tokenizer.json`. A missing or unreadable tokenizer is
    /// not an error here: text requests then fail with [`ChatError::NoTokenizer`] /
    /// [`ChatError::BadTokenizer`], and [`ChatPipeline::generate_from_ids`] still works.
    pub fn open(dir: &Path) -> Result<Self, ChatError> {
        let model = CpuModel::open(dir)?;
        let path = dir
            .join(&model.checkpoint.config.layout.und_dir)
            .join(TOKENIZER_FILE);
        let tokenizer = if !path.is_file() {
            TokenizerState::Missing(path)
        } else {
            match Tokenizer::from_file(&path) {
                Ok(t) => TokenizerState::Loaded(Box::new(t)),
                Err(e) => TokenizerState::Invalid(path, e.to_string()),
            }
        };
        Ok(Self::with_state(model, tokenizer))
    }

    /// A pipeline over an opened model and an optional tokenizer (without one, text requests fail with
    /// [`ChatError::NoTokenizer`] naming `tokenizer.json`, as the model's folder is not known here).
    pub fn new(model: CpuModel, tokenizer: Option<Tokenizer>) -> Self {
        let state = match tokenizer {
            Some(t) => TokenizerState::Loaded(Box::new(t)),
            None => TokenizerState::Missing(PathBuf::from(TOKENIZER_FILE)),
        };
        Self::with_state(model, state)
    }

    fn with_state(model: CpuModel, tokenizer: TokenizerState) -> Self {
        let loaded = match &tokenizer {
            TokenizerState::Loaded(t) => Some(t.as_ref()),
            _ => None,
        };
        let default_stops = default_stop_ids(&model, loaded);
        ChatPipeline {
            model,
            tokenizer,
            default_stops,
        }
    }

    pub fn model(&self) -> &CpuModel {
        &self.model
    }

    /// The tokenizer, or the typed reason there is none.
    pub fn tokenizer(&self) -> Result<&Tokenizer, ChatError> {
        match &self.tokenizer {
            TokenizerState::Loaded(t) => Ok(t),
            TokenizerState::Missing(path) => Err(ChatError::NoTokenizer { path: path.clone() }),
            TokenizerState::Invalid(path, message) => Err(ChatError::BadTokenizer {
                path: path.clone(),
                message: message.clone(),
            }),
        }
    }

    /// The ids `ChatRequest::stop_at_eos` stops at.
    pub fn default_stop_ids(&self) -> &[u32] {
        &self.default_stops
    }

    /// The chat-templated prompt of `user_text` as token ids (`add_special_tokens = false`).
    pub fn encode_prompt(&self, user_text: &str) -> Result<Vec<u32>, ChatError> {
        if user_text.trim().is_empty() {
            return Err(ChatError::EmptyPrompt);
        }
        let tokenizer = self.tokenizer()?;
        let encoding = tokenizer
            .encode(chat_template(user_text), false)
            .map_err(|e| ChatError::Tokenize(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Answers `user_text` (an empty or blank text is [`ChatError::EmptyPrompt`]).
    pub fn chat(&self, user_text: &str, request: &ChatRequest) -> Result<ChatOutput, ChatError> {
        self.chat_stream(user_text, request, |_, _| ControlFlow::Continue(()))
    }

    /// Answers `user_text`, calling `on_token(id, text_piece)` as each token arrives (see [`generate`]).
    pub fn chat_stream(
        &self,
        user_text: &str,
        request: &ChatRequest,
        on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, ChatError> {
        request.validate()?;
        let ids = self.encode_prompt(user_text)?;
        self.generate_from_ids(&ids, request, on_token)
    }

    /// Generates after `prompt_ids` taken as they are (no template is added): the entry point without
    /// a tokenizer. The text is decoded when a tokenizer is loaded, and empty otherwise.
    pub fn generate_from_ids(
        &self,
        prompt_ids: &[u32],
        request: &ChatRequest,
        on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, ChatError> {
        let tokenizer = self.tokenizer().ok();
        generate(
            &self.model,
            prompt_ids,
            request,
            &self.default_stops,
            tokenizer,
            on_token,
        )
    }
}
