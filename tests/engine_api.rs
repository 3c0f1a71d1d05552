//! The embedding entry point (`hbridge::engine::Engine`): loads on the requested backend or says why not,
//! serves the same answers as the pipelines it wraps, and a token callback can cancel an answer.

mod gpu;

use hbridge::budget::{BudgetError, OverLimit};
use hbridge::chat::{ChatError, ChatPipeline, ChatRequest};
use hbridge::engine::{Engine, EngineOptions, LoadError};
use hbridge::model::RunError;
use hbridge::t2i::ImageRequest;
use hbridge_engine::device::{cuda_probe, Device, DeviceRequest};
use std::ops::ControlFlow;
use std::path::PathBuf;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/model")
}

#[test]
fn load_errors_name_what_is_wrong() {
    let Err(e) = Engine::load("/nonexistent/model", &EngineOptions::cpu()) else {
        panic!("a missing model directory loaded")
    };
    assert!(e.to_string().contains("/nonexistent/model"), "{e}");
    if cuda_probe().is_err() {
        let cuda = EngineOptions::cpu().device(DeviceRequest::Cuda);
        match Engine::load(tiny(), &cuda) {
            Err(LoadError::Device(e)) => assert!(e.to_string().contains("--device cuda"), "{e}"),
            Err(e) => panic!("expected a device error, got {e}"),
            Ok(_) => panic!("CUDA loaded without a GPU"),
        }
        let auto = Engine::load(tiny(), &EngineOptions::default()).unwrap();
        assert_eq!(auto.device(), Device::Cpu);
        assert!(auto.notice().is_some_and(|n| n.contains("CPU backend")));
    }
}

#[test]
fn chat_matches_the_pipeline_and_can_be_cancelled() {
    let engine = Engine::load(tiny(), &EngineOptions::cpu()).unwrap();
    let pipeline = ChatPipeline::open(&tiny()).unwrap();
    let req = ChatRequest::new().max_tokens(6).no_stop();
    let a = engine
        .chat("Hello there", &req, |_, _| ControlFlow::Continue(()))
        .unwrap();
    let b = pipeline.chat("Hello there", &req).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.tokens.len(), 6);

    let mut seen = 0;
    let cut = engine
        .chat("Hello there", &req, |_, _| {
            seen += 1;
            if seen == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(cut.tokens, a.tokens[..2], "stopped after the second token");
}

/// One engine serves concurrent requests: 8 threads mixing chat and image requests get, each, exactly
/// the bytes the same request gets alone (issue 7 item 3).
#[test]
fn concurrent_requests_equal_serial_ones_bit_for_bit() {
    concurrent_matches_serial(EngineOptions::cpu());
}

/// The same on the CUDA backend (executors pooled per thread, CUDA graph replays): skipped without a
/// GPU, a failure instead with HBRIDGE_REQUIRE_GPU=1 (scripts/gpu-check.sh runs it on the GPU machine).
#[test]
fn concurrent_requests_equal_serial_ones_on_cuda() {
    if !gpu::gpu_or_skip() {
        return;
    }
    concurrent_matches_serial(EngineOptions::default().device(DeviceRequest::Cuda));
}

fn concurrent_matches_serial(options: EngineOptions) {
    let engine = std::sync::Arc::new(Engine::load(tiny(), &options).unwrap());
    let run = |e: &Engine, i: usize| -> Vec<u8> {
        if i.is_multiple_of(2) {
            let req = ChatRequest::new()
                .max_tokens(5)
                .no_stop()
                .temperature(0.8)
                .seed(i as u64);
            let out = e
                .chat(&format!("question {i}"), &req, |_, _| {
                    ControlFlow::Continue(())
                })
                .unwrap();
            out.tokens.iter().flat_map(|t| t.to_le_bytes()).collect()
        } else {
            let req = hbridge::t2i::ImageRequest::new(format!("picture {i}"))
                .size(32, 16)
                .steps(3)
                .seed(i as u64);
            e.generate_image(&req, |_, _| ControlFlow::Continue(()))
                .unwrap()
                .rgb
        }
    };
    let serial: Vec<Vec<u8>> = (0..8).map(|i| run(&engine, i)).collect();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let e = engine.clone();
            std::thread::spawn(move || run(&e, i))
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(
            t.join().unwrap(),
            serial[i],
            "request {i} differs when run concurrently"
        );
    }
}

fn image_request(i: u64) -> ImageRequest {
    ImageRequest::new(format!("picture {i}"))
        .size(32, 16)
        .steps(4)
        .seed(i)
}

#[test]
fn image_requests_cancel_from_the_progress_callback() {
    let engine = Engine::load(tiny(), &EngineOptions::cpu()).unwrap();
    let err = engine
        .generate_image(&image_request(1), |step, _| {
            if step == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
    assert!(
        matches!(err, RunError::Cancelled { step: 2, steps: 4 }),
        "{err}"
    );
    // The engine is still usable and its answer unchanged by the cancelled request.
    let fresh = Engine::load(tiny(), &EngineOptions::cpu()).unwrap();
    let go = |_: usize, _: usize| ControlFlow::Continue(());
    assert_eq!(
        engine.generate_image(&image_request(1), go).unwrap().rgb,
        fresh.generate_image(&image_request(1), go).unwrap().rgb
    );
}

#[test]
fn invalid_requests_are_refused_naming_the_argument() {
    let engine = Engine::load(tiny(), &EngineOptions::cpu()).unwrap();
    let go = |_: usize, _: usize| ControlFlow::Continue(());
    match engine.generate_image(&image_request(0).size(33, 16), go) {
        Err(RunError::Invalid(e)) => {
            assert_eq!(e.argument, "width");
            assert!(
                e.to_string()
                    .starts_with("width: 33 is not a positive multiple"),
                "{e}"
            );
        }
        other => panic!("expected an invalid width, got {other:?}"),
    }
    let err = engine
        .chat("hi", &ChatRequest::new().top_p(1.5), |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
    assert!(matches!(err, ChatError::InvalidTopP(_)), "{err}");
}

#[test]
fn a_request_over_the_memory_limit_gets_a_clear_error_and_the_engine_stays_usable() {
    let engine = Engine::load(tiny(), &EngineOptions::cpu().memory_limit(192 << 10)).unwrap();
    let go = |_: usize, _: usize| ControlFlow::Continue(());
    let needed = {
        let tok = ChatPipeline::open(&tiny()).unwrap();
        hbridge::t2i::state_bytes(engine.model(), tok.tokenizer().unwrap(), &image_request(0))
            .unwrap()
    };
    assert!(
        needed > 192 << 10,
        "the tiny image request needs {needed} bytes"
    );
    match engine.generate_image(&image_request(0), go) {
        Err(RunError::Memory(BudgetError::TooLarge { needed: n, limit })) => {
            assert_eq!((n, limit), (needed, 192 << 10));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let err = engine
        .chat("hello", &ChatRequest::new().max_tokens(4000), |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
    assert!(err.to_string().contains("memory limit"), "{err}");
    assert_eq!(
        engine.memory_budget().in_use(),
        0,
        "a refused request holds nothing"
    );
    // A small chat still fits and runs.
    let out = engine
        .chat(
            "hello",
            &ChatRequest::new().max_tokens(2).no_stop(),
            |_, _| ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!(out.tokens.len(), 2);
}

/// With room for one image request at a time, concurrent requests wait their turn: never more than one
/// holds memory, and each gets the serial result bit for bit.
#[test]
fn requests_wait_for_memory_and_keep_their_results() {
    let probe = Engine::load(tiny(), &EngineOptions::cpu()).unwrap();
    let tok = ChatPipeline::open(&tiny()).unwrap();
    let need = |i: u64| {
        hbridge::t2i::state_bytes(probe.model(), tok.tokenizer().unwrap(), &image_request(i))
            .unwrap()
    };
    let needed: Vec<u64> = (0..4).map(need).collect();
    let largest = *needed.iter().max().unwrap();
    let go = |_: usize, _: usize| ControlFlow::Continue(());
    let serial: Vec<Vec<u8>> = (0..4)
        .map(|i| probe.generate_image(&image_request(i), go).unwrap().rgb)
        .collect();

    // Room for one request, never two.
    let limit = largest + needed.iter().min().unwrap() / 2;
    let engine = std::sync::Arc::new(
        Engine::load(tiny(), &EngineOptions::cpu().memory_limit(limit)).unwrap(),
    );
    let threads: Vec<_> = (0..4u64)
        .map(|i| {
            let e = engine.clone();
            std::thread::spawn(move || {
                let mut most = 0;
                let out = e
                    .generate_image(&image_request(i), |_, _| {
                        most = most.max(e.memory_budget().in_use());
                        ControlFlow::Continue(())
                    })
                    .unwrap();
                (out.rgb, most)
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let (rgb, most) = t.join().unwrap();
        assert_eq!(rgb, serial[i], "request {i} differs");
        assert_eq!(
            most, needed[i],
            "request {i} ran beside another (limit {limit})"
        );
    }
    assert_eq!(engine.memory_budget().in_use(), 0);

    // Reject policy: busy now is an error at once, and the request runs once memory is free.
    let reject = Engine::load(
        tiny(),
        &EngineOptions::cpu()
            .memory_limit(limit)
            .over_limit(OverLimit::Reject),
    )
    .unwrap();
    let held = reject.memory_budget().reserve(largest).unwrap();
    match reject.generate_image(&image_request(0), go) {
        Err(RunError::Memory(BudgetError::Busy { .. })) => {}
        other => panic!("expected Busy, got {other:?}"),
    }
    drop(held);
    assert_eq!(
        reject.generate_image(&image_request(0), go).unwrap().rgb,
        serial[0]
    );
}

/// On the CPU, `DType::BF16` keeps the matrices in bf16, and `DType::Auto` keeps those the checkpoint
/// stores as bf16: on a bf16 checkpoint (the tiny fixture) both give the f32 engine's answers and
/// images bit for bit in about half the weight bytes.
#[test]
fn bf16_weights_on_the_cpu_give_the_same_results_on_a_bf16_checkpoint() {
    use hbridge::engine::DType;
    let f32 = Engine::load(tiny(), &EngineOptions::cpu().dtype(DType::F32)).unwrap();
    let req = ChatRequest::new().max_tokens(5).no_stop();
    let go = |_: u32, _: &str| ControlFlow::Continue(());
    let step = |_: usize, _: usize| ControlFlow::Continue(());
    let want_tokens = f32.chat("Hello there", &req, go).unwrap().tokens;
    let want_rgb = f32.generate_image(&image_request(3), step).unwrap().rgb;
    let f32_bytes = f32.model().resident_weight_bytes();
    for dtype in [DType::BF16, DType::Auto] {
        let e = Engine::load(tiny(), &EngineOptions::cpu().dtype(dtype)).unwrap();
        assert_eq!(
            e.chat("Hello there", &req, go).unwrap().tokens,
            want_tokens,
            "{dtype:?}"
        );
        assert_eq!(
            e.generate_image(&image_request(3), step).unwrap().rgb,
            want_rgb,
            "{dtype:?}"
        );
        let bytes = e.model().resident_weight_bytes();
        assert!(
            bytes * 10 < f32_bytes * 6,
            "{dtype:?} holds {bytes} bytes of weights, f32 {f32_bytes}"
        );
    }
}

/// On an f32 checkpoint `DType::Auto` keeps f32 on the CPU (rounding to bf16 would change results).
#[test]
fn auto_keeps_an_f32_checkpoint_in_f32_on_the_cpu() {
    use hbridge::engine::DType;
    let dir = std::env::temp_dir().join(format!("hbridge-auto-f32-{}", std::process::id()));
    let tiny = hbridge::presets::preset("tiny").unwrap();
    hbridge::init::write_checkpoint(&dir, &tiny, 5, hbridge::init::WeightDType::F32, true).unwrap();
    let load = |dtype| Engine::load(&dir, &EngineOptions::cpu().dtype(dtype)).unwrap();
    let (auto, f32, bf16) = (load(DType::Auto), load(DType::F32), load(DType::BF16));
    let req = ChatRequest::new().max_tokens(3).no_stop();
    let go = |_: u32, _: &str| ControlFlow::Continue(());
    let tokens = |e: &Engine| e.chat("Hello there", &req, go).unwrap().tokens;
    assert_eq!(tokens(&auto), tokens(&f32));
    let bytes = |e: &Engine| e.model().resident_weight_bytes();
    assert_eq!(bytes(&auto), bytes(&f32));
    assert!(bytes(&bf16) * 10 < bytes(&f32) * 6);
    std::fs::remove_dir_all(&dir).ok();
}

fn vision_image(name: &str) -> hbridge::image::RgbImage {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vision")
        .join(name);
    hbridge::image::load_rgb(&path, &hbridge::image::ImageLimits::default()).unwrap()
}

/// Chat about images through the engine gives the pipeline's answer (the CLI's `chat -i` path).
#[test]
fn chat_with_images_matches_the_pipeline() {
    let engine = Engine::load(tiny(), &EngineOptions::cpu()).unwrap();
    let pipeline = ChatPipeline::open(&tiny()).unwrap();
    let images = [vision_image("a.png"), vision_image("e.jpg")];
    let req = ChatRequest::new().max_tokens(4).no_stop();
    let go = |_: u32, _: &str| ControlFlow::Continue(());
    let a = engine
        .chat_with_images("What is in these images?", &images, &req, go)
        .unwrap();
    let prepared: Vec<_> = images
        .iter()
        .map(|img| {
            pipeline
                .image_setup()
                .unwrap()
                .prepare(std::path::Path::new("image"), img)
                .unwrap()
        })
        .collect();
    let b = pipeline
        .chat_stream_with_images("What is in these images?", &prepared, &req, go)
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.prompt_tokens, b.prompt_tokens);
    assert!(a.prompt_tokens > 30, "the images' tokens are in the prompt");
}

/// An edit's estimate counts its three branches and references: over the limit it is refused before any
/// compute, under it the edit runs.
#[test]
fn edit_requests_respect_the_memory_limit() {
    let reference = vision_image("a.png");
    let req = hbridge::edit::EditRequest::new("make it blue", vec![reference])
        .steps(2)
        .guidance_scales(5.0, 2.0)
        .seed(1);
    let probe = Engine::load(tiny(), &EngineOptions::cpu()).unwrap();
    let tok = ChatPipeline::open(&tiny()).unwrap();
    let needed = hbridge::edit::state_bytes(probe.model(), tok.tokenizer().unwrap(), &req).unwrap();
    let text_only = hbridge::t2i::state_bytes(
        probe.model(),
        tok.tokenizer().unwrap(),
        &ImageRequest::new("make it blue").size(32, 32),
    )
    .unwrap();
    assert!(
        needed > text_only,
        "edit {needed} vs text-to-image {text_only}"
    );
    let go = |_: usize, _: usize| ControlFlow::Continue(());
    let tight = Engine::load(tiny(), &EngineOptions::cpu().memory_limit(needed - 1)).unwrap();
    match tight.edit_image(&req, go) {
        Err(RunError::Memory(BudgetError::TooLarge { needed: n, .. })) => assert_eq!(n, needed),
        other => panic!("expected TooLarge, got {:?}", other.map(|o| o.width)),
    }
    let fits = Engine::load(tiny(), &EngineOptions::cpu().memory_limit(needed)).unwrap();
    let out = fits.edit_image(&req, go).unwrap();
    assert_eq!(out.rgb, probe.edit_image(&req, go).unwrap().rgb);
}

/// A warm-up makes resident every weight a chat and a text-to-image request need: the real requests
/// after it add none, and they give what they give without it.
#[test]
fn warm_up_makes_the_requests_weights_resident() {
    use hbridge::engine::WarmUp;
    let engine = Engine::load(tiny(), &EngineOptions::cpu()).unwrap();
    assert_eq!(engine.model().resident_weight_bytes(), 0);
    engine.warm_up(WarmUp::ALL).unwrap();
    let warmed = engine.model().resident_weight_bytes();
    assert!(warmed > 0);
    let req = ChatRequest::new().max_tokens(4).no_stop();
    let answer = engine
        .chat("What is a bridge?", &req, |_, _| ControlFlow::Continue(()))
        .unwrap();
    let image_req = ImageRequest::new("a red fox").steps(2).size(64, 48);
    let image = engine
        .generate_image(&image_req, |_, _| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(engine.model().resident_weight_bytes(), warmed);

    let cold = Engine::load(tiny(), &EngineOptions::cpu()).unwrap();
    let cold_answer = cold
        .chat("What is a bridge?", &req, |_, _| ControlFlow::Continue(()))
        .unwrap();
    let cold_image = cold
        .generate_image(&image_req, |_, _| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(answer.tokens, cold_answer.tokens);
    assert!(image.rgb == cold_image.rgb, "the warm-up changed the image");
    // Weights made resident are reported apart: none after the warm-up, some on a cold engine.
    assert!(answer.timings.weights.is_zero() && image.timings.weights.is_zero());
    assert!(!cold_answer.timings.weights.is_zero() && !cold_image.timings.weights.is_zero());

    // Only what is asked: chat alone leaves the gen expert out.
    let chat_only = Engine::load(tiny(), &EngineOptions::cpu()).unwrap();
    chat_only
        .warm_up(WarmUp {
            chat: true,
            images: false,
        })
        .unwrap();
    let und = chat_only.model().resident_weight_bytes();
    assert!(und > 0 && und < warmed, "{und} of {warmed}");
}

/// A conversation with images in two user turns and an assistant turn between them: its prompt is the
/// Qwen template of every turn (each user turn's image tokens before its text), prefilled whole; a
/// malformed conversation is refused before any compute.
#[test]
fn chat_turns_prefill_the_whole_conversation() {
    use hbridge::chat::{conversation_template, ChatImages, Role, Turn};
    let engine = Engine::load(tiny(), &EngineOptions::cpu()).unwrap();
    let pipeline = ChatPipeline::open(&tiny()).unwrap();
    let (a, e) = ([vision_image("a.png")], [vision_image("e.jpg")]);
    let turns = [
        Turn::system("Be brief."),
        Turn::user("What is this?").with_images(&a),
        Turn::assistant("A picture."),
        Turn::user("And this one?").with_images(&e),
    ];
    let req = ChatRequest::new().max_tokens(4).no_stop();
    let go = |_: u32, _: &str| ControlFlow::Continue(());
    let got = engine.chat_turns(&turns, &req, go).unwrap();

    // The same prompt built by hand and run through the pipeline's token-id entry point.
    let setup = pipeline.image_setup().unwrap();
    let prepare = |img| setup.prepare(std::path::Path::new("image"), img).unwrap();
    let (pa, pe) = (prepare(&a[0]), prepare(&e[0]));
    let text = conversation_template([
        (Role::System, "Be brief."),
        (
            Role::User,
            &(setup.prompt_text(std::slice::from_ref(&pa)) + "What is this?"),
        ),
        (Role::Assistant, "A picture."),
        (
            Role::User,
            &(setup.prompt_text(std::slice::from_ref(&pe)) + "And this one?"),
        ),
    ]);
    let ids = pipeline
        .tokenizer()
        .unwrap()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec();
    let images = [pa, pe];
    let want = hbridge::chat::generate_with_images(
        pipeline.model(),
        &ids,
        Some(ChatImages {
            setup: &setup,
            images: &images,
        }),
        &req,
        pipeline.default_stop_ids(),
        pipeline.tokenizer().ok(),
        go,
    )
    .unwrap();
    assert_eq!(got.prompt_tokens, ids.len());
    assert_eq!(got.tokens, want.tokens);
    let one_turn = engine
        .chat_with_images("And this one?", &e, &req, go)
        .unwrap();
    assert!(got.prompt_tokens > one_turn.prompt_tokens + 16);

    let Err(err) = engine.chat_turns(&turns[..3], &req, go) else {
        panic!("a conversation ending with the assistant's turn was answered")
    };
    assert!(err.to_string().contains("turn 2"), "{err}");
}

/// A chat session through the engine answers as the pipeline's does, and its turns count against the
/// memory limit like requests.
#[test]
fn engine_sessions_match_the_pipeline_and_respect_the_memory_limit() {
    use hbridge::chat::ChatSession;
    let engine = Engine::load(tiny(), &EngineOptions::cpu()).unwrap();
    let pipeline = ChatPipeline::open(&tiny()).unwrap();
    let req = ChatRequest::new().max_tokens(4).no_stop();
    let go = |_: u32, _: &str| ControlFlow::Continue(());
    let image = [vision_image("a.png")];
    let prepared = pipeline
        .image_setup()
        .unwrap()
        .prepare(std::path::Path::new("image 0"), &image[0])
        .unwrap();
    let (mut a, mut b) = (ChatSession::new(), ChatSession::new());
    for (text, with_image) in [("hi", false), ("What is this?", true), ("Why?", false)] {
        let imgs: &[_] = if with_image { &image } else { &[] };
        let prep = if with_image {
            std::slice::from_ref(&prepared)
        } else {
            &[]
        };
        let got = engine.send(&mut a, text, imgs, &req, go).unwrap();
        let want = pipeline.send(&mut b, text, prep, &req, go).unwrap();
        assert_eq!(got.tokens, want.tokens, "turn {text:?}");
        assert_eq!(got.prompt_tokens, want.prompt_tokens);
    }
    assert_eq!(a.turns(), 3);

    let limited = Engine::load(tiny(), &EngineOptions::cpu().memory_limit(1024)).unwrap();
    let mut s = ChatSession::new();
    let Err(e) = limited.send(&mut s, "hi", &[], &req, go) else {
        panic!("a turn over the memory limit ran")
    };
    assert!(e.to_string().contains("memory"), "{e}");
    assert_eq!(s.context_tokens(), 0);
}
