//! `hbridge bench` end to end on the tiny fixture (CPU on CI; CUDA where a GPU is present).

use std::path::Path;
use std::process::Command;

#[test]
fn bench_reports_every_workload_as_json() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/model");
    let dir = std::env::temp_dir().join(format!("hbridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hbridge"))
        .arg("bench")
        .arg(&model)
        .args([
            "--prompt-len",
            "24",
            "--context",
            "40",
            "--decode-tokens",
            "4",
        ])
        .args(["--size", "32", "--steps", "2", "--runs", "2", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hbridge bench failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    for name in [
        "load_s",
        "und_prefill_ms",
        "und_decode_tokens_per_s",
        "gen_step_ms",
        "time_to_image_ms",
    ] {
        let row = rows
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} row in {report}"));
        let v = row["value"].as_f64().unwrap();
        assert!(v.is_finite() && v > 0.0, "{name} = {v}");
        assert!(stdout.contains(name), "the table lacks {name}:\n{stdout}");
    }
    // Prefill and gen step report achieved FLOP rates from their graphs' cost.
    for name in ["und_prefill_ms", "gen_step_ms"] {
        let row = rows.iter().find(|r| r["name"] == name).unwrap();
        assert_eq!(row["achieved"]["unit"], "TFLOP/s");
        assert!(row["achieved"]["value"].as_f64().unwrap() > 0.0);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_names_a_bad_model_argument() {
    let out = Command::new(env!("CARGO_BIN_EXE_hbridge"))
        .args(["bench", "/nonexistent/model"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/model") && stderr.contains("preset"),
        "{stderr}"
    );
}
