//! The `hbridge` command line. Results go to stdout; notices and errors to stderr.

mod cli;

use clap::{Parser, Subcommand};
use hbridge::init::{write_checkpoint, WeightDType};
use hbridge::presets::{preset, PRESET_NAMES};
use hbridge_engine::device::{self, Device, DeviceRequest};
use hbridge_engine::CpuCompute;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "hbridge",
    version,
    about = "Inference runtime for H-shape bridged multimodal models"
)]
struct Cli {
    /// Backend: auto (CUDA when a GPU is usable, else the CPU), cpu or cuda.
    #[arg(long, global = true, default_value = "auto")]
    device: String,
    /// Weights' number type: auto (the backend's own: on the CPU bf16 matrices of a bf16 checkpoint stay
    /// bf16, the same results as f32; bf16 on CUDA), f32 (CPU only) or
    /// bf16 (on the CPU: half the weights' memory, the same results on a bf16 checkpoint).
    #[arg(long, global = true, default_value = "auto")]
    weight_dtype: String,
    /// CPU arithmetic: f32 (the reference's numerics) or bf16 (linears, attention and convolutions on
    /// Intel AMX tiles where the CPU has them, the CUDA backend's numerics). Without it,
    /// HBRIDGE_CPU_MATMUL=bf16 asks for bf16.
    #[arg(long, global = true)]
    cpu_compute: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a complete checkpoint with deterministic random weights: the tiny model by default, or a
    /// named configuration (`--config hbridge-7b4b`: ~24 GB in bf16, for GPU benchmarks).
    #[command(alias = "init")]
    InitTiny {
        /// Output model directory (created if absent).
        dir: PathBuf,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Named configuration.
        #[arg(long, default_value = "tiny")]
        config: String,
        /// Storage dtype: bf16, f16 or f32.
        #[arg(long, default_value = "bf16")]
        dtype: String,
        /// Overwrite an existing checkpoint in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Run the built-in tiny model end to end: answer a question, generate an image, report timings.
    Demo(cli::demo::DemoArgs),
    /// Answer a prompt with the und expert (answer on stdout, timings on stderr).
    Chat(cli::chat::ChatArgs),
    /// Generate an image from a text prompt into a PNG.
    Generate(cli::generate::GenerateArgs),
    /// Edit reference images following a text prompt into a PNG.
    Edit(cli::edit::EditArgs),
    /// Measure load, und prefill, decode, a gen step and a whole image on one backend (issue 5).
    Bench(cli::bench::BenchArgs),
    /// Run one und prefill and one gen step on explicit inputs and write every intermediate.
    Forward(cli::forward::ForwardArgs),
    /// Print a model directory's topology, dimensions, bridge, sizes and validation result.
    Inspect {
        /// Model directory (holding hbridge.json).
        dir: PathBuf,
    },
}

/// Picks the backend for commands that compute, printing the fallback notice once.
fn select_device(request: &str) -> Result<Device, String> {
    let request: DeviceRequest = request.parse().map_err(|e| format!("--device: {e}"))?;
    let selection = device::select(request).map_err(|e| e.to_string())?;
    if let Some(notice) = selection.notice {
        eprintln!("notice: {notice}");
    }
    Ok(selection.device)
}

fn run(cli: Cli) -> Result<(), String> {
    let computes = matches!(
        cli.command,
        Command::Demo(_)
            | Command::Chat(_)
            | Command::Generate(_)
            | Command::Edit(_)
            | Command::Forward(_)
            | Command::Bench(_)
    );
    let device = if computes {
        select_device(&cli.device)?
    } else {
        Device::Cpu
    };
    let backend = cli::Backend::new(device, &cli.weight_dtype)?;
    if let Some(compute) = &cli.cpu_compute {
        let compute = match compute.as_str() {
            "f32" => CpuCompute::F32,
            "bf16" => CpuCompute::Bf16,
            other => {
                return Err(format!(
                    "--cpu-compute: expected f32 or bf16, found \"{other}\""
                ))
            }
        };
        compute
            .request()
            .map_err(|e| format!("--cpu-compute: {e}"))?;
    }
    match cli.command {
        Command::InitTiny {
            dir,
            seed,
            config,
            dtype,
            force,
        } => {
            let preset = preset(&config).ok_or_else(|| {
                format!(
                    "--config: unknown configuration \"{config}\"; known: {}",
                    PRESET_NAMES.join(", ")
                )
            })?;
            let dtype = WeightDType::parse(&dtype)
                .ok_or_else(|| format!("--dtype: expected bf16, f16 or f32, found \"{dtype}\""))?;
            let start = Instant::now();
            write_checkpoint(&dir, &preset, seed, dtype, force).map_err(|e| e.to_string())?;
            eprintln!(
                "wrote the {} checkpoint (seed {seed}) to {} in {:.2?}",
                preset.name,
                dir.display(),
                start.elapsed()
            );
            Ok(())
        }
        Command::Demo(args) => cli::demo::run(args, backend),
        Command::Chat(args) => cli::chat::run(args, backend),
        Command::Generate(args) => cli::generate::run(args, backend),
        Command::Edit(args) => cli::edit::run(args, backend),
        Command::Forward(args) => cli::forward::run(args, backend),
        Command::Bench(args) => {
            if cli.weight_dtype != "auto" {
                return Err(
                    "--weight-dtype: bench measures each backend with its own dtype; leave it out"
                        .into(),
                );
            }
            cli::bench::run_cli(args, device)
        }
        Command::Inspect { dir } => {
            let report = hbridge::inspect::inspect(&dir).map_err(|e| e.to_string())?;
            print!("{}", report.text);
            if report.valid {
                Ok(())
            } else {
                Err(format!("{}: checkpoint does not validate", dir.display()))
            }
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
