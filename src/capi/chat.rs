//! Chat through the C ABI: a text prompt, optionally about images, or a whole conversation, answered
//! token by token through a callback that can stop the answer.

use super::error::{chat_status, guard, HbridgeStatus};
use super::image::rgb_images;
use super::options::{
    HbridgeChatOptions, HbridgeImageView, HbridgeTurn, HBRIDGE_ROLE_ASSISTANT, HBRIDGE_ROLE_SYSTEM,
    HBRIDGE_ROLE_USER,
};
use super::{engine_ref, invalid, text, Failure, HbridgeEngine, HbridgeTokenCallback};
use crate::chat::{ChatSession, Role, Turn};
use crate::engine::Engine;
use crate::image::RgbImage;
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
        let turn = Turn::user(prompt).with_images(&images);
        answer(engine, &[turn], options, on_token, user_data, out_tokens)
    })
}

/// Answers the last user turn of a conversation (`n_turns` turns: an optional `HBRIDGE_ROLE_SYSTEM`
/// turn first, then user and assistant turns, a user turn last; a user turn's images come before its
/// text), calling `on_token` per answer token. The whole conversation is prefilled on every call.
///
/// # Safety
/// As `hbridge_chat`; `turns` points to `n_turns` turns whose `text` are NUL-terminated strings and
/// whose `images` point to `n_images` views each.
#[no_mangle]
pub unsafe extern "C" fn hbridge_chat_turns(
    engine: *const HbridgeEngine,
    turns: *const HbridgeTurn,
    n_turns: usize,
    options: *const HbridgeChatOptions,
    on_token: HbridgeTokenCallback,
    user_data: *mut c_void,
    out_tokens: *mut u32,
) -> HbridgeStatus {
    guard(|| {
        let engine = engine_ref(engine)?;
        if turns.is_null() && n_turns > 0 {
            return Err(invalid("turns: null pointer"));
        }
        let raw: &[HbridgeTurn] = match n_turns {
            0 => &[],
            n => std::slice::from_raw_parts(turns, n),
        };
        // Texts and images copied out first, then borrowed by the turns.
        let owned = raw
            .iter()
            .enumerate()
            .map(|(i, t)| turn_parts(i, t))
            .collect::<Result<Vec<_>, _>>()?;
        let turns: Vec<Turn<'_, RgbImage>> = owned
            .iter()
            .map(|(role, text, images)| Turn {
                role: *role,
                text,
                images,
            })
            .collect();
        answer(engine, &turns, options, on_token, user_data, out_tokens)
    })
}

/// Runs the chat request of the entry points above, streaming through `on_token`.
///
/// # Safety
/// `options` and `out_tokens` are null or valid; `on_token` is safe to call with `user_data`.
unsafe fn answer(
    engine: &Engine,
    turns: &[Turn<'_, RgbImage>],
    options: *const HbridgeChatOptions,
    on_token: HbridgeTokenCallback,
    user_data: *mut c_void,
    out_tokens: *mut u32,
) -> Result<(), Failure> {
    let answer = engine
        .chat_turns(
            turns,
            &request(options),
            token_callback(on_token, user_data),
        )
        .map_err(|e| (chat_status(&e), e.to_string()))?;
    store_tokens(out_tokens, answer.tokens.len());
    Ok(())
}

/// The request `options` (null: the defaults) describe.
///
/// # Safety
/// `options` is null or valid.
unsafe fn request(options: *const HbridgeChatOptions) -> crate::chat::ChatRequest {
    options
        .as_ref()
        .copied()
        .unwrap_or_else(HbridgeChatOptions::defaults)
        .to_rust()
}

/// The Rust token callback over the C one: the piece as a NUL-terminated string (a NUL inside it
/// replaced), nonzero from C stops the answer.
fn token_callback(
    on_token: HbridgeTokenCallback,
    user_data: *mut c_void,
) -> impl FnMut(u32, &str) -> ControlFlow<()> {
    move |id, piece| {
        let Some(cb) = on_token else {
            return ControlFlow::Continue(());
        };
        let c = CString::new(piece.replace('\0', "\u{FFFD}")).unwrap_or_default();
        let len = c.as_bytes().len();
        // SAFETY: the caller of the entry point vouches that `on_token` is safe to call with
        // `user_data`.
        match unsafe { cb(user_data, id, c.as_ptr(), len) } {
            0 => ControlFlow::Continue(()),
            _ => ControlFlow::Break(()),
        }
    }
}

/// `*out_tokens = n` when `out_tokens` is not null.
///
/// # Safety
/// `out_tokens` is null or valid.
unsafe fn store_tokens(out_tokens: *mut u32, n: usize) {
    if let Some(out) = out_tokens.as_mut() {
        *out = u32::try_from(n).unwrap_or(u32::MAX);
    }
}

/// Turn `i`'s role, text and images, each checked (the error names `turns[i]` and the field).
///
/// # Safety
/// As [`hbridge_chat_turns`] for one turn.
unsafe fn turn_parts<'a>(
    i: usize,
    t: &HbridgeTurn,
) -> Result<(Role, &'a str, Vec<RgbImage>), Failure> {
    let role = match t.role {
        HBRIDGE_ROLE_SYSTEM => Role::System,
        HBRIDGE_ROLE_USER => Role::User,
        HBRIDGE_ROLE_ASSISTANT => Role::Assistant,
        r => {
            return Err(invalid(format!(
            "turns[{i}].role: {r} is not one of HBRIDGE_ROLE_SYSTEM (0), _USER (1), _ASSISTANT (2)"
        )))
        }
    };
    let text = text(t.text, &format!("turns[{i}].text"))?;
    let images = rgb_images(t.images, t.n_images)
        .map_err(|(status, message)| (status, format!("turns[{i}].{message}")))?;
    Ok((role, text, images))
}

/// A conversation whose K/V cache stays on the engine's backend between turns (opaque to C). Use it
/// from one thread at a time, with one engine.
pub struct HbridgeChatSession {
    session: ChatSession,
}

/// Starts a conversation (`system` null: the default system turn) and stores it in `*out`.
///
/// # Safety
/// `system` is null or a NUL-terminated string; `out` points to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn hbridge_chat_session_create(
    system: *const c_char,
    out: *mut *mut HbridgeChatSession,
) -> HbridgeStatus {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out: null pointer"));
        }
        out.write(std::ptr::null_mut());
        let session = match system.is_null() {
            true => ChatSession::new(),
            false => ChatSession::with_system(text(system, "system")?),
        };
        out.write(Box::into_raw(Box::new(HbridgeChatSession { session })));
        Ok(())
    })
}

/// Frees a conversation and its cache (null is allowed). No turn may be running on it.
///
/// # Safety
/// `session` is null or was returned by `hbridge_chat_session_create` and not yet destroyed.
#[no_mangle]
pub unsafe extern "C" fn hbridge_chat_session_destroy(session: *mut HbridgeChatSession) {
    super::free_handle(session);
}

/// Answers `prompt` (with `n_images` images before it) as the next turn of `session`, calling
/// `on_token` per answer token: a text turn prefills only its own tokens against the kept cache. On
/// failure the conversation is as it was. Stores the answer's token count in `*out_tokens` when it is
/// not null.
///
/// # Safety
/// As `hbridge_chat_with_images`; `session` comes from `hbridge_chat_session_create` and is not in use
/// by another thread.
#[no_mangle]
#[allow(clippy::too_many_arguments)] // a C entry point: its arguments are its interface
pub unsafe extern "C" fn hbridge_chat_session_send(
    engine: *const HbridgeEngine,
    session: *mut HbridgeChatSession,
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
        let session = session
            .as_mut()
            .map(|s| &mut s.session)
            .ok_or_else(|| invalid("session: null pointer"))?;
        let prompt = text(prompt, "prompt")?;
        let images = rgb_images(images, n_images)?;
        let request = request(options);
        let answer = engine
            .send(
                session,
                prompt,
                &images,
                &request,
                token_callback(on_token, user_data),
            )
            .map_err(|e| (chat_status(&e), e.to_string()))?;
        store_tokens(out_tokens, answer.tokens.len());
        Ok(())
    })
}

/// Forgets a conversation (its system turn stays).
///
/// # Safety
/// `session` is null or comes from `hbridge_chat_session_create` and is not in use by another thread.
#[no_mangle]
pub unsafe extern "C" fn hbridge_chat_session_reset(session: *mut HbridgeChatSession) {
    if let Some(s) = session.as_mut() {
        s.session.reset();
    }
}
