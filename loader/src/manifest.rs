//! Every tensor a topology needs, with its shape derived from the configs. Each dimension carries the
//! config expression it comes from, so that a mismatch can say which field to check.

use crate::config::{
    GenConfig, ModelConfig, Topology, UndConfig, VaeConfig, MAX_REF_IMAGES, TIMESTEP_FREQ_DIM,
};
use crate::store::PartStore;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct Dim {
    pub size: usize,
    /// The config expression, e.g. `num_key_value_heads*head_dim`.
    pub expr: String,
}

/// Tensors of an optional group (the vision tower, the VAE encoder) are checked only when the checkpoint
/// has any of them; then all must be there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Required,
    Optional(&'static str),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub name: String,
    pub dims: Vec<Dim>,
    pub group: Group,
}

impl Expected {
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().map(|d| d.size).collect()
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self
            .dims
            .iter()
            .map(|d| {
                if d.expr.parse::<usize>().is_ok() {
                    d.expr.clone()
                } else {
                    format!("{} = {}", d.expr, d.size)
                }
            })
            .collect();
        write!(f, "[{}]", dims.join(", "))
    }
}

/// How the und checkpoint prefixes its tensors: HF wrote `model.` / `visual.` before transformers 4.52
/// and `model.language_model.` / `model.visual.` after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndNames {
    pub text: &'static str,
    pub visual: &'static str,
}

impl UndNames {
    pub const FLAT: UndNames = UndNames {
        text: "model.",
        visual: "visual.",
    };
    pub const NESTED: UndNames = UndNames {
        text: "model.language_model.",
        visual: "model.visual.",
    };

    /// Picks the layout whose prefix the store's text tensors use (flat when neither: the error will say
    /// so). Any nested name decides, so that a nested checkpoint lacking only its embedding table is
    /// reported as exactly that, not as every tensor missing under the flat names.
    pub fn detect(store: &PartStore) -> UndNames {
        if store.names().any(|n| n.starts_with(UndNames::NESTED.text)) {
            UndNames::NESTED
        } else {
            UndNames::FLAT
        }
    }

    pub fn text(&self, name: &str) -> String {
        format!("{}{name}", self.text)
    }

    pub fn visual(&self, name: &str) -> String {
        format!("{}{name}", self.visual)
    }
}

/// Builds a list of expected tensors.
struct List {
    items: Vec<Expected>,
    group: Group,
}

impl List {
    fn new() -> Self {
        List {
            items: Vec::new(),
            group: Group::Required,
        }
    }
    fn t(&mut self, name: impl Into<String>, dims: &[(usize, &str)]) {
        self.items.push(Expected {
            name: name.into(),
            dims: dims
                .iter()
                .map(|&(size, expr)| Dim {
                    size,
                    expr: expr.to_string(),
                })
                .collect(),
            group: self.group,
        });
    }
    /// `name.weight` [out, in] and, with `bias`, `name.bias` [out].
    fn linear(&mut self, name: &str, out: (usize, &str), inp: (usize, &str), bias: bool) {
        self.t(format!("{name}.weight"), &[out, inp]);
        if bias {
            self.t(format!("{name}.bias"), &[out]);
        }
    }
    fn conv(&mut self, name: &str, out: (usize, &str), inp: (usize, &str), k: usize) {
        let ks: &str = if k == 3 { "3" } else { "1" };
        self.t(format!("{name}.weight"), &[out, inp, (k, ks), (k, ks)]);
        self.t(format!("{name}.bias"), &[out]);
    }
    fn norm_affine(&mut self, name: &str, c: (usize, &str)) {
        self.t(format!("{name}.weight"), &[c]);
        self.t(format!("{name}.bias"), &[c]);
    }
}

/// The expected tensors of each part.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub und: Vec<Expected>,
    pub gen: Vec<Expected>,
    pub vae: Vec<Expected>,
    pub bridge: Vec<Expected>,
}

impl Manifest {
    pub fn new(config: &ModelConfig, und_names: &UndNames) -> Self {
        Manifest {
            und: und_tensors(&config.und, und_names),
            gen: gen_tensors(&config.gen, config.layout.topology),
            vae: vae_tensors(&config.vae),
            bridge: bridge_tensors(config),
        }
    }

    pub fn all(&self) -> impl Iterator<Item = &Expected> {
        self.und
            .iter()
            .chain(&self.gen)
            .chain(&self.vae)
            .chain(&self.bridge)
    }
}

fn und_tensors(c: &UndConfig, names: &UndNames) -> Vec<Expected> {
    let mut l = List::new();
    let h = (c.hidden_size, "hidden_size");
    let q = (c.q_dim(), "num_attention_heads*head_dim");
    let kv = (c.kv_dim(), "num_key_value_heads*head_dim");
    let inter = (c.intermediate_size, "intermediate_size");
    let vocab = (c.vocab_size, "vocab_size");
    l.t(names.text("embed_tokens.weight"), &[vocab, h]);
    for i in 0..c.num_layers {
        let p = names.text(&format!("layers.{i}."));
        l.t(format!("{p}input_layernorm.weight"), &[h]);
        l.linear(&format!("{p}self_attn.q_proj"), q, h, true);
        l.linear(&format!("{p}self_attn.k_proj"), kv, h, true);
        l.linear(&format!("{p}self_attn.v_proj"), kv, h, true);
        l.linear(&format!("{p}self_attn.o_proj"), h, q, false);
        l.t(format!("{p}post_attention_layernorm.weight"), &[h]);
        l.linear(&format!("{p}mlp.gate_proj"), inter, h, false);
        l.linear(&format!("{p}mlp.up_proj"), inter, h, false);
        l.linear(&format!("{p}mlp.down_proj"), h, inter, false);
    }
    l.t(names.text("norm.weight"), &[h]);
    if !c.tie_word_embeddings {
        l.t("lm_head.weight", &[vocab, h]);
    }
    if let Some(v) = &c.vision {
        l.group = Group::Optional("vision encoder");
        let vh = (v.hidden_size, "vision_config.hidden_size");
        let vi = (v.intermediate_size, "vision_config.intermediate_size");
        let merged = v.hidden_size * v.spatial_merge_size * v.spatial_merge_size;
        let vm = (merged, "vision_config.hidden_size*spatial_merge_size^2");
        l.t(
            names.visual("patch_embed.proj.weight"),
            &[
                vh,
                (v.in_channels, "vision_config.in_chans"),
                (v.temporal_patch_size, "vision_config.temporal_patch_size"),
                (v.patch_size, "vision_config.patch_size"),
                (v.patch_size, "vision_config.patch_size"),
            ],
        );
        for i in 0..v.depth {
            let p = names.visual(&format!("blocks.{i}."));
            l.t(format!("{p}norm1.weight"), &[vh]);
            l.t(format!("{p}norm2.weight"), &[vh]);
            l.linear(
                &format!("{p}attn.qkv"),
                (3 * v.hidden_size, "3*vision_config.hidden_size"),
                vh,
                true,
            );
            l.linear(&format!("{p}attn.proj"), vh, vh, true);
            l.linear(&format!("{p}mlp.gate_proj"), vi, vh, true);
            l.linear(&format!("{p}mlp.up_proj"), vi, vh, true);
            l.linear(&format!("{p}mlp.down_proj"), vh, vi, true);
        }
        l.t(names.visual("merger.ln_q.weight"), &[vh]);
        l.linear(&names.visual("merger.mlp.0"), vm, vm, true);
        l.linear(
            &names.visual("merger.mlp.2"),
            (v.out_hidden_size, "vision_config.out_hidden_size"),
            vm,
            true,
        );
    }
    l.items
}

/// One OmniGen2 transformer block; `modulated` blocks take `temb` through `norm1.linear`.
fn gen_block(l: &mut List, c: &GenConfig, p: &str, modulated: bool) {
    let h = (c.hidden_size, "hidden_size");
    let d = (c.head_dim, "hidden_size/num_attention_heads");
    let q = (c.q_dim(), "num_attention_heads*head_dim");
    let kv = (c.kv_dim(), "num_kv_heads*head_dim");
    let ffn = (
        c.ffn_inner,
        "ffn inner dim (4*hidden_size, ffn_dim_multiplier, multiple_of)",
    );
    l.linear(&format!("{p}attn.to_q"), q, h, false);
    l.linear(&format!("{p}attn.to_k"), kv, h, false);
    l.linear(&format!("{p}attn.to_v"), kv, h, false);
    l.linear(&format!("{p}attn.to_out.0"), h, q, false);
    l.t(format!("{p}attn.norm_q.weight"), &[d]);
    l.t(format!("{p}attn.norm_k.weight"), &[d]);
    l.linear(&format!("{p}feed_forward.linear_1"), ffn, h, false);
    l.linear(&format!("{p}feed_forward.linear_2"), h, ffn, false);
    l.linear(&format!("{p}feed_forward.linear_3"), ffn, h, false);
    if modulated {
        l.linear(
            &format!("{p}norm1.linear"),
            (4 * c.hidden_size, "4*hidden_size"),
            (c.temb_dim(), "min(hidden_size,1024)"),
            true,
        );
        l.t(format!("{p}norm1.norm.weight"), &[h]);
    } else {
        l.t(format!("{p}norm1.weight"), &[h]);
    }
    for n in ["norm2", "ffn_norm1", "ffn_norm2"] {
        l.t(format!("{p}{n}.weight"), &[h]);
    }
}

fn gen_tensors(c: &GenConfig, topology: Topology) -> Vec<Expected> {
    let mut l = List::new();
    let h = (c.hidden_size, "hidden_size");
    let e = (c.temb_dim(), "min(hidden_size,1024)");
    let patch_in = (c.patch_dim_in(), "patch_size^2*in_channels");
    l.linear("x_embedder", h, patch_in, true);
    l.linear("ref_image_patch_embedder", h, patch_in, true);
    l.t("image_index_embedding", &[(MAX_REF_IMAGES, "5"), h]);
    l.linear(
        "time_caption_embed.timestep_embedder.linear_1",
        e,
        (TIMESTEP_FREQ_DIM, "256"),
        true,
    );
    l.linear("time_caption_embed.timestep_embedder.linear_2", e, e, true);
    for j in 0..c.num_refiner_layers {
        gen_block(&mut l, c, &format!("noise_refiner.{j}."), true);
        gen_block(&mut l, c, &format!("ref_image_refiner.{j}."), true);
    }
    if topology == Topology::Omnigen2 {
        let t = (c.text_feat_dim, "text_feat_dim");
        l.t("time_caption_embed.caption_embedder.0.weight", &[t]);
        l.linear("time_caption_embed.caption_embedder.1", h, t, true);
        for j in 0..c.num_refiner_layers {
            gen_block(&mut l, c, &format!("context_refiner.{j}."), false);
        }
    }
    for i in 0..c.num_layers {
        gen_block(&mut l, c, &format!("layers.{i}."), true);
    }
    l.linear("norm_out.linear_1", h, e, true);
    l.linear(
        "norm_out.linear_2",
        (c.patch_dim_out(), "patch_size^2*out_channels"),
        h,
        true,
    );
    l.items
}

/// diffusers ResnetBlock2D; a 1x1 `conv_shortcut` where the channel count changes.
fn vae_resnet(l: &mut List, p: &str, cin: usize, cout: usize) {
    let (i, o) = ((cin, "block_out_channels"), (cout, "block_out_channels"));
    l.norm_affine(&format!("{p}norm1"), i);
    l.conv(&format!("{p}conv1"), o, i, 3);
    l.norm_affine(&format!("{p}norm2"), o);
    l.conv(&format!("{p}conv2"), o, o, 3);
    if cin != cout {
        l.conv(&format!("{p}conv_shortcut"), o, i, 1);
    }
}

fn vae_mid(l: &mut List, p: &str, c: &VaeConfig, ch: usize) {
    vae_resnet(l, &format!("{p}mid_block.resnets.0."), ch, ch);
    if c.mid_block_add_attention {
        let a = format!("{p}mid_block.attentions.0.");
        let cc = (ch, "block_out_channels[-1]");
        l.norm_affine(&format!("{a}group_norm"), cc);
        for proj in ["to_q", "to_k", "to_v", "to_out.0"] {
            l.linear(&format!("{a}{proj}"), cc, cc, true);
        }
    }
    vae_resnet(l, &format!("{p}mid_block.resnets.1."), ch, ch);
}

fn vae_tensors(c: &VaeConfig) -> Vec<Expected> {
    let mut l = List::new();
    let boc = &c.block_out_channels;
    let (first, last) = (boc[0], boc[boc.len() - 1]);
    let lat = (c.latent_channels, "latent_channels");
    if c.use_post_quant_conv {
        l.conv("post_quant_conv", lat, lat, 1);
    }
    l.conv("decoder.conv_in", (last, "block_out_channels[-1]"), lat, 3);
    vae_mid(&mut l, "decoder.", c, last);
    let mut prev = last;
    for (i, &out) in boc.iter().rev().enumerate() {
        for j in 0..=c.layers_per_block {
            vae_resnet(
                &mut l,
                &format!("decoder.up_blocks.{i}.resnets.{j}."),
                if j == 0 { prev } else { out },
                out,
            );
        }
        if i + 1 < boc.len() {
            l.conv(
                &format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                (out, "block_out_channels"),
                (out, "block_out_channels"),
                3,
            );
        }
        prev = out;
    }
    l.norm_affine("decoder.conv_norm_out", (first, "block_out_channels[0]"));
    l.conv(
        "decoder.conv_out",
        (c.out_channels, "out_channels"),
        (first, "block_out_channels[0]"),
        3,
    );

    l.group = Group::Optional("VAE encoder");
    l.conv(
        "encoder.conv_in",
        (first, "block_out_channels[0]"),
        (c.in_channels, "in_channels"),
        3,
    );
    let mut prev = first;
    for (i, &out) in boc.iter().enumerate() {
        for j in 0..c.layers_per_block {
            vae_resnet(
                &mut l,
                &format!("encoder.down_blocks.{i}.resnets.{j}."),
                if j == 0 { prev } else { out },
                out,
            );
        }
        if i + 1 < boc.len() {
            l.conv(
                &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                (out, "block_out_channels"),
                (out, "block_out_channels"),
                3,
            );
        }
        prev = out;
    }
    vae_mid(&mut l, "encoder.", c, last);
    l.norm_affine("encoder.conv_norm_out", (last, "block_out_channels[-1]"));
    let moments = (2 * c.latent_channels, "2*latent_channels");
    l.conv(
        "encoder.conv_out",
        moments,
        (last, "block_out_channels[-1]"),
        3,
    );
    if c.use_quant_conv {
        l.conv("quant_conv", moments, moments, 1);
    }
    l.items
}

fn bridge_tensors(config: &ModelConfig) -> Vec<Expected> {
    let mut l = List::new();
    let Some(bridge) = &config.layout.bridge else {
        return l.items;
    };
    let (u, g) = (&config.und, &config.gen);
    let uq = (u.q_dim(), "und num_attention_heads*head_dim");
    let ukv = (u.kv_dim(), "und num_key_value_heads*head_dim");
    let gq = (g.q_dim(), "gen num_attention_heads*head_dim");
    let gkv = (g.kv_dim(), "gen num_kv_heads*head_dim");
    let mut gens: Vec<usize> = bridge.pairs.iter().map(|p| p.0).collect();
    gens.sort_unstable();
    for gl in gens {
        let p = format!("bridge.layers.{gl}.");
        l.linear(&format!("{p}q_proj"), uq, gq, false);
        l.linear(&format!("{p}k_proj"), ukv, gkv, false);
        l.linear(&format!("{p}v_proj"), ukv, gkv, false);
        l.linear(&format!("{p}o_proj"), gq, uq, false);
    }
    let gh = (g.hidden_size, "gen hidden_size");
    l.t(
        "srt.tokens",
        &[(bridge.num_srt_tokens, "num_srt_tokens"), gh],
    );
    l.linear(
        "srt.proj",
        (config.srt_out_dim(), "und vision_config.out_hidden_size"),
        gh,
        true,
    );
    l.items
}
