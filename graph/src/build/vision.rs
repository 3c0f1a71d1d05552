//! The Qwen2.5-VL vision tower (DESIGN.md 2; HF `Qwen2_5_VisionTransformerPretrainedModel`) and an und
//! prefill whose image-pad tokens are replaced by its output.
//!
//! Token order follows HF exactly. The processor emits each image's patches merge-block-major (every
//! `m x m` block of patches consecutive, blocks row-major); the tower embeds them, reorders whole merge
//! blocks into window order (`window_order`), runs its blocks (window attention = attention within each
//! window's run of rows, full attention = within each image), merges every `m*m` consecutive rows and
//! restores the processor's block order. The host-side helpers here compute what depends on the image
//! grids only: the window order, the rotary positions and the und M-RoPE positions (HF `get_rope_index`).

use super::und::und_prefill_spliced;
use super::UndPrefillSpec;
use crate::op::{Op, RopeKind};
use crate::{DataType, Graph, GraphError, TensorId};
use hbridge_loader::config::{UndConfig, VisionConfig};
use hbridge_loader::{Part, UndNames};

/// Graph input: the processor's flattened patches `[N, C*T*p*p]`, features `(c, t, ph, pw)`.
pub const VISION_PIXELS: &str = "vision.pixel_values";
/// Graph input: the rotary positions `[2, N]` (rows h, w) in window order ([`vision_positions`]).
pub const VISION_POSITIONS: &str = "vision.positions";
/// Graph output: the merged image tokens `[N / m^2, out_hidden_size]`, images concatenated.
pub const VISION_EMBEDS: &str = "vision.embeds";

/// HF's fixed vision constants (not in `vision_config`): block and merger RMSNorm eps, rotary theta.
const VISION_RMS_EPS: f32 = 1e-6;
const VISION_ROPE_THETA: f64 = 10000.0;

/// One image's patch grid (HF `image_grid_thw`): `t` temporal patches (1 for a still image), `h x w`
/// spatial patches, both multiples of the merge size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VisionGrid {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

impl VisionGrid {
    pub fn patches(&self) -> usize {
        self.t * self.h * self.w
    }

    /// Image tokens after the merger: one per `merge x merge` block of patches.
    pub fn merged_tokens(&self, merge: usize) -> usize {
        self.t * (self.h / merge) * (self.w / merge)
    }
}

/// Where an image's tokens sit in an und context: `start` is the index of its first image-pad token;
/// the next `grid.merged_tokens(m)` tokens are its pads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSpan {
    pub start: usize,
    pub grid: VisionGrid,
}

fn req(msg: String) -> GraphError {
    GraphError::Request(msg)
}

/// Checks the grids against the tower's config: non-empty, multiples of the merge size.
fn check_grids(vc: &VisionConfig, grids: &[VisionGrid]) -> Result<(), GraphError> {
    let m = vc.spatial_merge_size;
    if grids.is_empty() {
        return Err(req("the vision tower needs at least one image".into()));
    }
    if m == 0 || vc.window_size / m / vc.patch_size.max(1) == 0 {
        return Err(req(format!(
            "vision_config: window_size {} is smaller than spatial_merge_size {m} x patch_size {}",
            vc.window_size, vc.patch_size
        )));
    }
    for (i, g) in grids.iter().enumerate() {
        if g.t == 0 || g.h == 0 || g.w == 0 || g.h % m != 0 || g.w % m != 0 {
            return Err(req(format!(
                "image {i}: patch grid {}x{}x{} must be non-empty with h and w multiples of the merge size {m}",
                g.t, g.h, g.w
            )));
        }
    }
    Ok(())
}

/// HF `get_vision_window_index`: the merge blocks of all images in window order (indices into the
/// processor's block order), and the length in patches of every window (empty windows of the padding
/// included; they attend to nothing and cost nothing).
pub fn window_order(vc: &VisionConfig, grids: &[VisionGrid]) -> (Vec<usize>, Vec<usize>) {
    let m = vc.spatial_merge_size;
    let unit = m * m;
    let win = vc.window_size / m / vc.patch_size;
    let mut order = Vec::new();
    let mut windows = Vec::new();
    let mut base = 0;
    for g in grids {
        let (lh, lw) = (g.h / m, g.w / m);
        // HF pads by `win - n % win`, a whole empty window row / column when n is a multiple of win.
        let nwh = (lh + win - lh % win) / win;
        let nww = (lw + win - lw % win) / win;
        for t in 0..g.t {
            for wy in 0..nwh {
                for wx in 0..nww {
                    let before = order.len();
                    for y in wy * win..((wy + 1) * win).min(lh) {
                        for x in wx * win..((wx + 1) * win).min(lw) {
                            order.push(base + (t * lh + y) * lw + x);
                        }
                    }
                    windows.push((order.len() - before) * unit);
                }
            }
        }
        base += g.t * lh * lw;
    }
    (order, windows)
}

/// The rotary positions `[2, N]` (row 0: patch row h, row 1: patch column w within its image) of every
/// patch, in window order: the `vision.positions` input of the tower's graph.
pub fn vision_positions(vc: &VisionConfig, grids: &[VisionGrid]) -> Vec<i32> {
    let m = vc.spatial_merge_size;
    // Processor (merge-block-major) order first, as HF's `get_vision_position_ids`.
    let mut hw = Vec::new();
    for g in grids {
        for _ in 0..g.t {
            for by in 0..g.h / m {
                for bx in 0..g.w / m {
                    for dy in 0..m {
                        for dx in 0..m {
                            hw.push(((by * m + dy) as i32, (bx * m + dx) as i32));
                        }
                    }
                }
            }
        }
    }
    let (order, _) = window_order(vc, grids);
    let unit = m * m;
    let n = hw.len();
    let mut out = vec![0i32; 2 * n];
    for (i, &b) in order.iter().enumerate() {
        for j in 0..unit {
            let (h, w) = hw[b * unit + j];
            out[i * unit + j] = h;
            out[n + i * unit + j] = w;
        }
    }
    out
}

struct Tower<'a> {
    g: &'a mut Graph,
    vc: &'a VisionConfig,
    names: &'a UndNames,
}

impl Tower<'_> {
    fn w(&mut self, name: &str, shape: &[usize]) -> TensorId {
        self.g.weight(Part::Und, self.names.visual(name), shape)
    }

    fn linear(
        &mut self,
        x: TensorId,
        name: &str,
        out: usize,
        inp: usize,
        label: String,
    ) -> Result<TensorId, GraphError> {
        let w = self.w(&format!("{name}.weight"), &[out, inp]);
        let b = self.w(&format!("{name}.bias"), &[out]);
        self.g.push(
            Op::Linear {
                x,
                w,
                bias: Some(b),
            },
            label,
        )
    }

    fn rmsnorm(&mut self, x: TensorId, name: &str, label: String) -> Result<TensorId, GraphError> {
        let d = self.vc.hidden_size;
        let w = self.w(name, &[d]);
        self.g.push(
            Op::RmsNorm {
                x,
                weight: Some(w),
                dim: d,
                eps: VISION_RMS_EPS,
            },
            label,
        )
    }

    /// One vision block: `x + proj(attn(norm1 x))`, then `x + mlp(norm2 x)` (gated SiLU, with biases).
    fn block(
        &mut self,
        i: usize,
        x: TensorId,
        pos: TensorId,
        blocks: Vec<usize>,
    ) -> Result<TensorId, GraphError> {
        let vc = self.vc;
        let (d, heads) = (vc.hidden_size, vc.num_heads);
        let hd = d / heads;
        let p = format!("blocks.{i}.");
        let l = format!("vision.blocks.{i}.");
        let n = self.rmsnorm(x, &format!("{p}norm1.weight"), format!("{l}norm1"))?;
        let qkv = self.linear(n, &format!("{p}attn.qkv"), 3 * d, d, format!("{l}qkv"))?;
        // qkv rows are (3, heads, head_dim): q, k and v are consecutive column blocks, each head-major.
        let mut parts = Vec::with_capacity(3);
        for (j, what) in ["q", "k", "v"].iter().enumerate() {
            let t = self.g.push(
                Op::SliceCols {
                    x: qkv,
                    start: j * d,
                    len: d,
                },
                format!("{l}{what}"),
            )?;
            parts.push(t);
        }
        let kind = RopeKind::Vision2d {
            theta: VISION_ROPE_THETA,
        };
        let rope = |g: &mut Graph, t: TensorId, what: &str| {
            g.push(
                Op::Rope {
                    x: t,
                    positions: pos,
                    heads,
                    head_dim: hd,
                    kind: kind.clone(),
                },
                format!("{l}{what}_rope"),
            )
        };
        let q = rope(self.g, parts[0], "q")?;
        let k = rope(self.g, parts[1], "k")?;
        let a = self.g.push(
            Op::BlockAttention {
                q,
                k,
                v: parts[2],
                heads,
                kv_heads: heads,
                head_dim: hd,
                scale: (hd as f32).powf(-0.5),
                blocks,
            },
            format!("{l}attn"),
        )?;
        let o = self.linear(a, &format!("{p}attn.proj"), d, d, format!("{l}proj"))?;
        let x = self
            .g
            .push(Op::Add { a: x, b: o }, format!("{l}attn_residual"))?;
        let m = self.rmsnorm(x, &format!("{p}norm2.weight"), format!("{l}norm2"))?;
        let inter = vc.intermediate_size;
        let gate = self.linear(
            m,
            &format!("{p}mlp.gate_proj"),
            inter,
            d,
            format!("{l}gate"),
        )?;
        let up = self.linear(m, &format!("{p}mlp.up_proj"), inter, d, format!("{l}up"))?;
        let s = self.g.push(Op::SwiGlu { gate, up }, format!("{l}swiglu"))?;
        let down = self.linear(
            s,
            &format!("{p}mlp.down_proj"),
            d,
            inter,
            format!("{l}down"),
        )?;
        self.g
            .push(Op::Add { a: x, b: down }, format!("vision.hs.{}", i + 1))
    }
}

/// Adds the vision tower to `g` (inputs `vision.pixel_values`, `vision.positions`) and returns its
/// output `[sum merged tokens, out_hidden_size]` in the processor's order, images concatenated.
fn add_tower(
    g: &mut Graph,
    vc: &VisionConfig,
    names: &UndNames,
    grids: &[VisionGrid],
) -> Result<TensorId, GraphError> {
    check_grids(vc, grids)?;
    if vc.num_heads == 0 || !vc.hidden_size.is_multiple_of(vc.num_heads) {
        return Err(req(format!(
            "vision_config: hidden_size {} is not divisible by num_heads {}",
            vc.hidden_size, vc.num_heads
        )));
    }
    let (d, m) = (vc.hidden_size, vc.spatial_merge_size);
    let unit = m * m;
    let n: usize = grids.iter().map(VisionGrid::patches).sum();
    let (c, t, p) = (vc.in_channels, vc.temporal_patch_size, vc.patch_size);
    let feat = c * t * p * p;
    let pixels = g.input(VISION_PIXELS, &[n, feat], DataType::F32);
    let pos = g.input(VISION_POSITIONS, &[2, n], DataType::I32);

    let mut tw = Tower { g, vc, names };
    // Conv3d with kernel = stride = (T, p, p) over one patch is a linear map of the flattened patch.
    let w5 = tw.w("patch_embed.proj.weight", &[d, c, t, p, p]);
    let w = tw.g.push(
        Op::Reshape {
            x: w5,
            shape: vec![d, feat],
        },
        "vision.patch_embed.weight",
    )?;
    let x = tw.g.push(
        Op::Linear {
            x: pixels,
            w,
            bias: None,
        },
        "vision.patch_embed",
    )?;
    let (order, windows) = window_order(vc, grids);
    let rows: Vec<usize> = order
        .iter()
        .flat_map(|&b| b * unit..(b + 1) * unit)
        .collect();
    let mut x = tw.g.push(Op::GatherRows { x, rows }, "vision.hs.0")?;
    // Full attention stays within each image (and each temporal patch), as HF's `cu_seqlens`.
    let full: Vec<usize> = grids
        .iter()
        .flat_map(|g| std::iter::repeat_n(g.h * g.w, g.t))
        .collect();
    for i in 0..vc.depth {
        let blocks = if vc.fullatt_block_indexes.contains(&i) {
            full.clone()
        } else {
            windows.clone()
        };
        x = tw.block(i, x, pos, blocks)?;
    }
    let x = tw.rmsnorm(x, "merger.ln_q.weight", "vision.merger.ln_q".into())?;
    let merged = tw.g.push(
        Op::Reshape {
            x,
            shape: vec![n / unit, unit * d],
        },
        "vision.merger.grouped",
    )?;
    let h = tw.linear(
        merged,
        "merger.mlp.0",
        unit * d,
        unit * d,
        "vision.merger.fc1".into(),
    )?;
    let h = tw.g.push(Op::Gelu { x: h }, "vision.merger.gelu")?;
    let out = tw.linear(
        h,
        "merger.mlp.2",
        vc.out_hidden_size,
        unit * d,
        "vision.merger.fc2".into(),
    )?;
    // Back to the processor's block order: the inverse permutation of `order`.
    let mut inverse = vec![0; order.len()];
    for (i, &b) in order.iter().enumerate() {
        inverse[b] = i;
    }
    tw.g.push(
        Op::GatherRows {
            x: out,
            rows: inverse,
        },
        VISION_EMBEDS,
    )
}

/// The vision tower alone. Inputs `vision.pixel_values` F32 `[N, C*T*p*p]` and `vision.positions` I32
/// `[2, N]` ([`vision_positions`]); output `vision.embeds` `[sum merged tokens, out_hidden_size]`.
pub fn vision_encoder(
    c: &UndConfig,
    names: &UndNames,
    grids: &[VisionGrid],
) -> Result<Graph, GraphError> {
    let vc = vision_config(c)?;
    let mut g = Graph::default();
    let out = add_tower(&mut g, vc, names, grids)?;
    g.mark_output(VISION_EMBEDS, out);
    Ok(g)
}

fn vision_config(c: &UndConfig) -> Result<&VisionConfig, GraphError> {
    c.vision.as_ref().ok_or_else(|| {
        req("image inputs need a vision tower; the und config has no vision_config".into())
    })
}

/// Und prefill over a context holding images: as [`super::und_prefill`] (same inputs, outputs and
/// pruning) plus the tower's inputs `vision.pixel_values` / `vision.positions` and the output
/// `vision.embeds`. The rows of each image's pads (`images`, sorted, as [`image_context`] returns them)
/// are replaced by that image's tokens, HF's `masked_scatter`.
pub fn und_prefill_with_images(
    c: &UndConfig,
    names: &UndNames,
    spec: &UndPrefillSpec,
    images: &[ImageSpan],
) -> Result<Graph, GraphError> {
    spliced_prefill(c, names, spec, images, true)
}

/// [`und_prefill_with_images`] with the images' tokens given as the input `vision.embeds`
/// `[sum merged tokens, hidden]` (from [`vision_encoder`]) instead of running the tower: several
/// contexts holding the same images (an edit's guidance branches) encode them once.
pub fn und_prefill_with_image_embeds(
    c: &UndConfig,
    names: &UndNames,
    spec: &UndPrefillSpec,
    images: &[ImageSpan],
) -> Result<Graph, GraphError> {
    spliced_prefill(c, names, spec, images, false)
}

/// The two prefills over a context with images; `tower`: run the vision tower in the graph (else its
/// output is the input `vision.embeds`).
fn spliced_prefill(
    c: &UndConfig,
    names: &UndNames,
    spec: &UndPrefillSpec,
    images: &[ImageSpan],
    tower: bool,
) -> Result<Graph, GraphError> {
    let vc = vision_config(c)?;
    if images.is_empty() {
        return super::und_prefill(c, names, spec);
    }
    if vc.out_hidden_size != c.hidden_size {
        return Err(req(format!(
            "vision_config.out_hidden_size {} differs from the und hidden size {}",
            vc.out_hidden_size, c.hidden_size
        )));
    }
    let m = vc.spatial_merge_size;
    let mut end = 0;
    for (i, s) in images.iter().enumerate() {
        let n = s.grid.merged_tokens(m);
        if s.start < end || s.start + n > spec.len {
            return Err(req(format!(
                "image {i}: tokens {}..{} overlap the previous image or pass the context of {} tokens",
                s.start,
                s.start + n,
                spec.len
            )));
        }
        end = s.start + n;
    }
    let grids: Vec<VisionGrid> = images.iter().map(|s| s.grid).collect();
    let tokens: usize = grids.iter().map(|g| g.merged_tokens(m)).sum();
    und_prefill_spliced(c, names, spec, |g, text| {
        let img = if tower {
            let img = add_tower(g, vc, names, &grids)?;
            g.mark_output(VISION_EMBEDS, img);
            img
        } else {
            g.input(VISION_EMBEDS, &[tokens, c.hidden_size], DataType::F32)
        };
        let mut parts = Vec::new();
        let (mut at, mut row) = (0, 0);
        let slice = |g: &mut Graph, x: TensorId, start: usize, len: usize, what: &str| {
            g.push(
                Op::SliceRows { x, start, len },
                format!("und.splice.{what}"),
            )
        };
        for s in images {
            let n = s.grid.merged_tokens(m);
            if s.start > at {
                parts.push(slice(g, text, at, s.start - at, "text")?);
            }
            parts.push(slice(g, img, row, n, "image")?);
            at = s.start + n;
            row += n;
        }
        if at < spec.len {
            parts.push(slice(g, text, at, spec.len - at, "text")?);
        }
        g.push(Op::ConcatRows { parts }, "und.hs.0")
    })
}

/// HF `get_rope_index` for one context: the M-RoPE positions `[3, L]` (rows t, h, w) of `ids`, and
/// where each image's tokens are. Every maximal run of `image_token` is one image, taking the next grid
/// of `grids` in order; its length must be that grid's merged token count. Text token i after position
/// `p` gets `(p, p, p)`; an image starting at `s` gets `(s + frame, s + row, s + col)` over its merged
/// grid, and the text after it starts at `s + max(rows, cols)`.
pub fn image_context(
    ids: &[i32],
    image_token: i32,
    grids: &[VisionGrid],
    merge: usize,
) -> Result<(Vec<i32>, Vec<ImageSpan>), GraphError> {
    let len = ids.len();
    let mut rows: [Vec<i32>; 3] = [
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
    ];
    let mut spans = Vec::new();
    let mut next = grids.iter();
    let mut pos = 0usize;
    let mut i = 0;
    while i < len {
        if ids[i] != image_token {
            rows.iter_mut().for_each(|r| r.push(pos as i32));
            pos += 1;
            i += 1;
            continue;
        }
        let run = ids[i..].iter().take_while(|&&t| t == image_token).count();
        let k = spans.len();
        let grid = *next.next().ok_or_else(|| {
            req(format!(
                "the context has more image-pad runs than the {} images given",
                grids.len()
            ))
        })?;
        if merge == 0 || grid.h % merge != 0 || grid.w % merge != 0 {
            return Err(req(format!(
                "image {k}: grid {}x{} is not a multiple of the merge size {merge}",
                grid.h, grid.w
            )));
        }
        let (lt, lh, lw) = (grid.t, grid.h / merge, grid.w / merge);
        if run != lt * lh * lw {
            return Err(req(format!(
                "image {k}: {run} image-pad tokens at {i}, but its {lt}x{lh}x{lw} merged grid needs {}",
                lt * lh * lw
            )));
        }
        for f in 0..lt {
            for y in 0..lh {
                for x in 0..lw {
                    rows[0].push((pos + f) as i32);
                    rows[1].push((pos + y) as i32);
                    rows[2].push((pos + x) as i32);
                }
            }
        }
        spans.push(ImageSpan { start: i, grid });
        pos += lh.max(lw);
        i += run;
    }
    if spans.len() != grids.len() {
        return Err(req(format!(
            "{} images given, but the context has {} image-pad runs",
            grids.len(),
            spans.len()
        )));
    }
    Ok((rows.concat(), spans))
}
