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
