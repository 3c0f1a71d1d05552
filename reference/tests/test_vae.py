"""The plain VAE (hbridge_ref.vae) against diffusers' AutoencoderKL on the same weights: decode (including the
mid-block attention with its group_norm, post_quant_conv, conv_shortcut, upsampling) and encode (posterior mean)."""
import os
import sys

import pytest
import torch
from diffusers import AutoencoderKL

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hbridge_ref import vae as V  # noqa: E402
from hbridge_ref.checkpoint import init_module  # noqa: E402
from hbridge_ref.common import rel_l2  # noqa: E402

torch.set_grad_enabled(False)

CASES = {
    # the tiny fixture's VAE: f = 4, mid attention, FLUX scaling/shift, no quant convs
    "tiny": dict(block_out_channels=(8, 16, 16), norm_num_groups=4, mid_block_add_attention=True,
                 use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159),
    # tiny-b: f = 2, no mid attention, quant convs, no shift
    "tiny-b": dict(block_out_channels=(8, 16), norm_num_groups=4, mid_block_add_attention=False,
                   use_quant_conv=True, use_post_quant_conv=True, scaling_factor=0.18215, shift_factor=None),
    # two resnets per block, channel changes everywhere, attention on
    "wide": dict(block_out_channels=(8, 16, 24), norm_num_groups=8, mid_block_add_attention=True,
                 use_quant_conv=True, use_post_quant_conv=True, scaling_factor=0.5, shift_factor=-0.2,
                 layers_per_block=2),
}


def make(case):
    c = dict(CASES[case])
    n = len(c["block_out_channels"])
    lpb = c.pop("layers_per_block", 1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                        up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=lpb, latent_channels=4,
                        sample_size=32, **c).eval()
    init_module(vae, 5)
    W = {k: v.float() for k, v in vae.state_dict().items()}
    return vae, W, dict(vae.config)


@pytest.mark.parametrize("case", list(CASES))
def test_decode_matches_diffusers(case):
    vae, W, cfg = make(case)
    f = 2 ** (len(cfg["block_out_channels"]) - 1)
    z = torch.randn(2, 4, 24 // f, 40 // f, generator=torch.Generator().manual_seed(0))
    zz = z / cfg["scaling_factor"] + (cfg["shift_factor"] or 0.0)
    ref = vae.decode(zz).sample
    out = V.decode(W, cfg, z)
    assert out.shape == (2, 3, 24, 40)
    assert rel_l2(out, ref) < 1e-6, rel_l2(out, ref)
    assert 0.05 < ref.std() < 10


@pytest.mark.parametrize("case", list(CASES))
def test_encode_mean_matches_diffusers(case):
    vae, W, cfg = make(case)
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mean = vae.encode(x).latent_dist.mean
    ref = (mean - (cfg["shift_factor"] or 0.0)) * cfg["scaling_factor"]
    out = V.encode_mean(W, cfg, x)
    assert rel_l2(out, ref) < 1e-6, rel_l2(out, ref)


def test_mid_attention_uses_group_norm():
    """diffusers normalizes the attention input (DESIGN.md 4 does not say so): changing group_norm changes the
    output, and the plain implementation follows."""
    vae, W, cfg = make("tiny")
    z = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(2))
    a = V.decode(W, cfg, z)
    W2 = dict(W)
    W2["decoder.mid_block.attentions.0.group_norm.weight"] = W["decoder.mid_block.attentions.0.group_norm.weight"] * 2
    vae.decoder.mid_block.attentions[0].group_norm.weight.mul_(2)
    b = V.decode(W2, cfg, z)
    ref = vae.decode(z / cfg["scaling_factor"] + cfg["shift_factor"]).sample
    assert rel_l2(a, b) > 1e-3
    assert rel_l2(b, ref) < 1e-6


def test_to_image():
    x = torch.tensor([[[-2.0, -1.0, 0.0, 1.0, 3.0]]]).expand(3, 1, 5)
    img = V.to_image(x)
    assert img.dtype == torch.uint8 and img.shape == (1, 5, 3)
    assert img[0, :, 0].tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds half to even -> 128
