//! ptxas resource reports (registers, spills, stack, shared memory) for compiled kernels, so that a
//! kernel that spills is caught on a machine without a GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What ptxas reports for one entry point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub name: String,
    pub registers: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub stack_frame_bytes: u32,
    pub shared_bytes: u32,
    /// ptxas's "Potential Performance Loss" notes naming this entry (e.g. wgmma serialized because
    /// ordinary code touches an MMA's registers while it may be in flight), verbatim.
    pub performance_notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PtxasError {
    #[error("could not run {path}: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
    #[error("ptxas failed on {file}: {stderr}")]
    Failed { file: String, stderr: String },
    #[error("writing the PTX for ptxas: {0}")]
    Io(#[from] std::io::Error),
}

/// ptxas from `HBRIDGE_PTXAS`, `CUDA_PATH/bin`, `/usr/local/cuda/bin` or `PATH`, if any.
pub fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HBRIDGE_PTXAS") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(cuda) = std::env::var_os("CUDA_PATH") {
        candidates.push(Path::new(&cuda).join("bin/ptxas"));
    }
    candidates.push("/usr/local/cuda/bin/ptxas".into());
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("ptxas")));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Assembles `ptx` for `sm` (e.g. `sm_90a`) and returns each entry point's resources.
pub fn ptxas_report(
    ptxas: &Path,
    file: &str,
    ptx: &str,
    sm: &str,
) -> Result<Vec<KernelResources>, PtxasError> {
    let dir = std::env::temp_dir().join(format!("hbridge-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ptx_path = dir.join(format!("{file}.ptx"));
    std::fs::write(&ptx_path, ptx)?;
    let out = Command::new(ptxas)
        .arg(format!("-arch={sm}"))
        .arg("-v")
        .arg(&ptx_path)
        .arg("-o")
        .arg(dir.join(format!("{file}.cubin")))
        .output()
        .map_err(|source| PtxasError::Spawn {
            path: ptxas.display().to_string(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(PtxasError::Failed {
            file: file.to_string(),
            stderr,
        });
    }
    Ok(parse_report(&stderr))
}

/// Parses `ptxas -v` output: a `Compiling entry function 'NAME'` line opens an entry; the following
/// `bytes stack frame`, `Used N registers` and `smem` lines fill it.
pub fn parse_report(text: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    let mut notes = Vec::new();
    for line in text.lines() {
        if line.contains("Potential Performance Loss") {
            notes.push(line.trim().to_string());
            continue;
        }
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelResources {
                name,
                ..Default::default()
            });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            cur.stack_frame_bytes = number_before(line, "bytes stack frame");
            cur.spill_store_bytes = number_before(line, "bytes spill stores");
            cur.spill_load_bytes = number_before(line, "bytes spill loads");
        }
        if line.contains("Used ") && line.contains("registers") {
            cur.registers = number_before(line, "registers");
            cur.shared_bytes = number_before(line, "bytes smem");
        }
    }
    // The notes name their function ("... in the function 'NAME'") and may come before or after its
    // entry's lines.
    for note in notes {
        let named = note
            .split("in the function '")
            .nth(1)
            .and_then(|rest| rest.split('\'').next());
        if let Some(k) = out.iter_mut().find(|k| Some(k.name.as_str()) == named) {
            k.performance_notes.push(note);
        } else if let Some(k) = out.last_mut() {
            k.performance_notes.push(note);
        }
    }
    out
}

fn number_before(line: &str, marker: &str) -> u32 {
    line.find(marker)
        .and_then(|i| line[..i].split_whitespace().last())
        .and_then(|w| w.trim_start_matches(',').parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_verbose_output() {
        let text = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'rmsnorm_bf16' for 'sm_90a'\n\
ptxas info    : Function properties for rmsnorm_bf16\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 38 registers, used 1 barriers, 128 bytes smem, 380 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'add_bf16' for 'sm_90a'\n\
ptxas info    : Function properties for add_bf16\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 12 registers, used 0 barriers, 372 bytes cmem[0]\n";
        let r = parse_report(text);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelResources {
                name: "rmsnorm_bf16".into(),
                registers: 38,
                spill_store_bytes: 4,
                spill_load_bytes: 12,
                stack_frame_bytes: 8,
                shared_bytes: 128,
                performance_notes: Vec::new(),
            }
        );
        assert_eq!(r[1].registers, 12);
        assert_eq!(r[1].spill_store_bytes, 0);
    }

    #[test]
    fn performance_notes_go_to_the_function_they_name() {
        let text = "ptxas info    : (C7514) Potential Performance Loss: wgmma.mma_async instructions are serialized due to non wgmma instructions reading accumulator registers of  a wgmma between start and end of the pipeline stage in the function 'attn_a'\n\
ptxas info    : Compiling entry function 'attn_a' for 'sm_90a'\n\
ptxas info    : Used 200 registers, used 1 barriers, 380 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'attn_b' for 'sm_90a'\n\
ptxas info    : Used 100 registers, used 1 barriers, 380 bytes cmem[0]\n";
        let r = parse_report(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].performance_notes.len(), 1);
        assert!(r[0].performance_notes[0].contains("serialized"));
        assert!(r[1].performance_notes.is_empty());
    }
}
