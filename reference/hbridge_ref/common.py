"""Small shared helpers: safetensors I/O, dtype names, error metrics."""
import json
import os
import re

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
