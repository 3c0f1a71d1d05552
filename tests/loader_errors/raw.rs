//! Safetensors bytes, built by hand: truncations, offsets, headers.

use super::*;

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
