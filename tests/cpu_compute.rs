//! The CPU arithmetic chosen by a program (`EngineOptions::cpu_compute`, the CLI's `--cpu-compute`):
//! it is fixed once per process, so this file is a test binary of its own, and an engine asking for
//! the other arithmetic afterwards is refused with an error naming both.

mod target_runner;

use hbridge::engine::{CpuCompute, Engine, EngineOptions, LoadError};
use hbridge::t2i::ImageRequest;
use hbridge_engine::MatmulMode;
use std::ops::ControlFlow;
use std::path::PathBuf;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/model")
}

#[test]
fn the_first_request_fixes_the_process_and_a_different_one_is_refused() {
    // SAFETY: set before any thread of this binary reads the environment; the request below must
    // win over it.
    unsafe { std::env::remove_var("HBRIDGE_CPU_MATMUL") };
    let bf16 = EngineOptions::cpu().cpu_compute(CpuCompute::Bf16);
    let engine = Engine::load(tiny(), &bf16).expect("bf16 on the CPU loads");
    // bf16 where the CPU has AMX, and said so where it has not: never plain f32.
    let mode = MatmulMode::current();
    assert_ne!(mode, MatmulMode::F32, "{mode:?}");
    let request = ImageRequest::new("a red fox").size(48, 32).steps(2);
    let image = engine
        .generate_image(&request, |_, _| ControlFlow::Continue(()))
        .expect("an image in bf16 compute");
    assert_eq!(image.rgb.len(), 48 * 32 * 3);

    // The same choice again, or none, loads.
    Engine::load(tiny(), &bf16).expect("the same choice again");
    Engine::load(tiny(), &EngineOptions::cpu()).expect("no choice");
    // The other is refused, naming both.
    let f32 = EngineOptions::cpu().cpu_compute(CpuCompute::F32);
    match Engine::load(tiny(), &f32) {
        Err(LoadError::CpuCompute(e)) => {
            assert_eq!((e.requested, e.fixed), (CpuCompute::F32, "bf16"));
            let text = e.to_string();
            assert!(text.contains("F32") && text.contains("bf16"), "{text}");
        }
        Err(e) => panic!("expected a CPU compute error, got {e}"),
        Ok(_) => panic!("f32 loaded in a process fixed to bf16"),
    }
}

#[test]
fn the_cli_flag_overrides_the_environment_and_names_a_bad_value() {
    let model = tiny();
    let dir = std::env::temp_dir().join(format!("hbridge-cpu-compute-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("out.png");
    let run = |compute: &str| {
        target_runner::hbridge()
            .env("HBRIDGE_CPU_MATMUL", "bf16")
            .args(["--device", "cpu", "--cpu-compute", compute, "generate"])
            .arg(&model)
            .args([
                "-p", "a fox", "--steps", "1", "--width", "32", "--height", "32", "-o",
            ])
            .arg(&png)
            .output()
            .unwrap()
    };
    let f32 = run("f32");
    let err = String::from_utf8_lossy(&f32.stderr);
    assert!(f32.status.success(), "{err}");
    assert!(err.contains("f32 compute"), "{err}");
    let bad = run("f16");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("--cpu-compute") && err.contains("f16"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
