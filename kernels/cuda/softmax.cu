// softmax.cu: the row softmax of the wide-head attention path (head_dim > 128, e.g. the VAE's
// mid-block attention at head_dim 512), which the flash kernel cannot hold in registers. The launcher
// (engine/src/cuda/ops/attention/wide.rs) computes a block of query rows as three steps:
// S = Q K^T (cuBLASLt, f32 out), P = softmax(S) here, O = P V (cuBLASLt, bf16).
//
// softmax_rows: grid (rows), block `blockDim.x` threads (32..256, a multiple of 32), one block per row.
//   Reads  s [rows][ld] f32: the scores of query rows q0 .. q0+rows of one batch row and head. Columns
//          [0, len0) hold segment 0's keys; [off1, off1+len1) segment 1's (off1 >= len0, a multiple of
//          8 so that every GEMM operand starts 32-byte aligned); the gap between them is never read.
//          Optional valid0 / valid1 [batch] i32 (key padding), indexed by `batch_row`.
//   Writes p [rows][ld] bf16: softmax_j(scale * s) over the visible keys, 0 for every other column up
//          to ncols rounded up to 4 (the GEMM reads only the segment columns).
//   Visible: key j of segment k below min(len_k, valid_k[batch_row]); causal: global key (segment 0's
//   keys first) <= query + (total - nq). A row with no visible key is all zeros, so its output is zero.
//   Arithmetic in f32 in the log2 domain. One pass keeps a running (max, sum) per thread, merged across
//   the block; a second pass rereads the row (mostly from L2) and writes P. Per element 8 B read, 2 B
//   written: memory-bound. `ld` is a multiple of 8 and `s`, `p` are 16-byte aligned (checked on the
//   host), so every access moves 4 columns.

#define SM_NEG_INF __int_as_float(0xff800000u)

__device__ __forceinline__ float sm_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));  // ex2(-inf) = +0
    return y;
}

// Merges the running (max, sum) (m2, l2) into (m, l). Sums are relative to their max, so the smaller
// side is rescaled; an empty side has m = -inf and l = 0 and leaves the other unchanged.
__device__ __forceinline__ void sm_merge(float& m, float& l, float m2, float l2) {
    const float mn = fmaxf(m, m2);
    if (mn == SM_NEG_INF) return;
    l = l * sm_exp2(m - mn) + l2 * sm_exp2(m2 - mn);
    m = mn;
}

extern "C" __global__ void __launch_bounds__(256)
    softmax_rows(const float* s, bf16* p, long long ld, int ncols, int len0, const int* valid0, int off1, int len1,
                 const int* valid1, int batch_row, long long q0, int nq, int total, int causal, float scale_log2) {
    hb_pdl_entry();
    __shared__ float wm[32], wl[32];
    const long long row = blockIdx.x;
    const float* srow = s + row * ld;
    bf16* prow = p + row * ld;

    int n0 = len0, n1 = len1;
    if (valid0 != nullptr) n0 = min(n0, max(valid0[batch_row], 0));
    if (valid1 != nullptr) n1 = min(n1, max(valid1[batch_row], 0));
    if (causal) {
        const long long see = q0 + row + (long long)total - nq + 1;  // global keys visible
        n0 = (int)min((long long)n0, max(see, 0LL));
        n1 = (int)min((long long)n1, max(see - len0, 0LL));
    }
    const int end1 = off1 + n1;
    const int chunks = (ncols + 3) >> 2;

    float m = SM_NEG_INF, l = 0.0f;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const float4 v = reinterpret_cast<const float4*>(srow)[c];
        const float x[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int col = 4 * c + e;
            if (col < n0 || (col >= off1 && col < end1)) {
                const float y = x[e] * scale_log2;
                if (y > m) {
                    l = l * sm_exp2(m - y) + 1.0f;
                    m = y;
                } else {
                    l += sm_exp2(y - m);
                }
            }
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float l2 = __shfl_xor_sync(0xffffffffu, l, o);
        sm_merge(m, l, m2, l2);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
    __syncthreads();
    m = wm[0];
    l = wl[0];
    for (int w = 1; w < warps; ++w) sm_merge(m, l, wm[w], wl[w]);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;

    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const float4 v = reinterpret_cast<const float4*>(srow)[c];
        const float x[4] = {v.x, v.y, v.z, v.w};
        float y[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int col = 4 * c + e;
            const bool vis = col < n0 || (col >= off1 && col < end1);
            y[e] = vis ? sm_exp2(x[e] * scale_log2 - m) * inv : 0.0f;
        }
        reinterpret_cast<uint2*>(prow)[c] = make_uint2(pack_bf16x2(y[0], y[1]), pack_bf16x2(y[2], y[3]));
    }
}
