"""Image inputs of the und expert (DESIGN.md 2): HF's Qwen2-VL image processor (PIL backend), the prompt's image
tokens, HF's get_rope_index, and a plain PyTorch transcription of the vision tower in the order hbridge computes it
(window order, attention within blocks, merger, inverse order), checked against HF's own module."""
import math

import numpy as np
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

F32 = torch.float32


def load_processor(**size):
    """The PIL-backend processor with HF's defaults (min_pixels 56*56, max_pixels 28*28*1280, CLIP mean / std);
    `size` overrides `shortest_edge` (min_pixels) / `longest_edge` (max_pixels). The torchvision backend (the
    default where torchvision is installed) resizes float tensors with antialiased bicubic and differs from PIL."""
    p = Qwen2VLImageProcessorPil()
    if size:
        p = Qwen2VLImageProcessorPil(size=dict(p.size, **size))
    return p


def preprocess(proc, images):
    """-> pixel_values f32 [N, C*T*p*p], image_grid_thw i64 [n, 3]."""
    out = proc(images=images, return_tensors="pt")
    return out["pixel_values"].to(F32), out["image_grid_thw"].to(torch.long)


def pil_resize(img, width, height):
    """What the processor does to a uint8 RGB image: PIL's bicubic resize (identity when the size is kept)."""
    return img.convert("RGB").resize((width, height), resample=Image.Resampling.BICUBIC)


def pattern_image(width, height, seed):
    """A deterministic RGB test image: gradients, a ring and a checkerboard, so that a wrong filter tap, phase or
    channel order shows in the resized pixels."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy = width * (0.3 + 0.1 * seed), height * 0.55
    ring = np.hypot(x - cx, y - cy)
    r = 255 * x / max(width - 1, 1)
    g = 255 * (0.5 + 0.5 * np.cos(ring / (2.0 + seed)))
    b = np.where(((x // (3 + seed)) + (y // 4)) % 2 == 0, 230.0, 20.0)
    b = np.where(ring < min(width, height) * 0.2, 255 * y / max(height - 1, 1), b)
    rgb = np.stack([r, g, b], axis=-1).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def vision_content(grid, merge):
    """The user content's image part (DESIGN.md 6): per image `<|vision_start|>`, one `<|image_pad|>` per merged
    token, `<|vision_end|>`."""
    parts = []
    for t, h, w in grid.tolist():
        parts.append("<|vision_start|>" + "<|image_pad|>" * (t * (h // merge) * (w // merge)) + "<|vision_end|>")
    return "".join(parts)


def mm_token_type_ids(ids, image_token_id):
    """What HF's processor passes as mm_token_type_ids: 1 at image pads, 0 elsewhere."""
    return (ids == image_token_id).to(torch.int32)


@torch.no_grad()
def rope_index(model, ids, types, grid):
    """HF Qwen2_5_VLModel.get_rope_index for one sequence -> [3, L]."""
    pos, _ = model.model.get_rope_index(ids[None], mm_token_type_ids=types[None], image_grid_thw=grid)
    return pos[:, 0, :].contiguous()


def window_order(grid, merge, window, patch):
    """HF get_vision_window_index, in plain Python: merge blocks in window order and the window lengths in
    patches."""
    win = window // merge // patch
    order, lens, base = [], [], 0
    for t, h, w in grid.tolist():
        lh, lw = h // merge, w // merge
        nwh, nww = (lh + win - lh % win) // win, (lw + win - lw % win) // win
        for f in range(t):
            for wy in range(nwh):
                for wx in range(nww):
                    n0 = len(order)
                    for yy in range(wy * win, min((wy + 1) * win, lh)):
                        for xx in range(wx * win, min((wx + 1) * win, lw)):
                            order.append(base + (f * lh + yy) * lw + xx)
                    lens.append((len(order) - n0) * merge * merge)
        base += t * lh * lw
    return order, lens


def _rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rot(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin


@torch.no_grad()
def plain_tower(visual, px, grid):
    """The vision tower from its weights, as hbridge's graph computes it (build/vision.rs)."""
    cfg = visual.config
    m, d, heads = cfg.spatial_merge_size, cfg.hidden_size, cfg.num_heads
    hd = d // heads
    unit = m * m
    x = px @ visual.patch_embed.proj.weight.reshape(d, -1).T
    order, wins = window_order(grid, m, cfg.window_size, cfg.patch_size)
    rows = [b * unit + j for b in order for j in range(unit)]
    x = x[rows]
    hw = []
    for t, h, w in grid.tolist():
        for _ in range(t):
            for by in range(h // m):
                for bx in range(w // m):
                    for dy in range(m):
                        for dx in range(m):
                            hw.append((by * m + dy, bx * m + dx))
    hw = torch.tensor(hw, dtype=F32)[rows]
    theta = cfg.rope_parameters["rope_theta"]
    inv = 1.0 / (theta ** (torch.arange(0, hd // 2, 2, dtype=F32) / (hd // 2)))
    freqs = torch.cat([hw[:, :1] * inv, hw[:, 1:] * inv], -1)
    cos, sin = torch.cat([freqs, freqs], -1).cos()[:, None], torch.cat([freqs, freqs], -1).sin()[:, None]
    full = [h * w for t, h, w in grid.tolist() for _ in range(t)]
    for i, blk in enumerate(visual.blocks):
        lens = full if i in cfg.fullatt_block_indexes else wins
        n = _rms(x, blk.norm1.weight)
        qkv = blk.attn.qkv(n).reshape(-1, 3, heads, hd)
        q, k, v = _rot(qkv[:, 0], cos, sin), _rot(qkv[:, 1], cos, sin), qkv[:, 2]
        o, s = torch.empty_like(q), 0
        for ln in lens:
            if ln:
                sc = torch.einsum("qhd,khd->hqk", q[s:s + ln], k[s:s + ln]) * hd ** -0.5
                o[s:s + ln] = torch.einsum("hqk,khd->qhd", sc.softmax(-1), v[s:s + ln])
            s += ln
        x = x + blk.attn.proj(o.reshape(-1, d))
        n = _rms(x, blk.norm2.weight)
        x = x + blk.mlp.down_proj(torch.nn.functional.silu(blk.mlp.gate_proj(n)) * blk.mlp.up_proj(n))
    y = _rms(x, visual.merger.ln_q.weight).reshape(-1, unit * d)
    y = visual.merger.mlp(y)
    inverse = [0] * len(order)
    for i, b in enumerate(order):
        inverse[b] = i
    return y[inverse]


def smart_resize(height, width, factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 1280):
    """HF's smart_resize (copied for the Rust table test; the processor's own is used for the fixtures)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError("aspect ratio over 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar
