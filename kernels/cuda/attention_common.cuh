// attention_common.cuh: what the attention versions share (attention.cu, v1 on mma.sync, and
// attention_sm90.cu, v2 on wgmma): the kernel parameters mirrored on the host, the semantics every
// version implements, the 16-byte K/V/Q chunk loader and the per-segment key ranges.
//
// Semantics (graph Op::Attention): keys are segment 0's then segment 1's, global key index = position in
// that concatenation of the full segment lengths; key j of segment s is masked for batch row b when
// j >= valid_len_s[b]; causal: query i sees global keys <= i + (total_keys - nq). A query row that sees
// no key gets zeros. Scores q.k*scale, softmax in f32.

#define ATT_NEG_INF __int_as_float(0xff800000u)

// Kernel parameters, passed by value (mirrored by `#[repr(C)]` structs in engine/src/cuda/ops/attention/params.rs;
// the sizes are asserted on both sides).
struct AttnSeg {
    const bf16* k;          // element 0 of batch row 0, key 0, kv head 0
    const bf16* v;
    const int* valid_len;   // [batch] or null
    long long row_stride;   // elements between consecutive keys
    long long batch_stride; // elements between batch rows
    int len;                // keys (global index space, padding included)
    int kv_heads;
    int group;              // heads / kv_heads
    int vec;                // 1: every row start is 16-byte aligned, so cp.async can be used
};
static_assert(sizeof(AttnSeg) == 56, "AttnSeg layout is mirrored on the host");

struct AttnParams {
    const bf16* q;
    bf16* out;
    float* ws;  // decode path: partial outputs then log2-sum-exps
    long long q_row_stride, q_batch_stride, out_row_stride, out_batch_stride;
    AttnSeg seg[2];
    int nseg, batch, nq, heads, head_dim, total_keys, causal, q_vec, out_vec, nsplit, split_len;
    float scale_log2;  // scale * log2(e)
};
static_assert(sizeof(AttnParams) == 216, "AttnParams layout is mirrored on the host");

__device__ __forceinline__ float att_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));  // ex2(-inf) = +0
    return y;
}

__device__ __forceinline__ unsigned att_dynamic_smem() {
    unsigned r;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
    return r;
}

__device__ __forceinline__ void att_st_shared_v4(void* smem, unsigned a, unsigned b, unsigned c, unsigned d) {
    asm volatile("st.shared.v4.b32 [%0], {%1,%2,%3,%4};\n" ::"r"(smem_addr(smem)), "r"(a), "r"(b), "r"(c), "r"(d)
                 : "memory");
}

__device__ __forceinline__ void att_st_shared_b32(void* smem, unsigned a) {
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(smem_addr(smem)), "r"(a) : "memory");
}

__device__ __forceinline__ void att_copy_16_shared_to_global(void* gmem, const void* smem) {
    unsigned a, b, c, d;
    asm volatile("ld.shared.v4.b32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(a), "=r"(b), "=r"(c), "=r"(d)
                 : "r"(smem_addr(smem))
                 : "memory");
    asm volatile("st.global.v4.b32 [%0], {%1,%2,%3,%4};\n" ::"l"(gmem), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}

// One 16-byte chunk (8 bf16 columns d0..d0+7) of a row into shared memory: columns >= head_dim and
// rows that are not `valid` become zeros (V rows of masked keys must be finite: P=0 times garbage NaN
// would poison the output). `vec`: the row start is 16-byte aligned, so one cp.async (its source-size
// operand zero-fills the tail of a partial chunk); otherwise element loads (head dims like 12 and 24
// whose head offsets are not 16-byte aligned, odd strides, unaligned pointers). `safe` is a valid
// 16-byte-aligned global address used as the source when nothing is read.
__device__ __forceinline__ void att_load_chunk(bf16* dst, const bf16* row, bool valid, int d0, int head_dim, bool vec,
                                               const bf16* safe) {
    if (vec) {
        int n = head_dim - d0;
        n = n < 0 ? 0 : (n > 8 ? 8 : n);
        const int bytes = valid ? 2 * n : 0;
        cp_async_16(dst, bytes > 0 ? (const void*)(row + d0) : (const void*)safe, bytes);
    } else {
        unsigned w[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int d = d0 + 2 * e;
            const unsigned lo = (valid && d < head_dim) ? (unsigned)row[d] : 0u;
            const unsigned hi = (valid && d + 1 < head_dim) ? (unsigned)row[d + 1] : 0u;
            w[e] = lo | (hi << 16);
        }
        att_st_shared_v4(dst, w[0], w[1], w[2], w[3]);
    }
}

// One segment as a block (or warp) walks it: base pointers already at its batch row and kv head, and
// the local key range [lo, hi) it must visit (valid length, split chunk and causal limit applied).
struct AttnSegCtx {
    const bf16* k;
    const bf16* v;
    long long stride;
    int off;     // global index of the segment's key 0
    int lo, hi;  // local key range
    int ntiles;
    int vec;
};

template <int BN>
__device__ __forceinline__ AttnSegCtx att_seg_ctx(const AttnParams& p, int s, int b, int kvh, int c0, int c1) {
    AttnSegCtx c;
    const AttnSeg& sg = p.seg[s];
    c.off = s == 0 ? 0 : p.seg[0].len;
    c.stride = sg.row_stride;
    c.vec = sg.vec;
    c.k = sg.k;
    c.v = sg.v;
    c.lo = 0;
    c.hi = 0;
    c.ntiles = 0;
    if (s < p.nseg && sg.len > 0) {
        const long long base = (long long)b * sg.batch_stride + (long long)kvh * p.head_dim;
        c.k = sg.k + base;
        c.v = sg.v + base;
        int eff = sg.len;
        if (sg.valid_len != nullptr) {
            const int vl = sg.valid_len[b];
            eff = vl < 0 ? 0 : (vl < eff ? vl : eff);
        }
        const int lo = c0 - c.off > 0 ? c0 - c.off : 0;
        const int hi = c1 - c.off < eff ? c1 - c.off : eff;
        if (hi > lo) {
            c.lo = lo;
            c.hi = hi;
            c.ntiles = (hi - lo + BN - 1) / BN;
        }
    }
    return c;
}

// --- the per-tile softmax both versions run on their score accumulators ------------------------------
// Both MMA families leave a thread the same pieces of a 16-row slab: accumulator 4nb+e is row
// lane/4 + 8(e>>1) of the slab, column 8nb + 2(lane%4) + (e&1) of the tile (n8 block nb). So the
// masking and the online softmax are written once over flat arrays s[4*NB] (scores) and o[4*ND]
// (output accumulators, ND n8 blocks of head dims).

// Scales the scores into the log2 domain and masks keys at or past kmax0 (row 0) / kmax1 (row 1); jt
// is the tile-local index of the thread's first key column.
template <int NB>
__device__ __forceinline__ void att_mask_scale(float (&s)[4 * NB], int jt, int kmax0, int kmax1, float scale_log2) {
    // Limits relative to the thread's first column, so each test is against a constant (no per-column
    // index registers, which the pipelined v3 cannot spare).
    const int lim0 = kmax0 - jt, lim1 = kmax1 - jt;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float v = s[4 * nb + e] * scale_log2;
            s[4 * nb + e] = nb * 8 + (e & 1) < (e < 2 ? lim0 : lim1) ? v : ATT_NEG_INF;
        }
    }
}

// Online softmax per row (the 4 lanes of a quad share a row), without touching o: turns s into
// unnormalized probabilities, updates the running max m (log2 domain) and the thread's partial row sum l,
// and returns in alpha the factor o must be rescaled by (the pipelined v3 applies it once its previous
// P V has landed).
template <int NB>
__device__ __forceinline__ void att_softmax_tile(float (&s)[4 * NB], float (&m)[2], float (&l)[2], float (&alpha)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float mx = ATT_NEG_INF;
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) mx = fmaxf(mx, fmaxf(s[4 * nb + 2 * r], s[4 * nb + 2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mnew = fmaxf(m[r], mx);
        // Nothing visible yet: subtract 0 so -inf - -inf never makes a NaN (all p and alpha are 0).
        const float muse = mnew == ATT_NEG_INF ? 0.0f : mnew;
        alpha[r] = att_exp2(m[r] - muse);
        m[r] = mnew;
        float sum = 0.0f;
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) {
            s[4 * nb + 2 * r] = att_exp2(s[4 * nb + 2 * r] - muse);
            s[4 * nb + 2 * r + 1] = att_exp2(s[4 * nb + 2 * r + 1] - muse);
            sum += s[4 * nb + 2 * r] + s[4 * nb + 2 * r + 1];
        }
        l[r] = l[r] * alpha[r] + sum;
    }
}

// o *= alpha per row (the accumulator layout: o[4 nd + 2 r + {0, 1}] belong to row r).
template <int ND>
__device__ __forceinline__ void att_rescale(float (&o)[4 * ND], const float (&alpha)[2]) {
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[4 * nd + e] *= alpha[e >> 1];
    }
}

// att_softmax_tile, then the rescale of o.
template <int NB, int ND>
__device__ __forceinline__ void att_online_softmax(float (&s)[4 * NB], float (&o)[4 * ND], float (&m)[2], float (&l)[2]) {
    float alpha[2];
    att_softmax_tile<NB>(s, m, l, alpha);
    att_rescale<ND>(o, alpha);
}

// The causal and segment limits of the thread's two rows (qi0, qi1) in tile-local key indices.
__device__ __forceinline__ void att_row_limits(const AttnSegCtx& sg, bool causal, int qi0, int qi1, int offset, int& kmax0,
                                               int& kmax1) {
    kmax0 = sg.hi;
    kmax1 = sg.hi;
    if (causal) {
        const int c0 = qi0 + offset - sg.off + 1, c1 = qi1 + offset - sg.off + 1;
        kmax0 = c0 < kmax0 ? c0 : kmax0;
        kmax1 = c1 < kmax1 ? c1 : kmax1;
    }
}

// What a flash block (BM query rows of one head and batch row) works on: its first query row, the
// causal offset and both segments' key ranges. Causal launches walk the query blocks last-first, so
// the blocks with the most keys start first.
struct AttnBlock {
    int b, h, m0, offset;
    AttnSegCtx s0, s1;
};

template <int BM, int BN>
__device__ __forceinline__ AttnBlock att_block(const AttnParams& p) {
    AttnBlock k;
    k.b = blockIdx.z;
    k.h = blockIdx.y;
    const int mblk = p.causal ? (int)(gridDim.x - 1 - blockIdx.x) : (int)blockIdx.x;
    k.m0 = mblk * BM;
    k.offset = p.total_keys - p.nq;
    // Keys past the block's last row's causal limit are never visible to any of its rows.
    int kend = p.total_keys;
    if (p.causal) {
        const int last = (k.m0 + BM < p.nq ? k.m0 + BM : p.nq) - 1;
        const int lim = last + k.offset + 1;
        kend = lim < kend ? (lim > 0 ? lim : 0) : kend;
    }
    k.s0 = att_seg_ctx<BN>(p, 0, k.b, k.h / p.seg[0].group, 0, kend);
    k.s1 = att_seg_ctx<BN>(p, 1, k.b, p.nseg > 1 ? k.h / p.seg[1].group : 0, 0, kend);
    return k;
}

// Loads key tile t (segment 0's tiles first, then segment 1's) of K and V into shared memory with NT
// threads; `offset(r, ch)` is the element offset of chunk ch of tile row r inside a K or V tile (the
// versions lay tiles out differently), `dk`/`dv` the tile bases. Keys past the range become zeros.
template <int BN, int CH, int NT, typename Offset>
__device__ __forceinline__ void att_load_kv_tile(const AttnSegCtx& s0, const AttnSegCtx& s1, int t, int tid, int head_dim,
                                                 bf16* dk, bf16* dv, Offset offset) {
    const bool second = t >= s0.ntiles;
    const AttnSegCtx sg = second ? s1 : s0;
    const int j0 = sg.lo + (t - (second ? s0.ntiles : 0)) * BN;
#pragma unroll
    for (int it = 0; it < (BN * CH) / NT; ++it) {
        const int c = tid + it * NT;
        const int r = c / CH, ch = c % CH;
        const int j = j0 + r;
        const bool valid = j < sg.hi;
        const long long ro = valid ? (long long)j * sg.stride : 0;
        const int o = offset(r, ch);
        att_load_chunk(dk + o, sg.k + ro, valid, ch * 8, head_dim, sg.vec != 0, sg.k);
        att_load_chunk(dv + o, sg.v + ro, valid, ch * 8, head_dim, sg.vec != 0, sg.v);
    }
}

// Loads the block's BM query rows of head h (rows past nq become zeros) with NT threads; `dst(r, ch)`
// is where chunk ch of row r goes.
template <int BM, int CH, int NT, typename Dst>
__device__ __forceinline__ void att_load_q_rows(const AttnParams& p, int b, int h, int m0, int tid, Dst dst) {
    const bf16* qb = p.q + (long long)b * p.q_batch_stride + (long long)h * p.head_dim;
#pragma unroll
    for (int it = 0; it < (BM * CH) / NT; ++it) {
        const int c = tid + it * NT;
        const int r = c / CH, ch = c % CH;
        const int i = m0 + r;
        const bool valid = i < p.nq;
        att_load_chunk(dst(r, ch), qb + (valid ? (long long)i * p.q_row_stride : 0), valid, ch * 8, p.head_dim,
                       p.q_vec != 0, p.q);
    }
}
