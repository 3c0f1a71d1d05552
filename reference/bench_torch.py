"""PyTorch baseline of `hbridge bench`: the same graphs (reference/hbridge_ref: HF transformers' Qwen2.5-VL for the
und expert, the plain-PyTorch gen expert, bridge and VAE) on the same checkpoint, in bf16 on CUDA (f32 on the CPU),
attention through scaled_dot_product_attention (flash forced on CUDA where it can run), eager and/or torch.compile.

Usage:
  python reference/bench_torch.py MODEL_DIR [--device cuda|cpu] [--dtype bf16|f32] [--mode eager|compile|both]
      [--prompt-len 512] [--context 4096] [--decode-tokens 32] [--size 1024] [--steps 50] [--runs 5]
      [--json PATH] [--compare HBRIDGE_JSON]
  MODEL_DIR as written by `hbridge init DIR --config hbridge-7b4b` (or `--config tiny`); hbridge topology only.

Workloads, named as `hbridge bench` names its rows (src/bench.rs), so that reference/bench_compare.py can print the
two side by side:
  load_s                   open the checkpoint and make every weight resident on the device (once, mode "-")
  und_prefill_ms           und prefill of --prompt-len random tokens, one branch: K/V of every layer, no logits
  und_decode_tokens_per_s  batch-1 greedy decode of --decode-tokens tokens after a --context-token K/V cache
                           (eager: HF DynamicCache; compile: HF StaticCache, CUDA graphs via mode reduce-overhead)
  gen_step_ms              one gen step with text guidance: 2 branches (cond context --prompt-len tokens, uncond
                           min(--prompt-len, 8) tokens, as hbridge bench) run as one batch of 2; latent --size/f,
                           t = 0.5; hbridge-7b4b at 1024: 16 SRT + 4096 latent tokens per branch
  time_to_image_ms         "a red fox in the snow", --steps steps, guidance 4: und prefill of both branches,
                           the Euler loop (f32 latents), VAE decode, pixels to host
  peak_gpu_bytes           torch.cuda.max_memory_allocated over the mode's workloads (weights included); CUDA only

Every JSON record: {name, mode, device, dtype, median_ms, runs, value, unit, extra}; median_ms is the median time of
one run (of one token for decode; null for peak_gpu_bytes), value is in the workload's own unit (s, ms, tokens/s,
bytes) as hbridge reports it. Timing: warm-up runs first (compilation included there), then --runs timed runs, each
between torch.cuda.synchronize() calls (wall clock); the median is reported. Inputs are random, never zeros.
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from hbridge_ref import common, prompts, sampler  # noqa: E402
from hbridge_ref import und as _und  # noqa: E402,F401  (imports transformers' Qwen2.5-VL now, not inside load_s)
from hbridge_ref import vae as vae_mod  # noqa: E402
from hbridge_ref.checkpoint import Bundle  # noqa: E402
from hbridge_ref.common import DTYPES, Impl  # noqa: E402
from hbridge_ref.gen import UndKV  # noqa: E402

PROMPT = "a red fox in the snow"  # hbridge bench's time-to-image prompt


# ----------------------------------------------------------------------------------------------- timing

class Clock:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn):
        """Seconds of fn() between two device synchronizations."""
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t


def median_run(clock, fn, warmup, runs):
    """(median seconds, the timed runs, seconds of all warm-up runs: compilation shows there)."""
    warm = sum(clock.time(fn) for _ in range(warmup))
    times = [clock.time(fn) for _ in range(runs)]
    return statistics.median(times), times, warm


def say(msg):
    print(f"bench_torch: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- SDPA in HF

class FlashFirst:
    """Runs a call with SDPA restricted to flash (CUDA only). The first call tries it; if no flash kernel takes
    the shapes / dtype / mask, that call and every later one run with SDPA's own choice, and a note says so."""

    def __init__(self, what, device, hint=""):
        self.what = what
        self.hint = hint
        self.flash = None if device.type == "cuda" else False

    def __call__(self, fn, *args, **kw):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        if self.flash is None:
            try:
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    out = fn(*args, **kw)
                self.flash = True
                return out
            except RuntimeError as e:
                self.flash = False
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                common.NOTES.add(f"{self.what}: flash refused ({first[:160]}){self.hint}; SDPA chooses its backend")
        ctx = sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if self.flash else contextlib.nullcontext()
        with ctx:
            return fn(*args, **kw)


def cache_kv(cache, i):
    """K (post-RoPE) / V [B, K_u, L, D_u] of layer i from an HF cache, across the cache APIs of transformers 4.x/5.x."""
    if hasattr(cache, "layers"):
        return cache.layers[i].keys, cache.layers[i].values
    return cache.key_cache[i], cache.value_cache[i]


# ----------------------------------------------------------------------------------------------- the runner

class Runner:
    def __init__(self, args):
        self.a = args
        self.device = torch.device(args.device)
        self.dtype = DTYPES[args.dtype]
        self.clock = Clock(self.device)
        self.records = []
        self.gen_rng = torch.Generator().manual_seed(0x5eed)

    def record(self, name, mode, median_s, runs, value, unit, **extra):
        self.records.append(dict(name=name, mode=mode, device=self.device_name, dtype=self.a.dtype,
                                 median_ms=None if median_s is None else median_s * 1e3, runs=runs,
                                 value=value, unit=unit, extra=extra))
        shown = f"{value:.3f} {unit}" if value is not None else "-"
        say(f"  {name} [{mode}]: {shown}")

    # -------------------------------------------------------------------------------- load

    def load(self):
        a = self.a
        self.impl = Impl(sdpa=True, flash=self.device.type == "cuda", f64_rope=False)
        if self.clock.cuda:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        self.b = Bundle(a.model, self.dtype, self.device, self.impl, attn_implementation="sdpa")
        self.clock.sync()
        load = time.perf_counter() - t
        if self.b.topology != "hbridge":
            raise SystemExit(f"{a.model}: topology {self.b.topology}; bench_torch.py runs the hbridge topology")
        self.und, self.gen = self.b.und, self.b.gen
        self.lm = self.und.lm
        self.lm_head = self.und.model.lm_head
        self.tcfg = self.und.tcfg
        wbytes = sum(p.numel() * p.element_size() for p in self.und.model.parameters())
        wbytes += sum(v.numel() * v.element_size() for v in list(self.gen.W.values()) + list(self.b.vae_W.values()))
        self.record("load_s", "-", load, 1, load, "s", weight_bytes=wbytes,
                    note="Bundle: safetensors read, und model built in place, every weight on the device")
        self.vae_f = 2 ** (len(self.b.vae_cfg["block_out_channels"]) - 1)
        self.lat = (self.b.vae_cfg["latent_channels"], a.size // self.vae_f, a.size // self.vae_f)
        p = self.gen.cfg.patch_size
        if self.lat[1] % p or self.lat[1] == 0:
            raise SystemExit(f"--size {a.size} must be a positive multiple of {self.vae_f * p} (VAE factor x patch)")

    # -------------------------------------------------------------------------------- helpers

    def ids(self, n):
        return torch.randint(0, self.tcfg.vocab_size, (n,), generator=self.gen_rng).to(self.device)

    def positions(self, n, start=0):
        return prompts.text_positions(n, start).to(self.device)

    def und_forward(self, ids, pos):
        """The text model over a whole context (K/V of every layer into a fresh DynamicCache, no lm_head)."""
        return self.lm(input_ids=ids[None], position_ids=pos[:, None, :], use_cache=True)

    def und_kv(self, out, n):
        """UndKV of the paired und layers from an und_forward output, for a context of n text tokens."""
        k, v = {}, {}
        for u in self.b.paired_und_layers:
            kk, vv = cache_kv(out.past_key_values, u)
            k[u], v[u] = kk[0].transpose(0, 1), vv[0].transpose(0, 1)
        return UndKV(k, v, s0=n)

    def maybe_compile(self, fn, mode, cuda_mode="default"):
        if mode == "eager":
            return fn
        cm = self.a.compile_mode or (cuda_mode if self.clock.cuda else "default")
        return torch.compile(fn, mode=cm, dynamic=False)

    # -------------------------------------------------------------------------------- workloads

    def und_prefill(self, mode):
        a = self.a
        ids, pos = self.ids(a.prompt_len), self.positions(a.prompt_len)
        # Traced by dynamo with torch < 2.14, HF's create_causal_mask returns an explicit mask rather than None
        # (is_causal), and flash takes no mask: compiled prefill then runs another SDPA backend (H100, torch 2.11).
        hint = ", HF passes an explicit causal mask under torch.compile before torch 2.14" if mode == "compile" else ""
        flash = FlashFirst(f"und prefill [{mode}]", self.device, hint)
        fwd = self.maybe_compile(self.und_forward, mode)
        med, times, warm = median_run(self.clock, lambda: flash(fwd, ids, pos), self.warmup(mode), a.runs)
        self.record("und_prefill_ms", mode, med, len(times), med * 1e3, "ms",
                    tokens=a.prompt_len, layers=self.tcfg.num_hidden_layers, flash=flash.flash, warmup_s=warm,
                    note="HF Qwen2.5-VL text model, sdpa attention, K/V of all layers into a DynamicCache, no logits")

    def und_decode(self, mode):
        a = self.a
        n, L = a.decode_tokens, max(1, a.context)
        ctx_ids, ctx_pos = self.ids(L), self.positions(L)
        ctx_flash = FlashFirst("und decode: context prefill", self.device)
        step_flash = FlashFirst("und decode: step", self.device)
        warm = self.warmup(mode) + (2 if mode == "compile" else 0)  # CUDA graph trees record on a later call

        if mode == "eager":
            def start():
                out = ctx_flash(self.und_forward, ctx_ids, ctx_pos)
                return out.past_key_values, self.lm_head(out.last_hidden_state[:, -1:]).argmax(-1)

            # (a refused flash try may leave a token in layer 0 of that run's cache: only in the warm-up run)
            def step(cache, tok, p):
                pos = torch.full((3, 1, 1), p, dtype=torch.long, device=self.device)
                out = step_flash(self.lm, input_ids=tok, position_ids=pos, past_key_values=cache, use_cache=True)
                return self.lm_head(out.last_hidden_state[:, -1:]).argmax(-1)
            cache_note = "DynamicCache"
        else:
            from transformers import StaticCache
            cache = StaticCache(config=self.und.model.config, max_cache_len=L + warm + n)

            def prefill():
                cache.reset()  # inside, so that a refused flash try starts again from an empty cache
                return self.lm(input_ids=ctx_ids[None], position_ids=ctx_pos[:, None, :], past_key_values=cache,
                               use_cache=True, cache_position=torch.arange(L, device=self.device))

            def start():
                out = ctx_flash(prefill)
                return cache, self.lm_head(out.last_hidden_state[:, -1:]).argmax(-1)

            def one(tok, pos, cpos):
                out = self.lm(input_ids=tok, position_ids=pos, past_key_values=cache, use_cache=True,
                              cache_position=cpos)
                return self.lm_head(out.last_hidden_state[:, -1:]).argmax(-1)
            compiled = self.maybe_compile(one, mode, cuda_mode="reduce-overhead")
            if self.clock.cuda:
                common.NOTES.add("und decode [compile]: a StaticCache step attends through a mask over the whole "
                                 "cache, so SDPA chooses its backend (flash takes no mask)")

            def step(cache_, tok, p):
                pos = torch.full((3, 1, 1), p, dtype=torch.long, device=self.device)
                cpos = torch.full((1,), p, dtype=torch.long, device=self.device)
                if self.clock.cuda:
                    torch.compiler.cudagraph_mark_step_begin()
                return compiled(tok, pos, cpos).clone()
            cache_note = "StaticCache"

        def run(count):
            cache, tok = start()
            self.clock.sync()
            t = time.perf_counter()
            for i in range(count):
                tok = step(cache, tok, L + i)
            self.clock.sync()
            return time.perf_counter() - t

        warm_s = run(warm)
        per_token = [run(n) / n for _ in range(a.runs)]
        med = statistics.median(per_token)
        self.record("und_decode_tokens_per_s", mode, med, len(per_token), 1.0 / med, "tokens/s",
                    context=L, tokens=n, cache=cache_note, flash_prefill=ctx_flash.flash,
                    flash_step=step_flash.flash, warmup_s=warm_s,
                    note="batch 1, greedy (argmax on the device), lm_head included; median_ms is per token")

    def gen_inputs(self, cond_len, uncond_len, branches):
        cond_ids, uncond_ids = self.ids(cond_len), self.ids(uncond_len)
        ctx = [self.und_kv(self.und_forward(cond_ids, self.positions(cond_len)), cond_len)]
        if branches == 2:
            ctx.append(self.und_kv(self.und_forward(uncond_ids, self.positions(uncond_len)), uncond_len))
        return ctx

    def gen_step(self, mode):
        a = self.a
        branches = 2 if a.guidance > 1.0 else 1
        uncond_len = min(max(a.prompt_len, 1), 8)
        ctx = self.gen_inputs(a.prompt_len, uncond_len, branches)
        x1 = torch.randn((1,) + self.lat, generator=self.gen_rng)
        x = x1.expand(branches, -1, -1, -1).contiguous().to(self.device, self.dtype)
        t = torch.full((branches,), 0.5, dtype=torch.float32, device=self.device)
        plan = self.gen.prepare(x.shape, ctx)
        step = self.maybe_compile(self.gen.step, mode)
        med, times, warm = median_run(self.clock, lambda: step(x, t, plan), self.warmup(mode), a.runs)
        p = self.gen.cfg.patch_size
        n_lat = self.lat[1] * self.lat[2] // (p * p)
        self.record("gen_step_ms", mode, med, len(times), med * 1e3, "ms",
                    branches=branches, batch=branches, latent=list(self.lat), latent_tokens=n_lat,
                    srt_tokens=self.gen.n_srt, cond_context=a.prompt_len, uncond_context=uncond_len, warmup_s=warm,
                    note="branches as one batch; bridged layers attend over [und K/V ; gen tokens] per branch")

    def time_to_image(self, mode):
        a = self.a
        tok = prompts.load_tokenizer(os.path.join(self.b.dir, self.b.hb.get("und", "und"), "tokenizer.json"))
        step = self.maybe_compile(self.gen.step, mode)
        decode = self.maybe_compile(lambda z: vae_mod.decode(self.b.vae_W, self.b.vae_cfg, z, self.impl), mode)
        branches = 2 if a.guidance > 1.0 else 1
        texts = [PROMPT, ""][:branches]
        ids = [prompts.gen_ids(tok, s).to(self.device) for s in texts]
        scale = torch.tensor(a.guidance, dtype=torch.float32)
        parts = {}

        def request(steps):
            t0 = time.perf_counter()
            ctx = [self.und_kv(self.und_forward(i, self.positions(len(i))), len(i)) for i in ids]
            plan = self.gen.prepare((branches,) + self.lat, ctx)
            ts = sampler.schedule(steps, self.lat[1], self.lat[2]).to(self.device)
            g = torch.Generator(device=self.device).manual_seed(1)
            x = torch.randn(self.lat, generator=g, device=self.device, dtype=torch.float32)
            self.clock.sync()
            t1 = time.perf_counter()
            for i in range(steps):
                xb = x.to(self.dtype)[None].expand(branches, -1, -1, -1).contiguous()
                v = step(xb, ts[i:i + 1].expand(branches).contiguous(), plan)["velocity"].float()
                v = v[1] + scale * (v[0] - v[1]) if branches == 2 else v[0]
                x = x + (ts[i + 1] - ts[i]) * v
            self.clock.sync()
            t2 = time.perf_counter()
            px = decode(x[None].to(self.dtype))[0]
            img = vae_mod.to_image(px.float()).cpu()
            t3 = time.perf_counter()
            parts.update(prefill_ms=(t1 - t0) * 1e3, denoise_ms=(t2 - t1) * 1e3, vae_ms=(t3 - t2) * 1e3)
            return img

        # a one-step request warms up (compiles) the context shapes, the step and the VAE decode
        warm = sum(self.clock.time(lambda: request(1)) for _ in range(self.warmup(mode)))
        times = []
        for _ in range(a.image_runs):
            times.append(self.clock.time(lambda: request(a.steps)))
        med = statistics.median(times)
        self.record("time_to_image_ms", mode, med, len(times), med * 1e3, "ms", steps=a.steps,
                    size=a.size, guidance=a.guidance, branches=branches,
                    context=[len(i) for i in ids], last_run={k: round(v, 3) for k, v in parts.items()},
                    warmup_s=warm,
                    note="prefill of both branches, Euler loop with batched branches, VAE decode, pixels to host")

    def warmup(self, mode):
        return self.a.warmup + (1 if mode == "compile" else 0)

    # -------------------------------------------------------------------------------- driver

    def run(self):
        a = self.a
        torch.set_grad_enabled(False)
        if a.threads:
            torch.set_num_threads(a.threads)
        if self.clock.cuda:
            self.device_name = f"cuda:{torch.cuda.get_device_name(self.device)}"
        else:
            self.device_name = f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()}"
        say(f"loading {a.model} ({a.dtype} on {self.device_name})")
        self.load()
        modes = ["eager", "compile"] if a.mode == "both" else [a.mode]
        workloads = [("und_prefill_ms", self.und_prefill), ("und_decode_tokens_per_s", self.und_decode),
                     ("gen_step_ms", self.gen_step), ("time_to_image_ms", self.time_to_image)]
        if a.only:
            keep = set(a.only.split(","))
            workloads = [w for w in workloads if w[0] in keep]
        for mode in modes:
            if mode == "compile" and not self.compile_available():
                continue
            if self.clock.cuda:
                torch.cuda.reset_peak_memory_stats()
            for name, fn in workloads:
                say(f"{name} [{mode}]")
                try:
                    fn(mode)
                except Exception as e:  # keep the rows measured so far (as hbridge bench does)
                    if a.strict:
                        raise
                    msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
                    traceback.print_exc(file=sys.stderr)
                    say(f"  {name} [{mode}] FAILED: {msg}")
                    self.records.append(dict(name=name, mode=mode, device=self.device_name, dtype=a.dtype,
                                             median_ms=None, runs=0, value=None, unit="",
                                             extra=dict(error=msg)))
            if self.clock.cuda:
                peak = torch.cuda.max_memory_allocated(self.device)
                self.record("peak_gpu_bytes", mode, None, 1, float(peak), "bytes",
                            gib=round(peak / 2 ** 30, 3), note="torch.cuda.max_memory_allocated, weights included")
        return self.records

    def compile_available(self):
        """torch.compile on the CPU needs inductor's C++ toolchain; try a tiny function first."""
        if self.clock.cuda:
            return True
        try:
            f = torch.compile(lambda x: torch.nn.functional.silu(x) * 2, dynamic=False)
            f(torch.randn(8))
            return True
        except Exception as e:
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            say(f"compile mode skipped: torch.compile does not work on this CPU ({why})")
            common.NOTES.add(f"compile mode skipped on the CPU: {why}")
            return False


# ----------------------------------------------------------------------------------------------- output

def print_table(records, meta):
    print(f"PyTorch {meta['torch']} (transformers {meta['transformers']}) on {meta['device']}, {meta['dtype']}: "
          f"{meta['model']}")
    print(f"{'workload':<26} {'mode':<8} {'value':>14} {'unit':<9} {'median ms':>11} {'runs':>5}  note")
    for r in records:
        v = "FAILED" if r["value"] is None else f"{r['value']:.3f}"
        m = "" if r["median_ms"] is None else f"{r['median_ms']:.3f}"
        extra = r["extra"]
        note = extra.get("error") or extra.get("note", "")
        print(f"{r['name']:<26} {r['mode']:<8} {v:>14} {r['unit']:<9} {m:>11} {r['runs']:>5}  {note}")
    for n in sorted(common.NOTES):
        print(f"note: {n}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="checkpoint directory (hbridge.json, und/, gen/, vae/, bridge/)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default=None, help="default: bf16 on cuda, f32 on cpu")
    ap.add_argument("--mode", choices=["eager", "compile", "both"], default="eager")
    ap.add_argument("--compile-mode", default=None,
                    help="torch.compile mode for every workload (default: reduce-overhead for decode on CUDA, "
                         "default elsewhere)")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels (square)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--runs", type=int, default=5, help="timed runs of prefill, decode and the gen step")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (one more in compile mode)")
    ap.add_argument("--image-runs", type=int, default=3, help="timed runs of the time-to-image request")
    ap.add_argument("--only", default=None, help="comma-separated workload names")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--strict", action="store_true", help="stop at the first failing workload")
    ap.add_argument("--json", default=None, help="write the records here")
    ap.add_argument("--compare", default=None, metavar="HBRIDGE_JSON",
                    help="then print hbridge (from `hbridge bench --json`) and PyTorch side by side")
    a = ap.parse_args(argv)
    if a.dtype is None:
        a.dtype = "bf16" if a.device == "cuda" else "f32"
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    if a.prompt_len < 1 or a.decode_tokens < 1 or a.steps < 1 or a.runs < 1 or a.image_runs < 1:
        ap.error("--prompt-len, --decode-tokens, --steps, --runs and --image-runs must be positive")

    import transformers
    r = Runner(a)
    records = r.run()
    meta = dict(engine="torch", model=os.path.abspath(a.model), device=r.device_name, dtype=a.dtype,
                torch=torch.__version__, transformers=transformers.__version__,
                options=dict(prompt_len=a.prompt_len, context=a.context, decode_tokens=a.decode_tokens,
                             size=a.size, steps=a.steps, guidance=a.guidance, runs=a.runs, warmup=a.warmup,
                             image_runs=a.image_runs, compile_mode=a.compile_mode),
                notes=sorted(common.NOTES))
    print_table(records, meta)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(meta, records=records), f, indent=1)
            f.write("\n")
        say(f"wrote {a.json}")
    if a.compare:
        from bench_compare import compare, load
        print()
        compare(load(a.compare), dict(meta, records=records))


if __name__ == "__main__":
    main()
