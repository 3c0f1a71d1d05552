// attention_sm90.cu: flash attention forward on Hopper's warpgroup MMA (wgmma, sm_90a), the v2 of
// attention.cu's flash kernel: same parameters and semantics (attention_common.cuh), one or two K/V
// segments, GQA per segment, causal or bidirectional, key padding per batch row.
//
// Versions
// - v1 (attention.cu): mma.sync m16n8k16, 64 query rows per block; 185-211 TFLOP/s at the gen shapes on
//   the H100 (23-27% of the bf16 peak): mma.sync cannot feed Hopper's tensor cores at full rate.
// - v2 (this file): S = Q K^T as wgmma m64n128k16 with Q and K from shared memory, O += P V as
//   wgmma m64nDk16 with P from registers (the S accumulators rounded to bf16 in place: the accumulator
//   layout is the register A layout) and V from shared memory read N-major. K/V tiles come in by
//   cp.async into the 128-byte swizzle layout (wgmma.cuh), two stages, every thread loading; each
//   warpgroup waits for its own MMAs before the softmax. Simple on purpose: the descriptors and fragment
//   layouts are checked on the GPU against the f64 reference (and `attn_sm90_probe`) before the next
//   version adds a producer warpgroup with TMA and overlaps the softmax with the next tile's MMAs (FA3).
//
// Kernels (padded head dim D in {64, 128}; head_dim <= D, columns past head_dim zero-filled on load and
// never stored)
// - attn_fwd_sm90_d{D}: grid (ceil(nq/128), heads, batch), block 256 = 2 warpgroups x 64 query rows,
//   BN = 128 keys per tile. Dynamic shared memory (1024-byte aligned inside, +1024 slack): Q [2 wg][64][D],
//   K and V [2 stages][128][D], all swizzled: D=64 81 KB, D=128 161 KB. Causal launches walk the query
//   blocks last-first. Reads q, each segment's k/v (strided) and valid_len; writes out (strided) bf16.
//   Compute-bound at long sequences (4*nq*keys*D flops per head against (nq + 2*keys)*D*2 bytes).
// - attn_sm90_probe_d{D}: one warpgroup, one tile, no softmax: s = Q K^T (f32 [64][128]) and
//   o = bf16(s) V (f32 [64][D]) from dense bf16 q [64][D], k and v [128][D]. The GPU tests check it
//   against the CPU, so a layout mistake shows as "S wrong" or "P V wrong" rather than a bad softmax.
//
// Registers per thread: S 64 + O D/2 + P fragments 32 f32-sized values (1 block of 256 threads per SM).

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ATT_SM90 1
#else
#define ATT_SM90 0
#endif

#define SM90_BM 128
#define SM90_BN 128
#define SM90_THREADS 256

template <int D>
struct Sm90Smem {
    static constexpr unsigned Q_WG = 64 * D * 2;       // one warpgroup's Q rows
    static constexpr unsigned TILE = SM90_BN * D * 2;  // one K or V tile
    static constexpr unsigned Q = 0;
    static constexpr unsigned K = 2 * Q_WG;
    static constexpr unsigned V = K + 2 * TILE;
    static constexpr unsigned BYTES = V + 2 * TILE + 1024;  // + alignment slack
};

__device__ __forceinline__ unsigned sm90_aligned_base(unsigned char* raw, unsigned char** generic) {
    const unsigned a = smem_addr(raw);
    const unsigned base = (a + 1023u) & ~1023u;
    *generic = raw + (base - a);
    return base;
}

// s = Q K^T for one warpgroup: q_half0 is the warpgroup's Q (64 rows, halves 64*128 bytes apart), k_half0
// the K tile (SM90_BN rows, halves SM90_BN*128 bytes apart).
template <int D>
__device__ __forceinline__ void sm90_scores(float (&s)[SM90_BN / 2], unsigned q_half0, unsigned k_half0) {
#if ATT_SM90
    wgmma_fence_regs(s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const unsigned off = (kk & 3) * 32;
        const unsigned long long da = wgmma_desc_sw128(q_half0 + (kk >> 2) * (64 * 128) + off, 16, 1024);
        const unsigned long long db = wgmma_desc_sw128(k_half0 + (kk >> 2) * (SM90_BN * 128) + off, 16, 1024);
        wgmma_ss_m64n128k16(s, da, db, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_regs(s);
#else
    __trap();
#endif
}

// The P operand of O += P V: key block kt (16 keys) of the thread's two rows, from the S accumulators of
// n8 blocks 2kt and 2kt+1 (same register layout as mma.m16n8k16's A).
__device__ __forceinline__ void sm90_p_fragments(const float (&s)[SM90_BN / 2], unsigned (&pa)[SM90_BN / 16][4]) {
#pragma unroll
    for (int kt = 0; kt < SM90_BN / 16; ++kt) {
        pa[kt][0] = pack_bf16x2(s[8 * kt + 0], s[8 * kt + 1]);
        pa[kt][1] = pack_bf16x2(s[8 * kt + 2], s[8 * kt + 3]);
        pa[kt][2] = pack_bf16x2(s[8 * kt + 4], s[8 * kt + 5]);
        pa[kt][3] = pack_bf16x2(s[8 * kt + 6], s[8 * kt + 7]);
    }
}

// o += P V for one warpgroup; v_half0 is the V tile (SM90_BN rows, halves SM90_BN*128 bytes apart).
template <int D>
__device__ __forceinline__ void sm90_accumulate_pv(float (&o)[D / 2], const unsigned (&pa)[SM90_BN / 16][4],
                                                   unsigned v_half0) {
#if ATT_SM90
    wgmma_fence_regs(o);
    wgmma_fence();
#pragma unroll
    for (int kt = 0; kt < SM90_BN / 16; ++kt) {
        const unsigned long long db = wgmma_desc_sw128(v_half0 + kt * 16 * 128, SM90_BN * 128, 1024);
        if constexpr (D == 128) {
            wgmma_rs_m64n128k16_tb(o, pa[kt], db, 1);
        } else {
            wgmma_rs_m64n64k16_tb(o, pa[kt], db, 1);
        }
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_regs(o);
#else
    __trap();
#endif
}

template <int D>
__device__ __forceinline__ void attn_fwd_sm90(const AttnParams& p) {
    static_assert(D == 64 || D == 128, "swizzled halves of 64 columns");
    constexpr int BM = SM90_BM, BN = SM90_BN, NT = SM90_THREADS, CH = D / 8, NB = BN / 8;
    typedef Sm90Smem<D> L;
    if (blockDim.x != NT || att_dynamic_smem() < L::BYTES) __trap();
    extern __shared__ __align__(128) unsigned char sm90_smem[];
    unsigned char* smem;
    const unsigned sbase = sm90_aligned_base(sm90_smem, &smem);

    const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, warp = (tid >> 5) & 3;
    const AttnBlock blk = att_block<BM, BN>(p);
    const int b = blk.b, h = blk.h, m0 = blk.m0, offset = blk.offset;
    const int hd = p.head_dim;
    const AttnSegCtx s0 = blk.s0, s1 = blk.s1;
    const int T = s0.ntiles + s1.ntiles;

    // Q rows of both warpgroups (row r: warpgroup r / 64), committed with tile 0.
    att_load_q_rows<BM, CH, NT>(p, b, h, m0, tid, [&](int r, int ch) {
        return (bf16*)(smem + L::Q + (r >> 6) * L::Q_WG + sw128_offset(r & 63, ch, 64));
    });
    // Element offset of chunk ch of row r in a swizzled K or V tile.
    auto load_tile = [&](int t, int stage) {
        att_load_kv_tile<BN, CH, NT>(s0, s1, t, tid, hd, (bf16*)(smem + L::K + stage * L::TILE),
                                     (bf16*)(smem + L::V + stage * L::TILE),
                                     [](int r, int ch) { return (int)(sw128_offset(r, ch, BN) / 2); });
    };

    const int g = lane >> 2, tq = lane & 3;
    const int qi0 = m0 + wg * 64 + warp * 16 + g, qi1 = qi0 + 8;
    float o[D / 2], m[2], l[2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
    m[0] = m[1] = ATT_NEG_INF;
    l[0] = l[1] = 0.0f;

    if (T > 0) load_tile(0, 0);
    cp_async_commit();
    for (int t = 0; t < T; ++t) {
        if (t + 1 < T) load_tile(t + 1, (t + 1) & 1);
        cp_async_commit();  // possibly empty: keeps "all but the newest group" = tile t (and Q)
        cp_async_wait<1>();
        fence_proxy_async_smem();
        __syncthreads();

        float s[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) s[i] = 0.0f;
        sm90_scores<D>(s, sbase + L::Q + wg * L::Q_WG, sbase + L::K + (t & 1) * L::TILE);

        // Mask and online softmax (attention_common.cuh; the wgmma accumulators have the flat layout).
        const bool second = t >= s0.ntiles;
        const AttnSegCtx sg = second ? s1 : s0;
        const int j0 = sg.lo + (t - (second ? s0.ntiles : 0)) * BN;
        int kmax0, kmax1;
        att_row_limits(sg, p.causal != 0, qi0, qi1, offset, kmax0, kmax1);
        att_mask_scale<NB>(s, j0 + tq * 2, kmax0, kmax1, p.scale_log2);
        att_online_softmax<NB, D / 8>(s, o, m, l);

        unsigned pa[BN / 16][4];
        sm90_p_fragments(s, pa);
        sm90_accumulate_pv<D>(o, pa, sbase + L::V + (t & 1) * L::TILE);
        __syncthreads();  // both warpgroups are done with stage t&1 before tile t+2 is loaded into it
    }
    cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    const float inv[2] = {l[0] > 0.0f ? 1.0f / l[0] : 0.0f, l[1] > 0.0f ? 1.0f / l[1] : 0.0f};
    bf16* ob = p.out + (long long)b * p.out_batch_stride + (long long)h * hd;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = r == 0 ? qi0 : qi1;
        if (i >= p.nq) continue;
        bf16* row = ob + (long long)i * p.out_row_stride;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
            const int col = nd * 8 + tq * 2;
            const float v0 = o[4 * nd + 2 * r] * inv[r], v1 = o[4 * nd + 2 * r + 1] * inv[r];
            if (p.out_vec) {
                // Rows 16-byte aligned and head_dim % 8 == 0: the pair is in range and 4-byte aligned.
                if (col < hd) *reinterpret_cast<unsigned*>(row + col) = pack_bf16x2(v0, v1);
            } else {
                if (col < hd) row[col] = f32_to_bf16(v0);
                if (col + 1 < hd) row[col + 1] = f32_to_bf16(v1);
            }
        }
    }
}

// One warpgroup, one tile, no softmax (see the header).
template <int D>
__device__ __forceinline__ void attn_sm90_probe(const bf16* q, const bf16* k, const bf16* v, float* s_out, float* o_out) {
    constexpr int CH = D / 8;
    constexpr unsigned Q = 0, K = 64 * D * 2, V = K + SM90_BN * D * 2;
    if (blockDim.x != 128 || att_dynamic_smem() < V + SM90_BN * D * 2 + 1024) __trap();
    extern __shared__ __align__(128) unsigned char sm90_smem[];
    unsigned char* smem;
    const unsigned sbase = sm90_aligned_base(sm90_smem, &smem);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tq = lane & 3;
    for (int c = tid; c < 64 * CH; c += 128)
        cp_async_16(smem + Q + sw128_offset(c / CH, c % CH, 64), q + (c / CH) * D + (c % CH) * 8, 16);
    for (int c = tid; c < SM90_BN * CH; c += 128) {
        const unsigned o = sw128_offset(c / CH, c % CH, SM90_BN);
        cp_async_16(smem + K + o, k + (c / CH) * D + (c % CH) * 8, 16);
        cp_async_16(smem + V + o, v + (c / CH) * D + (c % CH) * 8, 16);
    }
    cp_async_commit();
    cp_async_wait<0>();
    fence_proxy_async_smem();
    __syncthreads();

    float s[SM90_BN / 2];
#pragma unroll
    for (int i = 0; i < SM90_BN / 2; ++i) s[i] = 0.0f;
    sm90_scores<D>(s, sbase + Q, sbase + K);
    const int r0 = warp * 16 + g;
#pragma unroll
    for (int nb = 0; nb < SM90_BN / 8; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s_out[(r0 + 8 * (e >> 1)) * SM90_BN + nb * 8 + tq * 2 + (e & 1)] = s[4 * nb + e];
    }
    unsigned pa[SM90_BN / 16][4];
    sm90_p_fragments(s, pa);
    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
    sm90_accumulate_pv<D>(o, pa, sbase + V);
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
#pragma unroll
        for (int e = 0; e < 4; ++e) o_out[(r0 + 8 * (e >> 1)) * D + nd * 8 + tq * 2 + (e & 1)] = o[4 * nd + e];
    }
}

// Spelled out (no macro): hbridge-kernels finds entry points by scanning this text.
extern "C" __global__ void __launch_bounds__(256, 1) attn_fwd_sm90_d64(const __grid_constant__ AttnParams p) {
    attn_fwd_sm90<64>(p);
}
extern "C" __global__ void __launch_bounds__(256, 1) attn_fwd_sm90_d128(const __grid_constant__ AttnParams p) {
    attn_fwd_sm90<128>(p);
}
extern "C" __global__ void __launch_bounds__(128) attn_sm90_probe_d64(const bf16* q, const bf16* k, const bf16* v,
                                                                     float* s_out, float* o_out) {
    attn_sm90_probe<64>(q, k, v, s_out, o_out);
}
extern "C" __global__ void __launch_bounds__(128) attn_sm90_probe_d128(const bf16* q, const bf16* k, const bf16* v,
                                                                      float* s_out, float* o_out) {
    attn_sm90_probe<128>(q, k, v, s_out, o_out);
}
