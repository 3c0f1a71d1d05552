//! `hbridge bench MODEL_OR_CONFIG`: the end-to-end workloads of `hbridge::bench` as a table (and JSON).

use hbridge::bench::{run, BenchOptions, BenchReport, Workload};
use hbridge::presets::{preset, PRESET_NAMES};
use hbridge_engine::device::Device;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// A model directory, or a preset name (tiny, hbridge-7b4b): its random-weight checkpoint is written
    /// to the cache folder first if absent (hbridge-7b4b: ~23 GB).
    pub model: String,
    #[arg(long, default_value_t = 512)]
    pub prompt_len: usize,
    /// Tokens in the K/V cache when decode is timed.
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    #[arg(long, default_value_t = 32)]
    pub decode_tokens: usize,
    /// Image side in pixels (square).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Timed repetitions of the prefill and the gen step, after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    #[arg(long, default_value_t = 4.0)]
    pub guidance: f32,
    /// Also write the rows as JSON (the format `reference/bench_torch.py --compare` reads).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also time one run of the und prefill, the decode step and the gen step's cond branch node by
    /// node: a table by op kind (time, share, achieved rate, % of the ceilings) and the
    /// slowest nodes; in the JSON under `profiles`.
    #[arg(long)]
    pub profile: bool,
    /// Run only these workloads (comma-separated: prefill, decode, gen-step, image); the load and the
    /// ceilings always run.
    #[arg(long, value_delimiter = ',', value_parser = parse_workload)]
    pub only: Vec<Workload>,
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    Workload::parse(s).ok_or_else(|| {
        let names: Vec<_> = Workload::ALL.iter().map(|w| w.name()).collect();
        format!("{s}: not a workload (expected one of {})", names.join(", "))
    })
}

fn model_dir(name: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(name);
    if path.join("hbridge.json").is_file() {
        return Ok(path);
    }
    let Some(p) = preset(name) else {
        return Err(format!(
            "{name}: not a model directory (no hbridge.json) and not a preset ({})",
            PRESET_NAMES.join(", ")
        ));
    };
    let dir = super::demo::cache_dir().join(name);
    if !dir.join("hbridge.json").is_file() {
        eprintln!(
            "writing the {name} checkpoint (random weights) to {}",
            dir.display()
        );
        hbridge::init::write_checkpoint(&dir, &p, 0, hbridge::init::WeightDType::BF16, false)
            .map_err(|e| e.to_string())?;
    }
    Ok(dir)
}

pub fn run_cli(a: BenchArgs, device: Device) -> Result<(), String> {
    let dir = model_dir(&a.model)?;
    let opts = BenchOptions {
        prompt_len: a.prompt_len,
        context: a.context,
        decode_tokens: a.decode_tokens,
        width: a.size,
        height: a.size,
        steps: a.steps,
        runs: a.runs,
        guidance: a.guidance,
        profile: a.profile,
        workloads: if a.only.is_empty() {
            Workload::ALL.to_vec()
        } else {
            a.only
        },
    };
    if opts.prompt_len == 0 || a.size == 0 {
        return Err("--prompt-len and --size must be positive".into());
    }
    let report =
        run(&dir, device, &opts, |line| eprintln!("bench: {line}")).map_err(|e| e.to_string())?;
    print_report(&report, &dir);
    if let Some(path) = a.json {
        std::fs::write(&path, to_json(&report, &dir).to_string() + "\n")
            .map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_report(r: &BenchReport, dir: &std::path::Path) {
    println!("hbridge bench {} on {}", dir.display(), r.device);
    let c = &r.ceilings;
    println!(
        "ceilings (this run): compute {} {:.3} TFLOP/s; memory {} {:.1} GB/s (read + write)",
        c.gemm,
        c.gemm_flops_per_s / 1e12,
        c.copy,
        c.copy_bytes_per_s / 1e9
    );
    println!(
        "{:<26} {:>14} {:<9} {:>18} {:>9}  note",
        "workload", "value", "unit", "achieved", "% ceil"
    );
    for row in &r.rows {
        let achieved = row
            .achieved
            .map_or(String::new(), |(v, u)| format!("{v:.3} {u}"));
        let pct = row
            .of_ceiling
            .map_or(String::new(), |p| format!("{:.0}%", p * 100.0));
        println!(
            "{:<26} {:>14.3} {:<9} {:>18} {:>9}  {}",
            row.name, row.value, row.unit, achieved, pct, row.note
        );
    }
    for p in &r.profiles {
        println!();
        print!("{}", p.table(Some(&r.ceilings)));
    }
}

fn to_json(r: &BenchReport, dir: &std::path::Path) -> serde_json::Value {
    let mut v = serde_json::json!({
        "engine": "hbridge",
        "model": dir.display().to_string(),
        "device": r.device.to_string(),
        "ceilings": {
            "gemm_flops_per_s": r.ceilings.gemm_flops_per_s,
            "copy_bytes_per_s": r.ceilings.copy_bytes_per_s,
            "gemm": r.ceilings.gemm,
            "copy": r.ceilings.copy,
        },
        "rows": r.rows.iter().map(|row| serde_json::json!({
            "name": row.name,
            "value": if row.value.is_finite() { serde_json::json!(row.value) } else { serde_json::Value::Null },
            "unit": row.unit,
            "achieved": row.achieved.map(|(v, u)| serde_json::json!({"value": v, "unit": u})),
            "of_ceiling": row.of_ceiling,
            "note": row.note,
        })).collect::<Vec<_>>(),
    });
    // Only with --profile: the default report keeps its keys.
    if !r.profiles.is_empty() {
        v["profiles"] = r
            .profiles
            .iter()
            .map(|p| p.to_json(Some(&r.ceilings)))
            .collect();
    }
    v
}
