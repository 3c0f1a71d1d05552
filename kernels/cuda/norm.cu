// norm.cu: row norms (RMSNorm with fused residual add and modulation; LayerNorm) and GroupNorm.
//
// Row norms, `rownorm_{team,block}_{v8,s}` (mode 0 = RMSNorm, 1 = LayerNorm without affine):
//   reads  x [rows, dim], optional residual [rows, dim], weight [dim], scale [dim], and for the gated
//   epilogue gate [dim] and gres [rows, dim] (bf16);
//   writes out [rows, dim] and optional residual_out [rows, dim] (bf16).
//   h = round_bf16(x + residual) (the residual stream is stored in bf16, so the norm sees exactly what
//   residual_out holds, as an unfused add followed by a norm would); y = (h - mean) * rsqrt(stat + eps)
//   * weight * (1 + scale), mean = 0 for RMSNorm; statistics in f32. out = y, or with the gated epilogue
//   (gres given) out = gres + tanh(gate) * y: the DiT's norm-then-gated-residual in one pass (y is not
//   rounded to bf16 in between, as the unfused pair would; tanh is the MUFU approximation). Gated: +2 B
//   read per element; v8 kernels only (compiled out of the scalar ones, where its two extra pointers
//   made rownorm_block_s spill at its 64-register budget).
//   - team kernels: 256 threads per block, `team` lanes (a power of two <= 32) per row, 256/team rows per
//     block, grid-stride over row groups. For the per-head QK-norm (rows = tokens * heads, dim 12..128)
//     where a block per row would leave most threads idle. Reduction: xor-shuffles within the team.
//   - block kernels: one row per block of `blockDim.x` threads (a multiple of 32, <= 1024), grid-stride
//     over rows. For hidden sizes (1280, 2520, 3584, ...). Reduction: `block_sum`.
//   - v8: 16-byte accesses of 8 bf16 (dim % 8 == 0, every pointer 16-byte aligned, checked on the host);
//     s: 2-byte accesses (any dim, any alignment).
//   Each thread keeps its chunks of the row in registers (at most 4 x 8 or 8/16 x 1 values) from the
//   statistics to the output, so x and residual are read once: per element 2 B (x) + 2 B (residual)
//   read, 2 B (out) + 2 B (residual_out) written, weight/scale from L1/L2. Memory-bound.
//   Aliasing: every element is read and written by one thread, reads first, so out may alias x or gres
//   and residual_out may alias x or residual.
//
// GroupNorm of [C, HW] (bf16, affine weight/bias [C], statistics in f64 from f32 partial sums):
//   a group is C/G consecutive channels, i.e. one contiguous run of (C/G)*HW elements; at VAE sizes
//   that is 4M elements, so one block per group would leave most of the GPU idle. Three launches:
//   1. group_norm_stats, grid (parts, G), 256 threads: block (p, g) sums x - K and (x - K)^2 over its
//      slice of group g (K = the group's first element, a shift that keeps E[(x-K)^2] - E[x-K]^2 free
//      of cancellation when the mean is large against the spread); 8 values in f32, then f64.
//   2. group_norm_finalize, grid G: merges the group's partials, writes (mean, rstd) in f64.
//   3. group_norm_apply, grid (X, min(C, 65535)), 256 threads: y = (x - mean) * (rstd * w[c]) + b[c],
//      16-byte accesses when HW % 8 == 0 and pointers are aligned.
//   Bytes: x read twice, out written once. Memory-bound. out may alias x (apply reads each element
//   before its thread writes it; stats and finalize complete before apply starts).
//   Scratch: a module-level `gn_scratch` (or a caller's workspace): correct because the backend orders
//   every launch on one stream, so two GroupNorms never run at once.
//
// History: v1 (this file) replaces the placeholder; register-cached rows, team/block split by dim.
//   v1.1: the gated epilogue, so the CUDA backend runs RMSNorm + GateResidual as one launch
//   (engine/src/cuda/fuse.rs).

#define NORM_RMS 0
#define NORM_LAYER 1

// MUFU tanh (sm_75+), relative error about 2^-11: under half a bf16 ulp of the gated output, and one
// instruction where the accurate tanhf would be ~20 per element of a memory-bound pass.
__device__ __forceinline__ float tanh_approx(float v) {
    float r;
    asm("tanh.approx.f32 %0, %1;" : "=f"(r) : "f"(v));
    return r;
}

// Sum over the `team` lanes (a power of two) containing this lane; every lane of the warp must call it.
__device__ __forceinline__ float team_sum(float v, int team) {
    for (int o = team >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// VEC: elements per chunk (8: 16-byte accesses, 1: scalar); C: chunks a thread caches; BLOCK: a block
// per row (else a team of `team` lanes per row); GATED: whether the gated epilogue is compiled in (gate
// and gres are ignored otherwise). The launcher guarantees dim / VEC <= C * threads-per-row.
template <int VEC, int C, bool BLOCK, bool GATED>
__device__ __forceinline__ void rownorm(int mode, const bf16* x, const bf16* res, bf16* res_out, const bf16* w,
                                        const bf16* s, const bf16* gate, const bf16* gres, bf16* out,
                                        long long rows, int dim, float eps, int team) {
    __shared__ float scratch[32];
    const int per_row = BLOCK ? (int)blockDim.x : team;
    const int lane = BLOCK ? (int)threadIdx.x : (int)(threadIdx.x & (unsigned)(team - 1));
    const long long rpb = BLOCK ? 1 : (long long)(blockDim.x / (unsigned)team);
    const long long sub = BLOCK ? 0 : (long long)(threadIdx.x / (unsigned)team);
    const int nch = dim / VEC;
    const float fdim = (float)dim;

    // rb is uniform across the block, so every lane reaches the shuffles and barriers of the reduction
    // (lanes past the last row take part with zeros).
    for (long long rb = (long long)blockIdx.x * rpb; rb < rows; rb += (long long)gridDim.x * rpb) {
        const long long row = rb + sub;
        const bool valid = row < rows;
        const long long base = row * dim;
        float h[C][VEC];
        float acc = 0.0f;
#pragma unroll
        for (int c = 0; c < C; ++c) {
            const int idx = lane + c * per_row;
#pragma unroll
            for (int j = 0; j < VEC; ++j) h[c][j] = 0.0f;
            if (valid && idx < nch) {
                const long long off = base + (long long)idx * VEC;
                load_f32<VEC>(x + off, h[c]);
                if (res != nullptr) {
                    float r[VEC];
                    load_f32<VEC>(res + off, r);
#pragma unroll
                    for (int j = 0; j < VEC; ++j) h[c][j] = round_bf16(h[c][j] + r[j]);
                }
                if (res_out != nullptr) store_f32<VEC>(res_out + off, h[c]);
#pragma unroll
                for (int j = 0; j < VEC; ++j) acc += mode == NORM_RMS ? h[c][j] * h[c][j] : h[c][j];
            }
        }
        acc = BLOCK ? block_sum(acc, scratch) : team_sum(acc, team);
        float mean = 0.0f, inv;
        if (mode == NORM_RMS) {
            inv = 1.0f / sqrtf(acc / fdim + eps);
        } else {
            // Two-pass variance over the cached row: no cancellation, no second read.
            mean = acc / fdim;
            float var = 0.0f;
#pragma unroll
            for (int c = 0; c < C; ++c) {
                const int idx = lane + c * per_row;
                if (valid && idx < nch) {
#pragma unroll
                    for (int j = 0; j < VEC; ++j) {
                        const float d = h[c][j] - mean;
                        var = fmaf(d, d, var);
                    }
                }
            }
            var = BLOCK ? block_sum(var, scratch) : team_sum(var, team);
            inv = 1.0f / sqrtf(var / fdim + eps);
        }
#pragma unroll
        for (int c = 0; c < C; ++c) {
            const int idx = lane + c * per_row;
            if (valid && idx < nch) {
                const int col = idx * VEC;
                float y[VEC];
#pragma unroll
                for (int j = 0; j < VEC; ++j) y[j] = (h[c][j] - mean) * inv;
                if (w != nullptr) {
                    float wv[VEC];
                    load_f32<VEC>(w + col, wv);
#pragma unroll
                    for (int j = 0; j < VEC; ++j) y[j] *= wv[j];
                }
                if (s != nullptr) {
                    float sv[VEC];
                    load_f32<VEC>(s + col, sv);
#pragma unroll
                    for (int j = 0; j < VEC; ++j) y[j] *= 1.0f + sv[j];
                }
                if (GATED && gres != nullptr) {
                    float gv[VEC], rv[VEC];
                    load_f32<VEC>(gate + col, gv);
                    load_f32<VEC>(gres + base + col, rv);
#pragma unroll
                    for (int j = 0; j < VEC; ++j) y[j] = rv[j] + tanh_approx(gv[j]) * y[j];
                }
                store_f32<VEC>(out + base + col, y);
            }
        }
    }
}

#define ROWNORM_PARAMS                                                                                   \
    int mode, const bf16 *x, const bf16 *res, bf16 *res_out, const bf16 *w, const bf16 *s,                \
        const bf16 *gate, const bf16 *gres, bf16 *out, long long rows, int dim, float eps, int team
#define ROWNORM_ARGS mode, x, res, res_out, w, s, gate, gres, out, rows, dim, eps, team

extern "C" __global__ void __launch_bounds__(256) rownorm_team_v8(ROWNORM_PARAMS) {
    hb_pdl_entry();
    rownorm<8, 4, false, true>(ROWNORM_ARGS);
}

extern "C" __global__ void __launch_bounds__(256) rownorm_team_s(ROWNORM_PARAMS) {
    hb_pdl_entry();
    rownorm<1, 8, false, false>(ROWNORM_ARGS);
}

extern "C" __global__ void __launch_bounds__(1024) rownorm_block_v8(ROWNORM_PARAMS) {
    hb_pdl_entry();
    rownorm<8, 4, true, true>(ROWNORM_ARGS);
}

extern "C" __global__ void __launch_bounds__(1024) rownorm_block_s(ROWNORM_PARAMS) {
    hb_pdl_entry();
    rownorm<1, 16, true, false>(ROWNORM_ARGS);
}

// ---------------------------------------------------------------------------------------------------
// GroupNorm

// Capacity of the module scratch in doubles; the launcher sizes `parts` to fit
// (groups * (2 * parts + 2) <= GN_SCRATCH_DOUBLES).
#define GN_SCRATCH_DOUBLES 32768
__device__ double gn_scratch[GN_SCRATCH_DOUBLES];

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Block-wide f64 sum (blockDim.x a multiple of 32); every thread gets the total.
__device__ __forceinline__ double block_sum_f64(double v, double* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum_f64(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < warps ? sh[lane] : 0.0;
    return warp_sum_f64(v);
}

// Scratch layout (doubles): partial sums [groups][parts][2], then (mean, rstd) [groups][2].
extern "C" __global__ void __launch_bounds__(256)
    group_norm_stats(const bf16* x, long long group_len, int parts, int vec, double* ws) {
    hb_pdl_entry();
    __shared__ double sh[32];
    if (ws == nullptr) ws = gn_scratch;
    const int p = blockIdx.x, g = blockIdx.y;
    const bf16* gx = x + (long long)g * group_len;
    const float k = bf16_to_f32(gx[0]);
    double s1 = 0.0, s2 = 0.0;
    if (vec) {
        const long long nv = group_len >> 3;
        const long long v1 = nv * (p + 1) / parts;
        for (long long v = nv * p / parts + threadIdx.x; v < v1; v += blockDim.x) {
            float f[8];
            load_f32<8>(gx + v * 8, f);
            float a = 0.0f, b = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float d = f[j] - k;
                a += d;
                b = fmaf(d, d, b);
            }
            s1 += (double)a;
            s2 += (double)b;
        }
    } else {
        const long long e1 = group_len * (p + 1) / parts;
        for (long long e = group_len * p / parts + threadIdx.x; e < e1; e += blockDim.x) {
            const double d = (double)(bf16_to_f32(gx[e]) - k);
            s1 += d;
            s2 += d * d;
        }
    }
    s1 = block_sum_f64(s1, sh);
    s2 = block_sum_f64(s2, sh);
    if (threadIdx.x == 0) {
        double* part = ws + 2 * ((long long)g * parts + p);
        part[0] = s1;
        part[1] = s2;
    }
}

// grid = groups blocks.
extern "C" __global__ void __launch_bounds__(256)
    group_norm_finalize(const bf16* x, long long group_len, int parts, float eps, double* ws) {
    hb_pdl_entry();
    __shared__ double sh[32];
    if (ws == nullptr) ws = gn_scratch;
    const int g = blockIdx.x, groups = gridDim.x;
    const double* part = ws + 2 * (long long)g * parts;
    double s1 = 0.0, s2 = 0.0;
    for (int q = threadIdx.x; q < parts; q += blockDim.x) {
        s1 += part[2 * q];
        s2 += part[2 * q + 1];
    }
    s1 = block_sum_f64(s1, sh);
    s2 = block_sum_f64(s2, sh);
    if (threadIdx.x == 0) {
        const double n = (double)group_len;
        const double m = s1 / n;
        const double var = fmax(s2 / n - m * m, 0.0);
        double* st = ws + 2 * (long long)groups * parts + 2 * g;
        st[0] = (double)bf16_to_f32(x[(long long)g * group_len]) + m;
        st[1] = 1.0 / sqrt(var + (double)eps);
    }
}

template <int VEC>
__device__ __forceinline__ void group_norm_row(const bf16* xr, bf16* orow, long long units, float mean, float a,
                                               float b) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long u = (long long)blockIdx.x * blockDim.x + threadIdx.x; u < units; u += stride) {
        float f[VEC];
        load_f32<VEC>(xr + u * VEC, f);
#pragma unroll
        for (int j = 0; j < VEC; ++j) f[j] = fmaf(f[j] - mean, a, b);
        store_f32<VEC>(orow + u * VEC, f);
    }
}

extern "C" __global__ void __launch_bounds__(256)
    group_norm_apply(const bf16* x, const bf16* w, const bf16* b, bf16* out, int channels, long long hw, int cpg,
                     int parts, int vec, double* ws) {
    hb_pdl_entry();
    if (ws == nullptr) ws = gn_scratch;
    const int groups = channels / cpg;
    const double* st = ws + 2 * (long long)groups * parts;
    for (int c = blockIdx.y; c < channels; c += gridDim.y) {
        const int g = c / cpg;
        const float mean = (float)st[2 * g];
        const float a = (float)st[2 * g + 1] * bf16_to_f32(w[c]);
        const float bias = bf16_to_f32(b[c]);
        const long long off = (long long)c * hw;
        if (vec) {
            group_norm_row<8>(x + off, out + off, hw >> 3, mean, a, bias);
        } else {
            group_norm_row<1>(x + off, out + off, hw, mean, a, bias);
        }
    }
}
