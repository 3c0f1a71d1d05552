//! Incremental detokenization for streaming: emits only complete UTF-8 text.

use tokenizers::Tokenizer;

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
    /// An empty stream that decodes with `tokenizer`.
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
