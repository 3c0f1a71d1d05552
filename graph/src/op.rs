//! The ops of the static graph. Every op reads tensors and writes one new tensor; shapes are fixed when
//! the graph is built. Layouts: a token sequence is row-major `[tokens, features]` with multi-head tensors
//! head-major inside the features (`[N, H*D]` = H blocks of D); an image is `[C, H, W]`. The semantics
//! here are the contract every backend implements (the CPU backend is the reference).

use crate::TensorId;

/// Which rotary convention and parameters a `Rope` op applies.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeKind {
    /// Und (Qwen2.5-VL) M-RoPE, rotate_half. `positions` is I32 `[3, N]` (t, h, w rows). Frequency index
    /// `k < D/2` uses position row 0 for `k < s0`, row 1 for `s0 <= k < s0+s1`, row 2 otherwise.
    /// Arithmetic as HF does it: `inv_freq[k] = 1 / theta^((2k)/D)` in f32, angle `pos * inv_freq` in f32,
    /// cos/sin in f32; `x' = x*cos + rotate_half(x)*sin` with cos/sin over `cat(freqs, freqs)`.
    Mrope { section: [usize; 3], theta: f64 },
    /// Gen (OmniGen2) 3-axis interleaved RoPE. `positions` is I32 `[N, 3]`. Real dims `[0,a0)` use axis 0,
    /// `[a0,a0+a1)` axis 1, the rest axis 2; within an axis of width `a`, pair `k` = dims `(2k, 2k+1)`
    /// (relative to the axis start) rotates by `pos_axis * theta^(-2k/a)`. Angles, cos and sin in f64,
    /// the rotation in f64, cast to f32.
    Interleaved3 { axes: [usize; 3], theta: f64 },
    /// Qwen2.5-VL vision tower 2-D rotary, rotate_half. `positions` is I32 `[2, N]` (rows h, w: the patch's
    /// row and column in its image). With `q = head_dim/4` (head_dim divisible by 4), HF's axial
    /// `inv_freq[j] = 1 / theta^((2j)/(head_dim/2))`, j < q, f32 arithmetic as for `Mrope`; frequency index
    /// `k < head_dim/2` has angle `h * inv_freq[k]` for `k < q` and `w * inv_freq[k - q]` otherwise (f32);
    /// cos/sin in f32 over `cat(freqs, freqs)`, `x' = x*cos + rotate_half(x)*sin`.
    Vision2d { theta: f64 },
}

/// One K/V segment of an attention: keys and values of `rows` tokens, `[rows, kv_heads*head_dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct KvSegment {
    pub k: TensorId,
    pub v: TensorId,
    /// I32 `[1]`: only the first `len[0]` rows are keys (`0 <= len[0] <= rows`), the rest is room (a
    /// K/V cache allocated for the whole answer). The masked rows still count in key positions: the
    /// causal limit is taken over the concatenation of the full segments. `None`: every row is a key.
    pub len: Option<TensorId>,
}

impl KvSegment {
    /// Every row of `k` / `v` is a key.
    pub fn new(k: TensorId, v: TensorId) -> KvSegment {
        KvSegment { k, v, len: None }
    }

    /// Only the first `len[0]` rows are keys (see [`KvSegment::len`]).
    pub fn with_len(k: TensorId, v: TensorId, len: TensorId) -> KvSegment {
        KvSegment {
            k,
            v,
            len: Some(len),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `out[i] = table[ids[i]]`; ids I32 `[N]`, table `[V, D]` -> `[N, D]`. An id outside `[0, V)` is an
    /// error at execution, never a read out of bounds.
    Embed { table: TensorId, ids: TensorId },
    /// Over the last `dim` features of each row (x viewed as `[numel/dim, dim]`, so per-head norms use
    /// `dim = head_dim`): `y = x * rsqrt(mean(x^2) + eps) * weight` (no weight: `* 1`); mean in f32.
    RmsNorm {
        x: TensorId,
        weight: Option<TensorId>,
        dim: usize,
        eps: f32,
    },
    /// LayerNorm over the last `dim` features, no affine: `(x - mean) * rsqrt(var + eps)`, biased variance.
    LayerNorm { x: TensorId, dim: usize, eps: f32 },
    /// `y = x @ w^T (+ bias)`; x `[N, in]`, w `[out, in]` (nn.Linear layout), bias `[out]`.
    Linear {
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
    },
    /// Elementwise `a + b`; `b` has the shape of `a`, or is one row `[D]` / `[1, D]` broadcast over a's rows.
    Add { a: TensorId, b: TensorId },
    /// `a * (1 + scale)`, `scale` one row `[D]` broadcast over rows (the DiT's modulation).
    Modulate { x: TensorId, scale: TensorId },
    /// `x + tanh(gate) * y`, `gate` one row `[D]` broadcast over rows (the DiT's gated residual).
    GateResidual {
        x: TensorId,
        gate: TensorId,
        y: TensorId,
    },
    /// Elementwise `x * scale + shift` with constants (the VAE's latent scaling).
    Affine { x: TensorId, scale: f32, shift: f32 },
    /// Elementwise SiLU `x * sigmoid(x)`.
    Silu { x: TensorId },
    /// Exact (erf) GELU.
    Gelu { x: TensorId },
    /// `silu(gate) * up`, same shapes.
    SwiGlu { gate: TensorId, up: TensorId },
    /// Rotary embedding of `x` `[N, heads*head_dim]` at `positions` (layout per kind).
    Rope {
        x: TensorId,
        positions: TensorId,
        heads: usize,
        head_dim: usize,
        kind: RopeKind,
    },
    /// Softmax attention of `q` `[Nq, heads*head_dim]` over the concatenation of the segments' keys
    /// (each `[len_s, kv_heads*head_dim]`), without materializing it. GQA: kv head `j` serves q heads
    /// `j*g .. j*g+g-1`, `g = heads/kv_heads`. `causal`: query i sees keys `0..=i + (Nk - Nq)` (queries are
    /// the last Nq positions of the keys). Scores `q.k * scale`; softmax in f32. -> `[Nq, heads*head_dim]`.
    /// A segment with a `len` masks its rows past `len[0]` (they keep their positions); a query that
    /// sees no key gets zeros.
    Attention {
        q: TensorId,
        segments: Vec<KvSegment>,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        causal: bool,
        scale: f32,
    },
    /// Columns `[start, start+len)` of `x` `[N, C]` -> `[N, len]` (e.g. one chunk of the modulation vector).
    SliceCols {
        x: TensorId,
        start: usize,
        len: usize,
    },
    /// Rows `[start, start+len)` of `x` `[N, C]` -> `[len, C]`.
    SliceRows {
        x: TensorId,
        start: usize,
        len: usize,
    },
    /// Row-wise concatenation of `[N_i, C]` -> `[sum N_i, C]`.
    ConcatRows { parts: Vec<TensorId> },
    /// Latent `[C, H, W]` -> tokens `[(H/p)*(W/p), p*p*C]`, token `(h, w)` row-major, features `(p1 p2 c)`.
    Patchify { x: TensorId, patch: usize },
    /// Inverse of `Patchify`: tokens `[(H/p)*(W/p), p*p*C]` -> `[C, H, W]`.
    Unpatchify {
        x: TensorId,
        patch: usize,
        channels: usize,
        height: usize,
        width: usize,
    },
    /// Sinusoidal timestep features: `t` F32 `[1]` -> `[2*half]` = `[cos e, sin e]`,
    /// `e_k = scale * t * exp(-ln(10000) * k / half)`, computed in f64 (DESIGN.md 3).
    TimestepFeatures {
        t: TensorId,
        half: usize,
        scale: f64,
    },
    /// 2-D convolution of `x` `[Cin, H, W]` with `w` `[Cout, Cin, k, k]`, `bias` `[Cout]`, zero padding
    /// `pad` on every side (diffusers' downsampler pads (0,1,0,1) instead: `pad_bottom_right_only`).
    Conv2d {
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
        stride: usize,
        pad: usize,
        pad_bottom_right_only: bool,
    },
    /// GroupNorm over `[C, H, W]`: `groups` groups of C/groups channels, affine `weight`, `bias` `[C]`.
    GroupNorm {
        x: TensorId,
        weight: TensorId,
        bias: TensorId,
        groups: usize,
        eps: f32,
    },
    /// Nearest-neighbour x2 upsampling of `[C, H, W]` -> `[C, 2H, 2W]`.
    Upsample2x { x: TensorId },
    /// `[A, B]` -> `[B, A]` (image `[C, H*W]` <-> tokens `[H*W, C]`).
    Transpose { x: TensorId },
    /// The same data under another shape of equal element count (no copy needed).
    Reshape { x: TensorId, shape: Vec<usize> },
    /// `out[i] = x[rows[i]]`: rows of `x` `[N, C]` picked by a build-time index list (each `< N`) ->
    /// `[rows.len(), C]`. The vision tower's window reordering and its inverse.
    GatherRows { x: TensorId, rows: Vec<usize> },
    /// Bidirectional softmax attention restricted to blocks (flash-attention's `cu_seqlens`): the tokens
    /// are consecutive runs of `blocks[b]` rows (summing to N; empty runs allowed) and each attends only
    /// to the keys of its own run. q `[N, heads*head_dim]`, k / v `[N, kv_heads*head_dim]`, GQA as in
    /// `Attention`, scores `q.k * scale`, softmax in f32. -> `[N, heads*head_dim]`. The vision tower's
    /// window attention (one block per window) and full attention (one block per image).
    BlockAttention {
        q: TensorId,
        k: TensorId,
        v: TensorId,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f32,
        blocks: Vec<usize>,
    },
}

impl Op {
    /// Every tensor the op reads, in a fixed order.
    pub fn inputs(&self) -> Vec<TensorId> {
        use Op::*;
        match self {
            Embed { table, ids } => vec![*table, *ids],
            RmsNorm { x, weight, .. } => std::iter::once(*x).chain(*weight).collect(),
            LayerNorm { x, .. }
            | Affine { x, .. }
            | Silu { x }
            | Gelu { x }
            | SliceCols { x, .. }
            | SliceRows { x, .. } => vec![*x],
            Patchify { x, .. }
            | Unpatchify { x, .. }
            | Upsample2x { x }
            | Transpose { x }
            | Reshape { x, .. }
            | GatherRows { x, .. } => vec![*x],
            Linear { x, w, bias } => [*x, *w].into_iter().chain(*bias).collect(),
            Add { a, b } => vec![*a, *b],
            Modulate { x, scale } => vec![*x, *scale],
            GateResidual { x, gate, y } => vec![*x, *gate, *y],
            SwiGlu { gate, up } => vec![*gate, *up],
            Rope { x, positions, .. } => vec![*x, *positions],
            Attention { q, segments, .. } => std::iter::once(*q)
                .chain(
                    segments
                        .iter()
                        .flat_map(|s| [s.k, s.v].into_iter().chain(s.len)),
                )
                .collect(),
            ConcatRows { parts } => parts.clone(),
            TimestepFeatures { t, .. } => vec![*t],
            Conv2d { x, w, bias, .. } => [*x, *w].into_iter().chain(*bias).collect(),
            GroupNorm {
                x, weight, bias, ..
            } => vec![*x, *weight, *bias],
            BlockAttention { q, k, v, .. } => vec![*q, *k, *v],
        }
    }

    /// A short name for traces and errors.
    pub fn name(&self) -> &'static str {
        use Op::*;
        match self {
            Embed { .. } => "embed",
            RmsNorm { .. } => "rmsnorm",
            LayerNorm { .. } => "layernorm",
            Linear { .. } => "linear",
            Add { .. } => "add",
            Modulate { .. } => "modulate",
            GateResidual { .. } => "gate_residual",
            Affine { .. } => "affine",
            Silu { .. } => "silu",
            Gelu { .. } => "gelu",
            SwiGlu { .. } => "swiglu",
            Rope { .. } => "rope",
            Attention { .. } => "attention",
            SliceCols { .. } => "slice_cols",
            SliceRows { .. } => "slice_rows",
            ConcatRows { .. } => "concat_rows",
            Patchify { .. } => "patchify",
            Unpatchify { .. } => "unpatchify",
            TimestepFeatures { .. } => "timestep_features",
            Conv2d { .. } => "conv2d",
            GroupNorm { .. } => "group_norm",
            Upsample2x { .. } => "upsample2x",
            Transpose { .. } => "transpose",
            Reshape { .. } => "reshape",
            GatherRows { .. } => "gather_rows",
            BlockAttention { .. } => "block_attention",
        }
    }
}
