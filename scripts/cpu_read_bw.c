// The CPU's read bandwidth, for the CPU decode row of docs/BENCHMARKS.md: each thread sums its share of
// a 1 GiB f32 buffer four times with 64-byte loads (four independent accumulators).
//   gcc -O3 -mavx512f -pthread scripts/cpu_read_bw.c -o /tmp/cpu_read_bw && /tmp/cpu_read_bw 2
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define N (256L << 20)
#define REPS 4

static float* buf;
static int nth;
static volatile float sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void* run(void* arg) {
    long per = N / nth;
    const float* p = buf + (long)arg * per;
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (int rep = 0; rep < REPS; rep++)
        for (long i = 0; i < per; i += 64) {
            s0 = _mm512_add_ps(s0, _mm512_load_ps(p + i));
            s1 = _mm512_add_ps(s1, _mm512_load_ps(p + i + 16));
            s2 = _mm512_add_ps(s2, _mm512_load_ps(p + i + 32));
            s3 = _mm512_add_ps(s3, _mm512_load_ps(p + i + 48));
        }
    sink = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    return 0;
}

int main(int argc, char** argv) {
    nth = argc > 1 ? atoi(argv[1]) : 1;
    if (nth < 1 || nth > 64) return 1;
    buf = aligned_alloc(64, N * sizeof(float));
    for (long i = 0; i < N; i++) buf[i] = 1.0f;  // touched, so no page faults are timed
    pthread_t t[64];
    double t0 = now();
    for (long i = 0; i < nth; i++) pthread_create(&t[i], 0, run, (void*)i);
    for (int i = 0; i < nth; i++) pthread_join(t[i], 0);
    double dt = now() - t0;
    printf("%d thread(s): %.1f GB/s read\n", nth, (double)REPS * N * sizeof(float) / dt / 1e9);
    return 0;
}
