"""The fast paths reference/bench_torch.py runs (common.Impl: SDPA attention, f32 gen RoPE, a request-constant
StepPlan; UndExpert built in place with HF's sdpa attention; bf16) compute what the reference computes, on the
committed tiny and tiny-b checkpoints; and bench_torch.py / bench_compare.py run end to end on tiny."""
import json
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "..")
sys.path.insert(0, REF)

from hbridge_ref import prompts  # noqa: E402
from hbridge_ref import vae as V  # noqa: E402
from hbridge_ref.checkpoint import Bundle  # noqa: E402
from hbridge_ref.common import Impl, rel_l2  # noqa: E402
from hbridge_ref.gen import UndKV  # noqa: E402

torch.set_grad_enabled(False)

FIX = os.path.join(HERE, "..", "..", "tests", "fixtures")
FAST = Impl(sdpa=True, flash=False, f64_rope=False)


def contexts(und, lens, seed):
    """One UndKV per branch from random token ids (different lengths: the padded / split bridge paths)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lens:
        ids = torch.randint(0, und.tcfg.vocab_size, (n,), generator=g)
        p = und.prefill(ids, prompts.text_positions(n))
        out.append(UndKV({u: p["k"][u] for u in range(len(p["k"]))}, {u: p["v"][u] for u in range(len(p["v"]))}, n))
    return out


@pytest.mark.parametrize("name", ["tiny", "tiny-b"])
def test_fast_paths_equal_reference_f32(name):
    model = os.path.join(FIX, name, "model")
    ref = Bundle(model)
    fast = Bundle(model, torch.float32, "cpu", FAST, attn_implementation="sdpa")
    ids = torch.randint(0, ref.und.tcfg.vocab_size, (23,), generator=torch.Generator().manual_seed(1))
    a = ref.und.prefill(ids, prompts.text_positions(23))
    b = fast.und.prefill(ids, prompts.text_positions(23))
    assert rel_l2(b["logits"], a["logits"]) < 1e-5
    for u in range(len(a["k"])):
        assert rel_l2(b["k"][u], a["k"][u]) < 1e-5 and rel_l2(b["v"][u], a["v"][u]) < 1e-5

    ctx = contexts(ref.und, [19, 6], 2)
    C = ref.gen_cfg.in_channels
    x = torch.randn(2, C, 8, 12, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.3, 0.3])
    r = ref.gen.forward(x, t, ctx)
    f = fast.gen.forward(x, t, ctx)
    assert rel_l2(f["velocity"], r["velocity"]) < 1e-5
    assert rel_l2(f["srt"], r["srt"]) < 1e-5
    # the benchmark prepares once and steps: the same as forward
    plan = fast.gen.prepare(x.shape, ctx)
    s = fast.gen.step(x, t, plan)
    assert torch.equal(s["velocity"], f["velocity"])
    # equal context lengths take the unmasked, batched SDPA call
    same = contexts(ref.und, [9, 9], 4)
    assert rel_l2(fast.gen.forward(x, t, same)["velocity"], ref.gen.forward(x, t, same)["velocity"]) < 1e-5

    z = torch.randn(1, C, 8, 12, generator=torch.Generator().manual_seed(5))
    assert rel_l2(V.decode(fast.vae_W, fast.vae_cfg, z, FAST), V.decode(ref.vae_W, ref.vae_cfg, z)) < 1e-5


def test_bf16_within_contract():
    """DESIGN.md 8: whole model in bf16 within 2e-2 of the f32 reference (velocity, logits)."""
    model = os.path.join(FIX, "tiny", "model")
    ref = Bundle(model)
    bf = Bundle(model, torch.bfloat16, "cpu", FAST, attn_implementation="sdpa")
    ids = torch.randint(0, ref.und.tcfg.vocab_size, (17,), generator=torch.Generator().manual_seed(1))
    a = ref.und.prefill(ids, prompts.text_positions(17))
    b = bf.und.prefill(ids, prompts.text_positions(17))
    assert rel_l2(b["logits"].float(), a["logits"]) < 2e-2
    ctx = contexts(ref.und, [15, 5], 2)
    ctx_bf = contexts(bf.und, [15, 5], 2)
    x = torch.randn(2, ref.gen_cfg.in_channels, 8, 12, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.6, 0.6])
    r = ref.gen.forward(x, t, ctx)["velocity"]
    f = bf.gen.forward(x.bfloat16(), t, ctx_bf)["velocity"]
    assert f.dtype == torch.bfloat16
    assert rel_l2(f.float(), r) < 2e-2


def test_bench_torch_and_compare_run(tmp_path):
    model = os.path.join(FIX, "tiny", "model")
    out = tmp_path / "torch.json"
    subprocess.run([sys.executable, os.path.join(REF, "bench_torch.py"), model, "--device", "cpu",
                    "--prompt-len", "12", "--context", "20", "--decode-tokens", "3", "--size", "32", "--steps", "2",
                    "--runs", "2", "--image-runs", "1", "--json", str(out)], check=True, capture_output=True)
    rep = json.loads(out.read_text())
    names = [r["name"] for r in rep["records"]]
    assert names == ["load_s", "und_prefill_ms", "und_decode_tokens_per_s", "gen_step_ms", "time_to_image_ms"]
    for r in rep["records"]:
        assert set(r) >= {"name", "mode", "device", "dtype", "median_ms", "runs", "extra"}
        assert r["value"] > 0 and r["median_ms"] > 0 and r["dtype"] == "f32"
    hb = tmp_path / "hbridge.json"
    hb.write_text(json.dumps({"device": "cpu", "rows": [
        {"name": "gen_step_ms", "value": 2 * rep["records"][3]["value"], "unit": "ms"},
        {"name": "und_decode_tokens_per_s", "value": 2 * rep["records"][2]["value"], "unit": "tokens/s"}]}))
    text = subprocess.run([sys.executable, os.path.join(REF, "bench_compare.py"), str(hb), str(out)], check=True,
                          capture_output=True, text=True).stdout
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert rows["gen_step_ms"][-1] == "0.50" and rows["und_decode_tokens_per_s"][-1] == "2.00", text
