//! The reference fixtures (docs/FIXTURES.md) as backend-neutral runs: reading a fixture, and building
//! each graph the engine runs on it (und prefill, gen step of either topology, VAE decode, greedy chat
//! decoding) with its inputs. A test passes a `run(graph, inputs) -> outputs` closure for its backend and
//! compares what comes back with the fixture's outputs.
#![allow(dead_code)]

use hbridge_engine::HostTensor;
use hbridge_graph::build::{
    self, gen_step, names, positions, und_decode_step, und_prefill, vae_decode, GenStepSpec,
    UndPrefillSpec,
};
use hbridge_graph::Graph;
use hbridge_loader::config::Topology;
use hbridge_loader::Checkpoint;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::PathBuf;

pub type Tensors = HashMap<String, HostTensor>;

pub struct Fixture {
    pub name: String,
    pub ckpt: Checkpoint,
    pub inputs: Vec<u8>,
    pub outputs: Vec<u8>,
}

pub fn fixture(name: &str) -> Fixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name);
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{name}/{f}: {e}"));
    Fixture {
        name: name.to_string(),
        ckpt: Checkpoint::open(dir.join("model")).unwrap(),
        inputs: read("inputs.safetensors"),
        outputs: read("outputs.safetensors"),
    }
}

/// Whether a safetensors blob has tensor `name`.
pub fn has(bytes: &[u8], name: &str) -> bool {
    SafeTensors::deserialize(bytes)
        .unwrap()
        .tensor(name)
        .is_ok()
}

pub fn f32s(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<f32>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    (
        t.shape().to_vec(),
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

pub fn i64s_as_i32(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<i32>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    let v = t
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as i32)
        .collect();
    (t.shape().to_vec(), v)
}

impl Fixture {
    pub fn is_omnigen2(&self) -> bool {
        self.ckpt.config.layout.topology == Topology::Omnigen2
    }

    /// The und layers the bridge reads, sorted, deduplicated (none without a bridge).
    pub fn kv_layers(&self) -> Vec<usize> {
        let mut l: Vec<usize> = self
            .ckpt
            .config
            .layout
            .bridge
            .iter()
            .flat_map(|b| b.pairs.iter().map(|p| p.1))
            .collect();
        l.sort_unstable();
        l.dedup();
        l
    }

    /// The cond branch's und prefill, fully traced: `und.hs.*`, `und.logits`, the bridged K/V, and
    /// `und.final_hidden` for the omnigen2 topology.
    pub fn und_cond(&self) -> (Graph, Tensors) {
        let (_, ids) = i64s_as_i32(&self.inputs, "cond.input_ids");
        let (_, pos) = i64s_as_i32(&self.inputs, "cond.position_ids");
        let len = ids.len();
        let spec = UndPrefillSpec {
            len,
            kv_layers: self.kv_layers(),
            logits: true,
            hidden_states: true,
            final_hidden: self.is_omnigen2(),
            kv_cache: None,
        };
        let g = und_prefill(&self.ckpt.config.und, &self.ckpt.und_names, &spec).unwrap();
        let inputs = HashMap::from([
            (names::UND_IDS.to_string(), HostTensor::i32([len], ids)),
            (
                names::UND_POSITIONS.to_string(),
                HostTensor::i32([3, len], pos),
            ),
        ]);
        (g, inputs)
    }

    /// One traced gen step of the cond branch at `step.x`, `step.t`, fed from `und` (the outputs of
    /// `und_cond` on the same backend: bridged K/V, or the caption features for omnigen2).
    pub fn gen_cond(&self, und: &Tensors) -> (Graph, Tensors) {
        let c = &self.ckpt.config;
        let (xshape, x) = f32s(&self.inputs, "step.x");
        let (_, t) = f32s(&self.inputs, "step.t");
        let (_, pos) = i64s_as_i32(&self.inputs, "cond.position_ids");
        let (_, ids) = i64s_as_i32(&self.inputs, "cond.input_ids");
        let latent = [xshape[0], xshape[1], xshape[2]];
        let spec = GenStepSpec {
            latent,
            context_len: ids.len(),
            hidden_states: true,
            srt: true,
            und_kv_states: false,
        };
        let g = gen_step(c, &spec).unwrap();
        let p = c.gen.patch_size;
        let grid = (latent[1] / p, latent[2] / p);
        let mut inputs = HashMap::from([
            (names::GEN_X.to_string(), HostTensor::f32(latent, x)),
            (names::GEN_T.to_string(), HostTensor::f32([1], t)),
        ]);
        let n_pre = if self.is_omnigen2() {
            ids.len()
        } else {
            c.layout.bridge.as_ref().unwrap().num_srt_tokens
        };
        let gen_pos = positions::gen_positions(n_pre, &[grid]);
        let n = gen_pos.len() / 3;
        inputs.insert(
            "gen.positions.latent".to_string(),
            HostTensor::i32([n - n_pre, 3], gen_pos[3 * n_pre..].to_vec()),
        );
        if self.is_omnigen2() {
            inputs.insert(
                build::GEN_CAPTION.to_string(),
                und["und.final_hidden"].clone(),
            );
            inputs.insert(
                build::GEN_POSITIONS_CAPTION.to_string(),
                HostTensor::i32([n_pre, 3], gen_pos[..3 * n_pre].to_vec()),
            );
        } else {
            let s0 = pos.iter().copied().max().unwrap() as usize + 1;
            inputs.insert(
                names::SHARED_POSITIONS.to_string(),
                HostTensor::i32([3, n], positions::shared_positions(s0, n_pre, &[grid])),
            );
            for u in self.kv_layers() {
                for name in [names::und_k(u), names::und_v(u)] {
                    inputs.insert(name.clone(), und[&name].clone());
                }
            }
        }
        inputs.insert(
            names::GEN_POSITIONS.to_string(),
            HostTensor::i32([n, 3], gen_pos),
        );
        (g, inputs)
    }

    /// The VAE decode of the reference's `sample.latent`.
    pub fn vae(&self) -> (Graph, Tensors) {
        let (zshape, z) = f32s(&self.outputs, "sample.latent");
        let g = vae_decode(&self.ckpt.config.vae, (zshape[1], zshape[2])).unwrap();
        let inputs = HashMap::from([(names::VAE_LATENT.to_string(), HostTensor::f32(zshape, z))]);
        (g, inputs)
    }

    /// Whether the fixture has a chat prompt (`chat.input_ids`, `chat.logits`, `chat.greedy_ids`).
    pub fn has_chat(&self) -> bool {
        has(&self.inputs, "chat.input_ids")
    }

    /// Greedy decoding of `n` tokens after the chat prompt, no stop: a prefill that returns every
    /// layer's K/V, copied into host state tensors (the K/V cache, `[capacity, K*D]` per layer), then
    /// the decode-step graph (one graph for every token) writing each token's K/V into them. `run`
    /// gets the graph, its inputs and the states (empty for the prefill; a backend may keep its own
    /// copy of them from their first decode step on). Returns the prefill's logits `[L, V]` and the
    /// tokens.
    pub fn greedy(
        &self,
        n: usize,
        mut run: impl FnMut(&Graph, &Tensors, &mut Tensors) -> Tensors,
    ) -> (Vec<f32>, Vec<i32>) {
        let c = &self.ckpt.config.und;
        let (_, ids) = i64s_as_i32(&self.inputs, "chat.input_ids");
        let len = ids.len();
        let layers: Vec<usize> = (0..c.num_layers).collect();
        let spec = UndPrefillSpec {
            len,
            kv_layers: layers.clone(),
            logits: true,
            hidden_states: false,
            final_hidden: false,
            kv_cache: None,
        };
        let g = und_prefill(c, &self.ckpt.und_names, &spec).unwrap();
        let inputs = HashMap::from([
            (names::UND_IDS.to_string(), HostTensor::i32([len], ids)),
            (
                names::UND_POSITIONS.to_string(),
                HostTensor::i32([3, len], positions::text_positions(len)),
            ),
        ]);
        let mut out = run(&g, &inputs, &mut HashMap::new());
        let logits = out["und.logits"].as_f32().unwrap().to_vec();
        let vocab = c.vocab_size;
        // Room for every token plus a few unused rows, so the masked tail is exercised too.
        let capacity = len + n + 3;
        let kv = c.kv_dim();
        let mut states = Tensors::new();
        for &i in &layers {
            for (from, to) in [
                (names::und_k(i), names::cache_k(i)),
                (names::und_v(i), names::cache_v(i)),
            ] {
                let mut cache = out.remove(&from).unwrap().into_f32().unwrap();
                cache.resize(capacity * kv, f32::NAN);
                states.insert(to, HostTensor::f32([capacity, kv], cache));
            }
        }
        let g = und_decode_step(c, &self.ckpt.und_names, capacity).unwrap();
        let mut tokens = vec![argmax(&logits[(len - 1) * vocab..])];
        while tokens.len() < n {
            let past = len + tokens.len() - 1;
            let inputs = HashMap::from([
                (
                    names::UND_IDS.to_string(),
                    HostTensor::i32([1], vec![*tokens.last().unwrap()]),
                ),
                (
                    names::UND_POSITIONS.to_string(),
                    HostTensor::i32([3, 1], vec![past as i32; 3]),
                ),
                (
                    names::UND_CACHE_LEN.to_string(),
                    HostTensor::i32([1], vec![past as i32]),
                ),
            ]);
            let out = run(&g, &inputs, &mut states);
            tokens.push(argmax(out["und.logits"].as_f32().unwrap()));
        }
        (logits, tokens)
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> i32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as i32
}
