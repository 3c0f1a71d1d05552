//! `hbridge bench` end to end on the tiny fixture (CPU on CI; CUDA where a GPU is present).

mod target_runner;

use std::path::Path;

/// `hbridge [device] bench <tiny fixture> <args> --json <tmp>` in a folder of its own (`tag`): the
/// printed table and the JSON report. Fails the test, with the run's stderr, if the run fails.
fn run_bench(tag: &str, device: &[&str], args: &[&str]) -> (String, serde_json::Value) {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/model");
    let dir = std::env::temp_dir().join(format!("hbridge-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = target_runner::hbridge()
        .args(device)
        .arg("bench")
        .arg(&model)
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "hbridge bench {args:?} failed: {stderr}"
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (String::from_utf8_lossy(&out.stdout).into_owned(), report)
}

#[test]
fn bench_reports_every_workload_as_json() {
    let (stdout, report) = run_bench(
        "all",
        &[],
        &[
            "--prompt-len",
            "24",
            "--context",
            "40",
            "--decode-tokens",
            "4",
            "--size",
            "32",
            "--steps",
            "2",
            "--runs",
            "2",
        ],
    );
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
    assert!(
        report.get("profiles").is_none(),
        "profiles only with --profile"
    );
    // Prefill and gen step report achieved FLOP rates from their graphs' cost.
    for name in ["und_prefill_ms", "gen_step_ms"] {
        let row = rows.iter().find(|r| r["name"] == name).unwrap();
        assert_eq!(row["achieved"]["unit"], "TFLOP/s");
        assert!(row["achieved"]["value"].as_f64().unwrap() > 0.0);
    }
    // The ceilings are measured on every backend (the CPU's own GEMM and a host copy without a
    // GPU), named in the table, and the rated rows are held to them.
    let c = &report["ceilings"];
    for rate in ["gemm_flops_per_s", "copy_bytes_per_s"] {
        let v = c[rate].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v > 0.0, "ceiling {rate} = {v} in {report}");
    }
    for what in ["gemm", "copy"] {
        let label = c[what].as_str().unwrap_or_default();
        assert!(
            !label.is_empty(),
            "the {what} ceiling is not described: {report}"
        );
        assert!(
            stdout.contains(label),
            "the table lacks {label:?}:\n{stdout}"
        );
    }
    for name in ["und_prefill_ms", "und_decode_tokens_per_s", "gen_step_ms"] {
        let row = rows.iter().find(|r| r["name"] == name).unwrap();
        let f = row["of_ceiling"].as_f64().unwrap_or(f64::NAN);
        assert!(f.is_finite() && f > 0.0, "{name}: of_ceiling {f}");
    }
}

/// `--profile` prints a table by op kind for each profiled workload (kinds adding up to the workload's
/// total) and the slowest nodes, and puts the same in the JSON; without it the JSON has no `profiles`.
#[test]
fn bench_profile_prints_the_table_by_op_kind() {
    let (stdout, report) = run_bench(
        "profile",
        &["--device", "cpu"],
        &[
            "--prompt-len",
            "8",
            "--context",
            "16",
            "--decode-tokens",
            "2",
            "--size",
            "32",
            "--steps",
            "1",
            "--runs",
            "1",
            "--profile",
        ],
    );
    for workload in [
        "und_prefill",
        "und_decode_step",
        "gen_step_cond",
        "vae_decode",
    ] {
        assert!(
            stdout.contains(&format!("profile {workload}: ")),
            "no {workload} profile:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("op kind") && stdout.contains("slowest nodes:"),
        "{stdout}"
    );
    // The gen step's table has its GEMMs, attention, norms, RoPE and elementwise kinds.
    let gen = &stdout[stdout.find("profile gen_step_cond").unwrap()..];
    for kind in [
        "linear",
        "attention",
        "rmsnorm",
        "rope",
        "swiglu",
        "gate_residual",
    ] {
        assert!(
            gen.lines().any(|l| l.trim_start().starts_with(kind)),
            "no {kind} row:\n{gen}"
        );
    }
    assert!(
        gen.contains("gen.layers.") || gen.contains("gen.noise_refiner."),
        "{gen}"
    );
    // Its compute nodes by shape: GEMMs as M x N x K, attention by queries and keys.
    assert!(gen.contains("compute by shape"), "{gen}");
    assert!(
        gen.lines().any(|l| l.trim_start().starts_with("linear")
            && l.split_whitespace()
                .nth(1)
                .is_some_and(|s| s.split('x').count() == 3)),
        "{gen}"
    );

    // The VAE decode's: convolutions by shape (channels in -> out, kernel, stride, input size).
    let vae = &stdout[stdout.find("profile vae_decode").unwrap()..];
    for kind in ["conv2d", "group_norm", "silu"] {
        assert!(
            vae.lines().any(|l| l.trim_start().starts_with(kind)),
            "no {kind} row:\n{vae}"
        );
    }
    assert!(
        vae.lines()
            .any(|l| l.trim_start().starts_with("conv2d") && l.contains(" k3 s1 at ")),
        "{vae}"
    );

    let profiles = report["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 4);
    for p in profiles {
        let total = p["total_ms"].as_f64().unwrap();
        let kinds = p["kinds"].as_array().unwrap();
        let ms: f64 = kinds.iter().map(|k| k["ms"].as_f64().unwrap()).sum();
        assert!(total > 0.0 && (ms - total).abs() <= 1e-9 * total, "{p}");
        let share: f64 = kinds.iter().map(|k| k["share"].as_f64().unwrap()).sum();
        assert!((share - 1.0).abs() < 1e-9, "{p}");
        let nodes: u64 = kinds
            .iter()
            .filter(|k| k["kind"] != "state_write")
            .map(|k| k["nodes"].as_u64().unwrap())
            .sum();
        assert_eq!(nodes, p["nodes"].as_u64().unwrap(), "{p}");
        let shapes = p["shapes"].as_array().unwrap();
        assert!(!shapes.is_empty() && shapes.len() <= 12, "{p}");
        let shape_ms: f64 = shapes.iter().map(|s| s["ms"].as_f64().unwrap()).sum();
        let compute_ms: f64 = kinds
            .iter()
            .filter(|k| ["linear", "attention", "conv2d"].contains(&k["kind"].as_str().unwrap()))
            .map(|k| k["ms"].as_f64().unwrap())
            .sum();
        assert!(shape_ms <= compute_ms * (1.0 + 1e-9), "{p}");
        let slowest = p["slowest"].as_array().unwrap();
        assert_eq!(slowest.len(), 10);
        assert!(slowest
            .iter()
            .all(|n| n["label"].as_str().is_some_and(|l| !l.is_empty())));
    }
}

#[test]
fn bench_names_a_bad_model_argument() {
    let out = target_runner::hbridge()
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

/// `--only` runs the named workloads and no others (the load always); an unknown name is refused with
/// the list of valid ones.
#[test]
fn bench_only_runs_the_named_workloads() {
    let (_, report) = run_bench(
        "only",
        &["--device", "cpu"],
        &[
            "--prompt-len",
            "8",
            "--size",
            "32",
            "--runs",
            "1",
            "--only",
            "gen-step,prefill",
        ],
    );
    let names: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["load_s", "und_prefill_ms", "gen_step_ms"],
        "{report}"
    );

    let out = target_runner::hbridge()
        .args(["bench", "tiny", "--only", "gen-step,warp-drive"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warp-drive") && stderr.contains("gen-step, image"),
        "{stderr}"
    );
}
