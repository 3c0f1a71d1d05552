//! The option structs of the C ABI and their defaults (the Rust API's defaults, DESIGN.md 4). C fills
//! one with `hbridge_*_options_default` and changes the fields it cares about; the integer fields that
//! select a variant are checked, never transmuted.

use crate::budget::OverLimit;
use crate::chat::ChatRequest;
use crate::edit::EditRequest;
use crate::engine::{CpuCompute, DType, EngineOptions};
use crate::image::RgbImage;
use crate::t2i::ImageRequest;
use hbridge_engine::device::DeviceRequest;
use std::ffi::c_char;

/// `HbridgeEngineOptions::device`: a GPU when one is usable, else the CPU.
pub const HBRIDGE_DEVICE_AUTO: i32 = 0;
/// `HbridgeEngineOptions::device`: the CPU backend.
pub const HBRIDGE_DEVICE_CPU: i32 = 1;
/// `HbridgeEngineOptions::device`: the CUDA backend (an error without a usable GPU).
pub const HBRIDGE_DEVICE_CUDA: i32 = 2;
/// `HbridgeEngineOptions::dtype`: the backend's own (on the CPU the checkpoint's bf16 matrices stay bf16,
/// the same results as f32; bf16 on CUDA).
pub const HBRIDGE_DTYPE_AUTO: i32 = 0;
/// `HbridgeEngineOptions::dtype`: f32 weights (CPU only).
pub const HBRIDGE_DTYPE_F32: i32 = 1;
/// `HbridgeEngineOptions::dtype`: bf16 weights (half the CPU backend's weight memory).
pub const HBRIDGE_DTYPE_BF16: i32 = 2;

/// `HbridgeEngineOptions::cpu_compute`: as `HBRIDGE_CPU_MATMUL` says (bf16 when it is `bf16`).
pub const HBRIDGE_CPU_COMPUTE_ENV: i32 = 0;
/// `HbridgeEngineOptions::cpu_compute`: f32 everywhere (the reference's numerics).
pub const HBRIDGE_CPU_COMPUTE_F32: i32 = 1;
/// `HbridgeEngineOptions::cpu_compute`: bf16 on Intel AMX tiles where the CPU and OS have them
/// (the CUDA backend's numerics), else f32. Fixed once per process: an engine asking for the other
/// arithmetic later fails with `HBRIDGE_STATUS_DEVICE`.
pub const HBRIDGE_CPU_COMPUTE_BF16: i32 = 2;

/// `HbridgeTurn::role`: instructions to the assistant (the first turn only).
pub const HBRIDGE_ROLE_SYSTEM: i32 = 0;
/// `HbridgeTurn::role`: the person asking.
pub const HBRIDGE_ROLE_USER: i32 = 1;
/// `HbridgeTurn::role`: an earlier answer.
pub const HBRIDGE_ROLE_ASSISTANT: i32 = 2;

/// How `hbridge_engine_create` loads a model.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HbridgeEngineOptions {
    /// One of `HBRIDGE_DEVICE_*`.
    pub device: i32,
    /// One of `HBRIDGE_DTYPE_*`.
    pub dtype: i32,
    /// Bound on the memory of running requests' state, in bytes; 0 = unbounded.
    pub memory_limit_bytes: u64,
    /// Nonzero: a request that does not fit beside the running ones fails at once
    /// (`HBRIDGE_STATUS_MEMORY`) instead of waiting.
    pub reject_over_limit: i32,
    /// Nonzero: capture and replay CUDA graphs (the default).
    pub cuda_graphs: i32,
    /// One of `HBRIDGE_CPU_COMPUTE_*`.
    pub cpu_compute: i32,
}

/// Sampling parameters of `hbridge_chat`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HbridgeChatOptions {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// 0 = greedy; otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Nucleus sampling threshold in (0, 1].
    pub top_p: f32,
    /// Seed of the sampling RNG.
    pub seed: u64,
    /// Nonzero: stop at the model's end tokens (the default).
    pub stop_at_eos: i32,
}

/// Parameters of `hbridge_generate_image`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HbridgeImageOptions {
    /// Output width in pixels (a multiple of the VAE factor times the patch size).
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// Denoising steps.
    pub steps: u32,
    /// Text guidance scale (above 1 runs the unconditional branch too).
    pub guidance: f32,
    /// Seed of the initial noise.
    pub seed: u64,
}

/// Parameters of `hbridge_edit_image`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HbridgeEditOptions {
    /// Output width in pixels; 0 (with `height` 0) = the first reference's size after its resize.
    pub width: u32,
    /// Output height in pixels; 0 = as `width` says.
    pub height: u32,
    /// Denoising steps.
    pub steps: u32,
    /// Text guidance scale (the c branch against r).
    pub text_guidance: f32,
    /// Image guidance scale (the r branch against u).
    pub image_guidance: f32,
    /// Seed of the initial noise.
    pub seed: u64,
}

/// An image the caller owns (a reference to edit, or an image to chat about): `width * height * 3`
/// bytes of row-major RGB at `rgb`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HbridgeImageView {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major RGB bytes.
    pub rgb: *const u8,
}

/// One turn of a conversation for `hbridge_chat_turns`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HbridgeTurn {
    /// One of `HBRIDGE_ROLE_*`.
    pub role: i32,
    /// The turn's text (NUL-terminated UTF-8).
    pub text: *const c_char,
    /// Images before the text (user turns only); null when `n_images` is 0.
    pub images: *const HbridgeImageView,
    /// How many `images`.
    pub n_images: usize,
}

impl HbridgeEditOptions {
    pub(crate) fn defaults() -> Self {
        let d = EditRequest::new("", Vec::new());
        HbridgeEditOptions {
            width: 0,
            height: 0,
            steps: d.steps as u32,
            text_guidance: d.text_guidance,
            image_guidance: d.image_guidance,
            seed: d.seed,
        }
    }

    pub(crate) fn to_rust(
        self,
        prompt: String,
        negative: String,
        images: Vec<RgbImage>,
    ) -> EditRequest {
        let mut r = EditRequest::new(prompt, images)
            .negative(negative)
            .steps(self.steps as usize)
            .guidance_scales(self.text_guidance, self.image_guidance)
            .seed(self.seed);
        if self.width != 0 || self.height != 0 {
            r = r.size(self.width as usize, self.height as usize);
        }
        r
    }
}

impl HbridgeEngineOptions {
    pub(crate) fn defaults() -> Self {
        let d = EngineOptions::default();
        HbridgeEngineOptions {
            device: HBRIDGE_DEVICE_AUTO,
            dtype: HBRIDGE_DTYPE_AUTO,
            memory_limit_bytes: 0,
            reject_over_limit: 0,
            cuda_graphs: i32::from(d.cuda_graphs),
            cpu_compute: HBRIDGE_CPU_COMPUTE_ENV,
        }
    }

    /// The Rust options, or which field holds what unknown value.
    pub(crate) fn to_rust(self) -> Result<EngineOptions, String> {
        let device = match self.device {
            HBRIDGE_DEVICE_AUTO => DeviceRequest::Auto,
            HBRIDGE_DEVICE_CPU => DeviceRequest::Cpu,
            HBRIDGE_DEVICE_CUDA => DeviceRequest::Cuda,
            d => {
                return Err(format!(
                    "options.device: {d} is not one of HBRIDGE_DEVICE_AUTO/CPU/CUDA (0/1/2)"
                ))
            }
        };
        let dtype = match self.dtype {
            HBRIDGE_DTYPE_AUTO => DType::Auto,
            HBRIDGE_DTYPE_F32 => DType::F32,
            HBRIDGE_DTYPE_BF16 => DType::BF16,
            d => {
                return Err(format!(
                    "options.dtype: {d} is not one of HBRIDGE_DTYPE_AUTO/F32/BF16 (0/1/2)"
                ))
            }
        };
        let cpu_compute = match self.cpu_compute {
            HBRIDGE_CPU_COMPUTE_ENV => CpuCompute::FromEnv,
            HBRIDGE_CPU_COMPUTE_F32 => CpuCompute::F32,
            HBRIDGE_CPU_COMPUTE_BF16 => CpuCompute::Bf16,
            c => {
                return Err(format!(
                "options.cpu_compute: {c} is not one of HBRIDGE_CPU_COMPUTE_ENV/F32/BF16 (0/1/2)"
            ))
            }
        };
        Ok(EngineOptions {
            device,
            dtype,
            cpu_compute,
            cuda_graphs: self.cuda_graphs != 0,
            memory_limit: (self.memory_limit_bytes > 0).then_some(self.memory_limit_bytes),
            over_limit: if self.reject_over_limit != 0 {
                OverLimit::Reject
            } else {
                OverLimit::Wait
            },
        })
    }
}

impl HbridgeChatOptions {
    pub(crate) fn defaults() -> Self {
        let d = ChatRequest::default();
        HbridgeChatOptions {
            max_tokens: u32::try_from(d.max_tokens).unwrap_or(u32::MAX),
            temperature: d.temperature,
            top_p: d.top_p,
            seed: d.seed,
            stop_at_eos: i32::from(d.stop_at_eos),
        }
    }

    pub(crate) fn to_rust(self) -> ChatRequest {
        ChatRequest {
            max_tokens: self.max_tokens as usize,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop_at_eos: self.stop_at_eos != 0,
            stop_ids: Vec::new(),
        }
    }
}

impl HbridgeImageOptions {
    pub(crate) fn defaults() -> Self {
        let d = ImageRequest::new("");
        HbridgeImageOptions {
            width: d.width as u32,
            height: d.height as u32,
            steps: d.steps as u32,
            guidance: d.guidance,
            seed: d.seed,
        }
    }

    pub(crate) fn to_rust(self, prompt: String, negative: String) -> ImageRequest {
        ImageRequest::new(prompt)
            .negative(negative)
            .size(self.width as usize, self.height as usize)
            .steps(self.steps as usize)
            .guidance(self.guidance)
            .seed(self.seed)
    }
}
