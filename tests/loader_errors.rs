//! Every way a checkpoint can fail to load is a typed error whose message names the file, the tensor
//! or field, what was expected and what was found, and the likely cause where one is clear.

mod common;

use common::*;
use hbridge::init::WeightDType;
use hbridge_loader::{LoadError, SafetensorsProblem, TensorFile, TensorIssueKind};
use safetensors::Dtype;
use serde_json::json;
use std::path::Path;

const K_PROJ_3: &str = "model.language_model.layers.3.self_attn.k_proj.weight";

fn tiny() -> TempDir {
    tiny_checkpoint(7, WeightDType::BF16)
}

// ---------------------------------------------------------------------------------------------------
// Missing files
// ---------------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------------
// Malformed configs
// ---------------------------------------------------------------------------------------------------

#[test]
fn config_syntax_error_reports_line_and_column() {
    let ck = tiny();
    std::fs::write(
        ck.join("gen/config.json"),
        "{\n  \"hidden_size\": 72,\n  \"num_layers\" 6\n}\n",
    )
    .unwrap();
    let err = open_err(ck.path());
    let LoadError::Json {
        path,
        line,
        column,
        message,
    } = &err
    else {
        panic!("expected Json, got {err:?}");
    };
    assert_eq!(path, &ck.join("gen/config.json"));
    assert_eq!((*line, *column), (3, 16), "{message}");
    assert_mentions(
        &err.to_string(),
        &[
            "gen/config.json",
            "invalid JSON at line 3, column 16",
            "expected `:`",
        ],
    );
}

#[test]
fn layout_syntax_error_and_non_utf8_config() {
    let ck = tiny();
    std::fs::write(ck.join("hbridge.json"), "{\"topology\": \"hbridge\",}").unwrap();
    let err = open_err(ck.path());
    assert!(
        matches!(&err, LoadError::Json { path, line: 1, .. } if path == &ck.join("hbridge.json")),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &["hbridge.json", "invalid JSON at line 1"],
    );

    let ck = tiny();
    std::fs::write(ck.join("vae/config.json"), b"{\"act_fn\": \"\xff\xfe\"}").unwrap();
    let err = open_err(ck.path());
    assert!(
        matches!(&err, LoadError::Json { path, line: 1, .. } if path == &ck.join("vae/config.json")),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &["vae/config.json", "invalid JSON", "invalid unicode"],
    );
}

#[test]
fn config_that_is_not_an_object() {
    let ck = tiny();
    std::fs::write(ck.join("und/config.json"), "[1, 2]").unwrap();
    let err = open_err(ck.path());
    let LoadError::ConfigField {
        path,
        field,
        expected,
        found,
    } = &err
    else {
        panic!("expected ConfigField, got {err:?}");
    };
    assert_eq!(path, &ck.join("und/config.json"));
    assert_eq!(field, "(top level)");
    assert_eq!(expected, "a JSON object");
    assert_eq!(found, "the list [1,2]");
}

#[test]
fn unknown_topology() {
    let ck = tiny();
    set_config(ck.path(), "hbridge.json", "topology", json!("dense"));
    let err = open_err(ck.path());
    let LoadError::ConfigField {
        path,
        field,
        expected,
        found,
    } = &err
    else {
        panic!("expected ConfigField, got {err:?}");
    };
    assert_eq!(path, &ck.join("hbridge.json"));
    assert_eq!(field, "topology");
    assert!(
        expected.contains("\"hbridge\"") && expected.contains("\"omnigen2\""),
        "{expected}"
    );
    assert_eq!(found, "\"dense\"");
    assert_mentions(
        &err.to_string(),
        &[
            "hbridge.json",
            "field `topology`",
            "\"omnigen2\"",
            "found \"dense\"",
        ],
    );
}

#[test]
fn hbridge_topology_without_bridge() {
    let ck = tiny();
    edit_json(ck.path(), "hbridge.json", |v| remove_field(v, "bridge"));
    let err = open_err(ck.path());
    assert!(
        matches!(&err, LoadError::ConfigField { field, found, .. } if field == "bridge" && found == "nothing"),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["hbridge.json", "`bridge`", "pairs"]);
}

#[test]
fn part_folder_outside_the_model_directory() {
    let ck = tiny();
    set_config(ck.path(), "hbridge.json", "gen", json!("../gen"));
    let err = open_err(ck.path());
    assert!(
        matches!(&err, LoadError::ConfigField { field, found, .. } if field == "gen" && found == "\"../gen\""),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &["hbridge.json", "inside the model directory"],
    );
}

/// Asserts a `ConfigField` error on `rel` for `field`, with `expected` and `found`.
#[track_caller]
fn assert_field_error(dir: &Path, rel: &str, field: &str, expected: &str, found: &str) {
    let err = open_err(dir);
    let LoadError::ConfigField {
        path,
        field: f,
        expected: e,
        found: fd,
    } = &err
    else {
        panic!("{rel} {field}: expected ConfigField, got {err:?}");
    };
    assert_eq!(path, &dir.join(rel), "{err}");
    assert_eq!(
        (f.as_str(), e.as_str(), fd.as_str()),
        (field, expected, found),
        "{err}"
    );
    assert_mentions(
        &err.to_string(),
        &[rel, &format!("field `{field}`"), expected, found],
    );
}

#[test]
fn wrong_typed_config_fields() {
    let cases: &[(&str, &str, serde_json::Value, &str, &str)] = &[
        (
            "und/config.json",
            "hidden_size",
            json!("64"),
            "a non-negative integer",
            "the string \"64\"",
        ),
        (
            "gen/config.json",
            "num_layers",
            json!(-3),
            "a non-negative integer",
            "the number -3",
        ),
        (
            "gen/config.json",
            "norm_eps",
            json!("small"),
            "a number",
            "the string \"small\"",
        ),
        (
            "vae/config.json",
            "use_quant_conv",
            json!(1),
            "true or false",
            "the number 1",
        ),
        (
            "und/config.json",
            "vision_config.patch_size",
            json!(14.5),
            "a non-negative integer",
            "the number 14.5",
        ),
        (
            "und/config.json",
            "vision_config",
            json!(7),
            "an object",
            "the number 7",
        ),
        (
            "und/config.json",
            "rope_scaling.mrope_section",
            json!("2,3,3"),
            "a list of integers",
            "the string \"2,3,3\"",
        ),
        (
            "gen/config.json",
            "axes_dim_rope",
            json!([8, "8", 8]),
            "a list of non-negative integers of at most 2097152",
            "the list [8,\"8\",8]",
        ),
        (
            "hbridge.json",
            "bridge.num_srt_tokens",
            json!(true),
            "a non-negative integer",
            "the boolean true",
        ),
    ];
    for (rel, field, value, expected, found) in cases {
        let ck = tiny();
        set_config(ck.path(), rel, field, value.clone());
        assert_field_error(ck.path(), rel, field, expected, found);
    }
}

#[test]
fn zero_and_absent_config_fields() {
    let ck = tiny();
    set_config(ck.path(), "gen/config.json", "patch_size", json!(0));
    assert_field_error(
        ck.path(),
        "gen/config.json",
        "patch_size",
        "a positive integer",
        "0",
    );

    let ck = tiny();
    edit_json(ck.path(), "und/config.json", |v| {
        remove_field(v, "vocab_size")
    });
    assert_field_error(
        ck.path(),
        "und/config.json",
        "vocab_size",
        "a non-negative integer",
        "nothing (field absent)",
    );

    let ck = tiny();
    set_config(
        ck.path(),
        "und/config.json",
        "num_key_value_heads",
        json!(0),
    );
    assert_field_error(
        ck.path(),
        "und/config.json",
        "num_key_value_heads",
        "a positive integer",
        "0",
    );
}

#[test]
fn config_values_beyond_sanity_bounds() {
    // Counts and dimensions far beyond any real model are refused before anything is sized by them.
    let layers = "at most 1024 (a bound far above any real model)";
    let dims = "at most 2097152 (a bound far above any real model)";
    let cases: &[(&str, &str, serde_json::Value, &str, &str)] = &[
        (
            "und/config.json",
            "num_hidden_layers",
            json!(1u64 << 40),
            layers,
            "1099511627776",
        ),
        ("gen/config.json", "num_layers", json!(5000), layers, "5000"),
        (
            "gen/config.json",
            "num_refiner_layers",
            json!(u64::MAX),
            layers,
            "18446744073709551615",
        ),
        (
            "vae/config.json",
            "layers_per_block",
            json!(1u64 << 62),
            layers,
            "4611686018427387904",
        ),
        (
            "und/config.json",
            "vision_config.depth",
            json!(1u64 << 32),
            layers,
            "4294967296",
        ),
        (
            "und/config.json",
            "vocab_size",
            json!(1u64 << 33),
            dims,
            "8589934592",
        ),
        (
            "gen/config.json",
            "patch_size",
            json!(u64::MAX),
            dims,
            "18446744073709551615",
        ),
        (
            "und/config.json",
            "vision_config.spatial_merge_size",
            json!(1u64 << 40),
            dims,
            "1099511627776",
        ),
        (
            "hbridge.json",
            "bridge.num_srt_tokens",
            json!(1u64 << 50),
            dims,
            "1125899906842624",
        ),
    ];
    for (rel, field, value, expected, found) in cases {
        let ck = tiny();
        set_config(ck.path(), rel, field, value.clone());
        assert_field_error(ck.path(), rel, field, expected, found);
    }

    // A list entry that would overflow a sum.
    let ck = tiny();
    set_config(
        ck.path(),
        "und/config.json",
        "rope_scaling.mrope_section",
        json!([u64::MAX, 1, 1]),
    );
    let err = open_err(ck.path());
    assert!(
        matches!(&err, LoadError::ConfigField { field, .. } if field == "rope_scaling.mrope_section"),
        "{err:?}"
    );

    // An FFN multiplier that would overflow the width.
    let ck = tiny();
    set_config(
        ck.path(),
        "gen/config.json",
        "ffn_dim_multiplier",
        json!(1e300),
    );
    let err = open_err(ck.path());
    assert!(
        matches!(&err, LoadError::ConfigField { field, .. } if field == "ffn_dim_multiplier"),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &["gen/config.json", "ffn_dim_multiplier", "at most 2097152"],
    );
}

#[test]
fn unsupported_config_values() {
    let ck = tiny();
    set_config(ck.path(), "und/config.json", "hidden_act", json!("gelu"));
    assert_field_error(
        ck.path(),
        "und/config.json",
        "hidden_act",
        "\"silu\"",
        "gelu",
    );

    let ck = tiny();
    set_config(
        ck.path(),
        "und/config.json",
        "rope_scaling.mrope_section",
        json!([4, 4]),
    );
    assert_field_error(
        ck.path(),
        "und/config.json",
        "mrope_section",
        "3 integers [t, h, w]",
        "[4, 4]",
    );
}

/// Asserts a `ConfigInconsistent` error on `rel` whose problem mentions every one of `needles`.
#[track_caller]
fn assert_inconsistent(dir: &Path, rel: &str, needles: &[&str]) {
    let err = open_err(dir);
    let LoadError::ConfigInconsistent { path, problem } = &err else {
        panic!("{rel}: expected ConfigInconsistent, got {err:?}");
    };
    assert_eq!(path, &dir.join(rel), "{err}");
    assert_mentions(problem, needles);
    let msg = err.to_string();
    assert_mentions(&msg, &[rel, "inconsistent config"]);
}

#[test]
fn hidden_not_divisible_by_heads() {
    let ck = tiny();
    set_config(
        ck.path(),
        "und/config.json",
        "num_attention_heads",
        json!(5),
    );
    assert_inconsistent(
        ck.path(),
        "und/config.json",
        &["hidden_size 64 is not divisible by num_attention_heads 5"],
    );

    let ck = tiny();
    set_config(
        ck.path(),
        "gen/config.json",
        "num_attention_heads",
        json!(5),
    );
    assert_inconsistent(
        ck.path(),
        "gen/config.json",
        &["hidden_size 72 is not divisible by num_attention_heads 5"],
    );

    let ck = tiny();
    set_config(
        ck.path(),
        "und/config.json",
        "vision_config.num_heads",
        json!(3),
    );
    assert_inconsistent(
        ck.path(),
        "und/config.json",
        &["vision_config.hidden_size 32 is not divisible by vision_config.num_heads 3"],
    );
}

#[test]
fn gqa_groups_must_be_whole() {
    let ck = tiny();
    set_config(
        ck.path(),
        "und/config.json",
        "num_key_value_heads",
        json!(3),
    );
    assert_inconsistent(
        ck.path(),
        "und/config.json",
        &["num_attention_heads 4 is not a multiple of num_key_value_heads 3"],
    );
    let ck = tiny();
    set_config(ck.path(), "gen/config.json", "num_kv_heads", json!(2));
    assert_inconsistent(
        ck.path(),
        "gen/config.json",
        &["num_attention_heads 3 is not a multiple of num_kv_heads 2"],
    );
}

#[test]
fn mrope_section_must_sum_to_half_head_dim() {
    let ck = tiny();
    set_config(
        ck.path(),
        "und/config.json",
        "rope_scaling.mrope_section",
        json!([2, 3, 4]),
    );
    assert_inconsistent(
        ck.path(),
        "und/config.json",
        &[
            "mrope_section [2, 3, 4] sums to 9",
            "expected head_dim/2 = 8",
        ],
    );
}

#[test]
fn axes_dim_rope_must_sum_to_gen_head_dim() {
    let ck = tiny();
    set_config(
        ck.path(),
        "gen/config.json",
        "axes_dim_rope",
        json!([8, 8, 10]),
    );
    assert_inconsistent(
        ck.path(),
        "gen/config.json",
        &[
            "axes_dim_rope [8, 8, 10] sums to 26",
            "hidden_size/num_attention_heads = 24",
        ],
    );
}

#[test]
fn bridge_pair_naming_a_missing_layer() {
    let ck = tiny();
    set_config(
        ck.path(),
        "hbridge.json",
        "bridge.pairs",
        json!([[1, 1], [6, 2]]),
    );
    assert_inconsistent(
        ck.path(),
        "hbridge.json",
        &["bridge pair [6, 2] names gen layer 6", "num_layers = 6"],
    );

    let ck = tiny();
    set_config(
        ck.path(),
        "hbridge.json",
        "bridge.pairs",
        json!([[1, 1], [2, 5]]),
    );
    assert_inconsistent(
        ck.path(),
        "hbridge.json",
        &[
            "bridge pair [2, 5] names und layer 5",
            "num_hidden_layers = 5",
        ],
    );
}

#[test]
fn bridge_pairs_duplicated_empty_or_malformed() {
    let ck = tiny();
    set_config(
        ck.path(),
        "hbridge.json",
        "bridge.pairs",
        json!([[1, 1], [2, 1], [1, 3]]),
    );
    assert_inconsistent(
        ck.path(),
        "hbridge.json",
        &["gen layer 1 appears in more than one bridge pair"],
    );

    let ck = tiny();
    set_config(ck.path(), "hbridge.json", "bridge.pairs", json!([]));
    assert_inconsistent(ck.path(), "hbridge.json", &["bridge.pairs is empty"]);

    let ck = tiny();
    set_config(
        ck.path(),
        "hbridge.json",
        "bridge.pairs",
        json!([[1, 1], [2]]),
    );
    assert_field_error(
        ck.path(),
        "hbridge.json",
        "bridge.pairs",
        "a list of [gen_layer, und_layer] pairs of non-negative integers",
        "the list [2]",
    );
}

#[test]
fn gen_and_vae_channels_must_agree() {
    let ck = tiny();
    set_config(ck.path(), "gen/config.json", "in_channels", json!(8));
    assert_inconsistent(
        ck.path(),
        "gen/config.json",
        &["in_channels 8", "latent_channels 4", "vae/config.json"],
    );

    let ck = tiny();
    set_config(ck.path(), "gen/config.json", "out_channels", json!(16));
    assert_inconsistent(
        ck.path(),
        "gen/config.json",
        &["out_channels 16", "latent_channels 4", "vae/config.json"],
    );
}

#[test]
fn omnigen2_text_feat_dim_must_match_und_hidden() {
    let mut p = omnigen2_preset();
    p.gen["text_feat_dim"] = json!(64);
    let ck = write_preset(&p, 1, WeightDType::BF16);
    set_config(ck.path(), "gen/config.json", "text_feat_dim", json!(48));
    assert_inconsistent(
        ck.path(),
        "gen/config.json",
        &["text_feat_dim 48", "und hidden_size 64", "caption_embedder"],
    );
}

#[test]
fn vae_channel_groups() {
    let ck = tiny();
    set_config(
        ck.path(),
        "vae/config.json",
        "block_out_channels",
        json!([8, 16, 18]),
    );
    assert_inconsistent(
        ck.path(),
        "vae/config.json",
        &[
            "block_out_channels [8, 16, 18]",
            "18 is not a positive multiple of norm_num_groups 4",
        ],
    );
}

// ---------------------------------------------------------------------------------------------------
// Sharded weights
// ---------------------------------------------------------------------------------------------------

#[test]
fn index_names_a_shard_that_lacks_the_tensor() {
    let ck = tiny();
    let map = split_und(ck.path(), 2);
    // Point one tensor of the second shard at the first.
    let first = shard_name(0, 2);
    let second = shard_name(1, 2);
    let moved = map
        .iter()
        .find(|(_, s)| s.as_str() == Some(second.as_str()))
        .map(|(t, _)| t.clone())
        .unwrap();
    edit_json(ck.path(), "und/model.safetensors.index.json", |v| {
        v["weight_map"][&moved] = json!(first);
    });
    let err = open_err(ck.path());
    let LoadError::Index {
        path,
        tensor,
        shard,
        detail,
    } = &err
    else {
        panic!("expected Index, got {err:?}");
    };
    assert_eq!(path, &ck.join("und/model.safetensors.index.json"));
    assert_eq!(tensor, &moved);
    assert_eq!(shard, &first);
    assert!(detail.contains("does not contain it"), "{detail}");
    assert_mentions(
        &err.to_string(),
        &[
            "und/model.safetensors.index.json",
            &moved,
            &first,
            "does not contain it",
        ],
    );
}

#[test]
fn index_with_a_malformed_weight_map() {
    let ck = tiny();
    split_und(ck.path(), 2);
    set_config(
        ck.path(),
        "und/model.safetensors.index.json",
        "weight_map",
        json!([1, 2]),
    );
    let err = open_err(ck.path());
    assert!(
        matches!(&err, LoadError::ConfigField { field, .. } if field == "weight_map"),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &["model.safetensors.index.json", "weight_map"],
    );

    // A shard path that leaves the folder.
    let ck = tiny();
    let map = split_und(ck.path(), 2);
    let name = map.keys().next().unwrap().clone();
    edit_json(ck.path(), "und/model.safetensors.index.json", |v| {
        v["weight_map"][&name] = json!("../gen/diffusion_pytorch_model.safetensors");
    });
    let err = open_err(ck.path());
    assert!(
        matches!(&err, LoadError::ConfigField { field, found, .. }
            if field == "weight_map" && found.contains(&name)),
        "{err:?}"
    );
}

#[test]
fn tensor_in_two_shards() {
    let ck = tiny();
    split_und(ck.path(), 2);
    // Copy one tensor of shard 1 into shard 2 as well (the index still names shard 1).
    let shard1 = ck.join("und").join(shard_name(0, 2));
    let dup = read_st(&shard1)[0].clone();
    edit_st(&ck.join("und").join(shard_name(1, 2)), |e| {
        e.push(dup.clone())
    });
    let err = open_err(ck.path());
    let LoadError::Index { tensor, detail, .. } = &err else {
        panic!("expected Index, got {err:?}");
    };
    assert_eq!(tensor, &dup.name);
    assert!(detail.contains("same name"), "{detail}");
}

// ---------------------------------------------------------------------------------------------------
// Tensors that do not match the configs
// ---------------------------------------------------------------------------------------------------

#[test]
fn missing_tensor() {
    let ck = tiny();
    drop_tensor(ck.path(), UND_FILE, K_PROJ_3);
    let err = open_err(ck.path());
    let issues = tensor_issues(&err);
    assert_eq!(issues.len(), 1, "{err}");
    let issue = &issues[0];
    assert_eq!(issue.file, UND_FILE);
    assert_eq!(issue.tensor, K_PROJ_3);
    assert_eq!(
        issue.kind,
        TensorIssueKind::Missing {
            expected: "[num_key_value_heads*head_dim = 32, hidden_size = 64]".into()
        }
    );
    assert_eq!(
        issue.to_string(),
        format!(
            "{UND_FILE}: {K_PROJ_3} is missing (expected shape [num_key_value_heads*head_dim = 32, hidden_size = 64])"
        )
    );
    assert_mentions(
        &err.to_string(),
        &["1 tensor problem:", UND_FILE, K_PROJ_3, "missing"],
    );
}

#[test]
fn missing_tensor_in_sharded_part_names_the_index() {
    // Any tensor, the embedding table included (it must not turn the whole part into "missing").
    for victim in [K_PROJ_3, "model.language_model.embed_tokens.weight"] {
        let ck = tiny();
        let map = split_und(ck.path(), 2);
        let shard = ck.join("und").join(map[victim].as_str().unwrap());
        edit_st(&shard, |e| e.retain(|t| t.name != victim));
        edit_json(ck.path(), "und/model.safetensors.index.json", |v| {
            v["weight_map"].as_object_mut().unwrap().remove(victim);
        });
        let err = open_err(ck.path());
        let issues = tensor_issues(&err);
        assert_eq!(issues.len(), 1, "{err}");
        assert_eq!(issues[0].file, "und/model.safetensors.index.json");
        assert_eq!(issues[0].tensor, victim);
        assert!(matches!(issues[0].kind, TensorIssueKind::Missing { .. }));
        assert_mentions(
            &err.to_string(),
            &["und/model.safetensors.index.json", victim, "missing"],
        );
    }
}

#[test]
fn missing_embedding_is_reported_under_the_checkpoint_prefix() {
    for flat in [false, true] {
        let ck = tiny();
        if flat {
            flatten_und_names(ck.path());
        }
        let embed = if flat {
            "model.embed_tokens.weight"
        } else {
            "model.language_model.embed_tokens.weight"
        };
        drop_tensor(ck.path(), UND_FILE, embed);
        let err = open_err(ck.path());
        let issues = tensor_issues(&err);
        assert_eq!(issues.len(), 1, "{err}");
        assert_eq!(issues[0].tensor, embed);
        assert_mentions(
            &err.to_string(),
            &[embed, "vocab_size = 512, hidden_size = 64"],
        );
    }
}

#[test]
fn wrong_shape_names_the_config_field() {
    let ck = tiny();
    reshape_tensor(ck.path(), UND_FILE, K_PROJ_3, &[16, 64]);
    let err = open_err(ck.path());
    let issues = tensor_issues(&err);
    assert_eq!(issues.len(), 1, "{err}");
    let TensorIssueKind::Shape {
        expected,
        found,
        hint,
    } = &issues[0].kind
    else {
        panic!("expected a shape issue, got {:?}", issues[0]);
    };
    assert_eq!(
        expected,
        "[num_key_value_heads*head_dim = 32, hidden_size = 64]"
    );
    assert_eq!(found, &vec![16, 64]);
    assert_eq!(
        hint,
        "16 rows instead of num_key_value_heads*head_dim = 32: check num_key_value_heads in und/config.json"
    );
    let msg = err.to_string();
    assert_mentions(
        &msg,
        &[
            "und/model.safetensors",
            K_PROJ_3,
            "[16, 64]",
            "16 rows",
            "num_key_value_heads*head_dim = 32",
            "check num_key_value_heads in und/config.json",
        ],
    );
}

#[test]
fn wrong_shape_hints_name_the_right_config_file() {
    // gen: a K projection's rows come from gen/config.json's num_kv_heads.
    let ck = tiny();
    reshape_tensor(ck.path(), GEN_FILE, "layers.2.attn.to_k.weight", &[48, 72]);
    let msg = open_err(ck.path()).to_string();
    assert_mentions(
        &msg,
        &[
            GEN_FILE,
            "layers.2.attn.to_k.weight",
            "48 rows instead of num_kv_heads*head_dim = 24",
            "check num_kv_heads in gen/config.json",
        ],
    );

    // bridge: the K projection reads gen K/V (columns) and writes und K/V (rows).
    let ck = tiny();
    reshape_tensor(
        ck.path(),
        BRIDGE_FILE,
        "bridge.layers.3.k_proj.weight",
        &[32, 48],
    );
    let msg = open_err(ck.path()).to_string();
    assert_mentions(
        &msg,
        &[
            BRIDGE_FILE,
            "bridge.layers.3.k_proj.weight",
            "48 columns instead of num_kv_heads*head_dim = 24",
            "check num_kv_heads in gen/config.json",
        ],
    );
    let ck = tiny();
    reshape_tensor(
        ck.path(),
        BRIDGE_FILE,
        "bridge.layers.3.q_proj.weight",
        &[48, 72],
    );
    let msg = open_err(ck.path()).to_string();
    assert_mentions(
        &msg,
        &[
            "48 rows instead of num_attention_heads*head_dim = 64",
            "check num_attention_heads in und/config.json",
        ],
    );

    // The number of SRT tokens comes from hbridge.json.
    let ck = tiny();
    reshape_tensor(ck.path(), BRIDGE_FILE, "srt.tokens", &[8, 72]);
    let msg = open_err(ck.path()).to_string();
    assert_mentions(
        &msg,
        &[
            "srt.tokens",
            "8 rows instead of num_srt_tokens = 16",
            "check num_srt_tokens in hbridge.json",
        ],
    );

    // vae: a 4-d conv weight names the dimension.
    let ck = tiny();
    reshape_tensor(
        ck.path(),
        VAE_FILE,
        "decoder.conv_in.weight",
        &[16, 8, 3, 3],
    );
    let msg = open_err(ck.path()).to_string();
    assert_mentions(
        &msg,
        &[
            VAE_FILE,
            "decoder.conv_in.weight",
            "8 in dim 1 instead of latent_channels = 4",
            "check latent_channels in vae/config.json",
        ],
    );
}

#[test]
fn wrong_rank_is_reported() {
    let ck = tiny();
    reshape_tensor(ck.path(), UND_FILE, K_PROJ_3, &[32, 64, 1]);
    let err = open_err(ck.path());
    let issues = tensor_issues(&err);
    assert_eq!(issues.len(), 1);
    assert!(
        matches!(&issues[0].kind, TensorIssueKind::Shape { found, .. } if found == &vec![32, 64, 1])
    );
    assert_mentions(
        &err.to_string(),
        &[
            K_PROJ_3,
            "[32, 64, 1]",
            "rank 3 instead of 2",
            "und/config.json",
        ],
    );
}

#[test]
fn wrong_dtype() {
    for dtype in [Dtype::I32, Dtype::F64, Dtype::U8, Dtype::F8_E4M3FNUZ] {
        let ck = tiny();
        retype_tensor(ck.path(), UND_FILE, K_PROJ_3, dtype);
        let err = open_err(ck.path());
        let issues = tensor_issues(&err);
        assert_eq!(issues.len(), 1, "{dtype:?}: {err}");
        assert_eq!(issues[0].file, UND_FILE);
        assert_eq!(issues[0].tensor, K_PROJ_3);
        assert_eq!(
            issues[0].kind,
            TensorIssueKind::DType {
                expected: "BF16, F16 or F32".into(),
                found: dtype.to_string(),
            }
        );
        assert_mentions(
            &err.to_string(),
            &[
                UND_FILE,
                K_PROJ_3,
                &format!("has dtype {dtype}"),
                "expected BF16, F16 or F32",
            ],
        );
    }
}

#[test]
fn all_tensor_problems_are_reported_together() {
    let ck = tiny();
    reshape_tensor(ck.path(), UND_FILE, K_PROJ_3, &[16, 64]);
    drop_tensor(ck.path(), GEN_FILE, "x_embedder.bias");
    retype_tensor(ck.path(), VAE_FILE, "decoder.conv_out.bias", Dtype::I32);
    reshape_tensor(ck.path(), BRIDGE_FILE, "srt.tokens", &[8, 72]);
    let err = open_err(ck.path());
    let issues = tensor_issues(&err);
    let mut got: Vec<(&str, &str, &str)> = issues
        .iter()
        .map(|i| {
            let kind = match i.kind {
                TensorIssueKind::Missing { .. } => "missing",
                TensorIssueKind::Shape { .. } => "shape",
                TensorIssueKind::DType { .. } => "dtype",
            };
            (i.file.as_str(), i.tensor.as_str(), kind)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (BRIDGE_FILE, "srt.tokens", "shape"),
            (GEN_FILE, "x_embedder.bias", "missing"),
            (UND_FILE, K_PROJ_3, "shape"),
            (VAE_FILE, "decoder.conv_out.bias", "dtype"),
        ]
    );
    let msg = err.to_string();
    assert!(msg.starts_with("4 tensor problems:"), "{msg}");
    for issue in issues {
        assert_mentions(&msg, &[&issue.to_string()]);
    }
}

#[test]
fn many_tensor_problems_are_summarized() {
    let ck = tiny();
    let layer3 = "model.language_model.layers.3.";
    let mut dropped = 0;
    edit_st(&ck.join(UND_FILE), |e| {
        let before = e.len();
        e.retain(|t| !t.name.starts_with(layer3));
        dropped = before - e.len();
    });
    assert_eq!(dropped, 12);
    let err = open_err(ck.path());
    let issues = tensor_issues(&err);
    assert_eq!(issues.len(), 12);
    assert!(issues.iter().all(|i| i.tensor.starts_with(layer3)));
    let msg = err.to_string();
    assert!(msg.starts_with("12 tensor problems:"), "{msg}");
    assert_mentions(&msg, &["... and 4 more"]);
}

#[test]
fn partial_optional_group_is_an_error() {
    // The vision tower is optional, but a checkpoint with part of it is broken.
    let ck = tiny();
    let name = "model.visual.blocks.1.attn.qkv.weight";
    drop_tensor(ck.path(), UND_FILE, name);
    let err = open_err(ck.path());
    let issues = tensor_issues(&err);
    assert_eq!(issues.len(), 1, "{err}");
    assert_eq!(issues[0].tensor, name);
    assert_mentions(
        &err.to_string(),
        &[name, "missing", "3*vision_config.hidden_size = 96"],
    );

    // Same for the VAE encoder.
    let ck = tiny();
    drop_tensor(ck.path(), VAE_FILE, "encoder.conv_out.weight");
    let issues = tensor_issues(&open_err(ck.path())).to_vec();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].file, VAE_FILE);
    assert_eq!(issues[0].tensor, "encoder.conv_out.weight");
}

#[test]
fn omnigen2_missing_context_refiner_is_named() {
    let ck = write_preset(&omnigen2_preset(), 3, WeightDType::BF16);
    open_ok(ck.path());
    let refiner = "context_refiner.0.attn.to_q.weight";
    drop_tensor(ck.path(), GEN_FILE, refiner);
    let err = open_err(ck.path());
    let issues = tensor_issues(&err);
    assert_eq!(issues.len(), 1, "{err}");
    assert_eq!(
        (issues[0].file.as_str(), issues[0].tensor.as_str()),
        (GEN_FILE, refiner)
    );
    assert_mentions(&err.to_string(), &[GEN_FILE, refiner, "missing"]);
}

// ---------------------------------------------------------------------------------------------------
// Safetensors bytes, built by hand
// ---------------------------------------------------------------------------------------------------

/// Writes `bytes` as a file and opens it, expecting a `Safetensors` error naming that file.
fn st_problem(bytes: &[u8]) -> (SafetensorsProblem, String) {
    let tmp = TempDir::new("raw");
    let path = write_bytes(&tmp, "w.safetensors", bytes);
    match TensorFile::open(&path) {
        Ok(f) => panic!("expected an error, got {} tensors", f.entries.len()),
        Err(err) => {
            let LoadError::Safetensors { path: p, problem } = &err else {
                panic!("expected LoadError::Safetensors, got {err:?}");
            };
            assert_eq!(p, &path);
            let msg = err.to_string();
            assert_mentions(
                &msg,
                &[&path.display().to_string(), "not a valid safetensors file"],
            );
            (problem.clone(), msg)
        }
    }
}

fn f32_header(tensors: &[(&str, &[usize], [usize; 2])]) -> String {
    let fields: Vec<String> = tensors
        .iter()
        .map(|(name, shape, off)| {
            format!(
                "\"{name}\":{{\"dtype\":\"F32\",\"shape\":{shape:?},\"data_offsets\":[{},{}]}}",
                off[0], off[1]
            )
        })
        .collect();
    format!("{{{}}}", fields.join(","))
}

#[test]
fn raw_valid_file_opens() {
    let header = f32_header(&[("a", &[4], [0, 16]), ("b", &[2], [16, 24])]);
    // A header padded with spaces (as writers align it) and with metadata is fine.
    let header = format!(
        "{{\"__metadata__\":{{\"format\":\"pt\"}},{}    ",
        &header[1..]
    );
    let data: Vec<u8> = (0..6u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let tmp = TempDir::new("raw-ok");
    let path = write_bytes(&tmp, "ok.safetensors", &raw_st(header.as_bytes(), &data));
    let file = TensorFile::open(&path).unwrap();
    assert_eq!(file.entries.len(), 2);
    let b = &file.entries["b"];
    assert_eq!(b.shape, vec![2]);
    assert_eq!(file.bytes(b), &data[16..24]);
}

#[test]
fn raw_truncated_below_header_length() {
    for len in [0usize, 3, 7] {
        let (problem, msg) = st_problem(&vec![1u8; len]);
        assert_eq!(problem, SafetensorsProblem::Truncated { file_len: len });
        assert_mentions(
            &msg,
            &[
                &format!("file is {len} bytes"),
                "8-byte header length",
                "truncated",
            ],
        );
    }
}

#[test]
fn raw_header_length_beyond_file() {
    let bytes = raw_st_with_len(1000, b"{}", &[]);
    let (problem, msg) = st_problem(&bytes);
    assert_eq!(
        problem,
        SafetensorsProblem::HeaderBeyondFile {
            header_len: 1000,
            file_len: 10
        }
    );
    assert_mentions(&msg, &["header length 1000", "10-byte file", "truncated"]);

    let (problem, msg) = st_problem(&raw_st_with_len(u64::MAX, b"{}", &[]));
    assert_eq!(
        problem,
        SafetensorsProblem::HeaderTooLarge {
            header_len: u64::MAX
        }
    );
    assert_mentions(&msg, &[&u64::MAX.to_string(), "100 MB"]);
}

#[test]
fn raw_truncated_data_section() {
    let header = f32_header(&[("a", &[4], [0, 16]), ("b", &[2], [16, 24])]);
    let (problem, msg) = st_problem(&raw_st(header.as_bytes(), &[0u8; 20]));
    assert_eq!(
        problem,
        SafetensorsProblem::OutOfBounds {
            tensor: "b".into(),
            offsets: [16, 24],
            data_len: 20
        }
    );
    assert_mentions(
        &msg,
        &["`b`", "[16, 24]", "20-byte data section", "truncated file?"],
    );
}

#[test]
fn raw_truncated_real_file_in_a_checkpoint() {
    let ck = tiny();
    let path = ck.join(VAE_FILE);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = open_err(ck.path());
    let LoadError::Safetensors { path: p, problem } = &err else {
        panic!("expected Safetensors, got {err:?}");
    };
    assert_eq!(p, &path);
    assert!(
        matches!(problem, SafetensorsProblem::OutOfBounds { .. }),
        "{problem:?}"
    );
    assert_mentions(&err.to_string(), &[VAE_FILE, "truncated file?"]);

    // Cut inside the header.
    std::fs::write(&path, &bytes[..100]).unwrap();
    let err = open_err(ck.path());
    assert!(
        matches!(
            &err,
            LoadError::Safetensors {
                problem: SafetensorsProblem::HeaderBeyondFile { file_len: 100, .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn raw_out_of_bounds_offsets() {
    let header = f32_header(&[("a", &[4], [0, 16]), ("b", &[4], [16, 32])]);
    let (problem, msg) = st_problem(&raw_st(header.as_bytes(), &[0u8; 24]));
    assert_eq!(
        problem,
        SafetensorsProblem::OutOfBounds {
            tensor: "b".into(),
            offsets: [16, 32],
            data_len: 24
        }
    );
    assert_mentions(
        &msg,
        &[
            "`b`",
            "[16, 32]",
            "past the end of the 24-byte data section",
        ],
    );

    // Far outside, leaving a hole at the start.
    let header = f32_header(&[("a", &[4], [100, 116])]);
    let (problem, msg) = st_problem(&raw_st(header.as_bytes(), &[0u8; 16]));
    assert!(
        matches!(&problem, SafetensorsProblem::BadOffsets { tensor, offsets: [100, 116], expected }
            if tensor == "a" && expected.contains("start at byte 0")),
        "{problem:?}"
    );
    assert_mentions(&msg, &["`a`", "[100, 116]", "expected a start at byte 0"]);
}

#[test]
fn raw_overlapping_offsets() {
    let header = f32_header(&[("a", &[4], [0, 16]), ("b", &[4], [8, 24])]);
    let (problem, msg) = st_problem(&raw_st(header.as_bytes(), &[0u8; 24]));
    assert_eq!(
        problem,
        SafetensorsProblem::BadOffsets {
            tensor: "b".into(),
            offsets: [8, 24],
            expected: "a start at byte 16, where `a` ends: the two overlap".into(),
        }
    );
    assert_mentions(
        &msg,
        &[
            "`b`",
            "[8, 24]",
            "expected a start at byte 16",
            "`a`",
            "overlap",
        ],
    );

    // The same range twice.
    let header = f32_header(&[("a", &[4], [0, 16]), ("b", &[4], [0, 16])]);
    let (problem, _) = st_problem(&raw_st(header.as_bytes(), &[0u8; 16]));
    assert!(
        matches!(problem, SafetensorsProblem::BadOffsets { .. }),
        "{problem:?}"
    );
}

#[test]
fn raw_gap_between_tensors() {
    let header = f32_header(&[("a", &[4], [0, 16]), ("b", &[4], [20, 36])]);
    let (problem, msg) = st_problem(&raw_st(header.as_bytes(), &[0u8; 36]));
    assert_eq!(
        problem,
        SafetensorsProblem::BadOffsets {
            tensor: "b".into(),
            offsets: [20, 36],
            expected: "a start at byte 16, where `a` ends: a gap lies between them".into(),
        }
    );
    assert_mentions(&msg, &["`b`", "[20, 36]", "gap"]);
}

#[test]
fn raw_reversed_offsets() {
    let header = f32_header(&[("a", &[0], [16, 0])]);
    let (problem, msg) = st_problem(&raw_st(header.as_bytes(), &[0u8; 16]));
    assert!(
        matches!(&problem, SafetensorsProblem::BadOffsets { tensor, offsets: [16, 0], .. } if tensor == "a"),
        "{problem:?}"
    );
    assert_mentions(&msg, &["`a`", "[16, 0]", "an end not before the start"]);
}

#[test]
fn raw_trailing_bytes() {
    let header = f32_header(&[("a", &[4], [0, 16])]);
    let (problem, msg) = st_problem(&raw_st(header.as_bytes(), &[0u8; 20]));
    assert_eq!(
        problem,
        SafetensorsProblem::DataLengthMismatch {
            declared: Some(16),
            found: 20
        }
    );
    assert_mentions(&msg, &["declares 16 data bytes", "file holds 20", "padded"]);
}

#[test]
fn raw_size_not_matching_shape_and_dtype() {
    let header = f32_header(&[("a", &[4], [0, 12])]);
    let (problem, msg) = st_problem(&raw_st(header.as_bytes(), &[0u8; 12]));
    assert_eq!(
        problem,
        SafetensorsProblem::SizeMismatch {
            tensor: "a".into(),
            expected: "shape [4] x F32 = 16 bytes".into(),
            found: 12,
        }
    );
    assert_mentions(
        &msg,
        &[
            "`a`",
            "span 12 bytes",
            "expected shape [4] x F32 = 16 bytes",
        ],
    );

    // Sub-byte dtypes must still fill whole bytes.
    let header = "{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}";
    let (problem, msg) = st_problem(&raw_st(header.as_bytes(), &[0u8; 2]));
    assert!(
        matches!(problem, SafetensorsProblem::SizeMismatch { found: 2, .. }),
        "{problem:?}"
    );
    assert_mentions(&msg, &["12 bits"]);
}

#[test]
fn raw_shape_overflow() {
    let big = 1usize << 32;
    let header = f32_header(&[("a", &[big, big], [0, 16])]);
    let (problem, msg) = st_problem(&raw_st(header.as_bytes(), &[0u8; 16]));
    assert_eq!(
        problem,
        SafetensorsProblem::Overflow {
            tensor: "a".into(),
            shape: vec![big, big]
        }
    );
    assert_mentions(&msg, &["`a`", "overflows"]);
}

#[test]
fn raw_malformed_json_header() {
    let cases: &[(&str, &str)] = &[
        ("{\"a\": {\"dtype\": \"F32\",", "JSON error at column"),
        ("[1, 2]", "not a JSON object"),
        (
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}",
            "`a` has no `data_offsets`",
        ),
        (
            "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}",
            "`a` has no `dtype`",
        ),
        (
            "{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}",
            "dtype is not a string",
        ),
        (
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
            "`a`: shape is not a list of non-negative integers",
        ),
        (
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}",
            "`a`: data_offsets is not a pair of non-negative integers",
        ),
        (
            "{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,4]}}",
            "`a`: dtype \"Q4\" is not a safetensors dtype",
        ),
    ];
    for (header, needle) in cases {
        let (problem, msg) = st_problem(&raw_st(header.as_bytes(), &[0u8; 4]));
        assert!(
            matches!(&problem, SafetensorsProblem::HeaderMalformed { detail } if detail.contains(needle)),
            "{header}: {problem:?}"
        );
        assert_mentions(&msg, &["header is not valid safetensors JSON", needle]);
    }
}

#[test]
fn raw_non_utf8_header() {
    let (problem, msg) = st_problem(&raw_st(b"{\"\xff\xfe\":1}", &[]));
    assert!(
        matches!(&problem, SafetensorsProblem::HeaderNotUtf8 { detail } if detail.contains("index 2")),
        "{problem:?}"
    );
    assert_mentions(&msg, &["header is not UTF-8", "invalid utf-8"]);
}

#[test]
fn raw_garbage_weight_file_in_a_checkpoint() {
    let ck = tiny();
    std::fs::write(ck.join(UND_FILE), b"this is not a safetensors file at all").unwrap();
    let err = open_err(ck.path());
    let LoadError::Safetensors { path, problem } = &err else {
        panic!("expected Safetensors, got {err:?}");
    };
    assert_eq!(path, &ck.join(UND_FILE));
    assert!(
        matches!(problem, SafetensorsProblem::HeaderTooLarge { .. }),
        "{problem:?}"
    );
    assert_mentions(&err.to_string(), &[UND_FILE, "not a safetensors file?"]);
}
