"""torch SDPA at the attention shapes of benches/kernels.rs (issue 5: "the attention kernel at least as fast as
torch SDPA at every listed shape"), bf16 on CUDA, flash backend forced where it can run. Prints one line per shape
with the median time and TFLOP/s counted as benches/cases.rs counts them (4 nq nk H D, halved for a causal square),
so the numbers sit next to `bench-kernels`' criterion lines.

    python3 reference/bench_sdpa.py [--json OUT] [--iters 50]
"""
import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

GEN = 16 + 64 * 64  # SRT + a 1024x1024 image's latent tokens
# (name, nq, [segment key counts], heads, kv_heads, head dim, causal) -- the same cases as benches/cases.rs
CASES = [
    ("und_prefill_512_causal_d128_gqa7", 512, [512], 28, 4, 128, True),
    ("gen_self_4112_d120_gqa3", GEN, [GEN], 21, 7, 120, False),
    ("bridge_4112q_512und_4112gen_d128_gqa7", GEN, [512, GEN], 28, 4, 128, False),
    ("decode_1q_4096kv_d128_gqa7", 1, [4096], 28, 4, 128, True),
    ("vae_mid_16384_d512_wide", 128 * 128, [128 * 128], 1, 1, 512, False),
]


def flops(nq, nk, heads, d, causal):
    full = 4.0 * nq * nk * heads * d
    return full / 2 if causal and nq == nk else full


def run(case, iters):
    name, nq, segs, heads, kvh, d, causal = case
    nk = sum(segs)
    dev, dt = "cuda", torch.bfloat16
    # Random inputs (never zeros); the segments are one key sequence to SDPA (hbridge reads them in place).
    q = torch.randn(1, heads, nq, d, device=dev, dtype=dt)
    k = torch.randn(1, kvh, nk, d, device=dev, dtype=dt)
    v = torch.randn(1, kvh, nk, d, device=dev, dtype=dt)
    # Queries are the last nq positions of the keys (hbridge's causal convention) -> bottom-right mask.
    mask = None
    if causal and nq != nk:
        i = torch.arange(nq, device=dev)[:, None] + (nk - nq)
        mask = torch.arange(nk, device=dev)[None, :] <= i
    backend, note = SDPBackend.FLASH_ATTENTION, "flash"
    if mask is not None or d > 256 or d % 8:
        backend, note = SDPBackend.EFFICIENT_ATTENTION, "efficient (flash takes no mask / this head dim)"
        if d > 256:
            backend, note = SDPBackend.MATH, "math (head dim over 256)"

    gqa = kvh != heads
    if gqa and backend != SDPBackend.FLASH_ATTENTION:
        # Not every backend takes enable_gqa: give the others the expanded K/V (not timed).
        k, v = (t.repeat_interleave(heads // kvh, dim=1) for t in (k, v))
        gqa = False

    def call():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                                  enable_gqa=gqa)
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        call()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    ms = sorted(times)[len(times) // 2]
    return dict(name=name, median_ms=ms, tflops=flops(nq, nk, heads, d, causal) / ms / 1e9, backend=note)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for case in CASES:
        r = run(case, a.iters)
        rows.append(r)
        print(f"sdpa/{r['name']:44s} {r['median_ms'] * 1e3:10.1f} us {r['tflops']:8.1f} TFLOP/s  [{r['backend']}]")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
