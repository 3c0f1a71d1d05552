"""Image editing in the reference (hbridge_ref.edit) and the committed tests/fixtures/edit: pixel conversion equals
diffusers' VaeImageProcessor, OmniGen2's resize rule, the guidance modes, and a recomputation of every output."""
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hbridge_ref import edit, prompts  # noqa: E402
from hbridge_ref import vae as vae_mod  # noqa: E402
from hbridge_ref.checkpoint import Bundle  # noqa: E402
from hbridge_ref.common import load_safetensors, read_json, rel_l2  # noqa: E402
from hbridge_ref.gen import UndKV  # noqa: E402

torch.set_grad_enabled(False)

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "edit")


def test_to_pixels_equals_diffusers_vae_image_processor():
    from diffusers.image_processor import VaeImageProcessor
    rgb = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    want = VaeImageProcessor(do_resize=False).preprocess(Image.fromarray(rgb))[0]
    assert torch.equal(edit.to_pixels(rgb), want)


def test_new_size_is_omnigen2s_rule():
    assert edit.new_size(512, 768, 16) == (512, 768)  # fits: unchanged
    assert edit.new_size(53, 35, 8) == (48, 32)  # rounded down, never up
    assert edit.new_size(1000, 2048, 16, max_pixels=4 << 20) == (496, 1024)  # longest side 1024
    assert edit.new_size(2000, 2000, 16, max_side=4096) == (1024, 1024)  # pixel budget
    assert edit.new_size(100, 100, 16) == (96, 96)  # no upscaling


def test_guide_modes():
    v = {"c": torch.tensor([4.0]), "r": torch.tensor([2.0]), "u": torch.tensor([1.0])}
    assert edit.guide(v, 2.0, 3.0).item() == 1 + 2 * (2 - 1) + 3 * (4 - 2)
    assert edit.guide(v, 1.0, 3.0).item() == 1 + 3 * (4 - 1)
    assert edit.guide(v, 4.0, 1.0).item() == 4.0


@pytest.fixture(scope="module")
def fixture():
    meta = read_json(os.path.join(FIX, "meta.json"))
    return (meta, load_safetensors(os.path.join(FIX, "inputs.safetensors"), None),
            load_safetensors(os.path.join(FIX, "outputs.safetensors"), None))


def test_fixture_size_and_names(fixture):
    meta, inputs, outputs = fixture
    total = sum(os.path.getsize(os.path.join(FIX, f)) for f in os.listdir(FIX))
    assert total < 600_000, total
    assert meta["und_images"] is True
    for k in ("vae.encoded.0", "vae.encoded.1", "vae_b.encoded", "ref.1.resized", "gen.velocity.cond",
              "gen.velocity.refonly", "gen.velocity.uncond", "gen.velocity", "gen.ref_tokens.0", "gen.ref_tokens.1",
              "sample.latent", "omnigen2.vae.encoded", "omnigen2.velocity"):
        assert k in outputs, k
    assert outputs["ref.1.resized"].dtype == torch.uint8 and outputs["ref.1.resized"].shape == (48, 32, 3)


def test_fixture_recomputes(fixture):
    meta, inputs, outputs = fixture
    bundle = Bundle(os.path.join(FIX, meta["model"]))
    refs = []
    for j, im in enumerate(meta["images"]):
        rgb = np.asarray(Image.open(os.path.join(FIX, im["file"])).convert("RGB"))
        w, h = im["resized"]
        if (w, h) != (im["width"], im["height"]):
            rgb = np.asarray(Image.fromarray(rgb).resize((w, h), resample=Image.Resampling.LANCZOS))
            assert (torch.from_numpy(rgb.copy()) == outputs[f"ref.{j}.resized"]).all()
        z = vae_mod.encode_mean(bundle.vae_W, bundle.vae_cfg, edit.to_pixels(rgb)[None])[0]
        assert rel_l2(z, outputs[f"vae.encoded.{j}"]) < 1e-6
        refs.append(outputs[f"vae.encoded.{j}"])
    kv = {}
    tok = prompts.load_tokenizer(os.path.join(FIX, meta["model"], "und", "tokenizer.json"))
    pngs = [Image.open(os.path.join(FIX, im["file"])) for im in meta["images"]]
    for br, text, images in (("cond", meta["prompt"], pngs), ("refonly", meta["negative_prompt"], pngs),
                             ("uncond", meta["negative_prompt"], [])):
        ids, pos, pre = edit.und_prefill(bundle, tok, text, images)
        assert torch.equal(ids, inputs[f"{br}.input_ids"]), br
        kv[br] = UndKV(k={u: pre["k"][u] for u in bundle.paired_und_layers},
                       v={u: pre["v"][u] for u in bundle.paired_und_layers}, s0=int(pos.max()) + 1)
    si, st = meta["image_guidance"], meta["text_guidance"]
    v = edit.branches(bundle.gen, inputs["step.x"], inputs["step.t"][0], kv["cond"], kv["refonly"], kv["uncond"],
                      refs, si, st, trace=True)
    for name, got in (("cond", v["c"]), ("refonly", v["r"]), ("uncond", v["u"])):
        assert rel_l2(got, outputs[f"gen.velocity.{name}"]) < 1e-6, name
    assert rel_l2(edit.guide(v, si, st), outputs["gen.velocity"]) < 1e-6
    for j, tk in enumerate(v["ref_tokens"]):
        assert rel_l2(tk, outputs[f"gen.ref_tokens.{j}"]) < 1e-6
    latent, _ = edit.sample(bundle.gen, inputs["gen.noise"], inputs["gen.timesteps"], kv["cond"], kv["refonly"],
                            kv["uncond"], refs, si, st)
    assert rel_l2(latent, outputs["sample.latent"]) < 1e-6
