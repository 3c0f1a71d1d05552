"""Sampling (DESIGN.md 4): schedule with dynamic shift (f64), Euler in f32, guidance over a batch of branches."""
import math

import torch

from .common import F32, F64
from .gen import GenExpert, UndKV


def schedule(num_steps, lat_h, lat_w):
    """t_i = i/N (i < N), t' = t / (m - m t + t), m = sqrt(lat_h*lat_w)/40, in f64; cast to f32; append 1."""
    m = math.sqrt(lat_h * lat_w) / 40.0
    t = torch.arange(num_steps, dtype=F64) / num_steps
    t = t / (m - m * t + t)
    return torch.cat([t.to(F32), torch.ones(1, dtype=F32)])


def guided_velocity(gen: GenExpert, x, t, cond: UndKV, uncond: UndKV, scale, trace=False):
    """Text guidance: v = u + s (c - u); both branches in one batch. x [C, H, W], t f32 scalar tensor.
    With scale <= 1 only the conditional branch runs."""
    if scale <= 1.0:
        out = gen.forward(x[None], t.view(1), [cond], trace=trace)
        return out["velocity"][0], {"cond": out}
    out = gen.forward(torch.stack([x, x]), t.view(1).expand(2).contiguous(), [cond, uncond], trace=trace)
    c, u = out["velocity"][0], out["velocity"][1]
    s = torch.tensor(scale, dtype=F32)
    return u + s * (c - u), {"batch": out}


def guided_velocity_edit(gen: GenExpert, x, t, cond: UndKV, ref_only: UndKV, uncond: UndKV, refs, s_img, s_txt):
    """Guidance with reference images (DESIGN.md 4): v = u + s_img (r - u) + s_txt (c - r), c = (prompt, refs),
    r = (negative prompt, refs), u = (negative prompt, no refs). c and r run as one batch (same gen layout), u alone.
    refs: list of reference latents [C, Hr, Wr]. (Not exercised by the committed fixtures.)"""
    cr = gen.forward(torch.stack([x, x]), t.view(1).expand(2).contiguous(), [cond, ref_only],
                     refs=[torch.stack([r, r]) for r in refs])
    uo = gen.forward(x[None], t.view(1), [uncond])
    c, r, u = cr["velocity"][0], cr["velocity"][1], uo["velocity"][0]
    si, st = torch.tensor(s_img, dtype=F32), torch.tensor(s_txt, dtype=F32)
    return u + si * (r - u) + st * (c - r)


def sample(gen: GenExpert, noise, timesteps, cond: UndKV, uncond: UndKV, scale, keep=()):
    """Euler from t=0 (noise) to t=1 (data): x <- x + (t_{i+1} - t_i) v(x, t_i), all in f32.
    Returns the final latent and {i: x at step i} for the requested step indices."""
    x = noise.clone()
    kept = {}
    for i in range(len(timesteps) - 1):
        if i in keep:
            kept[i] = x.clone()
        v, _ = guided_velocity(gen, x, timesteps[i], cond, uncond, scale)
        x = x + (timesteps[i + 1] - timesteps[i]) * v
    return x, kept
