"""Understanding expert: HF transformers' own Qwen2.5-VL modules (f32, eager attention), loaded from a checkpoint's
und/ folder in either HF layout, with the traces hbridge checks (DESIGN.md 2):

  hs[0] = embeddings, hs[i+1] = residual stream after decoder layer i (pre final norm; taken with forward hooks,
  HF's own last output_hidden_states entry is post-norm), K post-RoPE and V per layer [L, K_u, D_u] (from HF's
  DynamicCache, which stores exactly that), logits, greedy decoding.
"""
import contextlib
import os
import re

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from .common import F32, load_sharded
from .config import UndTextConfig
from .common import read_json


def to_module_name(name):
    """File tensor name (old flat or new prefixed layout) -> the module name in transformers 5.x."""
    if name.startswith("model.language_model.") or name.startswith("model.visual.") or name == "lm_head.weight":
        return name
    if name.startswith("visual."):
        return "model." + name
    m = re.match(r"^model\.(embed_tokens|layers|norm)\.(.*)$", name)
    if m:
        return "model.language_model." + m.group(1) + "." + m.group(2)
    raise KeyError(f"unexpected und tensor name {name}")


@contextlib.contextmanager
def _default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _skip_init():
    """transformers' own no_init_weights where this version has it (every weight is overwritten by the files)."""
    try:
        from transformers.initialization import no_init_weights
        return no_init_weights()
    except ImportError:
        return contextlib.nullcontext()


class UndExpert:
    def __init__(self, und_dir, dtype=F32, device=None, attn_implementation="eager"):
        """dtype / device / attn_implementation other than the defaults (f32, CPU, eager: the reference) are for
        the benchmark: the model is then built in dtype directly on device, without the random init."""
        self.dir = und_dir
        self.raw_config = read_json(os.path.join(und_dir, "config.json"))
        self.tcfg = UndTextConfig.from_json(self.raw_config)
        cfg = Qwen2_5_VLConfig.from_pretrained(und_dir)
        cfg._attn_implementation = attn_implementation
        cfg.text_config._attn_implementation = attn_implementation
        cfg.vision_config._attn_implementation = attn_implementation
        if dtype == F32 and device is None:
            torch.manual_seed(0)  # construction draws random init, overwritten below
            model = Qwen2_5_VLForConditionalGeneration(cfg).to(F32).eval()
        else:
            # default dtype rather than .to(dtype): HF keeps its RoPE inv_freq buffers in f32 that way
            with torch.device(device or "cpu"), _default_dtype(dtype), _skip_init():
                model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
        sd = {to_module_name(k): v for k, v in load_sharded(und_dir, "model", dtype).items()}
        if "lm_head.weight" not in sd:
            assert self.tcfg.tie_word_embeddings, "lm_head.weight missing but embeddings are not tied"
            sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"]
        missing, unexpected = model.load_state_dict(sd, strict=False)
        assert not unexpected, unexpected
        # a text-only checkpoint may lack the vision tower (its random init stays; text paths never read it)
        assert not [m for m in missing if not m.startswith("model.visual.")], missing
        self.model = model
        self.lm = model.model.language_model

    @torch.no_grad()
    def prefill(self, input_ids, position_ids, pixel_values=None, image_grid_thw=None):
        """input_ids [L] i64, position_ids [3, L] i64 -> dict(hs [n_layers+1] x [L, D], logits [L, V],
        k/v: per layer [L, K_u, D_u], final [L, D]: the post-norm last hidden states, the omnigen2 caption features)."""
        hs, final = [], []
        hooks = [self.lm.embed_tokens.register_forward_hook(lambda m, i, o: hs.append(o[0].clone())),
                 self.lm.norm.register_forward_hook(lambda m, i, o: final.append(o[0].clone()))]
        for layer in self.lm.layers:
            hooks.append(layer.register_forward_hook(
                lambda m, i, o: hs.append((o[0] if isinstance(o, tuple) else o)[0].clone())))
        try:
            extra = {} if pixel_values is None else dict(pixel_values=pixel_values, image_grid_thw=image_grid_thw)
            out = self.model(input_ids=input_ids[None], position_ids=position_ids[:, None, :], use_cache=True, **extra)
        finally:
            for h in hooks:
                h.remove()
        assert len(hs) == len(self.lm.layers) + 1
        cache = out.past_key_values
        k = [cache.layers[i].keys[0].transpose(0, 1).contiguous() for i in range(len(self.lm.layers))]
        v = [cache.layers[i].values[0].transpose(0, 1).contiguous() for i in range(len(self.lm.layers))]
        assert len(final) == 1
        return {"hs": hs, "final": final[0], "logits": out.logits[0].clone(), "k": k, "v": v}

    @torch.no_grad()
    def greedy(self, input_ids, position_ids, n):
        """n greedy tokens after a text context (no stop); each new text token at max(previous ids) + 1.
        Every step re-runs the whole sequence (no cache), so it is exact."""
        ids = input_ids.clone()
        pos = position_ids.clone()
        out = []
        for _ in range(n):
            logits = self.model(input_ids=ids[None], position_ids=pos[:, None, :], use_cache=False).logits[0, -1]
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([nxt])])
            p = int(pos.max()) + 1
            pos = torch.cat([pos, torch.tensor([[p], [p], [p]])], dim=1)
        return torch.tensor(out, dtype=torch.long)

    @torch.no_grad()
    def logits_margin(self, input_ids, position_ids, n):
        """Smallest (top1 - top2) logit gap over the n greedy steps (how robust the greedy fixture is)."""
        ids = input_ids.clone()
        pos = position_ids.clone()
        gaps = []
        for _ in range(n):
            logits = self.model(input_ids=ids[None], position_ids=pos[:, None, :], use_cache=False).logits[0, -1]
            top = torch.topk(logits, 2).values
            gaps.append(float(top[0] - top[1]))
            nxt = int(torch.argmax(logits))
            ids = torch.cat([ids, torch.tensor([nxt])])
            p = int(pos.max()) + 1
            pos = torch.cat([pos, torch.tensor([[p], [p], [p]])], dim=1)
        return min(gaps)
