"""The und traces (hbridge_ref.und) and the und M-RoPE used by the bridge (hbridge_ref.gen.mrope_cos_sin) against HF
transformers' Qwen2.5-VL: RoPE equality, K post-RoPE / V from the cache, the pre-norm hidden-state convention,
greedy decoding vs generate(), and both config.json layouts."""
import os
import sys
import tempfile

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (  # noqa: E402
    Qwen2_5_VLRotaryEmbedding, apply_rotary_pos_emb)

from hbridge_ref import gen as G  # noqa: E402
from hbridge_ref import prompts  # noqa: E402
from hbridge_ref.checkpoint import write_und  # noqa: E402
from hbridge_ref.common import read_json, rel_l2  # noqa: E402
from hbridge_ref.config import UndTextConfig, default_pairs  # noqa: E402
from hbridge_ref.und import UndExpert  # noqa: E402

torch.set_grad_enabled(False)

VISION = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64, patch_size=14,
              temporal_patch_size=2, spatial_merge_size=2, window_size=56, fullatt_block_indexes=[1],
              tokens_per_second=2, hidden_act="silu", in_channels=3)


def spec(layout, tied, dtype="f32"):
    return dict(und_text=dict(vocab_size=512, hidden_size=96, num_hidden_layers=3, num_attention_heads=4,
                              num_key_value_heads=1, intermediate_size=128, rms_norm_eps=1e-6, rope_theta=500000.0,
                              mrope_section=[4, 4, 4]),
                und_vision=dict(VISION, out_hidden_size=96), und_tied=tied, und_layout=layout, und_dtype=dtype,
                und_max_shard_size="300KB" if layout == "old" else None)


@pytest.fixture(scope="module")
def und_dirs():
    with tempfile.TemporaryDirectory() as d:
        dirs = {}
        for layout, tied in (("new", False), ("old", True)):
            p = os.path.join(d, layout)
            write_und(spec(layout, tied), p, seed=11)
            dirs[layout] = p
        yield dirs


def test_mrope_matches_hf(und_dirs):
    und = UndExpert(und_dirs["new"])
    rot = und.lm.rotary_emb
    assert isinstance(rot, Qwen2_5_VLRotaryEmbedding)
    # text, then an image grid, then text again; batch of 2 with different offsets
    pos = torch.cat([G.shared_positions(7, 3, [(2, 3)]), torch.tensor([[13, 14], [13, 14], [13, 14]])], dim=1)
    pos = torch.stack([pos, pos + 5], dim=1)  # [3, 2, N]
    x = torch.zeros(2, pos.shape[-1], 4)
    cos_ref, sin_ref = rot(x, pos)
    cos, sin = G.mrope_cos_sin(pos, 24, 500000.0, [4, 4, 4])
    assert torch.equal(cos, cos_ref) and torch.equal(sin, sin_ref)
    q = torch.randn(2, pos.shape[-1], 4, 24)
    q_ref, _ = apply_rotary_pos_emb(q.transpose(1, 2), q.transpose(1, 2), cos_ref, sin_ref)
    assert torch.equal(G.apply_mrope(q, cos, sin), q_ref.transpose(1, 2))


@pytest.mark.parametrize("layout", ["new", "old"])
def test_prefill_traces(und_dirs, layout):
    und = UndExpert(und_dirs[layout])
    t = und.tcfg
    tok = prompts.load_tokenizer()
    ids = prompts.gen_ids(tok, "a red cube on a blue floor")
    pos = prompts.text_positions(len(ids))
    out = und.prefill(ids, pos)
    L = len(ids)
    assert len(out["hs"]) == t.num_hidden_layers + 1
    assert torch.equal(out["hs"][0], und.lm.embed_tokens.weight[ids])
    # HF output_hidden_states: same entries except the last one, which HF gives post-norm
    hf = und.model(input_ids=ids[None], position_ids=pos[:, None, :], output_hidden_states=True)
    for i in range(t.num_hidden_layers):
        assert torch.equal(hf.hidden_states[i][0], out["hs"][i])
    final = und.lm.norm(out["hs"][-1])
    assert rel_l2(hf.hidden_states[-1][0], final) < 1e-6
    assert rel_l2(und.model.lm_head(final), out["logits"]) < 1e-6
    # K = rope(k_proj(input_layernorm(hs[i]))) with the M-RoPE of the position triples, V = v_proj(...)
    cos, sin = G.mrope_cos_sin(pos[:, None, :], t.head_dim, t.rope_theta, t.mrope_section)
    for i, layer in enumerate(und.lm.layers):
        n = layer.input_layernorm(out["hs"][i][None])
        k = layer.self_attn.k_proj(n).view(1, L, t.num_key_value_heads, t.head_dim)
        v = layer.self_attn.v_proj(n).view(1, L, t.num_key_value_heads, t.head_dim)
        assert out["k"][i].shape == (L, t.num_key_value_heads, t.head_dim)
        assert rel_l2(G.apply_mrope(k, cos, sin)[0], out["k"][i]) < 1e-6
        assert rel_l2(v[0], out["v"][i]) < 1e-6
    if layout == "old":  # tied: the head is the embedding
        assert torch.equal(und.model.lm_head.weight, und.lm.embed_tokens.weight)


@pytest.mark.parametrize("layout", ["new", "old"])
def test_greedy_matches_generate(und_dirs, layout):
    und = UndExpert(und_dirs[layout])
    tok = prompts.load_tokenizer()
    ids = prompts.chat_ids(tok, "What color is the cube?")
    pos = prompts.text_positions(len(ids))
    ours = und.greedy(ids, pos, 8)
    gen = und.model.generate(input_ids=ids[None], max_new_tokens=8, min_new_tokens=8, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    assert gen[0, len(ids):].tolist() == ours.tolist()


def test_config_layouts(und_dirs):
    new = read_json(os.path.join(und_dirs["new"], "config.json"))
    old = read_json(os.path.join(und_dirs["old"], "config.json"))
    assert "text_config" in new and "rope_parameters" in new["text_config"]
    assert "text_config" not in old and old["rope_scaling"] == {"type": "mrope", "mrope_section": [4, 4, 4]}
    a, b = UndTextConfig.from_json(new), UndTextConfig.from_json(old)
    assert (a.hidden_size, a.num_attention_heads, a.num_key_value_heads, a.head_dim, a.rope_theta,
            a.mrope_section) == (96, 4, 1, 24, 500000.0, [4, 4, 4])
    assert a.tie_word_embeddings is False and b.tie_word_embeddings is True
    assert a.vision_out_hidden_size == b.vision_out_hidden_size == 96
    a.tie_word_embeddings = True
    assert a == b
    # file layouts
    from safetensors import safe_open
    with safe_open(os.path.join(und_dirs["new"], "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" in keys and "model.language_model.embed_tokens.weight" in keys
    assert all(k.startswith(("model.language_model.", "model.visual.", "lm_head.")) for k in keys)
    idx = read_json(os.path.join(und_dirs["old"], "model.safetensors.index.json"))["weight_map"]
    assert len(set(idx.values())) >= 2 and "lm_head.weight" not in idx and "model.embed_tokens.weight" in idx
    assert all(k.startswith(("model.layers.", "model.embed_tokens.", "model.norm.", "visual.")) for k in idx)


def test_default_pairs():
    assert default_pairs(6, 5, 1, 1) == [[1, 1], [2, 1], [3, 2], [4, 3]]
    p = default_pairs(32, 28, 6, 6)  # the paper's 7B/4B setting: gen 6..25 onto und 6..21
    assert p[0] == [6, 6] and p[-1] == [25, 21] and len(p) == 20
