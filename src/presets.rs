//! Named model configurations the engine knows (DESIGN.md section 6), as the config files a checkpoint
//! of that shape carries.

use serde_json::{json, Value};

/// The byte-level BPE tokenizer of the tiny models (ids < 512; specials at 500..=506).
pub const TINY_TOKENIZER_JSON: &str = include_str!("../reference/assets/tiny_tokenizer.json");

/// The four config files of a checkpoint.
#[derive(Debug, Clone)]
pub struct PresetConfigs {
    /// The preset's name, one of [`PRESET_NAMES`].
    pub name: &'static str,
    /// `hbridge.json`: topology, part folders, and the bridge (`pairs`, `num_srt_tokens`).
    pub layout: Value,
    /// `und/config.json`: the Qwen2.5-VL understanding expert, vision tower included (HF flat layout).
    pub und: Value,
    /// `gen/config.json`: the OmniGen2 diffusion transformer (generation expert).
    pub gen: Value,
    /// `vae/config.json`: the diffusers AutoencoderKL.
    pub vae: Value,
}

/// Names [`preset`] knows: `tiny` (the test model, equal to `tests/fixtures/tiny`), `mid` (the CPU
/// comparison size) and `hbridge-7b4b` (the real Qwen2.5-VL-7B + OmniGen2 dimensions, ~23 GB in bf16).
pub const PRESET_NAMES: [&str; 3] = ["tiny", "mid", "hbridge-7b4b"];

/// The configs of the preset `name`; `None` for a name not in [`PRESET_NAMES`].
pub fn preset(name: &str) -> Option<PresetConfigs> {
    match name {
        "tiny" => Some(tiny()),
        "mid" => Some(mid()),
        "hbridge-7b4b" => Some(hbridge_7b4b()),
        _ => None,
    }
}

/// The real dimensions of DESIGN.md sections 2-3: Qwen2.5-VL-7B (text + vision tower), the OmniGen2 DiT
/// (~4B), the FLUX VAE, bridged with the paper's skip 6/6 default pairing. For GPU benchmarks with random
/// weights (about 24 GB in bf16: made on the GPU machine, never committed). The tokenizer is the tiny one
/// (ids < 512 fit the 152,064-entry vocabulary), so its special-token ids are the tiny ones.
fn hbridge_7b4b() -> PresetConfigs {
    let (gen_layers, und_layers, skip) = (32, 28, 6);
    PresetConfigs {
        name: "hbridge-7b4b",
        layout: bridged_layout(gen_layers, und_layers, skip),
        und: json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": und_layers,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_scaling": { "type": "mrope", "mrope_section": [16, 24, 24] },
            "max_position_embeddings": 128000,
            "tie_word_embeddings": false,
            "bos_token_id": 500,
            "eos_token_id": 502,
            "image_token_id": 505,
            "video_token_id": 506,
            "vision_start_token_id": 503,
            "vision_end_token_id": 504,
            "vision_config": {
                "depth": 32,
                "hidden_size": 1280,
                "num_heads": 16,
                "intermediate_size": 3420,
                "in_chans": 3,
                "out_hidden_size": 3584,
                "patch_size": 14,
                "temporal_patch_size": 2,
                "spatial_merge_size": 2,
                "window_size": 112,
                "fullatt_block_indexes": [7, 15, 23, 31],
                "hidden_act": "silu",
                "tokens_per_second": 2
            }
        }),
        gen: json!({
            "_class_name": "OmniGen2Transformer2DModel",
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": null,
            "hidden_size": 2520,
            "num_layers": gen_layers,
            "num_refiner_layers": 2,
            "num_attention_heads": 21,
            "num_kv_heads": 7,
            "multiple_of": 256,
            "ffn_dim_multiplier": null,
            "norm_eps": 1e-5,
            "axes_dim_rope": [40, 40, 40],
            "axes_lens": [10000, 10000, 10000],
            "text_feat_dim": 3584,
            "timestep_scale": 1000.0
        }),
        vae: flux_style_vae([128, 256, 512, 512], 2, 1024),
    }
}

/// The hbridge layout with the default skip/skip pairing of `gen_layers` gen over `und_layers` und layers.
fn bridged_layout(gen_layers: usize, und_layers: usize, skip: usize) -> Value {
    let pairs: Vec<[usize; 2]> =
        hbridge_loader::config::default_pairs(gen_layers, und_layers, skip, skip)
            .into_iter()
            .map(|(g, u)| [g, u])
            .collect();
    json!({
        "topology": "hbridge",
        "und": "und",
        "gen": "gen",
        "vae": "vae",
        "bridge": {
            "path": "bridge",
            "pairs": pairs,
            "num_srt_tokens": 16,
            "skip_first": skip,
            "skip_last": skip
        }
    })
}

/// A 4-level, 16-channel AutoencoderKL with FLUX's scaling, shift and mid-block attention.
fn flux_style_vae(
    block_out_channels: [usize; 4],
    layers_per_block: usize,
    sample_size: usize,
) -> Value {
    json!({
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "block_out_channels": block_out_channels,
        "layers_per_block": layers_per_block,
        "act_fn": "silu",
        "latent_channels": 16,
        "norm_num_groups": 32,
        "sample_size": sample_size,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": false,
        "use_post_quant_conv": false,
        "mid_block_add_attention": true
    })
}

/// A mid-size model for comparing the CPU backend with PyTorch on the CPU (issue 5): und hidden 896 / 8
/// layers (Qwen2.5-0.5B's width), gen hidden 768 / 8 layers, a 4-level VAE of 64-256 channels; 256x256
/// images are 32x32 latents (256 gen tokens); a 4-block vision tower. ~0.3B parameters.
fn mid() -> PresetConfigs {
    let (gen_layers, und_layers, skip) = (8, 8, 2);
    PresetConfigs {
        name: "mid",
        layout: bridged_layout(gen_layers, und_layers, skip),
        und: json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "vocab_size": 32768,
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": und_layers,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_scaling": { "type": "mrope", "mrope_section": [8, 12, 12] },
            "max_position_embeddings": 32768,
            "tie_word_embeddings": false,
            "bos_token_id": 500,
            "eos_token_id": 502,
            "image_token_id": 505,
            "video_token_id": 506,
            "vision_start_token_id": 503,
            "vision_end_token_id": 504,
            "vision_config": {
                "depth": 4,
                "hidden_size": 320,
                "num_heads": 4,
                "intermediate_size": 864,
                "in_chans": 3,
                "out_hidden_size": 896,
                "patch_size": 14,
                "temporal_patch_size": 2,
                "spatial_merge_size": 2,
                "window_size": 112,
                "fullatt_block_indexes": [1, 3],
                "hidden_act": "silu",
                "tokens_per_second": 2
            }
        }),
        gen: json!({
            "_class_name": "OmniGen2Transformer2DModel",
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": null,
            "hidden_size": 768,
            "num_layers": gen_layers,
            "num_refiner_layers": 2,
            "num_attention_heads": 12,
            "num_kv_heads": 4,
            "multiple_of": 256,
            "ffn_dim_multiplier": null,
            "norm_eps": 1e-5,
            "axes_dim_rope": [16, 24, 24],
            "axes_lens": [10000, 10000, 10000],
            "text_feat_dim": 896,
            "timestep_scale": 1000.0
        }),
        vae: flux_style_vae([64, 128, 256, 256], 1, 256),
    }
}

/// Heterogeneous on purpose: D_gen 24 != D_und 16, H 3 vs 4, K 1 vs 2, GQA 3 and 2, many-to-one pairs, a
/// non-square latent. Must equal `tests/fixtures/tiny` (a test checks it).
fn tiny() -> PresetConfigs {
    PresetConfigs {
        name: "tiny",
        layout: json!({
            "topology": "hbridge",
            "und": "und",
            "gen": "gen",
            "vae": "vae",
            "bridge": {
                "path": "bridge",
                "pairs": [[1, 1], [2, 1], [3, 2], [4, 3]],
                "num_srt_tokens": 16,
                "skip_first": 1,
                "skip_last": 1
            }
        }),
        und: json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 160,
            "num_hidden_layers": 5,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_scaling": { "type": "mrope", "mrope_section": [2, 3, 3] },
            "max_position_embeddings": 4096,
            "tie_word_embeddings": false,
            "bos_token_id": 500,
            "eos_token_id": 502,
            "image_token_id": 505,
            "video_token_id": 506,
            "vision_start_token_id": 503,
            "vision_end_token_id": 504,
            "vision_config": {
                "depth": 2,
                "hidden_size": 32,
                "num_heads": 2,
                "intermediate_size": 64,
                "in_chans": 3,
                "out_hidden_size": 64,
                "patch_size": 14,
                "temporal_patch_size": 2,
                "spatial_merge_size": 2,
                "window_size": 56,
                "fullatt_block_indexes": [1],
                "hidden_act": "silu"
            }
        }),
        gen: json!({
            "_class_name": "OmniGen2Transformer2DModel",
            "patch_size": 2,
            "in_channels": 4,
            "out_channels": null,
            "hidden_size": 72,
            "num_layers": 6,
            "num_refiner_layers": 1,
            "num_attention_heads": 3,
            "num_kv_heads": 1,
            "multiple_of": 16,
            "ffn_dim_multiplier": null,
            "norm_eps": 1e-5,
            "axes_dim_rope": [8, 8, 8],
            "axes_lens": [1024, 64, 64],
            "text_feat_dim": 64,
            "timestep_scale": 1000.0
        }),
        vae: json!({
            "_class_name": "AutoencoderKL",
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            "block_out_channels": [8, 16, 16],
            "layers_per_block": 1,
            "act_fn": "silu",
            "latent_channels": 4,
            "norm_num_groups": 4,
            "sample_size": 32,
            "scaling_factor": 0.3611,
            "shift_factor": 0.1159,
            "use_quant_conv": false,
            "use_post_quant_conv": false,
            "mid_block_add_attention": true
        }),
    }
}
