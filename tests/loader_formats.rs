//! What loads: bf16, f16 and f32 weights, zero-copy f32 views, both Qwen2.5-VL name prefixes, sharded
//! weights, tied embeddings, unused tensors (a warning), checkpoints without the optional encoders, and
//! both topologies.

mod common;

use common::*;
use hbridge::init::WeightDType;
use hbridge_loader::{Checkpoint, DType, Part, Topology, UndNames};
use safetensors::Dtype;
use serde_json::json;

const UP_0: &str = "layers.0.mlp.up_proj.weight";

fn dtype_of(w: WeightDType) -> DType {
    match w {
        WeightDType::BF16 => DType::BF16,
        WeightDType::F16 => DType::F16,
        WeightDType::F32 => DType::F32,
    }
}

fn parts(ck: &Checkpoint) -> Vec<(Part, &hbridge_loader::PartStore)> {
    [Part::Und, Part::Gen, Part::Vae, Part::Bridge]
        .into_iter()
        .filter_map(|p| ck.part(p).map(|s| (p, s)))
        .collect()
}

#[test]
fn bf16_f16_f32_load_with_the_same_values() {
    let seed = 11;
    let f32_dir = tiny_checkpoint(seed, WeightDType::F32);
    let reference = open_ok(f32_dir.path());
    let mut names = 0;
    for w in [WeightDType::BF16, WeightDType::F16, WeightDType::F32] {
        let dir = tiny_checkpoint(seed, w);
        let ck = open_ok(dir.path());
        assert!(ck.warnings.is_empty(), "{w:?}: {:?}", ck.warnings);
        assert!(ck.has_vision && ck.has_vae_encoder, "{w:?}");
        assert_eq!(ck.und_names, UndNames::NESTED);
        assert_eq!(ck.config.layout.topology, Topology::Hbridge);
        for (part, store) in parts(&ck) {
            let ref_store = reference.part(part).unwrap();
            assert_eq!(store.len(), ref_store.len(), "{part:?}");
            for name in store.names() {
                let view = store.get(name).unwrap();
                let want = ref_store.get(name).unwrap();
                assert_eq!(view.dtype, &dtype_of(w), "{name}");
                assert_eq!(view.shape, want.shape, "{name}");
                assert_eq!(
                    view.bytes.len(),
                    view.numel() * if w == WeightDType::F32 { 4 } else { 2 }
                );
                let got = view.to_f32().unwrap();
                let want = want.to_f32().unwrap();
                assert_eq!(got.len(), want.len(), "{name}");
                for (i, (&g, &v)) in got.iter().zip(&want).enumerate() {
                    // Each narrow value is the f32 value rounded to nearest, and widens back exactly.
                    let rounded = match w {
                        WeightDType::BF16 => half::bf16::from_f32(v).to_f32(),
                        WeightDType::F16 => half::f16::from_f32(v).to_f32(),
                        WeightDType::F32 => v,
                    };
                    assert_eq!(
                        g.to_bits(),
                        rounded.to_bits(),
                        "{w:?} {name}[{i}]: {g} vs {v}"
                    );
                    let tol = match w {
                        WeightDType::BF16 => v.abs() / 256.0,
                        WeightDType::F16 => v.abs() / 2048.0 + 1e-7,
                        WeightDType::F32 => 0.0,
                    };
                    assert!((g - v).abs() <= tol, "{w:?} {name}[{i}]: {g} vs {v}");
                }
                names += 1;
            }
        }
    }
    let total: usize = parts(&reference).iter().map(|(_, s)| s.len()).sum();
    assert!(total > 300, "{total}");
    assert_eq!(names, 3 * total);
}

#[test]
fn f32_views_are_zero_copy() {
    let dir = tiny_checkpoint(5, WeightDType::F32);
    let ck = open_ok(dir.path());
    for (part, store) in parts(&ck) {
        for name in store.names() {
            let view = store.get(name).unwrap();
            let slice = view
                .as_f32()
                .unwrap_or_else(|| panic!("{part:?} {name}: an aligned f32 tensor gives a slice"));
            assert_eq!(slice.len(), view.numel());
            // The slice is the mapped bytes themselves, not a copy.
            assert_eq!(slice.as_ptr() as *const u8, view.bytes.as_ptr());
            assert_eq!(slice, view.to_f32().unwrap().as_slice());
            // Repeated lookups borrow the same memory.
            assert_eq!(store.get(name).unwrap().bytes.as_ptr(), view.bytes.as_ptr());
        }
    }
    let up = ck.und_text(UP_0).unwrap();
    assert_eq!(up.shape, &[160, 64]);
    assert_eq!(up.file, UND_FILE);

    // Narrow dtypes have no f32 view, only a widening copy.
    let dir = tiny_checkpoint(5, WeightDType::BF16);
    let ck = open_ok(dir.path());
    let up16 = ck.und_text(UP_0).unwrap();
    assert!(up16.as_f32().is_none());
    assert_eq!(up16.to_f32().unwrap().len(), 160 * 64);
}

#[test]
fn both_und_prefixes_load() {
    let nested_dir = tiny_checkpoint(3, WeightDType::BF16);
    let flat_dir = tiny_checkpoint(3, WeightDType::BF16);
    flatten_und_names(flat_dir.path());
    let names: Vec<String> = read_st(&flat_dir.join(UND_FILE))
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.iter().any(|n| n == "model.embed_tokens.weight"));
    assert!(names.iter().any(|n| n == "visual.patch_embed.proj.weight"));
    assert!(names.iter().any(|n| n == "lm_head.weight"));
    assert!(!names
        .iter()
        .any(|n| n.starts_with("model.language_model.") || n.starts_with("model.visual.")));

    let nested = open_ok(nested_dir.path());
    let flat = open_ok(flat_dir.path());
    assert_eq!(nested.und_names, UndNames::NESTED);
    assert_eq!(flat.und_names, UndNames::FLAT);
    for ck in [&nested, &flat] {
        assert!(ck.warnings.is_empty(), "{:?}", ck.warnings);
        assert!(ck.has_vision);
    }
    for name in [UP_0, "embed_tokens.weight", "norm.weight", "lm_head.weight"] {
        let a = nested
            .und_text(name)
            .unwrap_or_else(|| panic!("nested: {name}"));
        let b = flat
            .und_text(name)
            .unwrap_or_else(|| panic!("flat: {name}"));
        assert_eq!(a.shape, b.shape, "{name}");
        assert_eq!(a.bytes, b.bytes, "{name}");
    }
    assert_eq!(
        nested.und_text(UP_0).unwrap().name,
        "model.language_model.layers.0.mlp.up_proj.weight"
    );
    assert_eq!(
        flat.und_text(UP_0).unwrap().name,
        "model.layers.0.mlp.up_proj.weight"
    );
    let patch = |ck: &Checkpoint| {
        ck.tensor(Part::Und, &ck.und_names.visual("patch_embed.proj.weight"))
            .unwrap()
            .bytes
            .to_vec()
    };
    assert_eq!(patch(&nested), patch(&flat));
    assert_eq!(nested.manifest.und.len(), flat.manifest.und.len());
}

#[test]
fn sharded_und_loads() {
    let single_dir = tiny_checkpoint(9, WeightDType::F16);
    let single = open_ok(single_dir.path());
    for shards in [2, 3] {
        let dir = tiny_checkpoint(9, WeightDType::F16);
        let map = split_und(dir.path(), shards);
        assert!(!dir.join(UND_FILE).exists());
        let ck = open_ok(dir.path());
        assert!(ck.warnings.is_empty(), "{:?}", ck.warnings);
        assert_eq!(ck.und.origin(), "und/model.safetensors.index.json");
        let mut files: Vec<&str> = ck.und.file_names().collect();
        files.sort();
        let want: Vec<String> = (0..shards)
            .map(|i| format!("und/{}", shard_name(i, shards)))
            .collect();
        assert_eq!(files, want);
        assert_eq!(ck.und.len(), single.und.len());
        assert_eq!(ck.und.data_bytes(), single.und.data_bytes());
        for name in single.und.names() {
            let a = ck.und.get(name).unwrap();
            assert_eq!(a.bytes, single.und.get(name).unwrap().bytes, "{name}");
            assert_eq!(
                a.file,
                format!("und/{}", map[name].as_str().unwrap()),
                "{name}"
            );
        }
        assert!(ck.und_text(UP_0).is_some());
        assert!(ck.has_vision);
    }

    // Sharded with the flat prefixes too.
    let dir = tiny_checkpoint(9, WeightDType::F16);
    flatten_und_names(dir.path());
    split_und(dir.path(), 2);
    let ck = open_ok(dir.path());
    assert_eq!(ck.und_names, UndNames::FLAT);
    assert_eq!(
        ck.und_text(UP_0).unwrap().bytes,
        single.und_text(UP_0).unwrap().bytes
    );
}

#[test]
fn tied_embeddings_fall_back_to_the_embedding() {
    let dir = tiny_checkpoint(4, WeightDType::BF16);
    set_config(
        dir.path(),
        "und/config.json",
        "tie_word_embeddings",
        json!(true),
    );
    drop_tensor(dir.path(), UND_FILE, "lm_head.weight");
    let ck = open_ok(dir.path());
    assert!(ck.config.und.tie_word_embeddings);
    assert!(ck.warnings.is_empty(), "{:?}", ck.warnings);
    assert!(!ck.und.contains("lm_head.weight"));
    let head = ck
        .und_text("lm_head.weight")
        .expect("tied lm_head resolves");
    assert_eq!(head.name, "model.language_model.embed_tokens.weight");
    assert_eq!(head.shape, &[512, 64]);
    assert_eq!(
        head.bytes,
        ck.und_text("embed_tokens.weight").unwrap().bytes
    );

    // Untied, the lm_head is required.
    set_config(
        dir.path(),
        "und/config.json",
        "tie_word_embeddings",
        json!(false),
    );
    let err = open_err(dir.path());
    let issues = tensor_issues(&err);
    assert_eq!(issues.len(), 1, "{err}");
    assert_eq!(issues[0].tensor, "lm_head.weight");

    // Tied, with an lm_head stored anyway: the manifest does not use it (one warning), and a lookup of
    // lm_head.weight returns the stored tensor.
    let dir = tiny_checkpoint(4, WeightDType::BF16);
    set_config(
        dir.path(),
        "und/config.json",
        "tie_word_embeddings",
        json!(true),
    );
    let ck = open_ok(dir.path());
    assert_eq!(ck.warnings.len(), 1);
    assert_mentions(&ck.warnings[0], &["lm_head.weight"]);
    assert_eq!(
        ck.und_text("lm_head.weight").unwrap().name,
        "lm_head.weight"
    );
}

#[test]
fn extra_tensors_are_one_warning() {
    let dir = tiny_checkpoint(2, WeightDType::BF16);
    let extra = |name: &str| Entry {
        name: name.into(),
        dtype: Dtype::F32,
        shape: vec![2],
        data: vec![0; 8],
    };
    edit_st(&dir.join(UND_FILE), |e| {
        e.push(extra("model.language_model.rotary_emb.inv_freq"))
    });
    let ck = open_ok(dir.path());
    assert_eq!(ck.warnings.len(), 1, "{:?}", ck.warnings);
    assert_mentions(
        &ck.warnings[0],
        &[
            "1 tensor is not used by the hbridge topology",
            "model.language_model.rotary_emb.inv_freq",
        ],
    );

    // Many extras across parts: still one warning, listing a few.
    edit_st(&dir.join(GEN_FILE), |e| {
        for i in 0..4 {
            e.push(extra(&format!("unused.gen.{i}")));
        }
    });
    edit_st(&dir.join(BRIDGE_FILE), |e| {
        for i in 0..2 {
            e.push(extra(&format!("unused.bridge.{i}")));
        }
    });
    let ck = open_ok(dir.path());
    assert_eq!(ck.warnings.len(), 1, "{:?}", ck.warnings);
    assert_mentions(
        &ck.warnings[0],
        &["7 tensors are not used by the hbridge topology", ", ..."],
    );
    assert!(
        ck.tensor(Part::Gen, "unused.gen.0").is_some(),
        "extras stay readable"
    );
}

#[test]
fn checkpoint_without_vision_tensors() {
    let dir = tiny_checkpoint(6, WeightDType::BF16);
    let mut removed = 0;
    edit_st(&dir.join(UND_FILE), |e| {
        let before = e.len();
        e.retain(|t| !t.name.starts_with("model.visual."));
        removed = before - e.len();
    });
    assert!(removed > 10);
    let ck = open_ok(dir.path());
    assert!(!ck.has_vision);
    assert!(ck.has_vae_encoder);
    assert!(ck.warnings.is_empty(), "{:?}", ck.warnings);
    assert_eq!(ck.und_names, UndNames::NESTED);
    assert!(ck.und_text(UP_0).is_some());
    assert!(
        ck.config.und.vision.is_some(),
        "the config still describes the tower"
    );

    // Flat names without vision.
    let dir = tiny_checkpoint(6, WeightDType::BF16);
    flatten_und_names(dir.path());
    edit_st(&dir.join(UND_FILE), |e| {
        e.retain(|t| !t.name.starts_with("visual."))
    });
    let ck = open_ok(dir.path());
    assert!(!ck.has_vision);
    assert_eq!(ck.und_names, UndNames::FLAT);

    // Without the VAE encoder either.
    edit_st(&dir.join(VAE_FILE), |e| {
        e.retain(|t| !t.name.starts_with("encoder.") && !t.name.starts_with("quant_conv"))
    });
    let ck = open_ok(dir.path());
    assert!(!ck.has_vision && !ck.has_vae_encoder);
    assert!(ck.warnings.is_empty(), "{:?}", ck.warnings);
}

#[test]
fn nested_text_config_layout_reads_the_same() {
    let dir = tiny_checkpoint(1, WeightDType::BF16);
    let flat_cfg = open_ok(dir.path()).config.und;
    // The newer transformers layout: text fields under text_config, rope_parameters carrying theta.
    edit_json(dir.path(), "und/config.json", |v| {
        let top = v.as_object_mut().unwrap();
        let mut text = serde_json::Map::new();
        for k in [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "hidden_act",
            "rms_norm_eps",
            "max_position_embeddings",
            "tie_word_embeddings",
        ] {
            text.insert(k.into(), top.remove(k).unwrap());
        }
        let theta = top.remove("rope_theta").unwrap();
        let mut rope = top.remove("rope_scaling").unwrap();
        rope["rope_theta"] = theta;
        text.insert("rope_parameters".into(), rope);
        top.insert("text_config".into(), serde_json::Value::Object(text));
    });
    let ck = open_ok(dir.path());
    assert_eq!(ck.config.und, flat_cfg);
}

#[test]
fn omnigen2_topology_loads() {
    let dir = write_preset(&omnigen2_preset(), 8, WeightDType::BF16);
    let ck = open_ok(dir.path());
    assert_eq!(ck.config.layout.topology, Topology::Omnigen2);
    assert!(ck.bridge.is_none() && ck.config.layout.bridge.is_none());
    assert!(ck.part(Part::Bridge).is_none());
    assert!(ck.manifest.bridge.is_empty());
    assert!(ck.warnings.is_empty(), "{:?}", ck.warnings);
    for name in [
        "time_caption_embed.caption_embedder.0.weight",
        "time_caption_embed.caption_embedder.1.weight",
        "context_refiner.0.attn.to_q.weight",
        "context_refiner.0.norm1.weight",
    ] {
        assert!(ck.tensor(Part::Gen, name).is_some(), "{name}");
    }
    assert_eq!(
        ck.tensor(Part::Gen, "time_caption_embed.caption_embedder.1.weight")
            .unwrap()
            .shape,
        &[72, 64]
    );
    assert!(ck.has_vision && ck.has_vae_encoder);
}

#[test]
fn omnigen2_without_context_refiner_fails_naming_it() {
    let dir = write_preset(&omnigen2_preset(), 8, WeightDType::BF16);
    let mut dropped = Vec::new();
    edit_st(&dir.join(GEN_FILE), |e| {
        dropped = e
            .iter()
            .filter(|t| t.name.starts_with("context_refiner."))
            .map(|t| t.name.clone())
            .collect();
        e.retain(|t| !t.name.starts_with("context_refiner."));
    });
    assert!(!dropped.is_empty());
    let err = open_err(dir.path());
    let issues = tensor_issues(&err);
    let mut named: Vec<&str> = issues.iter().map(|i| i.tensor.as_str()).collect();
    named.sort();
    dropped.sort();
    assert_eq!(named, dropped);
    assert!(issues.iter().all(|i| i.file == GEN_FILE));
    assert_mentions(
        &err.to_string(),
        &[GEN_FILE, "context_refiner.0.", "missing"],
    );

    // An hbridge checkpoint relabelled omnigen2 lacks the caption embedder and the context refiner,
    // and its bridge folder is simply not read.
    let dir = tiny_checkpoint(8, WeightDType::BF16);
    edit_json(dir.path(), "hbridge.json", |v| {
        remove_field(v, "bridge");
        v["topology"] = json!("omnigen2");
    });
    let err = open_err(dir.path());
    let issues = tensor_issues(&err);
    assert!(issues
        .iter()
        .any(|i| i.tensor.starts_with("context_refiner.")));
    assert!(issues
        .iter()
        .any(|i| i.tensor.starts_with("time_caption_embed.caption_embedder.")));
    assert!(issues.iter().all(|i| i.file == GEN_FILE), "{err}");
}
