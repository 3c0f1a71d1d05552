//! The CPU backend against the PyTorch reference fixtures (docs/FIXTURES.md): the graph builders' und
//! prefill, gen step and VAE decode run on the committed `tiny` / `tiny-b` checkpoints, compared with
//! what the reference computed, relative L2 <= 1e-5 per tensor (DESIGN.md 8).

#[path = "common/mod.rs"]
mod common;
#[path = "common/fixture.rs"]
mod fixture;

use common::rel_l2;
use fixture::{f32s, fixture, i64s_as_i32};
use hbridge_engine::{CpuWeights, Executor, HostTensor};
use hbridge_graph::build::{
    gen_step, names, positions, und_prefill, vae_decode, GenStepSpec, UndPrefillSpec,
};
use hbridge_graph::plan::plan_memory;
use hbridge_graph::Graph;
use hbridge_loader::Checkpoint;
use std::collections::HashMap;

const TOL: f64 = 1e-5;

fn run(
    ex: &mut Executor,
    ckpt: &Checkpoint,
    g: &Graph,
    inputs: &HashMap<String, HostTensor>,
) -> HashMap<String, HostTensor> {
    let w = CpuWeights::from_graph(ckpt, g).unwrap();
    ex.run(g, &plan_memory(g), &w, inputs).unwrap()
}

#[track_caller]
fn check(what: &str, got: &HostTensor, want: &[f32], report: &mut Vec<String>) {
    let e = rel_l2(got.as_f32().unwrap(), &common::to64(want));
    report.push(format!("{what}: {e:.2e}"));
    assert!(
        e <= TOL,
        "{what}: relative L2 {e:.3e} > {TOL:.0e}\n{}",
        report.join("\n")
    );
}

/// The cond branch: und prefill (hidden states, logits, bridged K/V), then one gen step at `step.x`,
/// `step.t` fed with the engine's own K/V, then the VAE decode of `sample.latent`.
fn fixture_matches(name: &str) {
    let fx = fixture(name);
    let c = &fx.ckpt.config;
    let mut report = Vec::new();
    let mut ex = Executor::new();

    let (_, ids) = i64s_as_i32(&fx.inputs, "cond.input_ids");
    let (_, pos) = i64s_as_i32(&fx.inputs, "cond.position_ids");
    let len = ids.len();
    let pairs = c.layout.bridge.as_ref().unwrap().pairs.clone();
    let mut kv_layers: Vec<usize> = pairs.iter().map(|p| p.1).collect();
    kv_layers.sort_unstable();
    kv_layers.dedup();
    let spec = UndPrefillSpec {
        len,
        kv_layers: kv_layers.clone(),
        logits: true,
        hidden_states: true,
        final_hidden: false,
        kv_cache: None,
    };
    let g = und_prefill(&c.und, &fx.ckpt.und_names, &spec).unwrap();
    let mut inputs = HashMap::new();
    inputs.insert(names::UND_IDS.to_string(), HostTensor::i32([len], ids));
    inputs.insert(
        names::UND_POSITIONS.to_string(),
        HostTensor::i32([3, len], pos.clone()),
    );
    let und = run(&mut ex, &fx.ckpt, &g, &inputs);
    for i in 0..=c.und.num_layers {
        check(
            &format!("und.hs.{i}"),
            &und[&format!("und.hs.{i}")],
            &f32s(&fx.outputs, &format!("und.hs.{i}")).1,
            &mut report,
        );
    }
    check(
        "und.logits",
        &und["und.logits"],
        &f32s(&fx.outputs, "und.logits").1,
        &mut report,
    );
    for &u in &kv_layers {
        for kv in ["k", "v"] {
            let n = format!("und.{kv}.{u}");
            check(&n, &und[&n], &f32s(&fx.outputs, &n).1, &mut report);
        }
    }

    let (xshape, x) = f32s(&fx.inputs, "step.x");
    let (_, t) = f32s(&fx.inputs, "step.t");
    let latent = [xshape[0], xshape[1], xshape[2]];
    let spec = GenStepSpec {
        latent,
        context_len: len,
        hidden_states: true,
        srt: true,
        und_kv_states: false,
    };
    let g = gen_step(c, &spec).unwrap();
    let p = c.gen.patch_size;
    let grid = (latent[1] / p, latent[2] / p);
    let n_srt = c.layout.bridge.as_ref().unwrap().num_srt_tokens;
    let n = n_srt + grid.0 * grid.1;
    let gen_pos = positions::gen_positions(n_srt, &[grid]);
    let s0 = pos.iter().copied().max().unwrap() as usize + 1;
    let mut inputs = HashMap::new();
    inputs.insert(names::GEN_X.to_string(), HostTensor::f32(latent, x));
    inputs.insert(names::GEN_T.to_string(), HostTensor::f32([1], t));
    inputs.insert(
        names::GEN_POSITIONS.to_string(),
        HostTensor::i32([n, 3], gen_pos.clone()),
    );
    inputs.insert(
        "gen.positions.latent".to_string(),
        HostTensor::i32([n - n_srt, 3], gen_pos[3 * n_srt..].to_vec()),
    );
    inputs.insert(
        names::SHARED_POSITIONS.to_string(),
        HostTensor::i32([3, n], positions::shared_positions(s0, n_srt, &[grid])),
    );
    for &u in &kv_layers {
        for n in [names::und_k(u), names::und_v(u)] {
            inputs.insert(n.clone(), und[&n].clone());
        }
    }
    let gen = run(&mut ex, &fx.ckpt, &g, &inputs);
    for i in 0..=c.gen.num_layers {
        let n = format!("gen.hs.{i}");
        check(&n, &gen[&n], &f32s(&fx.outputs, &n).1, &mut report);
    }
    check(
        "gen.srt",
        &gen["gen.srt"],
        &f32s(&fx.outputs, "gen.srt").1,
        &mut report,
    );
    check(
        "gen.velocity.cond",
        &gen["gen.velocity"],
        &f32s(&fx.outputs, "gen.velocity.cond").1,
        &mut report,
    );

    let (zshape, z) = f32s(&fx.outputs, "sample.latent");
    let g = vae_decode(&c.vae, (zshape[1], zshape[2])).unwrap();
    let mut inputs = HashMap::new();
    inputs.insert(names::VAE_LATENT.to_string(), HostTensor::f32(zshape, z));
    let px = run(&mut ex, &fx.ckpt, &g, &inputs);
    check(
        "vae.pixels",
        &px["vae.pixels"],
        &f32s(&fx.outputs, "vae.pixels").1,
        &mut report,
    );
    if std::env::var_os("HBRIDGE_TEST_VERBOSE").is_some() {
        eprintln!("{name}:\n{}", report.join("\n"));
    }
}

#[test]
fn tiny_matches_reference() {
    fixture_matches("tiny");
}

#[test]
fn tiny_b_matches_reference() {
    fixture_matches("tiny-b");
}
