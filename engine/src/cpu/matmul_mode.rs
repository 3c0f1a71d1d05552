//! Which arithmetic the CPU backend's linears, attention and convolutions use, chosen once per process:
//! f32 (the default, the reference's numerics), or bf16: bf16 inputs and f32 sums on Intel AMX tiles
//! for linears over [`MIN_ROWS`](MatmulMode::MIN_ROWS) rows or more, for attention over as many
//! queries and for stride-1 convolutions, as the CUDA backend computes them. Fewer rows (a decode
//! step) over a bf16 weight run in bf16 too, with AVX512-BF16 over the weight's tiles (the only copy
//! of it then held); over an f32 weight they stay f32, and so do strided convolutions. A program picks it with [`CpuCompute::request`] before its
//! first CPU computation; otherwise `HBRIDGE_CPU_MATMUL=bf16` asks for bf16.

/// What `HBRIDGE_CPU_MATMUL` asked for and what this CPU does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulMode {
    /// f32 everywhere (the default).
    F32,
    /// bf16 asked for on a CPU and OS with AMX-BF16: prompt and gen-step linears and
    /// attention, and stride-1 convolutions, in bf16 on the tiles.
    Bf16Amx,
    /// bf16 asked for where AMX-BF16 (or AVX512-BF16) is missing (another CPU, another OS, or the kernel or
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
            MatmulMode::Bf16Amx => "bf16 linears on AMX (fewer than 32 rows over a bf16 weight's tiles), attention on AMX for 32+ queries, stride-1 convolutions on AMX, f32 elsewhere",
            MatmulMode::Bf16Unavailable => {
                "f32 compute: bf16 compute needs AMX-BF16, AVX512-BW and AVX512-BF16, which this CPU or OS lacks"
            }
        }
    }
}

/// The process's choice: set by [`CpuCompute::request`], or else read from `HBRIDGE_CPU_MATMUL` the
/// first time anything asks.
static REQUESTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether bf16 was asked for (fixed at the first call).
pub(crate) fn bf16_requested() -> bool {
    *REQUESTED.get_or_init(|| std::env::var_os("HBRIDGE_CPU_MATMUL").is_some_and(|v| v == "bf16"))
}

/// The CPU arithmetic a program asks for ([`CpuCompute::request`]); `FromEnv` leaves it to
/// `HBRIDGE_CPU_MATMUL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuCompute {
    /// `HBRIDGE_CPU_MATMUL=bf16` asks for bf16, anything else (or nothing) for f32.
    #[default]
    FromEnv,
    /// f32 everywhere: the reference's numerics.
    F32,
    /// bf16 on AMX tiles where the CPU and OS have them (see [`MatmulMode::Bf16Amx`]), else f32.
    Bf16,
}

/// [`CpuCompute::request`] after the process's arithmetic was fixed otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "CPU compute {requested:?}: this process already computes {fixed} (fixed by an earlier request, \
     HBRIDGE_CPU_MATMUL or a computation that ran first); the choice is made once per process, \
     before its first CPU computation"
)]
pub struct CpuComputeFixed {
    /// What was asked for.
    pub requested: CpuCompute,
    /// What the process uses: "f32" or "bf16".
    pub fixed: &'static str,
}

impl CpuCompute {
    /// Makes this the process's CPU arithmetic. It is fixed by the first request or the first CPU
    /// computation, whichever comes first (the kernels read it without a lock); asking again for
    /// the same is fine, for the other an error. `FromEnv` asks for nothing.
    pub fn request(self) -> Result<MatmulMode, CpuComputeFixed> {
        let want = match self {
            CpuCompute::FromEnv => return Ok(MatmulMode::current()),
            CpuCompute::F32 => false,
            CpuCompute::Bf16 => true,
        };
        let got = *REQUESTED.get_or_init(|| want);
        if got == want {
            return Ok(MatmulMode::current());
        }
        Err(CpuComputeFixed {
            requested: self,
            fixed: if got { "bf16" } else { "f32" },
        })
    }
}
