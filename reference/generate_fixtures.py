"""Generate tests/fixtures/{tiny,tiny-b}: a random checkpoint each (DESIGN.md 6 layout), the engine's inputs and
what the f32 PyTorch reference computes on the stored (rounded) weights. See docs/FIXTURES.md.

Usage: python reference/generate_fixtures.py [--only tiny|tiny-b] [--out tests/fixtures]
Deterministic: the same versions give byte-identical tensors.
"""
import argparse
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from hbridge_ref import prompts, sampler  # noqa: E402
from hbridge_ref import vae as vae_mod  # noqa: E402
from hbridge_ref.checkpoint import Bundle, create_checkpoint  # noqa: E402
from hbridge_ref.common import F32, rel_l2, save_safetensors, write_json  # noqa: E402
from hbridge_ref.gen import UndKV  # noqa: E402

REPO = os.path.dirname(HERE)

VISION_TINY = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64, patch_size=14,
                   temporal_patch_size=2, spatial_merge_size=2, window_size=56, fullatt_block_indexes=[1],
                   tokens_per_second=2, hidden_act="silu", in_channels=3)

SPECS = {
    "tiny": dict(
        seed=0,
        und_text=dict(vocab_size=512, hidden_size=64, num_hidden_layers=5, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=160, rms_norm_eps=1e-6, rope_theta=1000000.0,
                      mrope_section=[2, 3, 3]),
        und_vision=VISION_TINY,
        und_tied=False, und_layout="new", und_dtype="bf16",
        gen=dict(patch_size=2, in_channels=4, out_channels=None, hidden_size=72, num_layers=6, num_refiner_layers=1,
                 num_attention_heads=3, num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5,
                 axes_dim_rope=[8, 8, 8], axes_lens=[10000, 10000, 10000], text_feat_dim=64, timestep_scale=1000.0),
        gen_dtype="bf16", bridge_dtype="bf16",
        bridge=dict(skip_first=1, skip_last=1, num_srt_tokens=16),
        vae=dict(block_out_channels=[8, 16, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4,
                 mid_block_add_attention=True, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False),
        vae_dtype="bf16",
        width=48, height=32,
        prompt="a red cube on a blue floor", negative_prompt="", chat="Tell me about the tree.",
        steps=4, guidance=4.0, trace_step=2, greedy_tokens=8,
    ),
    "tiny-b": dict(
        seed=1,
        und_text=dict(vocab_size=512, hidden_size=96, num_hidden_layers=6, num_attention_heads=4,
                      num_key_value_heads=1, intermediate_size=128, rms_norm_eps=1e-6, rope_theta=500000.0,
                      mrope_section=[4, 4, 4]),
        und_vision=dict(VISION_TINY, hidden_size=16, num_heads=1, intermediate_size=32, out_hidden_size=96),
        und_tied=True, und_layout="old", und_dtype="f32", und_max_shard_size="1MB",
        gen=dict(patch_size=2, in_channels=4, out_channels=None, hidden_size=64, num_layers=5, num_refiner_layers=2,
                 num_attention_heads=4, num_kv_heads=2, multiple_of=32, ffn_dim_multiplier=1.3, norm_eps=1e-5,
                 axes_dim_rope=[4, 6, 6], axes_lens=[10000, 10000, 10000], text_feat_dim=96, timestep_scale=1.0),
        gen_dtype="f16", bridge_dtype="f16",
        bridge=dict(pairs=[[0, 2], [2, 2], [3, 5]], num_srt_tokens=5),
        vae=dict(block_out_channels=[8, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4,
                 mid_block_add_attention=False, scaling_factor=0.18215, shift_factor=None,
                 use_quant_conv=True, use_post_quant_conv=True),
        vae_dtype="f32",
        width=40, height=24,
        prompt="a small cat sitting on a wooden table", negative_prompt="", chat="What color is the car?",
        steps=4, guidance=4.0, trace_step=2, greedy_tokens=8,
    ),
    # The omnigen2 topology (DESIGN.md 6): caption features (und post-norm last hidden states) -> caption_embedder
    # -> context_refiner -> [text | noise], no bridge. Small enough to commit (< 0.45 MB): no vision tower in the
    # files, tied embeddings, a narrow FFN, a 2-level VAE, a small image, no chat outputs.
    "tiny-omnigen2": dict(
        seed=2, topology="omnigen2",
        und_text=dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32, rms_norm_eps=1e-6, rope_theta=1000000.0,
                      mrope_section=[2, 3, 3]),
        und_vision=dict(VISION_TINY, hidden_size=16, num_heads=1, intermediate_size=32, out_hidden_size=32),
        und_tied=True, und_layout="new", und_dtype="bf16", und_strip_vision=True,
        gen=dict(patch_size=2, in_channels=4, out_channels=None, hidden_size=24, num_layers=3, num_refiner_layers=1,
                 num_attention_heads=2, num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=0.5, norm_eps=1e-5,
                 axes_dim_rope=[4, 4, 4], axes_lens=[10000, 10000, 10000], text_feat_dim=32, timestep_scale=1000.0),
        gen_dtype="bf16",
        vae=dict(block_out_channels=[8, 8], layers_per_block=1, latent_channels=4, norm_num_groups=4,
                 mid_block_add_attention=True, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False),
        vae_dtype="bf16",
        width=24, height=16,
        prompt="a red cube", negative_prompt="", chat=None,
        steps=4, guidance=4.0, trace_step=2, greedy_tokens=8,
    ),
}


def stats(name, t):
    t = t.float()
    print(f"    {name:28s} {str(tuple(t.shape)):18s} std {t.std().item():9.4f}  max|.| {t.abs().max().item():9.4f}")


def check_against_libraries(bundle, model_dir, inputs, outputs):
    """Independent checks on the fixture's own files: HF from_pretrained (layout loads as HF reads it) and diffusers
    AutoencoderKL.decode."""
    from diffusers import AutoencoderKL
    from transformers import Qwen2_5_VLForConditionalGeneration

    und_dir = os.path.join(model_dir, "und")
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(und_dir, dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    with torch.no_grad():
        ids = inputs["cond.input_ids"]
        lg = hf(input_ids=ids[None], position_ids=inputs["cond.position_ids"][:, None, :]).logits[0]
        fin = hf(input_ids=ids[None], position_ids=inputs["cond.position_ids"][:, None, :],
                 output_hidden_states=True).hidden_states[-1][0]
    e = rel_l2(lg, outputs["und.logits"])
    print(f"    HF from_pretrained(und/) logits vs reference: rel {e:.2e}")
    assert e < 1e-6, "und checkpoint does not load the same through transformers.from_pretrained"
    if "und.final_hidden" in outputs:  # HF's last output_hidden_states entry is the post-norm one
        e = rel_l2(fin, outputs["und.final_hidden"])
        print(f"    HF hidden_states[-1] vs und.final_hidden: rel {e:.2e}")
        assert e < 1e-6

    vae = AutoencoderKL.from_pretrained(os.path.join(model_dir, "vae"), torch_dtype=torch.float32).eval()
    c = vae.config
    z = outputs["sample.latent"][None] / c.scaling_factor
    if c.shift_factor is not None:
        z = z + c.shift_factor
    with torch.no_grad():
        px = vae.decode(z).sample[0]
    e = rel_l2(px, outputs["vae.pixels"])
    print(f"    diffusers AutoencoderKL.decode vs reference: rel {e:.2e}")
    assert e < 1e-5


def generate(name, out_root):
    spec = SPECS[name]
    root = os.path.join(out_root, name)
    model_dir = os.path.join(root, "model")
    if os.path.exists(root):
        shutil.rmtree(root)
    print(f"[{name}] writing checkpoint")
    create_checkpoint(spec, model_dir)
    bundle = Bundle(model_dir)  # everything below runs on the weights read back from the files, in f32
    tok = prompts.load_tokenizer(os.path.join(model_dir, "und", "tokenizer.json"))
    gcfg = bundle.gen_cfg
    inputs, outputs = {}, {}

    topology = spec.get("topology", "hbridge")
    margin = None

    # --- chat
    if spec["chat"] is not None:
        margin = chat_outputs(bundle, tok, spec, inputs, outputs)

    # --- image-generation contexts
    kv = {}
    for br, text in (("cond", spec["prompt"]), ("uncond", spec["negative_prompt"])):
        ids = prompts.gen_ids(tok, text)
        pos = prompts.text_positions(len(ids))
        inputs[f"{br}.input_ids"] = ids
        inputs[f"{br}.position_ids"] = pos
        pre = bundle.und.prefill(ids, pos)
        pre_name = "" if br == "cond" else "uncond."
        if br == "cond":
            for i, h in enumerate(pre["hs"]):
                outputs[f"und.hs.{i}"] = h
            outputs["und.logits"] = pre["logits"]
        if topology == "omnigen2":  # the caption features of the branch
            if br == "cond":
                outputs["und.final_hidden"] = pre["final"]
            kv[br] = pre["final"]
            continue
        for u in bundle.paired_und_layers:
            outputs[f"{pre_name}und.k.{u}"] = pre["k"][u]
            outputs[f"{pre_name}und.v.{u}"] = pre["v"][u]
        kv[br] = UndKV(k={u: pre["k"][u] for u in bundle.paired_und_layers},
                       v={u: pre["v"][u] for u in bundle.paired_und_layers}, s0=int(pos.max()) + 1)
    return generate_rest(name, spec, root, model_dir, bundle, inputs, outputs, kv, margin, topology)


def chat_outputs(bundle, tok, spec, inputs, outputs):
    chat_ids = prompts.chat_ids(tok, spec["chat"])
    chat_pos = prompts.text_positions(len(chat_ids))
    inputs["chat.input_ids"] = chat_ids
    pre = bundle.und.prefill(chat_ids, chat_pos)
    outputs["chat.logits"] = pre["logits"]
    outputs["chat.greedy_ids"] = bundle.und.greedy(chat_ids, chat_pos, spec["greedy_tokens"])
    margin = bundle.und.logits_margin(chat_ids, chat_pos, spec["greedy_tokens"])
    print(f"    greedy ids {outputs['chat.greedy_ids'].tolist()}  smallest top1-top2 logit gap {margin:.4f}")
    assert margin > 0.1, "greedy decoding too close to a tie"
    assert int(outputs["chat.greedy_ids"].max()) < 500, "greedy ids must be ordinary (decodable) tokens"
    return margin


def generate_rest(name, spec, root, model_dir, bundle, inputs, outputs, kv, margin, topology):
    gcfg = bundle.gen_cfg
    # --- sampling run
    f = 2 ** (len(bundle.vae_cfg["block_out_channels"]) - 1)
    C, h, w = gcfg.in_channels, spec["height"] // f, spec["width"] // f
    assert spec["height"] % (f * gcfg.patch_size) == 0 and spec["width"] % (f * gcfg.patch_size) == 0
    noise = torch.randn(C, h, w, generator=torch.Generator().manual_seed(1000 * spec["seed"] + 7), dtype=F32)
    ts = sampler.schedule(spec["steps"], h, w)
    inputs["gen.noise"] = noise
    inputs["gen.timesteps"] = ts
    inputs["gen.guidance_scale"] = torch.tensor([spec["guidance"]], dtype=F32)
    latent, kept = sampler.sample(bundle.gen, noise, ts, kv["cond"], kv["uncond"], spec["guidance"],
                                  keep=(spec["trace_step"],))
    outputs["sample.latent"] = latent

    # --- one traced gen step at a mid point of that run
    k = spec["trace_step"]
    x_k, t_k = kept[k], ts[k]
    inputs["step.x"] = x_k
    inputs["step.t"] = t_k.view(1).clone()
    v, parts = sampler.guided_velocity(bundle.gen, x_k, t_k, kv["cond"], kv["uncond"], spec["guidance"], trace=True)
    out = parts["batch"]
    outputs["gen.velocity.cond"] = out["velocity"][0]
    outputs["gen.velocity.uncond"] = out["velocity"][1]
    outputs["gen.velocity"] = v
    if out["srt"] is not None:
        outputs["gen.srt"] = out["srt"][0]
    for i, hh in enumerate(out["hs"]):
        outputs[f"gen.hs.{i}"] = hh[0]
    # the batch of branches equals each branch run alone
    for b, br in enumerate(("cond", "uncond")):
        single = bundle.gen.forward(x_k[None], t_k.view(1), [kv[br]])
        e = rel_l2(out["velocity"][b], single["velocity"][0])
        assert e < 1e-6, (br, e)

    # --- VAE
    px = vae_mod.decode(bundle.vae_W, bundle.vae_cfg, latent[None])[0]
    outputs["vae.pixels"] = px
    outputs["vae.image"] = vae_mod.to_image(px)

    for kk in sorted(outputs):
        if outputs[kk].is_floating_point():
            assert torch.isfinite(outputs[kk]).all(), kk
    k_name = "und.k.%d" % bundle.paired_und_layers[0] if bundle.paired_und_layers else "und.final_hidden"
    for kk in ("chat.logits", "und.hs.%d" % (len(bundle.und.lm.layers)), k_name,
               "gen.hs.%d" % gcfg.num_layers, "gen.velocity.cond", "gen.velocity", "gen.srt", "sample.latent",
               "vae.pixels"):
        if kk in outputs:
            stats(kk, outputs[kk])
    frac = ((px.abs() > 1).float().mean()).item()
    print(f"    fraction of pixels clamped: {frac:.3f}")

    check_against_libraries(bundle, model_dir, inputs, outputs)

    save_safetensors({k2: v2.contiguous() for k2, v2 in inputs.items()}, os.path.join(root, "inputs.safetensors"))
    save_safetensors({k2: v2.contiguous() for k2, v2 in outputs.items()}, os.path.join(root, "outputs.safetensors"))

    import diffusers
    import tokenizers
    import transformers
    meta = {
        "name": name,
        "topology": topology,
        "chat": spec["chat"],
        "prompt": spec["prompt"],
        "negative_prompt": spec["negative_prompt"],
        "chat_text": prompts.CHAT_TEMPLATE.format(content=spec["chat"]),
        "cond_text": prompts.GEN_TEMPLATE.format(prompt=spec["prompt"]),
        "uncond_text": prompts.GEN_TEMPLATE.format(prompt=spec["negative_prompt"]),
        "steps": spec["steps"],
        "guidance_scale": spec["guidance"],
        "width": spec["width"],
        "height": spec["height"],
        "latent_shape": [C, h, w],
        "seed": spec["seed"],
        "noise_seed": 1000 * spec["seed"] + 7,
        "trace_step": k,
        "greedy_tokens": spec["greedy_tokens"],
        "greedy_min_logit_gap": None if margin is None else round(margin, 6),
        "pairs": [list(p) for p in bundle.pairs],
        "weight_dtypes": {"und": spec["und_dtype"], "gen": spec["gen_dtype"], "bridge": spec.get("bridge_dtype"),
                          "vae": spec["vae_dtype"]},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "diffusers": diffusers.__version__, "tokenizers": tokenizers.__version__,
                     "python": sys.version.split()[0]},
    }
    if spec["chat"] is None:  # no chat outputs in this fixture
        for kk in ("chat", "chat_text", "greedy_tokens", "greedy_min_logit_gap"):
            del meta[kk]
    if topology == "omnigen2":
        del meta["pairs"]
        del meta["weight_dtypes"]["bridge"]
    write_json(meta, os.path.join(root, "meta.json"))
    print(f"[{name}] done")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=sorted(SPECS), default=None)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures"))
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    for name in ([a.only] if a.only else list(SPECS)):
        generate(name, a.out)


if __name__ == "__main__":
    main()
