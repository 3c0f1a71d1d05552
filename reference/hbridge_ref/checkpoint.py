"""Random tiny checkpoints in the DESIGN.md section 6 layout, and loading a checkpoint back (f32).

model_dir/
  hbridge.json
  und/     config.json, model*.safetensors (+ index), tokenizer.json, generation_config.json   (HF save_pretrained)
  gen/     config.json (OmniGen2Transformer2DModel format), diffusion_pytorch_model.safetensors
  vae/     config.json, diffusion_pytorch_model.safetensors                                  (diffusers save_pretrained)
  bridge/  bridge.safetensors
"""
import json
import math
import os
import shutil

import torch

from .common import DTYPES, F32, REFERENCE, load_safetensors, load_sharded, read_json, save_safetensors, write_json
from .config import GenConfig, UndTextConfig, default_pairs
from .gen import GenExpert, Omnigen2Expert
from .prompts import TOKENIZER_PATH

SPECIAL_IDS = dict(bos=500, eos=502, vision_start=503, vision_end=504, image=505, video=506)


# ----------------------------------------------------------------------------------------------- init

def init_tensor(name, shape, g):
    """Deterministic, non-degenerate values: norms 1 + 0.1 N, biases 0.1 N, embeddings 0.5 N, SRT tokens N(0, 1),
    matrices and kernels N(0, 1/fan_in). Every path contributes (no zero-init modulation / norm_out)."""
    shape = tuple(shape)
    r = torch.randn(shape, generator=g, dtype=F32)
    if name.endswith(".bias"):
        return 0.1 * r
    if len(shape) == 1:
        return 1.0 + 0.1 * r
    if name == "srt.tokens":
        return r
    if name.endswith("embed_tokens.weight"):  # small enough that tied logits are not dominated by the input token
        return 0.5 * r
    if name == "image_index_embedding":
        return 0.5 * r
    if name == "lm_head.weight":  # sharper logits: greedy decoding far from ties
        return 3.0 * r / math.sqrt(shape[1])
    fan_in = math.prod(shape[1:])
    return r / math.sqrt(fan_in)


def init_module(module, seed):
    g = torch.Generator().manual_seed(seed)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            params[name].copy_(init_tensor(name, params[name].shape, g))


def init_dict(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return {name: init_tensor(name, shapes[name], g) for name in sorted(shapes)}


# ----------------------------------------------------------------------------------------------- gen / bridge

def gen_block_shapes(cfg: GenConfig, p):
    hid, E, D, F = cfg.hidden_size, cfg.temb_dim, cfg.head_dim, cfg.ffn_dim
    H, K = cfg.num_attention_heads, cfg.num_kv_heads
    return {
        p + "attn.to_q.weight": (H * D, hid),
        p + "attn.to_k.weight": (K * D, hid),
        p + "attn.to_v.weight": (K * D, hid),
        p + "attn.to_out.0.weight": (hid, H * D),
        p + "attn.norm_q.weight": (D,),
        p + "attn.norm_k.weight": (D,),
        p + "feed_forward.linear_1.weight": (F, hid),
        p + "feed_forward.linear_2.weight": (hid, F),
        p + "feed_forward.linear_3.weight": (F, hid),
        p + "norm1.linear.weight": (4 * hid, E),
        p + "norm1.linear.bias": (4 * hid,),
        p + "norm1.norm.weight": (hid,),
        p + "norm2.weight": (hid,),
        p + "ffn_norm1.weight": (hid,),
        p + "ffn_norm2.weight": (hid,),
    }


def gen_unmodulated_block_shapes(cfg: GenConfig, p):
    """A context_refiner block: norm1.weight (plain RMSNorm) instead of norm1.norm + norm1.linear."""
    s = gen_block_shapes(cfg, p)
    for k in ("norm1.linear.weight", "norm1.linear.bias", "norm1.norm.weight"):
        del s[p + k]
    s[p + "norm1.weight"] = (cfg.hidden_size,)
    return s


def gen_param_shapes(cfg: GenConfig, topology="hbridge"):
    """Every tensor of gen/diffusion_pytorch_model.safetensors; the hbridge topology has no caption_embedder and
    no context_refiner, the omnigen2 topology has both."""
    hid, E = cfg.hidden_size, cfg.temb_dim
    pin = cfg.patch_size ** 2 * cfg.in_channels
    pout = cfg.patch_size ** 2 * cfg.out_ch
    s = {
        "x_embedder.weight": (hid, pin), "x_embedder.bias": (hid,),
        "ref_image_patch_embedder.weight": (hid, pin), "ref_image_patch_embedder.bias": (hid,),
        "image_index_embedding": (5, hid),
        "time_caption_embed.timestep_embedder.linear_1.weight": (E, cfg.FREQ_DIM),
        "time_caption_embed.timestep_embedder.linear_1.bias": (E,),
        "time_caption_embed.timestep_embedder.linear_2.weight": (E, E),
        "time_caption_embed.timestep_embedder.linear_2.bias": (E,),
        "norm_out.linear_1.weight": (hid, E), "norm_out.linear_1.bias": (hid,),
        "norm_out.linear_2.weight": (pout, hid), "norm_out.linear_2.bias": (pout,),
    }
    for j in range(cfg.num_refiner_layers):
        s.update(gen_block_shapes(cfg, f"noise_refiner.{j}."))
        s.update(gen_block_shapes(cfg, f"ref_image_refiner.{j}."))
    if topology == "omnigen2":
        s["time_caption_embed.caption_embedder.0.weight"] = (cfg.text_feat_dim,)
        s["time_caption_embed.caption_embedder.1.weight"] = (hid, cfg.text_feat_dim)
        s["time_caption_embed.caption_embedder.1.bias"] = (hid,)
        for j in range(cfg.num_refiner_layers):
            s.update(gen_unmodulated_block_shapes(cfg, f"context_refiner.{j}."))
    for i in range(cfg.num_layers):
        s.update(gen_block_shapes(cfg, f"layers.{i}."))
    return s


def bridge_param_shapes(cfg: GenConfig, und: UndTextConfig, pairs, n_srt):
    Hg, Kg, Dg = cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim
    Hu, Ku, Du = und.num_attention_heads, und.num_key_value_heads, und.head_dim
    s = {}
    for g, _ in pairs:
        p = f"bridge.layers.{g}."
        s[p + "q_proj.weight"] = (Hu * Du, Hg * Dg)
        s[p + "k_proj.weight"] = (Ku * Du, Kg * Dg)
        s[p + "v_proj.weight"] = (Ku * Du, Kg * Dg)
        s[p + "o_proj.weight"] = (Hg * Dg, Hu * Du)
    s["srt.tokens"] = (n_srt, cfg.hidden_size)
    s["srt.proj.weight"] = (und.vision_out_hidden_size, cfg.hidden_size)
    s["srt.proj.bias"] = (und.vision_out_hidden_size,)
    return s


# ----------------------------------------------------------------------------------------------- und

def und_hf_config(spec):
    """A transformers 5.x Qwen2_5_VLConfig for the spec's und dims."""
    from transformers import Qwen2_5_VLConfig
    t, v = spec["und_text"], spec["und_vision"]
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=t["vocab_size"], hidden_size=t["hidden_size"], intermediate_size=t["intermediate_size"],
            num_hidden_layers=t["num_hidden_layers"], num_attention_heads=t["num_attention_heads"],
            num_key_value_heads=t["num_key_value_heads"], rms_norm_eps=t["rms_norm_eps"],
            max_position_embeddings=4096, max_window_layers=t["num_hidden_layers"],
            rope_parameters={"rope_type": "default", "rope_theta": t["rope_theta"],
                             "mrope_section": list(t["mrope_section"])},
            bos_token_id=SPECIAL_IDS["bos"], eos_token_id=SPECIAL_IDS["eos"]),
        vision_config=dict(v),
        image_token_id=SPECIAL_IDS["image"], video_token_id=SPECIAL_IDS["video"],
        vision_start_token_id=SPECIAL_IDS["vision_start"], vision_end_token_id=SPECIAL_IDS["vision_end"],
        tie_word_embeddings=spec["und_tied"],
    )


def old_flat_und_config(spec, dtype_name):
    """The flat Qwen2.5-VL config.json layout of transformers 4.4x-4.5x (as in Qwen/Qwen2.5-VL-7B-Instruct)."""
    t, v = spec["und_text"], spec["und_vision"]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": SPECIAL_IDS["bos"],
        "eos_token_id": SPECIAL_IDS["eos"],
        "vision_start_token_id": SPECIAL_IDS["vision_start"],
        "vision_end_token_id": SPECIAL_IDS["vision_end"],
        "image_token_id": SPECIAL_IDS["image"],
        "video_token_id": SPECIAL_IDS["video"],
        "hidden_act": "silu",
        "hidden_size": t["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": t["intermediate_size"],
        "max_position_embeddings": 4096,
        "max_window_layers": t["num_hidden_layers"],
        "model_type": "qwen2_5_vl",
        "num_attention_heads": t["num_attention_heads"],
        "num_hidden_layers": t["num_hidden_layers"],
        "num_key_value_heads": t["num_key_value_heads"],
        "rms_norm_eps": t["rms_norm_eps"],
        "rope_theta": t["rope_theta"],
        "sliding_window": 4096,
        "tie_word_embeddings": spec["und_tied"],
        "torch_dtype": dtype_name,
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": v["depth"],
            "hidden_act": "silu",
            "hidden_size": v["hidden_size"],
            "intermediate_size": v["intermediate_size"],
            "num_heads": v["num_heads"],
            "in_chans": 3,
            "out_hidden_size": v["out_hidden_size"],
            "patch_size": v["patch_size"],
            "spatial_merge_size": v["spatial_merge_size"],
            "spatial_patch_size": v["patch_size"],
            "window_size": v["window_size"],
            "fullatt_block_indexes": list(v["fullatt_block_indexes"]),
            "tokens_per_second": v["tokens_per_second"],
            "temporal_patch_size": v["temporal_patch_size"],
        },
        "rope_scaling": {"type": "mrope", "mrope_section": list(t["mrope_section"])},
        "vocab_size": t["vocab_size"],
    }


def new_prefix(name):
    """Old flat tensor name -> the prefixed one transformers 4.52+ wrote (model.language_model. / model.visual.)."""
    if name.startswith("visual."):
        return "model." + name
    for part in ("embed_tokens.", "layers.", "norm."):
        if name.startswith("model." + part):
            return "model.language_model." + name[len("model."):]
    return name


def write_und(spec, und_dir, seed):
    from transformers import Qwen2_5_VLForConditionalGeneration
    dtype = DTYPES[spec["und_dtype"]]
    cfg = und_hf_config(spec)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    init_module(model, seed)
    model = model.to(dtype)
    if os.path.exists(und_dir):
        shutil.rmtree(und_dir)
    kw = {"max_shard_size": spec["und_max_shard_size"]} if spec.get("und_max_shard_size") else {}
    model.save_pretrained(und_dir, safe_serialization=True, **kw)
    files = sorted(f for f in os.listdir(und_dir) if f.endswith(".safetensors"))
    if spec["und_layout"] == "new":
        # transformers 5.x writes the old flat tensor names; rename to the prefixed layout of 4.52-4.57.
        assert files == ["model.safetensors"], files
        path = os.path.join(und_dir, "model.safetensors")
        sd = load_safetensors(path, dtype=None)
        # und_strip_vision: no vision tower in the files (text-only checkpoint, DESIGN.md 6: visual.* optional)
        save_safetensors({new_prefix(k): v for k, v in sd.items()
                          if not (spec.get("und_strip_vision") and k.startswith(("visual.", "model.visual.")))}, path)
    else:
        if spec.get("und_max_shard_size"):
            assert len(files) >= 2 and os.path.exists(os.path.join(und_dir, "model.safetensors.index.json")), files
        write_json(old_flat_und_config(spec, {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[
            spec["und_dtype"]]), os.path.join(und_dir, "config.json"))
    shutil.copyfile(TOKENIZER_PATH, os.path.join(und_dir, "tokenizer.json"))


# ----------------------------------------------------------------------------------------------- vae

def write_vae(spec, vae_dir, seed):
    from diffusers import AutoencoderKL
    c = spec["vae"]
    n = len(c["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(c["block_out_channels"]), layers_per_block=c["layers_per_block"],
        act_fn="silu", latent_channels=c["latent_channels"], norm_num_groups=c["norm_num_groups"],
        sample_size=spec["height"], scaling_factor=c["scaling_factor"], shift_factor=c["shift_factor"],
        force_upcast=True, use_quant_conv=c["use_quant_conv"], use_post_quant_conv=c["use_post_quant_conv"],
        mid_block_add_attention=c["mid_block_add_attention"],
    )
    init_module(vae, seed)
    # keep decoded pixels mostly inside [-1, 1]
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.5)
    vae = vae.to(DTYPES[spec["vae_dtype"]])
    if os.path.exists(vae_dir):
        shutil.rmtree(vae_dir)
    vae.save_pretrained(vae_dir, safe_serialization=True)


# ----------------------------------------------------------------------------------------------- all

def create_checkpoint(spec, model_dir):
    seed = spec["seed"]
    os.makedirs(model_dir, exist_ok=True)
    write_und(spec, os.path.join(model_dir, "und"), 1000 * seed + 1)
    und = UndTextConfig.from_json(read_json(os.path.join(model_dir, "und", "config.json")))

    gcfg = GenConfig(**spec["gen"])
    gdir = os.path.join(model_dir, "gen")
    write_json(gcfg.to_json(), os.path.join(gdir, "config.json"))
    gdt = DTYPES[spec["gen_dtype"]]
    topology = spec.get("topology", "hbridge")
    save_safetensors({k: v.to(gdt) for k, v in init_dict(gen_param_shapes(gcfg, topology), 1000 * seed + 2).items()},
                     os.path.join(gdir, "diffusion_pytorch_model.safetensors"))

    write_vae(spec, os.path.join(model_dir, "vae"), 1000 * seed + 4)
    if topology == "omnigen2":
        assert gcfg.text_feat_dim == und.hidden_size, "caption features are und hidden states"
        hb = {"topology": "omnigen2", "und": "und", "gen": "gen", "vae": "vae"}
        write_json(hb, os.path.join(model_dir, "hbridge.json"))
        return hb

    b = spec["bridge"]
    pairs = b["pairs"] if "pairs" in b else default_pairs(gcfg.num_layers, und.num_hidden_layers,
                                                          b["skip_first"], b["skip_last"])
    bdt = DTYPES[spec["bridge_dtype"]]
    bw = init_dict(bridge_param_shapes(gcfg, und, pairs, b["num_srt_tokens"]), 1000 * seed + 3)
    save_safetensors({k: v.to(bdt) for k, v in bw.items()}, os.path.join(model_dir, "bridge", "bridge.safetensors"))

    hb = {"topology": "hbridge", "und": "und", "gen": "gen", "vae": "vae",
          "bridge": {"path": "bridge", "pairs": [list(p) for p in pairs], "num_srt_tokens": b["num_srt_tokens"]}}
    if "pairs" not in b:
        hb["bridge"]["skip_first"] = b["skip_first"]
        hb["bridge"]["skip_last"] = b["skip_last"]
    write_json(hb, os.path.join(model_dir, "hbridge.json"))
    return hb


class Bundle:
    """A checkpoint loaded back from its files: in f32 on the CPU (the reference), or, for the benchmark, in
    another dtype on another device, with the fast paths of `impl` and HF's attention `attn_implementation`."""

    def __init__(self, model_dir, dtype=F32, device=None, impl=REFERENCE, attn_implementation="eager"):
        from .und import UndExpert
        self.dir = model_dir
        self.hb = read_json(os.path.join(model_dir, "hbridge.json"))
        self.topology = self.hb["topology"]
        assert self.topology in ("hbridge", "omnigen2")
        self.und = UndExpert(os.path.join(model_dir, self.hb.get("und", "und")), dtype, device, attn_implementation)

        def on_device(tensors):
            return tensors if device is None else {k: v.to(device) for k, v in tensors.items()}

        gdir = os.path.join(model_dir, self.hb.get("gen", "gen"))
        self.gen_cfg = GenConfig.from_json(read_json(os.path.join(gdir, "config.json")))
        W = on_device(load_sharded(gdir, "diffusion_pytorch_model", dtype))
        vdir = os.path.join(model_dir, self.hb.get("vae", "vae"))
        self.vae_cfg = read_json(os.path.join(vdir, "config.json"))
        self.vae_W = on_device(load_safetensors(os.path.join(vdir, "diffusion_pytorch_model.safetensors"), dtype))
        if self.topology == "omnigen2":
            self.pairs = []
            self.gen = Omnigen2Expert(self.gen_cfg, W)
            return
        b = self.hb["bridge"]
        W.update(on_device(load_safetensors(os.path.join(model_dir, b.get("path", "bridge"), "bridge.safetensors"),
                                            dtype)))
        self.pairs = [tuple(p) for p in b["pairs"]]
        self.gen = GenExpert(self.gen_cfg, self.und.tcfg, W, self.pairs, b["num_srt_tokens"], impl)

    @property
    def paired_und_layers(self):
        return sorted(set(u for _, u in self.pairs))
