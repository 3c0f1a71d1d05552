//! `hbridge edit`: edit one or more reference images following a text prompt, with a progress bar over
//! the denoising steps.

use super::generate::progress_bar;
use hbridge::edit::{edit, EditRequest};
use hbridge::image::{load_rgb, ImageLimits};
use hbridge::t2i::write_png;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct EditArgs {
    /// Model directory.
    pub model: PathBuf,
    /// Reference image (PNG or JPEG); repeat for several (at most 5).
    #[arg(short = 'i', long = "image", required = true)]
    pub images: Vec<PathBuf>,
    /// The edit instruction.
    #[arg(short, long)]
    pub prompt: String,
    /// Negative prompt (the r and u branches of guidance).
    #[arg(long, default_value = "")]
    pub negative: String,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Text guidance scale; <= 1 runs the conditional branch only.
    #[arg(long, default_value_t = 5.0, allow_negative_numbers = true)]
    pub guidance: f32,
    /// Image guidance scale; <= 1 drops the reference-only branch (text guidance against no references).
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    pub image_guidance: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output width; default: the first reference image's width after its resize.
    #[arg(long, requires = "height")]
    pub width: Option<usize>,
    /// Output height; default: the first reference image's height after its resize.
    #[arg(long, requires = "width")]
    pub height: Option<usize>,
    /// Output PNG.
    #[arg(short, long)]
    pub out: PathBuf,
}

pub fn run(a: EditArgs, backend: super::Backend) -> Result<(), String> {
    super::check_output(&a.out)?;
    let start = Instant::now();
    let images = a
        .images
        .iter()
        .map(|p| load_rgb(p, &ImageLimits::default()).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let model = super::open_model(&a.model, backend)?;
    let cfg = &model.checkpoint.config;
    let tokenizer = hbridge::prompt::load_tokenizer(&a.model, &cfg.layout.und_dir)
        .map_err(|e| e.to_string())?;
    eprintln!(
        "opened {} ({} topology) and {} reference image(s) in {:.2?}; weights are made resident at first use",
        a.model.display(),
        cfg.layout.topology,
        images.len(),
        start.elapsed()
    );
    if !model.checkpoint.has_vision {
        eprintln!("note: the checkpoint has no vision tower (visual.*): the reference images reach the gen expert only, the und context is the text");
    }
    let mut req = EditRequest::new(a.prompt, images);
    req.negative_prompt = a.negative;
    req.steps = a.steps;
    req.text_guidance = a.guidance;
    req.image_guidance = a.image_guidance;
    req.seed = a.seed;
    req.size = a.width.zip(a.height);
    let out =
        edit(&model, &tokenizer, &req, progress_bar("denoising")).map_err(|e| e.to_string())?;
    write_png(&a.out, out.width, out.height, &out.rgb)?;
    let sizes: Vec<String> = out
        .references
        .iter()
        .map(|r| format!("{}x{}", r.width, r.height))
        .collect();
    eprintln!(
        "wrote {} ({}x{}): references {} encoded {:.2?}, und prefill {:.2?}, {} steps {:.2?}, VAE decode {:.2?}{}",
        a.out.display(),
        out.width,
        out.height,
        sizes.join(", "),
        out.timings.encode,
        out.timings.prefill,
        req.steps,
        out.timings.denoise,
        out.timings.vae,
        super::weights_note(out.timings.weights)
    );
    Ok(())
}
