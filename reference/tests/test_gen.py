"""Whole gen step of hbridge_ref.gen on a random tiny checkpoint: batching of branches with different context
lengths equals running each branch alone, the bridge / SRT / reference-image paths all change the output, and the
bridged attention equals a literal transcription of DESIGN.md 5."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hbridge_ref import gen as G  # noqa: E402
from hbridge_ref import sampler  # noqa: E402
from hbridge_ref.checkpoint import bridge_param_shapes, gen_param_shapes, init_dict  # noqa: E402
from hbridge_ref.common import rel_l2  # noqa: E402
from hbridge_ref.config import GenConfig, UndTextConfig  # noqa: E402

torch.set_grad_enabled(False)

CFG = GenConfig(patch_size=2, in_channels=4, hidden_size=64, num_layers=4, num_refiner_layers=2,
                num_attention_heads=4, num_kv_heads=2, multiple_of=32, ffn_dim_multiplier=1.3,
                axes_dim_rope=[4, 6, 6], timestep_scale=1000.0)
UND = UndTextConfig(vocab_size=512, hidden_size=96, num_hidden_layers=6, num_attention_heads=4,
                    num_key_value_heads=1, head_dim=24, intermediate_size=128, rms_norm_eps=1e-6,
                    rope_theta=1e6, mrope_section=[4, 4, 4], tie_word_embeddings=True, vision_out_hidden_size=96)
PAIRS = [[0, 2], [2, 2], [3, 5]]


def model():
    W = init_dict(gen_param_shapes(CFG), 1)
    W.update(init_dict(bridge_param_shapes(CFG, UND, PAIRS, 5), 2))
    return G.GenExpert(CFG, UND, W, PAIRS, 5)


def ctx(L, seed):
    g = torch.Generator().manual_seed(seed)
    return G.UndKV({u: torch.randn(L, 1, 24, generator=g) for u in (2, 5)},
                   {u: torch.randn(L, 1, 24, generator=g) for u in (2, 5)}, s0=L)


def test_batch_equals_single():
    m = model()
    x = torch.randn(2, 4, 12, 20, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.3, 0.7])
    c = [ctx(31, 4), ctx(17, 5)]
    ref = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(6))
    for refs in (None, [ref]):
        both = m.forward(x, t, c, refs=refs, trace=True)
        for b in range(2):
            one = m.forward(x[b:b + 1], t[b:b + 1], [c[b]], refs=None if refs is None else [refs[0][b:b + 1]],
                            trace=True)
            assert rel_l2(both["velocity"][b], one["velocity"][0]) < 1e-6
            assert rel_l2(both["srt"][b], one["srt"][0]) < 1e-6
            for h1, h2 in zip(both["hs"], one["hs"]):
                assert rel_l2(h1[b], h2[0]) < 1e-6


def test_every_path_contributes():
    m = model()
    x = torch.randn(1, 4, 12, 20, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([0.4])
    base = m.forward(x, t, [ctx(20, 8)])
    assert 0.3 < base["velocity"].std() < 5
    assert rel_l2(m.forward(x, t, [ctx(20, 9)])["velocity"], base["velocity"]) > 1e-2  # und context
    assert rel_l2(m.forward(x, torch.tensor([0.6]), [ctx(20, 8)])["velocity"], base["velocity"]) > 1e-2  # t
    ref = torch.randn(1, 4, 8, 6)
    assert rel_l2(m.forward(x, t, [ctx(20, 8)], refs=[ref])["velocity"], base["velocity"]) > 1e-2  # reference
    W2 = dict(m.W)
    W2["srt.tokens"] = m.W["srt.tokens"] * 0.5
    m2 = G.GenExpert(CFG, UND, W2, PAIRS, 5)
    assert rel_l2(m2.forward(x, t, [ctx(20, 8)])["velocity"], base["velocity"]) > 1e-3  # SRT tokens


def test_bridged_attention_literal():
    """DESIGN.md 5 transcribed for one token set, one branch, with explicit loops over heads."""
    m = model()
    W = m.W
    g_layer, u = 2, 2
    N = 9
    h = torch.randn(1, N, 64, generator=torch.Generator().manual_seed(10))
    c = ctx(7, 11)
    pos = G.shared_positions(c.s0, 3, [(2, 3)])  # [3, N]
    cos, sin = G.mrope_cos_sin(pos[:, None, :], 24, UND.rope_theta, UND.mrope_section)
    bctx = G.BridgeContext({u: c.k[u][None]}, {u: c.v[u][None]}, torch.ones(1, 7, dtype=torch.bool), cos, sin)
    out = G.bridged_attention(W, f"layers.{g_layer}.", h, g_layer, u, bctx, CFG, UND)

    p = f"layers.{g_layer}."
    q = h[0] @ W[p + "attn.to_q.weight"].T
    k = h[0] @ W[p + "attn.to_k.weight"].T
    v = h[0] @ W[p + "attn.to_v.weight"].T
    q = torch.cat([G.rms_norm(q[:, i * 16:(i + 1) * 16], W[p + "attn.norm_q.weight"], 1e-5) for i in range(4)], 1)
    k = torch.cat([G.rms_norm(k[:, i * 16:(i + 1) * 16], W[p + "attn.norm_k.weight"], 1e-5) for i in range(2)], 1)
    bp = f"bridge.layers.{g_layer}."
    qs, ks, vs = q @ W[bp + "q_proj.weight"].T, k @ W[bp + "k_proj.weight"].T, v @ W[bp + "v_proj.weight"].T
    # und M-RoPE, rotate_half, per 24-dim head; frequency k uses t / h / w by mrope_section [4,4,4]
    inv = 1.0 / (UND.rope_theta ** (torch.arange(0, 24, 2, dtype=torch.float64) / 24))
    axis = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    ang = pos.t().double()[:, axis] * inv  # [N, 12]
    cs, sn = torch.cat([ang.cos(), ang.cos()], 1), torch.cat([ang.sin(), ang.sin()], 1)

    def rope(x):
        x = x.double()
        return (x * cs + torch.cat([-x[:, 12:], x[:, :12]], 1) * sn)

    qs = torch.cat([rope(qs[:, i * 24:(i + 1) * 24]) for i in range(4)], 1)
    ks = rope(ks)
    K = torch.cat([c.k[u][:, 0].double(), ks], 0)
    V = torch.cat([c.v[u][:, 0].double(), vs.double()], 0)
    o = torch.cat([torch.softmax(qs[:, i * 24:(i + 1) * 24] @ K.T / 24 ** 0.5, -1) @ V for i in range(4)], 1)
    o = o.float() @ W[bp + "o_proj.weight"].T
    ref = o @ W[p + "attn.to_out.0.weight"].T
    assert rel_l2(out[0], ref) < 1e-5


def test_edit_guidance_formula():
    m = model()
    x = torch.randn(4, 12, 20)
    t = torch.tensor(0.5)
    c, r, u = ctx(20, 12), ctx(18, 13), ctx(15, 14)
    ref = torch.randn(4, 8, 6)
    v = sampler.guided_velocity_edit(m, x, t, c, r, u, [ref], 2.0, 5.0)
    vc = m.forward(x[None], t.view(1), [c], refs=[ref[None]])["velocity"][0]
    vr = m.forward(x[None], t.view(1), [r], refs=[ref[None]])["velocity"][0]
    vu = m.forward(x[None], t.view(1), [u])["velocity"][0]
    assert rel_l2(v, vu + 2.0 * (vr - vu) + 5.0 * (vc - vr)) < 1e-5  # batch vs single, amplified by s_txt


def test_schedule():
    ts = sampler.schedule(50, 128, 128)  # 1024x1024 with f = 8: m = 3.2
    assert ts.dtype == torch.float32 and ts.shape == (51,) and ts[0] == 0 and ts[-1] == 1
    t = 0.5
    assert abs(float(ts[25]) - t / (3.2 - 3.2 * t + t)) < 1e-7
    small = sampler.schedule(4, 8, 12)  # m < 1 for tiny latents: t' > t
    assert bool((small[1:4] > torch.tensor([0.25, 0.5, 0.75])).all())
