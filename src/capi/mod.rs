//! The C ABI: opaque engine handles, chat with a token callback, image generation into a caller's RGB
//! buffer, integer status codes with `hbridge_last_error()` for the message. No panic crosses the
//! boundary (every entry point runs inside `error::guard`); every pointer is checked for null and every
//! text for UTF-8. The header `include/hbridge.h` is generated from this module by cbindgen
//! (tests/c_api.rs keeps it current) and `examples/c/` shows the use.

pub mod chat;
pub mod error;
pub mod image;
pub mod options;

use crate::engine::Engine;
use error::{chat_status, guard, load_status, HbridgeStatus};
use options::{HbridgeChatOptions, HbridgeEngineOptions, HbridgeImageOptions};

pub use chat::{
    hbridge_chat, hbridge_chat_session_create, hbridge_chat_session_destroy,
    hbridge_chat_session_reset, hbridge_chat_session_send, hbridge_chat_turns,
    hbridge_chat_with_images, HbridgeChatSession,
};
pub use image::{hbridge_edit_image, hbridge_edit_options_default, hbridge_generate_image};
use std::ffi::{c_char, c_int, c_void, CStr};

/// A loaded model (opaque to C). Safe to use from several threads at once.
pub struct HbridgeEngine {
    engine: Engine,
}

/// Called once per answer token: `piece` is the text it completes (`piece_len` bytes of UTF-8,
/// NUL-terminated, valid during the call only). Return 0 to go on, nonzero to stop the answer there.
pub type HbridgeTokenCallback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        token: u32,
        piece: *const c_char,
        piece_len: usize,
    ) -> i32,
>;

/// Called after every denoising step. Return 0 to go on, nonzero to cancel (`HBRIDGE_STATUS_CANCELLED`).
pub type HbridgeProgressCallback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, step: u32, steps: u32) -> i32>;

pub(crate) type Failure = (HbridgeStatus, String);

pub(crate) fn invalid(message: impl Into<String>) -> Failure {
    (HbridgeStatus::InvalidArgument, message.into())
}

/// `ptr` as UTF-8 text; `what` names the argument in the error.
///
/// # Safety
/// `ptr` is null or points to a NUL-terminated string.
pub(crate) unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(invalid(format!("{what}: null pointer")));
    }
    CStr::from_ptr(ptr)
        .to_str()
        .map_err(|e| invalid(format!("{what}: not UTF-8 ({e})")))
}

/// `ptr` as an engine reference.
///
/// # Safety
/// `ptr` is null or comes from `hbridge_engine_create` and is not yet destroyed.
pub(crate) unsafe fn engine_ref<'a>(ptr: *const HbridgeEngine) -> Result<&'a Engine, Failure> {
    ptr.as_ref()
        .map(|e| &e.engine)
        .ok_or_else(|| invalid("engine: null pointer"))
}

/// The hbridge version, e.g. "0.1.0" (a static string).
#[no_mangle]
pub extern "C" fn hbridge_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed `hbridge_*` call on this thread ("" after a success). Valid until the
/// next `hbridge_*` call on the same thread.
#[no_mangle]
pub extern "C" fn hbridge_last_error() -> *const c_char {
    error::last_error_ptr()
}

/// Fills `out` with the default engine options (auto device and dtype, no memory limit, CUDA graphs on).
///
/// # Safety
/// `out` is null (then nothing happens) or points to writable `HbridgeEngineOptions`.
#[no_mangle]
pub unsafe extern "C" fn hbridge_engine_options_default(out: *mut HbridgeEngineOptions) {
    if !out.is_null() {
        out.write(HbridgeEngineOptions::defaults());
    }
}

/// Fills `out` with the default chat options (256 tokens, greedy, top_p 1, seed 0, stop at end tokens).
///
/// # Safety
/// `out` is null (then nothing happens) or points to writable `HbridgeChatOptions`.
#[no_mangle]
pub unsafe extern "C" fn hbridge_chat_options_default(out: *mut HbridgeChatOptions) {
    if !out.is_null() {
        out.write(HbridgeChatOptions::defaults());
    }
}

/// Fills `out` with the default image options (1024x1024, 50 steps, guidance 4, seed 0).
///
/// # Safety
/// `out` is null (then nothing happens) or points to writable `HbridgeImageOptions`.
#[no_mangle]
pub unsafe extern "C" fn hbridge_image_options_default(out: *mut HbridgeImageOptions) {
    if !out.is_null() {
        out.write(HbridgeImageOptions::defaults());
    }
}

/// Loads the checkpoint in folder `model_dir` (`options` null = defaults) and stores the new engine in
/// `*out` (set to null on failure).
///
/// # Safety
/// `model_dir` is a NUL-terminated string; `options` is null or valid; `out` points to writable storage
/// for a pointer.
#[no_mangle]
pub unsafe extern "C" fn hbridge_engine_create(
    model_dir: *const c_char,
    options: *const HbridgeEngineOptions,
    out: *mut *mut HbridgeEngine,
) -> HbridgeStatus {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out: null pointer"));
        }
        out.write(std::ptr::null_mut());
        let dir = text(model_dir, "model_dir")?;
        let options = match options.as_ref() {
            Some(o) => o.to_rust().map_err(invalid)?,
            None => HbridgeEngineOptions::defaults()
                .to_rust()
                .map_err(invalid)?,
        };
        let engine = Engine::load(dir, &options).map_err(|e| (load_status(&e), e.to_string()))?;
        out.write(Box::into_raw(Box::new(HbridgeEngine { engine })));
        Ok(())
    })
}

/// Frees an engine (null is allowed). No request may be running on it.
///
/// # Safety
/// `engine` is null or was returned by `hbridge_engine_create` and not yet destroyed.
#[no_mangle]
pub unsafe extern "C" fn hbridge_engine_destroy(engine: *mut HbridgeEngine) {
    free_handle(engine);
}

/// Frees a handle made by `Box::into_raw` (null is allowed); a panic in its destructor must not unwind
/// into C either.
///
/// # Safety
/// `handle` is null or came from `Box::into_raw` and is not yet freed.
pub(crate) unsafe fn free_handle<T>(handle: *mut T) {
    if !handle.is_null() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drop(Box::from_raw(handle));
        }));
    }
}

/// Runs the smallest chat request (`chat` non-zero) and text-to-image request (`images` non-zero), so
/// that the first real request does not pay for making weights resident or (CUDA) compiling kernels;
/// see `Engine::warm_up`. Stores the milliseconds it took in `*out_ms` when it is not null.
///
/// # Safety
/// `engine` comes from `hbridge_engine_create`; `out_ms` is null or valid.
#[no_mangle]
pub unsafe extern "C" fn hbridge_engine_warm_up(
    engine: *const HbridgeEngine,
    chat: c_int,
    images: c_int,
    out_ms: *mut f64,
) -> HbridgeStatus {
    guard(|| {
        let engine = engine_ref(engine)?;
        let what = crate::engine::WarmUp {
            chat: chat != 0,
            images: images != 0,
        };
        let took = engine
            .warm_up(what)
            .map_err(|e| (chat_status(&e), e.to_string()))?;
        if let Some(ms) = out_ms.as_mut() {
            *ms = took.as_secs_f64() * 1e3;
        }
        Ok(())
    })
}
