"""The plain gen implementation (hbridge_ref.gen) against diffusers' Lumina2 modules on the same weights:
one modulated block (with the 3-axis interleaved RoPE, the modulation, GQA, key padding), the RoPE itself, the
timestep embedding, norm_out, the FFN width rule, patchify, and the checkpoint's tensor names / shapes."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from diffusers import Lumina2Transformer2DModel  # noqa: E402
from diffusers.models.embeddings import Timesteps, TimestepEmbedding, apply_rotary_emb  # noqa: E402
from diffusers.models.transformers.transformer_lumina2 import LuminaFeedForward  # noqa: E402

from hbridge_ref import gen as G  # noqa: E402
from hbridge_ref.checkpoint import gen_param_shapes, init_module  # noqa: E402
from hbridge_ref.config import GenConfig  # noqa: E402

torch.set_grad_enabled(False)

CONFIGS = {
    # the tiny fixture's gen: 3 q heads / 1 kv head, head_dim 24, axes [8,8,8], FFN 288
    "tiny": GenConfig(patch_size=2, in_channels=4, hidden_size=72, num_layers=2, num_refiner_layers=1,
                      num_attention_heads=3, num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5,
                      axes_dim_rope=[8, 8, 8], text_feat_dim=64, timestep_scale=1000.0),
    # tiny-b: 4 / 2 heads, head_dim 16, axes [4,6,6], ffn_dim_multiplier 1.3 -> 352
    "tiny-b": GenConfig(patch_size=2, in_channels=4, hidden_size=64, num_layers=2, num_refiner_layers=2,
                        num_attention_heads=4, num_kv_heads=2, multiple_of=32, ffn_dim_multiplier=1.3, norm_eps=1e-5,
                        axes_dim_rope=[4, 6, 6], text_feat_dim=96, timestep_scale=1.0),
}


def lumina(cfg: GenConfig, seed=0):
    m = Lumina2Transformer2DModel(
        sample_size=16, patch_size=cfg.patch_size, in_channels=cfg.in_channels, hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers, num_refiner_layers=cfg.num_refiner_layers,
        num_attention_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_kv_heads, multiple_of=cfg.multiple_of,
        ffn_dim_multiplier=cfg.ffn_dim_multiplier, norm_eps=cfg.norm_eps, axes_dim_rope=tuple(cfg.axes_dim_rope),
        axes_lens=(300, 512, 512), cap_feat_dim=cfg.text_feat_dim).eval()
    init_module(m, seed)  # non-zero modulation, norm_out, ...
    return m


def weights(m):
    return {k: v.detach().float().clone() for k, v in m.state_dict().items()}


def max_abs(a, b):
    return (a - b).abs().max().item()


def positions(n_pre, grids, B):
    pos = G.gen_positions(n_pre, grids)
    return pos, pos[None].expand(B, -1, -1).contiguous()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_block_matches_lumina2(name):
    cfg = CONFIGS[name]
    m = lumina(cfg)
    W = weights(m)
    B = 2
    pos, posb = positions(16, [(3, 5), (4, 6)], B)  # SRT-like prefix, one reference image, the noisy latent
    N = pos.shape[0]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, N, cfg.hidden_size, generator=g)
    temb = torch.randn(B, cfg.temb_dim, generator=g)
    freqs_cis = m.rope_embedder._get_freqs_cis(posb)
    ang = G.gen_rope_angles(posb, cfg.axes_dim_rope)
    for mask in (None, torch.ones(B, N, dtype=torch.bool)):
        if mask is not None:
            mask[1, N - 7:] = False  # key padding on branch 1
        for i, blk in enumerate(m.layers):
            ref = blk(x, mask, freqs_cis, temb)
            out = G.modulated_block(W, f"layers.{i}.", x, temb, cfg, ang=ang, key_mask=mask)
            assert max_abs(out, ref) < 1e-5, max_abs(out, ref)
            assert ref.std() > 0.5  # all paths contribute, output O(1)
        # the noise refiner is the same block type
        ref = m.noise_refiner[0](x, mask, freqs_cis, temb)
        out = G.modulated_block(W, "noise_refiner.0.", x, temb, cfg, ang=ang, key_mask=mask)
        assert max_abs(out, ref) < 1e-5


@pytest.mark.parametrize("name", list(CONFIGS))
def test_rope_matches_lumina2(name):
    cfg = CONFIGS[name]
    m = lumina(cfg)
    pos, posb = positions(16, [(4, 6)], 1)
    fc = m.rope_embedder._get_freqs_cis(posb)  # complex128 [1, N, D/2]
    ang = G.gen_rope_angles(posb, cfg.axes_dim_rope)
    assert torch.allclose(torch.cos(ang), fc.real, atol=1e-12, rtol=0)
    assert torch.allclose(torch.sin(ang), fc.imag, atol=1e-12, rtol=0)
    x = torch.randn(1, pos.shape[0], cfg.num_attention_heads, cfg.head_dim, generator=torch.Generator().manual_seed(2))
    ref = apply_rotary_emb(x, fc, use_real=False)
    out = G.apply_gen_rope(x, ang)
    assert max_abs(out, ref) < 1e-6


def test_rope_pairs_interleaved():
    """Pair (x[2i], x[2i+1]) rotates; dims [0,a0) use axis 0 etc."""
    axes = [4, 6, 6]
    pos = torch.tensor([[[3, 0, 0]]])  # only axis 0 moves
    ang = G.gen_rope_angles(pos, axes)
    assert torch.all(ang[0, 0, 2:] == 0) and ang[0, 0, 0] == 3.0 and abs(ang[0, 0, 1] - 3.0 * 10000 ** -0.5) < 1e-12
    x = torch.zeros(1, 1, 1, 16)
    x[..., 0] = 1.0
    y = G.apply_gen_rope(x, ang)
    assert abs(y[0, 0, 0, 0] - torch.cos(torch.tensor(3.0))) < 1e-6
    assert abs(y[0, 0, 0, 1] - torch.sin(torch.tensor(3.0))) < 1e-6


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_timestep_embedding_matches_diffusers(scale):
    E = 72
    emb = TimestepEmbedding(in_channels=256, time_embed_dim=E).eval()
    init_module(emb, 3)
    W = {f"time_caption_embed.timestep_embedder.{k}": v.float() for k, v in emb.state_dict().items()}
    cfg = GenConfig(hidden_size=72, num_attention_heads=3, num_kv_heads=1, axes_dim_rope=[8, 8, 8],
                    timestep_scale=scale)
    t = torch.tensor([0.0, 0.123456, 0.5, 0.87654, 1.0], dtype=torch.float32)
    proj_ref = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0.0, scale=scale)(t)
    proj = G.timestep_proj(t, scale)
    # diffusers computes frequencies and arguments in f32; hbridge in f64 (DESIGN.md 3)
    tol = 1e-6 if scale == 1.0 else 5e-4
    assert max_abs(proj, proj_ref) < tol
    # against an independent f64 evaluation
    k = torch.arange(128, dtype=torch.float64)
    e = scale * t.double()[:, None] * torch.exp(-torch.log(torch.tensor(10000.0, dtype=torch.float64)) * k / 128)
    assert max_abs(proj.double(), torch.cat([e.cos(), e.sin()], -1)) < 1e-7
    ref = emb(proj)  # same input -> the MLP is identical
    out = G.timestep_embedding(W, t, cfg)
    assert max_abs(out, ref) < 1e-5


@pytest.mark.parametrize("name", list(CONFIGS))
def test_norm_out_matches_lumina2(name):
    cfg = CONFIGS[name]
    m = lumina(cfg)
    W = weights(m)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 10, cfg.hidden_size, generator=g)
    temb = torch.randn(2, cfg.temb_dim, generator=g)
    ref = m.norm_out(x, temb)
    out = G.norm_out(W, x, temb, cfg)
    assert max_abs(out, ref) < 1e-5


def test_ffn_width():
    assert LuminaFeedForward(64, 4 * 64, 32, 1.3).linear_1.out_features == 352 == CONFIGS["tiny-b"].ffn_dim
    assert LuminaFeedForward(72, 4 * 72, 16, None).linear_1.out_features == 288 == CONFIGS["tiny"].ffn_dim
    real = GenConfig(hidden_size=2520, num_attention_heads=21, num_kv_heads=7, multiple_of=256,
                     axes_dim_rope=[40, 40, 40])
    assert real.ffn_dim == 10240 and real.head_dim == 120 and real.temb_dim == 1024


def test_patchify_matches_lumina2():
    x = torch.randn(2, 4, 8, 12)
    p = 2
    ref = x.view(2, 4, 4, p, 6, p).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2)  # Lumina2RotaryPosEmbed
    assert torch.equal(G.patchify(x, p), ref)
    assert torch.equal(G.unpatchify(G.patchify(x, p), 4, 8, 12, p), x)
    # token (h w) row-major, features (p1 p2 c)
    assert torch.equal(G.patchify(x, p)[0, 1 * 6 + 2], x[0, :, 2:4, 4:6].permute(1, 2, 0).reshape(-1))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_checkpoint_names_match_omnigen2(name):
    """hbridge gen tensors = Lumina2's minus caption_embedder / context_refiner, plus OmniGen2's reference-image
    tensors (ref_image_patch_embedder like x_embedder, ref_image_refiner like noise_refiner, image_index_embedding)."""
    cfg = CONFIGS[name]
    sd = {k: tuple(v.shape) for k, v in lumina(cfg).state_dict().items()}
    expect = {k: v for k, v in sd.items() if not k.startswith(("time_caption_embed.caption_embedder.",
                                                                 "context_refiner."))}
    for k, v in sd.items():
        if k.startswith("x_embedder."):
            expect["ref_image_patch_embedder." + k[len("x_embedder."):]] = v
        if k.startswith("noise_refiner."):
            expect["ref_image_refiner." + k[len("noise_refiner."):]] = v
    expect["image_index_embedding"] = (5, cfg.hidden_size)
    assert gen_param_shapes(cfg) == expect


def test_positions():
    # gen RoPE: n tokens (i,i,i); ref j at (shift_j, row, col), shift_{j+1} = shift_j + max(h_j, w_j)
    pos = G.gen_positions(3, [(2, 3), (2, 2)])
    assert pos[:3].tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
    assert pos[3:9].tolist() == [[3, 0, 0], [3, 0, 1], [3, 0, 2], [3, 1, 0], [3, 1, 1], [3, 1, 2]]
    assert pos[9:].tolist() == [[6, 0, 0], [6, 0, 1], [6, 1, 0], [6, 1, 1]]
    # shared (und) positions: SRT s0+i, images as Qwen2.5-VL images from s0+n_srt, next at max + 1
    sp = G.shared_positions(10, 2, [(2, 3), (2, 2)])
    assert sp[:, :2].tolist() == [[10, 11], [10, 11], [10, 11]]
    assert sp[:, 2:8].t().tolist() == [[12, 12, 12], [12, 12, 13], [12, 12, 14], [12, 13, 12], [12, 13, 13],
                                       [12, 13, 14]]
    assert sp[:, 8:].t().tolist() == [[15, 15, 15], [15, 15, 16], [15, 16, 15], [15, 16, 16]]
