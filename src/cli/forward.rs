//! `hbridge forward`: one und prefill per branch and one gen step on explicit inputs (the fixture input
//! names), writing every intermediate under the fixture output names.

use hbridge::forward::forward;
use hbridge::tensor_io::{read_tensors, write_tensors};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct ForwardArgs {
    /// Model directory.
    pub model: PathBuf,
    /// Input tensors (docs/FIXTURES.md names), safetensors.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write the outputs, safetensors.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: ForwardArgs, backend: super::Backend) -> Result<(), String> {
    super::check_output(&a.out)?;
    let start = Instant::now();
    let model = super::open_model(&a.model, backend)?;
    let inputs = read_tensors(&a.inputs).map_err(|e| e.to_string())?;
    let outputs = forward(&model, &inputs).map_err(|e| e.to_string())?;
    write_tensors(&a.out, &outputs).map_err(|e| e.to_string())?;
    eprintln!(
        "wrote {} tensors to {} in {:.2?}",
        outputs.len(),
        a.out.display(),
        start.elapsed()
    );
    Ok(())
}
