// timestep.cu: the DiT's sinusoidal timestep features (DESIGN.md section 3).
//
// timestep_features: reads t, one f32 on the device (so a captured CUDA graph picks up each step's
//   value from memory); writes out bf16 [2*half] = [cos e, sin e], e_k = scale * t *
//   exp(-ln(10000) * k / half), k < half. Everything in f64 (at timestep_scale 1000 the f32 arguments
//   alone are off by ~1e-4), rounded to f32 and then to bf16, the same two roundings as the CPU path
//   followed by an upload. One block of 128 threads (half = 128 for the real model); grid-stride so any
//   half works. Negligible cost: 2*half outputs.
//
// History: v1 (this file) replaces the placeholder.

extern "C" __global__ void __launch_bounds__(128) timestep_features(const float* t, bf16* out, int half, double scale) {
    hb_pdl_entry();
    const double st = scale * (double)t[0];
    const double ln = log(10000.0);
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < half; k += gridDim.x * blockDim.x) {
        const double e = st * exp(-ln * (double)k / (double)half);
        double s, c;
        sincos(e, &s, &c);
        out[k] = f32_to_bf16((float)c);
        out[half + k] = f32_to_bf16((float)s);
    }
}
