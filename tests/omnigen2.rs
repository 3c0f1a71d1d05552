//! The omnigen2 topology's generation path (DESIGN.md 3 and 6): caption features (und post-norm last
//! hidden states) -> caption_embedder -> context_refiner -> [text | noise], no bridge. Checked against the
//! `tiny-omnigen2` reference fixture tensor by tensor, through the public text-to-image pipeline, and
//! `hbridge generate` on a written omnigen2 checkpoint.

mod common;
mod target_runner;

use common::*;
use hbridge::forward::forward;
use hbridge::init::WeightDType;
use hbridge::model::{Model, Outputs};
use hbridge::t2i::{generate, ImageRequest};
use hbridge::tensor_io::read_tensors;
use std::ops::ControlFlow;
use std::path::PathBuf;

const TOLERANCE: f64 = 1e-5;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-omnigen2")
}

fn read(name: &str) -> Outputs {
    read_tensors(&fixture().join(name)).unwrap_or_else(|e| panic!("{e}"))
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - *w as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn forward_matches_every_fixture_tensor() {
    let model = Model::open(&fixture().join("model")).unwrap_or_else(|e| panic!("{e}"));
    assert!(model.is_omnigen2());
    let inputs = read("inputs.safetensors");
    let expected = read("outputs.safetensors");
    let got = forward(&model, &inputs).unwrap_or_else(|e| panic!("forward failed: {e}"));
    // No bridge: no und K/V, no SRT.
    assert!(
        !got.keys()
            .any(|k| k.contains("und.k.") || k.contains("und.v.") || k == "gen.srt"),
        "bridge outputs in an omnigen2 forward: {:?}",
        got.keys().collect::<Vec<_>>()
    );
    let mut names: Vec<&String> = expected.keys().collect();
    names.sort();
    let mut failures = Vec::new();
    for name in names {
        let want = &expected[name];
        let have = got
            .get(name)
            .unwrap_or_else(|| panic!("{name}: not produced"));
        assert_eq!(have.shape, want.shape, "{name}: shape");
        if let (Some(h), Some(w)) = (have.as_f32(), want.as_f32()) {
            let err = rel_l2(h, w);
            eprintln!("{name:24} rel L2 {err:.3e}");
            if err.is_nan() || err > TOLERANCE {
                failures.push(format!("{name}: {err:.3e}"));
            }
        } else {
            let (h, w) = (have.as_i32().unwrap(), want.as_i32().unwrap());
            let worst = h
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .max()
                .unwrap_or(0);
            eprintln!("{name:24} max |diff| {worst}");
            if worst > 1 {
                failures.push(format!("{name}: max |diff| {worst}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "tensors over {TOLERANCE:e}: {failures:?}"
    );
}

#[test]
fn fixture_sampling_run_through_the_pipeline() {
    let dir = fixture();
    let model = Model::open(&dir.join("model")).unwrap();
    let tok = hbridge::prompt::load_tokenizer(
        &dir.join("model"),
        &model.checkpoint.config.layout.und_dir,
    )
    .unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let inputs = read("inputs.safetensors");
    let outputs = read("outputs.safetensors");
    let steps = meta["steps"].as_u64().unwrap() as usize;
    let (w, h) = (
        meta["width"].as_u64().unwrap() as usize,
        meta["height"].as_u64().unwrap() as usize,
    );
    let mut req = ImageRequest::new(meta["prompt"].as_str().unwrap())
        .steps(steps)
        .guidance(meta["guidance_scale"].as_f64().unwrap() as f32)
        .size(w, h);
    req.negative_prompt = meta["negative_prompt"].as_str().unwrap().to_string();
    req.noise = Some(inputs["gen.noise"].clone());
    let out = generate(&model, &tok, &req, |_, _| ControlFlow::Continue(())).unwrap();
    let err = rel_l2(
        out.latent.as_f32().unwrap(),
        outputs["sample.latent"].as_f32().unwrap(),
    );
    assert!(err <= TOLERANCE, "sample.latent relative L2 {err:e}");
    let err = rel_l2(
        out.pixels.as_f32().unwrap(),
        outputs["vae.pixels"].as_f32().unwrap(),
    );
    assert!(err <= TOLERANCE, "vae.pixels relative L2 {err:e}");
    assert!(out.srt.is_none());
}

#[test]
fn cli_generate_on_an_omnigen2_checkpoint() {
    let ckpt = write_preset(&omnigen2_preset(), 5, WeightDType::BF16);
    let png = ckpt.path().join("out.png");
    let out = target_runner::hbridge()
        .arg("generate")
        .arg(ckpt.path())
        .args(["--prompt", "a blue sphere", "--steps", "3", "--width", "48"])
        .args(["--height", "32", "--seed", "3", "--out"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hbridge generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("omnigen2"));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}
