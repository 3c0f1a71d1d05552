// gemv.cu: y [n, out] = x [n, in] @ w [out, in]^T (+ bias [out]) for a few rows (n <= 4): the und
// decode step's linears (q/k/v/o, gate/up/down, lm_head at batch 1), where a GEMM is a pass over the
// weights and nothing else. Memory-bound: every weight byte is read once (2*in*out bytes), x and bias
// come from L1/L2.
//
// Versions
// - cuBLASLt (gemm.rs) before this file: the same product at M = 1 through a general GEMM.
// - v1 (this file): a warp per GEMV_ROWS output features, lanes striding over 16-byte chunks of the
//   weight rows (coalesced: a warp reads 512 contiguous bytes of a row per step), GEMV_UNROLL chunks per
//   lane loaded before the first FMA so 2 x 4 x 16 bytes per lane are in flight, weights loaded with
//   L1::no_allocate (each byte is used once; x stays in L1), f32 accumulation, one warp reduction per
//   output. Launched only after the host checked in % 8 == 0 and 16-byte aligned x, w and rows.
//
// - v2 (this file): the same warps run up to three products of one x in one launch (gemv_group: q, k
//   and v of a decode step, whose k and v alone are too few blocks to fill the GPU) and the gate and up
//   products with the SwiGLU in their epilogue (gemv_swiglu: the [n, intermediate] gate and up are
//   never stored). Fewer launches per decode step, the same bytes.
//
// Kernels (block 256 = 8 warps, GEMV_ROWS features per warp; reads x, w, bias (nullable); writes every
// element of y [n, out] (bf16)):
// - gemv_n{1,2,3,4}: grid ceil(out / (8 * GEMV_ROWS)).
// - gemv_group_n{N}: the segments' grids one after the other (GemvGroup::block0).
// - gemv_swiglu_n{N}: grid ceil(out / (8 * GEMV_ROWS)); reads two weights (and biases) of [out, in].

#define GEMV_ROWS 2
#define GEMV_UNROLL 4
#define GEMV_WARPS 8

__device__ __forceinline__ uint4 gemv_ld_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

__device__ __forceinline__ float gemv_dot8(uint4 w, uint4 x, float acc) {
    float a[8], b[8];
    unpack_bf16x8(w, a);
    unpack_bf16x8(x, b);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc = fmaf(a[e], b[e], acc);
    return acc;
}

// acc[i][r] = this lane's share of the dot product of x row i with weight row r (lanes stride over the
// rows' 16-byte chunks; GEMV_UNROLL chunks of every row are loaded before the first FMA).
template <int N, int R>
__device__ __forceinline__ void gemv_dots(const bf16* x, const uint4* const (&wr)[R], int in, float (&acc)[N][R]) {
    const int lane = threadIdx.x & 31;
    const int nch = in >> 3;
    const uint4* xr = reinterpret_cast<const uint4*>(x);
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[i][r] = 0.0f;

    for (int c0 = 0; c0 < nch; c0 += 32 * GEMV_UNROLL) {
        uint4 wv[GEMV_UNROLL][R];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int c = c0 + u * 32 + lane;
#pragma unroll
            for (int r = 0; r < R; ++r) wv[u][r] = c < nch ? gemv_ld_stream(wr[r] + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int c = c0 + u * 32 + lane;
            if (c >= nch) continue;
#pragma unroll
            for (int i = 0; i < N; ++i) {
                const uint4 xv = xr[(long long)i * nch + c];
#pragma unroll
                for (int r = 0; r < R; ++r) acc[i][r] = gemv_dot8(wv[u][r], xv, acc[i][r]);
            }
        }
    }
}

// Row pointers of features o0 .. o0 + GEMV_ROWS - 1 of w; a feature past `out` rereads row o0 (in
// bounds) and is never stored.
__device__ __forceinline__ void gemv_rows(const bf16* w, int o0, int out, int in, const uint4* (&wr)[GEMV_ROWS]) {
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; ++r) {
        const int o = o0 + r < out ? o0 + r : o0;
        wr[r] = reinterpret_cast<const uint4*>(w + (long long)o * in);
    }
}

// Block `blk` of one product: its warps' GEMV_ROWS features each.
template <int N>
__device__ __forceinline__ void gemv_block(const bf16* x, const bf16* w, const bf16* bias, bf16* y, int in, int out,
                                           int blk) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int o0 = (blk * GEMV_WARPS + warp) * GEMV_ROWS;
    if (o0 >= out) return;  // no barrier below: a spare warp just leaves
    const uint4* wr[GEMV_ROWS];
    gemv_rows(w, o0, out, in, wr);
    float acc[N][GEMV_ROWS];
    gemv_dots<N, GEMV_ROWS>(x, wr, in, acc);
#pragma unroll
    for (int i = 0; i < N; ++i) {
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; ++r) {
            const float s = warp_sum(acc[i][r]);
            const int o = o0 + r;
            if (lane == 0 && o < out) {
                const float bv = bias != nullptr ? bf16_to_f32(bias[o]) : 0.0f;
                y[(long long)i * out + o] = f32_to_bf16(s + bv);
            }
        }
    }
}

// Up to three products of one x (q, k and v): segment s owns blocks [block0[s], block0[s + 1]).
struct GemvGroup {
    const bf16* w[3];
    const bf16* bias[3];
    bf16* y[3];
    int out[3];
    int block0[4];
};

template <int N>
__device__ __forceinline__ void gemv_group(const bf16* x, const GemvGroup& g, int in) {
    const int b = blockIdx.x;
    const int s = b < g.block0[1] ? 0 : (b < g.block0[2] ? 1 : 2);
    gemv_block<N>(x, g.w[s], g.bias[s], g.y[s], in, g.out[s], b - g.block0[s]);
}

__device__ __forceinline__ float gemv_silu(float v) { return v / (1.0f + expf(-v)); }

// y = silu(x wg^T + bg) * (x wu^T + bu): a warp's features from both weights at once. Each product is
// rounded to bf16 before the SwiGLU, as the unfused linears would store it.
template <int N>
__device__ __forceinline__ void gemv_swiglu(const bf16* x, const bf16* wg, const bf16* bg, const bf16* wu,
                                            const bf16* bu, bf16* y, int in, int out) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int o0 = (blockIdx.x * GEMV_WARPS + warp) * GEMV_ROWS;
    if (o0 >= out) return;
    const uint4* gr[GEMV_ROWS];
    const uint4* ur[GEMV_ROWS];
    gemv_rows(wg, o0, out, in, gr);
    gemv_rows(wu, o0, out, in, ur);
    const uint4* wr[2 * GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; ++r) {
        wr[r] = gr[r];
        wr[GEMV_ROWS + r] = ur[r];
    }
    float acc[N][2 * GEMV_ROWS];
    gemv_dots<N, 2 * GEMV_ROWS>(x, wr, in, acc);
#pragma unroll
    for (int i = 0; i < N; ++i) {
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; ++r) {
            const float gs = warp_sum(acc[i][r]), us = warp_sum(acc[i][GEMV_ROWS + r]);
            const int o = o0 + r;
            if (lane == 0 && o < out) {
                const float g = bf16_to_f32(f32_to_bf16(gs + (bg != nullptr ? bf16_to_f32(bg[o]) : 0.0f)));
                const float u = bf16_to_f32(f32_to_bf16(us + (bu != nullptr ? bf16_to_f32(bu[o]) : 0.0f)));
                y[(long long)i * out + o] = f32_to_bf16(gemv_silu(g) * u);
            }
        }
    }
}

// Spelled out (no macro): hbridge-kernels finds entry points by scanning this text.
extern "C" __global__ void __launch_bounds__(256) gemv_n1(const bf16* x, const bf16* w, const bf16* bias, bf16* y, int in,
                                                          int out) {
    hb_pdl_entry();
    gemv_block<1>(x, w, bias, y, in, out, blockIdx.x);
}
extern "C" __global__ void __launch_bounds__(256) gemv_n2(const bf16* x, const bf16* w, const bf16* bias, bf16* y, int in,
                                                          int out) {
    hb_pdl_entry();
    gemv_block<2>(x, w, bias, y, in, out, blockIdx.x);
}
extern "C" __global__ void __launch_bounds__(256) gemv_n3(const bf16* x, const bf16* w, const bf16* bias, bf16* y, int in,
                                                          int out) {
    hb_pdl_entry();
    gemv_block<3>(x, w, bias, y, in, out, blockIdx.x);
}
extern "C" __global__ void __launch_bounds__(256) gemv_n4(const bf16* x, const bf16* w, const bf16* bias, bf16* y, int in,
                                                          int out) {
    hb_pdl_entry();
    gemv_block<4>(x, w, bias, y, in, out, blockIdx.x);
}
extern "C" __global__ void __launch_bounds__(256) gemv_group_n1(const bf16* x, const __grid_constant__ GemvGroup g, int in) {
    hb_pdl_entry();
    gemv_group<1>(x, g, in);
}
extern "C" __global__ void __launch_bounds__(256) gemv_group_n2(const bf16* x, const __grid_constant__ GemvGroup g, int in) {
    hb_pdl_entry();
    gemv_group<2>(x, g, in);
}
extern "C" __global__ void __launch_bounds__(256) gemv_group_n3(const bf16* x, const __grid_constant__ GemvGroup g, int in) {
    hb_pdl_entry();
    gemv_group<3>(x, g, in);
}
extern "C" __global__ void __launch_bounds__(256) gemv_group_n4(const bf16* x, const __grid_constant__ GemvGroup g, int in) {
    hb_pdl_entry();
    gemv_group<4>(x, g, in);
}
extern "C" __global__ void __launch_bounds__(256) gemv_swiglu_n1(const bf16* x, const bf16* wg, const bf16* bg,
                                                                 const bf16* wu, const bf16* bu, bf16* y, int in, int out) {
    hb_pdl_entry();
    gemv_swiglu<1>(x, wg, bg, wu, bu, y, in, out);
}
extern "C" __global__ void __launch_bounds__(256) gemv_swiglu_n2(const bf16* x, const bf16* wg, const bf16* bg,
                                                                 const bf16* wu, const bf16* bu, bf16* y, int in, int out) {
    hb_pdl_entry();
    gemv_swiglu<2>(x, wg, bg, wu, bu, y, in, out);
}
extern "C" __global__ void __launch_bounds__(256) gemv_swiglu_n3(const bf16* x, const bf16* wg, const bf16* bg,
                                                                 const bf16* wu, const bf16* bu, bf16* y, int in, int out) {
    hb_pdl_entry();
    gemv_swiglu<3>(x, wg, bg, wu, bu, y, in, out);
}
extern "C" __global__ void __launch_bounds__(256) gemv_swiglu_n4(const bf16* x, const bf16* wg, const bf16* bg,
                                                                 const bf16* wu, const bf16* bu, bf16* y, int in, int out) {
    hb_pdl_entry();
    gemv_swiglu<4>(x, wg, bg, wu, bu, y, in, out);
}
