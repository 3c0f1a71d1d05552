//! `hbridge demo`: the built-in tiny model end to end on this machine's backend: creates it in a cache
//! folder if absent, answers a prompt, generates an image, and says what each stage took.

use super::generate::progress_bar;
use hbridge::chat::{ChatPipeline, ChatRequest};
use hbridge::presets::preset;
use hbridge::t2i::{generate, write_png, ImageRequest};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the tiny model lives (default: $HBRIDGE_CACHE, else $XDG_CACHE_HOME/hbridge, else ~/.cache/hbridge).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The question for the und expert.
    #[arg(long, default_value = "What is in the picture?")]
    pub question: String,
    /// The prompt of the generated image.
    #[arg(long, default_value = "a red cube on a blue floor")]
    pub prompt: String,
    /// Output PNG.
    #[arg(short, long, default_value = "hbridge-demo.png")]
    pub out: PathBuf,
}

pub fn cache_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("HBRIDGE_CACHE") {
        return d;
    }
    if let Some(d) = env("XDG_CACHE_HOME") {
        return d.join("hbridge");
    }
    match env("HOME") {
        Some(h) => h.join(".cache").join("hbridge"),
        None => std::env::temp_dir().join("hbridge-cache"),
    }
}

pub fn run(a: DemoArgs, backend: super::Backend) -> Result<(), String> {
    super::check_output(&a.out)?;
    let dir = a.dir.unwrap_or_else(|| cache_dir().join("tiny"));
    let total = Instant::now();
    if !dir.join("hbridge.json").is_file() {
        let t = Instant::now();
        let p = preset("tiny").expect("the tiny preset exists");
        hbridge::init::write_checkpoint(&dir, &p, 0, hbridge::init::WeightDType::BF16, false)
            .map_err(|e| e.to_string())?;
        eprintln!(
            "created    the tiny model in {} ({:.2?})",
            dir.display(),
            t.elapsed()
        );
    }
    let t = Instant::now();
    let model = super::open_model(&dir, backend)?;
    let tokenizer = hbridge::prompt::load_tokenizer(&dir, &model.checkpoint.config.layout.und_dir)
        .map_err(|e| e.to_string())?;
    eprintln!(
        "loaded     {} ({:.2?}); weights are random, so answers and images are noise",
        dir.display(),
        t.elapsed()
    );

    let pipeline = ChatPipeline::new(model, Some(tokenizer));
    let req = ChatRequest::new().max_tokens(16);
    let answer = pipeline
        .chat(&a.question, &req)
        .map_err(|e| e.to_string())?;
    eprintln!(
        "question   \"{}\" ({} prompt tokens)",
        a.question, answer.prompt_tokens
    );
    println!("{}", answer.text);
    eprintln!(
        "answer     {} tokens: prefill {:.2?}, decode {:.2?} ({:.1} tokens/s), stop: {:?}{}",
        answer.tokens.len(),
        answer.timings.prefill,
        answer.timings.decode,
        answer.timings.decode_tokens_per_s(),
        answer.stop_reason,
        super::weights_note(answer.timings.weights)
    );
    let (model, tokenizer) = (
        pipeline.model(),
        pipeline.tokenizer().expect("loaded above"),
    );

    let req = ImageRequest::new(a.prompt.clone())
        .size(64, 48)
        .steps(20)
        .seed(0);
    eprintln!(
        "generating \"{}\": {}x{}, {} steps, guidance {}",
        a.prompt, req.width, req.height, req.steps, req.guidance
    );
    let out =
        generate(model, tokenizer, &req, progress_bar("denoising")).map_err(|e| e.to_string())?;
    write_png(&a.out, out.width, out.height, &out.rgb)?;
    eprintln!(
        "image      {}: und prefill (2 branches) {:.2?}, denoising {:.2?}, VAE decode {:.2?}{}",
        a.out.display(),
        out.timings.prefill,
        out.timings.denoise,
        out.timings.vae,
        super::weights_note(out.timings.weights)
    );
    super::report_peak_memory(model);
    eprintln!("total      {:.2?}", total.elapsed());
    Ok(())
}
