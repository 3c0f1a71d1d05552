//! A human-readable summary of a model directory: topology, both experts' dimensions, the bridge, the
//! size of each part and the validation result.

use hbridge_loader::{Checkpoint, LoadError, ModelConfig, PartStore};
use std::fmt::Write;
use std::path::Path;

/// The summary, and whether the checkpoint validated.
pub struct Inspection {
    /// The multi-line report: topology, dimensions, bridge pairs, parameters and bytes per part, the
    /// weights' resident size per backend, and the validation line (with the error when it failed).
    pub text: String,
    /// Whether every tensor the topology needs is present with the expected dtype and shape (the CLI's
    /// `inspect` exits non-zero when not).
    pub valid: bool,
}

fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn describe_config(c: &ModelConfig, out: &mut String) {
    let u = &c.und;
    let g = &c.gen;
    let v = &c.vae;
    let _ = writeln!(out, "topology   {}", c.layout.topology);
    let _ = writeln!(
        out,
        "und        Qwen2.5-VL: {} layers, hidden {}, heads {} q / {} kv (GQA {}), head_dim {}, ffn {}, vocab {}, mrope {:?}, theta {}, {} lm_head",
        u.num_layers,
        u.hidden_size,
        u.num_heads,
        u.num_kv_heads,
        u.num_heads / u.num_kv_heads,
        u.head_dim,
        u.intermediate_size,
        u.vocab_size,
        u.mrope_section,
        u.rope_theta,
        if u.tie_word_embeddings { "tied" } else { "untied" }
    );
    match &u.vision {
        Some(vis) => {
            let _ = writeln!(
                out,
                "vision     depth {}, hidden {}, heads {}, ffn {}, patch {}, merge {} -> {}",
                vis.depth,
                vis.hidden_size,
                vis.num_heads,
                vis.intermediate_size,
                vis.patch_size,
                vis.spatial_merge_size,
                vis.out_hidden_size
            );
        }
        None => {
            let _ = writeln!(out, "vision     (no vision_config)");
        }
    }
    let _ = writeln!(
        out,
        "gen        OmniGen2 DiT: {} layers + {} refiner, hidden {}, heads {} q / {} kv (GQA {}), head_dim {} (rope axes {:?}), ffn {}, patch {}, channels {}",
        g.num_layers,
        g.num_refiner_layers,
        g.hidden_size,
        g.num_heads,
        g.num_kv_heads,
        g.num_heads / g.num_kv_heads,
        g.head_dim,
        g.axes_dim_rope,
        g.ffn_inner,
        g.patch_size,
        g.in_channels
    );
    let _ = writeln!(
        out,
        "vae        AutoencoderKL: blocks {:?} x {} resnets, latent {} ch, downscale {}, scale {} shift {}",
        v.block_out_channels,
        v.layers_per_block,
        v.latent_channels,
        v.downscale(),
        v.scaling_factor,
        v.shift_factor
    );
    if let Some(b) = &c.layout.bridge {
        let pairs: Vec<String> = b
            .pairs
            .iter()
            .map(|(g, u)| format!("gen {g} <- und {u}"))
            .collect();
        let _ = writeln!(
            out,
            "bridge     {} pairs: {}",
            b.pairs.len(),
            pairs.join(", ")
        );
        let _ = writeln!(
            out,
            "srt        {} tokens -> {}",
            b.num_srt_tokens,
            c.srt_out_dim()
        );
    }
}

fn part_line(name: &str, store: &PartStore, out: &mut String) {
    let params: usize = store
        .names()
        .filter_map(|n| store.get(n))
        .map(|t| t.numel())
        .sum();
    let files: Vec<&str> = store.file_names().collect();
    let _ = writeln!(
        out,
        "  {name:<7}{:>10} params {:>12}  {} tensors in {}",
        human_count(params),
        human_bytes(store.data_bytes()),
        store.len(),
        files.join(", ")
    );
}

/// `(values in every tensor, values in the matrices)` of `store`.
fn part_values(store: &PartStore) -> (usize, usize) {
    store
        .names()
        .filter_map(|n| store.get(n))
        .fold((0, 0), |(all, matrices), t| {
            let n = t.numel();
            (all + n, matrices + if t.shape.len() == 2 { n } else { 0 })
        })
}

/// The weights' resident size on each backend: the CPU holds them as f32, or with `--weight-dtype
/// bf16` its matrices (all but a few) as bf16; CUDA holds bf16.
fn memory_line(parts: &[&PartStore], out: &mut String) {
    let (all, matrices) = parts
        .iter()
        .map(|p| part_values(p))
        .fold((0, 0), |(a, m), (pa, pm)| (a + pa, m + pm));
    let _ = writeln!(
        out,
        "memory     weights resident: CPU {} as f32, about {} with --weight-dtype bf16; CUDA {} (bf16)",
        human_bytes(all * 4),
        human_bytes(all * 4 - matrices * 2),
        human_bytes(all * 2)
    );
}

/// Inspects `dir`. Errors only when the configs themselves cannot be read; a tensor problem is reported in
/// the text with `valid = false`.
pub fn inspect(dir: &Path) -> Result<Inspection, LoadError> {
    let config = ModelConfig::read(dir)?;
    let mut text = String::new();
    let _ = writeln!(text, "model      {}", dir.display());
    describe_config(&config, &mut text);
    match Checkpoint::open(dir) {
        Ok(ck) => {
            let _ = writeln!(text, "parts");
            part_line("und", &ck.und, &mut text);
            part_line("gen", &ck.gen, &mut text);
            part_line("vae", &ck.vae, &mut text);
            if let Some(b) = &ck.bridge {
                part_line("bridge", b, &mut text);
            }
            let mut parts = vec![&ck.und, &ck.gen, &ck.vae];
            parts.extend(ck.bridge.as_ref());
            memory_line(&parts, &mut text);
            let _ = writeln!(
                text,
                "optional   vision encoder {}, VAE encoder {}",
                if ck.has_vision { "present" } else { "absent" },
                if ck.has_vae_encoder {
                    "present"
                } else {
                    "absent"
                }
            );
            for w in &ck.warnings {
                let _ = writeln!(text, "warning    {w}");
            }
            let _ = writeln!(
                text,
                "validation OK: every tensor present with the expected dtype and shape"
            );
            Ok(Inspection { text, valid: true })
        }
        Err(e) => {
            let _ = writeln!(text, "validation FAILED: {e}");
            Ok(Inspection { text, valid: false })
        }
    }
}
