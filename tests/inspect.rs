//! `hbridge inspect`: the summary of a valid checkpoint (its parts, the weights' resident size per
//! backend, the validation line) and of one whose tensors do not load (reported in the text, with a
//! non-zero exit from the CLI).

mod target_runner;

use hbridge_loader::{Checkpoint, PartStore};
use std::path::{Path, PathBuf};

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/model")
}

/// Every value, and the values of the 2-D tensors, of a part.
fn values(store: &PartStore) -> (usize, usize) {
    let mut totals = (0, 0);
    for name in store.names() {
        let t = store.get(name).unwrap();
        totals.0 += t.numel();
        if t.shape.len() == 2 {
            totals.1 += t.numel();
        }
    }
    totals
}

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
}

#[test]
fn a_valid_checkpoint_is_summarized_with_its_resident_sizes() {
    let report = hbridge::inspect::inspect(&tiny()).unwrap();
    assert!(report.valid, "{}", report.text);
    let text = &report.text;
    for needle in ["und ", "gen ", "vae ", "bridge ", "validation OK"] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    let ck = Checkpoint::open(tiny()).unwrap();
    let parts = [&ck.und, &ck.gen, &ck.vae, ck.bridge.as_ref().unwrap()];
    let (all, matrices) = parts
        .iter()
        .map(|p| values(p))
        .fold((0, 0), |(a, m), (pa, pm)| (a + pa, m + pm));
    assert!(matrices > 0 && matrices < all);
    let memory = text
        .lines()
        .find(|l| l.starts_with("memory"))
        .unwrap_or_else(|| panic!("no memory line in:\n{text}"));
    let want = format!(
        "CPU {} as f32, about {} with --weight-dtype bf16; CUDA {} (bf16)",
        mib(all * 4),
        mib(all * 4 - matrices * 2),
        mib(all * 2)
    );
    assert!(memory.ends_with(&want), "{memory:?}, want {want:?}");

    let out = target_runner::hbridge()
        .args(["inspect", tiny().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        text.trim_end()
    );
}

#[test]
fn a_checkpoint_whose_tensors_do_not_load_fails_validation() {
    let dir = std::env::temp_dir().join(format!("hbridge-inspect-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&tiny(), &dir);
    // The VAE's weights replaced by bytes that are no safetensors file.
    let vae = dir.join("vae/diffusion_pytorch_model.safetensors");
    assert!(vae.is_file(), "{} missing from the fixture", vae.display());
    std::fs::write(&vae, b"not a safetensors file").unwrap();

    let report = hbridge::inspect::inspect(&dir).unwrap();
    assert!(!report.valid);
    assert!(
        report.text.contains("validation FAILED") && report.text.contains("vae"),
        "{}",
        report.text
    );
    let out = target_runner::hbridge()
        .args(["inspect", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    std::fs::remove_dir_all(&dir).ok();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dst = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dst);
        } else {
            std::fs::copy(entry.path(), dst).unwrap();
        }
    }
}
