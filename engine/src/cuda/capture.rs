//! CUDA graphs: a whole run of one graph captured from the stream and replayed. A capture bakes in every
//! address and shape, so it is keyed by everything that decides them: the graph (ops, attributes,
//! shapes, sources, outputs), its memory plan, and the weight set. Inputs are not in the key: they live
//! in buffers the capture owns, refilled by the host before each replay.

use super::bind::{Bindings, InputBuffers};
use super::context::Gpu;
use super::dispatch::launch_all;
use super::error::{CudaError, CudaResult};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;
use hbridge_graph::plan::MemoryPlan;
use hbridge_graph::Graph;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

/// Identifies what a capture depends on. Two graphs with the same key launch the same work on the same
/// addresses (given the same executor buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaptureKey {
    fingerprint: u64,
    nodes: usize,
    tensors: usize,
    arena_len: usize,
    weights: u64,
    /// The addresses of the graph's state tensors (0 without states).
    states: u64,
}

/// Feeds formatted text into a hasher without building the string.
struct HashWriter<'a>(&'a mut DefaultHasher);

impl std::fmt::Write for HashWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

impl CaptureKey {
    /// The key of running `graph` under `plan` with weight set `weights_id`. Labels are left out (they
    /// change no launch); everything else is hashed through its `Debug` form, which prints floats
    /// exactly.
    pub fn new(graph: &Graph, plan: &MemoryPlan, weights_id: u64) -> CaptureKey {
        let mut h = DefaultHasher::new();
        {
            let mut w = HashWriter(&mut h);
            for t in &graph.tensors {
                let _ = write!(w, "{:?}{:?}{:?};", t.shape, t.dtype, t.source);
            }
            for n in &graph.nodes {
                let _ = write!(w, "{:?}={:?};", n.out, n.op);
            }
            for (name, id) in &graph.outputs {
                let _ = write!(w, "{name:?}{id:?};");
            }
            // Launched inside the capture too (source, state and row buffer of each).
            for sw in &graph.state_writes {
                let _ = write!(w, "{sw:?};");
            }
        }
        plan.offsets.hash(&mut h);
        CaptureKey {
            fingerprint: h.finish(),
            nodes: graph.nodes.len(),
            tensors: graph.tensors.len(),
            arena_len: plan.arena_len,
            weights: weights_id,
            states: 0,
        }
    }

    /// The key of the same run over state tensors at the addresses `states_fingerprint` hashes.
    pub fn with_states(self, states_fingerprint: u64) -> CaptureKey {
        CaptureKey {
            states: states_fingerprint,
            ..self
        }
    }
}

/// A small map that forgets its oldest entry beyond `cap` (request shapes churn, e.g. one decode graph
/// per cache length; each capture holds its input buffers).
#[derive(Debug)]
pub struct Lru<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Copy + Eq + Hash, V> Lru<K, V> {
    pub fn new(cap: usize) -> Self {
        Lru {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k)
    }

    pub fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    /// Inserts (replacing an entry of the same key), evicting the oldest entries beyond the capacity.
    pub fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k, v).is_none() {
            self.order.push_back(k);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// An instantiated CUDA graph.
pub struct GraphExec(CudaGraph);

// SAFETY: a CUDA graph exec may be used from any thread as long as calls on it are serialized; it is
// only reached through `&mut CudaExecutor`, under the GPU's exclusive lock.
unsafe impl Send for GraphExec {}

impl GraphExec {
    /// Enqueues a replay on the stream it was captured from.
    pub fn launch(&self) -> CudaResult<()> {
        self.0
            .launch()
            .map_err(|e| CudaError::driver("launching a captured CUDA graph", e))
    }
}

/// A capture with the input buffers and addresses it was recorded over.
pub struct Captured {
    pub inputs: InputBuffers,
    pub bindings: Bindings,
    pub exec: GraphExec,
}

/// Records every launch of `graph` on `bindings` into a CUDA graph (nothing runs), instantiates and
/// uploads it. Thread-local capture mode: a synchronization or synchronous host copy made by this
/// thread during the capture fails the capture instead of silently running outside it; an allocation
/// would be recorded (cudarc allocates stream-ordered), so [`Gpu::alloc_zeros`] refuses one while the
/// stream captures. The stream is back to normal whatever happens.
pub fn capture(gpu: &Gpu, graph: &Graph, bindings: &Bindings) -> CudaResult<GraphExec> {
    let stream = gpu.stream();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| CudaError::driver("beginning a stream capture", e))?;
    let launched = launch_all(gpu, graph, bindings);
    let ended = stream.end_capture(CUgraphInstantiate_flags(0));
    if ended.is_err() {
        end_abandoned_capture(gpu);
    }
    launched?;
    let exec = ended
        .map_err(|e| CudaError::driver("ending the stream capture", e))?
        .ok_or_else(|| CudaError::Driver {
            during: "ending the stream capture".into(),
            message: "the capture recorded no graph".into(),
        })?;
    exec.upload()
        .map_err(|e| CudaError::driver("uploading the captured graph", e))?;
    Ok(GraphExec(exec))
}

/// Ends a capture cudarc's `end_capture` may have left open: it returns early when binding the
/// context reports an error recorded earlier (by any thread), before `cuStreamEndCapture`, and the
/// stream would then record every later launch instead of running it.
fn end_abandoned_capture(gpu: &Gpu) {
    use cudarc::driver::sys::CUstreamCaptureStatus as Status;
    let stream = gpu.stream().cu_stream();
    // SAFETY: raw calls on this GPU's own stream, on the thread that began the capture (its context
    // is current); a graph ended here is destroyed once and never used.
    unsafe {
        let status = cudarc::driver::result::stream::is_capturing(stream);
        if matches!(
            status,
            Ok(Status::CU_STREAM_CAPTURE_STATUS_ACTIVE
                | Status::CU_STREAM_CAPTURE_STATUS_INVALIDATED)
        ) {
            if let Ok(g) = cudarc::driver::result::stream::end_capture(stream) {
                if !g.is_null() {
                    let _ = cudarc::driver::result::graph::destroy(g);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbridge_graph::plan::plan_memory;
    use hbridge_graph::{DataType, Op};

    fn graph(d: usize, scale: f32, label: &str) -> Graph {
        let mut g = Graph::default();
        let x = g.input("x", &[3, d], DataType::F32);
        let y = g
            .push(
                Op::Affine {
                    x,
                    scale,
                    shift: 0.0,
                },
                label,
            )
            .unwrap();
        let z = g.push(Op::Silu { x: y }, "z").unwrap();
        g.mark_output("z", z);
        g
    }

    fn key(g: &Graph, weights: u64) -> CaptureKey {
        CaptureKey::new(g, &plan_memory(g), weights)
    }

    #[test]
    fn keys_follow_what_a_capture_bakes_in() {
        let base = key(&graph(8, 2.0, "y"), 1);
        assert_eq!(base, key(&graph(8, 2.0, "y"), 1), "deterministic");
        assert_eq!(
            base,
            key(&graph(8, 2.0, "renamed"), 1),
            "labels change no launch"
        );
        assert_ne!(base, key(&graph(9, 2.0, "y"), 1), "shape");
        assert_ne!(base, key(&graph(8, 2.5, "y"), 1), "attribute");
        assert_ne!(base, key(&graph(8, 2.0, "y"), 2), "weight set");
        let g = graph(8, 2.0, "y");
        let mut plan = plan_memory(&g);
        let moved = plan.offsets.iter().position(Option::is_some).unwrap();
        plan.offsets[moved] = plan.offsets[moved].map(|o| o + 16);
        plan.arena_len += 16;
        assert_ne!(base, CaptureKey::new(&g, &plan, 1), "plan");
        let mut g2 = graph(8, 2.0, "y");
        g2.outputs[0].0 = "other".into();
        assert_ne!(base, key(&g2, 1), "output names");
        assert_ne!(base, base.with_states(7), "state addresses");
        assert_eq!(base.with_states(7), base.with_states(7));
    }

    #[test]
    fn lru_forgets_the_oldest() {
        let mut l = Lru::new(2);
        l.insert(1, "a");
        l.insert(2, "b");
        l.insert(1, "a2");
        assert_eq!(l.len(), 2);
        l.insert(3, "c");
        assert!(!l.contains(&1) && l.contains(&2) && l.contains(&3));
        assert_eq!(l.get(&3), Some(&"c"));
        l.clear();
        assert!(l.is_empty());
    }
}
