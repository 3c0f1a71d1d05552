//! Token embedding lookup.

use super::bf16::Widen;
use super::for_rows;

/// `out[i] = table[ids[i]]` for a `[vocab, d]` table; `Err((position, id))` for the first id outside
/// `[0, vocab)`, checked before anything is written. A bf16 table is widened row by row, exactly.
pub(crate) fn embed<T: Widen>(
    table: &[T],
    vocab: usize,
    d: usize,
    ids: &[i32],
    out: &mut [f32],
) -> Result<(), (usize, i32)> {
    if let Some((i, &id)) = ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id < 0 || id as usize >= vocab)
    {
        return Err((i, id));
    }
    for_rows(out, d, 1, |r, o| {
        let id = ids[r] as usize;
        T::widen_row(&table[id * d..(id + 1) * d], o);
    });
    Ok(())
}
