//! The CPU backend with `HBRIDGE_CPU_MATMUL=bf16` (linears and attention over 32+ queries in bf16 on
//! AMX tiles, fewer rows over the tiles with VDPBF16PS) against every reference fixture, held to the
//! bf16 contract of DESIGN.md 8 (the CUDA backend's): relative L2 <= 2e-2 on velocity and logits, the same greedy
//! tokens, every other f32 tensor finite (its error printed). The mode is chosen once per process, so
//! this file is a test binary of its own. On a CPU without AMX-BF16 the mode falls back to f32 and
//! the test says so and skips.

mod fixture_check;

use fixture_check::{check_fixture, fixture, read};
use hbridge::model::Model;
use hbridge_engine::MatmulMode;

const TOLERANCE: f64 = 2e-2;

#[test]
fn cpu_bf16_linears_match_reference_within_bf16_tolerance() {
    // SAFETY: the only test of this binary, so no other thread reads the environment meanwhile.
    unsafe { std::env::set_var("HBRIDGE_CPU_MATMUL", "bf16") };
    match MatmulMode::current() {
        MatmulMode::Bf16Amx => {}
        other => {
            eprintln!(
                "SKIPPED cpu_bf16_fixtures: {other:?} ({})",
                other.describe()
            );
            return;
        }
    }
    let tolerance = |tensor: &str| {
        (tensor.ends_with("logits") || tensor.starts_with("gen.velocity")).then_some(TOLERANCE)
    };
    for name in ["tiny", "tiny-b", "tiny-omnigen2"] {
        // Decoded 8-bit pixels move with the latent's bf16 error: compared through vae.pixels' report.
        check_fixture(name, tolerance, 255);
    }
    // The chat prompt is over 32 tokens, so its prefill runs on the tiles; the decode steps (one row)
    // run over the same tiles with VDPBF16PS, the tiny checkpoint's weights being bf16.
    let dir = fixture("tiny");
    let model = Model::open(&dir.join("model")).expect("tiny model");
    let ids = |file: &str, tensor: &str| -> Vec<i32> {
        let t = &read(&dir.join(file))[tensor];
        t.as_i32().expect(tensor).to_vec()
    };
    let prompt = ids("inputs.safetensors", "chat.input_ids");
    assert!(
        prompt.len() >= MatmulMode::MIN_ROWS,
        "the prompt is {} tokens",
        prompt.len()
    );
    let want = ids("outputs.safetensors", "chat.greedy_ids");
    let got = hbridge::forward::greedy(&model, &prompt, want.len()).expect("greedy");
    assert_eq!(got, want, "greedy tokens with bf16 linears");
}
