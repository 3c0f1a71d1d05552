// elementwise.cu: elementwise ops on bf16 tensors (f32 arithmetic), their row/channel broadcasts, and
// the f32 <-> bf16 casts.
//
// ew_unary (silu, exact-erf gelu, affine), ew_binary (add, swiglu), cast_f32_to_bf16, cast_bf16_to_f32:
//   flat over n elements; 256 threads per block, grid-stride. vec = 1 (host-checked: every pointer
//   16-byte aligned): 8 elements per access (16 B of bf16, 2 x 16 B of f32) for the first n & ~7
//   elements, the remaining < 8 scalar; vec = 0: 2-byte accesses throughout.
// ew_bcast: [rows, cols] with a broadcast operand: op 0 x + v[c] (add, row broadcast), 1 x * (1 + v[c])
//   (modulate), 2 x + tanh(v[c]) * y (gate_residual), 3 x + v[r] (add_channel_bias: [C, HW], one bias
//   per row). Launch: 256 threads per block = rpb rows x tpr threads (tpr = 1 << tpr_log2), grid.y
//   strips of tpr column units, grid.x blocks striding over rows. Each thread walks its column units
//   in the outer loop and rows in the inner one, so the broadcast value (and its tanh) is loaded once
//   per column, not per element, and no index needs a division. A column unit is 8 elements (vec = 1:
//   cols % 8 == 0 and all pointers 16-byte aligned, host-checked) or 1.
// Bytes: 2 B per input element read, 2 B written (casts: 4 + 2). All memory-bound; tanh, erfc and exp
//   are the accurate (non-fast-math) versions and still hide under the memory time.
// Aliasing: each element is read and written by one thread, loads before stores, so out may alias any
//   input of the same shape.
//
// History: v1 (this file) replaces the placeholder.

#define EW_SILU 0
#define EW_GELU 1
#define EW_AFFINE 2
#define EW_ADD 3
#define EW_SWIGLU 4

#define BC_ADD 0
#define BC_MODULATE 1
#define BC_GATE 2
#define BC_ROW_ADD 3

__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + expf(-x)); }

// x/2 * (1 + erf(x/sqrt 2)) written with erfc, which keeps its relative accuracy for negative x.
__device__ __forceinline__ float gelu_f(float x) { return 0.5f * x * erfcf(-x * 0.7071067811865475244f); }

template <int OP>
__device__ __forceinline__ float unary_f(float x, float a, float b) {
    if constexpr (OP == EW_SILU) return silu_f(x);
    else if constexpr (OP == EW_GELU) return gelu_f(x);
    else return x * a + b;
}

template <int OP>
__device__ __forceinline__ float binary_f(float a, float b) {
    if constexpr (OP == EW_ADD) return a + b;
    else return silu_f(a) * b;
}

template <int OP>
__device__ __forceinline__ void unary_loop(const bf16* x, bf16* out, long long n, float a, float b, int vec) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long done = 0;
    if (vec) {
        const long long nv = n >> 3;
        for (long long v = tid; v < nv; v += stride) {
            float f[8];
            load_f32<8>(x + v * 8, f);
#pragma unroll
            for (int j = 0; j < 8; ++j) f[j] = unary_f<OP>(f[j], a, b);
            store_f32<8>(out + v * 8, f);
        }
        done = nv << 3;
    }
    for (long long i = done + tid; i < n; i += stride) out[i] = f32_to_bf16(unary_f<OP>(bf16_to_f32(x[i]), a, b));
}

extern "C" __global__ void __launch_bounds__(256)
    ew_unary(const bf16* x, bf16* out, long long n, int op, float a, float b, int vec) {
    hb_pdl_entry();
    switch (op) {
        case EW_SILU: unary_loop<EW_SILU>(x, out, n, a, b, vec); break;
        case EW_GELU: unary_loop<EW_GELU>(x, out, n, a, b, vec); break;
        default: unary_loop<EW_AFFINE>(x, out, n, a, b, vec); break;
    }
}

template <int OP>
__device__ __forceinline__ void binary_loop(const bf16* x, const bf16* y, bf16* out, long long n, int vec) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long done = 0;
    if (vec) {
        const long long nv = n >> 3;
        for (long long v = tid; v < nv; v += stride) {
            float f[8], g[8];
            load_f32<8>(x + v * 8, f);
            load_f32<8>(y + v * 8, g);
#pragma unroll
            for (int j = 0; j < 8; ++j) f[j] = binary_f<OP>(f[j], g[j]);
            store_f32<8>(out + v * 8, f);
        }
        done = nv << 3;
    }
    for (long long i = done + tid; i < n; i += stride)
        out[i] = f32_to_bf16(binary_f<OP>(bf16_to_f32(x[i]), bf16_to_f32(y[i])));
}

extern "C" __global__ void __launch_bounds__(256)
    ew_binary(const bf16* x, const bf16* y, bf16* out, long long n, int op, int vec) {
    hb_pdl_entry();
    if (op == EW_ADD) binary_loop<EW_ADD>(x, y, out, n, vec);
    else binary_loop<EW_SWIGLU>(x, y, out, n, vec);
}

template <int OP, int VEC>
__device__ __forceinline__ void bcast_loop(const bf16* x, const bf16* v, const bf16* y, bf16* out, long long rows,
                                           long long cols, int tpr_log2) {
    const int tpr = 1 << tpr_log2;
    const long long lane = threadIdx.x & (tpr - 1);
    const long long rpb = blockDim.x >> tpr_log2, sub = threadIdx.x >> tpr_log2;
    const long long units = cols / VEC;
    for (long long u = (long long)blockIdx.y * tpr + lane; u < units; u += (long long)gridDim.y * tpr) {
        const long long col = u * VEC;
        float bv[VEC];
        if constexpr (OP != BC_ROW_ADD) {
            load_f32<VEC>(v + col, bv);
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
                if constexpr (OP == BC_MODULATE) bv[j] = 1.0f + bv[j];
                if constexpr (OP == BC_GATE) bv[j] = tanhf(bv[j]);
            }
        }
        for (long long r = (long long)blockIdx.x * rpb + sub; r < rows; r += (long long)gridDim.x * rpb) {
            const long long off = r * cols + col;
            float f[VEC];
            load_f32<VEC>(x + off, f);
            if constexpr (OP == BC_ROW_ADD) {
                const float rv = bf16_to_f32(v[r]);
#pragma unroll
                for (int j = 0; j < VEC; ++j) f[j] += rv;
            } else if constexpr (OP == BC_GATE) {
                float g[VEC];
                load_f32<VEC>(y + off, g);
#pragma unroll
                for (int j = 0; j < VEC; ++j) f[j] += bv[j] * g[j];
            } else if constexpr (OP == BC_MODULATE) {
#pragma unroll
                for (int j = 0; j < VEC; ++j) f[j] *= bv[j];
            } else {
#pragma unroll
                for (int j = 0; j < VEC; ++j) f[j] += bv[j];
            }
            store_f32<VEC>(out + off, f);
        }
    }
}

template <int VEC>
__device__ __forceinline__ void bcast_dispatch(const bf16* x, const bf16* v, const bf16* y, bf16* out, long long rows,
                                               long long cols, int tpr_log2, int op) {
    switch (op) {
        case BC_ADD: bcast_loop<BC_ADD, VEC>(x, v, y, out, rows, cols, tpr_log2); break;
        case BC_MODULATE: bcast_loop<BC_MODULATE, VEC>(x, v, y, out, rows, cols, tpr_log2); break;
        case BC_GATE: bcast_loop<BC_GATE, VEC>(x, v, y, out, rows, cols, tpr_log2); break;
        default: bcast_loop<BC_ROW_ADD, VEC>(x, v, y, out, rows, cols, tpr_log2); break;
    }
}

extern "C" __global__ void __launch_bounds__(256) ew_bcast(const bf16* x, const bf16* v, const bf16* y, bf16* out,
                                                           long long rows, long long cols, int tpr_log2, int op,
                                                           int vec) {
    hb_pdl_entry();
    if (vec) bcast_dispatch<8>(x, v, y, out, rows, cols, tpr_log2, op);
    else bcast_dispatch<1>(x, v, y, out, rows, cols, tpr_log2, op);
}

extern "C" __global__ void __launch_bounds__(256) cast_f32_to_bf16(const float* src, bf16* dst, long long n, int vec) {
    hb_pdl_entry();
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long done = 0;
    if (vec) {
        const long long nv = n >> 3;
        for (long long v = tid; v < nv; v += stride) {
            const float4 lo = reinterpret_cast<const float4*>(src)[2 * v];
            const float4 hi = reinterpret_cast<const float4*>(src)[2 * v + 1];
            const float f[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
            st_bf16x8(dst + v * 8, pack_bf16x8(f));
        }
        done = nv << 3;
    }
    for (long long i = done + tid; i < n; i += stride) dst[i] = f32_to_bf16(src[i]);
}

extern "C" __global__ void __launch_bounds__(256) cast_bf16_to_f32(const bf16* src, float* dst, long long n, int vec) {
    hb_pdl_entry();
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long done = 0;
    if (vec) {
        const long long nv = n >> 3;
        for (long long v = tid; v < nv; v += stride) {
            float f[8];
            load_f32<8>(src + v * 8, f);
            reinterpret_cast<float4*>(dst)[2 * v] = make_float4(f[0], f[1], f[2], f[3]);
            reinterpret_cast<float4*>(dst)[2 * v + 1] = make_float4(f[4], f[5], f[6], f[7]);
        }
        done = nv << 3;
    }
    for (long long i = done + tid; i < n; i += stride) dst[i] = bf16_to_f32(src[i]);
}
