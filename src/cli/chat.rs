//! `hbridge chat`: the answer alone on stdout, streamed as tokens arrive; prompt size, timings and the
//! stop reason on stderr. `--interactive` goes on reading user turns from stdin, a line each, and
//! answers each after the conversation so far, whose K/V cache a chat session keeps.

use hbridge::chat::{ChatError, ChatPipeline, ChatRequest, ChatSession};
use hbridge::image::{load_rgb, ImageLimits, PreparedImage, RgbImage};
use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct ChatArgs {
    /// Model directory (holding hbridge.json).
    pub model: PathBuf,
    /// The user's message (wrapped in the chat template). Required unless --interactive, where it is
    /// the first turn.
    #[arg(short = 'p', long = "prompt", required_unless_present = "interactive")]
    pub prompt: Option<String>,
    /// The system turn (default: "You are a helpful assistant.").
    #[arg(long)]
    pub system: Option<String>,
    /// After the first answer, read further user turns from stdin, one per line, each answered after
    /// the conversation so far, whose K/V cache is kept: a text turn prefills only its own tokens
    /// (`/image PATH` adds an image to the next turn, `/reset` forgets the conversation, `/exit` or
    /// end of input quits).
    #[arg(long)]
    pub interactive: bool,
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
    if args.prompt.as_deref().is_some_and(|p| p.trim().is_empty()) {
        return Err(format!("-p: {}", ChatError::EmptyPrompt));
    }
    if args.system.as_deref().is_some_and(|p| p.trim().is_empty()) {
        return Err("--system: the system turn is empty".into());
    }
    if args.prompt.is_none() && !args.images.is_empty() {
        return Err("-i: images go with a prompt (-p), the first user turn".into());
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
    let images = args
        .images
        .iter()
        .zip(&decoded)
        .map(|(path, img)| prepare(&chat, path, img))
        .collect::<Result<Vec<_>, _>>()?;

    let mut session = match &args.system {
        Some(system) => ChatSession::with_system(system),
        None => ChatSession::new(),
    };
    if let Some(prompt) = &args.prompt {
        answer(&chat, &mut session, prompt, &images, &request)?;
    }
    if !args.interactive {
        return Ok(());
    }
    eprintln!(
        "interactive: one user turn per line; /image PATH adds an image to the next turn, /reset \
         forgets the conversation, /exit quits"
    );
    let mut queued: Vec<PreparedImage> = Vec::new();
    let stdin = std::io::stdin();
    // A prompt mark only for a person at a terminal, on stderr: stdout stays the answers alone.
    let at_terminal = stdin.is_terminal();
    let mut line = String::new();
    loop {
        if at_terminal {
            eprint!("> ");
        }
        line.clear();
        if stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading stdin: {e}"))?
            == 0
        {
            break;
        }
        let text = line.trim_end_matches(['\r', '\n']);
        match text.trim() {
            "" => continue,
            "/exit" => break,
            "/reset" => {
                session.reset();
                queued.clear();
                eprintln!("conversation forgotten");
                continue;
            }
            _ => {}
        }
        if let Some(path) = text.trim().strip_prefix("/image ") {
            let path = PathBuf::from(path.trim());
            let image = load_rgb(&path, &limits)
                .map_err(|e| e.to_string())
                .and_then(|img| prepare(&chat, &path, &img));
            match image {
                Ok(image) => queued.push(image),
                Err(e) => eprintln!("error: {e}"),
            }
            continue;
        }
        // A turn the model cannot take (too long, ...) is reported; the conversation goes on.
        match answer(&chat, &mut session, text, &queued, &request) {
            Ok(()) => queued.clear(),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(())
}

/// `img` (from `path`) resized and patched for the vision tower, with a line on stderr.
fn prepare(chat: &ChatPipeline, path: &Path, img: &RgbImage) -> Result<PreparedImage, String> {
    let setup = chat.image_setup().map_err(|e| e.to_string())?;
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
    Ok(prepared)
}

/// Answers `prompt` (with `images`) as the next turn of `session`, streaming the answer to stdout and
/// its figures to stderr.
fn answer(
    chat: &ChatPipeline,
    session: &mut ChatSession,
    prompt: &str,
    images: &[PreparedImage],
    request: &ChatRequest,
) -> Result<(), String> {
    // A turn with images prefills the conversation again.
    let cached = match images {
        [] => session.cached_tokens(),
        _ => 0,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut streamed = String::new();
    let mut write_error = None;
    let result = chat.send(session, prompt, images, request, |_, piece| {
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
    // A later turn prefills only what its session's cache does not hold yet.
    let reused = match cached {
        0 => String::new(),
        n => format!(" ({n} already cached)"),
    };
    eprintln!(
        "prompt: {} tokens{reused}, prefill {:.1} ms; answer: {} tokens, decode {:.1} ms ({:.1} tokens/s); stopped: {}{}",
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
