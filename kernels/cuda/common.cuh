// common.cuh: device helpers every kernel file of kernels/cuda/ is compiled with (prepended by
// hbridge-kernels before NVRTC sees the file). No CUDA headers are needed: bf16 is carried as its raw
// 16 bits and converted with PTX `cvt`, so a machine only needs libnvrtc to build the kernels.
//
// Conventions for every kernel file:
// - activations and weights are bf16 (`bf16`, row-major); arithmetic, norm statistics and softmax
//   statistics are f32; token ids and positions are int32;
// - every element count or index that can exceed 2^31 is a `long long`;
// - a kernel writes every element of its output (tests poison outputs before each run);
// - every entry point starts with hb_pdl_entry() (the NVRTC test checks the PTX of each).

// Programmatic dependent launch (engine/src/cuda/launch.rs, opt-in with HBRIDGE_PDL=1): a kernel
// launched with it may be scheduled before the kernel ahead of it on the stream has finished. So the
// first thing every kernel does: allow the kernel after it to be scheduled (it only runs once all of
// this grid's blocks have started), then wait until the kernel before it has finished and its writes
// are visible. Nothing is read or written before the wait. Without the launch attribute both are no-ops.
__device__ __forceinline__ void hb_pdl_entry() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

typedef unsigned short bf16;  // the upper 16 bits of an IEEE-754 f32
typedef unsigned int bf16x2;  // two bf16, the first element in the low half

__device__ __forceinline__ float bf16_to_f32(bf16 h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even, NaN preserved (what torch's `.to(bfloat16)` does).
__device__ __forceinline__ bf16 f32_to_bf16(float f) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

__device__ __forceinline__ bf16x2 pack_bf16x2(float lo, float hi) {
    unsigned int r;
    // cvt.rn.bf16x2.f32 d, a, b puts a in the upper half and b in the lower half.
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float bf16x2_lo(bf16x2 v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16x2_hi(bf16x2 v) { return __uint_as_float(v & 0xffff0000u); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024). `scratch` holds 32 floats.
// Every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// --- tensor cores (sm_80+ mma.sync; valid on sm_90) -------------------------------------------------

// D += A * B for one 16x8x16 tile: A row-major 16x16 bf16 (4 regs), B col-major 16x8 bf16 (2 regs),
// D 16x8 f32 (4 regs), fragments laid out as the PTX ISA's m16n8k16 figures.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem)));
}

__device__ __forceinline__ void ldmatrix_x2(unsigned (&r)[2], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_addr(smem)));
}

__device__ __forceinline__ void ldmatrix_x2_trans(unsigned (&r)[2], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_addr(smem)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem)));
}

// 16-byte global -> shared copy without a register round trip; `bytes` < 16 zero-fills the rest (used
// for rows past the end and head dims that are not a multiple of 8).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// --- 16-byte bf16 vectors (norm, rope, bridge, elementwise, layout) ----------------------------------
// Memory-bound kernels move 8 bf16 per 16-byte access; launchers pick these paths only after checking
// on the host that every pointer is 16-byte aligned and every row length/stride a multiple of 8.

__device__ __forceinline__ uint4 ld_bf16x8(const bf16* p) { return *reinterpret_cast<const uint4*>(p); }

__device__ __forceinline__ void st_bf16x8(bf16* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

__device__ __forceinline__ void unpack_bf16x8(uint4 v, float (&f)[8]) {
    f[0] = bf16x2_lo(v.x); f[1] = bf16x2_hi(v.x);
    f[2] = bf16x2_lo(v.y); f[3] = bf16x2_hi(v.y);
    f[4] = bf16x2_lo(v.z); f[5] = bf16x2_hi(v.z);
    f[6] = bf16x2_lo(v.w); f[7] = bf16x2_hi(v.w);
}

__device__ __forceinline__ uint4 pack_bf16x8(const float (&f)[8]) {
    uint4 v;
    v.x = pack_bf16x2(f[0], f[1]);
    v.y = pack_bf16x2(f[2], f[3]);
    v.z = pack_bf16x2(f[4], f[5]);
    v.w = pack_bf16x2(f[6], f[7]);
    return v;
}

// The f32 value a bf16 store of `f` would hold (for a result that is stored and also reused).
__device__ __forceinline__ float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// N consecutive bf16 held raw (as loaded), converted to f32 on demand. N == 8 is one 16-byte access
// (the pointer must be 16-byte aligned); any other N is N 2-byte accesses with no alignment needed, the
// fallback for odd sizes and offset pointers.
template <int N>
struct bf16vec {
    bf16 r[N];
    __device__ __forceinline__ void load(const bf16* p) {
#pragma unroll
        for (int i = 0; i < N; ++i) r[i] = p[i];
    }
    __device__ __forceinline__ void store(bf16* p) const {
#pragma unroll
        for (int i = 0; i < N; ++i) p[i] = r[i];
    }
    __device__ __forceinline__ void unpack(float (&f)[N]) const {
#pragma unroll
        for (int i = 0; i < N; ++i) f[i] = bf16_to_f32(r[i]);
    }
    __device__ __forceinline__ void pack(const float (&f)[N]) {
#pragma unroll
        for (int i = 0; i < N; ++i) r[i] = f32_to_bf16(f[i]);
    }
};

template <>
struct bf16vec<8> {
    uint4 r;
    __device__ __forceinline__ void load(const bf16* p) { r = ld_bf16x8(p); }
    __device__ __forceinline__ void store(bf16* p) const { st_bf16x8(p, r); }
    __device__ __forceinline__ void unpack(float (&f)[8]) const { unpack_bf16x8(r, f); }
    __device__ __forceinline__ void pack(const float (&f)[8]) { r = pack_bf16x8(f); }
};

// Load N bf16 at p as f32 / store N f32 at p as bf16 (round to nearest even).
template <int N>
__device__ __forceinline__ void load_f32(const bf16* p, float (&f)[N]) {
    bf16vec<N> v;
    v.load(p);
    v.unpack(f);
}

template <int N>
__device__ __forceinline__ void store_f32(bf16* p, const float (&f)[N]) {
    bf16vec<N> v;
    v.pack(f);
    v.store(p);
}
