//! Missing files and folders.

use super::*;

#[test]
fn missing_model_directory() {
    let tmp = TempDir::new("nodir");
    let dir = tmp.join("does-not-exist");
    let err = open_err(&dir);
    let LoadError::MissingFile { path, what } = &err else {
        panic!("expected MissingFile, got {err:?}");
    };
    assert_eq!(path, &dir);
    assert!(what.contains("hbridge.json"), "{what}");
    assert_mentions(
        &err.to_string(),
        &["does-not-exist", "missing", "hbridge.json"],
    );
}

#[test]
fn missing_layout_file() {
    let ck = tiny();
    std::fs::remove_file(ck.join("hbridge.json")).unwrap();
    let err = open_err(ck.path());
    let LoadError::MissingFile { path, .. } = &err else {
        panic!("expected MissingFile, got {err:?}");
    };
    assert_eq!(path, &ck.join("hbridge.json"));
    assert_mentions(
        &err.to_string(),
        &[&shown(ck.path(), "hbridge.json"), "missing"],
    );
}

#[test]
fn missing_part_config() {
    let ck = tiny();
    for part in ["und", "gen", "vae"] {
        let rel = format!("{part}/config.json");
        let saved = std::fs::read(ck.join(&rel)).unwrap();
        std::fs::remove_file(ck.join(&rel)).unwrap();
        let err = open_err(ck.path());
        let LoadError::MissingFile { path, what } = &err else {
            panic!("{rel}: expected MissingFile, got {err:?}");
        };
        assert_eq!(path, &ck.join(&rel));
        assert!(what.contains("JSON config"), "{what}");
        assert_mentions(&err.to_string(), &[&rel, "missing"]);
        std::fs::write(ck.join(&rel), saved).unwrap();
    }
    open_ok(ck.path());
}

#[test]
fn missing_weight_file() {
    let ck = tiny();
    for (rel, index) in [
        (UND_FILE, "model.safetensors.index.json"),
        (GEN_FILE, "diffusion_pytorch_model.safetensors.index.json"),
        (VAE_FILE, "diffusion_pytorch_model.safetensors.index.json"),
        (BRIDGE_FILE, "bridge.safetensors.index.json"),
    ] {
        let saved = std::fs::read(ck.join(rel)).unwrap();
        std::fs::remove_file(ck.join(rel)).unwrap();
        let err = open_err(ck.path());
        let LoadError::MissingFile { path, what } = &err else {
            panic!("{rel}: expected MissingFile, got {err:?}");
        };
        assert_eq!(path, &ck.join(rel));
        assert!(what.contains(index), "{rel}: {what}");
        assert_mentions(&err.to_string(), &[rel, "missing", index]);
        std::fs::write(ck.join(rel), saved).unwrap();
    }
    open_ok(ck.path());
}

#[test]
fn missing_shard_file() {
    let ck = tiny();
    split_und(ck.path(), 2);
    let shard = format!("und/{}", shard_name(1, 2));
    std::fs::remove_file(ck.join(&shard)).unwrap();
    let err = open_err(ck.path());
    let LoadError::MissingFile { path, .. } = &err else {
        panic!("expected MissingFile, got {err:?}");
    };
    assert_eq!(path, &ck.join(&shard));
    assert_mentions(&err.to_string(), &[&shard, "missing"]);
}
