// rope.cu: rotary position embeddings in the two conventions of the model.
//
// mrope_{v8,s}: the und expert's M-RoPE (rotate_half), HF f32 arithmetic.
//   reads  x [n, heads*head_dim] (rows in_stride apart), positions i32 [3, n] (rows t, h, w);
//   writes out [n, heads*head_dim] (rows out_stride apart; a strided destination such as a K cache).
//   Frequency k (< half = head_dim/2) rotates the pair (x[k], x[k+half]) by pos[axis(k)] * inv[k], with
//   axis 0 for k < s0, 1 for k < s01, else 2. `inv` comes from the host (the exact f32 values HF's
//   `1 / theta^(2k/d)` gives, see ops/rope.rs), the angle is one f32 multiply and cos/sin are sincosf of
//   that f32 angle, as torch computes them.
//   The vision tower's 2-D rotary is this kernel too: positions [2, n] (rows h, w), s0 = head_dim/4,
//   s01 = half (row 2 is then never read), and a table repeating HF's axial inv_freq for h and for w.
// interleaved3_{v8,s}: the gen expert's 3-axis RoPE on complex pairs (x[2p], x[2p+1]).
//   reads  x [n, heads*head_dim], positions i32 [n, 3]; writes out [n, heads*head_dim].
//   Pair p uses axis 0 for p < b0, 1 for p < b01, else 2, angle pos * inv[p] with inv in f64 from the
//   host; the angle is formed and reduced to [-pi, pi] in f64 (diffusers rotates in complex128), then
//   sincosf of the reduced angle (absolute error ~1e-7, far below bf16's 4e-3 step).
//
// Launch: 256 threads per block, grid-stride over units (token i, block of ROPE_HP heads, chunk j):
//   a chunk is 8 consecutive elements (v8: 16-byte accesses; host checks 16-byte alignment of x/out and
//   that strides and half (M-RoPE) / head_dim (interleaved) are multiples of 8) or one rotation pair
//   (s: 2-byte accesses, any alignment). A unit computes its cos/sin once and applies them to ROPE_HP
//   heads, loading all of them before storing any, so the loads are in flight together and out may
//   alias x (same strides). Memory-bound: 2 B read + 2 B written per element, positions and the
//   frequency table (staged in shared memory) from cache.
//
// History: v1 (this file) replaces the placeholder.

#define ROPE_HP 4
#define ROPE_MAX_HALF 256

struct RopeF32Table {
    float inv[ROPE_MAX_HALF];
};

struct RopeF64Table {
    double inv[ROPE_MAX_HALF];
};

// VEC elements from each half per chunk (M-RoPE): VEC == 8 or 1.
template <int VEC>
__device__ __forceinline__ void mrope_impl(const bf16* x, long long in_stride, const int* pos, bf16* out,
                                           long long out_stride, int n, int heads, int head_dim, int s0, int s01,
                                           const RopeF32Table& tab) {
    __shared__ float inv[ROPE_MAX_HALF];
    const int half = head_dim >> 1;
    for (int k = threadIdx.x; k < half; k += blockDim.x) inv[k] = tab.inv[k];
    __syncthreads();
    const unsigned g = (unsigned)(half / VEC), hb_count = (unsigned)((heads + ROPE_HP - 1) / ROPE_HP);
    const unsigned units = (unsigned)n * hb_count * g;  // < 2^31, checked on the host
    for (unsigned u = blockIdx.x * blockDim.x + threadIdx.x; u < units; u += gridDim.x * blockDim.x) {
        const unsigned j = u % g, t = u / g;
        const int hb = (int)(t % hb_count), i = (int)(t / hb_count);
        const int k0 = (int)j * VEC;
        // The vision tower's 2-D rotary passes positions [2, n] with s01 == half: no third row to read.
        const int pt = pos[i], ph = pos[n + i], pw = s01 < half ? pos[2 * n + i] : 0;
        float cs[VEC], sn[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            const int k = k0 + e;
            const int p = k < s0 ? pt : (k < s01 ? ph : pw);
            sincosf((float)p * inv[k], &sn[e], &cs[e]);
        }
        const bf16* xr = x + (long long)i * in_stride + k0;
        bf16* orow = out + (long long)i * out_stride + k0;
        bf16vec<VEC> a[ROPE_HP], b[ROPE_HP];
#pragma unroll
        for (int hh = 0; hh < ROPE_HP; ++hh) {
            const int h = hb * ROPE_HP + hh;
            if (h < heads) {
                a[hh].load(xr + h * head_dim);
                b[hh].load(xr + h * head_dim + half);
            }
        }
#pragma unroll
        for (int hh = 0; hh < ROPE_HP; ++hh) {
            const int h = hb * ROPE_HP + hh;
            if (h < heads) {
                float fa[VEC], fb[VEC], ra[VEC], rb[VEC];
                a[hh].unpack(fa);
                b[hh].unpack(fb);
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    ra[e] = fa[e] * cs[e] - fb[e] * sn[e];
                    rb[e] = fb[e] * cs[e] + fa[e] * sn[e];
                }
                store_f32<VEC>(orow + h * head_dim, ra);
                store_f32<VEC>(orow + h * head_dim + half, rb);
            }
        }
    }
}

#define MROPE_PARAMS                                                                                      \
    const bf16 *x, long long in_stride, const int *pos, bf16 *out, long long out_stride, int n, int heads, \
        int head_dim, int s0, int s01, RopeF32Table tab
#define MROPE_ARGS x, in_stride, pos, out, out_stride, n, heads, head_dim, s0, s01, tab

extern "C" __global__ void __launch_bounds__(256) mrope_v8(MROPE_PARAMS) {
    hb_pdl_entry(); mrope_impl<8>(MROPE_ARGS); }

extern "C" __global__ void __launch_bounds__(256) mrope_s(MROPE_PARAMS) {
    hb_pdl_entry(); mrope_impl<1>(MROPE_ARGS); }

// cos/sin of a f64 angle through a f64 reduction to [-pi, pi] and f32 sincosf.
__device__ __forceinline__ void sincos_reduced(double angle, float* s, float* c) {
    const double two_pi = 6.283185307179586476925;
    const double turns = rint(angle * (1.0 / two_pi));
    sincosf((float)fma(-turns, two_pi, angle), s, c);
}

// VEC elements (VEC/2 pairs) per chunk: VEC == 8 or 2.
template <int VEC>
__device__ __forceinline__ void interleaved3_impl(const bf16* x, const int* pos, bf16* out, int n, int heads,
                                                  int head_dim, int b0, int b01, const RopeF64Table& tab) {
    __shared__ double inv[ROPE_MAX_HALF];
    constexpr int PP = VEC / 2;
    const int pairs = head_dim >> 1;
    for (int k = threadIdx.x; k < pairs; k += blockDim.x) inv[k] = tab.inv[k];
    __syncthreads();
    const long long width = (long long)heads * head_dim;
    const unsigned g = (unsigned)(head_dim / VEC), hb_count = (unsigned)((heads + ROPE_HP - 1) / ROPE_HP);
    const unsigned units = (unsigned)n * hb_count * g;  // < 2^31, checked on the host
    for (unsigned u = blockIdx.x * blockDim.x + threadIdx.x; u < units; u += gridDim.x * blockDim.x) {
        const unsigned j = u % g, t = u / g;
        const int hb = (int)(t % hb_count), i = (int)(t / hb_count);
        const int k0 = (int)j * VEC, p0 = k0 >> 1;
        const int* pi = pos + 3LL * i;
        const int pa = pi[0], pb = pi[1], pc = pi[2];
        float cs[PP], sn[PP];
#pragma unroll
        for (int e = 0; e < PP; ++e) {
            const int p = p0 + e;
            const int q = p < b0 ? pa : (p < b01 ? pb : pc);
            sincos_reduced((double)q * inv[p], &sn[e], &cs[e]);
        }
        const bf16* xr = x + (long long)i * width + k0;
        bf16* orow = out + (long long)i * width + k0;
        bf16vec<VEC> a[ROPE_HP];
#pragma unroll
        for (int hh = 0; hh < ROPE_HP; ++hh) {
            const int h = hb * ROPE_HP + hh;
            if (h < heads) a[hh].load(xr + h * head_dim);
        }
#pragma unroll
        for (int hh = 0; hh < ROPE_HP; ++hh) {
            const int h = hb * ROPE_HP + hh;
            if (h < heads) {
                float f[VEC], r[VEC];
                a[hh].unpack(f);
#pragma unroll
                for (int e = 0; e < PP; ++e) {
                    const float re = f[2 * e], im = f[2 * e + 1];
                    r[2 * e] = re * cs[e] - im * sn[e];
                    r[2 * e + 1] = re * sn[e] + im * cs[e];
                }
                store_f32<VEC>(orow + h * head_dim, r);
            }
        }
    }
}

#define IL3_PARAMS \
    const bf16 *x, const int *pos, bf16 *out, int n, int heads, int head_dim, int b0, int b01, RopeF64Table tab
#define IL3_ARGS x, pos, out, n, heads, head_dim, b0, b01, tab

extern "C" __global__ void __launch_bounds__(256) interleaved3_v8(IL3_PARAMS) {
    hb_pdl_entry(); interleaved3_impl<8>(IL3_ARGS); }

extern "C" __global__ void __launch_bounds__(256) interleaved3_s(IL3_PARAMS) {
    hb_pdl_entry(); interleaved3_impl<2>(IL3_ARGS); }
