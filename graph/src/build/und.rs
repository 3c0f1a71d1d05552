//! Und expert (Qwen2.5-VL text decoder) graphs: prefill over a context, and one decode step against a
//! K/V cache. Outputs per FIXTURES.md: `und.hs.{i}`, `und.k.{u}`, `und.v.{u}`, `und.logits`.

use super::names;
use crate::op::{KvSegment, Op, RopeKind};
use crate::{DataType, Graph, GraphError, TensorId};
use hbridge_loader::config::UndConfig;
use hbridge_loader::{Part, UndNames};

/// What a prefill must produce.
#[derive(Debug, Clone, PartialEq)]
pub struct UndPrefillSpec {
    pub len: usize,
    /// Layers whose K (post-RoPE) and V are outputs: the bridge's und layers, or every layer for a chat
    /// cache.
    pub kv_layers: Vec<usize>,
    /// Logits of every position (`und.logits`); false for an image-only request.
    pub logits: bool,
    /// `und.hs.{i}` for every layer (traces and fixtures).
    pub hidden_states: bool,
    /// `und.final_hidden`: the post-norm last hidden states (the omnigen2 topology's caption features).
    pub final_hidden: bool,
    /// `Some(capacity)`: the `kv_layers`' K/V are written into the K/V cache states
    /// `und.cache_k.{i}` / `und.cache_v.{i}` `[capacity, K*D]` from row `und.cache_len` (an I32 `[1]`
    /// input) instead of being outputs, so a chat's cache never leaves the backend.
    pub kv_cache: Option<usize>,
}

struct Ctx<'a> {
    g: Graph,
    c: &'a UndConfig,
    names: &'a UndNames,
}

impl Ctx<'_> {
    fn w(&mut self, name: &str, shape: &[usize]) -> TensorId {
        let full = if name == "lm_head.weight" && self.c.tie_word_embeddings {
            self.names.text("embed_tokens.weight")
        } else if name == "lm_head.weight" {
            name.to_string()
        } else {
            self.names.text(name)
        };
        self.g.weight(Part::Und, full, shape)
    }

    fn push(&mut self, op: Op, label: impl Into<String>) -> Result<TensorId, GraphError> {
        self.g.push(op, label)
    }

    fn rmsnorm(
        &mut self,
        x: TensorId,
        weight: &str,
        label: String,
    ) -> Result<TensorId, GraphError> {
        let h = self.c.hidden_size;
        let w = self.w(weight, &[h]);
        self.push(
            Op::RmsNorm {
                x,
                weight: Some(w),
                dim: h,
                eps: self.c.rms_norm_eps as f32,
            },
            label,
        )
    }

    fn linear(
        &mut self,
        x: TensorId,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
        label: String,
    ) -> Result<TensorId, GraphError> {
        let w = self.w(&format!("{name}.weight"), &[out, inp]);
        let b = if bias {
            Some(self.w(&format!("{name}.bias"), &[out]))
        } else {
            None
        };
        self.push(Op::Linear { x, w, bias: b }, label)
    }

    /// One decoder layer. `past` holds the cache segment (decode) prepended to this step's K/V.
    fn layer(
        &mut self,
        i: usize,
        x: TensorId,
        positions: TensorId,
        past: Option<KvSegment>,
    ) -> Result<(TensorId, TensorId, TensorId), GraphError> {
        let c = self.c;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let p = format!("layers.{i}.");
        let l = format!("und.layers.{i}.");
        let n = self.rmsnorm(
            x,
            &format!("{p}input_layernorm.weight"),
            format!("{l}input_norm"),
        )?;
        let q = self.linear(
            n,
            &format!("{p}self_attn.q_proj"),
            c.q_dim(),
            h,
            true,
            format!("{l}q"),
        )?;
        let k = self.linear(
            n,
            &format!("{p}self_attn.k_proj"),
            c.kv_dim(),
            h,
            true,
            format!("{l}k_proj"),
        )?;
        let v = self.linear(
            n,
            &format!("{p}self_attn.v_proj"),
            c.kv_dim(),
            h,
            true,
            format!("{l}v"),
        )?;
        let kind = RopeKind::Mrope {
            section: c.mrope_section,
            theta: c.rope_theta,
        };
        let q = self.push(
            Op::Rope {
                x: q,
                positions,
                heads: c.num_heads,
                head_dim: hd,
                kind: kind.clone(),
            },
            format!("{l}q_rope"),
        )?;
        let k = self.push(
            Op::Rope {
                x: k,
                positions,
                heads: c.num_kv_heads,
                head_dim: hd,
                kind,
            },
            format!("{l}k"),
        )?;
        let segments: Vec<KvSegment> = past.into_iter().chain([KvSegment::new(k, v)]).collect();
        let a = self.push(
            Op::Attention {
                q,
                segments,
                heads: c.num_heads,
                kv_heads: c.num_kv_heads,
                head_dim: hd,
                causal: true,
                scale: (hd as f32).powf(-0.5),
            },
            format!("{l}attn"),
        )?;
        let o = self.linear(
            a,
            &format!("{p}self_attn.o_proj"),
            h,
            c.q_dim(),
            false,
            format!("{l}o"),
        )?;
        let x = self.push(Op::Add { a: x, b: o }, format!("{l}attn_residual"))?;
        let m = self.rmsnorm(
            x,
            &format!("{p}post_attention_layernorm.weight"),
            format!("{l}post_norm"),
        )?;
        let gate = self.linear(
            m,
            &format!("{p}mlp.gate_proj"),
            c.intermediate_size,
            h,
            false,
            format!("{l}gate"),
        )?;
        let up = self.linear(
            m,
            &format!("{p}mlp.up_proj"),
            c.intermediate_size,
            h,
            false,
            format!("{l}up"),
        )?;
        let s = self.push(Op::SwiGlu { gate, up }, format!("{l}swiglu"))?;
        let d = self.linear(
            s,
            &format!("{p}mlp.down_proj"),
            h,
            c.intermediate_size,
            false,
            format!("{l}down"),
        )?;
        let x = self.push(Op::Add { a: x, b: d }, format!("und.hs.{}", i + 1))?;
        Ok((x, k, v))
    }

    /// Final norm and lm_head, always built; only what is marked an output survives pruning.
    fn head(&mut self, x: TensorId, logits: bool, final_hidden: bool) -> Result<(), GraphError> {
        let c = self.c;
        let normed = self.rmsnorm(x, "norm.weight", "und.final_hidden".into())?;
        if final_hidden {
            self.g.mark_output("und.final_hidden", normed);
        }
        let out = self.linear(
            normed,
            "lm_head",
            c.vocab_size,
            c.hidden_size,
            false,
            "und.logits".into(),
        )?;
        if logits {
            self.g.mark_output("und.logits", out);
        }
        Ok(())
    }
}

/// Prefill of `spec.len` context tokens. Inputs: `und.input_ids` I32 `[L]`, `und.position_ids` I32
/// `[3, L]`. The whole model is built, then pruned to what the requested outputs need (an image-only
/// request keeps no layer after the last bridged one and no lm_head).
pub fn und_prefill(
    c: &UndConfig,
    names: &UndNames,
    spec: &UndPrefillSpec,
) -> Result<Graph, GraphError> {
    und_prefill_spliced(c, names, spec, |_, x| Ok(x))
}

/// `und_prefill` with the token embeddings `[L, D_u]` passed through `splice` before layer 0: the vision
/// tower's image tokens replace the image pads there (`build::vision`).
pub(crate) fn und_prefill_spliced(
    c: &UndConfig,
    names: &UndNames,
    spec: &UndPrefillSpec,
    splice: impl FnOnce(&mut Graph, TensorId) -> Result<TensorId, GraphError>,
) -> Result<Graph, GraphError> {
    if spec.len == 0 {
        return Err(GraphError::Request(
            "und prefill of an empty context".into(),
        ));
    }
    if let Some(&bad) = spec.kv_layers.iter().find(|&&u| u >= c.num_layers) {
        return Err(GraphError::Request(format!(
            "K/V of und layer {bad} requested; the und expert has {} layers",
            c.num_layers
        )));
    }
    let mut cx = Ctx {
        g: Graph::default(),
        c,
        names,
    };
    let ids = cx.g.input(names::UND_IDS, &[spec.len], DataType::I32);
    let positions =
        cx.g.input(names::UND_POSITIONS, &[3, spec.len], DataType::I32);
    let cache_len = match spec.kv_cache {
        Some(capacity) if capacity < spec.len => {
            return Err(GraphError::Request(format!(
                "a K/V cache of {capacity} rows cannot take a {}-token prefill",
                spec.len
            )))
        }
        Some(_) => Some(cx.g.input(names::UND_CACHE_LEN, &[1], DataType::I32)),
        None => None,
    };
    let table = cx.w("embed_tokens.weight", &[c.vocab_size, c.hidden_size]);
    let mut x = cx.push(Op::Embed { table, ids }, "und.hs.0")?;
    x = splice(&mut cx.g, x)?;
    if spec.hidden_states {
        cx.g.mark_output("und.hs.0", x);
    }
    for i in 0..c.num_layers {
        let (nx, k, v) = cx.layer(i, x, positions, None)?;
        x = nx;
        match (spec.kv_layers.contains(&i), spec.kv_cache.zip(cache_len)) {
            (true, Some((capacity, row))) => {
                let ck = cx.g.state(names::cache_k(i), &[capacity, c.kv_dim()]);
                let cv = cx.g.state(names::cache_v(i), &[capacity, c.kv_dim()]);
                cx.g.write_state(ck, k, row)?;
                cx.g.write_state(cv, v, row)?;
            }
            (true, None) => {
                cx.g.mark_output(names::und_k(i), k);
                cx.g.mark_output(names::und_v(i), v);
            }
            (false, _) => {}
        }
        if spec.hidden_states {
            cx.g.mark_output(format!("und.hs.{}", i + 1), x);
        }
    }
    cx.head(x, spec.logits, spec.final_hidden)?;
    Ok(crate::prune::prune(cx.g))
}

/// One decode step of a single token against a K/V cache of `capacity` rows per layer, of which the
/// first `und.cache_len` are filled. Inputs: `und.input_ids` `[1]`, `und.position_ids` `[3, 1]`,
/// `und.cache_len` I32 `[1]`; states `und.cache_k.{i}` / `und.cache_v.{i}` `[capacity, K*D]` for every
/// layer. The token's K/V are written into the cache at row `und.cache_len` (after attention has read
/// the rows before it); output: `und.logits` `[1, V]`. The graph depends only on `capacity`, so one
/// graph (and one CUDA graph capture) serves every token of a request.
pub fn und_decode_step(
    c: &UndConfig,
    names: &UndNames,
    capacity: usize,
) -> Result<Graph, GraphError> {
    und_decode_chunk(c, names, capacity, 1)
}

/// [`und_decode_step`] for `n` tokens at once (a prefill that continues a filled cache: a chat
/// session's next turn). Inputs `und.input_ids` `[n]` and `und.position_ids` `[3, n]`; token `i`
/// attends to the cache's first `und.cache_len` rows and to tokens `0..=i` (causal over the cache's
/// full rows then the chunk's); the chunk's K/V are written from row `und.cache_len`. Output:
/// `und.logits` `[1, V]` of the last token only.
pub fn und_decode_chunk(
    c: &UndConfig,
    names: &UndNames,
    capacity: usize,
    n: usize,
) -> Result<Graph, GraphError> {
    if capacity == 0 || n == 0 {
        return Err(GraphError::Request(format!(
            "a decode step needs a K/V cache of at least one row and a token; got {capacity} rows and {n} tokens"
        )));
    }
    let mut cx = Ctx {
        g: Graph::default(),
        c,
        names,
    };
    let ids = cx.g.input(names::UND_IDS, &[n], DataType::I32);
    let positions = cx.g.input(names::UND_POSITIONS, &[3, n], DataType::I32);
    let cache_len = cx.g.input(names::UND_CACHE_LEN, &[1], DataType::I32);
    let table = cx.w("embed_tokens.weight", &[c.vocab_size, c.hidden_size]);
    let mut x = cx.push(Op::Embed { table, ids }, "und.hs.0")?;
    for i in 0..c.num_layers {
        let ck = cx.g.state(names::cache_k(i), &[capacity, c.kv_dim()]);
        let cv = cx.g.state(names::cache_v(i), &[capacity, c.kv_dim()]);
        let past = KvSegment::with_len(ck, cv, cache_len);
        let (nx, k, v) = cx.layer(i, x, positions, Some(past))?;
        x = nx;
        cx.g.write_state(ck, k, cache_len)?;
        cx.g.write_state(cv, v, cache_len)?;
    }
    if n > 1 {
        // Only the last token's logits are sampled: the head runs on one row.
        x = cx.push(
            Op::SliceRows {
                x,
                start: n - 1,
                len: 1,
            },
            "und.last_token",
        )?;
    }
    cx.head(x, true, false)?;
    Ok(crate::prune::prune(cx.g))
}
