//! GPU tests of kernels/cuda/norm.cu: RMSNorm with every combination of its fused options (residual,
//! modulation, the gated-residual epilogue) over the team-per-row and block-per-row kernels (vector and
//! scalar paths), LayerNorm, GroupNorm.

use super::common::{self, round_bf16, Rng, BF16_TOL};
use super::elementwise::{exact, place, poisoned};
use hbridge_engine::cuda::ops::norm::{self, LayerNormArgs, RmsNormArgs};

/// Which fused options a case turns on.
#[derive(Debug, Clone, Copy)]
struct Opts {
    residual: bool,
    residual_out: bool,
    weight: bool,
    scale: bool,
    /// `out = gres + tanh(gate) * norm` (the fused RMSNorm + GateResidual).
    gated: bool,
}

const OPTS: [Opts; 8] = [
    Opts {
        residual: false,
        residual_out: false,
        weight: true,
        scale: false,
        gated: false,
    },
    Opts {
        residual: true,
        residual_out: true,
        weight: true,
        scale: false,
        gated: false,
    },
    Opts {
        residual: false,
        residual_out: false,
        weight: true,
        scale: true,
        gated: false,
    },
    Opts {
        residual: false,
        residual_out: false,
        weight: false,
        scale: false,
        gated: false,
    },
    Opts {
        residual: true,
        residual_out: false,
        weight: false,
        scale: true,
        gated: false,
    },
    Opts {
        residual: false,
        residual_out: true,
        weight: true,
        scale: true,
        gated: false,
    },
    Opts {
        residual: false,
        residual_out: false,
        weight: true,
        scale: false,
        gated: true,
    },
    Opts {
        residual: true,
        residual_out: true,
        weight: false,
        scale: true,
        gated: true,
    },
];

/// f64 reference of the fused RMSNorm; also returns `h` (what residual_out must hold, exactly).
#[allow(clippy::too_many_arguments)]
fn rms_ref(
    x: &[f32],
    res: Option<&[f32]>,
    w: Option<&[f32]>,
    s: Option<&[f32]>,
    rows: usize,
    dim: usize,
    eps: f32,
) -> (Vec<f64>, Vec<f32>) {
    // The residual stream is bf16: the sum is rounded before the statistics (f32 add, then RNE).
    let h: Vec<f32> = match res {
        Some(r) => x.iter().zip(r).map(|(&a, &b)| round_bf16(a + b)).collect(),
        None => x.to_vec(),
    };
    let mut out = vec![0.0f64; rows * dim];
    for r in 0..rows {
        let row = &h[r * dim..(r + 1) * dim];
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for j in 0..dim {
            let mut y = row[j] as f64 * inv;
            if let Some(w) = w {
                y *= w[j] as f64;
            }
            if let Some(s) = s {
                y *= 1.0 + s[j] as f64;
            }
            out[r * dim + j] = y;
        }
    }
    (out, h)
}

fn run_rms(
    gpu: &hbridge_engine::cuda::Gpu,
    rng: &mut Rng,
    (rows, dim): (usize, usize),
    o: Opts,
    shift: usize,
    in_place: bool,
    max_row_blocks: usize,
) {
    let n = rows * dim;
    let eps = 1e-6f32;
    let x = rng.normal_bf16(n, 1.5);
    let res = rng.normal_bf16(n, 1.0);
    let w = rng.normal_bf16(dim, 1.0);
    let s = rng.normal_bf16(dim, 0.5);
    let gres = rng.normal_bf16(n, 1.0);
    let gate = rng.normal_bf16(dim, 1.0);
    let px = place(gpu, &x, shift);
    let pgres = place(gpu, &gres, shift);
    let pgate = place(gpu, &gate, shift);
    let pres = place(gpu, &res, shift);
    let pw = place(gpu, &w, shift);
    let ps = place(gpu, &s, shift);
    let out = poisoned(gpu, n, shift);
    let rout = poisoned(gpu, n, shift);
    let out_ptr = if in_place { px.ptr } else { out.ptr };
    // In place also writes the residual sum over the residual input, as the executor does.
    let rout_ptr = if in_place { pres.ptr } else { rout.ptr };
    let launched = norm::rmsnorm_with_row_blocks(
        gpu,
        &RmsNormArgs {
            x: px.ptr,
            residual: o.residual.then_some(pres.ptr),
            residual_out: o.residual_out.then_some(rout_ptr),
            weight: o.weight.then_some(pw.ptr),
            scale: o.scale.then_some(ps.ptr),
            gated: o.gated.then_some(norm::Gated {
                x: pgres.ptr,
                gate: pgate.ptr,
            }),
            out: out_ptr,
            rows,
            dim,
            eps,
        },
        max_row_blocks,
    );
    if o.gated && (dim % 8 != 0 || shift != 0) {
        // The gated epilogue is v8-only: refused, never run on the scalar path (the executor then
        // runs the pair unfused).
        assert!(
            launched.is_err(),
            "gated dim={dim} shift={shift} must be refused"
        );
        return;
    }
    launched.unwrap();
    let (mut want, h) = rms_ref(
        &x,
        o.residual.then_some(&res[..]),
        o.weight.then_some(&w[..]),
        o.scale.then_some(&s[..]),
        rows,
        dim,
        eps,
    );
    if o.gated {
        for (i, y) in want.iter_mut().enumerate() {
            *y = gres[i] as f64 + (gate[i % dim] as f64).tanh() * *y;
        }
    }
    let case = format!(
        "rmsnorm rows={rows} dim={dim} {o:?} shift={shift} in_place={in_place} max_row_blocks={max_row_blocks}"
    );
    common::check(&case, &common::down(gpu, out_ptr, n), &want, BF16_TOL);
    if o.residual_out {
        exact(
            &format!("{case} residual_out"),
            &common::down(gpu, rout_ptr, n),
            &h,
        );
    }
}

/// Every kernel variant: team rows (QK-norm dims), block rows (hidden sizes), scalar paths for odd dims
/// and misaligned pointers, all six option sets, row counts that do not fill a block.
#[test]
fn rmsnorm_matches_f64() {
    let Some(gpu) = common::gpu("norm::rmsnorm_matches_f64") else {
        return;
    };
    let mut rng = Rng::fresh("norm::rmsnorm_matches_f64");
    let shapes: &[(usize, usize)] = &[
        (1, 12),
        (7, 16),
        (1000, 24),
        (7, 72),
        (1000, 120),
        (333, 128),
        (7, 200),
        (5, 1032),
        (3, 1280),
        (33, 2520),
        (7, 3584 + 8),
        (3, 3585),
        (2, 8200),
        (1, 16384),
    ];
    for &(rows, dim) in shapes {
        for (i, &o) in OPTS.iter().enumerate() {
            // Every option set aligned; misaligned and in place for every other one (they take the
            // scalar path, which is the slow one).
            run_rms(&gpu, &mut rng, (rows, dim), o, 0, false, usize::MAX);
            if i % 2 == 1 {
                run_rms(&gpu, &mut rng, (rows, dim), o, 1, false, usize::MAX);
                run_rms(&gpu, &mut rng, (rows, dim), o, 0, true, usize::MAX);
            }
        }
    }
    // A capped grid (what the kernel benches sweep): each block walks several rows.
    for &(rows, dim) in &[(33usize, 2520usize), (50, 1280), (7, 3592)] {
        for &o in OPTS.iter() {
            run_rms(&gpu, &mut rng, (rows, dim), o, 0, false, 3);
        }
    }
}

#[test]
fn layernorm_matches_f64() {
    let Some(gpu) = common::gpu("norm::layernorm_matches_f64") else {
        return;
    };
    let mut rng = Rng::fresh("norm::layernorm_matches_f64");
    for &(rows, dim) in &[
        (1usize, 12usize),
        (7, 120),
        (1000, 72),
        (33, 2520),
        (3, 3585),
        (5, 3592),
    ] {
        for shift in [0usize, 1] {
            for modulated in [false, true] {
                let n = rows * dim;
                let eps = 1e-6f32;
                // A mean far from zero: the variance must not cancel.
                let x: Vec<f32> = rng
                    .normal_bf16(n, 1.0)
                    .iter()
                    .map(|v| round_bf16(v + 3.0))
                    .collect();
                let s = rng.normal_bf16(dim, 0.5);
                let (px, ps) = (place(&gpu, &x, shift), place(&gpu, &s, shift));
                let out = poisoned(&gpu, n, shift);
                let args = LayerNormArgs {
                    x: px.ptr,
                    scale: modulated.then_some(ps.ptr),
                    out: out.ptr,
                    rows,
                    dim,
                    eps,
                };
                if modulated {
                    norm::layernorm_modulated(&gpu, &args).unwrap();
                } else {
                    norm::layernorm(&gpu, px.ptr, out.ptr, rows, dim, eps).unwrap();
                }
                let mut want = vec![0.0f64; n];
                for r in 0..rows {
                    let row = &x[r * dim..(r + 1) * dim];
                    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
                    let var =
                        row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
                    let inv = 1.0 / (var + eps as f64).sqrt();
                    for j in 0..dim {
                        let m = if modulated { 1.0 + s[j] as f64 } else { 1.0 };
                        want[r * dim + j] = (row[j] as f64 - mean) * inv * m;
                    }
                }
                let case =
                    format!("layernorm rows={rows} dim={dim} shift={shift} modulated={modulated}");
                common::check(&case, &common::down(&gpu, out.ptr, n), &want, BF16_TOL);
            }
        }
    }
}

#[test]
fn group_norm_matches_f64() {
    let Some(gpu) = common::gpu("norm::group_norm_matches_f64") else {
        return;
    };
    let mut rng = Rng::fresh("norm::group_norm_matches_f64");
    // (channels, hw, groups): scalar and vector paths, one and many partial blocks per group, a VAE-like
    // group of 4 channels x 256^2 pixels.
    let shapes: &[(usize, usize, usize)] = &[
        (32, 64, 8),
        (12, 63, 3),
        (6, 1, 2),
        (64, 4096, 32),
        (128, 65536, 32),
        (8, 20000 + 3, 4),
    ];
    for &(c, hw, groups) in shapes {
        for shift in [0usize, 1] {
            for in_place in [false, true] {
                let n = c * hw;
                let eps = 1e-6f32;
                // Per-channel offsets, so each group's mean is far from zero and varies.
                let offs: Vec<f32> = (0..c)
                    .map(|_| (rng.uniform() * 10.0 - 5.0) as f32)
                    .collect();
                let x: Vec<f32> = rng
                    .normal_bf16(n, 1.0)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| round_bf16(v + offs[i / hw]))
                    .collect();
                let w = rng.normal_bf16(c, 1.0);
                let b = rng.normal_bf16(c, 1.0);
                let (px, pw, pb) = (
                    place(&gpu, &x, shift),
                    place(&gpu, &w, shift),
                    place(&gpu, &b, shift),
                );
                let out = poisoned(&gpu, n, shift);
                let out_ptr = if in_place { px.ptr } else { out.ptr };
                norm::group_norm(&gpu, px.ptr, pw.ptr, pb.ptr, out_ptr, c, hw, groups, eps)
                    .unwrap();
                let glen = c / groups * hw;
                let mut want = vec![0.0f64; n];
                for g in 0..groups {
                    let xs = &x[g * glen..(g + 1) * glen];
                    let mean = xs.iter().map(|&v| v as f64).sum::<f64>() / glen as f64;
                    let var =
                        xs.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / glen as f64;
                    let inv = 1.0 / (var + eps as f64).sqrt();
                    for (i, &v) in xs.iter().enumerate() {
                        let ch = g * (c / groups) + i / hw;
                        want[g * glen + i] = (v as f64 - mean) * inv * w[ch] as f64 + b[ch] as f64;
                    }
                }
                let case = format!(
                    "group_norm c={c} hw={hw} groups={groups} shift={shift} in_place={in_place}"
                );
                common::check(&case, &common::down(&gpu, out_ptr, n), &want, BF16_TOL);
            }
        }
    }
}

#[test]
fn launchers_validate() {
    let Some(gpu) = common::gpu("norm::launchers_validate") else {
        return;
    };
    let x = place(&gpu, &[1.0; 64], 0);
    assert!(norm::group_norm(&gpu, x.ptr, x.ptr, x.ptr, x.ptr, 6, 4, 4, 1e-6).is_err());
    assert!(norm::group_norm(&gpu, x.ptr, x.ptr, x.ptr, x.ptr, 6, 4, 0, 1e-6).is_err());
    norm::group_norm(&gpu, x.ptr, x.ptr, x.ptr, x.ptr, 0, 4, 4, 1e-6).unwrap();
    let args = RmsNormArgs {
        x: x.ptr,
        residual: None,
        residual_out: None,
        weight: None,
        scale: None,
        gated: None,
        out: x.ptr,
        rows: 0,
        dim: 64,
        eps: 1e-6,
    };
    norm::rmsnorm(&gpu, &args).unwrap();
    assert!(norm::rmsnorm(
        &gpu,
        &RmsNormArgs {
            rows: 1,
            dim: 40000,
            ..args
        }
    )
    .is_err());
    gpu.synchronize().unwrap();
}
