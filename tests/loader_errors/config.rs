//! Malformed configs: syntax, types, bounds, inconsistent fields.

use super::*;

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
