"""The omnigen2 topology's gen forward (hbridge_ref.gen.Omnigen2Expert, DESIGN.md 3 and 6) against diffusers'
Lumina2 where the two models share a piece (the context_refiner block = Lumina2's unmodulated block, the caption
embedder), the checkpoint's tensor names, and the structure of the forward (caption -> context_refiner ->
[text | noise], latent positions shifted by the caption length, branches of different caption lengths)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from diffusers import Lumina2Transformer2DModel  # noqa: E402

from hbridge_ref import gen as G  # noqa: E402
from hbridge_ref.checkpoint import gen_param_shapes, init_dict, init_module  # noqa: E402
from hbridge_ref.common import rel_l2  # noqa: E402
from hbridge_ref.config import GenConfig  # noqa: E402

torch.set_grad_enabled(False)

CONFIGS = {
    # the tiny-omnigen2 fixture's gen: 2 q heads / 1 kv head, head_dim 12, axes [4,4,4], FFN 48
    "tiny-omnigen2": GenConfig(patch_size=2, in_channels=4, hidden_size=24, num_layers=3, num_refiner_layers=1,
                               num_attention_heads=2, num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=0.5,
                               norm_eps=1e-5, axes_dim_rope=[4, 4, 4], text_feat_dim=32, timestep_scale=1000.0),
    "wide": GenConfig(patch_size=2, in_channels=4, hidden_size=64, num_layers=2, num_refiner_layers=2,
                      num_attention_heads=4, num_kv_heads=2, multiple_of=32, ffn_dim_multiplier=1.3, norm_eps=1e-5,
                      axes_dim_rope=[4, 6, 6], text_feat_dim=40, timestep_scale=1.0),
}


def lumina(cfg: GenConfig, seed=0):
    m = Lumina2Transformer2DModel(
        sample_size=16, patch_size=cfg.patch_size, in_channels=cfg.in_channels, hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers, num_refiner_layers=cfg.num_refiner_layers,
        num_attention_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_kv_heads, multiple_of=cfg.multiple_of,
        ffn_dim_multiplier=cfg.ffn_dim_multiplier, norm_eps=cfg.norm_eps, axes_dim_rope=tuple(cfg.axes_dim_rope),
        axes_lens=(300, 512, 512), cap_feat_dim=cfg.text_feat_dim).eval()
    init_module(m, seed)
    return m


def weights(m):
    return {k: v.detach().float().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_context_refiner_matches_lumina2(name):
    cfg = CONFIGS[name]
    m = lumina(cfg)
    W = weights(m)
    B, L = 2, 11
    pos = G.gen_positions(L, [])  # caption i -> (i, i, i)
    posb = pos[None].expand(B, -1, -1).contiguous()
    freqs_cis = m.rope_embedder._get_freqs_cis(posb)
    ang = G.gen_rope_angles(posb, cfg.axes_dim_rope)
    x = torch.randn(B, L, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    for mask in (None, torch.ones(B, L, dtype=torch.bool)):
        if mask is not None:
            mask[1, L - 4:] = False
        for j, blk in enumerate(m.context_refiner):
            assert not blk.modulation
            ref = blk(x, mask, freqs_cis)
            out = G.unmodulated_block(W, f"context_refiner.{j}.", x, ang, cfg, key_mask=mask)
            assert (out - ref).abs().max().item() < 1e-5
            assert ref.std() > 0.5


@pytest.mark.parametrize("name", list(CONFIGS))
def test_caption_embedder_matches_lumina2(name):
    cfg = CONFIGS[name]
    m = lumina(cfg)
    W = weights(m)
    feats = torch.randn(2, 9, cfg.text_feat_dim, generator=torch.Generator().manual_seed(2))
    ref = m.time_caption_embed.caption_embedder(feats)
    out = G.caption_embed(W, feats, cfg)
    assert (out - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", list(CONFIGS))
def test_checkpoint_names_match_omnigen2(name):
    """omnigen2 gen tensors = Lumina2's (caption_embedder and context_refiner included) plus OmniGen2's
    reference-image tensors."""
    cfg = CONFIGS[name]
    sd = {k: tuple(v.shape) for k, v in lumina(cfg).state_dict().items()}
    expect = dict(sd)
    for k, v in sd.items():
        if k.startswith("x_embedder."):
            expect["ref_image_patch_embedder." + k[len("x_embedder."):]] = v
        if k.startswith("noise_refiner."):
            expect["ref_image_refiner." + k[len("noise_refiner."):]] = v
    expect["image_index_embedding"] = (5, cfg.hidden_size)
    assert gen_param_shapes(cfg, "omnigen2") == expect


def literal(W, cfg, x, t, caption):
    """A literal transcription of DESIGN.md 6 for one branch, no references (independent of forward_one)."""
    p = cfg.patch_size
    C, H, Wd = x.shape
    L = caption.shape[0]
    temb = G.timestep_embedding(W, t.view(1), cfg)
    cap_pos = torch.stack([torch.arange(L)] * 3, dim=-1)
    r = torch.arange(H // p).repeat_interleave(Wd // p)
    c = torch.arange(Wd // p).repeat(H // p)
    lat_pos = torch.stack([torch.full_like(r, L), r, c], dim=-1)
    ang_c = G.gen_rope_angles(cap_pos[None], cfg.axes_dim_rope)
    ang_l = G.gen_rope_angles(lat_pos[None], cfg.axes_dim_rope)
    cap = G.caption_embed(W, caption[None], cfg)
    for j in range(cfg.num_refiner_layers):
        cap = G.unmodulated_block(W, f"context_refiner.{j}.", cap, ang_c, cfg)
    lat = G.linear(G.patchify(x[None], p), W, "x_embedder")
    for j in range(cfg.num_refiner_layers):
        lat = G.modulated_block(W, f"noise_refiner.{j}.", lat, temb, cfg, ang=ang_l)
    h = torch.cat([cap, lat], dim=1)
    ang = torch.cat([ang_c, ang_l], dim=1)
    for i in range(cfg.num_layers):
        h = G.modulated_block(W, f"layers.{i}.", h, temb, cfg, ang=ang)
    return G.unpatchify(G.norm_out(W, h[:, L:], temb, cfg), cfg.out_ch, H, Wd, p)[0]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward(name):
    cfg = CONFIGS[name]
    W = init_dict(gen_param_shapes(cfg, "omnigen2"), 5)
    gen = G.Omnigen2Expert(cfg, W)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 8, 12, generator=g)
    t = torch.tensor(0.37)
    caps = [torch.randn(L, cfg.text_feat_dim, generator=g) for L in (13, 7)]
    out = gen.forward(torch.stack([x, x]), t.view(1).expand(2), caps, trace=True)
    for b in range(2):
        want = literal(W, cfg, x, t, caps[b])
        assert rel_l2(out["velocity"][b], want) < 1e-6
        # hs[0] = [refined caption | refined latent], one row per token of the branch's sequence
        assert out["hs"][0][b].shape == (caps[b].shape[0] + 24, cfg.hidden_size)
        assert len(out["hs"]) == cfg.num_layers + 1
    assert out["srt"] is None
    # the caption reaches the velocity; the refiner's RoPE positions matter
    assert rel_l2(out["velocity"][0], out["velocity"][1]) > 1e-2
    # a reference image changes the output and runs
    ref = torch.randn(1, 4, 6, 8, generator=g)
    with_ref = gen.forward(x[None], t.view(1), caps[:1], refs=[ref])
    assert rel_l2(with_ref["velocity"][0], out["velocity"][0]) > 1e-3


FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "tiny-omnigen2")


def test_fixture_recompute_from_checkpoint():
    """tests/fixtures/tiny-omnigen2: layout (no bridge, no vision tower, context_refiner + caption_embedder present)
    and its outputs recomputed from the committed checkpoint and inputs."""
    from hbridge_ref import sampler
    from hbridge_ref import vae as V
    from hbridge_ref.checkpoint import Bundle
    from hbridge_ref.common import load_safetensors, read_json

    model = os.path.join(FIXTURE, "model")
    hb = read_json(os.path.join(model, "hbridge.json"))
    assert hb == {"topology": "omnigen2", "und": "und", "gen": "gen", "vae": "vae"}
    assert not os.path.exists(os.path.join(model, "bridge"))
    und_w = load_safetensors(os.path.join(model, "und", "model.safetensors"), None)
    assert not any("visual" in k for k in und_w) and "lm_head.weight" not in und_w
    gen_w = load_safetensors(os.path.join(model, "gen", "diffusion_pytorch_model.safetensors"), None)
    assert "context_refiner.0.norm1.weight" in gen_w and "time_caption_embed.caption_embedder.1.bias" in gen_w
    inp = load_safetensors(os.path.join(FIXTURE, "inputs.safetensors"), None)
    out = load_safetensors(os.path.join(FIXTURE, "outputs.safetensors"), None)
    assert not any(k.startswith(("chat.", "uncond.und.")) or ".k." in k or k == "gen.srt" for k in out)
    b = Bundle(model)
    feats = {}
    for br in ("cond", "uncond"):
        p = b.und.prefill(inp[f"{br}.input_ids"], inp[f"{br}.position_ids"])
        feats[br] = p["final"]
        if br == "cond":
            assert rel_l2(p["final"], out["und.final_hidden"]) < 1e-6
            assert rel_l2(p["logits"], out["und.logits"]) < 1e-6
    for br in ("cond", "uncond"):
        r = b.gen.forward(inp["step.x"][None], inp["step.t"], [feats[br]], trace=True)
        assert rel_l2(r["velocity"][0], out[f"gen.velocity.{br}"]) < 1e-6
        if br == "cond":
            assert len(r["hs"]) == b.gen_cfg.num_layers + 1
            for i, hh in enumerate(r["hs"]):
                assert rel_l2(hh[0], out[f"gen.hs.{i}"]) < 1e-6
    lat, _ = sampler.sample(b.gen, inp["gen.noise"], inp["gen.timesteps"], feats["cond"], feats["uncond"],
                            float(inp["gen.guidance_scale"][0]))
    assert rel_l2(lat, out["sample.latent"]) < 1e-6
    assert rel_l2(V.decode(b.vae_W, b.vae_cfg, out["sample.latent"][None])[0], out["vae.pixels"]) < 1e-6
