// attention.cu: flash attention forward over one or two K/V segments (und cache + gen tokens), GQA,
// causal or bidirectional, per-batch key padding, plus a split-KV path for decode.
//
// Versions
// - v1 (this file): FlashAttention-2 structure on sm_80-class tensor cores: mma.sync m16n8k16 bf16 with
//   f32 accumulators for both S = Q K^T and O += P V, Q fragments held in registers for the whole key
//   loop, K/V tiles streamed into shared memory with cp.async (two stages: tile t+1 loads while tile t
//   is computed), online softmax in f32 in the log2 domain (exp2 of scores pre-multiplied by
//   scale*log2(e)). Chosen first because its fragment layouts are fixed by the PTX ISA and it runs on
//   every sm_80+ GPU, so correctness can be established before the Hopper-specific version.
// - v2 (attention_sm90.cu): wgmma (sm_90a) for the long flash launches on Hopper; v1 measured 185-211
//   TFLOP/s there (23-27% of the bf16 peak), since only wgmma reaches the Hopper tensor cores' full rate.
//   v1 stays the decode path, the other GPUs' path and the reference v2 is checked beside.
// Shared with v2 (attention_common.cuh): the parameters, the semantics, the chunk loader, the segments.
//
// Kernels (one instantiation per padded head dim D in {16, 32, 64, 80, 128}; head_dim <= D, the columns
// past head_dim are zero-filled on load and never stored)
// - attn_fwd_d{D}: the flash kernel. grid (ceil(nq/64), heads, batch), block 128 (4 warps x 16 query
//   rows), BM = 64 query rows x BN = 64 keys per tile. Dynamic shared memory 640*(D+8) bytes: Q tile
//   [64][D+8] (reused to stage the output), K and V [2 stages][64][D+8]; rows padded by 16 bytes so
//   ldmatrix rows fall in distinct banks. D=16: 15 KB, 32: 25 KB, 64: 45 KB, 80: 55 KB, 128: 85 KB
//   (above 48 KB the launcher raises the function's dynamic shared memory limit). Causal launches walk
//   the query blocks last-first, so the blocks with the most keys start first.
//   Reads q [batch][nq][heads*head_dim] (strided), each segment's k/v [batch][len][kv_heads*head_dim]
//   (strided, its own strides), optional valid_len[batch] per segment; writes out (strided) bf16.
//   Compute-bound at long sequences (4*nq*keys*D flops per head against (nq + 2*keys)*D*2 bytes).
// - attn_decode_d{D} + attn_decode_combine: split-KV for few queries over many keys. Each warp owns one
//   key chunk (split) of one kv head and packs all the query rows that kv head serves (nq queries x g
//   GQA heads <= 16 rows) into one 16-row MMA tile, so K/V are read once per kv head. grid
//   (ceil(nsplit/2), kv_heads, batch), block 64 (2 independent warps), BN = 32 keys per tile, dynamic
//   shared memory 576*(D+8) bytes (per warp: Q [16][D+8], K and V [2][32][D+8]). Writes per split the
//   normalized partial output (f32, [batch][nsplit][nq][heads][head_dim]) and its log2-sum-exp (f32,
//   [batch][nsplit][nq][heads], after the outputs) into the caller's workspace; the combine kernel
//   (grid (nq*heads, batch), block 128) merges the splits and writes bf16. Memory-bound: every K/V byte
//   is read once, the flops per byte are ~4*g*nq/2.

template <bool CTA>
__device__ __forceinline__ void att_sync() {
    if (CTA) {
        __syncthreads();
    } else {
        __syncwarp();
    }
}

// The key loop of one warp's 16 query rows. NT threads (the whole block when CTA, else one warp)
// load each K/V tile together into sK/sV ([2][BN][D+8]); sQw is this warp's 16 Q rows (already issued
// with cp.async by the caller, committed here together with tile 0). qi0/qi1: query index of the
// thread's rows (lane/4 and lane/4 + 8) for the causal limit. On return o/m/l hold the unnormalized
// output, the running max (log2 domain) and the full row sum (reduced over the quad).
template <int D, int BN, int NT, bool CTA>
__device__ __forceinline__ void att_mainloop(const AttnSegCtx& s0, const AttnSegCtx& s1, const bf16* sQw, bf16* sK, bf16* sV,
                                             int qi0, int qi1, bool causal, int offset, float scale_log2, int head_dim,
                                             int tid, int lane, float (&o)[D / 8][4], float (&m)[2], float (&l)[2]) {
    constexpr int PITCH = D + 8, CH = D / 8, KS = D / 16, NB = BN / 8;
    static_assert(D % 16 == 0 && BN % 16 == 0, "MMA tile multiples");
    static_assert((BN * CH) % NT == 0, "K/V tile chunks divide evenly among the loading threads");
    const int T = s0.ntiles + s1.ntiles;

    auto load_tile = [&](int t, int stage) {
        att_load_kv_tile<BN, CH, NT>(s0, s1, t, tid, head_dim, sK + stage * BN * PITCH, sV + stage * BN * PITCH,
                                     [](int r, int ch) { return r * PITCH + ch * 8; });
    };

    if (T > 0) load_tile(0, 0);
    cp_async_commit();
    cp_async_wait<0>();
    att_sync<CTA>();

    // A fragments of Q (rows 0-15 of this warp, k = head-dim step kk): ldmatrix x4 with lanes 0-15
    // addressing rows 0-15 at column 16kk and lanes 16-31 the same rows at column 16kk+8 gives
    // a0 = (rows 0-7, k 0-7), a1 = (rows 8-15, k 0-7), a2 = (rows 0-7, k 8-15), a3 = (rows 8-15, k 8-15).
    unsigned qf[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) ldmatrix_x4(qf[kk], sQw + (lane & 15) * PITCH + kk * 16 + (lane >> 4) * 8);

#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;
    m[0] = m[1] = ATT_NEG_INF;
    l[0] = l[1] = 0.0f;

    for (int t = 0; t < T; ++t) {
        if (t + 1 < T) load_tile(t + 1, (t + 1) & 1);
        cp_async_commit();  // possibly empty: keeps "all but the newest group" = tile t
        cp_async_wait<1>();
        att_sync<CTA>();
        const bf16* tk = sK + (t & 1) * BN * PITCH;
        const bf16* tv = sV + (t & 1) * BN * PITCH;

        // S = Q K^T. B (16 head dims x 8 keys, "col") element (k, n) = K[key n][dim k]: a non-transposed
        // ldmatrix of K rows gives lane the row lane/4 (a key) and columns 2(lane%4)+{0,1} (dims), which
        // is b0/b1's (k = 2(lane%4)+{0,1}, n = lane/4). x4: lanes 0-7 keys 0-7 dims 0-7 (b0 of key block
        // 2kb), 8-15 keys 0-7 dims 8-15 (b1 of 2kb), 16-23 keys 8-15 dims 0-7, 24-31 keys 8-15 dims 8-15.
        float s[NB][4];
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
            for (int kb = 0; kb < BN / 16; ++kb) {
                unsigned bk[4];
                ldmatrix_x4(bk, tk + (kb * 16 + (lane & 7) + ((lane >> 4) << 3)) * PITCH + kk * 16 + ((lane >> 3) & 1) * 8);
                const unsigned b0[2] = {bk[0], bk[1]};
                const unsigned b1[2] = {bk[2], bk[3]};
                mma_bf16_16816(s[2 * kb], qf[kk], b0);
                mma_bf16_16816(s[2 * kb + 1], qf[kk], b1);
            }
        }

        // Mask and softmax (attention_common.cuh): s[nb][e] and o[nd][e] are the flat layouts' 4nb+e.
        const bool second = t >= s0.ntiles;
        const AttnSegCtx sg = second ? s1 : s0;
        const int j0 = sg.lo + (t - (second ? s0.ntiles : 0)) * BN;
        int kmax0, kmax1;
        att_row_limits(sg, causal, qi0, qi1, offset, kmax0, kmax1);
        att_mask_scale<NB>(reinterpret_cast<float(&)[4 * NB]>(s), j0 + (lane & 3) * 2, kmax0, kmax1, scale_log2);
        att_online_softmax<NB, D / 8>(reinterpret_cast<float(&)[4 * NB]>(s), reinterpret_cast<float(&)[D / 2]>(o), m, l);

        // O += P V. P's A fragment for keys 16kt..16kt+15 comes straight from the S accumulators of key
        // blocks 2kt and 2kt+1 (a0 = row g keys 2(lane%4)+{0,1} = s[2kt][0..1], a1 = row g+8 = s[2kt][2..3],
        // a2/a3 the same for block 2kt+1). B (16 keys x 8 dims) element (k, n) = V[key k][dim n]: a
        // transposed ldmatrix of V rows gives lane the keys 2(lane%4)+{0,1} of dim lane/4. x4: lanes 0-7
        // keys 0-7 dims 0-7 (b0 of dim block 2dp), 8-15 keys 8-15 dims 0-7 (b1 of 2dp), 16-23 keys 0-7
        // dims 8-15, 24-31 keys 8-15 dims 8-15.
#pragma unroll
        for (int kt = 0; kt < BN / 16; ++kt) {
            unsigned pa[4];
            pa[0] = pack_bf16x2(s[2 * kt][0], s[2 * kt][1]);
            pa[1] = pack_bf16x2(s[2 * kt][2], s[2 * kt][3]);
            pa[2] = pack_bf16x2(s[2 * kt + 1][0], s[2 * kt + 1][1]);
            pa[3] = pack_bf16x2(s[2 * kt + 1][2], s[2 * kt + 1][3]);
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                unsigned bv[4];
                ldmatrix_x4_trans(bv, tv + (kt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * PITCH + dp * 16 + ((lane >> 4) & 1) * 8);
                const unsigned b0[2] = {bv[0], bv[1]};
                const unsigned b1[2] = {bv[2], bv[3]};
                mma_bf16_16816(o[2 * dp], pa, b0);
                mma_bf16_16816(o[2 * dp + 1], pa, b1);
            }
        }
        att_sync<CTA>();  // every reader is done with stage t&1 before tile t+2 is loaded into it
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
}

// ---------------------------------------------------------------------------------------------------
// Flash kernel

template <int D>
__device__ __forceinline__ void attn_fwd(const AttnParams& p) {
    constexpr int BM = 64, BN = 64, NT = 128, PITCH = D + 8, CH = D / 8;
    static_assert((BM * CH) % NT == 0, "Q tile chunks divide evenly");
    // The host computes the same size (flash_smem_bytes); a mismatch would be a silent overrun.
    if (blockDim.x != NT || att_dynamic_smem() < (unsigned)((BM + 4 * BN) * PITCH * 2)) __trap();
    extern __shared__ __align__(128) unsigned char att_smem[];
    bf16* sQ = (bf16*)att_smem;
    bf16* sK = sQ + BM * PITCH;
    bf16* sV = sK + 2 * BN * PITCH;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const AttnBlock blk = att_block<BM, BN>(p);
    const int b = blk.b, h = blk.h, m0 = blk.m0, offset = blk.offset;
    const int hd = p.head_dim;
    const AttnSegCtx s0 = blk.s0, s1 = blk.s1;

    att_load_q_rows<BM, CH, NT>(p, b, h, m0, tid, [&](int r, int ch) { return sQ + r * PITCH + ch * 8; });

    const int g = lane >> 2;
    const int qi0 = m0 + warp * 16 + g, qi1 = qi0 + 8;
    bf16* sQw = sQ + warp * 16 * PITCH;
    float o[D / 8][4], m[2], l[2];
    att_mainloop<D, BN, NT, true>(s0, s1, sQw, sK, sV, qi0, qi1, p.causal != 0, offset, p.scale_log2, hd, tid, lane, o, m,
                                  l);

    // Epilogue: normalize, stage the warp's 16 rows as bf16 in its own Q rows (only this warp read
    // them), then write whole 16-byte chunks per lane.
    const float inv0 = l[0] > 0.0f ? 1.0f / l[0] : 0.0f;
    const float inv1 = l[1] > 0.0f ? 1.0f / l[1] : 0.0f;
    __syncwarp();
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
        const int col = nd * 8 + (lane & 3) * 2;
        att_st_shared_b32(sQw + g * PITCH + col, pack_bf16x2(o[nd][0] * inv0, o[nd][1] * inv0));
        att_st_shared_b32(sQw + (g + 8) * PITCH + col, pack_bf16x2(o[nd][2] * inv1, o[nd][3] * inv1));
    }
    __syncwarp();
    bf16* ob = p.out + (long long)b * p.out_batch_stride + (long long)h * hd;
#pragma unroll
    for (int it = 0; it < (16 * CH) / 32; ++it) {
        const int c = lane + it * 32;
        const int r = c / CH, ch = c % CH;
        const int i = m0 + warp * 16 + r;
        if (i >= p.nq) continue;
        const int d0 = ch * 8;
        if (d0 >= hd) continue;
        bf16* dst = ob + (long long)i * p.out_row_stride + d0;
        const bf16* src = sQw + r * PITCH + d0;
        if (p.out_vec && d0 + 8 <= hd) {
            att_copy_16_shared_to_global(dst, src);
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e)
                if (d0 + e < hd) dst[e] = src[e];
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Split-KV decode

template <int D>
__device__ __forceinline__ void attn_decode(const AttnParams& p) {
    constexpr int BN = 32, DW = 2, PITCH = D + 8, CH = D / 8;
    constexpr int WARP_ELEMS = (16 + 4 * BN) * PITCH;
    static_assert((16 * CH) % 32 == 0, "Q rows divide evenly among a warp");
    if (blockDim.x != 32 * DW || att_dynamic_smem() < (unsigned)(DW * WARP_ELEMS * 2)) __trap();
    extern __shared__ __align__(128) unsigned char att_smem[];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sp = blockIdx.x * DW + warp;
    // Warps are independent (no block barrier anywhere in this kernel), so a spare warp just leaves.
    if (sp >= p.nsplit) return;
    const int kvh = blockIdx.y, b = blockIdx.z;
    const int G = p.seg[0].group;  // the host takes this path only when every segment has the same kv_heads
    const int rows = p.nq * G;     // <= 16
    const int hd = p.head_dim;
    const int offset = p.total_keys - p.nq;

    bf16* sQw = (bf16*)att_smem + warp * WARP_ELEMS;
    bf16* sK = sQw + 16 * PITCH;
    bf16* sV = sK + 2 * BN * PITCH;

    const int c0 = sp * p.split_len;
    int c1 = c0 + p.split_len < p.total_keys ? c0 + p.split_len : p.total_keys;
    if (p.causal) {
        const int lim = (p.nq - 1) + offset + 1;
        c1 = lim < c1 ? lim : c1;
    }
    const AttnSegCtx s0 = att_seg_ctx<BN>(p, 0, b, kvh, c0, c1);
    const AttnSegCtx s1 = att_seg_ctx<BN>(p, 1, b, kvh, c0, c1);

    // Packed rows: row R is query R / G of q head kvh*G + R % G.
    const bf16* qb = p.q + (long long)b * p.q_batch_stride;
#pragma unroll
    for (int it = 0; it < (16 * CH) / 32; ++it) {
        const int c = lane + it * 32;
        const int r = c / CH, ch = c % CH;
        const bool valid = r < rows;
        const int i = r / G, hh = kvh * G + (r - i * G);
        const long long ro = valid ? (long long)i * p.q_row_stride + (long long)hh * hd : 0;
        att_load_chunk(sQw + r * PITCH + ch * 8, qb + ro, valid, ch * 8, hd, p.q_vec != 0, p.q);
    }

    const int g = lane >> 2;
    const int qi0 = g / G, qi1 = (g + 8) / G;
    float o[D / 8][4], m[2], l[2];
    att_mainloop<D, BN, 32, false>(s0, s1, sQw, sK, sV, qi0, qi1, p.causal != 0, offset, p.scale_log2, hd, lane, lane, o,
                                   m, l);

    float* lse = p.ws + (long long)p.batch * p.nsplit * p.nq * p.heads * hd;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int R = g + 8 * r;
        if (R >= rows) continue;
        const int i = R / G, hh = kvh * G + (R - i * G);
        const long long idx = (((long long)b * p.nsplit + sp) * p.nq + i) * p.heads + hh;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        float* dst = p.ws + idx * hd;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
            const int d = nd * 8 + (lane & 3) * 2;
            if (d < hd) dst[d] = o[nd][2 * r] * inv;
            if (d + 1 < hd) dst[d + 1] = o[nd][2 * r + 1] * inv;
        }
        if ((lane & 3) == 0) lse[idx] = l[r] > 0.0f ? m[r] + log2f(l[r]) : ATT_NEG_INF;
    }
}

// ---------------------------------------------------------------------------------------------------
// Entry points

// Spelled out (no macro): hbridge-kernels finds entry points by scanning this text.
extern "C" __global__ void __launch_bounds__(128) attn_fwd_d16(const __grid_constant__ AttnParams p) {
    hb_pdl_entry(); attn_fwd<16>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_d32(const __grid_constant__ AttnParams p) {
    hb_pdl_entry(); attn_fwd<32>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_d64(const __grid_constant__ AttnParams p) {
    hb_pdl_entry(); attn_fwd<64>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_d80(const __grid_constant__ AttnParams p) {
    hb_pdl_entry(); attn_fwd<80>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_d128(const __grid_constant__ AttnParams p) {
    hb_pdl_entry(); attn_fwd<128>(p); }
extern "C" __global__ void __launch_bounds__(64) attn_decode_d16(const __grid_constant__ AttnParams p) {
    hb_pdl_entry(); attn_decode<16>(p); }
extern "C" __global__ void __launch_bounds__(64) attn_decode_d32(const __grid_constant__ AttnParams p) {
    hb_pdl_entry(); attn_decode<32>(p); }
extern "C" __global__ void __launch_bounds__(64) attn_decode_d64(const __grid_constant__ AttnParams p) {
    hb_pdl_entry(); attn_decode<64>(p); }
extern "C" __global__ void __launch_bounds__(64) attn_decode_d80(const __grid_constant__ AttnParams p) {
    hb_pdl_entry(); attn_decode<80>(p); }
extern "C" __global__ void __launch_bounds__(64) attn_decode_d128(const __grid_constant__ AttnParams p) {
    hb_pdl_entry(); attn_decode<128>(p); }

// Merges the decode splits of one (batch row, query, head): out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M).
// grid (nq*heads, batch), block 128 (one thread per head-dim column).
extern "C" __global__ void __launch_bounds__(128) attn_decode_combine(const __grid_constant__ AttnParams p) {
    hb_pdl_entry();
    const int idx = blockIdx.x;  // i * heads + h
    const int b = blockIdx.y;
    const int i = idx / p.heads, h = idx - i * p.heads;
    const int hd = p.head_dim;
    const long long per_split = (long long)p.nq * p.heads;
    const long long first = (long long)b * p.nsplit * per_split + idx;
    const float* lse = p.ws + (long long)p.batch * p.nsplit * per_split * hd;
    float mx = ATT_NEG_INF;
    for (int s = 0; s < p.nsplit; ++s) mx = fmaxf(mx, lse[first + s * per_split]);
    bf16* dst = p.out + (long long)b * p.out_batch_stride + (long long)i * p.out_row_stride + (long long)h * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f, wsum = 0.0f;
        if (mx != ATT_NEG_INF) {
            for (int s = 0; s < p.nsplit; ++s) {
                const long long row = first + s * per_split;
                const float w = att_exp2(lse[row] - mx);
                wsum += w;
                acc += w * p.ws[row * hd + d];
            }
        }
        dst[d] = f32_to_bf16(wsum > 0.0f ? acc / wsum : 0.0f);
    }
}
