// The CPU's AVX-512 FMA ceiling, for the CPU rows of docs/BENCHMARKS.md: each thread runs 12 independent
// chains of zmm FMAs (more than latency x ports), nothing else.
//   gcc -O3 -mavx512f -pthread scripts/cpu_fma_peak.c -o /tmp/cpu_fma_peak && /tmp/cpu_fma_peak 2
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ITERS 2400000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void* run(void* out) {
    __m512 a[12];
    const __m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-8f);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long k = 0; k < ITERS / 12; k++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
    float s = 0;
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(a[i]);
    *(float*)out = s;  // keeps the chains live
    return 0;
}

int main(int argc, char** argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1;
    if (n < 1 || n > 64) return 1;
    pthread_t t[64];
    float r[64];
    double t0 = now();
    for (int i = 0; i < n; i++) pthread_create(&t[i], 0, run, &r[i]);
    for (int i = 0; i < n; i++) pthread_join(t[i], 0);
    double dt = now() - t0;
    printf("%d thread(s): %.1f GFLOP/s f32 (%.3f s)\n", n, (double)n * (ITERS / 12) * 12 * 16 * 2 / dt / 1e9, dt);
    return 0;
}
