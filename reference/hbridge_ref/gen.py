"""Generation expert (OmniGen2 DiT), bridge and SRT tokens in plain PyTorch, f32 (DESIGN.md 3 and 5).

Everything works on a dict of f32 tensors named as in the checkpoint files:
  gen:    x_embedder.*, ref_image_patch_embedder.*, image_index_embedding, time_caption_embed.timestep_embedder.*,
          noise_refiner.{j}.*, ref_image_refiner.{j}.*, layers.{i}.*, norm_out.*
  bridge: bridge.layers.{g}.{q,k,v,o}_proj.weight, srt.tokens, srt.proj.{weight,bias}

A forward call runs a batch of guidance branches that share the gen-token layout (same latent size, same
reference-image sizes); each branch has its own und context (K/V cache of its paired und layers and its s0).
Contexts of different lengths are right-padded and masked (key padding only).

`GenExpert.forward` = `prepare` (positions, RoPE tables, padded bridge context: fixed for a request) + `step`
(one denoising step); the benchmark prepares once per request and times or compiles `step` alone. An `Impl`
(common.py) other than the default selects the fast paths (SDPA attention, f32 RoPE) for bf16 on a GPU; the
default is the reference arithmetic the fixtures were made with.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as Fn

from .common import F32, F64, REFERENCE, Impl, sdpa
from .config import GenConfig, UndTextConfig


# ----------------------------------------------------------------------------------------------- primitives

def rms_norm(x, w, eps):
    """y = x * rsqrt(mean(x^2) + eps) * w, f32 (diffusers RMSNorm / HF Qwen2RMSNorm). f16/bf16 inputs are
    normalized in f32 and cast to the weight's dtype before the weight, as diffusers' RMSNorm does."""
    if x.dtype in (torch.float16, torch.bfloat16):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(w.dtype) * w
    var = x.pow(2).mean(-1, keepdim=True)
    return x * torch.rsqrt(var + eps) * w


def linear(x, W, name, bias=True):
    b = W.get(name + ".bias") if bias else None
    return Fn.linear(x, W[name + ".weight"], b)


def timestep_proj(t, timestep_scale, dim=256):
    """[cos e, sin e], e_k = timestep_scale * t * exp(-ln(10000) k / (dim/2)); arguments in f64, result f32.

    diffusers `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0, scale=timestep_scale)` computes the
    same in f32 (frequencies and arguments), which differs by ~1e-4 absolute at timestep_scale 1000."""
    half = dim // 2
    k = torch.arange(half, dtype=F64, device=t.device)
    freqs = torch.exp(-math.log(10000.0) * k / half)
    arg = float(timestep_scale) * t.to(F64)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1).to(F32)


def timestep_embedding(W, t, cfg: GenConfig):
    """temb [B, E] = linear_2(silu(linear_1(timestep_proj(t))))."""
    p = "time_caption_embed.timestep_embedder."
    e = timestep_proj(t, cfg.timestep_scale, cfg.FREQ_DIM).to(W[p + "linear_1.weight"].dtype)
    h = linear(e, W, p + "linear_1")
    return linear(Fn.silu(h), W, p + "linear_2")


def gen_rope_angles(pos, axes_dim, theta=10000.0):
    """Angles [..., D/2] (f64) of the 3-axis interleaved gen RoPE for integer positions pos [..., 3].

    Real dims [0,a0) use axis 0, [a0,a0+a1) axis 1, the rest axis 2; pair k of an axis of size a rotates by
    pos * theta^(-2k/a) (diffusers get_1d_rotary_pos_embed with freqs_dtype f64)."""
    parts = []
    for a, d in enumerate(axes_dim):
        inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=F64)[: d // 2] / d))
        parts.append(pos[..., a].to(F64)[..., None] * inv)
    return torch.cat(parts, dim=-1)


def apply_gen_rope(x, ang, impl: Impl = REFERENCE):
    """Interleaved (complex-pair) rotation of x [B, N, heads, D] by ang [B, N, D/2]; done in f64 like diffusers'
    complex multiply (complex64 x complex128 -> complex128), cast back to f32.

    With impl.f64_rope False, ang holds the angles' [cos, sin] stacked, [B, N, D/2, 2] f32 (computed once per
    request by GenExpert.prepare) and the rotation runs in f32, cast back to x's dtype."""
    B, N, Hh, D = x.shape
    if not impl.f64_rope:
        xr = x.float().reshape(B, N, Hh, D // 2, 2)
        c = ang[:, :, None, :, 0]
        s = ang[:, :, None, :, 1]
        x0, x1 = xr[..., 0], xr[..., 1]
        return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).reshape(B, N, Hh, D).to(x.dtype)
    xr = x.to(F64).reshape(B, N, Hh, D // 2, 2)
    c = torch.cos(ang)[:, :, None, :]
    s = torch.sin(ang)[:, :, None, :]
    x0, x1 = xr[..., 0], xr[..., 1]
    y = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1)
    return y.reshape(B, N, Hh, D).to(x.dtype)


def mrope_cos_sin(pos, head_dim, theta, mrope_section):
    """cos, sin [B, N, head_dim] of the und M-RoPE for positions pos [3, B, N]; the exact arithmetic of HF
    Qwen2_5_VLRotaryEmbedding (f32 inv_freq and angles, section k uses t / h / w, then cat(freqs, freqs))."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = pos[..., None].float() * inv_freq  # [3, B, N, D/2]
    cos, sin = freqs.cos(), freqs.sin()

    def recompose(f):
        f = torch.cat([m[i % 3] for i, m in enumerate(f.split(list(mrope_section), dim=-1))], dim=-1)
        return torch.cat((f, f), dim=-1)

    return recompose(cos), recompose(sin)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_mrope(x, cos, sin):
    """x [B, N, heads, D]; cos/sin [B, N, D] (rotate_half convention, HF apply_rotary_pos_emb)."""
    c = cos[:, :, None, :]
    s = sin[:, :, None, :]
    return (x * c) + (rotate_half(x) * s)


def attention(q, k, v, scale, key_mask=None, impl: Impl = REFERENCE, what="gen attention"):
    """softmax(q k^T * scale) v. q [B, Nq, H, D], k/v [B, Nk, K, D] (GQA: kv head j serves q heads j*g..j*g+g-1),
    key_mask [B, Nk] bool (True = attend). Returns [B, Nq, H*D]. impl.sdpa: through scaled_dot_product_attention."""
    B, Nq, H, D = q.shape
    if impl.sdpa:
        o = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale, key_mask, impl, what)
        return o.transpose(1, 2).reshape(B, Nq, H * v.shape[-1])
    g = H // k.shape[2]
    if g > 1:
        k = k.repeat_interleave(g, dim=2)
        v = v.repeat_interleave(g, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    o = torch.einsum("bhqk,bkhd->bqhd", p, v)
    return o.reshape(B, Nq, H * v.shape[-1])


def patchify(x, p):
    """[B, C, H, W] -> [B, (H/p W/p), (p p C)]  ('c (h p1) (w p2) -> (h w) (p1 p2 c)')."""
    B, C, H, W = x.shape
    return x.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tok, C, H, W, p):
    """[B, (H/p W/p), (p p C)] -> [B, C, H, W]."""
    B = tok.shape[0]
    return tok.view(B, H // p, W // p, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)


# ----------------------------------------------------------------------------------------------- blocks

def feed_forward(W, p, x):
    """linear_2(silu(linear_1(u)) * linear_3(u)), no bias."""
    return linear(Fn.silu(linear(x, W, p + "linear_1", False)) * linear(x, W, p + "linear_3", False), W,
                  p + "linear_2", False)


def qkv_gen_heads(W, p, h, cfg: GenConfig):
    """to_q/to_k/to_v and the per-head RMSNorm (eps 1e-5) of q and k. Shapes [B, N, heads, D]."""
    B, N, _ = h.shape
    D = cfg.head_dim
    q = linear(h, W, p + "attn.to_q", False).view(B, N, cfg.num_attention_heads, D)
    k = linear(h, W, p + "attn.to_k", False).view(B, N, cfg.num_kv_heads, D)
    v = linear(h, W, p + "attn.to_v", False).view(B, N, cfg.num_kv_heads, D)
    q = rms_norm(q, W[p + "attn.norm_q.weight"], cfg.QK_NORM_EPS)
    k = rms_norm(k, W[p + "attn.norm_k.weight"], cfg.QK_NORM_EPS)
    return q, k, v


def self_attention(W, p, h, ang, cfg: GenConfig, key_mask=None, impl: Impl = REFERENCE):
    """Gen self-attention: q/k norm, then interleaved 3-axis RoPE, GQA, scale D^-0.5, to_out.0."""
    q, k, v = qkv_gen_heads(W, p, h, cfg)
    q = apply_gen_rope(q, ang, impl)
    k = apply_gen_rope(k, ang, impl)
    o = attention(q, k, v, cfg.head_dim ** -0.5, key_mask, impl, "gen self-attention")
    return linear(o, W, p + "attn.to_out.0", False)


@dataclass
class BridgeContext:
    """What a bridged gen layer needs from the und side, for a batch of branches.

    k, v: per und layer u, [B, Lmax, K_u, D_u] (post-RoPE K, projected V; right-padded),
    ctx_mask [B, Lmax] (True on real context tokens), cos/sin [B, N_gen, D_u] of the shared positions,
    lens: the context length of each branch, when known (lets the SDPA path drop the padding instead of masking)."""
    k: Dict[int, torch.Tensor]
    v: Dict[int, torch.Tensor]
    ctx_mask: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    lens: Optional[List[int]] = None


def bridged_attention(W, p, h, g, u, bctx: BridgeContext, cfg: GenConfig, und: UndTextConfig,
                      impl: Impl = REFERENCE):
    """DESIGN.md 5: project gen q/k/v (after norm_q/norm_k, no gen RoPE) into the und head space, und M-RoPE at the
    shared positions, attend over [und K/V of layer u ; gen tokens], project back, to_out.0."""
    B, N, _ = h.shape
    q, k, v = qkv_gen_heads(W, p, h, cfg)
    bp = f"bridge.layers.{g}."
    qs = Fn.linear(q.reshape(B, N, -1), W[bp + "q_proj.weight"]).view(B, N, und.num_attention_heads, und.head_dim)
    ks = Fn.linear(k.reshape(B, N, -1), W[bp + "k_proj.weight"]).view(B, N, und.num_key_value_heads, und.head_dim)
    vs = Fn.linear(v.reshape(B, N, -1), W[bp + "v_proj.weight"]).view(B, N, und.num_key_value_heads, und.head_dim)
    qs = apply_mrope(qs, bctx.cos, bctx.sin)
    ks = apply_mrope(ks, bctx.cos, bctx.sin)
    scale = und.head_dim ** -0.5
    if impl.sdpa and bctx.lens is not None:
        # Branches whose contexts have the same length need no mask; others run one by one over their own
        # unpadded keys, so that flash (which takes no mask) serves every branch.
        groups = [list(range(B))] if len(set(bctx.lens)) == 1 else [[b] for b in range(B)]
        outs = []
        for grp in groups:
            b0, b1, L = grp[0], grp[-1] + 1, bctx.lens[grp[0]]
            K = torch.cat([bctx.k[u][b0:b1, :L], ks[b0:b1]], dim=1)
            V = torch.cat([bctx.v[u][b0:b1, :L], vs[b0:b1]], dim=1)
            outs.append(attention(qs[b0:b1], K, V, scale, None, impl, "bridged attention"))
        o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
    else:
        K = torch.cat([bctx.k[u], ks], dim=1)
        V = torch.cat([bctx.v[u], vs], dim=1)
        mask = torch.cat([bctx.ctx_mask, torch.ones(B, N, dtype=torch.bool, device=h.device)], dim=1)
        o = attention(qs, K, V, scale, mask, impl, "bridged attention")  # [B, N, H_u*D_u]
    o = Fn.linear(o, W[bp + "o_proj.weight"])  # -> [B, N, H_g*D_g]
    return linear(o, W, p + "attn.to_out.0", False)


def modulated_block(W, p, x, temb, cfg: GenConfig, ang=None, key_mask=None, bridge=None, impl: Impl = REFERENCE):
    """OmniGen2 / Lumina2 block with modulation. bridge = (g, u, BridgeContext, UndTextConfig) replaces the
    self-attention by the bridged attention."""
    mod = linear(Fn.silu(temb), W, p + "norm1.linear")
    s_msa, g_msa, s_mlp, g_mlp = mod.chunk(4, dim=-1)
    h = rms_norm(x, W[p + "norm1.norm.weight"], cfg.norm_eps) * (1 + s_msa[:, None, :])
    if bridge is None:
        a = self_attention(W, p, h, ang, cfg, key_mask, impl)
    else:
        g, u, bctx, und = bridge
        a = bridged_attention(W, p, h, g, u, bctx, cfg, und, impl)
    x = x + torch.tanh(g_msa)[:, None, :] * rms_norm(a, W[p + "norm2.weight"], cfg.norm_eps)
    f = feed_forward(W, p + "feed_forward.",
                     rms_norm(x, W[p + "ffn_norm1.weight"], cfg.norm_eps) * (1 + s_mlp[:, None, :]))
    x = x + torch.tanh(g_mlp)[:, None, :] * rms_norm(f, W[p + "ffn_norm2.weight"], cfg.norm_eps)
    return x


def norm_out(W, x, temb, cfg: GenConfig):
    """LayerNorm (no affine, eps 1e-6) * (1 + linear_1(silu(temb))), then linear_2."""
    scale = linear(Fn.silu(temb), W, "norm_out.linear_1")
    y = Fn.layer_norm(x, (x.shape[-1],), eps=cfg.NORM_OUT_EPS) * (1 + scale[:, None, :])
    return linear(y, W, "norm_out.linear_2")


# ----------------------------------------------------------------------------------------------- positions

def image_grid_positions(start, hp, wp):
    """[hp*wp, 3] rows (start, start+row, start+col) row-major, i.e. a Qwen2.5-VL image at offset `start`."""
    r = torch.arange(hp).view(-1, 1).expand(hp, wp).reshape(-1)
    c = torch.arange(wp).view(1, -1).expand(hp, wp).reshape(-1)
    return torch.stack([torch.full_like(r, start), start + r, start + c], dim=-1)


def gen_positions(n_pre, grids):
    """Gen RoPE positions [N, 3]: the n_pre tokens before the images (i,i,i); image j (grid hp x wp, the last
    is the noisy latent) at (shift_j, row, col) with shift_0 = n_pre, shift_{j+1} = shift_j + max(hp, wp)."""
    parts = [torch.arange(n_pre).view(-1, 1).expand(n_pre, 3)]
    shift = n_pre
    for hp, wp in grids:
        parts.append(image_grid_positions(0, hp, wp) + torch.tensor([shift, 0, 0]))
        shift += max(hp, wp)
    return torch.cat(parts, dim=0).long()


def shared_positions(s0, n_srt, grids):
    """Shared (und M-RoPE) positions [3, N] of the gen tokens of one branch (DESIGN.md 5): SRT i -> s0+i (x3),
    then each image as a Qwen2.5-VL image on the patch grid starting at s0+n_srt, next at max(ids)+1."""
    parts = [(s0 + torch.arange(n_srt)).view(-1, 1).expand(n_srt, 3)]
    s = s0 + n_srt
    for hp, wp in grids:
        p = image_grid_positions(s, hp, wp)
        parts.append(p)
        s = int(p.max()) + 1
    return torch.cat(parts, dim=0).long().t().contiguous()


# ----------------------------------------------------------------------------------------------- model

@dataclass
class UndKV:
    """One branch's und cache: K (post-RoPE) / V [L, K_u, D_u] per paired und layer, and s0 = max ctx pos + 1."""
    k: Dict[int, torch.Tensor]
    v: Dict[int, torch.Tensor]
    s0: int


@dataclass
class StepPlan:
    """What a gen step needs that stays fixed for a request: the token layout, the gen RoPE angles (or their
    cos/sin, see apply_gen_rope) and the bridge context (padded und K/V, mask, shared-position cos/sin)."""
    grids: List[tuple]
    offsets: List[int]
    ang: torch.Tensor
    bctx: Optional[BridgeContext]


class GenExpert:
    def __init__(self, cfg: GenConfig, und: UndTextConfig, W: Dict[str, torch.Tensor], pairs, num_srt_tokens,
                 impl: Impl = REFERENCE):
        self.cfg = cfg
        self.und = und
        self.W = W
        self.impl = impl
        self.pairs = {int(g): int(u) for g, u in pairs}
        assert len(self.pairs) == len(pairs), "a gen layer appears in at most one pair"
        self.n_srt = num_srt_tokens
        assert W["srt.tokens"].shape == (num_srt_tokens, cfg.hidden_size)

    def forward(self, x, t, ctx: List[UndKV], refs: Optional[List[torch.Tensor]] = None, trace=False):
        """One gen step for B branches sharing the gen layout.

        x [B, C, H, W] noisy latents, t [B] f32 timesteps, ctx: B UndKV (one per branch), refs: None or a list
        whose j-th entry is reference latent j of every branch, [B, C, Hr_j, Wr_j].
        Returns dict(velocity [B, C, H, W], srt [B, n_srt, out_hidden], hs: list of [B, N_gen, hidden] if trace,
        ref_tokens: per reference, its tokens after the ref refiner [B, n_j, hidden])."""
        refs = refs or []
        plan = self.prepare(x.shape, ctx, [tuple(r.shape[2:]) for r in refs])
        return self.step(x, t, plan, refs, trace)

    def prepare(self, x_shape, ctx: List[UndKV], ref_hw=()) -> StepPlan:
        """The request-constant part of a step for latents of shape x_shape [B, C, H, W], the B branches' und
        contexts and reference latents of spatial sizes ref_hw [(Hr, Wr), ...]."""
        cfg, W, und = self.cfg, self.W, self.und
        B, _, H, Wd = x_shape
        p = cfg.patch_size
        dev = W["srt.tokens"].device
        grids = [(h // p, w // p) for h, w in ref_hw] + [(H // p, Wd // p)]
        n_pre = self.n_srt

        pos = gen_positions(n_pre, grids)  # [N_gen, 3], same for every branch
        ang = gen_rope_angles(pos, cfg.axes_dim_rope, cfg.ROPE_THETA)[None].expand(B, -1, -1)
        if not self.impl.f64_rope:
            ang = torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1).to(F32)
        ang = ang.to(dev)
        offsets = [n_pre]
        for hp, wp in grids:
            offsets.append(offsets[-1] + hp * wp)

        # bridge context: pad the und K/V of each branch, shared positions per branch
        bctx = None
        if self.pairs:
            lens = [c.k[next(iter(c.k))].shape[0] for c in ctx]
            Lmax = max(lens)
            k0 = ctx[0].k[next(iter(ctx[0].k))]
            mask = torch.zeros(B, Lmax, dtype=torch.bool, device=k0.device)
            ks, vs = {}, {}
            for u in sorted(set(self.pairs.values())):
                kk = torch.zeros(B, Lmax, und.num_key_value_heads, und.head_dim, dtype=k0.dtype, device=k0.device)
                vv = torch.zeros_like(kk)
                for b, c in enumerate(ctx):
                    kk[b, : lens[b]] = c.k[u]
                    vv[b, : lens[b]] = c.v[u]
                ks[u], vs[u] = kk, vv
            for b in range(B):
                mask[b, : lens[b]] = True
            spos = torch.stack([shared_positions(c.s0, self.n_srt, grids) for c in ctx], dim=1)  # [3, B, N]
            cos, sin = mrope_cos_sin(spos, und.head_dim, und.rope_theta, und.mrope_section)
            # in the activations' dtype, as HF's Qwen2_5_VLRotaryEmbedding returns them (a no-op in f32)
            adt = W["x_embedder.weight"].dtype
            bctx = BridgeContext(ks, vs, mask, cos.to(dev, adt), sin.to(dev, adt), lens)
        return StepPlan(grids, offsets, ang, bctx)

    def step(self, x, t, plan: StepPlan, refs: Optional[List[torch.Tensor]] = None, trace=False):
        """One gen step (see forward) given the request's plan from prepare."""
        cfg, W, und, impl = self.cfg, self.W, self.und, self.impl
        B, C, H, Wd = x.shape
        p = cfg.patch_size
        refs = refs or []
        temb = timestep_embedding(W, t, cfg)
        ang, offsets = plan.ang, plan.offsets

        # reference images: ref_image_patch_embedder + image_index_embedding[j], refined each alone
        seq = [W["srt.tokens"][None].expand(B, -1, -1)]
        for j, r in enumerate(refs):
            tok = linear(patchify(r, p), W, "ref_image_patch_embedder") + W["image_index_embedding"][j]
            a = ang[:, offsets[j]:offsets[j + 1]]
            for i in range(cfg.num_refiner_layers):
                tok = modulated_block(W, f"ref_image_refiner.{i}.", tok, temb, cfg, ang=a, impl=impl)
            seq.append(tok)
        ref_tokens = seq[1:]  # each reference's tokens after the ref refiner, [B, n_j, hidden]
        # noisy latent: x_embedder, noise_refiner (alone, with its joint positions)
        tok = linear(patchify(x, p), W, "x_embedder")
        a = ang[:, offsets[-2]:offsets[-1]]
        for i in range(cfg.num_refiner_layers):
            tok = modulated_block(W, f"noise_refiner.{i}.", tok, temb, cfg, ang=a, impl=impl)
        seq.append(tok)
        h = torch.cat(seq, dim=1)

        hs = [h] if trace else None
        for i in range(cfg.num_layers):
            br = (i, self.pairs[i], plan.bctx, und) if i in self.pairs else None
            h = modulated_block(W, f"layers.{i}.", h, temb, cfg, ang=ang, bridge=br, impl=impl)
            if trace:
                hs.append(h)

        srt = Fn.linear(h[:, : self.n_srt], W["srt.proj.weight"], W["srt.proj.bias"])
        out = norm_out(W, h[:, offsets[-2]:offsets[-1]], temb, cfg)
        vel = unpatchify(out, cfg.out_ch, H, Wd, p)
        return {"velocity": vel, "srt": srt, "hs": hs, "ref_tokens": ref_tokens}


# ----------------------------------------------------------------------------------------------- omnigen2 topology

def unmodulated_block(W, p, x, ang, cfg: GenConfig, key_mask=None):
    """OmniGen2 / Lumina2 block without modulation (context_refiner): norm1 is a plain RMSNorm, no tanh gates.
    x = x + norm2(attn(norm1(x))); x = x + ffn_norm2(ff(ffn_norm1(x)))."""
    h = rms_norm(x, W[p + "norm1.weight"], cfg.norm_eps)
    a = self_attention(W, p, h, ang, cfg, key_mask)
    x = x + rms_norm(a, W[p + "norm2.weight"], cfg.norm_eps)
    f = feed_forward(W, p + "feed_forward.", rms_norm(x, W[p + "ffn_norm1.weight"], cfg.norm_eps))
    return x + rms_norm(f, W[p + "ffn_norm2.weight"], cfg.norm_eps)


def caption_embed(W, feats, cfg: GenConfig):
    """time_caption_embed.caption_embedder: Sequential(RMSNorm(text_feat_dim, eps=norm_eps), Linear(bias))."""
    p = "time_caption_embed.caption_embedder."
    return Fn.linear(rms_norm(feats, W[p + "0.weight"], cfg.norm_eps), W[p + "1.weight"], W[p + "1.bias"])


class Omnigen2Expert:
    """The gen expert of the omnigen2 topology (DESIGN.md 6; OmniGen2's transformer_omnigen2.py): the und
    expert's post-norm last hidden states of the context -> caption_embedder -> context_refiner (unmodulated,
    caption positions (i,i,i)) -> gen sequence [text | refs | noise] -> modulated main layers with plain gen
    self-attention over the whole sequence -> norm_out on the noisy-latent rows. No bridge, no SRT.

    Branches have their own caption lengths, hence their own sequence lengths and latent position shifts: each
    branch runs alone (no padding, so no mask)."""

    def __init__(self, cfg: GenConfig, W: Dict[str, torch.Tensor]):
        self.cfg = cfg
        self.W = W

    def forward_one(self, x, t, caption, refs=None, trace=False):
        """x [C, H, W], t f32 scalar tensor, caption [L, text_feat_dim] (und post-norm hidden states),
        refs: list of [C, Hr, Wr]. Returns velocity [C, H, W] and hs (list of [N, hidden]) if trace."""
        cfg, W = self.cfg, self.W
        C, H, Wd = x.shape
        p = cfg.patch_size
        refs = refs or []
        L = caption.shape[0]
        grids = [(r.shape[1] // p, r.shape[2] // p) for r in refs] + [(H // p, Wd // p)]
        temb = timestep_embedding(W, t.view(1), cfg)
        pos = gen_positions(L, grids)
        ang = gen_rope_angles(pos, cfg.axes_dim_rope, cfg.ROPE_THETA)[None]
        offsets = [L]
        for hp, wp in grids:
            offsets.append(offsets[-1] + hp * wp)

        cap = caption_embed(W, caption[None], cfg)
        for i in range(cfg.num_refiner_layers):
            cap = unmodulated_block(W, f"context_refiner.{i}.", cap, ang[:, :L], cfg)
        seq = [cap]
        for j, r in enumerate(refs):
            tok = linear(patchify(r[None], p), W, "ref_image_patch_embedder") + W["image_index_embedding"][j]
            a = ang[:, offsets[j]:offsets[j + 1]]
            for i in range(cfg.num_refiner_layers):
                tok = modulated_block(W, f"ref_image_refiner.{i}.", tok, temb, cfg, ang=a)
            seq.append(tok)
        tok = linear(patchify(x[None], p), W, "x_embedder")
        a = ang[:, offsets[-2]:offsets[-1]]
        for i in range(cfg.num_refiner_layers):
            tok = modulated_block(W, f"noise_refiner.{i}.", tok, temb, cfg, ang=a)
        seq.append(tok)
        h = torch.cat(seq, dim=1)
        hs = [h[0]] if trace else None
        for i in range(cfg.num_layers):
            h = modulated_block(W, f"layers.{i}.", h, temb, cfg, ang=ang)
            if trace:
                hs.append(h[0])
        out = norm_out(W, h[:, offsets[-2]:offsets[-1]], temb, cfg)
        return unpatchify(out, cfg.out_ch, H, Wd, p)[0], hs

    def forward(self, x, t, ctx, refs=None, trace=False):
        """Same interface as GenExpert.forward; ctx: B caption features [L_b, text_feat_dim]. Returns
        dict(velocity [B, C, H, W], srt None, hs: per layer a list over branches of [N_b, hidden] if trace)."""
        vels, hss = [], []
        for b in range(x.shape[0]):
            rb = [r[b] for r in refs] if refs else None
            v, hs = self.forward_one(x[b], t[b], ctx[b], rb, trace)
            vels.append(v)
            hss.append(hs)
        hs = [list(layer) for layer in zip(*hss)] if trace else None
        return {"velocity": torch.stack(vels), "srt": None, "hs": hs}
