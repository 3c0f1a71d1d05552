"""diffusers AutoencoderKL decoder (and encoder, posterior mean) in plain PyTorch, f32, structure read from
vae/config.json (DESIGN.md 4). Tensor names are diffusers' own.

Note: the mid-block attention of diffusers normalizes its input with a GroupNorm (`group_norm`, the resnet group
count, eps 1e-6) before q/k/v; DESIGN.md 4 omits it; this follows diffusers.
"""
import torch
import torch.nn.functional as Fn

from .common import REFERENCE, Impl, sdpa

EPS = 1e-6


def gn(x, W, name, groups):
    return Fn.group_norm(x, groups, W[name + ".weight"], W[name + ".bias"], eps=EPS)


def conv(x, W, name, stride=1, padding=None):
    w = W[name + ".weight"]
    if padding is None:
        padding = w.shape[-1] // 2
    return Fn.conv2d(x, w, W.get(name + ".bias"), stride=stride, padding=padding)


def resnet(x, W, p, groups):
    h = conv(Fn.silu(gn(x, W, p + "norm1", groups)), W, p + "conv1")
    h = conv(Fn.silu(gn(h, W, p + "norm2", groups)), W, p + "conv2")
    if p + "conv_shortcut.weight" in W:
        x = conv(x, W, p + "conv_shortcut", padding=0)
    return x + h


def mid_attention(x, W, p, groups, impl: Impl = REFERENCE):
    """Single head over all H*W positions, head dim C: GroupNorm, biased q/k/v, softmax(q k^T C^-0.5) v, to_out.0,
    plus the residual. impl.sdpa: the softmax through scaled_dot_product_attention."""
    B, C, H, Wd = x.shape
    h = gn(x, W, p + "group_norm", groups).view(B, C, H * Wd).transpose(1, 2)
    q = Fn.linear(h, W[p + "to_q.weight"], W[p + "to_q.bias"])
    k = Fn.linear(h, W[p + "to_k.weight"], W[p + "to_k.bias"])
    v = Fn.linear(h, W[p + "to_v.weight"], W[p + "to_v.bias"])
    if impl.sdpa:
        o = sdpa(q[:, None], k[:, None], v[:, None], C ** -0.5, None, impl, "VAE mid-block attention")[:, 0]
    else:
        a = torch.softmax(torch.einsum("bqc,bkc->bqk", q, k) * (C ** -0.5), dim=-1)
        o = torch.einsum("bqk,bkc->bqc", a, v)
    o = Fn.linear(o, W[p + "to_out.0.weight"], W[p + "to_out.0.bias"])
    return o.transpose(1, 2).reshape(B, C, H, Wd) + x


def mid_block(x, W, p, cfg, impl: Impl = REFERENCE):
    g = cfg["norm_num_groups"]
    x = resnet(x, W, p + "resnets.0.", g)
    if cfg.get("mid_block_add_attention", True):
        x = mid_attention(x, W, p + "attentions.0.", g, impl)
    return resnet(x, W, p + "resnets.1.", g)


def decode(W, cfg, z, impl: Impl = REFERENCE):
    """z [B, C_lat, h, w] (the sampler's latent) -> x [B, 3, H, W], unclamped.
    z / scaling_factor + shift_factor, post_quant_conv, decoder."""
    g = cfg["norm_num_groups"]
    z = z / cfg["scaling_factor"]
    if cfg.get("shift_factor") is not None:
        z = z + cfg["shift_factor"]
    if cfg.get("use_post_quant_conv", True):
        z = conv(z, W, "post_quant_conv", padding=0)
    h = conv(z, W, "decoder.conv_in")
    h = mid_block(h, W, "decoder.mid_block.", cfg, impl)
    n = len(cfg["block_out_channels"])
    for i in range(n):
        for r in range(cfg["layers_per_block"] + 1):
            h = resnet(h, W, f"decoder.up_blocks.{i}.resnets.{r}.", g)
        if i < n - 1:
            h = Fn.interpolate(h, scale_factor=2.0, mode="nearest")
            h = conv(h, W, f"decoder.up_blocks.{i}.upsamplers.0.conv")
    h = Fn.silu(gn(h, W, "decoder.conv_norm_out", g))
    return conv(h, W, "decoder.conv_out")


def encode_mean(W, cfg, x, impl: Impl = REFERENCE):
    """x [B, 3, H, W] in [-1, 1] -> (posterior mean - shift_factor) * scaling_factor [B, C_lat, h, w]."""
    g = cfg["norm_num_groups"]
    h = conv(x, W, "encoder.conv_in")
    n = len(cfg["block_out_channels"])
    for i in range(n):
        for r in range(cfg["layers_per_block"]):
            h = resnet(h, W, f"encoder.down_blocks.{i}.resnets.{r}.", g)
        if i < n - 1:
            h = Fn.pad(h, (0, 1, 0, 1), mode="constant", value=0.0)
            h = conv(h, W, f"encoder.down_blocks.{i}.downsamplers.0.conv", stride=2, padding=0)
    h = mid_block(h, W, "encoder.mid_block.", cfg, impl)
    h = Fn.silu(gn(h, W, "encoder.conv_norm_out", g))
    h = conv(h, W, "encoder.conv_out")
    if cfg.get("use_quant_conv", True):
        h = conv(h, W, "quant_conv", padding=0)
    mean = h[:, : cfg["latent_channels"]]
    if cfg.get("shift_factor") is not None:
        mean = mean - cfg["shift_factor"]
    return mean * cfg["scaling_factor"]


def to_image(x):
    """[3, H, W] in ~[-1, 1] -> u8 [H, W, 3]: round(clamp((x+1)/2, 0, 1) * 255) (round half to even)."""
    y = torch.round(torch.clamp((x + 1) / 2, 0, 1) * 255)
    return y.to(torch.uint8).permute(1, 2, 0).contiguous()
