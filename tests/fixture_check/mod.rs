//! The fixture check shared by the CPU backend's f32 test (`cpu_fixtures.rs`) and its bf16-linear test
//! (`cpu_bf16_fixtures.rs`): the model run on a fixture's inputs, every output tensor compared.
#![allow(dead_code)]

use hbridge::forward::forward;
use hbridge::model::{Model, Outputs};
use hbridge::tensor_io::read_tensors;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn read(path: &Path) -> Outputs {
    read_tensors(path).unwrap_or_else(|e| panic!("{e}"))
}

pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - *w as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// Every tensor of fixture `name` from the CPU backend against the reference: f32 tensors within
/// `tolerance(tensor)` relative L2 (`None`: only finite, and the error printed), integer tensors equal
/// (`vae.image` within `image_slack` levels).
pub fn check_fixture(name: &str, tolerance: impl Fn(&str) -> Option<f64>, image_slack: i32) {
    let model = Model::open(&fixture(name).join("model")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let inputs = read(&fixture(name).join("inputs.safetensors"));
    let expected = read(&fixture(name).join("outputs.safetensors"));
    let got = forward(&model, &inputs).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
    let mut failures = Vec::new();
    let mut names: Vec<&String> = expected.keys().collect();
    names.sort();
    for tensor in names {
        let want = &expected[tensor];
        let Some(have) = got.get(tensor) else {
            failures.push(format!("{tensor}: not produced"));
            continue;
        };
        if have.shape != want.shape {
            failures.push(format!(
                "{tensor}: shape {:?}, expected {:?}",
                have.shape, want.shape
            ));
            continue;
        }
        match (have.as_f32(), want.as_f32(), have.as_i32(), want.as_i32()) {
            (Some(h), Some(w), _, _) => {
                let err = rel_l2(h, w);
                let tol = tolerance(tensor);
                println!("{name} {tensor}: relative L2 error {err:.3e}");
                if err.is_nan() || tol.is_some_and(|t| err > t) {
                    failures.push(format!(
                        "{tensor}: relative L2 error {err:.3e} > {:e}",
                        tol.unwrap_or(0.0)
                    ));
                }
            }
            (_, _, Some(h), Some(w)) => {
                // vae.image: a pixel within rounding distance of a boundary may differ by a level.
                let slack = if tensor == "vae.image" {
                    image_slack
                } else {
                    0
                };
                if let Some(i) = (0..h.len()).find(|&i| (h[i] - w[i]).abs() > slack) {
                    failures.push(format!(
                        "{tensor}: element {i} is {}, expected {}",
                        h[i], w[i]
                    ));
                }
            }
            _ => failures.push(format!("{tensor}: dtype differs from the reference")),
        }
    }
    assert!(
        failures.is_empty(),
        "fixture {name}: {} of {} tensors differ:\n  {}",
        failures.len(),
        expected.len(),
        failures.join("\n  ")
    );
}
