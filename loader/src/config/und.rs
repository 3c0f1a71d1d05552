//! The understanding expert's config: Qwen2.5-VL `config.json` in either layout HF writes (flat text
//! fields with `rope_scaling`, or nested `text_config` with `rope_parameters`).

use super::json::Fields;
use crate::error::Result;
use serde_json::Value;
use std::path::Path;

/// Text decoder dimensions (DESIGN.md section 2).
#[derive(Debug, Clone, PartialEq)]
pub struct UndConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// `[s0, s1, s2]`, summing to `head_dim / 2`.
    pub mrope_section: [usize; 3],
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: Option<usize>,
    pub special_tokens: SpecialTokens,
    pub vision: Option<VisionConfig>,
}

/// Token ids the config names (the tokenizer must agree).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub image_token_id: Option<usize>,
    pub video_token_id: Option<usize>,
    pub vision_start_token_id: Option<usize>,
    pub vision_end_token_id: Option<usize>,
    pub bos_token_id: Option<usize>,
    pub eos_token_id: Option<usize>,
}

/// Vision encoder dimensions (`vision_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub in_channels: usize,
    pub out_hidden_size: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    pub window_size: usize,
    pub fullatt_block_indexes: Vec<usize>,
}

impl UndConfig {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    pub fn parse(path: &Path, value: &Value) -> Result<Self> {
        let top = Fields::new(path, value)?;
        // Newer transformers nest the text model's fields under `text_config`; token ids stay on top.
        let text = top.object("text_config", "text_config.")?.unwrap_or(top);

        let hidden_size = text.positive("hidden_size")?;
        let num_heads = text.positive("num_attention_heads")?;
        let num_kv_heads = text.opt_dim("num_key_value_heads")?.unwrap_or(num_heads);
        if num_kv_heads == 0 {
            return Err(text.unsupported("num_key_value_heads", "a positive integer", 0));
        }
        let head_dim = match text.opt_dim("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_heads != 0 {
                    return Err(text.inconsistent(format!(
                        "hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads} (and no head_dim is given)"
                    )));
                }
                hidden_size / num_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(text.inconsistent(format!(
                "head_dim {head_dim} must be even and positive (RoPE rotates pairs)"
            )));
        }
        if num_heads % num_kv_heads != 0 {
            return Err(text.inconsistent(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads} (GQA groups must be whole)"
            )));
        }

        // `rope_scaling` (flat) or `rope_parameters` (nested) carries mrope_section, and in the newer
        // layout also rope_theta.
        let rope = match text.object("rope_parameters", "rope_parameters.")? {
            Some(r) => Some(r),
            None => text.object("rope_scaling", "rope_scaling.")?,
        };
        let rope_theta = match text.opt_f64("rope_theta")? {
            Some(t) => t,
            None => rope
                .map(|r| r.opt_f64("rope_theta"))
                .transpose()?
                .flatten()
                .unwrap_or(10000.0),
        };
        let section = match rope
            .map(|r| r.opt_usize_list("mrope_section"))
            .transpose()?
            .flatten()
        {
            Some(s) => s,
            None => {
                return Err(text.unsupported(
                    "rope_scaling.mrope_section",
                    "a list of 3 integers (M-RoPE, in rope_scaling or rope_parameters)",
                    "nothing",
                ))
            }
        };
        if section.len() != 3 {
            return Err(text.unsupported(
                "mrope_section",
                "3 integers [t, h, w]",
                format!("{section:?}"),
            ));
        }
        let mrope_section = [section[0], section[1], section[2]];
        if section.iter().sum::<usize>() != head_dim / 2 {
            return Err(text.inconsistent(format!(
                "mrope_section {section:?} sums to {}, expected head_dim/2 = {}",
                section.iter().sum::<usize>(),
                head_dim / 2
            )));
        }
        if let Some(act) = text.opt_str("hidden_act")? {
            if act != "silu" {
                return Err(text.unsupported("hidden_act", "\"silu\"", act));
            }
        }
        let rms_norm_eps = text.f64_or("rms_norm_eps", 1e-6)?;
        if rms_norm_eps.is_nan() || rms_norm_eps <= 0.0 {
            return Err(text.unsupported("rms_norm_eps", "a positive number", rms_norm_eps));
        }
        let tie_word_embeddings = match text.opt_bool("tie_word_embeddings")? {
            Some(t) => t,
            None => top.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        };

        let id = |f: &str| -> Result<Option<usize>> {
            match top.opt_usize(f)? {
                Some(v) => Ok(Some(v)),
                None => text.opt_usize(f),
            }
        };
        let special_tokens = SpecialTokens {
            image_token_id: id("image_token_id")?,
            video_token_id: id("video_token_id")?,
            vision_start_token_id: id("vision_start_token_id")?,
            vision_end_token_id: id("vision_end_token_id")?,
            bos_token_id: id("bos_token_id")?,
            eos_token_id: id("eos_token_id")?,
        };

        let vision = top
            .object("vision_config", "vision_config.")?
            .map(|v| VisionConfig::parse(&v))
            .transpose()?;

        Ok(UndConfig {
            vocab_size: text.positive("vocab_size")?,
            hidden_size,
            num_layers: text.layers("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size: text.positive("intermediate_size")?,
            rms_norm_eps,
            rope_theta,
            mrope_section,
            tie_word_embeddings,
            max_position_embeddings: text.opt_usize("max_position_embeddings")?,
            special_tokens,
            vision,
        })
    }
}

impl VisionConfig {
    fn parse(v: &Fields) -> Result<Self> {
        let hidden_size = v.positive("hidden_size")?;
        let num_heads = v.positive("num_heads")?;
        if hidden_size % num_heads != 0 {
            return Err(v.inconsistent(format!(
                "vision_config.hidden_size {hidden_size} is not divisible by vision_config.num_heads {num_heads}"
            )));
        }
        let depth = v.layers("depth")?;
        let fullatt_block_indexes = v
            .opt_usize_list("fullatt_block_indexes")?
            .unwrap_or_default();
        if let Some(&bad) = fullatt_block_indexes.iter().find(|&&i| i >= depth) {
            return Err(v.inconsistent(format!(
                "vision_config.fullatt_block_indexes names block {bad}, but depth is {depth}"
            )));
        }
        let in_channels = match v.opt_dim("in_chans")? {
            Some(c) => c,
            None => v.opt_dim("in_channels")?.unwrap_or(3),
        };
        Ok(VisionConfig {
            depth,
            hidden_size,
            num_heads,
            intermediate_size: v.positive("intermediate_size")?,
            in_channels,
            out_hidden_size: v.positive("out_hidden_size")?,
            patch_size: v.positive("patch_size")?,
            temporal_patch_size: v.opt_dim("temporal_patch_size")?.unwrap_or(2),
            spatial_merge_size: v.opt_dim("spatial_merge_size")?.unwrap_or(2),
            window_size: v.opt_dim("window_size")?.unwrap_or(112),
            fullatt_block_indexes,
        })
    }
}
