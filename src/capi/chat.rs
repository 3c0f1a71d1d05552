//! Chat through the C ABI: a text prompt, optionally about images, answered token by token through a
//! callback that can stop the answer.

use super::error::{chat_status, guard, HbridgeStatus};
use super::image::rgb_images;
use super::options::{HbridgeChatOptions, HbridgeImageView};
use super::{engine_ref, text, HbridgeEngine, HbridgeTokenCallback};
use std::ffi::{c_char, c_void, CString};
use std::ops::ControlFlow;

/// Answers `prompt` with the chat template, calling `on_token` (may be null) per answer token; stores
/// the number of answer tokens in `*out_tokens` when it is not null.
///
/// # Safety
/// `engine` comes from `hbridge_engine_create`; `prompt` is a NUL-terminated string; `options` and
/// `out_tokens` are null or valid; `on_token` is safe to call with `user_data`.
#[no_mangle]
pub unsafe extern "C" fn hbridge_chat(
    engine: *const HbridgeEngine,
    prompt: *const c_char,
    options: *const HbridgeChatOptions,
    on_token: HbridgeTokenCallback,
    user_data: *mut c_void,
    out_tokens: *mut u32,
) -> HbridgeStatus {
    hbridge_chat_with_images(
        engine,
        prompt,
        std::ptr::null(),
        0,
        options,
        on_token,
        user_data,
        out_tokens,
    )
}

/// `hbridge_chat` about `images` (`n_images` RGB views, copied before anything runs; their tokens come
/// first in the user turn). Needs a checkpoint with a vision tower; `images` may be null when
/// `n_images` is 0, which is `hbridge_chat`.
///
/// # Safety
/// As `hbridge_chat`; `images` points to `n_images` views whose `rgb` hold `width * height * 3` bytes.
#[no_mangle]
#[allow(clippy::too_many_arguments)] // a C entry point: its arguments are its interface
pub unsafe extern "C" fn hbridge_chat_with_images(
    engine: *const HbridgeEngine,
    prompt: *const c_char,
    images: *const HbridgeImageView,
    n_images: usize,
    options: *const HbridgeChatOptions,
    on_token: HbridgeTokenCallback,
    user_data: *mut c_void,
    out_tokens: *mut u32,
) -> HbridgeStatus {
    guard(|| {
        let engine = engine_ref(engine)?;
        let prompt = text(prompt, "prompt")?;
        let images = rgb_images(images, n_images)?;
        let request = options
            .as_ref()
            .copied()
            .unwrap_or_else(HbridgeChatOptions::defaults)
            .to_rust();
        let answer = engine
            .chat_with_images(prompt, &images, &request, |id, piece| {
                let Some(cb) = on_token else {
                    return ControlFlow::Continue(());
                };
                let c = CString::new(piece.replace('\0', "\u{FFFD}")).unwrap_or_default();
                let len = c.as_bytes().len();
                if cb(user_data, id, c.as_ptr(), len) != 0 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .map_err(|e| (chat_status(&e), e.to_string()))?;
        if let Some(n) = out_tokens.as_mut() {
            *n = u32::try_from(answer.tokens.len()).unwrap_or(u32::MAX);
        }
        Ok(())
    })
}
