//! Position ids, computed on the host from the request shape (DESIGN.md 2, 3 and 5).

/// Und M-RoPE positions `[3, L]` (rows t, h, w) of a text-only context: token p -> (p, p, p).
pub fn text_positions(len: usize) -> Vec<i32> {
    (0..3).flat_map(|_| 0..len as i32).collect()
}

/// Gen RoPE positions `[N, 3]`: the `n_pre` tokens before the images at (i, i, i); image j of patch grid
/// `(h_j, w_j)` (the last one is the noisy latent) at (shift_j, row, col), `shift_0 = n_pre`,
/// `shift_{j+1} = shift_j + max(h_j, w_j)`.
pub fn gen_positions(n_pre: usize, grids: &[(usize, usize)]) -> Vec<i32> {
    let mut out = Vec::new();
    for i in 0..n_pre as i32 {
        out.extend([i, i, i]);
    }
    let mut shift = n_pre;
    for &(h, w) in grids {
        for r in 0..h {
            for c in 0..w {
                out.extend([shift as i32, r as i32, c as i32]);
            }
        }
        shift += h.max(w);
    }
    out
}

/// Shared (und M-RoPE) positions `[3, N]` of one branch's gen tokens: SRT i at `s0 + i` on all three
/// axes, then each image on its patch grid as a Qwen2.5-VL image starting at `s0 + n_srt`, the next
/// image at `max(previous ids) + 1`. `s0` is the branch's largest context position + 1.
pub fn shared_positions(s0: usize, n_srt: usize, grids: &[(usize, usize)]) -> Vec<i32> {
    let mut rows: [Vec<i32>; 3] = Default::default();
    for i in 0..n_srt {
        for row in rows.iter_mut() {
            row.push((s0 + i) as i32);
        }
    }
    let mut s = s0 + n_srt;
    for &(h, w) in grids {
        for r in 0..h {
            for c in 0..w {
                rows[0].push(s as i32);
                rows[1].push((s + r) as i32);
                rows[2].push((s + c) as i32);
            }
        }
        s += h.max(w);
    }
    rows.concat()
}
