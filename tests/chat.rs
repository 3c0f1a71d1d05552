//! The chat pipeline on the tiny fixture: the reference's greedy tokens, the template and tokenizer,
//! seeded sampling, stop tokens, cancellation, streaming text, every bad request, and `hbridge chat`.

mod target_runner;

use hbridge::chat::{
    chat_template, sample, ChatError, ChatPipeline, ChatRequest, Rng, StopReason, TextStream,
};
use hbridge::tensor_io::read_tensors;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

fn pipeline() -> ChatPipeline {
    ChatPipeline::open(&fixture().join("model")).unwrap_or_else(|e| panic!("{e}"))
}

fn fixture_ids(file: &str, name: &str) -> Vec<u32> {
    let tensors = read_tensors(&fixture().join(file)).unwrap_or_else(|e| panic!("{e}"));
    let t = tensors
        .get(name)
        .unwrap_or_else(|| panic!("{file} lacks {name}"));
    t.as_i32()
        .unwrap_or_else(|| panic!("{name} is not integer"))
        .iter()
        .map(|&i| u32::try_from(i).expect("non-negative id"))
        .collect()
}

fn meta() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture().join("meta.json")).expect("meta.json");
    serde_json::from_str(&text).expect("meta.json parses")
}

fn go() -> impl FnMut(u32, &str) -> ControlFlow<()> {
    |_, _| ControlFlow::Continue(())
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "hbridge-chat-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh tiny checkpoint written by the binary.
fn init_tiny(dir: &Path) {
    let out = target_runner::hbridge()
        .arg("init-tiny")
        .arg(dir)
        .output()
        .expect("running hbridge init-tiny");
    assert!(
        out.status.success(),
        "init-tiny failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn template_and_tokenizer_reproduce_the_fixture_prompt() {
    let meta = meta();
    let user = meta["chat"].as_str().expect("meta.chat");
    assert_eq!(
        chat_template(user),
        meta["chat_text"].as_str().expect("meta.chat_text")
    );
    let ids = pipeline().encode_prompt(user).expect("encode");
    assert_eq!(ids, fixture_ids("inputs.safetensors", "chat.input_ids"));
}

#[test]
fn greedy_reproduces_the_reference_tokens() {
    let chat = pipeline();
    let prompt = fixture_ids("inputs.safetensors", "chat.input_ids");
    let want = fixture_ids("outputs.safetensors", "chat.greedy_ids");
    assert_eq!(want.len(), 8);
    let request = ChatRequest::new().max_tokens(8).no_stop();
    let out = chat
        .generate_from_ids(&prompt, &request, go())
        .expect("generate");
    assert_eq!(out.tokens, want);
    assert_eq!(out.stop_reason, StopReason::MaxTokens);
    assert_eq!(out.prompt_tokens, prompt.len());
    assert_eq!(out.timings.decode_steps, 7);
    // The text route gives the same tokens.
    let user = meta()["chat"].as_str().expect("meta.chat").to_string();
    let out = chat.chat(&user, &request).expect("chat");
    assert_eq!(out.tokens, want);
    // And forward's greedy (a thin call into the pipeline).
    let model = chat.model();
    let ids: Vec<i32> = prompt.iter().map(|&i| i as i32).collect();
    let g = hbridge::forward::greedy(model, &ids, 8).expect("forward::greedy");
    assert_eq!(g, want.iter().map(|&i| i as i32).collect::<Vec<_>>());
}

#[test]
fn default_stops_are_the_end_tokens() {
    let chat = pipeline();
    let tok = chat.tokenizer().expect("tokenizer");
    let mut want = vec![
        tok.token_to_id("<|im_end|>").expect("im_end"),
        tok.token_to_id("<|endoftext|>").expect("endoftext"),
    ];
    let mut got = chat.default_stop_ids().to_vec();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn sampling_is_seeded() {
    let chat = pipeline();
    let run = |seed: u64| {
        let request = ChatRequest::new()
            .max_tokens(12)
            .temperature(0.8)
            .top_p(0.9)
            .seed(seed)
            .no_stop();
        chat.chat("Tell me about the tree.", &request)
            .expect("chat")
            .tokens
    };
    let first = run(0);
    assert_eq!(first.len(), 12);
    assert_eq!(run(0), first, "same seed, same tokens");
    assert!(
        (1..6).any(|s| run(s) != first),
        "five other seeds all gave the tokens of seed 0"
    );
}

#[test]
fn sample_edge_cases() {
    let mut rng = Rng::new(3);
    assert_eq!(sample(&[0.0, 5.0, 1.0], 0.0, 1.0, &mut rng), 1);
    // A tiny nucleus keeps only the most likely token.
    for _ in 0..20 {
        assert_eq!(sample(&[0.0, 5.0, 1.0], 1.0, 1e-6, &mut rng), 1);
    }
    // Degenerate rows do not panic and give a valid index.
    assert!(sample(&[], 1.0, 1.0, &mut rng) == 0);
    assert!(sample(&[f32::NAN; 4], 1.0, 0.5, &mut rng) < 4);
    assert!(sample(&[f32::INFINITY, 0.0], 1.0, 0.5, &mut rng) < 2);
    assert!(sample(&[1.0, 2.0], 1e-30, 0.9, &mut rng) == 1);
    assert!(sample(&[1.0, 2.0], f32::INFINITY, 0.9, &mut rng) < 2);
    // Same seed, same draws.
    let draws = |seed| {
        let mut r = Rng::new(seed);
        (0..50)
            .map(|_| sample(&[1.0, 1.1, 0.9, 1.2, 0.8], 1.0, 0.95, &mut r))
            .collect::<Vec<_>>()
    };
    assert_eq!(draws(9), draws(9));
    assert_ne!(draws(9), draws(10));
}

#[test]
fn stop_tokens_end_the_answer_and_are_not_part_of_it() {
    let chat = pipeline();
    let prompt = fixture_ids("inputs.safetensors", "chat.input_ids");
    let greedy = fixture_ids("outputs.safetensors", "chat.greedy_ids");
    // Stopping at the first greedy token: no answer at all.
    let request = ChatRequest::new()
        .max_tokens(8)
        .no_stop()
        .stop_token(greedy[0]);
    let mut calls = 0;
    let out = chat
        .generate_from_ids(&prompt, &request, |_, _| {
            calls += 1;
            ControlFlow::Continue(())
        })
        .expect("generate");
    assert!(out.tokens.is_empty());
    assert_eq!(calls, 0);
    assert_eq!(out.stop_reason, StopReason::StopToken(greedy[0]));
    assert_eq!(out.text, "");
    // Stopping at a later one: the tokens before it.
    let k = (1..greedy.len())
        .find(|&k| !greedy[..k].contains(&greedy[k]))
        .expect("a token not seen before");
    let request = ChatRequest::new()
        .max_tokens(8)
        .no_stop()
        .stop_token(greedy[k]);
    let out = chat
        .generate_from_ids(&prompt, &request, go())
        .expect("generate");
    assert_eq!(out.tokens, greedy[..k]);
    assert_eq!(out.stop_reason, StopReason::StopToken(greedy[k]));
}

#[test]
fn the_callback_can_cancel_and_streams_the_text() {
    let chat = pipeline();
    let request = ChatRequest::new().max_tokens(8).no_stop();
    let mut seen = Vec::new();
    let out = chat
        .chat_stream("Tell me about the tree.", &request, |id, _| {
            seen.push(id);
            if seen.len() == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("chat");
    assert_eq!(out.stop_reason, StopReason::Cancelled);
    assert_eq!(out.tokens, seen);
    assert_eq!(out.tokens.len(), 3);
    assert_eq!(out.timings.decode_steps, 2);

    // The pieces concatenate to the text (but for a held-back incomplete UTF-8 tail).
    let mut streamed = String::new();
    let out = chat
        .chat_stream(
            "Tell me about the tree.",
            &ChatRequest::new().max_tokens(30).no_stop(),
            |_, piece| {
                streamed.push_str(piece);
                ControlFlow::Continue(())
            },
        )
        .expect("chat");
    assert!(
        out.text.starts_with(&streamed),
        "{streamed:?} vs {:?}",
        out.text
    );
    if !out.text.ends_with('\u{FFFD}') {
        assert_eq!(streamed, out.text);
    }
}

#[test]
fn multibyte_text_streams_whole_characters() {
    let chat = pipeline();
    let tok = chat.tokenizer().expect("tokenizer");
    let text = "héllo wörld, 世界 🌳!";
    let ids = tok.encode(text, false).expect("encode").get_ids().to_vec();
    let mut stream = TextStream::new(tok);
    let mut joined = String::new();
    for id in ids {
        let piece = stream.push(id);
        assert!(!piece.contains('\u{FFFD}'), "split character in {piece:?}");
        joined.push_str(&piece);
    }
    assert_eq!(joined, text);
}

#[test]
fn bad_requests_are_typed_errors() {
    let chat = pipeline();
    let ok = ChatRequest::new().max_tokens(2);
    let prompt = fixture_ids("inputs.safetensors", "chat.input_ids");
    let err = |r: Result<hbridge::chat::ChatOutput, ChatError>| match r {
        Ok(o) => panic!("expected an error, got {o:?}"),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e
        }
    };

    assert!(matches!(err(chat.chat("", &ok)), ChatError::EmptyPrompt));
    assert!(matches!(
        err(chat.chat(" \n ", &ok)),
        ChatError::EmptyPrompt
    ));
    assert!(matches!(
        err(chat.generate_from_ids(&[], &ok, go())),
        ChatError::EmptyPrompt
    ));
    for t in [-0.1, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert!(matches!(
            err(chat.chat("hi", &ok.clone().temperature(t))),
            ChatError::InvalidTemperature(_)
        ));
    }
    for p in [0.0, -0.5, 1.01, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            err(chat.chat("hi", &ok.clone().top_p(p))),
            ChatError::InvalidTopP(_)
        ));
    }
    assert!(matches!(
        err(chat.generate_from_ids(&[1, 512], &ok, go())),
        ChatError::TokenOutOfVocab {
            id: 512,
            vocab: 512
        }
    ));
    let limit = chat
        .model()
        .checkpoint
        .config
        .und
        .max_position_embeddings
        .expect("the tiny config sets max_position_embeddings");
    assert!(matches!(
        err(chat.generate_from_ids(&vec![7; limit + 1], &ok, go())),
        ChatError::PromptTooLong { tokens, limit: l } if tokens == limit + 1 && l == limit
    ));
    let over = limit - prompt.len() + 1;
    assert!(matches!(
        err(chat.generate_from_ids(&prompt, &ok.clone().max_tokens(over), go())),
        ChatError::ContextOverflow { .. }
    ));
    assert!(matches!(
        err(chat.chat("hi", &ok.clone().max_tokens(usize::MAX))),
        ChatError::ContextOverflow { .. }
    ));
    // The context's edge itself is fine (cancelled at once to stay fast).
    let edge = ok.clone().max_tokens(limit - prompt.len());
    let out = chat
        .generate_from_ids(&prompt, &edge, |_, _| ControlFlow::Break(()))
        .expect("prompt + max_tokens == context");
    assert_eq!(out.stop_reason, StopReason::Cancelled);
    // max_tokens 0: allowed, an empty answer without running the model.
    let out = chat
        .chat("hi", &ok.clone().max_tokens(0))
        .expect("max_tokens 0");
    assert!(out.tokens.is_empty() && out.text.is_empty());
    assert_eq!(out.stop_reason, StopReason::MaxTokens);
    assert!(out.prompt_tokens > 0);
}

#[test]
fn missing_or_broken_tokenizer() {
    let dir = TempDir::new("tok");
    let model = dir.0.join("m");
    init_tiny(&model);
    let tokenizer = model.join("und/tokenizer.json");
    std::fs::remove_file(&tokenizer).expect("remove tokenizer");
    let chat = ChatPipeline::open(&model).expect("open without a tokenizer");
    match chat.chat("hi", &ChatRequest::new()) {
        Err(ChatError::NoTokenizer { path }) => assert_eq!(path, tokenizer),
        other => panic!("expected NoTokenizer, got {other:?}"),
    }
    let message = chat.encode_prompt("hi").unwrap_err().to_string();
    assert!(message.contains("tokenizer.json") && message.contains("generate_from_ids"));
    // Token ids still work; the stop tokens fall back to the config's eos.
    let eos = chat
        .model()
        .checkpoint
        .config
        .und
        .special_tokens
        .eos_token_id
        .expect("eos_token_id") as u32;
    assert_eq!(chat.default_stop_ids(), [eos]);
    let out = chat
        .generate_from_ids(
            &[1, 2, 3],
            &ChatRequest::new().max_tokens(4).no_stop(),
            go(),
        )
        .expect("ids without a tokenizer");
    assert_eq!(out.tokens.len(), 4);
    assert_eq!(out.text, "");

    std::fs::write(&tokenizer, "{ not json").expect("write");
    let chat = ChatPipeline::open(&model).expect("open with a broken tokenizer");
    assert!(matches!(
        chat.chat("hi", &ChatRequest::new()),
        Err(ChatError::BadTokenizer { .. })
    ));
    assert!(chat
        .generate_from_ids(&[1, 2, 3], &ChatRequest::new().max_tokens(2), go())
        .is_ok());
}

#[test]
fn cli_chat() {
    let dir = TempDir::new("cli");
    let model = dir.0.join("m");
    init_tiny(&model);
    let chat = |args: &[&str]| {
        target_runner::hbridge()
            .arg("chat")
            .arg(&model)
            .args(args)
            .output()
            .expect("running hbridge chat")
    };

    let out = chat(&["-p", "hi", "--max-tokens", "5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chat failed: {stderr}");
    assert!(!out.stdout.is_empty());
    assert!(
        stderr.contains("prompt:") && stderr.contains("stopped:"),
        "{stderr}"
    );

    let out = chat(&[
        "-p",
        "hi",
        "--max-tokens",
        "6",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--seed",
        "4",
        "--no-stop",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("6 tokens"));

    for bad in [
        vec!["-p", ""],
        vec!["-p", "hi", "--temperature", "-1"],
        vec!["-p", "hi", "--top-p", "0"],
        vec!["-p", "hi", "--max-tokens", "100000"],
        vec!["-p", "hi", "--weight-dtype", "f16"],
    ] {
        let out = chat(&bad);
        assert!(!out.status.success(), "{bad:?} succeeded");
        assert!(out.stdout.is_empty(), "{bad:?} wrote to stdout");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("error:"), "{bad:?}: {stderr}");
    }

    // bf16 weight storage on the CPU: the same answer on the (bf16) tiny checkpoint.
    let f32 = chat(&["-p", "hi", "--max-tokens", "5", "--no-stop"]);
    let bf16 = chat(&[
        "--weight-dtype",
        "bf16",
        "-p",
        "hi",
        "--max-tokens",
        "5",
        "--no-stop",
    ]);
    assert!(
        bf16.status.success(),
        "{}",
        String::from_utf8_lossy(&bf16.stderr)
    );
    assert_eq!(bf16.stdout, f32.stdout);
}

/// For each answer `hbridge chat` reported on `stderr`, whether its turn ran against a session's cache.
fn cached_turns(stderr: &str) -> Vec<bool> {
    stderr
        .lines()
        .filter(|l| l.starts_with("prompt: "))
        .map(|l| l.contains("already cached"))
        .collect()
}

/// `hbridge chat --interactive`: each stdin line is a user turn answered after the conversation so far
/// (its prompt grows by the last answer and the new turn), `/reset` forgets it, `/exit` quits;
/// `--system` replaces the system turn.
#[test]
fn cli_chat_interactive_keeps_the_conversation() {
    use std::io::Write;
    let dir = TempDir::new("cli-interactive");
    let model = dir.0.join("m");
    init_tiny(&model);
    let run = |args: &[&str], stdin: &str| {
        let mut child = target_runner::hbridge()
            .arg("chat")
            .arg(&model)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running hbridge chat");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        // (prompt tokens, answer tokens) of every answer.
        let counts: Vec<(usize, usize)> = stderr
            .lines()
            .filter_map(|l| {
                let prompt = l
                    .strip_prefix("prompt: ")?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()?;
                let answer = l
                    .split("answer: ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()?;
                Some((prompt, answer))
            })
            .collect();
        (counts, stderr)
    };
    let flags = ["--max-tokens", "3", "--no-stop", "--interactive"];
    let mut args = vec!["-p", "hi"];
    args.extend(flags);
    let (counts, stderr) = run(&args, "tell me more\n\n/reset\nhi\n/exit\nnever read\n");
    assert_eq!(counts.len(), 3, "{stderr}");
    let (first, second, after_reset) = (counts[0], counts[1], counts[2]);
    // The second prompt holds the first (its closing `<|im_start|>assistant\n` now opens the answer),
    // the answer, the end of that turn and the new user turn.
    assert!(
        second.0 > first.0 + first.1 + 4,
        "{first:?} -> {second:?}: {stderr}"
    );
    assert_eq!(after_reset, first, "{stderr}");
    // The second turn ran against the first's cache; the turn after /reset did not.
    assert_eq!(cached_turns(&stderr), [false, true, false], "{stderr}");

    let mut args = vec!["-p", "hi", "--system", "Answer in one word."];
    args.extend(flags);
    let (with_system, stderr) = run(&args, "");
    assert_eq!(with_system.len(), 1, "{stderr}");
    assert_ne!(with_system[0].0, first.0, "{stderr}");

    // `/image PATH` adds an image to the next turn, which prefills the conversation again.
    let image = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vision/a.png");
    let mut args = vec!["-p", "hi"];
    args.extend(flags);
    let stdin = format!("/image {}\nwhat is this?\nwhy?\n", image.display());
    let (counts, stderr) = run(&args, &stdin);
    assert_eq!(counts.len(), 3, "{stderr}");
    assert!(stderr.contains("a.png: 70x45 -> 56x56"), "{stderr}");
    assert_eq!(cached_turns(&stderr), [false, false, true], "{stderr}");

    // Interactive without -p starts from stdin; images need a prompt to go with.
    let (counts, stderr) = run(&flags, "hi\n");
    assert_eq!(counts, [first], "{stderr}");
    let out = target_runner::hbridge()
        .arg("chat")
        .arg(&model)
        .args(["--interactive", "-i", "x.png"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-i:"));
}
