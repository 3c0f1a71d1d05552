// layout.cu: data movement on bf16 tensors: row copies and gathers (copy2d, embedding lookup), tiled
// transpose, patchify / unpatchify, nearest x2 upsampling and im2col. Everything here is memory-bound:
// the kernels read each input element about once (im2col: k*k times, from cache) and write each output
// element once.
//
// copy_rows: dst[r, :cols] = src[src_row(r), :cols], src_row = r (copy2d) or ids[r] (embedding gather;
//   ids outside [0, vocab) when vocab > 0 give a zero row instead of a read out of bounds). Launch: 256
//   threads = rpb rows x tpr threads (tpr = 1 << tpr_log2), grid.y strips of tpr column units, grid.x
//   blocks striding over rows; a unit is 8 elements (vec: cols and both strides multiples of 8, pointers
//   16-byte aligned, host-checked) or 1.
// write_rows: state[row0 + r, :cols] = src[r, :cols] for r < rows, row0 = *row read on the device (a
//   captured decode step writes its K/V wherever the host's latest cache length says); nothing is
//   written when row0 < 0 or row0 + rows > capacity (the host validates first, so this is a guard, not
//   a path). Same tiling and units as copy_rows; rows is small (one token per decode step).
// transpose2d: [a, b] -> [b, a] through a 32x32 tile in shared memory (32-bit cells, rows padded to 33, so
//   neither the row-wise writes nor the column-wise reads of the tile conflict); block 32x8, each
//   thread moves 4 elements; grid (ceil(b/32), min(ceil(a/32), 65535)), looping over tile rows beyond.
//   Both global sides are coalesced (64 B per warp per row).
// patchify / unpatchify: per output element gathers (index arithmetic with divisions); used on
//   latents (16 x 128 x 128 at 1024^2), so simplicity wins over vector width. Grid-stride, 256 threads.
// upsample2x: [c, h, w] -> [c, 2h, 2w]; unit = 8 input elements of one input row (vec: w % 8 == 0,
//   aligned) -> two 16-byte stores in each of the two output rows it feeds (output rows 2r and 2r+1 for
//   input row r), or 1 input element -> 4 scalar stores. Same row tiling as copy_rows.
// im2col: x [cin, h, w] -> cols [npix, cin*k*k] for output pixels [pix0, pix0 + npix), features
//   (ci, ky, kx); zero outside the image. Unit = 8 consecutive features of one pixel (vec: (cin*k*k) % 8
//   == 0 and cols 16-byte aligned) -> one 16-byte store, or 1 feature. Column units outer (their
//   (ci, ky, kx) decoded once), pixels inner. Reads are 2-byte gathers that neighbouring pixels share in
//   L1/L2.
//
// History: v1 (this file) replaces the placeholder.

// Thread placement for a rows x units tiling (see the header). Every quantity is a shift or a mask.
struct RowTile {
    long long lane, sub, rpb, tpr;
    __device__ __forceinline__ RowTile(int tpr_log2) {
        tpr = 1LL << tpr_log2;
        lane = threadIdx.x & (tpr - 1);
        sub = threadIdx.x >> tpr_log2;
        rpb = blockDim.x >> tpr_log2;
    }
    __device__ __forceinline__ long long unit0() const { return (long long)blockIdx.y * tpr + lane; }
    __device__ __forceinline__ long long unit_step() const { return (long long)gridDim.y * tpr; }
    __device__ __forceinline__ long long row0() const { return (long long)blockIdx.x * rpb + sub; }
    __device__ __forceinline__ long long row_step() const { return (long long)gridDim.x * rpb; }
};

template <int VEC>
__device__ __forceinline__ void copy_rows_impl(const bf16* src, long long src_stride, bf16* dst, long long dst_stride,
                                               long long rows, long long cols, const int* ids, long long vocab,
                                               int tpr_log2) {
    const RowTile t(tpr_log2);
    const long long units = cols / VEC;
    for (long long u = t.unit0(); u < units; u += t.unit_step()) {
        const long long col = u * VEC;
        for (long long r = t.row0(); r < rows; r += t.row_step()) {
            long long sr = r;
            bool ok = true;
            if (ids != nullptr) {
                sr = ids[r];
                ok = sr >= 0 && (vocab <= 0 || sr < vocab);
            }
            bf16vec<VEC> v;
            if (ok) {
                v.load(src + sr * src_stride + col);
            } else {
                float z[VEC];
#pragma unroll
                for (int j = 0; j < VEC; ++j) z[j] = 0.0f;
                v.pack(z);
            }
            v.store(dst + r * dst_stride + col);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
    copy_rows(const bf16* src, long long src_stride, bf16* dst, long long dst_stride, long long rows, long long cols,
              const int* ids, long long vocab, int tpr_log2, int vec) {
    hb_pdl_entry();
    if (vec) copy_rows_impl<8>(src, src_stride, dst, dst_stride, rows, cols, ids, vocab, tpr_log2);
    else copy_rows_impl<1>(src, src_stride, dst, dst_stride, rows, cols, ids, vocab, tpr_log2);
}

extern "C" __global__ void __launch_bounds__(256)
    write_rows(const bf16* src, bf16* state, const int* row, long long rows, long long cols, long long capacity,
               int tpr_log2, int vec) {
    hb_pdl_entry();
    const long long r0 = *row;
    if (r0 < 0 || r0 + rows > capacity) return;
    bf16* dst = state + r0 * cols;
    if (vec) copy_rows_impl<8>(src, cols, dst, cols, rows, cols, nullptr, 0, tpr_log2);
    else copy_rows_impl<1>(src, cols, dst, cols, rows, cols, nullptr, 0, tpr_log2);
}

extern "C" __global__ void __launch_bounds__(256) transpose2d(const bf16* x, bf16* out, long long a, long long b) {
    hb_pdl_entry();
    __shared__ unsigned tile[32][33];
    const long long tiles_a = (a + 31) >> 5;
    const long long j0 = (long long)blockIdx.x * 32;
    const int tx = threadIdx.x, ty = threadIdx.y;
    for (long long ta = blockIdx.y; ta < tiles_a; ta += gridDim.y) {
        const long long i0 = ta * 32;
#pragma unroll
        for (int r = ty; r < 32; r += 8) {
            const long long i = i0 + r, j = j0 + tx;
            if (i < a && j < b) tile[r][tx] = x[i * b + j];
        }
        __syncthreads();
#pragma unroll
        for (int r = ty; r < 32; r += 8) {
            const long long j = j0 + r, i = i0 + tx;
            if (j < b && i < a) out[j * a + i] = (bf16)tile[tx][r];
        }
        __syncthreads();
    }
}

// out [(h/p)*(w/p), p*p*c]: token (ti, tj) row-major, feature (p1*p + p2)*c + ch.
extern "C" __global__ void __launch_bounds__(256)
    patchify(const bf16* x, bf16* out, long long c, long long h, long long w, long long p) {
    hb_pdl_entry();
    const long long wt = w / p, f = p * p * c, total = (h / p) * wt * f;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const long long t = e / f, fi = e - t * f;
        const long long q = fi / c, ch = fi - q * c;
        const long long p1 = q / p, p2 = q - p1 * p;
        const long long ti = t / wt, tj = t - ti * wt;
        out[e] = x[(ch * h + ti * p + p1) * w + tj * p + p2];
    }
}

// out [c, h, w] from tokens [(h/p)*(w/p), p*p*c].
extern "C" __global__ void __launch_bounds__(256)
    unpatchify(const bf16* x, bf16* out, long long c, long long h, long long w, long long p) {
    hb_pdl_entry();
    const long long wt = w / p, f = p * p * c, total = c * h * w;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const long long row = e / w, xx = e - row * w;
        const long long ch = row / h, y = row - ch * h;
        const long long ti = y / p, p1 = y - ti * p;
        const long long tj = xx / p, p2 = xx - tj * p;
        out[e] = x[(ti * wt + tj) * f + (p1 * p + p2) * c + ch];
    }
}

// Two copies of each bf16 of a 32-bit pair: (lo, lo) and (hi, hi).
__device__ __forceinline__ unsigned dup_lo(unsigned v) { return (v & 0xffffu) | (v << 16); }
__device__ __forceinline__ unsigned dup_hi(unsigned v) { return (v >> 16) | (v & 0xffff0000u); }

// rows = c*h input rows of w elements; output row 2r + dy (dy = 0, 1) of 2w elements is input row r
// widened, since channel ch's row y lands on output rows ch*2h + 2y + dy = 2(ch*h + y) + dy.
extern "C" __global__ void __launch_bounds__(256)
    upsample2x(const bf16* x, bf16* out, long long rows, long long w, int tpr_log2, int vec) {
    hb_pdl_entry();
    const RowTile t(tpr_log2);
    const long long w2 = 2 * w;
    if (vec) {
        const long long units = w >> 3;
        for (long long u = t.unit0(); u < units; u += t.unit_step()) {
            for (long long r = t.row0(); r < rows; r += t.row_step()) {
                const uint4 v = ld_bf16x8(x + r * w + u * 8);
                const uint4 lo = make_uint4(dup_lo(v.x), dup_hi(v.x), dup_lo(v.y), dup_hi(v.y));
                const uint4 hi = make_uint4(dup_lo(v.z), dup_hi(v.z), dup_lo(v.w), dup_hi(v.w));
                bf16* o = out + 2 * r * w2 + u * 16;
                st_bf16x8(o, lo);
                st_bf16x8(o + 8, hi);
                st_bf16x8(o + w2, lo);
                st_bf16x8(o + w2 + 8, hi);
            }
        }
    } else {
        for (long long u = t.unit0(); u < w; u += t.unit_step()) {
            for (long long r = t.row0(); r < rows; r += t.row_step()) {
                const bf16 v = x[r * w + u];
                bf16* o = out + 2 * r * w2 + 2 * u;
                o[0] = v;
                o[1] = v;
                o[w2] = v;
                o[w2 + 1] = v;
            }
        }
    }
}

template <int VEC>
__device__ __forceinline__ void im2col_impl(const bf16* x, bf16* cols, int cin, int h, int w, int k, int stride,
                                            int pad, int out_w, long long pix0, long long npix, int tpr_log2) {
    const RowTile t(tpr_log2);
    const int kk = k * k;
    const long long feats = (long long)cin * kk, units = feats / VEC;
    for (long long u = t.unit0(); u < units; u += t.unit_step()) {
        // Decode (ci, ky, kx) of the unit's first feature once, then step it along for the others.
        const int f0 = (int)(u * VEC);
        int ci = f0 / kk;
        int rem = f0 - ci * kk;
        int ky = rem / k;
        int kx = rem - ky * k;
        long long plane[VEC];
        int dy[VEC], dx[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            plane[j] = (long long)ci * h;
            dy[j] = ky - pad;
            dx[j] = kx - pad;
            if (++kx == k) {
                kx = 0;
                if (++ky == k) {
                    ky = 0;
                    ++ci;
                }
            }
        }
        for (long long r = t.row0(); r < npix; r += t.row_step()) {
            const long long pix = pix0 + r;
            const long long oy = pix / out_w;
            const int ox = (int)(pix - oy * out_w);
            const long long iy0 = oy * stride;
            const int ix0 = ox * stride;
            float f[VEC];
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
                const long long iy = iy0 + dy[j];
                const int ix = ix0 + dx[j];
                f[j] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? bf16_to_f32(x[(plane[j] + iy) * w + ix]) : 0.0f;
            }
            store_f32<VEC>(cols + r * feats + u * VEC, f);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
    im2col(const bf16* x, bf16* cols, int cin, int h, int w, int k, int stride, int pad, int out_w, long long pix0,
           long long npix, int tpr_log2, int vec) {
    hb_pdl_entry();
    if (vec) im2col_impl<8>(x, cols, cin, h, w, k, stride, pad, out_w, pix0, npix, tpr_log2);
    else im2col_impl<1>(x, cols, cin, h, w, k, stride, pad, out_w, pix0, npix, tpr_log2);
}
