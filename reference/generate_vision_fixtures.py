"""Generate tests/fixtures/vision: image inputs through HF transformers' own Qwen2.5-VL image processor, vision tower,
get_rope_index and model, on the und checkpoint of tests/fixtures/tiny (not copied: the fixture names it). See
docs/FIXTURES.md, section "vision".

Usage: python reference/generate_vision_fixtures.py [--out tests/fixtures/vision]
Deterministic: the images are drawn from a fixed formula, the model is the committed tiny one.
"""
import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from hbridge_ref import prompts  # noqa: E402
from hbridge_ref.common import rel_l2, save_safetensors, write_json  # noqa: E402
from hbridge_ref.und import UndExpert  # noqa: E402
from hbridge_ref.vision import (  # noqa: E402
    load_processor, mm_token_type_ids, pattern_image, pil_resize, preprocess, rope_index, vision_content,
)

REPO = os.path.dirname(HERE)
MODEL = os.path.join(REPO, "tests", "fixtures", "tiny", "model")

# The images the chat fixture asks about (width x height): both non-square and not multiples of 28, so both are
# resized (A: 70x45 -> 56x56, up in height and down in width; B: 50x90 -> 56x84, a 3x2 merged grid whose window
# grid (2x2 merged blocks per window) has a partial window row and an empty window column).
CHAT_IMAGES = [("a.png", 70, 45, 1), ("b.png", 50, 90, 2)]
# Resize-only cases: source (width, height, seed), processor size overrides, what they exercise.
RESIZE_CASES = [
    ("c.png", 30, 30, 3, {}, "min_pixels: 30x30 -> 56x56, upscaling by 1.87"),
    ("d.png", 120, 90, 4, {"longest_edge": 28 * 28 * 6}, "max_pixels 4704: 120x90 -> 56x56, downscaling by ~2"),
]
# JPEG decoding cases: (file, width, height, seed, PIL subsampling: 0 = 4:4:4, 2 = 4:2:0).
JPEG_CASES = [("e.jpg", 40, 24, 5, 0), ("f.jpg", 41, 23, 6, 2)]
# The first question whose 8 greedy steps all have a top-1 / top-2 logit gap >= MIN_GAP is used, so that the greedy
# tokens are a robust check (a bf16 engine must reproduce them too).
QUESTIONS = ["What is in the pictures?", "Describe the two images.", "Which picture is brighter?",
             "What colors do you see?", "Compare the pictures.", "Tell me about these images.",
             "What shapes are there?", "Is there a circle?"]
MIN_GAP = 0.25
GREEDY_TOKENS = 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "vision"))
    args = ap.parse_args()
    out_dir = args.out
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)  # bit-stable reductions

    und = UndExpert(os.path.join(MODEL, "und"))
    model = und.model
    cfg = model.config
    proc = load_processor()
    merge = cfg.vision_config.spatial_merge_size
    tok = prompts.load_tokenizer(os.path.join(MODEL, "und", "tokenizer.json"))

    inputs, outputs = {}, {}
    images = []
    for fname, w, h, seed in CHAT_IMAGES:
        path = os.path.join(out_dir, fname)
        pattern_image(w, h, seed).save(path, optimize=True)
        images.append(Image.open(path))
    px, grid = preprocess(proc, images)
    # The processor's pixel values are exactly normalize(PIL bicubic resize(image)): the resampling is PIL's.
    for j, img in enumerate(images):
        th, tw = int(grid[j, 1]) * 14, int(grid[j, 2]) * 14
        px_j, _ = preprocess(proc, [pil_resize(img, tw, th)])
        lo = int(grid[:j].prod(-1).sum())
        assert torch.equal(px_j, px[lo:lo + px_j.shape[0]]), "processor resize is not PIL bicubic"
    outputs["vision.pixel_values"] = px
    outputs["vision.grid_thw"] = grid

    with torch.no_grad():
        embeds = model.model.visual(px, grid_thw=grid).pooler_output
    outputs["vision.embeds"] = embeds

    for question in QUESTIONS:
        content = vision_content(grid, merge) + question
        text = prompts.CHAT_TEMPLATE.format(content=content)
        ids = prompts.encode(tok, text)
        types = mm_token_type_ids(ids, cfg.image_token_id)
        pos = rope_index(model, ids, types, grid)
        greedy, gap = greedy_decode(model, ids, pos, px, grid, GREEDY_TOKENS)
        print(f"    {question!r}: min greedy logit gap {gap:.3f}")
        if gap >= MIN_GAP:
            break
    else:
        raise SystemExit("no question gives a robust greedy fixture")
    inputs["chat.input_ids"] = ids
    outputs["chat.position_ids"] = pos
    outputs["chat.greedy_ids"] = greedy
    first = int((ids == cfg.vision_start_token_id).nonzero()[0, 0])

    with torch.no_grad():
        # Positions from HF's own get_rope_index path (mm_token_type_ids), not from our `pos`.
        logits = model(input_ids=ids[None], pixel_values=px, image_grid_thw=grid,
                       mm_token_type_ids=types[None]).logits[0]
        explicit = model(input_ids=ids[None], pixel_values=px, image_grid_thw=grid,
                         position_ids=pos[:, None, :]).logits[0]
    assert torch.equal(logits, explicit)
    outputs["chat.logits"] = logits[first:].contiguous()

    # Resize-only cases: the expected PIL output is stored as a (lossless) PNG beside its source.
    resize_meta = []
    for fname, w, h, seed, size, what in RESIZE_CASES:
        path = os.path.join(out_dir, fname)
        pattern_image(w, h, seed).save(path, optimize=True)
        img = Image.open(path)
        p = load_processor(**size)
        _, g = preprocess(p, [img])
        th, tw = int(g[0, 1]) * 14, int(g[0, 2]) * 14
        expected = fname[:-4] + ".resized.png"
        pil_resize(img, tw, th).save(os.path.join(out_dir, expected), optimize=True)
        resize_meta.append(dict(file=fname, width=w, height=h, min_pixels=p.size["shortest_edge"],
                                max_pixels=p.size["longest_edge"], resized=[th, tw], expected=expected,
                                what=what))

    # JPEG inputs: what PIL (libjpeg-turbo) decodes, stored as PNG; the engine's pure-Rust decoder may differ by
    # rounding in the IDCT / chroma upsampling (docs/FIXTURES.md states the tolerance).
    jpeg_meta = []
    for fname, w, h, seed, subsampling in JPEG_CASES:
        path = os.path.join(out_dir, fname)
        pattern_image(w, h, seed).save(path, quality=90, subsampling=subsampling)
        decoded = fname[:-4] + ".decoded.png"
        Image.open(path).convert("RGB").save(os.path.join(out_dir, decoded), optimize=True)
        jpeg_meta.append(dict(file=fname, width=w, height=h, subsampling=["4:4:4", "4:2:2", "4:2:0"][subsampling],
                              expected=decoded))

    save_safetensors(inputs, os.path.join(out_dir, "inputs.safetensors"))
    save_safetensors(outputs, os.path.join(out_dir, "outputs.safetensors"))
    import transformers
    import PIL
    meta = dict(
        name="vision",
        model="../tiny/model",
        images=[dict(file=f, width=w, height=h, grid_thw=grid[j].tolist())
                for j, (f, w, h, _) in enumerate(CHAT_IMAGES)],
        processor=dict(cls=type(proc).__name__, min_pixels=proc.size["shortest_edge"],
                       max_pixels=proc.size["longest_edge"], resample="PIL BICUBIC",
                       image_mean=list(proc.image_mean), image_std=list(proc.image_std)),
        question=question,
        chat_text=text,
        logits_from=first,
        greedy_tokens=GREEDY_TOKENS,
        greedy_min_logit_gap=round(gap, 6),
        resize_cases=resize_meta,
        jpeg_cases=jpeg_meta,
        versions=dict(torch=torch.__version__, transformers=transformers.__version__, pillow=PIL.__version__,
                      numpy=np.__version__, python=sys.version.split()[0]),
    )
    write_json(meta, os.path.join(out_dir, "meta.json"))

    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"vision fixture: {len(ids)} tokens, grids {grid.tolist()}, greedy {greedy.tolist()} (min gap {gap:.3f}),"
          f" embeds std {embeds.std():.3f}, {total} bytes")
    assert total < 300_000, "the vision fixture must stay under 300 KB"
    check_reference(model, outputs, inputs, grid)


@torch.no_grad()
def greedy_decode(model, ids, pos, px, grid, n):
    """n greedy tokens after the context, re-running the whole sequence (with the images) at every step; each new
    text token at max(previous ids) + 1 on all three axes (HF's rope_deltas). Returns the tokens and the smallest
    top-1 / top-2 logit gap."""
    ids, pos = ids.clone(), pos.clone()
    out, gaps = [], []
    for _ in range(n):
        lg = model(input_ids=ids[None], pixel_values=px, image_grid_thw=grid,
                   position_ids=pos[:, None, :]).logits[0, -1]
        top = torch.topk(lg, 2).values
        gaps.append(float(top[0] - top[1]))
        nxt = int(torch.argmax(lg))
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([nxt])])
        p = int(pos.max()) + 1
        pos = torch.cat([pos, torch.tensor([[p], [p], [p]])], dim=1)
    return torch.tensor(out, dtype=torch.long), min(gaps)


def check_reference(model, outputs, inputs, grid):
    """Independent re-derivations: the vision tower from the plain PyTorch transcription in hbridge_ref.vision."""
    from hbridge_ref.vision import plain_tower
    got = plain_tower(model.model.visual, outputs["vision.pixel_values"], grid)
    e = rel_l2(got, outputs["vision.embeds"])
    print(f"    plain tower vs HF visual: rel {e:.2e}")
    assert e < 1e-6


if __name__ == "__main__":
    main()
