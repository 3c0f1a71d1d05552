//! Which arithmetic the CPU backend's linears, attention and convolutions use, chosen once per process
//! from `HBRIDGE_CPU_MATMUL`: f32 (the default, the reference's numerics), or `bf16`: bf16 inputs and
//! f32 sums on Intel AMX tiles for linears over [`MIN_ROWS`](MatmulMode::MIN_ROWS) rows or more, for
//! attention over as many queries and for stride-1 convolutions, as the CUDA backend computes them.
//! Fewer rows (a decode step) and strided convolutions stay f32.

/// What `HBRIDGE_CPU_MATMUL` asked for and what this CPU does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulMode {
    /// f32 everywhere (the default).
    F32,
    /// `HBRIDGE_CPU_MATMUL=bf16` on a CPU and OS with AMX-BF16: prompt and gen-step linears and
    /// attention, and stride-1 convolutions, in bf16 on the tiles.
    Bf16Amx,
    /// `HBRIDGE_CPU_MATMUL=bf16` where AMX-BF16 (or AVX512-BF16) is missing (another CPU, another OS, or the kernel or
    /// hypervisor does not enable it): f32 everywhere.
    Bf16Unavailable,
}

impl MatmulMode {
    /// Fewest rows a linear (queries, for attention) needs to run on the tiles.
    pub const MIN_ROWS: usize = 32;

    /// The mode of this process (read once).
    pub fn current() -> MatmulMode {
        #[cfg(target_arch = "x86_64")]
        let tiles = super::ops::amx_tiles::enabled();
        #[cfg(not(target_arch = "x86_64"))]
        let tiles = false;
        match (bf16_requested(), tiles) {
            (false, _) => MatmulMode::F32,
            (true, true) => MatmulMode::Bf16Amx,
            (true, false) => MatmulMode::Bf16Unavailable,
        }
    }

    /// How the CLI's backend line describes it.
    pub fn describe(self) -> &'static str {
        match self {
            MatmulMode::F32 => "f32 compute",
            MatmulMode::Bf16Amx => "bf16 linears and attention on AMX for 32+ rows, stride-1 convolutions on AMX, f32 elsewhere",
            MatmulMode::Bf16Unavailable => {
                "f32 compute: HBRIDGE_CPU_MATMUL=bf16 needs AMX-BF16 and AVX512-BF16, which this CPU or OS lacks"
            }
        }
    }
}

/// Whether `HBRIDGE_CPU_MATMUL=bf16` is set (read once per process).
pub(crate) fn bf16_requested() -> bool {
    static REQUESTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REQUESTED.get_or_init(|| std::env::var_os("HBRIDGE_CPU_MATMUL").is_some_and(|v| v == "bf16"))
}
