// norm.cu: placeholder (being written)
extern "C" __global__ void norm_placeholder(float* out) { out[threadIdx.x] = bf16_to_f32(f32_to_bf16(1.5f)); }
