//! Each case on the GPU through its launcher, timed with CUDA events around `iters` launches that rotate
//! over several input/output sets (together larger than L2), so no iteration reads another's cached data.

use crate::cases::{Case, Flash, GemvForm, Op, Work};
use criterion::{Criterion, Throughput};
use hbridge_engine::cuda::buffer::{upload, upload_bf16, DeviceBf16};
use hbridge_engine::cuda::ops::{attention, bridge, elementwise, gemm, gemv, layout, norm, rope};
use hbridge_engine::cuda::{CudaError, CudaResult, DevPtr, Gpu};
use std::sync::Arc;
use std::time::Duration;

/// Input sets per case: H100/H200 L2 is 50 MB, so 4 sets beat it for every case of more than ~13 MB.
const SETS: usize = 4;

pub struct GpuBench {
    gpu: Arc<Gpu>,
}

/// Device buffers of one input set; kept alive while their addresses are in use.
struct Set {
    bufs: Vec<DeviceBf16>,
    ints: Vec<cudarc::driver::CudaSlice<i32>>,
    f32s: Vec<cudarc::driver::CudaSlice<f32>>,
}

fn values(n: usize, salt: u64) -> Vec<f32> {
    let mut s = salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

impl Set {
    fn bf16(&mut self, gpu: &Gpu, n: usize) -> DevPtr {
        let salt = (self.bufs.len() + 7 * self.ints.len() + 1) as u64;
        let b = upload_bf16(gpu, &values(n, salt)).expect("upload");
        let p = b.ptr(gpu);
        self.bufs.push(b);
        p
    }

    fn positions(&mut self, gpu: &Gpu, n: usize) -> DevPtr {
        let s = upload(gpu, &(0..n as i32).map(|i| i % 64).collect::<Vec<_>>()).expect("upload");
        let p = hbridge_engine::cuda::dev_ptr(&s, gpu.stream());
        self.ints.push(s);
        p
    }

    fn f32_scratch(&mut self, gpu: &Gpu, n: usize) -> DevPtr {
        let s = gpu.alloc_zeros::<f32>(n).expect("alloc");
        let p = hbridge_engine::cuda::dev_ptr(&s, gpu.stream());
        self.f32s.push(s);
        p
    }
}

type Launch = Box<dyn Fn(&Gpu) -> CudaResult<()>>;

impl GpuBench {
    pub fn new() -> Result<Self, String> {
        Gpu::new(0)
            .map(|gpu| GpuBench { gpu })
            .map_err(|e| e.to_string())
    }

    pub fn name(&self) -> &str {
        self.gpu.name()
    }

    /// One launch closure per input set.
    fn prepare(&self, op: &Op) -> (Vec<Set>, Vec<Launch>) {
        let gpu = &*self.gpu;
        let mut sets = Vec::new();
        let mut launches: Vec<Launch> = Vec::new();
        for _ in 0..SETS {
            let mut s = Set {
                bufs: Vec::new(),
                ints: Vec::new(),
                f32s: Vec::new(),
            };
            let launch: Launch = match *op {
                Op::Attention {
                    nq,
                    ref segments,
                    heads,
                    kv_heads,
                    d,
                    causal,
                    flash,
                } => {
                    let q = s.bf16(gpu, nq * heads * d);
                    let out = s.bf16(gpu, nq * heads * d);
                    let segs: Vec<attention::KvSegmentArgs> = segments
                        .iter()
                        .map(|&len| attention::KvSegmentArgs {
                            k: s.bf16(gpu, len * kv_heads * d),
                            v: s.bf16(gpu, len * kv_heads * d),
                            len,
                            row_stride: kv_heads * d,
                            batch_stride: 0,
                            kv_heads,
                            valid_len: None,
                        })
                        .collect();
                    let args = attention::AttentionArgs {
                        q,
                        q_row_stride: heads * d,
                        q_batch_stride: 0,
                        out,
                        out_row_stride: heads * d,
                        out_batch_stride: 0,
                        batch: 1,
                        nq,
                        heads,
                        head_dim: d,
                        segments: &segs,
                        causal,
                        scale: (d as f32).powf(-0.5),
                    };
                    // Split-KV partials for decode, S and P for the wide-head path.
                    let ws_len = attention::workspace_len(&args);
                    let ws = (ws_len > 0).then(|| (s.f32_scratch(gpu, ws_len), ws_len));
                    let (heads_, nq_) = (heads, nq);
                    Box::new(move |g: &Gpu| {
                        let args = attention::AttentionArgs {
                            q,
                            q_row_stride: heads_ * d,
                            q_batch_stride: 0,
                            out,
                            out_row_stride: heads_ * d,
                            out_batch_stride: 0,
                            batch: 1,
                            nq: nq_,
                            heads: heads_,
                            head_dim: d,
                            segments: &segs,
                            causal,
                            scale: (d as f32).powf(-0.5),
                        };
                        let kernel = match flash {
                            Flash::Default => attention::FlashKernel::Auto,
                            Flash::Sm90 => attention::FlashKernel::Sm90,
                            Flash::Sm90Pipe => attention::FlashKernel::Sm90Pipe,
                        };
                        attention::attention_with(g, &args, ws, kernel)
                    })
                }
                Op::RmsNorm {
                    rows,
                    dim,
                    modulate,
                    residual,
                    gated,
                    row_blocks,
                } => {
                    let x = s.bf16(gpu, rows * dim);
                    let out = s.bf16(gpu, rows * dim);
                    let weight = Some(s.bf16(gpu, dim));
                    let scale = modulate.then(|| s.bf16(gpu, dim));
                    let (res, res_out) = if residual {
                        (Some(s.bf16(gpu, rows * dim)), Some(s.bf16(gpu, rows * dim)))
                    } else {
                        (None, None)
                    };
                    let a = norm::RmsNormArgs {
                        x,
                        residual: res,
                        residual_out: res_out,
                        weight,
                        scale,
                        gated: gated.then(|| norm::Gated {
                            x: s.bf16(gpu, rows * dim),
                            gate: s.bf16(gpu, dim),
                        }),
                        out,
                        rows,
                        dim,
                        eps: 1e-6,
                    };
                    Box::new(move |g: &Gpu| match row_blocks {
                        Some(cap) => norm::rmsnorm_with_row_blocks(g, &a, cap),
                        None => norm::rmsnorm(g, &a),
                    })
                }
                Op::MRope { n, heads, d } => {
                    let x = s.bf16(gpu, n * heads * d);
                    let out = s.bf16(gpu, n * heads * d);
                    let p = s.positions(gpu, 3 * n);
                    Box::new(move |g: &Gpu| {
                        rope::mrope(g, x, p, out, heads * d, n, heads, d, [16, 24, 24], 1e6)
                    })
                }
                Op::Interleaved3 { n, heads, d } => {
                    let x = s.bf16(gpu, n * heads * d);
                    let out = s.bf16(gpu, n * heads * d);
                    let p = s.positions(gpu, 3 * n);
                    Box::new(move |g: &Gpu| {
                        rope::interleaved3(g, x, p, out, n, heads, d, [40, 40, 40], 1e4)
                    })
                }
                Op::SwiGlu { n } => {
                    let (gate, up, out) = (s.bf16(gpu, n), s.bf16(gpu, n), s.bf16(gpu, n));
                    Box::new(move |g: &Gpu| elementwise::swiglu(g, gate, up, out, n))
                }
                Op::GateResidual { rows, dim } => {
                    let (x, y, out) = (
                        s.bf16(gpu, rows * dim),
                        s.bf16(gpu, rows * dim),
                        s.bf16(gpu, rows * dim),
                    );
                    let gate = s.bf16(gpu, dim);
                    Box::new(move |g: &Gpu| {
                        elementwise::gate_residual(g, x, gate, y, out, rows * dim, dim)
                    })
                }
                Op::BridgeKv { n, kv_heads, d } => {
                    let w = kv_heads * d;
                    let kv = s.bf16(gpu, n * 2 * w);
                    let (k_out, v_out) = (s.bf16(gpu, n * w), s.bf16(gpu, n * w));
                    let p = s.positions(gpu, 3 * n);
                    let a = bridge::BridgeKvArgs {
                        k_in: kv,
                        v_in: kv.offset(w, 2),
                        in_row_stride: 2 * w,
                        positions: p,
                        k_out,
                        v_out,
                        out_row_stride: w,
                        n,
                        kv_heads,
                        head_dim: d,
                        section: [16, 24, 24],
                        theta: 1e6,
                    };
                    Box::new(move |g: &Gpu| bridge::bridge_kv_write(g, &a))
                }
                Op::Patchify { c, h, w, p } => {
                    let (x, out) = (s.bf16(gpu, c * h * w), s.bf16(gpu, c * h * w));
                    Box::new(move |g: &Gpu| layout::patchify(g, x, out, c, h, w, p))
                }
                Op::Gemv { n, inp, out, form } => {
                    let linear = |s: &mut Set, out: usize| gemm::LinearArgs {
                        x: s.bf16(gpu, n * inp),
                        w: s.bf16(gpu, out * inp),
                        bias: Some(s.bf16(gpu, out)),
                        y: s.bf16(gpu, n * out),
                        n,
                        in_features: inp,
                        out_features: out,
                    };
                    let args = linear(&mut s, out);
                    match form {
                        GemvForm::Single => Box::new(move |g: &Gpu| gemv::gemv(g, &args)),
                        GemvForm::CublasLt => Box::new(move |g: &Gpu| {
                            gemm::gemm(
                                g,
                                &gemm::GemmArgs {
                                    shape: gemm::GemmShape {
                                        m: n,
                                        n: out,
                                        k: inp,
                                        a_trans: false,
                                        lda: inp,
                                        b_trans: true,
                                        ldb: inp,
                                        ldc: out,
                                    },
                                    a: args.x,
                                    b: args.w,
                                    c: args.y,
                                    bias: args.bias,
                                    accumulate: false,
                                },
                            )
                        }),
                        GemvForm::Qkv { kv } => {
                            let (k, v) = (linear(&mut s, kv), linear(&mut s, kv));
                            let group = [
                                args,
                                gemm::LinearArgs { x: args.x, ..k },
                                gemm::LinearArgs { x: args.x, ..v },
                            ];
                            Box::new(move |g: &Gpu| gemv::gemv_group(g, &group))
                        }
                        GemvForm::SwiGlu => {
                            let up = gemm::LinearArgs {
                                x: args.x,
                                ..linear(&mut s, out)
                            };
                            Box::new(move |g: &Gpu| gemv::gemv_swiglu(g, &args, &up, args.y))
                        }
                    }
                }
                Op::Conv2d { .. } => Box::new(|_: &Gpu| {
                    Err(CudaError::Unsupported {
                        op: "conv2d",
                        label: "bench".into(),
                        problem: "no kernel of its own: the backend runs convolutions as im2col + \
                                  cuBLASLt GEMMs (benchmarked by `hbridge bench --profile`)"
                            .into(),
                    })
                }),
                Op::GroupNorm { c, hw, groups } => {
                    let (x, out) = (s.bf16(gpu, c * hw), s.bf16(gpu, c * hw));
                    let (weight, bias) = (s.bf16(gpu, c), s.bf16(gpu, c));
                    Box::new(move |g: &Gpu| {
                        norm::group_norm(g, x, weight, bias, out, c, hw, groups, 1e-6)
                    })
                }
            };
            sets.push(s);
            launches.push(launch);
        }
        (sets, launches)
    }

    pub fn bench(&self, c: &mut Criterion, case: &Case) {
        let (_sets, launches) = self.prepare(&case.op);
        let gpu = &*self.gpu;
        // A launcher that cannot run this case is reported, not benchmarked.
        if let Err(e) = launches[0](gpu).and_then(|_| gpu.synchronize()) {
            eprintln!("gpu/{}/{}: skipped: {e}", case.group, case.name);
            return;
        }
        let (work, amount) = case.op.work();
        let mut group = c.benchmark_group(format!("gpu/{}", case.group));
        group.throughput(match work {
            Work::Flops => Throughput::Elements(amount),
            Work::Bytes => Throughput::Bytes(amount),
        });
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = gpu.context().new_event(timing).expect("event");
        let end = gpu.context().new_event(timing).expect("event");
        group.bench_function(case.name, |b| {
            b.iter_custom(|iters| {
                start.record(gpu.stream()).expect("record");
                for i in 0..iters as usize {
                    launches[i % SETS](gpu).expect("launch");
                }
                end.record(gpu.stream()).expect("record");
                end.synchronize().expect("sync");
                Duration::from_secs_f64(start.elapsed_ms(&end).expect("elapsed") as f64 / 1e3)
            })
        });
        group.finish();
    }
}
