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
// Kernels: gemv_n{1,2,3,4}: grid (ceil(out / (8 * GEMV_ROWS))), block 256 (8 warps). Reads x, w, bias
// (nullable); writes y (bf16, every element of [n, out]).

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

template <int N>
__device__ __forceinline__ void gemv(const bf16* x, const bf16* w, const bf16* bias, bf16* y, int in, int out) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int o0 = (blockIdx.x * GEMV_WARPS + warp) * GEMV_ROWS;
    if (o0 >= out) return;  // no barrier below: a spare warp just leaves
    const int nch = in >> 3;
    const uint4* wr[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; ++r) {
        // A row past `out` rereads row o0 (in bounds) and is never stored.
        const int o = o0 + r < out ? o0 + r : o0;
        wr[r] = reinterpret_cast<const uint4*>(w + (long long)o * in);
    }
    const uint4* xr = reinterpret_cast<const uint4*>(x);

    float acc[N][GEMV_ROWS];
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; ++r) acc[i][r] = 0.0f;

    for (int c0 = 0; c0 < nch; c0 += 32 * GEMV_UNROLL) {
        uint4 wv[GEMV_UNROLL][GEMV_ROWS];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int c = c0 + u * 32 + lane;
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; ++r) wv[u][r] = c < nch ? gemv_ld_stream(wr[r] + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int c = c0 + u * 32 + lane;
            if (c >= nch) continue;
#pragma unroll
            for (int i = 0; i < N; ++i) {
                const uint4 xv = xr[(long long)i * nch + c];
#pragma unroll
                for (int r = 0; r < GEMV_ROWS; ++r) acc[i][r] = gemv_dot8(wv[u][r], xv, acc[i][r]);
            }
        }
    }

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

// Spelled out (no macro): hbridge-kernels finds entry points by scanning this text.
extern "C" __global__ void __launch_bounds__(256) gemv_n1(const bf16* x, const bf16* w, const bf16* bias, bf16* y, int in,
                                                          int out) {
    hb_pdl_entry();
    gemv<1>(x, w, bias, y, in, out);
}
extern "C" __global__ void __launch_bounds__(256) gemv_n2(const bf16* x, const bf16* w, const bf16* bias, bf16* y, int in,
                                                          int out) {
    hb_pdl_entry();
    gemv<2>(x, w, bias, y, in, out);
}
extern "C" __global__ void __launch_bounds__(256) gemv_n3(const bf16* x, const bf16* w, const bf16* bias, bf16* y, int in,
                                                          int out) {
    hb_pdl_entry();
    gemv<3>(x, w, bias, y, in, out);
}
extern "C" __global__ void __launch_bounds__(256) gemv_n4(const bf16* x, const bf16* w, const bf16* bias, bf16* y, int in,
                                                          int out) {
    hb_pdl_entry();
    gemv<4>(x, w, bias, y, in, out);
}
