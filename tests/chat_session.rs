//! Chat sessions on the tiny fixture: a turn that prefills only its own tokens against the kept K/V
//! cache answers as the whole conversation prefilled from scratch does (text turns, a turn ended by a
//! stop token, a turn with an image, a text turn after it at M-RoPE positions past the image), and a
//! refused turn (or one asking for no tokens) leaves the conversation as it was.

mod gpu;

use hbridge::chat::{
    chat_template, generate_with_images, ChatImages, ChatPipeline, ChatRequest, ChatSession,
    StopReason,
};
use hbridge::image::{ImageLimits, PreparedImage};
use std::ops::ControlFlow;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pipeline() -> ChatPipeline {
    ChatPipeline::open(&root().join("tests/fixtures/tiny/model")).unwrap()
}

fn go() -> impl FnMut(u32, &str) -> ControlFlow<()> {
    |_, _| ControlFlow::Continue(())
}

fn encode(chat: &ChatPipeline, text: &str) -> Vec<u32> {
    chat.tokenizer()
        .unwrap()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec()
}

/// The text that follows an answer in the conversation: its end, the next user turn, the opening of
/// the assistant's.
fn next_turn(content: &str) -> String {
    format!("<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n")
}

/// The answer to `ids` prefilled whole (with `images` at their pads).
fn from_scratch(
    chat: &ChatPipeline,
    ids: &[u32],
    images: &[PreparedImage],
    request: &ChatRequest,
) -> Vec<u32> {
    let setup = chat.image_setup().ok();
    let images = setup
        .as_ref()
        .filter(|_| !images.is_empty())
        .map(|setup| ChatImages { setup, images });
    generate_with_images(
        chat.model(),
        ids,
        images,
        request,
        chat.default_stop_ids(),
        chat.tokenizer().ok(),
        go(),
    )
    .unwrap()
    .tokens
}

#[test]
fn text_turns_continue_the_cache_as_a_full_prefill_would() {
    let chat = pipeline();
    let req = ChatRequest::new().max_tokens(5).no_stop();
    let mut session = ChatSession::new();
    let first = chat.send(&mut session, "hi", &[], &req, go()).unwrap();
    let mut ids = encode(&chat, &chat_template("hi"));
    assert_eq!(first.prompt_tokens, ids.len());
    assert_eq!(first.tokens, from_scratch(&chat, &ids, &[], &req));
    ids.extend(&first.tokens);
    assert_eq!(session.context_tokens(), ids.len());
    // The answer's last token is sampled, not yet run: the next turn prefills it.
    assert_eq!(session.cached_tokens(), ids.len() - 1);

    let second = chat
        .send(&mut session, "tell me more", &[], &req, go())
        .unwrap();
    ids.extend(encode(&chat, &next_turn("tell me more")));
    assert_eq!(second.prompt_tokens, ids.len());
    assert_eq!(second.tokens, from_scratch(&chat, &ids, &[], &req));
    assert_eq!(session.turns(), 2);

    // An answer ended by a stop token: the token is neither in the answer nor in the cache, and the
    // next turn closes the answer with <|im_end|> as the template does.
    let stop = second.tokens[2];
    let stopping = ChatRequest {
        stop_ids: vec![stop],
        ..req.clone()
    };
    let third = chat
        .send(&mut session, "and then?", &[], &stopping, go())
        .unwrap();
    ids.extend(&second.tokens);
    ids.extend(encode(&chat, &next_turn("and then?")));
    let want = from_scratch(&chat, &ids, &[], &stopping);
    assert_eq!(third.tokens, want);
    if let StopReason::StopToken(t) = third.stop_reason {
        assert_eq!(t, stop);
    }
    ids.extend(&third.tokens);
    let fourth = chat.send(&mut session, "ok", &[], &req, go()).unwrap();
    ids.extend(encode(&chat, &next_turn("ok")));
    assert_eq!(fourth.tokens, from_scratch(&chat, &ids, &[], &req));

    session.reset();
    assert_eq!((session.context_tokens(), session.turns()), (0, 0));
    let again = chat.send(&mut session, "hi", &[], &req, go()).unwrap();
    assert_eq!(again.tokens, first.tokens);
}

#[test]
fn an_image_turn_prefills_again_and_later_text_turns_continue_past_it() {
    let chat = pipeline();
    let setup = chat.image_setup().unwrap();
    let image = chat
        .load_images(
            &[root().join("tests/fixtures/vision/a.png")],
            &ImageLimits::default(),
        )
        .unwrap();
    let req = ChatRequest::new().max_tokens(4).no_stop();
    let mut session = ChatSession::with_system("Be brief.");
    let first = chat.send(&mut session, "hi", &[], &req, go()).unwrap();
    let second = chat
        .send(&mut session, "What is this?", &image, &req, go())
        .unwrap();
    let third = chat.send(&mut session, "Why?", &[], &req, go()).unwrap();

    let mut ids = encode(
        &chat,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    );
    assert_eq!(first.tokens, from_scratch(&chat, &ids, &[], &req));
    ids.extend(&first.tokens);
    let content = setup.prompt_text(&image) + "What is this?";
    ids.extend(encode(&chat, &next_turn(&content)));
    assert_eq!(second.prompt_tokens, ids.len());
    assert_eq!(second.tokens, from_scratch(&chat, &ids, &image, &req));
    ids.extend(&second.tokens);
    ids.extend(encode(&chat, &next_turn("Why?")));
    assert_eq!(third.tokens, from_scratch(&chat, &ids, &image, &req));
    assert_eq!(session.cached_tokens(), ids.len() + third.tokens.len() - 1);
}

#[test]
fn a_refused_turn_leaves_the_conversation_as_it_was() {
    let chat = pipeline();
    let req = ChatRequest::new().max_tokens(3).no_stop();
    let mut session = ChatSession::new();
    chat.send(&mut session, "hi", &[], &req, go()).unwrap();
    let (tokens, cached) = (session.context_tokens(), session.cached_tokens());
    let too_long = ChatRequest::new().max_tokens(1 << 30);
    assert!(chat
        .send(&mut session, "more", &[], &too_long, go())
        .is_err());
    assert!(chat.send(&mut session, "  ", &[], &req, go()).is_err());
    let nothing = ChatRequest::new().max_tokens(0);
    let empty = chat
        .send(&mut session, "more", &[], &nothing, go())
        .unwrap();
    assert!(empty.tokens.is_empty() && empty.prompt_tokens > tokens);
    assert_eq!(
        (
            session.context_tokens(),
            session.cached_tokens(),
            session.turns()
        ),
        (tokens, cached, 1)
    );
    assert!(chat.send(&mut session, "more", &[], &req, go()).is_ok());
    assert_eq!(session.turns(), 2);
}

/// On CUDA, where the chunk runs the flash attention over the cache segment and its own (not the
/// split-KV decode path): a text turn against the cache answers as the conversation prefilled whole
/// on the same backend. Skipped without a GPU, a failure instead with HBRIDGE_REQUIRE_GPU=1.
#[test]
fn session_turns_equal_full_prefills_on_cuda() {
    use hbridge_engine::device::Device;
    if !gpu::gpu_or_skip() {
        return;
    }
    let chat =
        ChatPipeline::open_on(&root().join("tests/fixtures/tiny/model"), Device::Cuda).unwrap();
    let req = ChatRequest::new().max_tokens(4).no_stop();
    let mut session = ChatSession::new();
    let first = chat.send(&mut session, "hi", &[], &req, go()).unwrap();
    let second = chat
        .send(&mut session, "tell me more", &[], &req, go())
        .unwrap();
    let mut ids = encode(&chat, &chat_template("hi"));
    ids.extend(&first.tokens);
    ids.extend(encode(&chat, &next_turn("tell me more")));
    assert_eq!(second.tokens, from_scratch(&chat, &ids, &[], &req));
}
