//! The activation arena, split per node into the output range (mutable) and input ranges (shared).
//!
//! The plan guarantees that a node's output does not overlap its live inputs, but the borrow checker
//! cannot see offsets, so the split goes through a raw pointer. Soundness rests on two checks made here,
//! not on trusting the planner: every range lies inside the arena (validated once per execution), and an
//! input range that overlaps the output is copied out before the output slice is created.

use super::error::EngineError;
use super::validate::{Loc, View};
use hbridge_graph::{Graph, TensorId};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// The activation memory an executor keeps between runs: zeroed, and grown by a fresh allocation
/// rather than `Vec::resize` (no run reads what an earlier one left). `resize` filled every page from
/// one thread: at the 1024x1024 VAE decode (`hbridge --device cpu bench /tmp/hbridge-mid --size 1024
/// --steps 1 --only image`, bf16 mode) 4.0 s became 3.4 s when the nodes faulted the allocator's zero
/// pages in instead; the kernel now faults them in ahead of the nodes ([`populate`]). Transparent
/// huge pages (`madvise`) cut the page faults by 60% there but made the decode slower, 4.8 s, and were
/// dropped.
///
/// It starts on a 64-byte boundary, so every tensor does (the plan's offsets are multiples of 64
/// bytes, `hbridge_graph::plan::ALIGN`): kernels may stream whole cache lines into their outputs.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

/// f32 values per 64 bytes.
const LINE: usize = 16;

impl Arena {
    /// Makes the arena at least `len` values long (never shrinks). Refuses, leaving it as it was,
    /// when the growth needs more memory than the host has available
    /// ([`super::host_memory::available`]).
    pub fn grow(&mut self, len: usize) -> Result<(), EngineError> {
        if len > self.len {
            let need = len.saturating_add(LINE).saturating_mul(4) as u64;
            let held = (self.buf.len() * 4) as u64;
            if let Some(available) = super::host_memory::available() {
                if need > available + held {
                    return Err(EngineError::ActivationMemory {
                        need,
                        available: available + held,
                    });
                }
            }
            // The old buffer goes first, so that growing never holds both.
            self.buf = Vec::new();
            // One line more than asked, to start on a line: an f32 vector is only 4-byte aligned,
            // and asking the allocator for 64 would have it fill the memory itself (no calloc).
            self.buf = vec![0.0; len + LINE];
            self.start = self.buf.as_ptr().align_offset(64).min(LINE);
            self.len = len;
            populate(&mut self.buf);
        }
        Ok(())
    }
}

impl Deref for Arena {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl DerefMut for Arena {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

pub(crate) struct ArenaSplit<'a> {
    /// Inputs that overlapped the output, copied out (only with a planner that breaks its contract).
    copies: Vec<(TensorId, Vec<f32>)>,
    base: *mut f32,
    graph: &'a Graph,
    locs: &'a [Loc<'a>],
    _arena: PhantomData<&'a mut [f32]>,
}

fn overlaps(a: usize, la: usize, b: usize, lb: usize) -> bool {
    la > 0 && lb > 0 && a < b + lb && b < a + la
}

impl<'a> ArenaSplit<'a> {
    /// Prepares the node writing `[out_off, out_off+out_len)` and reading `inputs`.
    /// `arena` must hold every range `locs` gives (validated by `validate::resolve`).
    pub fn new(
        arena: &'a mut [f32],
        graph: &'a Graph,
        locs: &'a [Loc<'a>],
        inputs: &[TensorId],
        out_off: usize,
        out_len: usize,
    ) -> Self {
        let mut copies = Vec::new();
        for &id in inputs {
            if let Loc::Arena(off) = locs[id.index()] {
                let len = graph.tensor(id).numel();
                if overlaps(off, len, out_off, out_len) && !copies.iter().any(|(c, _)| *c == id) {
                    copies.push((id, arena[off..off + len].to_vec()));
                }
            }
        }
        ArenaSplit {
            copies,
            base: arena.as_mut_ptr(),
            graph,
            locs,
            _arena: PhantomData,
        }
    }

    /// The output slice and the input views, borrowed from `self` (the arena stays mutably borrowed by
    /// `self` for as long as they live).
    pub fn split(
        &mut self,
        inputs: &[TensorId],
        out_off: usize,
        out_len: usize,
    ) -> (&mut [f32], Vec<(TensorId, View<'_>)>) {
        // SAFETY: `base` comes from the `&'a mut [f32]` held for `'a` by `self`; `out_off + out_len` and every
        // arena input range lie inside it (checked by `validate::resolve`). The output slice is the only
        // mutable one, and every arena input handed out beside it is disjoint from it: overlapping inputs
        // were copied into `copies` in `new` and are served from there. Shared input slices may overlap
        // each other, which is allowed.
        let out = unsafe { std::slice::from_raw_parts_mut(self.base.add(out_off), out_len) };
        let views = inputs
            .iter()
            .map(|&id| {
                let view = match self.locs[id.index()] {
                    Loc::Host(v) => v,
                    Loc::Arena(off) => match self.copies.iter().find(|(c, _)| *c == id) {
                        Some((_, data)) => View::F32(data),
                        // SAFETY: see above; this range does not overlap `out`.
                        None => View::F32(unsafe {
                            std::slice::from_raw_parts(
                                self.base.add(off),
                                self.graph.tensor(id).numel(),
                            )
                        }),
                    },
                    // Validation rejects reads of unwritten tensors.
                    Loc::Unwritten => View::F32(&[]),
                };
                (id, view)
            })
            .collect();
        (out, views)
    }
}

/// Faults the new buffer's pages in ahead of the nodes, with MADV_POPULATE_WRITE (Linux 5.14+), in
/// 64 MiB pieces over the threads: the kernel maps and clears each page inside one call instead of
/// taking one trap per 4 KiB page from the node that first writes it. A request's first VAE decode at
/// 1024x1024 (the arena grows to ~2.5 GB) took 2.62-2.86 s and takes 2.24-2.66 s (`hbridge --device
/// cpu bench /tmp/hbridge-mid --size 1024 --steps 1 --runs 1 --only image`, bf16, five alternating
/// runs). A hint: where the kernel refuses it, the pages fault in as before.
#[cfg(target_os = "linux")]
fn populate(buf: &mut [f32]) {
    use rayon::prelude::*;
    const PAGE: usize = 4096;
    const PIECE: usize = 64 << 20;
    let (base, bytes) = (buf.as_mut_ptr() as usize, std::mem::size_of_val(buf));
    let (start, end) = (base.next_multiple_of(PAGE), (base + bytes) / PAGE * PAGE);
    if end <= start {
        return;
    }
    let pieces: Vec<usize> = (start..end).step_by(PIECE).collect();
    pieces.into_par_iter().for_each(|at| {
        // SAFETY: `at .. at + len` lies inside `buf` (whole pages between its first and last page
        // boundaries), memory this process owns and may write; the advice only faults those pages
        // in (zeroed, as the allocator's fresh pages already read), changing no value.
        unsafe {
            libc::madvise(
                at as *mut libc::c_void,
                PIECE.min(end - at),
                libc::MADV_POPULATE_WRITE,
            )
        };
    });
}

#[cfg(not(target_os = "linux"))]
fn populate(_buf: &mut [f32]) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Growing past the host's memory is an error that leaves the arena as it was; growing within
    /// it gives zeroed values on a cache line.
    #[test]
    fn grows_within_the_host_memory_only() {
        let mut arena = Arena::default();
        arena.grow(1000).unwrap();
        assert_eq!(arena.len(), 1000);
        assert!(arena.iter().all(|&v| v == 0.0));
        assert_eq!(arena.as_ptr() as usize % 64, 0);
        if super::super::host_memory::available().is_none() {
            eprintln!("SKIPPED the refusal half: no host memory figure here (or the check is off)");
            return;
        }
        match arena.grow(usize::MAX / 8) {
            Err(EngineError::ActivationMemory { need, available }) => {
                assert!(need > available, "{need} <= {available}");
            }
            other => panic!("expected ActivationMemory, got {other:?}"),
        }
        assert_eq!(arena.len(), 1000);
    }
}
