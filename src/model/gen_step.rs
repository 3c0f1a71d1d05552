//! The gen step of one branch: its graph (built and planned once per request shape), its inputs (the
//! positions of the SRT or caption tokens, the reference latents and the noisy latent), and its run.

use super::{Model, Outputs, RunError, UndContext};
use hbridge_engine::cpu::HostTensor;
use hbridge_graph::build::{self, names, positions, GenPart, GenStepSpec};
use hbridge_graph::plan::MemoryPlan;
use hbridge_graph::Graph;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Model {
    /// One gen step of one branch at latent `x` `[C, H, W]` and time `t`.
    pub fn gen_step(
        &self,
        x: &HostTensor,
        t: f32,
        ctx: &UndContext,
        trace: bool,
    ) -> Result<Outputs, RunError> {
        self.gen_step_with_refs(x, t, ctx, &[], trace)
    }

    /// `gen_step` with reference latents `refs` (each `[C, H_j, W_j]`, model space) in the gen sequence
    /// between the SRT tokens (hbridge) or the caption (omnigen2) and the noisy latent (DESIGN.md 3).
    /// Traced steps also return `gen.ref_tokens.{j}`.
    pub fn gen_step_with_refs(
        &self,
        x: &HostTensor,
        t: f32,
        ctx: &UndContext,
        refs: &[HostTensor],
        trace: bool,
    ) -> Result<Outputs, RunError> {
        let kind = StepGraph {
            trace,
            ..StepGraph::HOST
        };
        let (prepared, inputs) = self.gen_step_inputs(x, t, ctx, refs, kind)?;
        self.backend.execute(
            &prepared.0,
            &prepared.1,
            &inputs,
            self.cuda_graphs.load(Ordering::Relaxed),
        )
    }

    /// CUDA only: device times of `iters` eager launches and `iters` CUDA graph replays of the gen step
    /// of [`Model::gen_step`] (launches alone, no transfers); `None` on the CPU.
    pub fn time_gen_step(
        &self,
        x: &HostTensor,
        t: f32,
        ctx: &UndContext,
        iters: usize,
    ) -> Result<Option<hbridge_engine::cuda::ReplayTiming>, RunError> {
        let (prepared, inputs) = self.gen_step_inputs(x, t, ctx, &[], StepGraph::HOST)?;
        self.backend
            .time_replay_vs_eager(&prepared.0, &prepared.1, &inputs, iters)
    }

    /// The gen step graph of `spec` with references of `ref_shapes`, built, planned and its weights made
    /// resident the first time a request of this shape needs it.
    pub(super) fn gen_step_graph(
        &self,
        spec: &GenStepSpec,
        ref_shapes: &[[usize; 3]],
        part: GenPart,
    ) -> Result<Arc<(Graph, MemoryPlan)>, RunError> {
        self.prepared(
            format!("gen_step {part:?} {spec:?} refs {ref_shapes:?}"),
            || build::gen_step_part(&self.checkpoint.config, spec, ref_shapes, part),
        )
    }

    /// The built gen step graph (cached by request shape) and its inputs.
    pub(super) fn gen_step_inputs(
        &self,
        x: &HostTensor,
        t: f32,
        ctx: &UndContext,
        refs: &[HostTensor],
        kind: StepGraph,
    ) -> Result<(Arc<(Graph, MemoryPlan)>, Outputs), RunError> {
        let StepGraph {
            trace,
            resident,
            part,
        } = kind;
        let config = &self.checkpoint.config;
        let [c, h, w] = match x.shape.as_slice() {
            [c, h, w] => [*c, *h, *w],
            s => {
                return Err(RunError::Request(format!(
                    "latent must be [C, H, W], got {s:?}"
                )))
            }
        };
        let spec = GenStepSpec {
            latent: [c, h, w],
            context_len: ctx.len,
            hidden_states: trace,
            srt: true,
            und_kv_states: resident && !self.is_omnigen2(),
        };
        let ref_shapes = ref_shapes(refs)?;
        let prepared = self.gen_step_graph(&spec, &ref_shapes, part)?;
        let p = config.gen.patch_size;
        // Patch grids of the images in sequence order: the references, then the noisy latent.
        let grids: Vec<(usize, usize)> = ref_shapes
            .iter()
            .map(|r| (r[1] / p, r[2] / p))
            .chain([(h / p, w / p)])
            .collect();
        if self.is_omnigen2() {
            // omnigen2: [caption | noisy latent], caption i -> (i, i, i), the latent after it.
            let caption = ctx.caption.clone().ok_or_else(|| {
                RunError::Request("an omnigen2 gen step needs the caption features".into())
            })?;
            let n_cap = ctx.len;
            let gen_pos = positions::gen_positions(n_cap, &grids);
            let n = gen_pos.len() / 3;
            let n_lat = (h / p) * (w / p);
            let mut inputs = HashMap::from([
                (build::GEN_CAPTION.to_string(), caption),
                (names::GEN_X.to_string(), x.clone()),
                (names::GEN_T.to_string(), HostTensor::f32(vec![1], vec![t])),
                (
                    build::GEN_POSITIONS_CAPTION.to_string(),
                    HostTensor::i32(vec![n_cap, 3], gen_pos[..n_cap * 3].to_vec()),
                ),
                (
                    "gen.positions.latent".to_string(),
                    HostTensor::i32(vec![n_lat, 3], gen_pos[(n - n_lat) * 3..].to_vec()),
                ),
            ]);
            add_ref_inputs(&mut inputs, refs, &gen_pos, n_cap, &grids);
            inputs.insert(
                names::GEN_POSITIONS.to_string(),
                HostTensor::i32(vec![n, 3], gen_pos),
            );
            return Ok((prepared, inputs));
        }
        let n_srt = config
            .layout
            .bridge
            .as_ref()
            .map_or(0, |b| b.num_srt_tokens);
        let gen_pos = positions::gen_positions(n_srt, &grids);
        let n = gen_pos.len() / 3;
        let n_lat = (h / p) * (w / p);
        let lat_pos = gen_pos[(n - n_lat) * 3..].to_vec();
        let shared = positions::shared_positions(ctx.s0, n_srt, &grids);
        let mut inputs = HashMap::new();
        add_ref_inputs(&mut inputs, refs, &gen_pos, n_srt, &grids);
        inputs.extend([
            (names::GEN_X.to_string(), x.clone()),
            (names::GEN_T.to_string(), HostTensor::f32(vec![1], vec![t])),
            (
                names::GEN_POSITIONS.to_string(),
                HostTensor::i32(vec![n, 3], gen_pos),
            ),
            (
                "gen.positions.latent".to_string(),
                HostTensor::i32(vec![n_lat, 3], lat_pos),
            ),
            (
                names::SHARED_POSITIONS.to_string(),
                HostTensor::i32(vec![3, n], shared),
            ),
        ]);
        if !resident {
            for (u, (k, v)) in &ctx.kv {
                inputs.insert(names::und_k(*u), k.clone());
                inputs.insert(names::und_v(*u), v.clone());
            }
        }
        Ok((prepared, inputs))
    }
}

/// Which gen step graph [`Model::gen_step_inputs`] prepares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepGraph {
    /// `gen.hs.{i}` outputs.
    pub trace: bool,
    /// The und K/V as states (a [`ResidentContext`]'s) instead of inputs.
    pub resident: bool,
    pub part: GenPart,
}

impl StepGraph {
    /// The whole untraced step, K/V as inputs.
    pub const HOST: StepGraph = StepGraph {
        trace: false,
        resident: false,
        part: GenPart::Whole,
    };
    /// The whole untraced step over resident K/V.
    pub const RESIDENT: StepGraph = StepGraph {
        trace: false,
        resident: true,
        part: GenPart::Whole,
    };
}

/// The `[C, H, W]` shape of every reference latent.
fn ref_shapes(refs: &[HostTensor]) -> Result<Vec<[usize; 3]>, RunError> {
    refs.iter()
        .enumerate()
        .map(|(j, r)| match (r.shape.as_slice(), r.as_f32()) {
            ([c, h, w], Some(_)) => Ok([*c, *h, *w]),
            (s, _) => Err(RunError::Request(format!(
                "reference latent {j} must be f32 [C, H, W], got {s:?}"
            ))),
        })
        .collect()
}

/// `gen.ref.{j}` and `gen.positions.ref.{j}` (reference j's rows of `gen_pos`, which start after the
/// `n_pre` SRT or caption tokens) for every reference latent.
fn add_ref_inputs(
    inputs: &mut Outputs,
    refs: &[HostTensor],
    gen_pos: &[i32],
    n_pre: usize,
    grids: &[(usize, usize)],
) {
    let mut start = n_pre;
    for (j, (r, &(gh, gw))) in refs.iter().zip(grids).enumerate() {
        let n = gh * gw;
        inputs.insert(build::gen_refs::ref_input(j), r.clone());
        inputs.insert(
            build::gen_refs::ref_positions(j),
            HostTensor::i32(vec![n, 3], gen_pos[start * 3..(start + n) * 3].to_vec()),
        );
        start += n;
    }
}
