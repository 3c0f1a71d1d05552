//! Per-node time profiles of the model's graphs (und prefill, und decode step, VAE decode; the gen
//! step's is in `resident`), each with the graph that ran, so a benchmark can rank the step's time by op kind.

use super::{insert_cache_len, Model, Outputs, RunError};
use crate::backend::{ElemBytes, States};
use hbridge_engine::cpu::HostTensor;
use hbridge_engine::profile::NodeTimes;
use hbridge_graph::build::UndPrefillSpec;
use hbridge_graph::plan::{plan_memory, MemoryPlan};
use hbridge_graph::Graph;

/// One profiled run of a model graph.
#[derive(Debug, Clone)]
pub struct GraphProfile {
    /// The graph that ran: its nodes' labels and op kinds, and the work they did.
    pub graph: Graph,
    /// Each node's time (and the state writes').
    pub times: NodeTimes,
    /// The element sizes the backend ran it with (to count the work as the backend moved it).
    pub elem: ElemBytes,
}

impl Model {
    /// The element sizes the backend holds activations and weights in.
    pub(crate) fn elem_bytes(&self) -> ElemBytes {
        self.backend.elem_bytes()
    }

    /// Profiles one run of `graph` over `states` (see `Backend::profile_with_states`).
    pub(super) fn profile_graph(
        &self,
        graph: &Graph,
        plan: &MemoryPlan,
        inputs: &Outputs,
        states: &mut States,
    ) -> Result<GraphProfile, RunError> {
        self.make_resident(graph)?;
        let times = self
            .backend
            .profile_with_states(graph, plan, inputs, states)?;
        Ok(GraphProfile {
            graph: graph.clone(),
            times,
            elem: self.elem_bytes(),
        })
    }

    /// [`Model::und_prefill_into`]'s run, profiled: with `cache`, its K/V go into the cache's states
    /// from row `cache.1` on, as the run's would.
    pub(crate) fn profile_und_prefill(
        &self,
        ids: &[i32],
        positions: Vec<i32>,
        spec: &UndPrefillSpec,
        cache: Option<(&mut States, usize)>,
    ) -> Result<GraphProfile, RunError> {
        let (graph, mut inputs) = self.und_prefill_graph(ids, positions, spec)?;
        let mut none = self.new_states();
        let states = match cache {
            Some((states, row)) => {
                insert_cache_len(&mut inputs, row)?;
                states
            }
            None => &mut none,
        };
        self.profile_graph(&graph, &plan_memory(&graph), &inputs, states)
    }

    /// [`Model::vae_decode`]'s run on a latent `[C, h, w]`, profiled.
    pub(crate) fn profile_vae_decode(&self, latent: &HostTensor) -> Result<GraphProfile, RunError> {
        let (graph, inputs) = self.vae_decode_graph(latent)?;
        let mut none = self.new_states();
        self.profile_graph(&graph, &plan_memory(&graph), &inputs, &mut none)
    }

    /// [`Model::und_decode_step`]'s run over a cache of `capacity` rows, profiled (always eager).
    pub(crate) fn profile_und_decode_step(
        &self,
        capacity: usize,
        inputs: &Outputs,
        states: &mut States,
    ) -> Result<GraphProfile, RunError> {
        let p = self.und_decode_graph(capacity)?;
        self.profile_graph(&p.0, &p.1, inputs, states)
    }
}
