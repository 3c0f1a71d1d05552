//! A branch's und context made resident on the backend for a whole image request: the bridged und
//! layers' K/V become state tensors (device memory on CUDA), written once, so each of the denoising
//! steps reads them in place instead of receiving them as inputs (a host conversion and upload of
//! every bridged layer's K/V per step and branch).

use super::{Model, Outputs, RunError, StepGraph, UndContext};
use crate::backend::States;
use hbridge_engine::cpu::HostTensor;
use hbridge_graph::build::names;
use std::sync::atomic::Ordering;

/// One guidance branch's context with its K/V resident on the model's backend (see
/// [`Model::resident_context`]).
pub struct ResidentContext<'a> {
    pub(super) ctx: &'a UndContext,
    pub(super) states: States,
}

impl ResidentContext<'_> {
    /// The host context it was made from.
    pub fn context(&self) -> &UndContext {
        self.ctx
    }
}

impl Model {
    /// Makes `ctx`'s bridged K/V resident on this model's backend (the omnigen2 topology has none: its
    /// caption features stay an input).
    pub fn resident_context<'a>(
        &self,
        ctx: &'a UndContext,
    ) -> Result<ResidentContext<'a>, RunError> {
        let mut states = self.new_states();
        for (u, (k, v)) in &ctx.kv {
            for (name, t) in [(names::und_k(*u), k), (names::und_v(*u), v)] {
                let values = t
                    .as_f32()
                    .ok_or_else(|| RunError::Request(format!("context `{name}` must be f32")))?;
                self.alloc_state(&mut states, &name, &t.shape)?;
                self.write_state_rows(&mut states, &name, 0, values)?;
            }
        }
        Ok(ResidentContext { ctx, states })
    }

    /// An untraced gen step of one branch over its resident context (the same values as
    /// [`Model::gen_step`] on the host context).
    pub fn gen_step_resident(
        &self,
        x: &HostTensor,
        t: f32,
        branch: &mut ResidentContext<'_>,
    ) -> Result<Outputs, RunError> {
        self.gen_step_resident_with_refs(x, t, branch, &[], false)
    }

    /// [`Model::gen_step_with_refs`] over a resident context.
    pub fn gen_step_resident_with_refs(
        &self,
        x: &HostTensor,
        t: f32,
        branch: &mut ResidentContext<'_>,
        refs: &[HostTensor],
        trace: bool,
    ) -> Result<Outputs, RunError> {
        let kind = StepGraph {
            trace,
            ..StepGraph::RESIDENT
        };
        let (prepared, inputs) = self.gen_step_inputs(x, t, branch.ctx, refs, kind)?;
        let replay = self.cuda_graphs.load(Ordering::Relaxed);
        self.backend.execute_with_states(
            &prepared.0,
            &prepared.1,
            &inputs,
            &mut branch.states,
            replay,
        )
    }

    /// [`Model::gen_step_resident`]'s run, profiled node by node (always eager, see
    /// `Backend::profile_with_states`).
    pub fn profile_gen_step(
        &self,
        x: &HostTensor,
        t: f32,
        branch: &mut ResidentContext<'_>,
    ) -> Result<super::GraphProfile, RunError> {
        let (prepared, inputs) =
            self.gen_step_inputs(x, t, branch.ctx, &[], StepGraph::RESIDENT)?;
        self.profile_graph(&prepared.0, &prepared.1, &inputs, &mut branch.states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbridge_graph::build::positions;
    use std::path::PathBuf;

    /// The resident K/V give the host-input gen step's bits, step after step, on both branches.
    #[test]
    fn resident_gen_steps_equal_host_ones() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/model");
        let model = Model::open(&dir).unwrap();
        let c = &model.checkpoint.config;
        let vocab = c.und.vocab_size as i32;
        let ids: Vec<i32> = (0..9).map(|i| (i * 5 + 1) % vocab).collect();
        let cond = model
            .und_context(&ids, positions::text_positions(ids.len()))
            .unwrap();
        let uncond = model
            .und_context(&ids[..3], positions::text_positions(3))
            .unwrap();
        assert!(!cond.kv.is_empty(), "the tiny model bridges some layers");
        let shape = vec![c.vae.latent_channels, 4, 6];
        let n: usize = shape.iter().product();
        let x = HostTensor::f32(shape, (0..n).map(|i| (i as f32 * 0.37).sin()).collect());
        let mut branches = vec![
            model.resident_context(&cond).unwrap(),
            model.resident_context(&uncond).unwrap(),
        ];
        for t in [0.9, 0.4] {
            let got = model.gen_step_branches(&x, t, &mut branches).unwrap();
            for (out, ctx) in got.iter().zip([&cond, &uncond]) {
                let want = model.gen_step(&x, t, ctx, false).unwrap();
                let bits = |o: &Outputs| -> Vec<u32> {
                    o["gen.velocity"]
                        .as_f32()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                assert_eq!(bits(out), bits(&want), "velocity at t = {t}");
            }
        }
        assert_eq!(branches[1].context().len, 3);
    }
}
