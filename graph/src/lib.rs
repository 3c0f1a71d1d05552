//! hbridge's static graph: a model config and a request shape in, a list of ops over tensors of fixed
//! shape out, with dead work removed and every activation placed in one arena. Knows nothing of any
//! backend.

pub mod build;
pub mod cost;
pub mod derived;
pub mod fusion;
mod graph;
pub mod node_cost;
pub mod op;
pub mod plan;
pub mod prune;
mod shape;

pub use graph::{DataType, Graph, GraphError, Node, Source, StateWrite, TensorDesc, TensorId};
pub use op::{KvSegment, Op, RopeKind};
pub use plan::{plan_memory, MemoryPlan};
pub use prune::{prune, PruneStats};
pub use shape::infer_shape;
