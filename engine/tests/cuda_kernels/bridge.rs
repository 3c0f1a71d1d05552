//! GPU tests of kernels/cuda/bridge.cu: the shared-space K/V write (K gets und M-RoPE, V is copied) from
//! a fused K|V projection output into slots of wider joint K/V buffers.

use super::common::{self, Rng, BF16_TOL};
use super::elementwise::{exact, ints, place, poisoned};
use super::rope::{mrope_positions, mrope_ref, rows_of};
use hbridge_engine::cuda::ops::bridge::{self, BridgeKvArgs};

#[test]
fn bridge_kv_write_matches_f64() {
    let Some(gpu) = common::gpu("bridge::bridge_kv_write_matches_f64") else {
        return;
    };
    let mut rng = Rng::fresh("bridge::bridge_kv_write_matches_f64");
    // (n, kv_heads, head_dim, section, extra columns per output row)
    let cases: &[(usize, usize, usize, [usize; 3], usize)] = &[
        (37, 4, 128, [16, 24, 24], 8),
        (1, 4, 128, [16, 24, 24], 0),
        (4112, 4, 128, [16, 24, 24], 128),
        (5, 3, 24, [4, 4, 4], 5),
        (7, 6, 16, [2, 3, 3], 0),
    ];
    for &(n, heads, hd, section, extra) in cases {
        for shift in [0usize, 1] {
            let width = heads * hd;
            // One fused projection output [n, K | V]: k_in and v_in are the same buffer, offset.
            let in_stride = 2 * width;
            let out_stride = width + extra;
            let kv = rng.normal_bf16(n * in_stride, 1.0);
            let pos = mrope_positions(&mut rng, n);
            let (_pos_buf, pp) = ints(&gpu, &pos);
            let pkv = place(&gpu, &kv, shift);
            let (k_out, v_out) = (
                poisoned(&gpu, n * out_stride, shift),
                poisoned(&gpu, n * out_stride, shift),
            );
            let theta = 1e6;
            bridge::bridge_kv_write(
                &gpu,
                &BridgeKvArgs {
                    k_in: pkv.ptr,
                    v_in: pkv.ptr.offset(width, 2),
                    in_row_stride: in_stride,
                    positions: pp,
                    k_out: k_out.ptr,
                    v_out: v_out.ptr,
                    out_row_stride: out_stride,
                    n,
                    kv_heads: heads,
                    head_dim: hd,
                    section,
                    theta,
                },
            )
            .unwrap();
            let case = format!(
                "bridge_kv n={n} kv_heads={heads} d={hd} out_stride={out_stride} shift={shift}"
            );
            let want_k = mrope_ref(&kv, in_stride, &pos, n, heads, hd, section, theta);
            let got_k = common::down(&gpu, k_out.ptr, n * out_stride);
            common::check(
                &format!("{case} K"),
                &rows_of(&got_k, n, width, out_stride),
                &want_k,
                BF16_TOL,
            );
            let want_v: Vec<f32> = (0..n)
                .flat_map(|i| kv[i * in_stride + width..(i + 1) * in_stride].to_vec())
                .collect();
            let got_v = common::down(&gpu, v_out.ptr, n * out_stride);
            exact(
                &format!("{case} V"),
                &rows_of(&got_v, n, width, out_stride),
                &want_v,
            );
            if extra != 0 {
                assert!(
                    got_k[width].is_nan() && got_v[out_stride - 1].is_nan(),
                    "{case}: wrote between rows"
                );
            }
        }
    }
}

#[test]
fn launchers_validate() {
    let Some(gpu) = common::gpu("bridge::launchers_validate") else {
        return;
    };
    let x = place(&gpu, &[1.0; 64], 0);
    let args = BridgeKvArgs {
        k_in: x.ptr,
        v_in: x.ptr,
        in_row_stride: 16,
        positions: x.ptr,
        k_out: x.ptr,
        v_out: x.ptr,
        out_row_stride: 16,
        n: 1,
        kv_heads: 1,
        head_dim: 16,
        section: [2, 2, 2],
        theta: 1e6,
    };
    assert!(bridge::bridge_kv_write(&gpu, &args).is_err());
    assert!(bridge::bridge_kv_write(
        &gpu,
        &BridgeKvArgs {
            section: [2, 3, 3],
            out_row_stride: 8,
            ..args
        }
    )
    .is_err());
    bridge::bridge_kv_write(&gpu, &BridgeKvArgs { n: 0, ..args }).unwrap();
    gpu.synchronize().unwrap();
}
