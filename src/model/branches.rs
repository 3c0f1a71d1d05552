//! The gen steps of a request's guidance branches. Branches with the same gen sequence (the same
//! latent, time and references; only their und contexts differ) compute the layers before the first
//! bridged one identically, so on the hbridge topology that prefix runs once per step, its sequence is
//! copied on the backend into every branch's states, and each branch runs only its suffix. On
//! hbridge-7b4b that is the latent embedding, the 2 noise-refiner layers and 6 of 32 main layers: a
//! fifth of a branch's work, a tenth of a two-branch step.

use super::{Model, Outputs, ResidentContext, RunError, StepGraph};
use crate::backend::StatesJob;
use hbridge_engine::cpu::HostTensor;
use hbridge_graph::build::{names, GenPart};
use std::sync::atomic::Ordering;

/// `HBRIDGE_SHARED_PREFIX=0` runs every branch's whole step instead (for A/B measurements).
pub const SHARED_PREFIX_ENV: &str = "HBRIDGE_SHARED_PREFIX";

impl Model {
    /// Whether [`Model::gen_step_branches`] runs `branches` branches with one shared prefix.
    pub fn shares_gen_prefix(&self, branches: usize) -> bool {
        branches > 1
            && !self.is_omnigen2()
            && std::env::var(SHARED_PREFIX_ENV).as_deref() != Ok("0")
    }

    /// Untraced gen steps of several guidance branches at the same latent and time, outputs in order.
    /// With two or more branches on the hbridge topology the shared prefix runs once (see the module
    /// documentation); the outputs are those of [`Model::gen_step_resident`] on each branch. On the
    /// CPU the branches' own parts run side by side: at gen-step sizes one op split over all cores
    /// synchronizes more than whole branches on their own cores do. On CUDA they run one after the
    /// other (one stream, each part a replayed graph).
    pub fn gen_step_branches(
        &self,
        x: &HostTensor,
        t: f32,
        branches: &mut [ResidentContext<'_>],
    ) -> Result<Vec<Outputs>, RunError> {
        self.gen_step_branches_with_refs(x, t, branches, &[])
    }

    /// [`Model::gen_step_branches`] with the same reference latents `refs` in every branch's gen
    /// sequence.
    pub fn gen_step_branches_with_refs(
        &self,
        x: &HostTensor,
        t: f32,
        branches: &mut [ResidentContext<'_>],
        refs: &[HostTensor],
    ) -> Result<Vec<Outputs>, RunError> {
        let part = if self.shares_gen_prefix(branches.len()) {
            self.gen_step_prefix(x, t, branches, refs)?;
            GenPart::Suffix
        } else {
            GenPart::Whole
        };
        let kind = StepGraph {
            part,
            ..StepGraph::RESIDENT
        };
        // Every graph is built (and its weights loaded) before any runs.
        let prepared = branches
            .iter()
            .map(|b| self.gen_step_inputs(x, t, b.ctx, refs, kind))
            .collect::<Result<Vec<_>, _>>()?;
        let jobs = prepared
            .iter()
            .zip(branches.iter_mut())
            .map(|((p, inputs), b)| StatesJob {
                graph: &p.0,
                plan: &p.1,
                inputs,
                states: &mut b.states,
            })
            .collect();
        let replay = self.cuda_graphs.load(Ordering::Relaxed);
        self.backend.execute_each_with_states(jobs, replay)
    }

    /// Runs the shared prefix over the first branch's context (the prefix reads none of it) into its
    /// state `gen.prefix`, then copies that state to every other branch.
    fn gen_step_prefix(
        &self,
        x: &HostTensor,
        t: f32,
        branches: &mut [ResidentContext<'_>],
        refs: &[HostTensor],
    ) -> Result<(), RunError> {
        let Some((first, rest)) = branches.split_first_mut() else {
            return Ok(());
        };
        let kind = StepGraph {
            part: GenPart::Prefix,
            ..StepGraph::RESIDENT
        };
        let (prepared, mut inputs) = self.gen_step_inputs(x, t, first.ctx, refs, kind)?;
        let graph = &prepared.0;
        let shape = graph
            .states()
            .find(|(_, name)| *name == names::GEN_PREFIX)
            .map(|(id, _)| graph.tensor(id).shape.clone())
            .ok_or_else(|| RunError::Request("the gen prefix graph writes no prefix".into()))?;
        // Allocated once per request shape: a state that keeps its address keeps the step's CUDA
        // graphs valid.
        if first.states.shape(names::GEN_PREFIX) != Some(shape.as_slice()) {
            self.alloc_state(&mut first.states, names::GEN_PREFIX, &shape)?;
        }
        inputs.insert(
            names::GEN_PREFIX_ROW.to_string(),
            HostTensor::i32(vec![1], vec![0]),
        );
        let replay = self.cuda_graphs.load(Ordering::Relaxed);
        self.backend
            .execute_with_states(graph, &prepared.1, &inputs, &mut first.states, replay)?;
        for b in rest {
            self.backend
                .copy_state(&first.states, &mut b.states, names::GEN_PREFIX)?;
        }
        Ok(())
    }
}
