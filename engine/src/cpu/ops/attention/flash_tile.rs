//! The tile contract the flash path's kernel sets implement (`flash_avx512.rs`, `flash_avx2.rs`):
//! six query rows by 64 keys (scores) or 64 of the head's columns (P V), the packed layouts they
//! read, and the softmax step on a block's scores.

/// Rows of one tile.
pub(super) const TILE_ROWS: usize = 6;
/// Columns of one tile: keys for scores, head-dimension columns for P V.
pub(super) const TILE_COLS: usize = 64;

/// One depth pass of a row tile's scores against a block of 64 keys: `s[i, 0..64] = (s[i, ..] if
/// accumulate else 0) + sum_e q[e*6 + i] * k[e*64 + 0..64]` for `e < depth` and the six rows `i`.
#[derive(Clone, Copy)]
pub(super) struct ScorePass {
    /// The tile's queries for the pass, packed `[depth][6]`.
    pub q: *const f32,
    /// The block's keys for the pass, packed `[depth][64]`.
    pub k: *const f32,
    pub depth: usize,
    /// Six rows of 64 scores, `lds` apart.
    pub s: *mut f32,
    pub lds: usize,
    /// Add to the scores already in `s` (a later depth pass).
    pub accumulate: bool,
}

/// One instruction set's kernels.
pub(super) trait Kernels {
    /// Computes and stores `p`'s scores: a depth pass before a block's last.
    ///
    /// # Safety
    /// The CPU has the set's instructions; `p.q` readable for `6*depth` values, `p.k` for
    /// `64*depth`, `p.s` readable and writable for six rows of 64 values `lds` apart.
    unsafe fn score_tile(p: &ScorePass);

    /// A block's last depth pass `p` as [`Kernels::score_tile`], then each row's softmax step: row
    /// `i` sees its first `live[i]` keys of the block; with `m` the larger of `max[i]` and its
    /// largest live score, `s[i, c] = exp(score - m)` for live keys and 0 for the rest, `max[i] =
    /// m`, and the row's sum of exponentials (f32, at most 64 values) comes back. A row with no live
    /// key gets zeros, sum 0 and its max unchanged. A NaN score makes the row's sum NaN.
    ///
    /// # Safety
    /// As [`Kernels::score_tile`]; `live[i] <= 64`.
    unsafe fn score_softmax_tile(
        p: &ScorePass,
        live: &[usize; TILE_ROWS],
        max: &mut [f32; TILE_ROWS],
    ) -> [f32; TILE_ROWS];

    /// `o[i, 0..64] += sum_c p[i*ldp + c] * v[c*64 + 0..64]`, `c < keys`, for the six rows `i`; `o`
    /// rows `ldo` apart.
    ///
    /// # Safety
    /// The CPU has the set's instructions; `p` readable for six rows of `keys` values `ldp` apart,
    /// `v` for `64*keys` values, `o` readable and writable for six rows of 64 values `ldo` apart.
    unsafe fn pv_tile(
        p: *const f32,
        ldp: usize,
        v: *const f32,
        keys: usize,
        o: *mut f32,
        ldo: usize,
    );
}

/// `pub(super) struct $set;` and its [`Kernels`] impl, forwarding to the calling module's
/// `score_tile`, `score_softmax_tile` and `pv_tile` (each with the same contract as the trait's).
macro_rules! kernel_set {
    ($(#[$doc:meta])* $set:ident) => {
        $(#[$doc])*
        pub(super) struct $set;

        impl Kernels for $set {
            unsafe fn score_tile(p: &ScorePass) {
                // SAFETY: forwarded from the caller.
                unsafe { score_tile(p) }
            }

            unsafe fn score_softmax_tile(
                p: &ScorePass,
                live: &[usize; TILE_ROWS],
                max: &mut [f32; TILE_ROWS],
            ) -> [f32; TILE_ROWS] {
                // SAFETY: forwarded from the caller.
                unsafe { score_softmax_tile(p, live, max) }
            }

            unsafe fn pv_tile(
                p: *const f32,
                ldp: usize,
                v: *const f32,
                keys: usize,
                o: *mut f32,
                ldo: usize,
            ) {
                // SAFETY: forwarded from the caller.
                unsafe { pv_tile(p, ldp, v, keys, o, ldo) }
            }
        }
    };
}
pub(super) use kernel_set;
