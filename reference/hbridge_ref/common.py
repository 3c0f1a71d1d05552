"""Small shared helpers: safetensors I/O, dtype names, error metrics, and the opt-in fast paths (`Impl`) that
reference/bench_torch.py uses to run the same graphs in bf16 on a GPU."""
import json
import os
import re
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file

F32 = torch.float32
F64 = torch.float64

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def load_safetensors(path, dtype=F32):
    """All tensors of one file; floating tensors converted to `dtype` (exact for bf16/f16 -> f32)."""
    out = {}
    with safe_open(path, framework="pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            out[k] = t.to(dtype) if (dtype is not None and t.is_floating_point()) else t
    return out


def load_sharded(dirpath, base, dtype=F32):
    """`base`.safetensors or the shards listed in `base`.safetensors.index.json."""
    index = os.path.join(dirpath, base + ".safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        out = {}
        for fn in files:
            part = load_safetensors(os.path.join(dirpath, fn), dtype)
            assert not (set(part) & set(out)), "duplicate tensor across shards"
            out.update(part)
        return out
    return load_safetensors(os.path.join(dirpath, base + ".safetensors"), dtype)


@dataclass(frozen=True)
class Impl:
    """How the plain-PyTorch gen / bridge / VAE modules compute. The defaults are the reference numerics the
    fixtures were made with (explicit softmax attention, gen RoPE in f64) and must stay so; the benchmark turns on
    the paths a fast PyTorch implementation takes (diffusers' and OmniGen2's own), which differ by rounding only.

    sdpa:  attention through torch.nn.functional.scaled_dot_product_attention.
    flash: with sdpa, force its flash backend where it can run (CUDA, f16/bf16, head dim a multiple of 8 up to
           256, no mask); elsewhere SDPA chooses, and `NOTES` says why flash was not used.
    f64_rope: gen RoPE rotation in f64 (the reference); False rotates in f32 with cos/sin computed once per request.
    """
    sdpa: bool = False
    flash: bool = False
    f64_rope: bool = True


REFERENCE = Impl()

# Why a fast path was not taken, gathered in eager runs so the benchmark can print it once (printing from inside
# a function that torch.compile traces would break its graph).
NOTES = set()


def note(text):
    if not torch.compiler.is_compiling():
        NOTES.add(text)


def flash_ok(q, k, mask):
    """Whether SDPA's flash backend takes these [B, heads, N, D] inputs; the reason when it does not."""
    D = q.shape[-1]
    if q.device.type != "cuda":
        return False, "not on CUDA"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return False, f"dtype {str(q.dtype).replace('torch.', '')} (flash needs f16/bf16)"
    if D % 8 != 0 or D > 256 or k.shape[-1] != D:
        return False, f"head dim {D} (flash needs a multiple of 8 up to 256)"
    if mask is not None:
        return False, "key-padding mask (flash takes none)"
    return True, ""


def sdpa(q, k, v, scale, mask=None, impl=REFERENCE, what="attention"):
    """scaled_dot_product_attention on [B, heads, N, D] (k/v may have fewer heads: GQA, kv head j serving q heads
    j*g..j*g+g-1); mask [B, Nk] bool (True = attend) or None."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    g = q.shape[1] // k.shape[1]
    ok, why = flash_ok(q, k, mask) if impl.flash else (False, "")
    if ok:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=g > 1)
    if impl.flash and q.device.type == "cuda":
        note(f"{what}: SDPA chooses its backend, not flash: {why}")
    if g > 1:  # not every SDPA backend takes enable_gqa (memory-efficient does not); expanding works on all
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1)
    m = None if mask is None else mask[:, None, None, :]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale)


def save_safetensors(tensors, path, metadata=None):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path, metadata=metadata or {"format": "pt"})


def round_to(t, dtype):
    """The f32 values `t` takes once stored in `dtype`."""
    return t.to(dtype).to(F32)


def rel_l2(a, b):
    a = a.double()
    b = b.double()
    n = b.norm()
    return float((a - b).norm() / (n if n > 0 else 1.0))


def dumps_json(obj):
    """indent=2, but lists of scalars and lists of such lists on one line."""
    text = json.dumps(obj, indent=2)
    scalar = r'(?:-?[0-9.eE+-]+|null|true|false|"[^"\n]*")'
    flat = re.compile(r"\[\s*(" + scalar + r"(?:,\s*" + scalar + r")*)\s*\]")
    text = flat.sub(lambda m: "[" + ", ".join(re.findall(scalar, m.group(1))) + "]", text)
    nested = re.compile(r"\[\s*(\[[^\[\]\n]*\](?:,\s*\[[^\[\]\n]*\])*)\s*\]")
    text = nested.sub(lambda m: "[" + re.sub(r"\],\s*\[", "], [", m.group(1)) + "]", text)
    assert json.loads(text) == obj
    return text


def write_json(obj, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(dumps_json(obj) + "\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)
