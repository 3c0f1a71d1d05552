//! GEMMs through cuBLASLt: bf16 operands, f32 accumulation, bias fused in the epilogue where cuBLASLt
//! offers it.
//!
//! The graph is row-major; cuBLASLt is column-major. A row-major `[r, c]` buffer with leading dimension
//! `ld` is the column-major `c x r` matrix (its transpose) with the same `ld`, so the row-major product
//! `C[m, n] = op(A)[m, k] op(B)[k, n]` is computed as the column-major `C^T (n x m) = op(B)^T op(A)^T`:
//! cuBLASLt's first operand is our B buffer, its second our A buffer, and nothing is copied. The mapping
//! is the pure function [`problem`], unit-tested against a CPU interpretation of cuBLASLt's rules.

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::unsupported;

/// `y [n, out] = x [n, in] @ w[out, in]^T (+ bias [out])`, all bf16 row-major (nn.Linear layout).
#[derive(Debug, Clone, Copy)]
pub struct LinearArgs {
    pub x: DevPtr,
    pub w: DevPtr,
    pub bias: Option<DevPtr>,
    pub y: DevPtr,
    pub n: usize,
    pub in_features: usize,
    pub out_features: usize,
}

/// Sizes, transposes and leading dimensions of a row-major GEMM `C[m, n] (+)= op(A)[m, k] op(B)[k, n]`.
/// `a_trans`: A is stored `[k, m]` (else `[m, k]`); `b_trans`: B is stored `[n, k]` (else `[k, n]`).
/// Leading dimensions count elements between consecutive stored rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_trans: bool,
    pub lda: usize,
    pub b_trans: bool,
    pub ldb: usize,
    pub ldc: usize,
}

/// A row-major GEMM on bf16 buffers: `C = op(A) op(B) (+ bias) (+ C when accumulate)`. `bias` has `n`
/// elements and is added to every row (cuBLASLt's BIAS epilogue).
#[derive(Debug, Clone, Copy)]
pub struct GemmArgs {
    pub shape: GemmShape,
    pub a: DevPtr,
    pub b: DevPtr,
    pub c: DevPtr,
    pub bias: Option<DevPtr>,
    /// `C += ...` (beta = 1) instead of `C = ...` (beta = 0).
    pub accumulate: bool,
}

/// One operand as cuBLASLt sees it: a column-major `rows x cols` matrix with leading dimension `ld`,
/// used transposed (`trans`) or as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LtOperand {
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
    pub trans: bool,
}

/// The column-major problem `D (m x n) = op(A) (m x k) op(B) (k x n)` handed to cuBLASLt (its m, n, k,
/// not the row-major ones). `a` is the row-major B buffer, `b` the row-major A buffer, `d` the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LtProblem {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub a: LtOperand,
    pub b: LtOperand,
    pub d: LtOperand,
}

/// Maps a row-major GEMM to cuBLASLt's column-major problem, or says which leading dimension is too
/// small for its rows.
pub fn problem(s: &GemmShape) -> Result<LtProblem, String> {
    let (a_row, b_row) = (
        if s.a_trans { s.m } else { s.k },
        if s.b_trans { s.k } else { s.n },
    );
    for (what, ld, row) in [
        ("lda", s.lda, a_row),
        ("ldb", s.ldb, b_row),
        ("ldc", s.ldc, s.n),
    ] {
        if ld < row.max(1) {
            return Err(format!("{what} {ld} is shorter than a stored row of {row}"));
        }
    }
    let (m, n, k) = (s.m as u64, s.n as u64, s.k as u64);
    // Row-major B [k, n] is column-major n x k = B^T: used as is. Row-major stored [n, k] (b_trans) is
    // column-major k x n = B: transposed to give B^T.
    let a = if s.b_trans {
        LtOperand {
            rows: k,
            cols: n,
            ld: s.ldb as i64,
            trans: true,
        }
    } else {
        LtOperand {
            rows: n,
            cols: k,
            ld: s.ldb as i64,
            trans: false,
        }
    };
    // Row-major A [m, k] is column-major k x m = A^T: as is. Stored [k, m] is m x k = A: transposed.
    let b = if s.a_trans {
        LtOperand {
            rows: m,
            cols: k,
            ld: s.lda as i64,
            trans: true,
        }
    } else {
        LtOperand {
            rows: k,
            cols: m,
            ld: s.lda as i64,
            trans: false,
        }
    };
    let d = LtOperand {
        rows: n,
        cols: m,
        ld: s.ldc as i64,
        trans: false,
    };
    Ok(LtProblem {
        m: n,
        n: m,
        k,
        a,
        b,
        d,
    })
}

/// The alignment in bytes (a power of two, at most 256) that every row of an operand at `ptr` with
/// leading dimension `ld` elements of `elem_bytes` has: what cuBLASLt's heuristic may assume about it.
pub fn alignment(ptr: DevPtr, ld: usize, elem_bytes: usize) -> u32 {
    let pow2 = |x: u64| {
        if x == 0 {
            256
        } else {
            1u64 << x.trailing_zeros().min(8)
        }
    };
    pow2(ptr.0).min(pow2((ld * elem_bytes) as u64)) as u32
}

/// `y = x @ w^T (+ bias)`: cuBLASLt, or the streaming few-row kernel of `gemv` when `HBRIDGE_GEMV=1`
/// and it applies.
pub fn linear(gpu: &Gpu, args: &LinearArgs) -> CudaResult<()> {
    if super::gemv::enabled() && super::gemv::applies(args) {
        return super::gemv::gemv(gpu, args);
    }
    gemm(
        gpu,
        &GemmArgs {
            shape: GemmShape {
                m: args.n,
                n: args.out_features,
                k: args.in_features,
                a_trans: false,
                lda: args.in_features,
                b_trans: true,
                ldb: args.in_features,
                ldc: args.out_features,
            },
            a: args.x,
            b: args.w,
            c: args.y,
            bias: args.bias,
            accumulate: false,
        },
    )
}

/// A row-major bf16 GEMM (see [`GemmArgs`]). Empty outputs launch nothing; `k = 0` is refused (the
/// product would be the bias alone, which no graph asks for).
pub fn gemm(gpu: &Gpu, args: &GemmArgs) -> CudaResult<()> {
    let s = &args.shape;
    if s.m == 0 || s.n == 0 {
        return Ok(());
    }
    if s.k == 0 {
        return Err(unsupported(
            "gemm",
            format!("{}x{} product over k = 0", s.m, s.n),
        ));
    }
    let p = problem(s).map_err(|e| unsupported("gemm", e))?;
    let align = [
        alignment(args.b, s.ldb, 2),
        alignment(args.a, s.lda, 2),
        alignment(args.c, s.ldc, 2),
    ];
    // The BIAS epilogue is asked for only where C's rows are 16-byte aligned: every biased linear the
    // models have is, and whether cuBLASLt offers an algorithm with the epilogue on a 2-byte aligned
    // D has not been seen on a GPU. Elsewhere the bias is added by a pass over C (packed rows only).
    let bias_apart = args.bias.filter(|_| align[2] < 16 && s.ldc == s.n);
    gpu.blas()?.matmul(
        gpu,
        &super::super::blas::Matmul {
            problem: p,
            align,
            a: args.b,
            b: args.a,
            d: args.c,
            bias: if bias_apart.is_some() {
                None
            } else {
                args.bias
            },
            alpha: 1.0,
            beta: if args.accumulate { 1.0 } else { 0.0 },
            d_f32: false,
        },
    )?;
    match bias_apart {
        Some(bias) => super::elementwise::add(gpu, args.c, bias, args.c, s.m * s.n, s.n),
        None => Ok(()),
    }
}

/// `C (f32) = alpha * op(A) op(B)` on bf16 A and B (row-major, see [`GemmShape`]; `ldc` counts f32
/// elements). The wide-head attention's scores: kept in f32 so the softmax sees unrounded logits.
pub fn gemm_f32_out(
    gpu: &Gpu,
    shape: &GemmShape,
    a: DevPtr,
    b: DevPtr,
    c: DevPtr,
    alpha: f32,
) -> CudaResult<()> {
    let s = shape;
    if s.m == 0 || s.n == 0 {
        return Ok(());
    }
    if s.k == 0 {
        return Err(unsupported(
            "gemm",
            format!("{}x{} product over k = 0", s.m, s.n),
        ));
    }
    let p = problem(s).map_err(|e| unsupported("gemm", e))?;
    let align = [
        alignment(b, s.ldb, 2),
        alignment(a, s.lda, 2),
        alignment(c, s.ldc, 4),
    ];
    gpu.blas()?.matmul(
        gpu,
        &super::super::blas::Matmul {
            problem: p,
            align,
            a: b,
            b: a,
            d: c,
            bias: None,
            alpha,
            beta: 0.0,
            d_f32: true,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element `(r, c)` of a column-major operand buffer, after `op`, exactly as cuBLAS reads it.
    fn at(o: &LtOperand, buf: &[f32], r: u64, c: u64) -> f32 {
        let (r, c) = if o.trans { (c, r) } else { (r, c) };
        assert!(
            r < o.rows && c < o.cols,
            "index outside the declared layout"
        );
        buf[(r + c * o.ld as u64) as usize]
    }

    /// cuBLAS's rules: op(A) is m x k, op(B) is k x n, D is m x n, every ld covers its rows.
    fn lt_reference(p: &LtProblem, a: &[f32], b: &[f32], d: &mut [f32]) {
        let dims = |o: &LtOperand| {
            if o.trans {
                (o.cols, o.rows)
            } else {
                (o.rows, o.cols)
            }
        };
        assert_eq!(dims(&p.a), (p.m, p.k), "op(A) shape");
        assert_eq!(dims(&p.b), (p.k, p.n), "op(B) shape");
        assert_eq!((p.d.rows, p.d.cols), (p.m, p.n), "D shape");
        for o in [&p.a, &p.b, &p.d] {
            assert!(o.ld as u64 >= o.rows, "ld below rows");
        }
        for i in 0..p.m {
            for j in 0..p.n {
                let s: f32 = (0..p.k)
                    .map(|l| at(&p.a, a, i, l) * at(&p.b, b, l, j))
                    .sum();
                d[(i + j * p.d.ld as u64) as usize] = s;
            }
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32 * 2654435761u32) ^ seed) % 97) as f32 / 13.0 - 3.0)
            .collect()
    }

    /// Every transpose combination with padded leading dimensions: the column-major problem computes
    /// the row-major product.
    #[test]
    fn problem_computes_the_row_major_product() {
        let (m, n, k) = (5, 7, 3);
        for a_trans in [false, true] {
            for b_trans in [false, true] {
                let (a_rows, a_cols) = if a_trans { (k, m) } else { (m, k) };
                let (b_rows, b_cols) = if b_trans { (n, k) } else { (k, n) };
                let s = GemmShape {
                    m,
                    n,
                    k,
                    a_trans,
                    lda: a_cols + 2,
                    b_trans,
                    ldb: b_cols + 1,
                    ldc: n + 3,
                };
                let a = values(a_rows * s.lda, 1);
                let b = values(b_rows * s.ldb, 2);
                let p = problem(&s).unwrap();
                let mut c = vec![f32::NAN; m * s.ldc];
                // cuBLASLt's first operand is our B buffer, its second our A buffer.
                lt_reference(&p, &b, &a, &mut c);
                for i in 0..m {
                    for j in 0..n {
                        let av = |r: usize, l: usize| {
                            if a_trans {
                                a[l * s.lda + r]
                            } else {
                                a[r * s.lda + l]
                            }
                        };
                        let bv = |l: usize, c: usize| {
                            if b_trans {
                                b[c * s.ldb + l]
                            } else {
                                b[l * s.ldb + c]
                            }
                        };
                        let want: f32 = (0..k).map(|l| av(i, l) * bv(l, j)).sum();
                        assert_eq!(
                            c[i * s.ldc + j],
                            want,
                            "a_trans {a_trans} b_trans {b_trans} ({i},{j})"
                        );
                    }
                }
            }
        }
    }

    /// nn.Linear: `C(out x n) = W^T (op T on w, ld in) * X (op N, ld in)`, ldc = out.
    #[test]
    fn linear_maps_to_the_documented_problem() {
        let s = GemmShape {
            m: 10,
            n: 6,
            k: 4,
            a_trans: false,
            lda: 4,
            b_trans: true,
            ldb: 4,
            ldc: 6,
        };
        let p = problem(&s).unwrap();
        assert_eq!((p.m, p.n, p.k), (6, 10, 4));
        assert_eq!(
            p.a,
            LtOperand {
                rows: 4,
                cols: 6,
                ld: 4,
                trans: true
            }
        );
        assert_eq!(
            p.b,
            LtOperand {
                rows: 4,
                cols: 10,
                ld: 4,
                trans: false
            }
        );
        assert_eq!(
            p.d,
            LtOperand {
                rows: 6,
                cols: 10,
                ld: 6,
                trans: false
            }
        );
    }

    #[test]
    fn short_leading_dimensions_are_refused() {
        let s = GemmShape {
            m: 3,
            n: 4,
            k: 5,
            a_trans: false,
            lda: 4,
            b_trans: true,
            ldb: 5,
            ldc: 4,
        };
        assert!(problem(&s).unwrap_err().contains("lda 4"));
        let s = GemmShape {
            lda: 5,
            ldc: 3,
            ..s
        };
        assert!(problem(&s).unwrap_err().contains("ldc 3"));
    }

    #[test]
    fn alignment_is_the_weakest_row_start() {
        assert_eq!(alignment(DevPtr(0x7f00_0000_0000), 4096, 2), 256);
        assert_eq!(alignment(DevPtr(0x7f00_0000_0020), 4096, 2), 32);
        // A 36-element bf16 row is 72 bytes: rows after the first start 8-byte aligned.
        assert_eq!(alignment(DevPtr(0x7f00_0000_0000), 36, 2), 8);
        assert_eq!(alignment(DevPtr(0x7f00_0000_0012), 64, 2), 2);
        assert_eq!(alignment(DevPtr(0), 0, 2), 256);
    }
}
