//! Prompt templates (DESIGN.md 6) and the checkpoint's tokenizer.

use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// System turn and user turn of OmniGen2's image-generation context, no assistant turn.
pub fn image_context(prompt: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful assistant that generates high-quality images based on user instructions.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
    )
}

/// Why the checkpoint's tokenizer cannot be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The und folder has no `tokenizer.json`.
    #[error("{path}: no tokenizer.json; text prompts need one (token ids can still be given through the API and `forward`)")]
    Missing {
        /// Where `tokenizer.json` was looked for.
        path: PathBuf,
    },
    /// `tokenizer.json` exists but the tokenizers library cannot load it.
    #[error("{path}: cannot load the tokenizer: {message}")]
    Invalid {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizers library's message.
        message: String,
    },
    /// The tokenizer failed on the prompt text (its message).
    #[error("tokenizing the prompt: {0}")]
    Encode(String),
}

/// Loads `<model>/<und_dir>/tokenizer.json`.
pub fn load_tokenizer(model_dir: &Path, und_dir: &str) -> Result<Tokenizer, TokenizerError> {
    let path = model_dir.join(und_dir).join("tokenizer.json");
    if !path.is_file() {
        return Err(TokenizerError::Missing { path });
    }
    Tokenizer::from_file(&path).map_err(|e| TokenizerError::Invalid {
        path,
        message: e.to_string(),
    })
}

/// Token ids of `text`, special tokens recognised in the text, none added.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<i32>, TokenizerError> {
    let enc = tokenizer
        .encode(text, false)
        .map_err(|e| TokenizerError::Encode(e.to_string()))?;
    Ok(enc.get_ids().iter().map(|&i| i as i32).collect())
}
