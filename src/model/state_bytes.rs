//! How much memory a request's state takes, estimated before it runs, for the engine's memory limit
//! ([`crate::budget`]). The state is what a request holds beyond the weights: its K/V cache (in the
//! backend's activation type, rounded up to whole cache blocks) or und contexts (host f32, plus their
//! resident copy on the backend) and the activation arena of its largest graph (f32 on the CPU, bf16
//! on CUDA, laid out by the graph's memory plan). Graph arenas come from the same memory plans the
//! runs use, so the estimate follows the model's real shapes; small buffers (logits, the latent, host
//! copies of outputs) are left out.

use super::{Model, RunError};
use hbridge_engine::device::Device;
use hbridge_graph::build::{self, names, GenPart, GenStepSpec, UndPrefillSpec};
use hbridge_graph::plan::plan_memory;
use hbridge_graph::Graph;

const F32: u64 = 4;

impl Model {
    /// Bytes of one activation element on this backend.
    fn activation_elem_bytes(&self) -> u64 {
        match self.device() {
            Device::Cpu => 4,
            Device::Cuda => 2,
        }
    }

    fn arena_bytes(&self, graph: &Graph) -> u64 {
        plan_memory(graph).arena_len as u64 * self.activation_elem_bytes()
    }

    /// A chat request over a `prompt_len`-token prompt answering up to `max_tokens`: the K/V cache of
    /// every und layer at full length, plus the prompt prefill's arena.
    pub fn chat_state_bytes(&self, prompt_len: usize, max_tokens: usize) -> Result<u64, RunError> {
        let c = &self.checkpoint.config.und;
        let rows = prompt_len
            .saturating_add(max_tokens)
            .max(1)
            .next_multiple_of(crate::chat::CACHE_ROWS) as u64;
        let cache =
            2 * c.num_layers as u64 * rows * c.kv_dim() as u64 * self.activation_elem_bytes();
        let spec = UndPrefillSpec {
            len: prompt_len.max(1),
            kv_layers: (0..c.num_layers).collect(),
            logits: false,
            hidden_states: false,
            final_hidden: false,
            kv_cache: None,
        };
        let prefill = build::und_prefill(c, &self.checkpoint.und_names, &spec)?;
        Ok(cache + self.arena_bytes(&prefill))
    }

    /// The gen expert's context of one branch of `len` tokens: caption features, or bridged K/V on the
    /// host and resident on the backend (see [`Model::resident_context`]).
    pub fn context_bytes(&self, len: usize) -> u64 {
        let c = &self.checkpoint.config.und;
        if self.is_omnigen2() {
            return (len * c.hidden_size) as u64 * F32;
        }
        let values = (len * 2 * self.bridged_und_layers().len() * c.kv_dim()) as u64;
        values * (F32 + self.activation_elem_bytes())
    }

    /// An image request of `width` x `height` whose guidance branches have und contexts of
    /// `context_lens` tokens, with reference latents of `ref_shapes` (`[C, h, w]`, editing): the contexts
    /// (and the shared gen prefix each branch holds) plus the largest of the context prefill's, the gen step's and the VAE decoder's arenas.
    pub fn image_state_bytes(
        &self,
        width: usize,
        height: usize,
        context_lens: &[usize],
        ref_shapes: &[[usize; 3]],
    ) -> Result<u64, RunError> {
        let config = &self.checkpoint.config;
        let f = config.vae.downscale().max(1);
        let (lh, lw) = (height / f, width / f);
        let longest = context_lens.iter().copied().max().unwrap_or(1).max(1);
        let contexts: u64 = context_lens.iter().map(|&l| self.context_bytes(l)).sum();
        let prefill = build::und_prefill(
            &config.und,
            &self.checkpoint.und_names,
            &self.context_spec(longest),
        )?;
        let spec = GenStepSpec {
            latent: [config.vae.latent_channels, lh, lw],
            context_len: longest,
            hidden_states: false,
            srt: true,
            und_kv_states: false,
        };
        let gen_step = self.gen_step_graph(&spec, ref_shapes, GenPart::Whole)?;
        let gen_arena = gen_step.1.arena_len as u64 * self.activation_elem_bytes();
        // Several branches share a prefix: each holds the sequence it ends with (`gen.prefix`).
        let prefix = if context_lens.len() > 1 && !self.is_omnigen2() {
            let (g, hid) = (&gen_step.0, config.gen.hidden_size);
            let rows = g
                .inputs()
                .find(|(_, name)| *name == names::GEN_POSITIONS)
                .map_or(0, |(id, _)| g.tensor(id).shape[0]);
            context_lens.len() as u64 * (rows * hid) as u64 * self.activation_elem_bytes()
        } else {
            0
        };
        let vae = self.arena_bytes(&build::vae_decode(&config.vae, (lh, lw))?);
        let mut largest = self.arena_bytes(&prefill).max(gen_arena).max(vae);
        for r in ref_shapes {
            let encode = build::vae_encode(&config.vae, (r[1] * f, r[2] * f))?;
            largest = largest.max(self.arena_bytes(&encode));
        }
        Ok(contexts + prefix + largest)
    }
}
