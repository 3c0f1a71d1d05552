//! The decode loop: prefill into a per-layer K/V cache, then one step per token until a stop.

use super::*;
use crate::backend::States;
use crate::image::context::prefill_with_images_into;
use crate::image::{ImageSetup, PreparedImage};
use crate::model::{Model, Outputs, Phase, RunError};
use hbridge_engine::cpu::HostTensor;
use hbridge_graph::build::{names, positions, UndPrefillSpec};
use std::collections::HashMap;
use std::ops::ControlFlow;
use tokenizers::Tokenizer;

mod step_timing;
pub use step_timing::{profile_decode_step, time_decode_step};

fn take(out: &mut Outputs, name: &str) -> Result<HostTensor, RunError> {
    out.remove(name)
        .ok_or_else(|| RunError::Request(format!("graph produced no `{name}`")))
}

fn take_f32(out: &mut Outputs, name: &str) -> Result<Vec<f32>, RunError> {
    take(out, name)?
        .into_f32()
        .ok_or_else(|| RunError::Request(format!("graph output `{name}` is not f32")))
}

/// Cache rows are allocated in multiples of this: requests of nearby lengths share one decode graph
/// (built and planned once per capacity), and the rounding wastes fewer than this many rows per layer.
pub(crate) const CACHE_ROWS: usize = 64;

/// The und expert's K/V cache: post-RoPE K and V `[capacity, K*D]` per layer, held by the model's
/// backend for the whole request (device memory on CUDA), of which the first `len` rows are filled.
/// Decode steps write their own rows in place, so no step moves the cache.
pub(super) struct KvCache {
    states: States,
    capacity: usize,
    len: usize,
    kv_dim: usize,
    layers: usize,
    /// Position of the next token minus its index (HF's `rope_deltas`): 0 for text, negative once an
    /// image's tokens share positions (an image of h x w merged tokens advances positions by max(h, w)).
    pos_delta: i64,
}

impl KvCache {
    /// A cache for `prompt` tokens and the answer's room: the whole answer when the context bounds
    /// it, else a first 1024 tokens (it grows).
    pub(super) fn for_prompt(
        model: &Model,
        prompt: usize,
        max_tokens: usize,
    ) -> Result<Self, RunError> {
        let c = &model.checkpoint.config.und;
        let room = match c.max_position_embeddings {
            Some(_) => max_tokens,
            None => max_tokens.min(1024),
        };
        KvCache::new(model, c.num_layers, c.kv_dim(), prompt.saturating_add(room))
    }

    fn new(model: &Model, layers: usize, kv_dim: usize, rows: usize) -> Result<Self, RunError> {
        let mut cache = KvCache {
            states: model.new_states(),
            capacity: 0,
            len: 0,
            kv_dim,
            layers,
            pos_delta: 0,
        };
        cache.alloc(model, rows.max(1).next_multiple_of(CACHE_ROWS))?;
        Ok(cache)
    }

    /// (Re)allocates every layer's cache with `capacity` rows, keeping the filled rows.
    fn alloc(&mut self, model: &Model, capacity: usize) -> Result<(), RunError> {
        let mut states = model.new_states();
        for i in 0..self.layers {
            for name in [names::cache_k(i), names::cache_v(i)] {
                model.alloc_state(&mut states, &name, &[capacity, self.kv_dim])?;
                if self.len > 0 {
                    let old = model.read_state(&self.states, &name)?;
                    let old = old.as_f32().unwrap_or_default();
                    model.write_state_rows(
                        &mut states,
                        &name,
                        0,
                        &old[..self.len * self.kv_dim],
                    )?;
                }
            }
        }
        self.states = states;
        self.capacity = capacity;
        Ok(())
    }

    /// Room for `n` more rows: grows (doubling) when full, which only happens for answers longer than
    /// the room reserved up front.
    pub(super) fn reserve(&mut self, model: &Model, n: usize) -> Result<(), RunError> {
        if self.len + n > self.capacity {
            let want = (self.len + n).max(2 * self.capacity);
            self.alloc(model, want.next_multiple_of(CACHE_ROWS))?;
        }
        Ok(())
    }

    /// Rows filled.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The inputs of a decode graph running `tokens` after the filled rows: their ids, their M-RoPE
    /// positions (text: the same on all three axes, continuing after `pos_delta`) and the row their K/V
    /// are written from.
    pub(super) fn step_inputs(&self, tokens: &[u32]) -> Result<Outputs, RunError> {
        let n = tokens.len();
        let start = self.len as i64 + self.pos_delta;
        let pos: Vec<i32> = (0..n as i64)
            .map(|i| i32::try_from(start + i))
            .collect::<Result<_, _>>()
            .map_err(|_| RunError::Request(format!("positions from {start} are out of range")))?;
        let row = i32::try_from(self.len)
            .map_err(|_| RunError::Request(format!("cache row {} is out of range", self.len)))?;
        Ok(HashMap::from([
            (
                names::UND_IDS.to_string(),
                HostTensor::i32(vec![n], tokens.iter().map(|&t| t as i32).collect()),
            ),
            (
                names::UND_POSITIONS.to_string(),
                HostTensor::i32(vec![3, n], pos.repeat(3)),
            ),
            (
                names::UND_CACHE_LEN.to_string(),
                HostTensor::i32(vec![1], vec![row]),
            ),
        ]))
    }

    /// Runs `chunk` (tokens following the filled rows, text only) through the model as one graph
    /// ([`Model::und_decode_chunk`]), its K/V appended to the cache.
    pub(super) fn prefill_chunk(&mut self, model: &Model, chunk: &[u32]) -> Result<(), RunError> {
        let n = chunk.len();
        if n == 0 {
            return Ok(());
        }
        self.reserve(model, n + 1)?;
        let inputs = self.step_inputs(chunk)?;
        model.und_decode_chunk(self.capacity, n, &inputs, &mut self.states)?;
        self.len += n;
        Ok(())
    }
}

/// One decode step of `token` at position `cache.len`: returns its logits `[V]`; the step's K/V land in
/// the cache on the backend.
pub(super) fn decode_step(
    model: &Model,
    cache: &mut KvCache,
    token: u32,
) -> Result<Vec<f32>, RunError> {
    cache.reserve(model, 1)?;
    let inputs = cache.step_inputs(&[token])?;
    let mut out = model.und_decode_step(cache.capacity, &inputs, &mut cache.states)?;
    cache.len += 1;
    take_f32(&mut out, "und.logits")
}

/// The model's default stop tokens: `<|im_end|>` and `<|endoftext|>` from the tokenizer, or the und
/// config's `eos_token_id` when the tokenizer has neither (or is absent).
pub fn default_stop_ids(model: &Model, tokenizer: Option<&Tokenizer>) -> Vec<u32> {
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

/// Generates the answer to `prompt` (token ids, already templated) on `model`. `default_stops` are the
/// ids `request.stop_at_eos` stands for (see [`default_stop_ids`]); `tokenizer` only serves the text
/// (pieces and `text` are empty without one). `on_token(id, piece)` is called once per answer token
/// (never for the stop token), `piece` being the text it completes (possibly empty, e.g. inside a
/// multi-byte character); returning `ControlFlow::Break` ends decoding, that token included. The
/// pieces concatenate to `text`, except for a trailing incomplete UTF-8 sequence.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    request: &ChatRequest,
    default_stops: &[u32],
    tokenizer: Option<&Tokenizer>,
    on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
) -> Result<ChatOutput, ChatError> {
    generate_with_images(
        model,
        prompt,
        None,
        request,
        default_stops,
        tokenizer,
        on_token,
    )
}

/// Images of a chat prompt: how the checkpoint takes them and the prepared images, in the order of the
/// prompt's image-pad runs.
#[derive(Clone, Copy)]
pub struct ChatImages<'a> {
    /// The checkpoint's image processor settings, image-pad token id and merge size.
    pub setup: &'a ImageSetup,
    /// The prepared images, one per run of `<|image_pad|>` tokens in the prompt, in order.
    pub images: &'a [PreparedImage],
}

/// [`generate`] over a prompt holding images: the prefill runs the vision tower and places its tokens
/// at the image pads, with HF's M-RoPE positions; decoding continues after the largest position.
pub fn generate_with_images(
    model: &Model,
    prompt: &[u32],
    images: Option<ChatImages<'_>>,
    request: &ChatRequest,
    default_stops: &[u32],
    tokenizer: Option<&Tokenizer>,
    on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
) -> Result<ChatOutput, ChatError> {
    crate::validate::chat_prompt(model, prompt, request)?;
    if request.max_tokens == 0 {
        return Ok(ChatOutput::empty(prompt.len()));
    }
    let phase = Phase::start(model);
    let mut cache = KvCache::for_prompt(model, prompt.len(), request.max_tokens)?;
    prefill_context(model, &mut cache, prompt, images)?;
    let last = prompt[prompt.len() - 1];
    answer(
        model,
        &mut cache,
        last,
        prompt.len(),
        request,
        default_stops,
        tokenizer,
        on_token,
        phase,
    )
}

/// Prefills every token of `prompt` but its last into an empty `cache` (with the images' tokens and
/// M-RoPE positions when there are images); the last token's decode step then gives the first answer
/// token's logits, so no `[L, V]` head is computed.
pub(super) fn prefill_context(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    images: Option<ChatImages<'_>>,
) -> Result<(), ChatError> {
    let c = &model.checkpoint.config.und;
    let ids: Vec<i32> = prompt.iter().map(|&id| id as i32).collect();
    let head = &ids[..ids.len().saturating_sub(1)];
    let images = images.filter(|i| !i.images.is_empty());
    if head.is_empty() {
        if images.is_some() {
            return Err(ChatError::Model(RunError::Request(
                "the prompt's last token cannot be an image".into(),
            )));
        }
        return Ok(());
    }
    let spec = UndPrefillSpec {
        len: head.len(),
        kv_layers: (0..c.num_layers).collect(),
        logits: false,
        hidden_states: false,
        final_hidden: false,
        // The prefill writes every layer's K/V straight into the cache on the backend.
        kv_cache: Some(cache.capacity),
    };
    let into = Some((&mut cache.states, 0));
    match images {
        Some(im) => {
            let (_, pos) = prefill_with_images_into(model, im.setup, head, im.images, &spec, into)?;
            let next = pos.iter().copied().max().map_or(0, |m| i64::from(m) + 1);
            cache.pos_delta = next - head.len() as i64;
        }
        None => {
            let pos = positions::text_positions(head.len());
            model.und_prefill_into(head, pos, &spec, into)?;
        }
    }
    cache.len = head.len();
    Ok(())
}

/// Decodes the answer after `last`, the one prompt token not yet in `cache` (`prompt_tokens` long in
/// all), until a stop: see [`generate`]. `phase` started with the prompt's prefill, which this ends
/// after the first decode step.
#[allow(clippy::too_many_arguments)] // the request's parts, as `generate_with_images` takes them
pub(super) fn answer(
    model: &Model,
    cache: &mut KvCache,
    last: u32,
    prompt_tokens: usize,
    request: &ChatRequest,
    default_stops: &[u32],
    tokenizer: Option<&Tokenizer>,
    mut on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
    phase: Phase,
) -> Result<ChatOutput, ChatError> {
    let mut stops: Vec<u32> = request.stop_ids.clone();
    if request.stop_at_eos {
        stops.extend_from_slice(default_stops);
    }
    let mut out = ChatOutput::empty(prompt_tokens);
    let mut rng = Rng::new(request.seed);
    let logits = decode_step(model, cache, last)?;
    let mut next = sample(&logits, request.temperature, request.top_p, &mut rng);
    let (prefill, weights) = phase.end(model);
    out.timings.prefill = prefill;
    out.timings.weights = weights;

    let phase = Phase::start(model);
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
        let logits = decode_step(model, cache, next)?;
        out.timings.decode_steps += 1;
        next = sample(&logits, request.temperature, request.top_p, &mut rng);
    }
    let (decode, weights) = phase.end(model);
    out.timings.decode = decode;
    out.timings.weights += weights;
    if let Some(t) = tokenizer {
        out.text = t.decode(&out.tokens, true).unwrap_or_default();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tiny() -> Model {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/model");
        Model::open(&dir).expect("the tiny fixture model")
    }

    /// A prefill into the K/V cache leaves there, bit for bit, the K/V a prefill returns as outputs;
    /// the rows past it stay as they were.
    #[test]
    fn prefill_into_the_cache_equals_its_outputs() {
        let model = tiny();
        let c = &model.checkpoint.config.und;
        let ids: Vec<i32> = (0..11).map(|i| (i * 7 + 3) % c.vocab_size as i32).collect();
        let mut spec = UndPrefillSpec {
            len: ids.len(),
            kv_layers: (0..c.num_layers).collect(),
            logits: false,
            hidden_states: false,
            final_hidden: false,
            kv_cache: None,
        };
        let pos = positions::text_positions(ids.len());
        let mut out = model.und_prefill(&ids, pos.clone(), &spec).unwrap();
        let mut cache = KvCache::new(&model, c.num_layers, c.kv_dim(), ids.len() + 4).unwrap();
        spec.kv_cache = Some(cache.capacity);
        let none = model
            .und_prefill_into(&ids, pos, &spec, Some((&mut cache.states, 2)))
            .unwrap();
        assert!(none.is_empty(), "nothing comes back: {:?}", none.keys());
        let kd = c.kv_dim();
        for i in 0..c.num_layers {
            for (o, s) in [
                (names::und_k(i), names::cache_k(i)),
                (names::und_v(i), names::cache_v(i)),
            ] {
                let want = out.remove(&o).unwrap().into_f32().unwrap();
                let got = model.read_state(&cache.states, &s).unwrap();
                let got = got.as_f32().unwrap();
                let rows = 2 * kd..(2 + ids.len()) * kd;
                assert!(got[rows.clone()]
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
                assert!(got[..rows.start].iter().all(|&v| v == 0.0), "{s}: head");
                assert!(got[rows.end..].iter().all(|&v| v == 0.0), "{s}: tail");
            }
        }
        // A cache too small for the prompt is refused when the graph is built.
        spec.kv_cache = Some(ids.len() - 1);
        let e = model
            .und_prefill_into(&ids, positions::text_positions(ids.len()), &spec, None)
            .unwrap_err();
        assert!(e.to_string().contains("cannot take"), "{e}");
    }

    /// Decoding past the room reserved up front grows the cache and keeps every filled row.
    #[test]
    fn a_full_cache_grows_and_keeps_its_rows() {
        let model = tiny();
        let c = &model.checkpoint.config.und;
        let mut cache = KvCache::new(&model, c.num_layers, c.kv_dim(), 3).unwrap();
        assert_eq!(cache.capacity, CACHE_ROWS);
        let mut tokens = Vec::new();
        for t in 0..3u32 {
            tokens.push(decode_step(&model, &mut cache, t).unwrap());
        }
        let before = model.read_state(&cache.states, &names::cache_k(0)).unwrap();
        cache.len = CACHE_ROWS; // as if full: the next step must grow it
        cache.reserve(&model, 1).unwrap();
        assert_eq!(cache.capacity, 2 * CACHE_ROWS);
        let after = model.read_state(&cache.states, &names::cache_k(0)).unwrap();
        let n = CACHE_ROWS * c.kv_dim();
        assert_eq!(
            before.as_f32().unwrap()[..n],
            after.as_f32().unwrap()[..n],
            "filled rows survive the move"
        );
        assert!(after.as_f32().unwrap()[n..].iter().all(|&v| v == 0.0));
        assert!(tokens.iter().all(|l| l.len() == c.vocab_size));
    }
}
