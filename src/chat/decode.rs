//! The decode loop: prefill into a per-layer K/V cache, then one step per token until a stop.

use super::*;
use crate::image::context::prefill_with_images;
use crate::image::{ImageSetup, PreparedImage};
use crate::model::{Model, Outputs, RunError};
use hbridge_engine::cpu::HostTensor;
use hbridge_graph::build::{self, names, positions, UndPrefillSpec};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Instant;
use tokenizers::Tokenizer;

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
    /// Position of the next token minus its index (HF's `rope_deltas`): 0 for text, negative once an
    /// image's tokens share positions (an image of h x w merged tokens advances positions by max(h, w)).
    pos_delta: i64,
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
            pos_delta: 0,
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
fn decode_step(model: &Model, cache: &mut KvCache, token: u32) -> Result<Vec<f32>, RunError> {
    let c = &model.checkpoint.config.und;
    let pos = cache.len;
    let rope_pos = i32::try_from(pos as i64 + cache.pos_delta)
        .map_err(|_| RunError::Request(format!("position of token {pos} is out of range")))?;
    let graph = build::und_decode_step(c, &model.checkpoint.und_names, pos)?;
    let mut inputs: Outputs = HashMap::with_capacity(2 + 2 * cache.layers.len());
    inputs.insert(
        names::UND_IDS.to_string(),
        HostTensor::i32(vec![1], vec![token as i32]),
    );
    inputs.insert(
        names::UND_POSITIONS.to_string(),
        HostTensor::i32(vec![3, 1], vec![rope_pos; 3]),
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
    mut on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
) -> Result<ChatOutput, ChatError> {
    crate::validate::chat_prompt(model, prompt, request)?;
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
        let mut o = match images.filter(|i| !i.images.is_empty()) {
            Some(im) => {
                let (o, pos) = prefill_with_images(model, im.setup, head, im.images, &spec)?;
                let next = pos.iter().copied().max().map_or(0, |m| i64::from(m) + 1);
                cache.pos_delta = next - head.len() as i64;
                o
            }
            None => model.und_prefill(head, positions::text_positions(head.len()), &spec)?,
        };
        cache.append(&mut o, head.len())?;
    } else if images.is_some_and(|i| !i.images.is_empty()) {
        return Err(ChatError::Model(RunError::Request(
            "the prompt's last token cannot be an image".into(),
        )));
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
