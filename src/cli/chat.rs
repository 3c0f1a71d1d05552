//! `hbridge chat`: the answer alone on stdout, streamed as tokens arrive; prompt size, timings and the
//! stop reason on stderr.

use hbridge::chat::{ChatError, ChatPipeline, ChatRequest};
use hbridge::image::{load_rgb, ImageLimits};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct ChatArgs {
    /// Model directory (holding hbridge.json).
    pub model: PathBuf,
    /// The user's message (wrapped in the chat template).
    #[arg(short = 'p', long = "prompt")]
    pub prompt: String,
    /// An image (PNG or JPEG) to ask about; repeat for several. They enter the user turn before the text.
    #[arg(short = 'i', long = "image")]
    pub images: Vec<PathBuf>,
    /// Largest image accepted, in pixels (width x height); larger files are refused before decoding.
    #[arg(long, default_value_t = ImageLimits::default().max_pixels)]
    pub max_image_pixels: u64,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Nucleus sampling mass, in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Seed of the sampling RNG.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not stop at <|im_end|> / <|endoftext|>: generate exactly --max-tokens tokens.
    #[arg(long)]
    pub no_stop: bool,
}

pub fn run(args: ChatArgs, backend: super::Backend) -> Result<(), String> {
    let mut request = ChatRequest::new()
        .max_tokens(args.max_tokens)
        .temperature(args.temperature)
        .top_p(args.top_p)
        .seed(args.seed);
    if args.no_stop {
        request = request.no_stop();
    }
    // Bad input fails before the model is opened.
    request.validate().map_err(|e| e.to_string())?;
    if args.prompt.trim().is_empty() {
        return Err(format!("-p: {}", ChatError::EmptyPrompt));
    }

    // Unreadable or oversized images fail before the model is opened too.
    let limits = ImageLimits {
        max_pixels: args.max_image_pixels,
        ..ImageLimits::default()
    };
    let decoded = args
        .images
        .iter()
        .map(|path| load_rgb(path, &limits))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;

    let start = Instant::now();
    let chat = ChatPipeline::open_with(&args.model, backend.device, backend.storage)
        .map_err(|e| e.to_string())?;
    eprintln!(
        "opened {} in {:.2?}; weights are made resident at first use",
        args.model.display(),
        start.elapsed()
    );
    let mut images = Vec::with_capacity(decoded.len());
    if !decoded.is_empty() {
        let setup = chat.image_setup().map_err(|e| e.to_string())?;
        for (path, img) in args.images.iter().zip(&decoded) {
            let prepared = setup.prepare(path, img).map_err(|e| e.to_string())?;
            eprintln!(
                "image {}: {}x{} -> {}x{}, {} tokens",
                path.display(),
                img.width,
                img.height,
                prepared.width,
                prepared.height,
                prepared.tokens(setup.merge)
            );
            images.push(prepared);
        }
    }

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut streamed = String::new();
    let mut write_error = None;
    let result = chat.chat_stream_with_images(&args.prompt, &images, &request, |_, piece| {
        if piece.is_empty() {
            return ControlFlow::Continue(());
        }
        match out.write_all(piece.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {
                streamed.push_str(piece);
                ControlFlow::Continue(())
            }
            Err(e) => {
                write_error = Some(e);
                ControlFlow::Break(())
            }
        }
    });
    if let Some(e) = write_error {
        return Err(format!("writing the answer to stdout: {e}"));
    }
    let output = result.map_err(|e| e.to_string())?;
    // A trailing incomplete UTF-8 sequence is never streamed; the final text shows it.
    let rest = output.text.strip_prefix(streamed.as_str()).unwrap_or("");
    writeln!(out, "{rest}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing the answer to stdout: {e}"))?;

    let t = &output.timings;
    eprintln!(
        "prompt: {} tokens, prefill {:.1} ms; answer: {} tokens, decode {:.1} ms ({:.1} tokens/s); stopped: {}{}",
        output.prompt_tokens,
        t.prefill.as_secs_f64() * 1e3,
        output.tokens.len(),
        t.decode.as_secs_f64() * 1e3,
        t.decode_tokens_per_s(),
        output.stop_reason,
        super::weights_note(t.weights)
    );
    Ok(())
}
