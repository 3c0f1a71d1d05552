// attention_sm90.cu: flash attention forward on Hopper's warpgroup MMA (wgmma, sm_90a), versions 2 and 3
// of attention.cu's flash kernel: same parameters and semantics (attention_common.cuh), one or two K/V
// segments, GQA per segment, causal or bidirectional, key padding per batch row.
//
// Versions
// - v1 (attention.cu): mma.sync m16n8k16, 64 query rows per block; 185-211 TFLOP/s at the gen shapes on
//   the H100 (23-27% of the bf16 peak): mma.sync cannot feed Hopper's tensor cores at full rate.
// - v2 (attn_fwd_sm90_d*): S = Q K^T as wgmma m64n128k16 with Q and K from shared memory, O += P V as
//   wgmma m64nDk16 with P from registers (the S accumulators rounded to bf16 in place: the accumulator
//   layout is the register A layout) and V from shared memory read N-major. K/V tiles come in by
//   cp.async into the 128-byte swizzle layout (wgmma.cuh), two stages, every thread loading; each
//   warpgroup waits for its own MMAs before the softmax, so the tensor cores idle during it (both
//   warpgroups meet at every tile's barrier and run their softmax at the same time).
// - v3 (attn_fwd_sm90_pipe_d*): v2's block with the softmax of tile t under the P V MMAs of tile t-1
//   (FA3's intra-warpgroup overlap) and O rescaled lazily (FA4: only when a row's max grows by 2^8), so
//   the common iteration waits only for S. P alternates between two register sets, V has four stages.
//   Next: a producer warp with TMA and mbarriers so the warpgroups stop meeting at a block barrier
//   (FA3's ping-pong of one warpgroup's softmax under the other's GEMMs).
// Both wgmma versions are checked on the GPU against the f64 reference (and `attn_sm90_probe` for the
// descriptors and fragment layouts alone).
//
// Kernels (padded head dim D in {64, 128}; head_dim <= D, columns past head_dim zero-filled on load and
// never stored)
// - attn_fwd_sm90_d{D}, attn_fwd_sm90_pipe_d{D}: grid (ceil(nq/128), heads, batch), block 256 = 2
//   warpgroups x 64 query rows, BN = 128 keys per tile. Dynamic shared memory (1024-byte aligned inside,
//   +1024 slack): Q [2 wg][64][D], K [2 stages][128][D], V [2 or 4 stages][128][D], all swizzled: v2
//   D=64 81 KB, D=128 161 KB; v3 113 KB and 225 KB. Causal launches walk the query blocks last-first.
//   Reads q, each segment's k/v (strided) and valid_len; writes out (strided) bf16. Compute-bound at long
//   sequences (4*nq*keys*D flops per head against (nq + 2*keys)*D*2 bytes).
// - attn_sm90_probe_d{D}: one warpgroup, one tile, no softmax: s = Q K^T (f32 [64][128]) and
//   o = bf16(s) V (f32 [64][D]) from dense bf16 q [64][D], k and v [128][D]. The GPU tests check it
//   against the CPU, so a layout mistake shows as "S wrong" or "P V wrong" rather than a bad softmax.
//
// Registers per thread: S 64 + O D/2 + P fragments 32 (v3: 2 x 32) f32-sized values (1 block of 256
// threads per SM); ptxas sm_90a: v2 199 / v3 246 at D=128, no spills, no serialized wgmma.

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ATT_SM90 1
#else
#define ATT_SM90 0
#endif

#define SM90_BM 128
#define SM90_BN 128
#define SM90_THREADS 256

// Shared memory of a block: Q of both warpgroups, KS stages of K tiles, VS stages of V tiles.
template <int D, int KS, int VS>
struct Sm90Smem {
    static constexpr unsigned Q_WG = 64 * D * 2;       // one warpgroup's Q rows
    static constexpr unsigned TILE = SM90_BN * D * 2;  // one K or V tile
    static constexpr unsigned Q = 0;
    static constexpr unsigned K = 2 * Q_WG;
    static constexpr unsigned V = K + KS * TILE;
    static constexpr unsigned BYTES = V + VS * TILE + 1024;  // + alignment slack
};

__device__ __forceinline__ unsigned sm90_aligned_base(unsigned char* raw, unsigned char** generic) {
    const unsigned a = smem_addr(raw);
    const unsigned base = (a + 1023u) & ~1023u;
    *generic = raw + (base - a);
    return base;
}

// Issues s = Q K^T for one warpgroup as one commit group (s is not valid until that group's wait):
// q_half0 is the warpgroup's Q (64 rows, halves 64*128 bytes apart), k_half0 the K tile (SM90_BN rows,
// halves SM90_BN*128 bytes apart).
template <int D>
__device__ __forceinline__ void sm90_issue_scores(float (&s)[SM90_BN / 2], unsigned q_half0, unsigned k_half0) {
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
#else
    __trap();
#endif
}

// s = Q K^T, waited for.
template <int D>
__device__ __forceinline__ void sm90_scores(float (&s)[SM90_BN / 2], unsigned q_half0, unsigned k_half0) {
    sm90_issue_scores<D>(s, q_half0, k_half0);
    wgmma_wait<0>();
    wgmma_fence_regs(s);
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

// Issues o += P V for one warpgroup as one commit group (o and pa stay untouched until its wait);
// v_half0 is the V tile (SM90_BN rows, halves SM90_BN*128 bytes apart).
template <int D>
__device__ __forceinline__ void sm90_issue_pv(float (&o)[D / 2], unsigned (&pa)[SM90_BN / 16][4], unsigned v_half0) {
#if ATT_SM90
    wgmma_fence_regs(o);
    wgmma_fence_regs(pa);
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
#else
    __trap();
#endif
}

// o += P V, waited for.
template <int D>
__device__ __forceinline__ void sm90_accumulate_pv(float (&o)[D / 2], unsigned (&pa)[SM90_BN / 16][4],
                                                   unsigned v_half0) {
    sm90_issue_pv<D>(o, pa, v_half0);
    wgmma_wait<0>();
    wgmma_fence_regs(o);
    wgmma_fence_regs(pa);
}

// v3's softmax of one tile against a lazily updated reference max (FA4's conditional rescale): the row
// max mx of the tile is compared with the max O and l are kept relative to (m); only when some row
// of the warpgroup gains more than 2^8 does the warpgroup wait for its P V MMAs in flight and
// rescale O and l, so most tiles never touch O and the P V MMAs run under the softmax. Exponentials
// are at most 2^8 in between: no overflow in bf16 P, f32 l or O.
#define SM90_RESCALE_LOG2 8.0f

template <int NB>
__device__ __forceinline__ void sm90_row_max(const float (&s)[4 * NB], float (&mx)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float v = ATT_NEG_INF;
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) v = fmaxf(v, fmaxf(s[4 * nb + 2 * r], s[4 * nb + 2 * r + 1]));
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
        mx[r] = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    }
}

// OR of `v` over the 128 threads of a warpgroup, on named barrier BAR (barrier 0 is __syncthreads').
template <int BAR>
__device__ __forceinline__ bool sm90_warpgroup_any(bool v) {
    unsigned any;
    asm volatile(
        "{\n\t.reg .pred p, q;\n\t"
        "setp.ne.u32 p, %1, 0;\n\t"
        "bar.red.or.pred q, %2, 128, p;\n\t"
        "selp.u32 %0, 1, 0, q;\n\t}"
        : "=r"(any)
        : "r"(v ? 1u : 0u), "n"(BAR));
    return any != 0;
}

// Whether warpgroup wg must move its reference max. Uniform over the warpgroup, not only the warp:
// the `wgmma.wait_group.sync.aligned` it guards must be executed by all 128 threads alike (PTX ISA).
// (With the barrier id an immediate per warpgroup, ptxas kept 16 B less on the stack than with a
// register id.)
__device__ __forceinline__ bool sm90_needs_rescale(const float (&mx)[2], const float (&m)[2], int wg) {
    const bool need = mx[0] > m[0] + SM90_RESCALE_LOG2 || mx[1] > m[1] + SM90_RESCALE_LOG2;
    return wg == 0 ? sm90_warpgroup_any<1>(need) : sm90_warpgroup_any<2>(need);
}

// Moves the reference max to the tile's max where larger, rescaling o and l (o not in flight).
template <int ND>
__device__ __forceinline__ void sm90_rescale(const float (&mx)[2], float (&m)[2], float (&l)[2], float (&o)[4 * ND]) {
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float mnew = fmaxf(m[r], mx[r]);
        // exp2(-inf - -inf) would be NaN: a row that saw nothing keeps alpha 0 (o and l are 0 anyway).
        alpha[r] = mnew == ATT_NEG_INF ? 0.0f : att_exp2(m[r] - mnew);
        m[r] = mnew;
        l[r] *= alpha[r];
    }
    att_rescale<ND>(o, alpha);
}

// P = exp2(s - m) rounded into the A fragments of O += P V; l gains the row sums.
__device__ __forceinline__ void sm90_exp_to_p(const float (&s)[SM90_BN / 2], const float (&m)[2], float (&l)[2],
                                              unsigned (&pa)[SM90_BN / 16][4]) {
    const float muse[2] = {m[0] == ATT_NEG_INF ? 0.0f : m[0], m[1] == ATT_NEG_INF ? 0.0f : m[1]};
#pragma unroll
    for (int kt = 0; kt < SM90_BN / 16; ++kt) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int i = 8 * kt + 2 * q, r = q & 1;
            const float e0 = att_exp2(s[i] - muse[r]), e1 = att_exp2(s[i + 1] - muse[r]);
            l[r] += e0 + e1;
            pa[kt][q] = pack_bf16x2(e0, e1);
        }
    }
}

// The flash epilogue shared by v2 and v3: the quad's row sums, o / l, bf16 stores of the thread's two rows.
template <int D>
__device__ __forceinline__ void sm90_store_rows(const AttnParams& p, int b, int h, int qi0, int qi1, int tq,
                                                const float (&o)[D / 2], float (&l)[2]) {
    const int hd = p.head_dim;
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
            if (p.out_vec && col + 1 < hd) {
                // Rows 16-byte aligned (the host's out_vec) and col even: the pair is 4-byte aligned.
                // The host skips the head_dim % 8 check for a single head, so an odd head_dim's last
                // column takes the scalar path below instead of writing one past the head.
                *reinterpret_cast<unsigned*>(row + col) = pack_bf16x2(v0, v1);
            } else {
                if (col < hd) row[col] = f32_to_bf16(v0);
                if (col + 1 < hd) row[col + 1] = f32_to_bf16(v1);
            }
        }
    }
}

// Masks and scales one tile's scores for the thread's two rows (qi0, qi1): tile t of the block's
// key tiles (segment 0's first, then segment 1's).
template <int NB>
__device__ __forceinline__ void sm90_mask_tile(const AttnParams& p, const AttnBlock& blk, int t, int qi0, int qi1, int tq,
                                               float (&s)[4 * NB]) {
    const bool second = t >= blk.s0.ntiles;
    const AttnSegCtx sg = second ? blk.s1 : blk.s0;
    const int j0 = sg.lo + (t - (second ? blk.s0.ntiles : 0)) * SM90_BN;
    int kmax0, kmax1;
    att_row_limits(sg, p.causal != 0, qi0, qi1, blk.offset, kmax0, kmax1);
    att_mask_scale<NB>(s, j0 + tq * 2, kmax0, kmax1, p.scale_log2);
}

// The block setup v2 and v3 share: checks the launch shape, aligns the dynamic shared memory (L is the
// block's Sm90Smem) and starts loading the Q rows of both warpgroups (row r: warpgroup r / 64), which
// commit with tile 0. Returns the aligned base as a shared address; `smem` gets it as a pointer.
template <int D, typename L>
__device__ __forceinline__ unsigned sm90_begin(const AttnParams& p, const AttnBlock& blk, unsigned char*& smem) {
    if (blockDim.x != SM90_THREADS || att_dynamic_smem() < L::BYTES) __trap();
    extern __shared__ __align__(128) unsigned char sm90_smem[];
    const unsigned sbase = sm90_aligned_base(sm90_smem, &smem);
    unsigned char* q = smem + L::Q;
    att_load_q_rows<SM90_BM, D / 8, SM90_THREADS>(p, blk.b, blk.h, blk.m0, threadIdx.x, [&](int r, int ch) {
        return (bf16*)(q + (r >> 6) * L::Q_WG + sw128_offset(r & 63, ch, 64));
    });
    return sbase;
}

template <int D>
__device__ __forceinline__ void attn_fwd_sm90(const AttnParams& p) {
    static_assert(D == 64 || D == 128, "swizzled halves of 64 columns");
    constexpr int BM = SM90_BM, BN = SM90_BN, NT = SM90_THREADS, CH = D / 8, NB = BN / 8;
    typedef Sm90Smem<D, 2, 2> L;
    const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, warp = (tid >> 5) & 3;
    const AttnBlock blk = att_block<BM, BN>(p);
    const int b = blk.b, h = blk.h, m0 = blk.m0;
    const int hd = p.head_dim;
    const AttnSegCtx s0 = blk.s0, s1 = blk.s1;
    const int T = s0.ntiles + s1.ntiles;
    unsigned char* smem;
    const unsigned sbase = sm90_begin<D, L>(p, blk, smem);
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
        sm90_mask_tile<NB>(p, blk, t, qi0, qi1, tq, s);
        att_online_softmax<NB, D / 8>(s, o, m, l);

        unsigned pa[BN / 16][4];
        sm90_p_fragments(s, pa);
        sm90_accumulate_pv<D>(o, pa, sbase + L::V + (t & 1) * L::TILE);
        __syncthreads();  // both warpgroups are done with stage t&1 before tile t+2 is loaded into it
    }
    cp_async_wait<0>();
    sm90_store_rows<D>(p, b, h, qi0, qi1, tq, o, l);
}

// v3: v2's block, with each warpgroup's softmax of tile t overlapping its own O += P V of tile t-1.
// Per iteration t: issue S_t = Q K_t and O += P_{t-1} V_{t-1} as two commit groups, wait for S_t only
// (groups retire in order), mask it and run the softmax while the P V MMAs run. The softmax does not
// touch O: O and l stay relative to a reference max that moves only when a row's max grows by 2^8
// (then the warpgroup waits for its MMAs and rescales, rarely after the first tiles). P alternates
// between two register sets, so P_t is written while P_{t-1} V_{t-1} still reads the other; the wait for S_{t+1}
// next iteration also retires P_{t-1} V_{t-1} before its registers take P_{t+1}. (A plain wait for the
// P V MMAs before the rescale did not work: ptxas schedules such a wait wherever its latency model
// says the MMAs are done, which was before the softmax.) When tile t+1 starts loading (the top of
// iteration t), P_{t-2} V_{t-2} may still be reading V_{t-2} (it retires at this iteration's wait for
// S_t) and V_{t-1} is next: V has four stages, K two (S_{t-1} retired in iteration t-1): D=128 225 KB
// (of the 227 KB a block may have), D=64 113 KB.
template <int D>
__device__ __forceinline__ void attn_fwd_sm90_pipe(const AttnParams& p) {
    static_assert(D == 64 || D == 128, "swizzled halves of 64 columns");
    constexpr int BM = SM90_BM, BN = SM90_BN, NT = SM90_THREADS, CH = D / 8, NB = BN / 8;
    typedef Sm90Smem<D, 2, 4> L;
    const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, warp = (tid >> 5) & 3;
    const AttnBlock blk = att_block<BM, BN>(p);
    const int T = blk.s0.ntiles + blk.s1.ntiles;
    unsigned char* smem;
    const unsigned sbase = sm90_begin<D, L>(p, blk, smem);
    auto load_tile = [&](int t) {
        att_load_kv_tile<BN, CH, NT>(blk.s0, blk.s1, t, tid, p.head_dim, (bf16*)(smem + L::K + (t & 1) * L::TILE),
                                     (bf16*)(smem + L::V + (t & 3) * L::TILE),
                                     [](int r, int ch) { return (int)(sw128_offset(r, ch, BN) / 2); });
    };
    const unsigned q_wg = sbase + L::Q + wg * L::Q_WG;
    auto k_tile = [&](int t) { return sbase + L::K + (t & 1) * L::TILE; };
    auto v_tile = [&](int t) { return sbase + L::V + (t & 3) * L::TILE; };

    const int g = lane >> 2, tq = lane & 3;
    const int qi0 = blk.m0 + wg * 64 + warp * 16 + g, qi1 = qi0 + 8;
    float o[D / 2], m[2], l[2], mx[2], s[BN / 2];
    unsigned pa[BN / 16][4], pb[BN / 16][4];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
    m[0] = m[1] = ATT_NEG_INF;
    l[0] = l[1] = 0.0f;

    // Iteration t >= 1: P_{t-1} is in p_prev, P_t goes to p_next.
    auto step = [&](int t, unsigned (&p_prev)[BN / 16][4], unsigned (&p_next)[BN / 16][4]) {
        cp_async_wait<0>();
        fence_proxy_async_smem();
        // Tile t is in for every thread, and every thread is past iteration t-1, whose wait retired
        // S_{t-1}: tile t+1 takes K_{t-1}'s stage and V_{t-3}'s (P_{t-3} V_{t-3} retired there too).
        __syncthreads();
        if (t + 1 < T) load_tile(t + 1);
        cp_async_commit();
        sm90_issue_scores<D>(s, q_wg, k_tile(t));
        sm90_issue_pv<D>(o, p_prev, v_tile(t - 1));
        wgmma_wait<1>();  // S_t done, and every older group: P_{t-2} V_{t-2} no longer reads p_next
        wgmma_fence_regs(s);
        wgmma_fence_regs(p_next);
        sm90_mask_tile<NB>(p, blk, t, qi0, qi1, tq, s);
        sm90_row_max<NB>(s, mx);
        if (sm90_needs_rescale(mx, m, wg)) {
            wgmma_wait<0>();
            wgmma_fence_regs(o);
            wgmma_fence_regs(p_prev);
            sm90_rescale<D / 8>(mx, m, l, o);
        }
        sm90_exp_to_p(s, m, l, p_next);
    };

    // Q's copies commit here even without keys: none may still be in flight when the block exits.
    if (T > 0) load_tile(0);
    cp_async_commit();
    if (T > 0) {
        // Tile 0 (with Q) in, tile 1 on its way; S_0 and P_0 before the loop (O is zero).
        cp_async_wait<0>();
        fence_proxy_async_smem();
        __syncthreads();
        if (T > 1) load_tile(1);
        cp_async_commit();
        sm90_scores<D>(s, q_wg, k_tile(0));
        sm90_mask_tile<NB>(p, blk, 0, qi0, qi1, tq, s);
        sm90_row_max<NB>(s, mx);
        sm90_rescale<D / 8>(mx, m, l, o);
        sm90_exp_to_p(s, m, l, pa);
        // Two tiles per trip so each P buffer keeps a fixed role (registers cannot be indexed).
        for (int t = 1; t < T; t += 2) {
            step(t, pa, pb);
            if (t + 1 < T) step(t + 1, pb, pa);
        }
        // P of the last tile: pa when T-1 is even. The P V MMAs still in flight accumulate into the same
        // registers first (MMAs on one accumulator run in order).
        if ((T - 1) & 1) {
            sm90_accumulate_pv<D>(o, pb, v_tile(T - 1));
        } else {
            sm90_accumulate_pv<D>(o, pa, v_tile(T - 1));
        }
    }
    cp_async_wait<0>();
    sm90_store_rows<D>(p, blk.b, blk.h, qi0, qi1, tq, o, l);
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
    hb_pdl_entry();
    attn_fwd_sm90<64>(p);
}
extern "C" __global__ void __launch_bounds__(256, 1) attn_fwd_sm90_d128(const __grid_constant__ AttnParams p) {
    hb_pdl_entry();
    attn_fwd_sm90<128>(p);
}
extern "C" __global__ void __launch_bounds__(256, 1) attn_fwd_sm90_pipe_d64(const __grid_constant__ AttnParams p) {
    hb_pdl_entry();
    attn_fwd_sm90_pipe<64>(p);
}
extern "C" __global__ void __launch_bounds__(256, 1) attn_fwd_sm90_pipe_d128(const __grid_constant__ AttnParams p) {
    hb_pdl_entry();
    attn_fwd_sm90_pipe<128>(p);
}
extern "C" __global__ void __launch_bounds__(128) attn_sm90_probe_d64(const bf16* q, const bf16* k, const bf16* v,
                                                                     float* s_out, float* o_out) {
    hb_pdl_entry();
    attn_sm90_probe<64>(q, k, v, s_out, o_out);
}
extern "C" __global__ void __launch_bounds__(128) attn_sm90_probe_d128(const bf16* q, const bf16* k, const bf16* v,
                                                                      float* s_out, float* o_out) {
    hb_pdl_entry();
    attn_sm90_probe<128>(q, k, v, s_out, o_out);
}
