//! Sharded weights: the index against its shards.

use super::*;

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
