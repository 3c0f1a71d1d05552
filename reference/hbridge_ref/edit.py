"""Image editing (DESIGN.md 3-5): reference images through the VAE encoder into the gen sequence, and the
three-branch guidance of OmniGen2's pipeline, in f32.

Branches: c = (prompt, refs), r = (negative prompt, refs), u = (negative prompt, no refs).
  s_txt > 1 and s_img > 1: v = u + s_img (r - u) + s_txt (c - r)     (DESIGN.md 4)
  s_txt > 1 only:          v = u + s_txt (c - u)                       (OmniGen2's `elif text_guidance_scale > 1`)
  otherwise:               v = c                                        (only the conditional branch runs)
"""
import numpy as np
import torch

from . import prompts
from . import vision as vision_mod
from .common import F32
from .gen import GenExpert, UndKV


def new_size(height, width, multiple, max_pixels=1024 * 1024, max_side=1024):
    """OmniGen2ImageProcessor.get_new_height_width: shrink (never enlarge) to fit max_pixels and max_side, then round
    each side down to a multiple of `multiple` (= VAE factor * patch)."""
    side_ratio = max_side / (height if height > width else width)
    pixels_ratio = (max_pixels / (height * width)) ** 0.5
    ratio = min(pixels_ratio, side_ratio, 1.0)
    return int(height * ratio) // multiple * multiple, int(width * ratio) // multiple * multiple


def und_prefill(bundle, tok, text, images=()):
    """The und prefill of one branch (DESIGN.md 6): the image-generation template around `text`, with `images`
    (PIL, as given) as the user turn's image tokens before the text, positions from HF's get_rope_index."""
    if not images:
        ids = prompts.gen_ids(tok, text)
        pos = prompts.text_positions(len(ids))
        return ids, pos, bundle.und.prefill(ids, pos)
    cfg = bundle.und.model.config
    px, grid = vision_mod.preprocess(vision_mod.load_processor(), list(images))
    ids = prompts.gen_ids(tok, vision_mod.vision_content(grid, cfg.vision_config.spatial_merge_size) + text)
    types = vision_mod.mm_token_type_ids(ids, cfg.image_token_id)
    pos = vision_mod.rope_index(bundle.und.model, ids, types, grid)
    return ids, pos, bundle.und.prefill(ids, pos, px, grid)


def to_pixels(rgb):
    """u8 [H, W, 3] -> f32 [3, H, W] in [-1, 1], as diffusers' VaeImageProcessor: x / 255 (f32), then 2 x - 1."""
    x = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).astype(np.float32) / np.float32(255.0))
    return (2.0 * x - 1.0).permute(2, 0, 1).contiguous()


def branches(gen: GenExpert, x, t, cond: UndKV, refonly: UndKV, uncond: UndKV, refs, s_img, s_txt, trace=False):
    """Velocities of the branches the scales need: dict with 'c' and, as needed, 'r', 'u', plus 'ref_tokens'
    (the cond branch's refined reference tokens) when traced. c and r share the gen layout and run as one batch."""
    out = {}
    both = s_txt > 1.0 and s_img > 1.0
    if both:
        cr = gen.forward(torch.stack([x, x]), t.view(1).expand(2).contiguous(), [cond, refonly],
                         refs=[torch.stack([r, r]) for r in refs], trace=trace)
        out["c"], out["r"] = cr["velocity"][0], cr["velocity"][1]
        if trace:
            out["ref_tokens"] = [tok[0] for tok in cr["ref_tokens"]]
    else:
        co = gen.forward(x[None], t.view(1), [cond], refs=[r[None] for r in refs], trace=trace)
        out["c"] = co["velocity"][0]
        if trace:
            out["ref_tokens"] = [tok[0] for tok in co["ref_tokens"]]
    if s_txt > 1.0:
        out["u"] = gen.forward(x[None], t.view(1), [uncond])["velocity"][0]
    return out


def guide(v, s_img, s_txt):
    """The guided velocity from the branch velocities (f32, evaluated left to right as written)."""
    si, st = torch.tensor(s_img, dtype=F32), torch.tensor(s_txt, dtype=F32)
    if s_txt > 1.0 and s_img > 1.0:
        return v["u"] + si * (v["r"] - v["u"]) + st * (v["c"] - v["r"])
    if s_txt > 1.0:
        return v["u"] + st * (v["c"] - v["u"])
    return v["c"]


def sample(gen: GenExpert, noise, timesteps, cond, refonly, uncond, refs, s_img, s_txt, keep=()):
    """Euler from noise to data with edit guidance at every step; returns the final latent and {i: x_i}."""
    x = noise.clone()
    kept = {}
    for i in range(len(timesteps) - 1):
        if i in keep:
            kept[i] = x.clone()
        v = guide(branches(gen, x, timesteps[i], cond, refonly, uncond, refs, s_img, s_txt), s_img, s_txt)
        x = x + (timesteps[i + 1] - timesteps[i]) * v
    return x, kept
