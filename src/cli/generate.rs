//! `hbridge generate`: text to image, with a progress bar over the denoising steps.

use hbridge::t2i::{generate, write_png, ImageRequest};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Model directory.
    pub model: PathBuf,
    /// What to draw.
    #[arg(short, long)]
    pub prompt: String,
    /// Negative prompt (the unconditional branch of guidance).
    #[arg(long, default_value = "")]
    pub negative: String,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Text guidance scale; <= 1 runs the conditional branch only.
    #[arg(long, default_value_t = 4.0, allow_negative_numbers = true)]
    pub guidance: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1024)]
    pub width: usize,
    #[arg(long, default_value_t = 1024)]
    pub height: usize,
    /// Output PNG.
    #[arg(short, long)]
    pub out: PathBuf,
    /// CUDA: launch every kernel of every step instead of replaying a captured CUDA graph.
    #[arg(long)]
    pub no_cuda_graphs: bool,
}

/// A one-line progress bar on stderr; on a pipe or file, a line per tenth of the run instead.
pub fn progress_bar(label: &'static str) -> impl FnMut(usize, usize) -> ControlFlow<()> {
    use std::io::IsTerminal;
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    move |step, total| {
        if !tty {
            if step == total || step % (total / 10).max(1) == 0 {
                eprintln!("{label} {step}/{total} {:.1?}", start.elapsed());
            }
            return ControlFlow::Continue(());
        }
        let width = 30;
        let done = step * width / total.max(1);
        eprint!(
            "\r{label} [{}{}] {step}/{total} {:.1?}",
            "#".repeat(done),
            " ".repeat(width - done),
            start.elapsed()
        );
        if step == total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
        ControlFlow::Continue(())
    }
}

pub fn run(a: GenerateArgs, backend: super::Backend) -> Result<(), String> {
    super::check_output(&a.out)?;
    let start = Instant::now();
    let model = super::open_model(&a.model, backend)?;
    model.set_cuda_graphs(!a.no_cuda_graphs);
    let cfg = &model.checkpoint.config;
    let tokenizer = hbridge::prompt::load_tokenizer(&a.model, &cfg.layout.und_dir)
        .map_err(|e| e.to_string())?;
    eprintln!(
        "opened {} ({} topology) in {:.2?}; weights are made resident at first use",
        a.model.display(),
        cfg.layout.topology,
        start.elapsed()
    );
    // Text guidance above 1 runs a cond and an uncond gen step per denoising step (t2i::run_steps).
    let branches = if a.guidance > 1.0 { 2 } else { 1 };
    let req = ImageRequest::new(a.prompt)
        .negative(a.negative)
        .steps(a.steps)
        .guidance(a.guidance)
        .seed(a.seed)
        .size(a.width, a.height);
    let out =
        generate(&model, &tokenizer, &req, progress_bar("denoising")).map_err(|e| e.to_string())?;
    write_png(&a.out, out.width, out.height, &out.rgb)?;
    eprintln!(
        "wrote {} ({}x{}): und prefill {:.2?}, {} steps {:.2?} ({:.2?} per branch step), VAE decode {:.2?}{}",
        a.out.display(),
        out.width,
        out.height,
        out.timings.prefill,
        req.steps,
        out.timings.denoise,
        out.timings.denoise / (req.steps.max(1) * branches) as u32,
        out.timings.vae,
        super::weights_note(out.timings.weights)
    );
    super::report_peak_memory(&model);
    Ok(())
}
