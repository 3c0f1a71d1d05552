//! The committed reference fixtures load and validate, agree with the built-in presets and the embedded
//! tokenizer, and hold every tensor docs/FIXTURES.md promises.

use hbridge::presets::{preset, TINY_TOKENIZER_JSON};
use hbridge_loader::{Checkpoint, DType, ModelConfig, TensorFile, UndNames};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn meta(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("meta.json")).expect("meta.json");
    serde_json::from_str(&text).expect("meta.json is JSON")
}

fn i64_tensor(file: &TensorFile, name: &str) -> Vec<i64> {
    let entry = file
        .entries
        .get(name)
        .unwrap_or_else(|| panic!("{}: no {name}", file.path.display()));
    assert_eq!(entry.dtype, DType::Other("I64".into()), "{name} dtype");
    file.bytes(entry)
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn fixtures_load_and_validate() {
    for name in ["tiny", "tiny-b"] {
        let ck = Checkpoint::open(fixture(name).join("model"))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
        assert!(
            ck.warnings.is_empty(),
            "fixture {name}: unexpected warnings {:?}",
            ck.warnings
        );
        assert!(
            ck.has_vision && ck.has_vae_encoder,
            "fixture {name} carries the optional encoders"
        );
    }
}

#[test]
fn fixtures_cover_both_layouts_and_dtypes() {
    let tiny = Checkpoint::open(fixture("tiny").join("model")).unwrap();
    let tiny_b = Checkpoint::open(fixture("tiny-b").join("model")).unwrap();
    assert_eq!(tiny.und_names, UndNames::NESTED);
    assert_eq!(tiny_b.und_names, UndNames::FLAT);
    assert!(
        tiny_b.und.file_names().count() >= 2,
        "tiny-b und is sharded"
    );
    assert!(tiny_b.config.und.tie_word_embeddings && tiny_b.und_text("lm_head.weight").is_some());
    let dtype = |ck: &Checkpoint, part: &str| -> DType {
        let store = match part {
            "und" => &ck.und,
            "gen" => &ck.gen,
            "vae" => &ck.vae,
            _ => ck.bridge.as_ref().unwrap(),
        };
        store
            .get(store.names().next().unwrap())
            .unwrap()
            .dtype
            .clone()
    };
    assert_eq!(dtype(&tiny, "gen"), DType::BF16);
    assert_eq!(dtype(&tiny_b, "und"), DType::F32);
    assert_eq!(dtype(&tiny_b, "gen"), DType::F16);
}

#[test]
fn tiny_fixture_matches_the_builtin_tiny_preset() {
    let fixture_config = ModelConfig::read(&fixture("tiny").join("model")).unwrap();
    let dir = std::env::temp_dir().join(format!("hbridge-preset-{}", std::process::id()));
    let p = preset("tiny").unwrap();
    hbridge::init::write_checkpoint(&dir, &p, 0, hbridge::init::WeightDType::F32, true).unwrap();
    let preset_config = ModelConfig::read(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(preset_config.und, fixture_config.und, "und config");
    assert_eq!(preset_config.gen, fixture_config.gen, "gen config");
    assert_eq!(preset_config.vae, fixture_config.vae, "vae config");
    assert_eq!(preset_config.layout, fixture_config.layout, "hbridge.json");
}

#[test]
fn tokenizer_reproduces_the_fixture_token_ids() {
    for name in ["tiny", "tiny-b"] {
        let tok_path = fixture(name).join("model/und/tokenizer.json");
        assert_eq!(
            std::fs::read_to_string(&tok_path).unwrap(),
            TINY_TOKENIZER_JSON,
            "{name}: tokenizer differs from the embedded one"
        );
        let tok = tokenizers::Tokenizer::from_file(&tok_path).unwrap();
        let inputs = TensorFile::open(&fixture(name).join("inputs.safetensors")).unwrap();
        let m = meta(name);
        for (text_key, ids_name) in [
            ("chat_text", "chat.input_ids"),
            ("cond_text", "cond.input_ids"),
            ("uncond_text", "uncond.input_ids"),
        ] {
            let text = m[text_key].as_str().unwrap();
            let ids: Vec<i64> = tok
                .encode(text, false)
                .unwrap()
                .get_ids()
                .iter()
                .map(|&i| i as i64)
                .collect();
            assert_eq!(ids, i64_tensor(&inputs, ids_name), "{name}: {ids_name}");
            let back = tok
                .decode(&ids.iter().map(|&i| i as u32).collect::<Vec<_>>(), false)
                .unwrap();
            assert_eq!(back, text, "{name}: {ids_name} round trip");
        }
        let specials = [
            ("<|endoftext|>", 500),
            ("<|im_start|>", 501),
            ("<|im_end|>", 502),
            ("<|vision_start|>", 503),
            ("<|vision_end|>", 504),
            ("<|image_pad|>", 505),
        ];
        for (token, id) in specials {
            assert_eq!(tok.token_to_id(token), Some(id), "{name}: {token}");
        }
        let config = ModelConfig::read(&fixture(name).join("model")).unwrap();
        assert_eq!(config.und.special_tokens.image_token_id, Some(505));
        assert_eq!(config.und.special_tokens.vision_start_token_id, Some(503));
    }
}

#[test]
fn fixture_outputs_hold_every_documented_tensor() {
    for name in ["tiny", "tiny-b"] {
        let config = ModelConfig::read(&fixture(name).join("model")).unwrap();
        let outputs = TensorFile::open(&fixture(name).join("outputs.safetensors")).unwrap();
        let inputs = TensorFile::open(&fixture(name).join("inputs.safetensors")).unwrap();
        let l = i64_tensor(&inputs, "cond.input_ids").len();
        let shape = |n: &str| {
            outputs
                .entries
                .get(n)
                .unwrap_or_else(|| panic!("{name}: outputs lack {n}"))
                .shape
                .clone()
        };
        let (u, g) = (&config.und, &config.gen);
        assert_eq!(shape("und.logits"), [l, u.vocab_size]);
        for i in 0..=u.num_layers {
            assert_eq!(shape(&format!("und.hs.{i}")), [l, u.hidden_size]);
        }
        let bridge = config.layout.bridge.as_ref().unwrap();
        for &(_, ul) in &bridge.pairs {
            assert_eq!(
                shape(&format!("und.k.{ul}")),
                [l, u.num_kv_heads, u.head_dim]
            );
            assert_eq!(
                shape(&format!("und.v.{ul}")),
                [l, u.num_kv_heads, u.head_dim]
            );
        }
        let lat = shape("sample.latent");
        let n_gen = bridge.num_srt_tokens + lat[1] * lat[2] / (g.patch_size * g.patch_size);
        for i in 0..=g.num_layers {
            assert_eq!(shape(&format!("gen.hs.{i}")), [n_gen, g.hidden_size]);
        }
        for n in ["gen.velocity", "gen.velocity.cond", "gen.velocity.uncond"] {
            assert_eq!(shape(n), lat);
        }
        assert_eq!(
            shape("gen.srt"),
            [bridge.num_srt_tokens, config.srt_out_dim()]
        );
        let f = config.vae.downscale();
        assert_eq!(shape("vae.pixels"), [3, lat[1] * f, lat[2] * f]);
    }
}

/// hbridge-7b4b has the dimensions of DESIGN.md sections 2, 3 and 5 (its weights are only ever made on
/// the GPU machine; here only the configs and the manifest they imply are checked).
#[test]
fn hbridge_7b4b_preset_has_the_design_dimensions() {
    let dir = std::env::temp_dir().join(format!("hbridge-7b4b-{}", std::process::id()));
    let p = preset("hbridge-7b4b").unwrap();
    let manifest = hbridge::init::write_configs(&dir, &p).unwrap();
    let c = ModelConfig::read(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        (c.und.hidden_size, c.und.num_layers, c.und.head_dim),
        (3584, 28, 128)
    );
    assert_eq!((c.und.num_heads, c.und.num_kv_heads), (28, 4));
    assert_eq!(
        (c.gen.hidden_size, c.gen.num_layers, c.gen.head_dim),
        (2520, 32, 120)
    );
    assert_eq!(
        (c.gen.num_heads, c.gen.num_kv_heads, c.gen.ffn_inner),
        (21, 7, 10240)
    );
    let bridge = c.layout.bridge.as_ref().unwrap();
    assert_eq!(bridge.pairs.len(), 20, "skip 6/6 pairs gen layers 6..=25");
    assert_eq!(bridge.pairs[0], (6, 6));
    assert_eq!(*bridge.pairs.last().unwrap(), (25, 21));
    let params = |e: &[hbridge_loader::manifest::Expected]| -> f64 {
        e.iter()
            .map(|t| t.shape().iter().product::<usize>() as f64)
            .sum::<f64>()
            / 1e9
    };
    let (und, gen) = (params(&manifest.und), params(&manifest.gen));
    assert!(
        (7.5..9.0).contains(&und),
        "und (text + vision) has {und:.2}B parameters"
    );
    assert!((3.5..4.5).contains(&gen), "gen has {gen:.2}B parameters");
}

/// The mid preset of the CPU-vs-PyTorch comparison loads and has the sizes issue 5 names.
#[test]
fn mid_preset_has_its_dimensions() {
    let dir = std::env::temp_dir().join(format!("hbridge-mid-{}", std::process::id()));
    let p = preset("mid").unwrap();
    hbridge::init::write_configs(&dir, &p).unwrap();
    let c = ModelConfig::read(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        (c.und.hidden_size, c.und.num_layers, c.und.head_dim),
        (896, 8, 64)
    );
    assert_eq!(
        (c.gen.hidden_size, c.gen.num_layers, c.gen.head_dim),
        (768, 8, 64)
    );
    assert_eq!(c.vae.downscale(), 8, "256x256 images are 32x32 latents");
    assert!(c
        .layout
        .bridge
        .as_ref()
        .is_some_and(|b| !b.pairs.is_empty()));
}
