//! A chat session: a conversation whose und K/V cache stays on the backend between turns, so each turn
//! prefills only its own tokens (the previous answer's end, the new user turn, the assistant's
//! opening) against the cache instead of the whole conversation. The conversation is the one
//! [`super::conversation_template`] renders, except that earlier answers are the tokens the model
//! generated rather than their text encoded again.
//!
//! A turn with images, the first turn, and a turn after a failed one prefill the whole conversation
//! (images need the vision tower's tokens and their M-RoPE positions, which only the full prefill
//! places).

use super::decode::{answer, prefill_context, KvCache};
use super::*;
use crate::image::PreparedImage;
use crate::model::{Model, Phase};
use std::borrow::Cow;
use std::ops::ControlFlow;

/// A conversation in progress and its K/V cache (on the backend of the model it last ran on). Create
/// one per conversation; [`ChatPipeline::send`] or [`crate::engine::Engine::send`] answer each user turn.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use hbridge::chat::{ChatRequest, ChatSession};
/// use hbridge::engine::{Engine, EngineOptions};
/// use std::ops::ControlFlow;
/// # let dir = std::env::temp_dir().join(format!("hbridge-doc-session-{}", std::process::id()));
/// # let tiny = hbridge::presets::preset("tiny").unwrap();
/// # hbridge::init::write_checkpoint(&dir, &tiny, 0, hbridge::init::WeightDType::BF16, true)?;
/// let engine = Engine::load(&dir, &EngineOptions::cpu())?;
/// let request = ChatRequest::new().max_tokens(4).no_stop();
/// let print = |_id: u32, text: &str| {
///     print!("{text}");
///     ControlFlow::Continue(())
/// };
/// let mut session = ChatSession::with_system("Answer briefly.");
/// let first = engine.send(&mut session, "What is a bridge?", &[], &request, print)?;
/// // The second turn runs only its own tokens against the cache of the first.
/// let second = engine.send(&mut session, "And a tunnel?", &[], &request, print)?;
/// assert!(second.prompt_tokens > first.prompt_tokens + first.tokens.len());
/// assert_eq!(session.turns(), 2);
/// assert_eq!(session.context_tokens(), second.prompt_tokens + second.tokens.len());
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct ChatSession {
    system: Option<String>,
    /// Every token of the conversation so far; the cache holds the first `cache.len` of them (the rest,
    /// at most the last answer's last token, is prefilled with the next turn).
    ids: Vec<u32>,
    /// The conversation's images, in the order of their tokens.
    images: Vec<PreparedImage>,
    /// `None` before the first turn and after a failed one.
    cache: Option<KvCache>,
    /// The model the cache was made on (its address): another model prefills the conversation again.
    model: usize,
    turns: usize,
}

// A session moves between threads with its conversation (a server's handlers, the C ABI's callers).
const _: fn() = || {
    fn send<T: Send>() {}
    send::<ChatSession>();
};

impl ChatSession {
    /// A new conversation with the default system turn.
    pub fn new() -> Self {
        ChatSession::default()
    }

    /// A new conversation with `system` as its system turn.
    pub fn with_system(system: impl Into<String>) -> Self {
        ChatSession {
            system: Some(system.into()),
            ..ChatSession::default()
        }
    }

    /// Forgets the conversation (and frees its cache); the system turn stays.
    pub fn reset(&mut self) {
        *self = ChatSession {
            system: self.system.take(),
            ..ChatSession::default()
        };
    }

    /// Tokens in the conversation so far (prompts and answers).
    pub fn context_tokens(&self) -> usize {
        self.ids.len()
    }

    /// User turns answered so far.
    pub fn turns(&self) -> usize {
        self.turns
    }

    /// Tokens already in the K/V cache (what the next turn does not prefill again).
    pub fn cached_tokens(&self) -> usize {
        self.cache.as_ref().map_or(0, KvCache::len)
    }
}

impl ChatPipeline {
    /// Answers `user_text` (with `images` before it) as the next turn of `session`, streaming as
    /// [`ChatPipeline::chat_stream`] does. On success the turn and its answer (also a cancelled one)
    /// join the conversation; on an error the conversation is as before and its next turn prefills it
    /// whole.
    pub fn send(
        &self,
        session: &mut ChatSession,
        user_text: &str,
        images: &[PreparedImage],
        request: &ChatRequest,
        on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, ChatError> {
        request.validate()?;
        if user_text.trim().is_empty() {
            return Err(ChatError::EmptyPrompt);
        }
        let model = self.model();
        let any_images = !images.is_empty() || !session.images.is_empty();
        let setup = match any_images {
            true => Some(self.image_setup()?),
            false => None,
        };
        let content = match &setup {
            Some(s) => s.prompt_text(images) + user_text,
            None => user_text.to_string(),
        };
        let turn_text = match session.ids.is_empty() {
            true => {
                let system = session.system.iter().map(|s| (Role::System, s.as_str()));
                conversation_template(system.chain([(Role::User, content.as_str())]))
            }
            // The previous answer's end, this turn, the assistant's opening.
            false => {
                format!("{IM_END}\n<|im_start|>user\n{content}{IM_END}\n<|im_start|>assistant\n")
            }
        };
        let turn_ids = self
            .tokenizer()?
            .encode(turn_text, false)
            .map_err(|e| ChatError::Tokenize(e.to_string()))?;
        let mut ids = session.ids.clone();
        ids.extend_from_slice(turn_ids.get_ids());
        crate::validate::chat_prompt(model, &ids, request)?;
        if request.max_tokens == 0 {
            // As for a single prompt: checked, not run; nor does the turn join the conversation.
            return Ok(ChatOutput::empty(ids.len()));
        }
        // The conversation's images after this turn's (copied only when this turn adds some).
        let all_images: Cow<'_, [PreparedImage]> = match images {
            [] => Cow::Borrowed(&session.images),
            _ => session.images.iter().chain(images).cloned().collect(),
        };

        let key = model as *const Model as usize;
        let reuse = images.is_empty() && session.model == key;
        let cache = session.cache.take().filter(|_| reuse);
        let phase = Phase::start(model);
        let prefilled = match cache {
            // The tokens since the cache was last written (the last answer's last token, this
            // turn), but the last, which the answer's first decode step takes.
            Some(mut cache) => {
                let chunk = &ids[cache.len().min(ids.len())..ids.len() - 1];
                cache
                    .prefill_chunk(model, chunk)
                    .map(|()| cache)
                    .map_err(ChatError::from)
            }
            None => KvCache::for_prompt(model, ids.len(), request.max_tokens)
                .map_err(ChatError::from)
                .and_then(|mut cache| {
                    let images = setup.as_ref().map(|setup| ChatImages {
                        setup,
                        images: &all_images,
                    });
                    prefill_context(model, &mut cache, &ids, images)?;
                    Ok(cache)
                }),
        };
        let mut cache = prefilled?;
        let last = ids[ids.len() - 1];
        let out = answer(
            model,
            &mut cache,
            last,
            ids.len(),
            request,
            self.default_stop_ids(),
            self.tokenizer().ok(),
            on_token,
            phase,
        )?;
        ids.extend_from_slice(&out.tokens);
        if let Cow::Owned(all) = all_images {
            session.images = all;
        }
        session.ids = ids;
        session.cache = Some(cache);
        session.model = key;
        session.turns += 1;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode::decode_step;
    use super::*;
    use crate::image::ImageLimits;
    use std::path::PathBuf;

    /// The logits after a prompt prefilled whole, and after its head prefilled whole and its tail
    /// (text after an image, at M-RoPE positions the image moved) as a chunk against the cache, agree
    /// to f32 rounding.
    #[test]
    fn a_chunk_after_an_image_gives_the_full_prefills_logits() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let chat = ChatPipeline::open(&root.join("tests/fixtures/tiny/model")).unwrap();
        let model = chat.model();
        let setup = chat.image_setup().unwrap();
        let image = chat
            .load_images(
                &[root.join("tests/fixtures/vision/a.png")],
                &ImageLimits::default(),
            )
            .unwrap();
        let ids = chat
            .encode_prompt_with_images("What is in this picture, and why?", &image)
            .unwrap();
        let images = Some(ChatImages {
            setup: &setup,
            images: &image,
        });
        let logits = |split: Option<usize>| {
            let mut cache = KvCache::for_prompt(model, ids.len(), 1).unwrap();
            let head = split.unwrap_or(ids.len());
            prefill_context(model, &mut cache, &ids[..head], images).unwrap();
            if split.is_some() {
                // The head's last token was not run: it leads the chunk.
                cache
                    .prefill_chunk(model, &ids[head - 1..ids.len() - 1])
                    .unwrap();
            }
            decode_step(model, &mut cache, ids[ids.len() - 1]).unwrap()
        };
        let whole = logits(None);
        let image_end = ids
            .iter()
            .rposition(|&t| t as i32 == setup.image_token_id)
            .unwrap();
        let chunked = logits(Some(image_end + 3));
        let scale = whole.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = whole
            .iter()
            .zip(&chunked)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-4 * scale,
            "max |diff| {diff} of max |logit| {scale}"
        );
    }
}
