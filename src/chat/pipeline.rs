//! A model with its (optional) tokenizer: text in, answer out.

use super::*;
use crate::image::{ImageLimits, ImageSetup, PreparedImage};
use crate::model::Model;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Where the tokenizer stands: text prompts need it, token ids do not.
enum TokenizerState {
    Loaded(Box<Tokenizer>),
    Missing(PathBuf),
    Invalid(PathBuf, String),
}

/// A model ready to chat: the CPU model, its tokenizer (when there is one) and its stop tokens.
pub struct ChatPipeline {
    model: Model,
    tokenizer: TokenizerState,
    default_stops: Vec<u32>,
}

impl ChatPipeline {
    /// Opens the checkpoint in `dir` and `<und>/tokenizer.json`. A missing or unreadable tokenizer is
    /// not an error here: text requests then fail with [`ChatError::NoTokenizer`] /
    /// [`ChatError::BadTokenizer`], and [`ChatPipeline::generate_from_ids`] still works.
    pub fn open(dir: &Path) -> Result<Self, ChatError> {
        Self::open_on(dir, hbridge_engine::device::Device::Cpu)
    }

    /// [`ChatPipeline::open`] on `device`.
    pub fn open_on(dir: &Path, device: hbridge_engine::device::Device) -> Result<Self, ChatError> {
        Self::open_with(dir, device, crate::model::WeightStorage::F32)
    }

    /// [`ChatPipeline::open_on`] with the CPU backend's weights kept as `storage`.
    pub fn open_with(
        dir: &Path,
        device: hbridge_engine::device::Device,
        storage: crate::model::WeightStorage,
    ) -> Result<Self, ChatError> {
        let model = Model::open_with(dir, device, storage)?;
        let tokenizer =
            match crate::prompt::load_tokenizer(dir, &model.checkpoint.config.layout.und_dir) {
                Ok(t) => TokenizerState::Loaded(Box::new(t)),
                Err(crate::prompt::TokenizerError::Invalid { path, message }) => {
                    TokenizerState::Invalid(path, message)
                }
                Err(_) => TokenizerState::Missing(
                    dir.join(&model.checkpoint.config.layout.und_dir)
                        .join(TOKENIZER_FILE),
                ),
            };
        Ok(Self::with_state(model, tokenizer))
    }

    /// A pipeline over an opened model and an optional tokenizer (without one, text requests fail with
    /// [`ChatError::NoTokenizer`] naming `tokenizer.json`, as the model's folder is not known here).
    pub fn new(model: Model, tokenizer: Option<Tokenizer>) -> Self {
        let state = match tokenizer {
            Some(t) => TokenizerState::Loaded(Box::new(t)),
            None => TokenizerState::Missing(PathBuf::from(TOKENIZER_FILE)),
        };
        Self::with_state(model, state)
    }

    fn with_state(model: Model, tokenizer: TokenizerState) -> Self {
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

    /// The loaded model (checkpoint, configs, backend) the pipeline runs.
    pub fn model(&self) -> &Model {
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
        self.encode_turns(&[Turn::user(user_text)])
    }

    /// The chat-templated conversation as token ids (`add_special_tokens = false`); a user turn's
    /// images become their tokens before its text. Checked by [`check_turns`] first.
    pub fn encode_turns(&self, turns: &[Turn<'_, PreparedImage>]) -> Result<Vec<u32>, ChatError> {
        check_turns(turns)?;
        let setup = match turns.iter().any(|t| !t.images.is_empty()) {
            true => Some(self.image_setup()?),
            false => None,
        };
        let contents: Vec<String> = turns
            .iter()
            .map(|t| match &setup {
                Some(s) => s.prompt_text(t.images) + t.text,
                None => t.text.to_string(),
            })
            .collect();
        let prompt = conversation_template(
            turns
                .iter()
                .zip(&contents)
                .map(|(t, c)| (t.role, c.as_str())),
        );
        let encoding = self
            .tokenizer()?
            .encode(prompt, false)
            .map_err(|e| ChatError::Tokenize(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// How this checkpoint takes images (processor settings, image token); an error when it has no
    /// vision tower.
    pub fn image_setup(&self) -> Result<ImageSetup, ChatError> {
        Ok(ImageSetup::new(&self.model)?)
    }

    /// Decodes and preprocesses image files for this checkpoint, in order; errors name the file.
    pub fn load_images(
        &self,
        paths: &[PathBuf],
        limits: &ImageLimits,
    ) -> Result<Vec<PreparedImage>, ChatError> {
        Ok(self.image_setup()?.load_files(paths, limits)?)
    }

    /// The chat-templated prompt with `images` (their tokens first, then `user_text`, DESIGN.md 6).
    pub fn encode_prompt_with_images(
        &self,
        user_text: &str,
        images: &[PreparedImage],
    ) -> Result<Vec<u32>, ChatError> {
        self.encode_turns(&[Turn::user(user_text).with_images(images)])
    }

    /// Answers `user_text` about `images` (prepared by [`ChatPipeline::load_images`]), streaming as
    /// [`ChatPipeline::chat_stream`] does. No images is a text-only chat.
    pub fn chat_stream_with_images(
        &self,
        user_text: &str,
        images: &[PreparedImage],
        request: &ChatRequest,
        on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, ChatError> {
        self.chat_stream_turns(
            &[Turn::user(user_text).with_images(images)],
            request,
            on_token,
        )
    }

    /// Answers the last user turn of a conversation (see [`Turn`]), streaming as
    /// [`ChatPipeline::chat_stream`] does. The whole conversation is prefilled.
    pub fn chat_stream_turns(
        &self,
        turns: &[Turn<'_, PreparedImage>],
        request: &ChatRequest,
        on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, ChatError> {
        request.validate()?;
        let ids = self.encode_turns(turns)?;
        self.answer_encoded(&ids, turns, request, on_token)
    }

    /// Answers `ids`, the conversation `turns` encoded by [`ChatPipeline::encode_turns`] (the engine
    /// encodes first to size its memory reservation).
    pub(crate) fn answer_encoded(
        &self,
        ids: &[u32],
        turns: &[Turn<'_, PreparedImage>],
        request: &ChatRequest,
        on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, ChatError> {
        let images = all_images(turns);
        let setup = match images.is_empty() {
            true => None,
            false => Some(self.image_setup()?),
        };
        generate_with_images(
            &self.model,
            ids,
            setup.as_ref().map(|setup| ChatImages {
                setup,
                images: &images,
            }),
            request,
            &self.default_stops,
            self.tokenizer().ok(),
            on_token,
        )
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
        self.chat_stream_turns(&[Turn::user(user_text)], request, on_token)
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

/// Every turn's images in conversation order (the order of their tokens in the prompt); borrowed when
/// one turn holds them all.
fn all_images<'a, I: Clone>(turns: &[Turn<'a, I>]) -> std::borrow::Cow<'a, [I]> {
    let mut with = turns.iter().filter(|t| !t.images.is_empty());
    match (with.next(), with.next()) {
        (None, _) => std::borrow::Cow::Borrowed(&[]),
        (Some(t), None) => std::borrow::Cow::Borrowed(t.images),
        _ => turns
            .iter()
            .flat_map(|t| t.images.iter().cloned())
            .collect(),
    }
}
