//! The embedding entry point (`hbridge::engine::Engine`): loads on the requested backend or says why not,
//! serves the same answers as the pipelines it wraps, and a token callback can cancel an answer.

use hbridge::chat::{ChatPipeline, ChatRequest};
use hbridge::engine::{Engine, EngineOptions, LoadError};
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
/// the bytes the same request gets alone (issue 7 item 3, first half; memory limits are not done).
#[test]
fn concurrent_requests_equal_serial_ones_bit_for_bit() {
    let engine = std::sync::Arc::new(Engine::load(tiny(), &EngineOptions::cpu()).unwrap());
    let run = |e: &Engine, i: usize| -> Vec<u8> {
        if i % 2 == 0 {
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
            e.generate_image(&req, |_, _| {}).unwrap().rgb
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
