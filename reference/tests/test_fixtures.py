"""Sanity of the committed fixtures (tests/fixtures/*): file layout, tensor names / dtypes / shapes as
docs/FIXTURES.md lists them, weight dtypes and name prefixes, finite O(1) values, internal consistency, size, and
a recomputation of the outputs from the committed checkpoint and inputs."""
import json
import os
import sys

import pytest
import torch
from safetensors import safe_open

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from hbridge_ref import prompts, sampler  # noqa: E402
from hbridge_ref import vae as V  # noqa: E402
from hbridge_ref.checkpoint import Bundle, gen_param_shapes  # noqa: E402
from hbridge_ref.common import load_safetensors, read_json, rel_l2  # noqa: E402
from hbridge_ref.config import GenConfig, UndTextConfig, default_pairs  # noqa: E402
from hbridge_ref.gen import UndKV  # noqa: E402

torch.set_grad_enabled(False)

FIX = os.path.join(HERE, "..", "..", "tests", "fixtures")
NAMES = ["tiny", "tiny-b"]
WEIGHT_DTYPES = {"tiny": dict(und="BF16", gen="BF16", bridge="BF16", vae="BF16"),
                 "tiny-b": dict(und="F32", gen="F16", bridge="F16", vae="F32")}


def file_dtypes(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}, {k: tuple(f.get_slice(k).get_shape())
                                                                    for k in f.keys()}


def load(name):
    root = os.path.join(FIX, name)
    return (root, load_safetensors(os.path.join(root, "inputs.safetensors"), None),
            load_safetensors(os.path.join(root, "outputs.safetensors"), None), read_json(os.path.join(root, "meta.json")))


def test_total_size_under_8mb():
    total = 0
    for dp, _, fs in os.walk(FIX):
        total += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    assert total < 8_000_000, total


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_layout(name):
    root = os.path.join(FIX, name, "model")
    hb = read_json(os.path.join(root, "hbridge.json"))
    assert hb["topology"] == "hbridge" and hb["und"] == "und" and hb["gen"] == "gen" and hb["vae"] == "vae"
    b = hb["bridge"]
    assert b["path"] == "bridge"
    und_cfg = read_json(os.path.join(root, "und", "config.json"))
    und = UndTextConfig.from_json(und_cfg)
    gcfg = GenConfig.from_json(read_json(os.path.join(root, "gen", "config.json")))
    if name == "tiny":
        assert b["num_srt_tokens"] == 16 and b["pairs"] == [[1, 1], [2, 1], [3, 2], [4, 3]]
        assert b["skip_first"] == 1 and b["skip_last"] == 1
        assert b["pairs"] == default_pairs(gcfg.num_layers, und.num_hidden_layers, 1, 1)
        assert "text_config" in und_cfg and "rope_parameters" in und_cfg["text_config"]
        assert (und.vocab_size, und.hidden_size, und.num_hidden_layers, und.num_attention_heads,
                und.num_key_value_heads, und.head_dim, und.intermediate_size, und.mrope_section, und.rope_theta,
                und.rms_norm_eps, und.tie_word_embeddings) == (512, 64, 5, 4, 2, 16, 160, [2, 3, 3], 1e6, 1e-6, False)
        v = und_cfg["vision_config"]
        assert (v["depth"], v["hidden_size"], v["num_heads"], v["intermediate_size"], v["out_hidden_size"],
                v["patch_size"], v["temporal_patch_size"], v["spatial_merge_size"], v["window_size"],
                v["fullatt_block_indexes"]) == (2, 32, 2, 64, 64, 14, 2, 2, 56, [1])
        assert (gcfg.hidden_size, gcfg.num_layers, gcfg.num_refiner_layers, gcfg.num_attention_heads,
                gcfg.num_kv_heads, gcfg.head_dim, gcfg.axes_dim_rope, gcfg.ffn_dim, gcfg.in_channels,
                gcfg.patch_size, gcfg.text_feat_dim, gcfg.timestep_scale) == (72, 6, 1, 3, 1, 24, [8, 8, 8], 288, 4,
                                                                              2, 64, 1000.0)
    else:
        assert b["num_srt_tokens"] == 5 and b["pairs"] == [[0, 2], [2, 2], [3, 5]] and "skip_first" not in b
        assert "text_config" not in und_cfg and und_cfg["rope_scaling"]["type"] == "mrope"
        assert "rope_theta" in und_cfg and "vision_config" in und_cfg
        assert (und.hidden_size, und.num_hidden_layers, und.num_attention_heads, und.num_key_value_heads,
                und.head_dim, und.intermediate_size, und.mrope_section, und.tie_word_embeddings) == (
            96, 6, 4, 1, 24, 128, [4, 4, 4], True)
        assert (gcfg.hidden_size, gcfg.num_layers, gcfg.num_refiner_layers, gcfg.num_attention_heads,
                gcfg.num_kv_heads, gcfg.head_dim, gcfg.axes_dim_rope, gcfg.ffn_dim) == (64, 5, 2, 4, 2, 16, [4, 6, 6],
                                                                                       352)
    for tokname, i in (("<|endoftext|>", 500), ("<|im_start|>", 501), ("<|im_end|>", 502)):
        assert prompts.load_tokenizer(os.path.join(root, "und", "tokenizer.json")).token_to_id(tokname) == i
    assert und_cfg["image_token_id"] == 505 and und_cfg["vision_start_token_id"] == 503

    # und tensors: prefixes, tied head, sharding, dtypes
    want = WEIGHT_DTYPES[name]
    udir = os.path.join(root, "und")
    if name == "tiny":
        dts, _ = file_dtypes(os.path.join(udir, "model.safetensors"))
        assert "lm_head.weight" in dts
        assert all(k.startswith(("model.language_model.", "model.visual.", "lm_head.")) for k in dts)
        assert any(k.startswith("model.visual.") for k in dts)
    else:
        idx = read_json(os.path.join(udir, "model.safetensors.index.json"))["weight_map"]
        files = sorted(set(idx.values()))
        assert len(files) >= 2
        dts = {}
        for fn in files:
            d, _ = file_dtypes(os.path.join(udir, fn))
            assert set(d) == {k for k, v in idx.items() if v == fn}
            dts.update(d)
        assert "lm_head.weight" not in dts
        assert all(k.startswith(("model.layers.", "model.embed_tokens.", "model.norm.", "visual.")) for k in dts)
    assert set(dts.values()) == {want["und"]}

    # gen tensors: OmniGen2 names, hbridge topology (no caption_embedder / context_refiner)
    dts, shapes = file_dtypes(os.path.join(root, "gen", "diffusion_pytorch_model.safetensors"))
    assert shapes == gen_param_shapes(gcfg)
    assert not any(k.startswith(("time_caption_embed.caption_embedder", "context_refiner")) for k in dts)
    assert set(dts.values()) == {want["gen"]}
    # bridge
    dts, shapes = file_dtypes(os.path.join(root, "bridge", "bridge.safetensors"))
    Hg, Kg, Dg = gcfg.num_attention_heads, gcfg.num_kv_heads, gcfg.head_dim
    Hu, Ku, Du = und.num_attention_heads, und.num_key_value_heads, und.head_dim
    exp = {"srt.tokens": (b["num_srt_tokens"], gcfg.hidden_size),
           "srt.proj.weight": (und.vision_out_hidden_size, gcfg.hidden_size),
           "srt.proj.bias": (und.vision_out_hidden_size,)}
    for g, _ in b["pairs"]:
        exp.update({f"bridge.layers.{g}.q_proj.weight": (Hu * Du, Hg * Dg),
                    f"bridge.layers.{g}.k_proj.weight": (Ku * Du, Kg * Dg),
                    f"bridge.layers.{g}.v_proj.weight": (Ku * Du, Kg * Dg),
                    f"bridge.layers.{g}.o_proj.weight": (Hg * Dg, Hu * Du)})
    assert shapes == exp
    assert set(dts.values()) == {want["bridge"]}
    # vae: full diffusers layout
    dts, _ = file_dtypes(os.path.join(root, "vae", "diffusion_pytorch_model.safetensors"))
    assert any(k.startswith("encoder.") for k in dts) and any(k.startswith("decoder.") for k in dts)
    assert set(dts.values()) == {want["vae"]}
    vcfg = read_json(os.path.join(root, "vae", "config.json"))
    assert vcfg["_class_name"] == "AutoencoderKL"
    assert vcfg["block_out_channels"] == ([8, 16, 16] if name == "tiny" else [8, 16])


@pytest.mark.parametrize("name", NAMES)
def test_tensor_names_and_shapes(name):
    root, inp, out, meta = load(name)
    model = os.path.join(root, "model")
    und = UndTextConfig.from_json(read_json(os.path.join(model, "und", "config.json")))
    gcfg = GenConfig.from_json(read_json(os.path.join(model, "gen", "config.json")))
    hb = read_json(os.path.join(model, "hbridge.json"))
    vcfg = read_json(os.path.join(model, "vae", "config.json"))
    f = 2 ** (len(vcfg["block_out_channels"]) - 1)
    H, W = meta["height"], meta["width"]
    C, h, w = gcfg.in_channels, H // f, W // f
    N = meta["steps"]
    n_srt = hb["bridge"]["num_srt_tokens"]
    n_gen = n_srt + (h // gcfg.patch_size) * (w // gcfg.patch_size)
    Lc, Lu, Lch = len(inp["cond.input_ids"]), len(inp["uncond.input_ids"]), len(inp["chat.input_ids"])
    paired = sorted(set(u for _, u in hb["bridge"]["pairs"]))
    V_ = und.vocab_size
    exp_in = {
        "chat.input_ids": (torch.int64, (Lch,)),
        "cond.input_ids": (torch.int64, (Lc,)), "uncond.input_ids": (torch.int64, (Lu,)),
        "cond.position_ids": (torch.int64, (3, Lc)), "uncond.position_ids": (torch.int64, (3, Lu)),
        "gen.noise": (torch.float32, (C, h, w)), "gen.timesteps": (torch.float32, (N + 1,)),
        "gen.guidance_scale": (torch.float32, (1,)), "step.x": (torch.float32, (C, h, w)),
        "step.t": (torch.float32, (1,)),
    }
    exp_out = {
        "chat.logits": (torch.float32, (Lch, V_)), "chat.greedy_ids": (torch.int64, (8,)),
        "und.logits": (torch.float32, (Lc, V_)),
        "gen.velocity.cond": (torch.float32, (C, h, w)), "gen.velocity.uncond": (torch.float32, (C, h, w)),
        "gen.velocity": (torch.float32, (C, h, w)), "gen.srt": (torch.float32, (n_srt, und.vision_out_hidden_size)),
        "sample.latent": (torch.float32, (C, h, w)), "vae.pixels": (torch.float32, (3, H, W)),
        "vae.image": (torch.uint8, (H, W, 3)),
    }
    for i in range(und.num_hidden_layers + 1):
        exp_out[f"und.hs.{i}"] = (torch.float32, (Lc, und.hidden_size))
    for u in paired:
        for pre, L in (("", Lc), ("uncond.", Lu)):
            exp_out[f"{pre}und.k.{u}"] = (torch.float32, (L, und.num_key_value_heads, und.head_dim))
            exp_out[f"{pre}und.v.{u}"] = (torch.float32, (L, und.num_key_value_heads, und.head_dim))
    for i in range(gcfg.num_layers + 1):
        exp_out[f"gen.hs.{i}"] = (torch.float32, (n_gen, gcfg.hidden_size))
    assert {k: (v.dtype, tuple(v.shape)) for k, v in inp.items()} == exp_in
    assert {k: (v.dtype, tuple(v.shape)) for k, v in out.items()} == exp_out


@pytest.mark.parametrize("name", NAMES)
def test_values_consistent(name):
    root, inp, out, meta = load(name)
    model = os.path.join(root, "model")
    tok = prompts.load_tokenizer(os.path.join(model, "und", "tokenizer.json"))
    # inputs are the templates of meta.json, tokenized without added specials
    assert tok.decode(inp["chat.input_ids"].tolist(), skip_special_tokens=False) == meta["chat_text"]
    assert tok.decode(inp["cond.input_ids"].tolist(), skip_special_tokens=False) == meta["cond_text"]
    assert tok.decode(inp["uncond.input_ids"].tolist(), skip_special_tokens=False) == meta["uncond_text"]
    assert torch.equal(inp["chat.input_ids"], prompts.chat_ids(tok, meta["chat"]))
    for br in ("cond", "uncond"):
        assert torch.equal(inp[f"{br}.position_ids"], prompts.text_positions(len(inp[f"{br}.input_ids"])))
    assert int(inp["chat.input_ids"].max()) < 512 and int(out["chat.greedy_ids"].max()) < 500
    # schedule
    ts = inp["gen.timesteps"]
    assert ts[-1] == 1.0 and ts[0] == 0.0 and bool((ts[1:] > ts[:-1]).all())
    C, h, w = inp["gen.noise"].shape
    assert torch.equal(ts, sampler.schedule(meta["steps"], h, w))
    assert torch.equal(inp["step.t"], ts[meta["trace_step"]].view(1))
    s = inp["gen.guidance_scale"][0]
    assert s == meta["guidance_scale"]
    u, c = out["gen.velocity.uncond"], out["gen.velocity.cond"]
    assert torch.equal(out["gen.velocity"], u + s * (c - u))
    assert torch.equal(out["vae.image"], V.to_image(out["vae.pixels"]))
    # a few pixels lie within 1e-3 of a rounding boundary (x.5): an engine within 1e-5 of vae.pixels may round
    # them the other way, so vae.image is to be compared with |diff| <= 1 (see reference/README.md)
    y = torch.clamp((out["vae.pixels"] + 1) / 2, 0, 1) * 255
    frac = y - torch.floor(y)
    inner = (y > 0) & (y < 255)
    assert int(((frac - 0.5).abs() < 1e-3)[inner].sum()) < 0.01 * y.numel()
    # SRT rows of gen.hs.0 are the stored srt.tokens
    bw = load_safetensors(os.path.join(model, "bridge", "bridge.safetensors"))
    n_srt = bw["srt.tokens"].shape[0]
    assert torch.equal(out["gen.hs.0"][:n_srt], bw["srt.tokens"])
    # finite, O(1)
    for k, v in out.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k
    for k in ("gen.velocity", "gen.velocity.cond", "gen.srt", "sample.latent", "vae.pixels", "chat.logits",
              f"gen.hs.{len([x for x in out if x.startswith('gen.hs.')]) - 1}"):
        assert 0.1 < out[k].std() < 20, (k, out[k].std())
    # the traced step differs from the first step and both branches differ (guidance does something)
    assert rel_l2(c, u) > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_recompute_from_checkpoint(name):
    """The committed outputs are what the reference computes from the committed checkpoint and inputs."""
    root, inp, out, meta = load(name)
    b = Bundle(os.path.join(root, "model"))
    pre = b.und.prefill(inp["chat.input_ids"], prompts.text_positions(len(inp["chat.input_ids"])))
    assert rel_l2(pre["logits"], out["chat.logits"]) < 1e-6
    assert torch.equal(b.und.greedy(inp["chat.input_ids"], prompts.text_positions(len(inp["chat.input_ids"])), 8),
                       out["chat.greedy_ids"])
    kv = {}
    for br in ("cond", "uncond"):
        p = b.und.prefill(inp[f"{br}.input_ids"], inp[f"{br}.position_ids"])
        pre_name = "" if br == "cond" else "uncond."
        for u in b.paired_und_layers:
            assert rel_l2(p["k"][u], out[f"{pre_name}und.k.{u}"]) < 1e-6
            assert rel_l2(p["v"][u], out[f"{pre_name}und.v.{u}"]) < 1e-6
        if br == "cond":
            for i, hh in enumerate(p["hs"]):
                assert rel_l2(hh, out[f"und.hs.{i}"]) < 1e-6
            assert rel_l2(p["logits"], out["und.logits"]) < 1e-6
        kv[br] = UndKV({u: p["k"][u] for u in b.paired_und_layers}, {u: p["v"][u] for u in b.paired_und_layers},
                       int(inp[f"{br}.position_ids"].max()) + 1)
    # single gen step, each branch alone
    for bi, br in enumerate(("cond", "uncond")):
        r = b.gen.forward(inp["step.x"][None], inp["step.t"], [kv[br]], trace=True)
        assert rel_l2(r["velocity"][0], out[f"gen.velocity.{br}"]) < 1e-6
        if br == "cond":
            assert rel_l2(r["srt"][0], out["gen.srt"]) < 1e-6
            for i, hh in enumerate(r["hs"]):
                assert rel_l2(hh[0], out[f"gen.hs.{i}"]) < 1e-6
    lat, _ = sampler.sample(b.gen, inp["gen.noise"], inp["gen.timesteps"], kv["cond"], kv["uncond"],
                            float(inp["gen.guidance_scale"][0]))
    assert rel_l2(lat, out["sample.latent"]) < 1e-6
    assert rel_l2(V.decode(b.vae_W, b.vae_cfg, out["sample.latent"][None])[0], out["vae.pixels"]) < 1e-6
