//! The benchmarked ops and their hbridge-7b4b shapes (DESIGN.md sections 2, 3, 5, 7), with the work each
//! must do: FLOPs for attention, the fewest bytes for the memory-bound kernels.

/// One benchmark case.
#[derive(Debug, Clone)]
pub struct Case {
    pub group: &'static str,
    pub name: &'static str,
    pub op: Op,
}

/// The flash attention version a GPU attention case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flash {
    /// What `attention()` chooses (v1 unless `HBRIDGE_ATTENTION` says otherwise).
    Default,
    /// v2: attention_sm90.cu's `attn_fwd_sm90_d*` (wgmma).
    Sm90,
    /// v3: attention_sm90.cu's `attn_fwd_sm90_pipe_d*` (the softmax under the P V MMAs).
    Sm90Pipe,
}

#[derive(Debug, Clone)]
pub enum Op {
    /// `nq` queries over `segments` (key counts), `heads`/`kv_heads`, head dim `d`.
    Attention {
        nq: usize,
        segments: Vec<usize>,
        heads: usize,
        kv_heads: usize,
        d: usize,
        causal: bool,
        /// GPU: which flash kernel version (the default choice, or one of attention_sm90.cu's).
        flash: Flash,
    },
    /// RMSNorm over `rows x dim` with weight, optionally `(1 + scale)` modulation and a residual add.
    RmsNorm {
        rows: usize,
        dim: usize,
        modulate: bool,
        residual: bool,
        /// `x + tanh(gate) * norm` (the gated epilogue the CUDA backend fuses RMSNorm + GateResidual into).
        gated: bool,
        /// GPU: cap the block-per-row grid at this many blocks (each walks several rows); GPU only.
        row_blocks: Option<usize>,
    },
    MRope {
        n: usize,
        heads: usize,
        d: usize,
    },
    Interleaved3 {
        n: usize,
        heads: usize,
        d: usize,
    },
    SwiGlu {
        n: usize,
    },
    GateResidual {
        rows: usize,
        dim: usize,
    },
    BridgeKv {
        n: usize,
        kv_heads: usize,
        d: usize,
    },
    Patchify {
        c: usize,
        h: usize,
        w: usize,
        p: usize,
    },
    GroupNorm {
        c: usize,
        hw: usize,
        groups: usize,
    },
    /// A `k x k` stride-1 convolution, `cin -> cout` channels over a `hw x hw` image, padded to keep
    /// its size (the VAE decoder's). CPU only: the CUDA backend's are im2col + cuBLASLt, no kernel of
    /// its own.
    Conv2d {
        cin: usize,
        cout: usize,
        hw: usize,
        k: usize,
    },
    /// `y [n, out] = x [n, inp] @ w [out, inp]^T + bias`, few rows: the decode step's linears, through
    /// gemv.cu in the given form. GPU only.
    Gemv {
        n: usize,
        inp: usize,
        out: usize,
        form: GemvForm,
    },
}

/// How a [`Op::Gemv`] case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvForm {
    /// One product, gemv.cu.
    Single,
    /// One product through cuBLASLt, for comparison.
    CublasLt,
    /// Three products of one x (`out` and two of `kv` features: q, k and v) in one grouped launch.
    Qkv { kv: usize },
    /// Gate and up (`out` features each) with the SwiGLU in the epilogue.
    SwiGlu,
}

const BF16: u64 = 2;

impl Op {
    /// FLOPs (attention) or bytes (everything else) one run must do/move at the least.
    pub fn work(&self) -> (Work, u64) {
        match *self {
            Op::Attention {
                nq,
                ref segments,
                heads,
                d,
                causal,
                ..
            } => {
                let nk: usize = segments.iter().sum();
                // QK^T and PV: 2 * 2 * nq * nk * d per head; a causal square mask halves it.
                let full = 4.0 * nq as f64 * nk as f64 * d as f64 * heads as f64;
                let flops = if causal && nq == nk { full / 2.0 } else { full };
                (Work::Flops, flops as u64)
            }
            Op::RmsNorm {
                rows,
                dim,
                modulate,
                residual,
                gated,
                ..
            } => {
                let (r, d) = (rows as u64, dim as u64);
                let streams = 2 + if residual { 2 } else { 0 } + u64::from(gated);
                let rows_of_params = 1 + u64::from(modulate) + u64::from(gated);
                (Work::Bytes, BF16 * (streams * r * d + rows_of_params * d))
            }
            Op::MRope { n, heads, d } | Op::Interleaved3 { n, heads, d } => (
                Work::Bytes,
                BF16 * 2 * (n * heads * d) as u64 + 4 * 3 * n as u64,
            ),
            Op::SwiGlu { n } => (Work::Bytes, BF16 * 3 * n as u64),
            Op::GateResidual { rows, dim } => (Work::Bytes, BF16 * (3 * rows * dim + dim) as u64),
            Op::BridgeKv { n, kv_heads, d } => (
                Work::Bytes,
                BF16 * 4 * (n * kv_heads * d) as u64 + 12 * n as u64,
            ),
            Op::Patchify { c, h, w, .. } => (Work::Bytes, BF16 * 2 * (c * h * w) as u64),
            Op::GroupNorm { c, hw, .. } => (Work::Bytes, BF16 * 2 * (c * hw) as u64 + 4 * c as u64),
            Op::Conv2d { cin, cout, hw, k } => {
                (Work::Flops, 2 * (cin * cout * k * k * hw * hw) as u64)
            }
            // The weights, read once, are the floor; x, bias and y are noise at decode shapes.
            Op::Gemv { n, inp, out, form } => {
                // Output features across the launch's weights, and the outputs it writes.
                let (rows, written) = match form {
                    GemvForm::Single | GemvForm::CublasLt => (out, out),
                    GemvForm::Qkv { kv } => (out + 2 * kv, out + 2 * kv),
                    GemvForm::SwiGlu => (2 * out, out),
                };
                (
                    Work::Bytes,
                    BF16 * (rows * inp + n * (inp + 2 * written)) as u64,
                )
            }
        }
    }
}

impl Case {
    /// A GPU kernel version the CPU has no counterpart of: GPU only. (The VAE's wide-head attention
    /// took minutes per CPU iteration through the GEMM path; the flash path takes seconds.)
    pub fn gpu_only(&self) -> bool {
        matches!(self.op, Op::Attention { flash, .. } if flash != Flash::Default)
            || matches!(self.op, Op::Gemv { .. })
            || matches!(
                self.op,
                Op::RmsNorm {
                    row_blocks: Some(_),
                    ..
                }
            )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Flops,
    Bytes,
}

pub fn all() -> Vec<Case> {
    let mut cases = base();
    // The three long flash shapes again on v2 and v3, named apart so criterion reports them side by side.
    let wgmma_names = [
        (
            "und_prefill_512_causal_d128_gqa7",
            "und_prefill_512_causal_d128_gqa7_sm90",
            "und_prefill_512_causal_d128_gqa7_sm90pipe",
        ),
        (
            "gen_self_4112_d120_gqa3",
            "gen_self_4112_d120_gqa3_sm90",
            "gen_self_4112_d120_gqa3_sm90pipe",
        ),
        (
            "bridge_4112q_512und_4112gen_d128_gqa7",
            "bridge_4112q_512und_4112gen_d128_gqa7_sm90",
            "bridge_4112q_512und_4112gen_d128_gqa7_sm90pipe",
        ),
    ];
    let extra: Vec<Case> = cases
        .iter()
        .flat_map(|c| {
            let names = wgmma_names.iter().find(|(n, _, _)| *n == c.name);
            names.into_iter().flat_map(move |(_, v2, v3)| {
                [(*v2, Flash::Sm90), (*v3, Flash::Sm90Pipe)].map(|(name, version)| {
                    let mut c = c.clone();
                    c.name = name;
                    if let Op::Attention { flash, .. } = &mut c.op {
                        *flash = version;
                    }
                    c
                })
            })
        })
        .collect();
    cases.extend(extra);
    // The gen-shape RMSNorm with fewer, longer-lived blocks (H100: 132 SMs x 4, 8, 16 blocks), beside
    // the default block per row, to measure whether block turnover holds it under the copy bandwidth.
    for (name, blocks) in [
        ("gen_modulated_8224x2520_grid528", 528),
        ("gen_modulated_8224x2520_grid1056", 1056),
        ("gen_modulated_8224x2520_grid2112", 2112),
    ] {
        cases.push(Case {
            group: "rmsnorm",
            name,
            op: Op::RmsNorm {
                rows: 2 * (16 + 64 * 64),
                dim: 2520,
                modulate: true,
                residual: false,
                gated: false,
                row_blocks: Some(blocks),
            },
        });
    }
    cases
}

fn base() -> Vec<Case> {
    let gen_tokens = 16 + 64 * 64; // SRT + a 1024x1024 image's latent tokens (128x128 latent, patch 2)
    let gemv = |name: &'static str, inp: usize, out: usize, form: GemvForm| Case {
        group: "gemv",
        name,
        op: Op::Gemv {
            n: 1,
            inp,
            out,
            form,
        },
    };
    vec![
        // The und decode step's largest linears at batch 1: the FFN down projection and the lm_head;
        // then its q/k/v and gate/up/SwiGLU as the fused launches run them.
        gemv("und_down_18944_to_3584", 18944, 3584, GemvForm::Single),
        gemv(
            "und_down_18944_to_3584_cublaslt",
            18944,
            3584,
            GemvForm::CublasLt,
        ),
        gemv("lm_head_3584_to_152064", 3584, 152064, GemvForm::Single),
        gemv(
            "lm_head_3584_to_152064_cublaslt",
            3584,
            152064,
            GemvForm::CublasLt,
        ),
        gemv(
            "und_qkv_3584_to_3584_512_512",
            3584,
            3584,
            GemvForm::Qkv { kv: 512 },
        ),
        gemv(
            "und_gate_up_swiglu_3584_to_18944",
            3584,
            18944,
            GemvForm::SwiGlu,
        ),
        Case {
            group: "attention",
            name: "und_prefill_512_causal_d128_gqa7",
            op: Op::Attention {
                nq: 512,
                segments: vec![512],
                heads: 28,
                kv_heads: 4,
                d: 128,
                causal: true,
                flash: Flash::Default,
            },
        },
        Case {
            group: "attention",
            name: "gen_self_4112_d120_gqa3",
            op: Op::Attention {
                nq: gen_tokens,
                segments: vec![gen_tokens],
                heads: 21,
                kv_heads: 7,
                d: 120,
                causal: false,
                flash: Flash::Default,
            },
        },
        Case {
            group: "attention",
            name: "bridge_4112q_512und_4112gen_d128_gqa7",
            op: Op::Attention {
                nq: gen_tokens,
                segments: vec![512, gen_tokens],
                heads: 28,
                kv_heads: 4,
                d: 128,
                causal: false,
                flash: Flash::Default,
            },
        },
        Case {
            group: "attention",
            name: "decode_1q_4096kv_d128_gqa7",
            op: Op::Attention {
                nq: 1,
                segments: vec![4096],
                heads: 28,
                kv_heads: 4,
                d: 128,
                causal: true,
                flash: Flash::Default,
            },
        },
        // The VAE decoder's mid-block at 1024x1024: one 512-wide head over the 128x128 latent, the
        // wide-head path (cuBLASLt scores, softmax.cu, cuBLASLt P V).
        Case {
            group: "attention",
            name: "vae_mid_16384_d512_wide",
            op: Op::Attention {
                nq: 128 * 128,
                segments: vec![128 * 128],
                heads: 1,
                kv_heads: 1,
                d: 512,
                causal: false,
                flash: Flash::Default,
            },
        },
        Case {
            group: "rmsnorm",
            name: "gen_modulated_8224x2520",
            op: Op::RmsNorm {
                rows: 2 * gen_tokens,
                dim: 2520,
                modulate: true,
                residual: false,
                gated: false,
                row_blocks: None,
            },
        },
        Case {
            group: "rmsnorm",
            name: "gen_gated_residual_4112x2520",
            op: Op::RmsNorm {
                rows: gen_tokens,
                dim: 2520,
                modulate: false,
                residual: false,
                gated: true,
                row_blocks: None,
            },
        },
        Case {
            group: "rmsnorm",
            name: "und_residual_512x3584",
            op: Op::RmsNorm {
                rows: 512,
                dim: 3584,
                modulate: false,
                residual: true,
                gated: false,
                row_blocks: None,
            },
        },
        Case {
            group: "rmsnorm",
            name: "gen_qk_norm_4112x21_heads_d120",
            op: Op::RmsNorm {
                rows: gen_tokens * 21,
                dim: 120,
                modulate: false,
                residual: false,
                gated: false,
                row_blocks: None,
            },
        },
        Case {
            group: "rope",
            name: "und_mrope_512x28x128",
            op: Op::MRope {
                n: 512,
                heads: 28,
                d: 128,
            },
        },
        Case {
            group: "rope",
            name: "gen_interleaved3_4112x21x120",
            op: Op::Interleaved3 {
                n: gen_tokens,
                heads: 21,
                d: 120,
            },
        },
        Case {
            group: "bridge",
            name: "kv_write_4112x4x128",
            op: Op::BridgeKv {
                n: gen_tokens,
                kv_heads: 4,
                d: 128,
            },
        },
        Case {
            group: "elementwise",
            name: "swiglu_4112x10240",
            op: Op::SwiGlu {
                n: gen_tokens * 10240,
            },
        },
        Case {
            group: "elementwise",
            name: "gate_residual_4112x2520",
            op: Op::GateResidual {
                rows: gen_tokens,
                dim: 2520,
            },
        },
        Case {
            group: "layout",
            name: "patchify_16x128x128_p2",
            op: Op::Patchify {
                c: 16,
                h: 128,
                w: 128,
                p: 2,
            },
        },
        Case {
            group: "norm",
            name: "group_norm_128x1024x1024_g32",
            op: Op::GroupNorm {
                c: 128,
                hw: 1024 * 1024,
                groups: 32,
            },
        },
        // The 7b4b VAE decoder's 3x3 convolutions at a 1024x1024 image: its widest (the mid block's
        // channels over the latent's 128x128) and its largest image (the last up block).
        Case {
            group: "conv",
            name: "conv3x3_512x128x128",
            op: Op::Conv2d {
                cin: 512,
                cout: 512,
                hw: 128,
                k: 3,
            },
        },
        Case {
            group: "conv",
            name: "conv3x3_128x1024x1024",
            op: Op::Conv2d {
                cin: 128,
                cout: 128,
                hw: 1024,
                k: 3,
            },
        },
    ]
}
