"""Generate tests/fixtures/edit: image editing on the committed `tiny` checkpoint (tests/fixtures/tiny/model, which
already holds the VAE encoder and the reference-image tensors of the gen expert), see docs/FIXTURES.md ("edit").

  ref0.png       48x32 reference image, already a multiple of the VAE factor x patch (8): used as is
  ref1.png       35x53 reference image: resized (OmniGen2's rule and PIL's Lanczos) to 32x48 before encoding
  vae_b.png      40x24 image for the tiny-b VAE encoder (quant_conv, no mid attention, no shift)
  o2_ref.png     16x24 reference image for one traced step of the omnigen2 topology (tests/fixtures/tiny-omnigen2)
  inputs.safetensors, outputs.safetensors, meta.json

Usage: python reference/generate_edit_fixtures.py [--out tests/fixtures/edit]
Deterministic with the pinned versions. Everything is computed from the files as written (bf16 weights widened to
f32, PNGs read back).
"""
import argparse
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from hbridge_ref import edit, prompts  # noqa: E402
from hbridge_ref import sampler as sampler_mod  # noqa: E402
from hbridge_ref import vae as vae_mod  # noqa: E402
from hbridge_ref.checkpoint import Bundle  # noqa: E402
from hbridge_ref.common import F32, load_safetensors, read_json, rel_l2, save_safetensors, write_json  # noqa: E402
from hbridge_ref.gen import UndKV  # noqa: E402

REPO = os.path.dirname(HERE)
FIXTURES = os.path.join(REPO, "tests", "fixtures")

SPEC = dict(
    model="tiny",  # reused checkpoint: tests/fixtures/tiny/model
    vae_b_model="tiny-b",  # its VAE only, for a second encoder configuration
    images=[("ref0.png", 48, 32, 11), ("ref1.png", 35, 53, 12)],  # (file, width, height, pattern seed)
    vae_b_image=("vae_b.png", 40, 24, 13),
    # the omnigen2 topology (caption features, [text | refs | noise]): one traced step, one reference
    omnigen2_model="tiny-omnigen2", omnigen2_image=("o2_ref.png", 16, 24, 14), omnigen2_latent=[4, 8, 12],
    omnigen2_t=0.4, omnigen2_seed=4343,
    width=48, height=32,  # the output: the first reference's (resized) size
    prompt="make the cube green", negative_prompt="",
    steps=3, trace_step=1, text_guidance=5.0, image_guidance=2.0, noise_seed=4242,
)


def pattern(width, height, seed):
    """A smooth colour pattern plus a little noise (compresses well, non-trivial for every conv tap)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    chans = []
    for c in range(3):
        a, b, ph = (torch.rand(3, generator=g, dtype=torch.float64) * torch.tensor([3.0, 3.0, 6.28])).tolist()
        v = 127.5 + 90.0 * torch.sin(2 * np.pi * (a * xx / width + b * yy / height) + ph)
        v = v + 12.0 * torch.randn(height, width, generator=g, dtype=torch.float64)
        chans.append(v)
    return torch.stack(chans, dim=-1).round().clamp(0, 255).to(torch.uint8).numpy()


def write_png(path, rgb):
    Image.fromarray(rgb, mode="RGB").save(path, format="PNG", optimize=True)
    back = np.asarray(Image.open(path).convert("RGB"))
    assert (back == rgb).all()
    return back


def diffusers_encode(vae_dir, pixels):
    """diffusers AutoencoderKL.encode(...).latent_dist.mean, then (z - shift) * scale (OmniGen2's pipeline)."""
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        z = vae.encode(pixels[None]).latent_dist.mean[0]
    c = vae.config
    if c.shift_factor is not None:
        z = z - c.shift_factor
    return z * c.scaling_factor


def encode_checked(vae_dir, vae_W, vae_cfg, pixels, label):
    """The reference latent of an image: diffusers' value, checked against the plain reference encoder."""
    z = diffusers_encode(vae_dir, pixels)
    plain = vae_mod.encode_mean(vae_W, vae_cfg, pixels[None])[0]
    e = rel_l2(plain, z)
    print(f"    {label}: diffusers vs plain encoder rel {e:.2e}, std {z.std().item():.4f}")
    assert e < 1e-6, e
    return z


def context(bundle, tok, text, images=()):
    ids, pos, pre = edit.und_prefill(bundle, tok, text, images)
    kv = UndKV(k={u: pre["k"][u] for u in bundle.paired_und_layers},
               v={u: pre["v"][u] for u in bundle.paired_und_layers}, s0=int(pos.max()) + 1)
    return ids, kv


def omnigen2_step(s, root, inputs, outputs, si, st):
    """One traced three-branch step on the tiny-omnigen2 checkpoint: each branch's caption features (und post-norm
    last hidden states) -> caption_embedder -> context_refiner -> [caption | ref | noise]."""
    model_dir = os.path.join(FIXTURES, s["omnigen2_model"], "model")
    bundle = Bundle(model_dir)
    fname, w, h, seed = s["omnigen2_image"]
    rgb = write_png(os.path.join(root, fname), pattern(w, h, seed))
    z = encode_checked(os.path.join(model_dir, "vae"), bundle.vae_W, bundle.vae_cfg, edit.to_pixels(rgb), fname)
    outputs["omnigen2.vae.encoded"] = z
    tok = prompts.load_tokenizer(os.path.join(model_dir, "und", "tokenizer.json"))
    # tiny-omnigen2 has no vision weights (`visual.*`), so its und contexts are the text alone, as hbridge
    # does for any checkpoint without a vision tower; r's context is then u's.
    feats = {}
    for br, text in (("cond", s["prompt"]), ("refonly", s["negative_prompt"]), ("uncond", s["negative_prompt"])):
        ids, _, pre = edit.und_prefill(bundle, tok, text)
        inputs[f"omnigen2.{br}.input_ids"] = ids
        feats[br] = pre["final"]
    x = torch.randn(*s["omnigen2_latent"], generator=torch.Generator().manual_seed(s["omnigen2_seed"]), dtype=F32)
    t = torch.tensor(s["omnigen2_t"], dtype=F32)
    inputs["omnigen2.step.x"] = x
    inputs["omnigen2.step.t"] = t.view(1).clone()
    v = edit.branches(bundle.gen, x, t, feats["cond"], feats["refonly"], feats["uncond"], [z], si, st)
    outputs["omnigen2.velocity.cond"] = v["c"]
    outputs["omnigen2.velocity.refonly"] = v["r"]
    outputs["omnigen2.velocity.uncond"] = v["u"]
    outputs["omnigen2.velocity"] = edit.guide(v, si, st)
    assert rel_l2(v["r"], v["u"]) > 1e-2 and rel_l2(v["c"], v["r"]) > 1e-2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(FIXTURES, "edit"))
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.set_grad_enabled(False)
    s = SPEC
    root = a.out
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(root)
    model_dir = os.path.join(FIXTURES, s["model"], "model")
    bundle = Bundle(model_dir)
    gcfg = bundle.gen_cfg
    f = 2 ** (len(bundle.vae_cfg["block_out_channels"]) - 1)
    multiple = f * gcfg.patch_size
    inputs, outputs = {}, {}

    # --- reference images: PNG -> OmniGen2 resize (PIL Lanczos) -> [-1, 1] -> VAE encoder mean
    refs = []
    for j, (fname, w, h, seed) in enumerate(s["images"]):
        rgb = write_png(os.path.join(root, fname), pattern(w, h, seed))
        nh, nw = edit.new_size(h, w, multiple)
        if (nh, nw) != (h, w):
            rgb = np.asarray(Image.fromarray(rgb, mode="RGB").resize((nw, nh), resample=Image.Resampling.LANCZOS))
            outputs[f"ref.{j}.resized"] = torch.from_numpy(rgb.copy())
            print(f"    {fname}: {w}x{h} resized to {nw}x{nh}")
        px = edit.to_pixels(rgb)
        z = encode_checked(os.path.join(model_dir, "vae"), bundle.vae_W, bundle.vae_cfg, px, fname)
        outputs[f"vae.encoded.{j}"] = z
        refs.append(z)

    # --- a second encoder configuration: tiny-b's VAE (quant_conv, no mid attention, shift_factor null)
    fname, w, h, seed = s["vae_b_image"]
    rgb = write_png(os.path.join(root, fname), pattern(w, h, seed))
    vb_dir = os.path.join(FIXTURES, s["vae_b_model"], "model", "vae")
    vb_cfg = read_json(os.path.join(vb_dir, "config.json"))
    vb_W = load_safetensors(os.path.join(vb_dir, "diffusion_pytorch_model.safetensors"), F32)
    outputs["vae_b.encoded"] = encode_checked(vb_dir, vb_W, vb_cfg, edit.to_pixels(rgb), fname)

    # --- und contexts: c = (prompt, refs), r = (negative, refs), u = (negative, no refs); the reference images
    # enter c's and r's und context as image tokens before the text (DESIGN.md 6), as the PNGs were given.
    tok = prompts.load_tokenizer(os.path.join(model_dir, "und", "tokenizer.json"))
    pngs = [Image.open(os.path.join(root, fname)) for fname, _, _, _ in s["images"]]
    ids_c, cond = context(bundle, tok, s["prompt"], pngs)
    ids_r, refonly = context(bundle, tok, s["negative_prompt"], pngs)
    ids_u, uncond = context(bundle, tok, s["negative_prompt"])
    inputs["cond.input_ids"], inputs["refonly.input_ids"], inputs["uncond.input_ids"] = ids_c, ids_r, ids_u

    # --- sampling run with three-branch guidance
    C, lh, lw = gcfg.in_channels, s["height"] // f, s["width"] // f
    noise = torch.randn(C, lh, lw, generator=torch.Generator().manual_seed(s["noise_seed"]), dtype=F32)
    ts = sampler_mod.schedule(s["steps"], lh, lw)
    inputs["gen.noise"] = noise
    inputs["gen.timesteps"] = ts
    si, st = s["image_guidance"], s["text_guidance"]
    latent, kept = edit.sample(bundle.gen, noise, ts, cond, refonly, uncond, refs, si, st, keep=(s["trace_step"],))
    outputs["sample.latent"] = latent

    # --- one traced step of that run: the three branches, the guided velocity, the refined reference tokens
    k = s["trace_step"]
    x_k, t_k = kept[k], ts[k]
    inputs["step.x"] = x_k
    inputs["step.t"] = t_k.view(1).clone()
    v = edit.branches(bundle.gen, x_k, t_k, cond, refonly, uncond, refs, si, st, trace=True)
    outputs["gen.velocity.cond"] = v["c"]
    outputs["gen.velocity.refonly"] = v["r"]
    outputs["gen.velocity.uncond"] = v["u"]
    outputs["gen.velocity"] = edit.guide(v, si, st)
    for j, tk in enumerate(v["ref_tokens"]):
        outputs[f"gen.ref_tokens.{j}"] = tk
    # c and r in one batch equal each alone; the references and the text both matter
    alone = bundle.gen.forward(x_k[None], t_k.view(1), [refonly], refs=[r[None] for r in refs])["velocity"][0]
    assert rel_l2(alone, v["r"]) < 1e-6
    assert rel_l2(v["r"], v["u"]) > 1e-2 and rel_l2(v["c"], v["r"]) > 1e-2

    omnigen2_step(s, root, inputs, outputs, si, st)

    for name, t in outputs.items():
        if t.is_floating_point():
            assert torch.isfinite(t).all(), name
            print(f"    {name:24s} {str(tuple(t.shape)):16s} std {t.std().item():8.4f}")

    save_safetensors({k2: v2.contiguous() for k2, v2 in inputs.items()}, os.path.join(root, "inputs.safetensors"))
    save_safetensors({k2: v2.contiguous() for k2, v2 in outputs.items()}, os.path.join(root, "outputs.safetensors"))

    import diffusers
    import PIL
    import transformers
    meta = {
        "name": "edit",
        "model": f"../{s['model']}/model",
        "vae_b_model": f"../{s['vae_b_model']}/model",
        "images": [{"file": fn, "width": w, "height": h,
                    "resized": list(edit.new_size(h, w, multiple))[::-1]} for fn, w, h, _ in s["images"]],
        "vae_b_image": {"file": s["vae_b_image"][0], "width": s["vae_b_image"][1], "height": s["vae_b_image"][2]},
        "omnigen2_model": f"../{s['omnigen2_model']}/model",
        "omnigen2_image": {"file": s["omnigen2_image"][0], "width": s["omnigen2_image"][1],
                           "height": s["omnigen2_image"][2]},
        "und_images": True,
        "prompt": s["prompt"],
        "negative_prompt": s["negative_prompt"],
        "steps": s["steps"],
        "text_guidance": st,
        "image_guidance": si,
        "width": s["width"],
        "height": s["height"],
        "latent_shape": [C, lh, lw],
        "noise_seed": s["noise_seed"],
        "trace_step": k,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "diffusers": diffusers.__version__, "pillow": PIL.__version__,
                     "python": sys.version.split()[0]},
    }
    write_json(meta, os.path.join(root, "meta.json"))
    total = sum(os.path.getsize(os.path.join(root, fn)) for fn in os.listdir(root))
    print(f"[edit] done: {total} bytes")


if __name__ == "__main__":
    main()
