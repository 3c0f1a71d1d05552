//! Tensors that do not match the configs: missing, wrong shape, rank or dtype.

use super::*;

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
