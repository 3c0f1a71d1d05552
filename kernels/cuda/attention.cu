// attention.cu: placeholder (being written)
extern "C" __global__ void __launch_bounds__(128) attention_placeholder(float* out, const bf16* in) {
    __shared__ __align__(16) bf16 s[16 * 16];
    cp_async_16(&s[threadIdx.x * 8 % 256], in + threadIdx.x * 8 % 256, 16);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    unsigned a[4], b[2];
    ldmatrix_x4(a, &s[(threadIdx.x % 16) * 16]);
    ldmatrix_x2_trans(b, &s[(threadIdx.x % 16) * 16]);
    float d[4] = {0, 0, 0, 0};
    mma_bf16_16816(d, a, b);
    out[threadIdx.x] = d[0] + d[1] + d[2] + d[3] + expf(d[0]) + tanhf(d[1]) + erff(d[2]) + rsqrtf(d[3]);
}
