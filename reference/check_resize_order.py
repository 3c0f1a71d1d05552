"""Pillow 13's two-pass order in `Image.resize(BICUBIC)` against hbridge's `resize_bicubic`.

Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks and the rows it
removes are more than twice the columns the width loses: `h < h0 and h0 - h > 2 * (w0 - w)` (hbridge:
`src/image/resize.rs`, `vertical_first`). Each pass rounds to bytes, so the order moves pixels by a level or
two. Not run by CI; needs the reference venv's Pillow (13.x) and numpy.

    python reference/check_resize_order.py rule [--cases N]     # the rule vs Pillow's own choice
    python reference/check_resize_order.py sweep [--cases N]    # hbridge's pixels vs Pillow's (runs cargo)
    python reference/check_resize_order.py fixture              # rewrites tests/fixtures/resize_order

`rule` finds Pillow's order by comparing the full resize with the two single-axis resizes in either order
(an RGB noise source, so the two orders always differ when both passes run). `sweep` writes random cases
to a temporary directory and runs `cargo test --release --test resize_order` with HBRIDGE_RESIZE_SWEEP
pointing there (set CARGO_TARGET_DIR as usual). `fixture` writes the small committed fixture the same
test always checks.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "resize_order"
BICUBIC = Image.Resampling.BICUBIC


def vertical_first(w0, h0, w, h):
    """hbridge's rule (resize.rs `vertical_first`); only meaningful when both passes run."""
    return w != w0 and h < h0 and h0 - h > 2 * (w0 - w)


def noise(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def pillow_order(im, w, h):
    """'H' or 'V': which pass Pillow ran first; 'one' when only one pass runs; 'both' if indistinguishable."""
    w0, h0 = im.size
    if w == w0 or h == h0:
        return "one"
    full = np.asarray(im.resize((w, h), BICUBIC))
    hf = np.array_equal(full, np.asarray(im.resize((w, h0), BICUBIC).resize((w, h), BICUBIC)))
    vf = np.array_equal(full, np.asarray(im.resize((w0, h), BICUBIC).resize((w, h), BICUBIC)))
    if hf and vf:
        return "both"
    if hf or vf:
        return "H" if hf else "V"
    raise AssertionError(f"{w0}x{h0} -> {w}x{h}: neither pass order gives Pillow's pixels")


def random_case(rng, max_side):
    while True:
        w0, h0 = rng.randint(2, max_side), rng.randint(2, max_side)
        w = rng.randint(1, int(w0 * 1.5) + 1)
        if rng.random() < 0.6:  # near the boundary h0 - h = 2 (w0 - w)
            h = h0 - 2 * (w0 - w) - rng.randint(-2, 2)
        else:
            h = rng.randint(1, int(h0 * 1.5) + 1)
        if 1 <= h <= 3 * max_side:
            return w0, h0, w, h


def cmd_rule(args):
    rng = random.Random(args.seed)
    counts = {}
    for i in range(args.cases):
        w0, h0, w, h = random_case(rng, args.max_side)
        got = pillow_order(noise(w0, h0, i), w, h)
        if got in ("H", "V"):
            want = "V" if vertical_first(w0, h0, w, h) else "H"
            assert got == want, f"{w0}x{h0} -> {w}x{h}: Pillow ran {got} first, the rule says {want}"
        counts[got] = counts.get(got, 0) + 1
    print(f"Pillow {PIL.__version__}: the rule predicts every order ({counts})")


def write_cases(out, cases):
    """cases: (w0, h0, w, h, seed). Writes sources, Pillow's outputs and cases.json into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    sources = {}
    meta = []
    for w0, h0, w, h, seed in cases:
        src = f"src_{w0}x{h0}_{seed}.png"
        if src not in sources:
            sources[src] = noise(w0, h0, seed)
            sources[src].save(out / src, optimize=True)
        im = sources[src]
        order = pillow_order(im, w, h)
        if order in ("H", "V"):
            assert order == ("V" if vertical_first(w0, h0, w, h) else "H"), (w0, h0, w, h, order)
        expected = f"{Path(src).stem}_to_{w}x{h}.png"
        im.resize((w, h), BICUBIC).save(out / expected, optimize=True)
        meta.append(
            {"src": src, "width": w, "height": h, "expected": expected, "pillow_first_pass": order}
        )
    (out / "cases.json").write_text(
        json.dumps({"pillow": PIL.__version__, "cases": meta}, indent=1) + "\n"
    )
    return meta


# 28x24 source: both orders (on the boundary h0 - h = 2 (w0 - w), and one past it), a growing width, single
# passes, growing and 1-pixel outputs. (The vision fixture's image b, 50x90 -> 56x84, runs V first too.)
FIXTURE_CASES = [
    (28, 24, w, h, 7)
    for w, h in [
        (34, 16),  # width grows, height shrinks: V
        (24, 10),  # 14 > 8: V
        (24, 15),  # 9 > 8 (one past the boundary): V
        (24, 16),  # 8 > 8 is false (on the boundary): H
        (20, 1),  # 23 > 16: V
        (4, 1),  # 23 > 48 is false: H
        (15, 19),  # H
        (35, 30),  # both grow: H
        (18, 32),  # height grows: H
        (28, 13),  # vertical pass only
        (17, 24),  # horizontal pass only
    ]
]


def cmd_fixture(args):
    for f in FIXTURE.glob("*"):
        f.unlink()
    meta = write_cases(FIXTURE, FIXTURE_CASES)
    orders = [c["pillow_first_pass"] for c in meta]
    assert "H" in orders and "V" in orders, orders
    size = sum(f.stat().st_size for f in FIXTURE.iterdir())
    print(f"wrote {len(meta)} cases to {FIXTURE} ({size} bytes): {orders}")
    assert size < 50_000, size


def cmd_sweep(args):
    rng = random.Random(args.seed)
    cases = [(*random_case(rng, args.max_side), i) for i in range(args.cases)]
    with tempfile.TemporaryDirectory() as tmp:
        meta = write_cases(Path(tmp), cases)
        orders = [c["pillow_first_pass"] for c in meta]
        print(f"{len(meta)} cases, Pillow's first pass: " + str({o: orders.count(o) for o in set(orders)}))
        env = dict(os.environ, HBRIDGE_RESIZE_SWEEP=tmp)
        cmd = ["cargo", "test", "--release", "--test", "resize_order", "--", "--nocapture"]
        sys.exit(subprocess.run(cmd, cwd=ROOT, env=env).returncode)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["rule", "sweep", "fixture"])
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--max-side", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not PIL.__version__.startswith("13."):
        print(f"warning: Pillow {PIL.__version__}; the rule is Pillow 13's", file=sys.stderr)
    {"rule": cmd_rule, "sweep": cmd_sweep, "fixture": cmd_fixture}[args.what](args)


if __name__ == "__main__":
    main()
