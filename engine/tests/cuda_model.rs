//! The CUDA executor on the reference fixtures (docs/FIXTURES.md): the same graphs the CPU backend's
//! fixture tests run (und prefill, gen step of either topology, VAE decode, greedy chat decoding), on
//! bf16 weights and activations, against the f32 PyTorch reference (DESIGN.md 8): relative L2 <= 2e-2
//! on velocity and logits, the same greedy tokens, every other traced tensor reported. A captured CUDA
//! graph's replay must equal an eager run bit for bit.
//!
//! Without a GPU every test prints SKIPPED and passes (except the one checking that a missing GPU is a
//! clear error); with `HBRIDGE_REQUIRE_GPU=1` a missing GPU fails them.

#[path = "common/fixture.rs"]
mod fixture;
#[path = "cuda_kernels/common.rs"]
mod gpu_common;

use fixture::{f32s, fixture, i64s_as_i32, Fixture, Tensors};
use gpu_common::{gpu, rel_l2};
use hbridge_engine::cuda::{CudaError, CudaExecutor, CudaStates, CudaWeights, Gpu};
use hbridge_engine::{EngineError, HostTensor};
use hbridge_graph::build::names;
use hbridge_graph::plan::plan_memory;
use hbridge_graph::Graph;
use hbridge_loader::Part;
use std::sync::Arc;

/// DESIGN.md 8: whole model, bf16 vs the f32 reference.
const TOL: f64 = 2e-2;

/// Runs graphs of one fixture on the GPU, uploading each graph's weights on first use.
struct Runner {
    ex: CudaExecutor,
    weights: CudaWeights,
    report: Vec<String>,
}

impl Runner {
    fn new(gpu: Arc<Gpu>) -> Runner {
        let mut ex = CudaExecutor::new(gpu.clone());
        ex.set_poison(true);
        Runner {
            ex,
            weights: CudaWeights::new(gpu),
            report: Vec::new(),
        }
    }

    /// The cond gen step of `fx` with its und context computed and its weights resident, outputs not
    /// poisoned (the timing and profiling tests measure runs, not what they write).
    fn gen_step_ready(&mut self, fx: &Fixture) -> (Graph, Tensors) {
        self.ex.set_poison(false);
        let (ug, uin) = fx.und_cond();
        let und = self.run(fx, &ug, &uin);
        let (g, inputs) = fx.gen_cond(&und);
        self.weights.load_graph(&fx.ckpt, &g, |_| {}).unwrap();
        (g, inputs)
    }

    fn run(&mut self, fx: &Fixture, g: &Graph, inputs: &Tensors) -> Tensors {
        self.weights
            .load_graph(&fx.ckpt, g, |_| {})
            .unwrap_or_else(|e| panic!("{}: uploading weights: {e}", fx.name));
        self.ex
            .run(g, &plan_memory(g), &self.weights, inputs)
            .unwrap_or_else(|e| panic!("{}: {e}", fx.name))
    }

    /// Records the error of `name`; asserts it when `tol` is given (NaN never passes).
    #[track_caller]
    fn check(&mut self, name: &str, got: &HostTensor, want: &[f32], tol: Option<f64>) {
        let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
        let e = rel_l2(got.as_f32().unwrap(), &want);
        let line = format!(
            "{name}: rel L2 {e:.3e}{}",
            tol.map_or(String::new(), |t| format!(" (tol {t:.0e})"))
        );
        println!("{line}");
        self.report.push(line);
        assert!(
            e.is_finite(),
            "{name}: non-finite output\n{}",
            self.report.join("\n")
        );
        if let Some(t) = tol {
            assert!(
                e <= t,
                "{name}: relative L2 {e:.3e} > {t:.0e}\n{}",
                self.report.join("\n")
            );
        }
    }
}

/// Every fixture graph on the GPU against the reference.
fn fixture_on_cuda(name: &str) {
    let Some(gpu) = gpu(name) else { return };
    let fx = fixture(name);
    let mut r = Runner::new(gpu);

    let (g, inputs) = fx.und_cond();
    let und = r.run(&fx, &g, &inputs);
    for i in 0..=fx.ckpt.config.und.num_layers {
        let n = format!("und.hs.{i}");
        r.check(&n, &und[&n], &f32s(&fx.outputs, &n).1, None);
    }
    r.check(
        "und.logits",
        &und["und.logits"],
        &f32s(&fx.outputs, "und.logits").1,
        Some(TOL),
    );
    for u in fx.kv_layers() {
        for kv in ["k", "v"] {
            let n = format!("und.{kv}.{u}");
            r.check(&n, &und[&n], &f32s(&fx.outputs, &n).1, None);
        }
    }
    if fx.is_omnigen2() {
        let n = "und.final_hidden";
        r.check(n, &und[n], &f32s(&fx.outputs, n).1, None);
    }

    let (g, inputs) = fx.gen_cond(&und);
    let gen = r.run(&fx, &g, &inputs);
    for i in 0..=fx.ckpt.config.gen.num_layers {
        let n = format!("gen.hs.{i}");
        r.check(&n, &gen[&n], &f32s(&fx.outputs, &n).1, None);
    }
    if !fx.is_omnigen2() {
        r.check(
            "gen.srt",
            &gen["gen.srt"],
            &f32s(&fx.outputs, "gen.srt").1,
            None,
        );
    }
    r.check(
        "gen.velocity (cond)",
        &gen["gen.velocity"],
        &f32s(&fx.outputs, "gen.velocity.cond").1,
        Some(TOL),
    );

    let (g, inputs) = fx.vae();
    let px = r.run(&fx, &g, &inputs);
    r.check(
        "vae.pixels",
        &px["vae.pixels"],
        &f32s(&fx.outputs, "vae.pixels").1,
        None,
    );

    if fx.has_chat() {
        // Decode steps run through one CUDA graph captured over the device K/V cache (made from the
        // prefill's host copy at the first step) and replayed with the cache length in a device buffer.
        let before = r.ex.stats();
        let mut cache: Option<CudaStates> = None;
        let mut greedy_run = |g: &Graph, inputs: &Tensors, states: &mut Tensors| {
            if g.states().next().is_none() {
                return r.run(&fx, g, inputs);
            }
            r.weights.load_graph(&fx.ckpt, g, |_| {}).unwrap();
            let dev = cache.get_or_insert_with(|| {
                CudaStates::from_host(r.ex.gpu(), states).expect("uploading the K/V cache")
            });
            r.ex.run_captured_with_states(g, &plan_memory(g), &r.weights, inputs, dev)
                .unwrap_or_else(|e| panic!("{}: decode step: {e}", fx.name))
        };
        let (logits, tokens) = fx.greedy(8, &mut greedy_run);
        let after = r.ex.stats();
        assert!(
            after.captures > before.captures && after.replays >= before.replays + 5,
            "{name}: decode steps should be captured once and replayed: {before:?} -> {after:?}"
        );
        let got = HostTensor::f32([logits.len()], logits);
        r.check(
            "chat.logits",
            &got,
            &f32s(&fx.outputs, "chat.logits").1,
            Some(TOL),
        );
        let (_, want) = i64s_as_i32(&fx.outputs, "chat.greedy_ids");
        println!("chat greedy tokens: {tokens:?} (reference {want:?})");
        assert_eq!(
            tokens, want,
            "{name}: greedy tokens differ from the reference"
        );
    }
    println!("{name} on {:?}: {:?}", r.ex.gpu(), r.ex.stats());
}

#[test]
fn tiny_matches_reference_on_cuda() {
    fixture_on_cuda("tiny");
}

#[test]
fn tiny_b_matches_reference_on_cuda() {
    fixture_on_cuda("tiny-b");
}

#[test]
fn tiny_omnigen2_matches_reference_on_cuda() {
    fixture_on_cuda("tiny-omnigen2");
}

fn bits(t: &HostTensor) -> Vec<u32> {
    t.as_f32().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[track_caller]
fn assert_identical(what: &str, a: &Tensors, b: &Tensors) {
    assert_eq!(a.len(), b.len(), "{what}: output sets differ");
    for (name, t) in a {
        assert_eq!(t.shape, b[name].shape, "{what}: {name} shape");
        assert!(
            bits(t) == bits(&b[name]),
            "{what}: {name} differs between replay and eager"
        );
    }
}

/// The gen step (over the und context `r` computes), the und prefill and the VAE of `fx`, each with
/// its inputs.
fn tiny_graphs(r: &mut Runner, fx: &Fixture) -> [(&'static str, Graph, Tensors); 3] {
    let (ug, uin) = fx.und_cond();
    let und = r.run(fx, &ug, &uin);
    let (gg, gin) = fx.gen_cond(&und);
    let (vg, vin) = fx.vae();
    [
        ("gen step", gg, gin),
        ("und prefill", ug, uin),
        ("vae", vg, vin),
    ]
}

/// Eager, first captured call (warm-up + capture), replay, and a replay on new input values (another
/// timestep): all bit-identical to eager runs on the same inputs. For the gen step, the und prefill and
/// the VAE of `tiny`.
#[test]
fn captured_replay_equals_eager_bit_for_bit() {
    let Some(gpu) = gpu("captured_replay_equals_eager_bit_for_bit") else {
        return;
    };
    let fx = fixture("tiny");
    let mut r = Runner::new(gpu);
    for (what, g, inputs) in &tiny_graphs(&mut r, &fx) {
        r.weights.load_graph(&fx.ckpt, g, |_| {}).unwrap();
        let plan = plan_memory(g);
        let eager = r.ex.run(g, &plan, &r.weights, inputs).unwrap();
        let before = r.ex.stats();
        let first = r.ex.run_captured(g, &plan, &r.weights, inputs).unwrap();
        if let Some(e) = r.ex.capture_failure(g, &plan, &r.weights) {
            panic!("{what}: capture failed: {e}");
        }
        let replay = r.ex.run_captured(g, &plan, &r.weights, inputs).unwrap();
        let after = r.ex.stats();
        assert_eq!(after.captures, before.captures + 1, "{what}: {after:?}");
        assert_eq!(after.replays, before.replays + 1, "{what}: {after:?}");
        assert_identical(&format!("{what}, first captured call"), &eager, &first);
        assert_identical(&format!("{what}, replay"), &eager, &replay);

        // New input values through the capture's buffers.
        let mut changed = inputs.clone();
        for (name, t) in changed.iter_mut() {
            match &mut t.data {
                hbridge_engine::HostData::F32(v) => {
                    for x in v.iter_mut() {
                        *x = *x * 0.75 + 0.01;
                    }
                }
                // Token ids: rotate among the ids already present, so they stay inside the vocabulary
                // (positions are left alone; the prefill has no float input).
                hbridge_engine::HostData::I32(v) if name == names::UND_IDS => v.rotate_left(1),
                hbridge_engine::HostData::I32(_) => {}
            }
        }
        let replay2 = r.ex.run_captured(g, &plan, &r.weights, &changed).unwrap();
        let eager2 = r.ex.run(g, &plan, &r.weights, &changed).unwrap();
        assert_identical(&format!("{what}, replay on new inputs"), &eager2, &replay2);
        let differs = eager2.iter().any(|(n, t)| bits(t) != bits(&eager[n]));
        assert!(
            differs,
            "{what}: new inputs changed no output (were they copied in?)"
        );
    }
    println!("{:?}", r.ex.stats());
}

/// Programmatic dependent launch changes when a kernel may start, never what it computes: the gen step,
/// the und prefill and the VAE of `tiny`, eager and captured, with PDL on are bit-identical to eager
/// runs with it off (each kernel's `griddepcontrol.wait` comes before its first read of the previous
/// kernel's output, the cuBLASLt GEMMs between them included).
#[test]
fn pdl_launches_equal_plain_launches_bit_for_bit() {
    let Some(gpu) = gpu("pdl_launches_equal_plain_launches_bit_for_bit") else {
        return;
    };
    if gpu.arch().major < 9 {
        eprintln!(
            "SKIPPED pdl_launches_equal_plain_launches_bit_for_bit: PDL needs sm_90 or newer"
        );
        return;
    }
    let was = gpu.pdl();
    let fx = fixture("tiny");
    let mut plain = Runner::new(gpu.clone());
    let mut with_pdl = Runner::new(gpu.clone());
    gpu.set_pdl(false);
    for (what, g, inputs) in &tiny_graphs(&mut plain, &fx) {
        let plan = plan_memory(g);
        gpu.set_pdl(false);
        plain.weights.load_graph(&fx.ckpt, g, |_| {}).unwrap();
        let want = plain.ex.run(g, &plan, &plain.weights, inputs).unwrap();
        assert!(gpu.set_pdl(true), "PDL on an sm_90 GPU");
        with_pdl.weights.load_graph(&fx.ckpt, g, |_| {}).unwrap();
        let eager = with_pdl
            .ex
            .run(g, &plan, &with_pdl.weights, inputs)
            .unwrap();
        assert_identical(&format!("{what}, PDL eager"), &want, &eager);
        let first = with_pdl
            .ex
            .run_captured(g, &plan, &with_pdl.weights, inputs)
            .unwrap();
        if let Some(e) = with_pdl.ex.capture_failure(g, &plan, &with_pdl.weights) {
            gpu.set_pdl(was);
            panic!("{what}: capture with PDL failed: {e}");
        }
        let replay = with_pdl
            .ex
            .run_captured(g, &plan, &with_pdl.weights, inputs)
            .unwrap();
        assert_identical(&format!("{what}, PDL first captured call"), &want, &first);
        assert_identical(&format!("{what}, PDL replay"), &want, &replay);
    }
    gpu.set_pdl(was);
}

/// The replay-vs-eager hook on the tiny gen step (timings printed; a later bench records them on
/// hbridge-7b4b).
#[test]
fn replay_vs_eager_timing_on_tiny() {
    let Some(gpu) = gpu("replay_vs_eager_timing_on_tiny") else {
        return;
    };
    let fx = fixture("tiny");
    let mut r = Runner::new(gpu);
    let (g, inputs) = r.gen_step_ready(&fx);
    let t =
        r.ex.time_replay_vs_eager(&g, &plan_memory(&g), &r.weights, &inputs, 20)
            .unwrap();
    println!(
        "tiny gen step, {} nodes: eager {:.3} ms, replay {:.3} ms (median of {}), x{:.2}",
        t.nodes,
        t.eager_median_ms(),
        t.replay_median_ms(),
        t.eager_ms.len(),
        t.speedup()
    );
    assert!(t.captured(), "the gen step could not be captured");
    assert!(t
        .eager_ms
        .iter()
        .chain(&t.replay_ms)
        .all(|v| v.is_finite() && *v > 0.0));
}

/// The per-node profile on the tiny gen step: one entry per node with finite, non-negative device times
/// and a positive sum (printed by op kind; `hbridge bench --profile` does the same on hbridge-7b4b).
#[test]
fn profile_on_tiny() {
    let Some(gpu) = gpu("profile_on_tiny") else {
        return;
    };
    let fx = fixture("tiny");
    let mut r = Runner::new(gpu);
    let (g, inputs) = r.gen_step_ready(&fx);
    let t =
        r.ex.profile(
            &g,
            &plan_memory(&g),
            &r.weights,
            &inputs,
            &mut CudaStates::new(),
        )
        .unwrap();
    assert_eq!(t.per_node.len(), g.nodes.len());
    for (k, &(i, ms)) in t.per_node.iter().enumerate() {
        assert_eq!(i, k);
        assert!(ms.is_finite() && ms >= 0.0, "node {i}: {ms} ms");
    }
    let total = t.total_ms();
    assert!(total.is_finite() && total > 0.0, "total {total} ms");
    let kinds = t.by_kind(&g, 2, 2);
    println!(
        "tiny gen step profile, {} nodes, {total:.3} ms:",
        g.nodes.len()
    );
    for k in &kinds {
        println!("  {:<18} {:>4} nodes {:>8.3} ms", k.kind, k.nodes, k.ms);
    }
    let sum: f64 = kinds.iter().map(|k| k.ms).sum();
    assert!((sum - total).abs() <= 1e-6 * total.max(1.0));
}

/// Weight validation names the tensor at fault with the CPU backend's error variants, before uploading
/// anything.
#[test]
fn weight_errors_name_the_tensor() {
    let Some(gpu) = gpu("weight_errors_name_the_tensor") else {
        return;
    };
    let fx = fixture("tiny");
    let mut w = CudaWeights::new(gpu);
    let name = "x_embedder.weight";
    let real = fx.ckpt.tensor(Part::Gen, name).unwrap().shape.to_vec();
    let wrong = vec![real[0] + 1, real[1]];
    let err = w
        .load_list(&fx.ckpt, [(Part::Gen, name, wrong.as_slice())], |_| {})
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::WeightShape {
            part: Part::Gen,
            name: name.into(),
            expected: wrong.clone(),
            found: real.clone()
        }
    );
    let err = w
        .load_list(
            &fx.ckpt,
            [(Part::Gen, "no.such.weight", real.as_slice())],
            |_| {},
        )
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::MissingWeight {
            part: Part::Gen,
            name: "no.such.weight".into()
        }
    );
    assert!(
        w.is_empty(),
        "nothing may be uploaded when validation fails"
    );
    let mut seen = Vec::new();
    let report = w
        .load_list(&fx.ckpt, [(Part::Gen, name, real.as_slice())], |p| {
            seen.push(p)
        })
        .unwrap();
    assert_eq!(
        (report.tensors, report.bytes),
        (1, real.iter().product::<usize>() * 2)
    );
    assert_eq!(
        seen.last().map(|p| (p.tensors_done, p.bytes_done)),
        Some((1, report.bytes))
    );
    assert_eq!(
        w.require(Part::Gen, name, &wrong).unwrap_err(),
        EngineError::WeightShape {
            part: Part::Gen,
            name: name.into(),
            expected: wrong,
            found: real
        }
    );
}

/// A node the backend cannot run is reported with its label before anything is launched, and a
/// missing input the same way as on the CPU.
#[test]
fn errors_before_launch_match_the_cpu_contract() {
    let Some(gpu) = gpu("errors_before_launch_match_the_cpu_contract") else {
        return;
    };
    let fx = fixture("tiny");
    let mut r = Runner::new(gpu);
    let (g, mut inputs) = fx.und_cond();
    r.weights.load_graph(&fx.ckpt, &g, |_| {}).unwrap();
    inputs.remove(hbridge_graph::build::names::UND_IDS);
    let err =
        r.ex.run(&g, &plan_memory(&g), &r.weights, &inputs)
            .unwrap_err();
    assert_eq!(
        err,
        EngineError::MissingInput {
            name: hbridge_graph::build::names::UND_IDS.into()
        }
    );
}

/// Runs everywhere: without a GPU, opening one is a clear `Unavailable` error (never a panic); with a
/// GPU it opens.
#[test]
fn opening_a_gpu_never_panics() {
    match Gpu::new(0) {
        Ok(g) => println!("opened {g:?}"),
        Err(e) => {
            assert!(matches!(e, CudaError::Unavailable(_)), "{e:?}");
            assert!(
                !std::env::var("HBRIDGE_REQUIRE_GPU").is_ok_and(|v| v == "1"),
                "HBRIDGE_REQUIRE_GPU=1 but no GPU: {e}"
            );
            println!("SKIPPED opening_a_gpu_never_panics: no GPU ({e})");
        }
    }
}

/// The ceilings `hbridge bench` divides by: measured, and within what an H100/H200 can physically do
/// (a GEMM below 50 TFLOP/s or a copy below 0.5 TB/s means the measurement itself is broken).
#[test]
fn ceilings_are_plausible() {
    let Some(gpu) = gpu("ceilings_are_plausible") else {
        return;
    };
    let c = hbridge_engine::cuda::ceilings::measure(&gpu).unwrap();
    println!(
        "ceilings: bf16 GEMM {:.0} TFLOP/s, device copy {:.0} GB/s",
        c.gemm_flops_per_s / 1e12,
        c.copy_bytes_per_s / 1e9
    );
    assert!((50e12..2500e12).contains(&c.gemm_flops_per_s), "{c:?}");
    assert!((0.5e12..10e12).contains(&c.copy_bytes_per_s), "{c:?}");
}

/// The und decode step over a device K/V cache (state tensors): an eager run and a captured one over
/// two copies of the same cache give the same logits and the same cache afterwards, bit for bit, also
/// when the replay runs at the next cache length (read from a device buffer by the attention and by the
/// cache write); and both agree with the CPU backend within DESIGN.md 8's tolerance.
#[test]
fn decode_step_replay_over_a_device_cache_equals_eager() {
    let Some(gpu) = gpu("decode_step_replay_over_a_device_cache_equals_eager") else {
        return;
    };
    let fx = fixture("tiny");
    let c = &fx.ckpt.config.und;
    let (capacity, len, kv) = (16, 5, c.kv_dim());
    let g = hbridge_graph::build::und_decode_step(c, &fx.ckpt.und_names, capacity).unwrap();
    let plan = plan_memory(&g);
    let mut rng = gpu_common::Rng::fresh("decode_step_replay_over_a_device_cache_equals_eager");
    let mut host = Tensors::new();
    for i in 0..c.num_layers {
        for name in [names::cache_k(i), names::cache_v(i)] {
            let mut v = rng.normal_bf16(capacity * kv, 1.0);
            v[len * kv..].fill(f32::NAN);
            host.insert(name, HostTensor::f32([capacity, kv], v));
        }
    }
    let step = |token: i32, at: usize| {
        Tensors::from([
            (
                names::UND_IDS.to_string(),
                HostTensor::i32([1], vec![token]),
            ),
            (
                names::UND_POSITIONS.to_string(),
                HostTensor::i32([3, 1], vec![at as i32; 3]),
            ),
            (
                names::UND_CACHE_LEN.to_string(),
                HostTensor::i32([1], vec![at as i32]),
            ),
        ])
    };
    let mut r = Runner::new(gpu.clone());
    r.weights.load_graph(&fx.ckpt, &g, |_| {}).unwrap();
    let mut eager_cache = CudaStates::from_host(&gpu, &host).unwrap();
    let mut captured_cache = CudaStates::from_host(&gpu, &host).unwrap();
    let mut cpu_weights = hbridge_engine::CpuWeights::new();
    cpu_weights.load_graph(&fx.ckpt, &g).unwrap();
    let mut cpu_cache = host.clone();
    for (token, at) in [(3, len), (7, len + 1), (1, len + 2)] {
        let inputs = step(token, at);
        let eager =
            r.ex.run_with_states(&g, &plan, &r.weights, &inputs, &mut eager_cache)
                .unwrap();
        let captured =
            r.ex.run_captured_with_states(&g, &plan, &r.weights, &inputs, &mut captured_cache)
                .unwrap();
        assert_identical(&format!("decode step at {at}"), &eager, &captured);
        let cpu = hbridge_engine::Executor::new()
            .run_with_states(&g, &plan, &cpu_weights, &inputs, &mut cpu_cache)
            .unwrap();
        let want: Vec<f64> = cpu["und.logits"]
            .as_f32()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let e = rel_l2(eager["und.logits"].as_f32().unwrap(), &want);
        println!("decode step at {at}: logits rel L2 vs CPU {e:.2e}");
        assert!(
            e <= 2e-2,
            "decode step at {at}: logits rel L2 {e} vs the CPU"
        );
    }
    let stats = r.ex.stats();
    assert!(stats.captures == 1 && stats.replays == 2, "{stats:?}");
    for i in 0..c.num_layers {
        for name in [names::cache_k(i), names::cache_v(i)] {
            let a = eager_cache.read(&gpu, &name).unwrap();
            let b = captured_cache.read(&gpu, &name).unwrap();
            assert!(bits(&a) == bits(&b), "{name}: caches differ");
            // The three written rows match the CPU's; the rows past them are still the NaN filler.
            let (dev, cpu) = (a.as_f32().unwrap(), cpu_cache[&name].as_f32().unwrap());
            let rows = len * kv..(len + 3) * kv;
            let want: Vec<f64> = cpu[rows.clone()].iter().map(|&v| v as f64).collect();
            let e = rel_l2(&dev[rows], &want);
            assert!(e <= 2e-2, "{name}: written rows rel L2 {e} vs the CPU");
            assert!(
                dev[(len + 3) * kv..].iter().all(|v| v.is_nan()),
                "{name}: tail"
            );
        }
    }
}
