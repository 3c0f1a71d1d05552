//! Image requests through the C ABI: text to image and editing, each into a caller-provided RGB buffer
//! with a progress callback that can cancel.

use super::error::{guard, run_status, HbridgeStatus};
use super::options::{HbridgeEditOptions, HbridgeImageOptions, HbridgeImageView};
use super::{engine_ref, invalid, text, Failure, HbridgeEngine, HbridgeProgressCallback};
use crate::image::RgbImage;
use std::ffi::{c_char, c_void};
use std::ops::ControlFlow;

/// `ptr` as UTF-8 text, or "" when null.
///
/// # Safety
/// As [`text`].
unsafe fn optional_text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        Ok("")
    } else {
        text(ptr, what)
    }
}

/// `rgb_out` must be non-null and hold a `width` x `height` RGB image.
fn check_buffer(
    rgb_out: *mut u8,
    rgb_len: usize,
    width: usize,
    height: usize,
) -> Result<(), Failure> {
    let need = width.saturating_mul(height).saturating_mul(3);
    if rgb_out.is_null() {
        return Err(invalid("rgb_out: null pointer"));
    }
    if rgb_len < need {
        return Err((
            HbridgeStatus::BufferTooSmall,
            format!("rgb_len: {rgb_len} bytes, a {width}x{height} RGB image needs {need}"),
        ));
    }
    Ok(())
}

/// Copies `n_images` caller-owned views into images (`images` may be null when `n_images` is 0).
///
/// # Safety
/// `images` points to `n_images` views whose `rgb` hold `width * height * 3` bytes.
pub(super) unsafe fn rgb_images(
    images: *const HbridgeImageView,
    n_images: usize,
) -> Result<Vec<RgbImage>, Failure> {
    if n_images == 0 {
        return Ok(Vec::new());
    }
    if images.is_null() {
        return Err(invalid("images: null pointer"));
    }
    std::slice::from_raw_parts(images, n_images)
        .iter()
        .enumerate()
        .map(|(j, v)| {
            let (w, h) = (v.width as usize, v.height as usize);
            if v.rgb.is_null() {
                return Err(invalid(format!("images[{j}].rgb: null pointer")));
            }
            let bytes = std::slice::from_raw_parts(v.rgb, w.saturating_mul(h).saturating_mul(3));
            RgbImage::new(w, h, bytes.to_vec()).ok_or_else(|| {
                invalid(format!("images[{j}]: {w}x{h} is not a non-empty RGB image"))
            })
        })
        .collect()
}

/// The Rust progress callback over the C one: nonzero from C cancels.
fn progress(
    on_progress: HbridgeProgressCallback,
    user_data: *mut c_void,
) -> impl FnMut(usize, usize) -> ControlFlow<()> {
    move |step, steps| match on_progress {
        // SAFETY: the caller of the entry point vouches that `on_progress` is safe to call with
        // `user_data`.
        Some(cb) if unsafe { cb(user_data, step as u32, steps as u32) } != 0 => {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    }
}

/// Copies the image into the caller's buffer (checked by [`check_buffer`] before the run).
///
/// # Safety
/// `rgb_out` points to `rgb_len` writable bytes.
unsafe fn copy_out(rgb: &[u8], rgb_out: *mut u8, rgb_len: usize) -> Result<(), Failure> {
    if rgb.len() > rgb_len {
        return Err((
            HbridgeStatus::Internal,
            format!("the image has {} bytes, over rgb_len {rgb_len}", rgb.len()),
        ));
    }
    std::slice::from_raw_parts_mut(rgb_out, rgb.len()).copy_from_slice(rgb);
    Ok(())
}

/// Generates an image for `prompt` (`negative_prompt` may be null: empty) into `rgb_out`, row-major RGB
/// bytes, which must hold at least `width * height * 3` bytes (`rgb_len`). `on_progress` may be null.
///
/// # Safety
/// `engine` comes from `hbridge_engine_create`; the strings are NUL-terminated; `options` is null or
/// valid; `rgb_out` points to `rgb_len` writable bytes; `on_progress` is safe to call with `user_data`.
#[no_mangle]
pub unsafe extern "C" fn hbridge_generate_image(
    engine: *const HbridgeEngine,
    prompt: *const c_char,
    negative_prompt: *const c_char,
    options: *const HbridgeImageOptions,
    on_progress: HbridgeProgressCallback,
    user_data: *mut c_void,
    rgb_out: *mut u8,
    rgb_len: usize,
) -> HbridgeStatus {
    guard(|| {
        let engine = engine_ref(engine)?;
        let prompt = text(prompt, "prompt")?;
        let negative = optional_text(negative_prompt, "negative_prompt")?;
        let o = options
            .as_ref()
            .copied()
            .unwrap_or_else(HbridgeImageOptions::defaults);
        check_buffer(rgb_out, rgb_len, o.width as usize, o.height as usize)?;
        let request = o.to_rust(prompt.to_string(), negative.to_string());
        let image = engine
            .generate_image(&request, progress(on_progress, user_data))
            .map_err(|e| (run_status(&e), e.to_string()))?;
        copy_out(&image.rgb, rgb_out, rgb_len)
    })
}

/// Fills `out` with the default edit options (the first reference's size, 50 steps, text guidance 5,
/// image guidance 2, seed 0).
///
/// # Safety
/// `out` is null (then nothing happens) or points to writable `HbridgeEditOptions`.
#[no_mangle]
pub unsafe extern "C" fn hbridge_edit_options_default(out: *mut HbridgeEditOptions) {
    if !out.is_null() {
        out.write(HbridgeEditOptions::defaults());
    }
}

/// Edits `images` (1 to 5 reference images) following `prompt` (`negative_prompt` may be null: empty)
/// into `rgb_out` (`rgb_len` bytes). The output size is `options`' or, when that is 0x0, the first
/// reference's after its resize; it is stored in `*out_width` / `*out_height` (when not null) before
/// anything runs, so a `HBRIDGE_STATUS_BUFFER_TOO_SMALL` answer tells the size to allocate.
///
/// # Safety
/// `engine` comes from `hbridge_engine_create`; the strings are NUL-terminated; `images` points to
/// `n_images` views whose `rgb` hold `width * height * 3` bytes; `options`, `out_width` and
/// `out_height` are null or valid; `rgb_out` points to `rgb_len` writable bytes; `on_progress` is safe to
/// call with `user_data`.
#[no_mangle]
pub unsafe extern "C" fn hbridge_edit_image(
    engine: *const HbridgeEngine,
    prompt: *const c_char,
    negative_prompt: *const c_char,
    images: *const HbridgeImageView,
    n_images: usize,
    options: *const HbridgeEditOptions,
    on_progress: HbridgeProgressCallback,
    user_data: *mut c_void,
    rgb_out: *mut u8,
    rgb_len: usize,
    out_width: *mut u32,
    out_height: *mut u32,
) -> HbridgeStatus {
    guard(|| {
        let engine = engine_ref(engine)?;
        let prompt = text(prompt, "prompt")?;
        let negative = optional_text(negative_prompt, "negative_prompt")?;
        let refs = rgb_images(images, n_images)?;
        let o = options
            .as_ref()
            .copied()
            .unwrap_or_else(HbridgeEditOptions::defaults);
        let request = o.to_rust(prompt.to_string(), negative.to_string(), refs);
        crate::validate::edit(engine.model(), &request).map_err(|e| invalid(e.to_string()))?;
        let (width, height) = crate::edit::output_size(engine.model(), &request)
            .map_err(|e| (run_status(&e), e.to_string()))?;
        if let Some(w) = out_width.as_mut() {
            *w = width as u32;
        }
        if let Some(h) = out_height.as_mut() {
            *h = height as u32;
        }
        check_buffer(rgb_out, rgb_len, width, height)?;
        let image = engine
            .edit_image(&request, progress(on_progress, user_data))
            .map_err(|e| (run_status(&e), e.to_string()))?;
        copy_out(&image.rgb, rgb_out, rgb_len)
    })
}
