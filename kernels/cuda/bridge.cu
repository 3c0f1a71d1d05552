// bridge.cu: the bridge's shared-space step for the gen tokens' K and V (DESIGN.md section 5).
//
// bridge_kv_{v8,s}: k_out = M-RoPE(k_in) (und convention: rotate_half, HF f32 arithmetic, positions
//   i32 [3, n]), v_out = v_in, both written straight into a slot of the joint K/V buffers.
//   reads  k_in, v_in [n, kv_heads*head_dim] (rows in_stride apart: the K and V halves of one fused
//          projection output can be passed with offsets), positions;
//   writes k_out, v_out (rows out_stride apart).
//   Same math as rope.cu's mrope (kept in step with it; the GPU tests check both against one reference):
//   frequency k < half rotates (k[k], k[k+half]) by pos[axis(k)] * inv[k] (axis 0 below s0, 1 below s01,
//   else 2), inv from the host as HF computes it in f32, sincosf of the f32 angle.
// Launch: 256 threads per block, grid-stride over units (token, block of BRIDGE_HP heads, chunk of 8
//   elements of each half (v8: 16-byte accesses; host checks alignment and that strides and half are
//   multiples of 8) or one element of each half (s)). A unit loads K and V for all its heads before it
//   stores, and moves V raw (no conversion). One pass instead of rope + copy: 8 B read + 8 B written per
//   K/V element pair. Memory-bound.
//
// History: v1 (this file) replaces the placeholder.

#define BRIDGE_HP 4
#define BRIDGE_MAX_HALF 256

struct BridgeRopeTable {
    float inv[BRIDGE_MAX_HALF];
};

template <int VEC>
__device__ __forceinline__ void bridge_kv_impl(const bf16* k_in, const bf16* v_in, long long in_stride,
                                               const int* pos, bf16* k_out, bf16* v_out, long long out_stride,
                                               int n, int heads, int head_dim, int s0, int s01,
                                               const BridgeRopeTable& tab) {
    __shared__ float inv[BRIDGE_MAX_HALF];
    const int half = head_dim >> 1;
    for (int k = threadIdx.x; k < half; k += blockDim.x) inv[k] = tab.inv[k];
    __syncthreads();
    const unsigned g = (unsigned)(half / VEC), hb_count = (unsigned)((heads + BRIDGE_HP - 1) / BRIDGE_HP);
    const unsigned units = (unsigned)n * hb_count * g;  // < 2^31, checked on the host
    for (unsigned u = blockIdx.x * blockDim.x + threadIdx.x; u < units; u += gridDim.x * blockDim.x) {
        const unsigned j = u % g, t = u / g;
        const int hb = (int)(t % hb_count), i = (int)(t / hb_count);
        const int k0 = (int)j * VEC;
        const int pt = pos[i], ph = pos[n + i], pw = pos[2 * n + i];
        float cs[VEC], sn[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            const int k = k0 + e;
            const int p = k < s0 ? pt : (k < s01 ? ph : pw);
            sincosf((float)p * inv[k], &sn[e], &cs[e]);
        }
        const long long in_off = (long long)i * in_stride + k0, out_off = (long long)i * out_stride + k0;
        bf16vec<VEC> ka[BRIDGE_HP], kb[BRIDGE_HP], va[BRIDGE_HP], vb[BRIDGE_HP];
#pragma unroll
        for (int hh = 0; hh < BRIDGE_HP; ++hh) {
            const int h = hb * BRIDGE_HP + hh;
            if (h < heads) {
                const long long o = in_off + h * head_dim;
                ka[hh].load(k_in + o);
                kb[hh].load(k_in + o + half);
                va[hh].load(v_in + o);
                vb[hh].load(v_in + o + half);
            }
        }
#pragma unroll
        for (int hh = 0; hh < BRIDGE_HP; ++hh) {
            const int h = hb * BRIDGE_HP + hh;
            if (h < heads) {
                const long long o = out_off + h * head_dim;
                float fa[VEC], fb[VEC], ra[VEC], rb[VEC];
                ka[hh].unpack(fa);
                kb[hh].unpack(fb);
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    ra[e] = fa[e] * cs[e] - fb[e] * sn[e];
                    rb[e] = fb[e] * cs[e] + fa[e] * sn[e];
                }
                store_f32<VEC>(k_out + o, ra);
                store_f32<VEC>(k_out + o + half, rb);
                va[hh].store(v_out + o);
                vb[hh].store(v_out + o + half);
            }
        }
    }
}

#define BRIDGE_PARAMS                                                                                  \
    const bf16 *k_in, const bf16 *v_in, long long in_stride, const int *pos, bf16 *k_out, bf16 *v_out, \
        long long out_stride, int n, int heads, int head_dim, int s0, int s01, BridgeRopeTable tab
#define BRIDGE_ARGS k_in, v_in, in_stride, pos, k_out, v_out, out_stride, n, heads, head_dim, s0, s01, tab

extern "C" __global__ void __launch_bounds__(256) bridge_kv_v8(BRIDGE_PARAMS) {
    hb_pdl_entry(); bridge_kv_impl<8>(BRIDGE_ARGS); }

extern "C" __global__ void __launch_bounds__(256) bridge_kv_s(BRIDGE_PARAMS) {
    hb_pdl_entry(); bridge_kv_impl<1>(BRIDGE_ARGS); }
