//! Everything that can be wrong with what a caller hands the CPU backend. Every variant names the tensor
//! involved so a failed request can be traced to its cause without a debugger.

use hbridge_graph::DataType;
use hbridge_loader::Part;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("graph input `{name}` was not given")]
    MissingInput { name: String },
    #[error("graph input `{name}`: expected shape {expected:?}, found {found:?}")]
    InputShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("graph input `{name}`: expected dtype {expected:?}, found {found:?}")]
    InputDtype {
        name: String,
        expected: DataType,
        found: DataType,
    },
    #[error("tensor `{name}`: shape {shape:?} holds {expected} values but its data has {found}")]
    DataLength {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("embedding `{tensor}`: token id {id} at position {position} is outside the vocabulary [0, {vocab})")]
    TokenOutOfRange {
        tensor: String,
        position: usize,
        id: i64,
        vocab: usize,
    },
    #[error("weight {part:?} `{name}` is not loaded")]
    MissingWeight { part: Part, name: String },
    #[error("weight {part:?} `{name}`: expected shape {expected:?}, found {found:?}")]
    WeightShape {
        part: Part,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("weight {part:?} `{name}` ({file}): dtype {dtype} cannot be converted to f32")]
    WeightDtype {
        part: Part,
        name: String,
        file: String,
        dtype: String,
    },
    /// Only linear ops and embedding lookups widen bf16 weights. `CpuWeights::load_graph` keeps every
    /// other weight f32, so this means the weights were loaded for other graphs than the one run (or
    /// inserted as bf16 by hand).
    #[error("weight {part:?} `{name}` is held as bf16, which `{op}` cannot read (only a linear weight or an embedding table can be)")]
    WeightStorage {
        part: Part,
        name: String,
        op: String,
    },
    #[error("weight {part:?} `{name}`: the checkpoint has no {part:?} part")]
    MissingPart { part: Part, name: String },
    #[error("graph state `{name}` was not given")]
    MissingState { name: String },
    #[error("graph state `{name}`: expected shape {expected:?}, found {found:?}")]
    StateShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A state write whose rows would not fit (`row` from the caller's input of that name).
    #[error("state `{state}`: writing {rows} row(s) at row {row} (input `{input}`) overruns its capacity of {capacity}")]
    StateRow {
        state: String,
        input: String,
        row: i64,
        rows: usize,
        capacity: usize,
    },
    /// An attention segment's filled length (the caller's input `input`) outside `[0, rows]`.
    #[error("attention `{label}`: segment length {len} (input `{input}`) is outside [0, {rows}]")]
    SegmentLength {
        label: String,
        input: String,
        len: i64,
        rows: usize,
    },
    /// The weights about to be converted need more memory than the host has available.
    #[error(
        "loading {tensors} weight tensor(s) needs {:.2} GB of memory as {storage}, but the host has \
         {:.2} GB available{hint}; set {env}=1 to load anyway (with swap)",
        *need as f64 / 1e9,
        *available as f64 / 1e9,
        env = crate::cpu::host_memory::IGNORE_ENV
    )]
    HostMemory {
        tensors: usize,
        need: u64,
        available: u64,
        /// How the weights are held ("f32", "bf16 where the checkpoint has bf16", ...).
        storage: String,
        /// What would need less (empty when nothing would).
        hint: String,
    },
    /// A request's activations (its graph's memory plan) need more memory than the host has.
    #[error(
        "this request's activations need {:.2} GB of memory, but the host has {:.2} GB available \
         (a smaller image or a shorter context needs less); set {env}=1 to run anyway (with swap)",
        *need as f64 / 1e9,
        *available as f64 / 1e9,
        env = crate::cpu::host_memory::IGNORE_ENV
    )]
    ActivationMemory { need: u64, available: u64 },
    #[error("malformed graph at `{label}`: {problem}")]
    Graph { label: String, problem: String },
    #[error("memory plan does not fit the graph: {0}")]
    Plan(String),
    /// The CUDA backend failed (driver, cuBLASLt, kernel compile) or cannot run a node; unsupported
    /// nodes carry their label.
    #[error(transparent)]
    Cuda(#[from] crate::cuda::CudaError),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
