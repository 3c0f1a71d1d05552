//! Shared by the graph tests: the fixtures' model configs, a random DAG builder, an independent liveness
//! oracle, plan and graph validity checks, and a structural hash of what an output computes.
#![allow(dead_code)]

use hbridge_graph::plan::{self, MemoryPlan, ALIGN};
use hbridge_graph::prune::map_ids;
use hbridge_graph::{DataType, Graph, Op, Source, TensorId};
use hbridge_loader::Part;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// The model config of fixture `name` (`tests/fixtures/{name}/model`).
pub fn fixture_config(name: &str) -> hbridge_loader::config::ModelConfig {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
        .join("model");
    hbridge_loader::config::ModelConfig::read(&root)
        .unwrap_or_else(|e| panic!("the {name} fixture's configs: {e}"))
}

/// One construction step of a random graph; the numbers pick the op, its operands and its parameters.
pub type Step = (u8, u32, u32, u32);

const ROWS: [usize; 4] = [1, 2, 3, 5];
const COLS: [usize; 4] = [1, 4, 7, 16];

/// Builds a valid graph from arbitrary steps: every op's operands are picked among the tensors that fit.
/// Node outputs are labelled `n{i}` in push order. `outs` picks the outputs (at least one node output).
pub fn random_graph(inputs: &[(u8, u8)], steps: &[Step], outs: &[u32]) -> Graph {
    let mut g = Graph::default();
    for (i, &(r, c)) in inputs.iter().enumerate() {
        g.input(
            format!("in{i}"),
            &[ROWS[r as usize % ROWS.len()], COLS[c as usize % COLS.len()]],
            DataType::F32,
        );
    }
    if g.tensors.is_empty() {
        g.input("in0", &[2, 4], DataType::F32);
    }
    let mut weights = 0;
    for &(kind, a, b, p) in steps {
        let n = g.tensors.len() as u32;
        // Operands: any F32 tensor that is not a weight (weights are only read by Linear).
        let candidates: Vec<TensorId> = (0..n)
            .map(TensorId)
            .filter(|&id| !matches!(g.tensor(id).source, Source::Weight { .. }))
            .collect();
        let x = candidates[a as usize % candidates.len()];
        let sx = g.tensor(x).shape.clone();
        let same = |g: &Graph, pick: u32| -> TensorId {
            let fits: Vec<TensorId> = candidates
                .iter()
                .copied()
                .filter(|&id| g.tensor(id).shape == sx)
                .collect();
            fits[pick as usize % fits.len()]
        };
        let same_cols = |g: &Graph, pick: u32| -> TensorId {
            let fits: Vec<TensorId> = candidates
                .iter()
                .copied()
                .filter(|&id| g.tensor(id).shape[1] == sx[1])
                .collect();
            fits[pick as usize % fits.len()]
        };
        let op = match kind % 11 {
            0 => Op::Add {
                a: x,
                b: same(&g, b),
            },
            1 => Op::Silu { x },
            2 => Op::SwiGlu {
                gate: x,
                up: same(&g, b),
            },
            3 => Op::ConcatRows {
                parts: (0..1 + p % 3)
                    .map(|k| same_cols(&g, b.wrapping_add(k * 7919)))
                    .collect(),
            },
            4 => {
                let start = p as usize % sx[0];
                let len = 1 + b as usize % (sx[0] - start);
                Op::SliceRows { x, start, len }
            }
            5 | 6 => {
                let out = COLS[p as usize % COLS.len()];
                // Reuse a fitting weight now and then (shared weights are legal).
                let shape = [out, sx[1]];
                let existing = g
                    .weights()
                    .map(|(id, _, _)| id)
                    .find(|&id| g.tensor(id).shape == shape);
                let w = match existing {
                    Some(w) if b % 3 == 0 => w,
                    _ => {
                        weights += 1;
                        g.weight(Part::Gen, format!("w{weights}"), &shape)
                    }
                };
                let bias = (p % 2 == 1).then(|| g.weight(Part::Gen, format!("b{out}"), &[out]));
                Op::Linear { x, w, bias }
            }
            7 => Op::Reshape {
                x,
                shape: vec![sx[1], sx[0]],
            },
            // A row norm, and a modulation by a row: with an Add before or a Modulate after, the
            // pairs a backend may fuse (their second outputs start one node early).
            9 => Op::RmsNorm {
                x,
                weight: None,
                dim: sx[1],
                eps: 1e-6,
            },
            10 => {
                let rows: Vec<TensorId> = candidates
                    .iter()
                    .copied()
                    .filter(|&id| g.tensor(id).shape == [1, sx[1]])
                    .collect();
                match rows.get(b as usize % rows.len().max(1)) {
                    Some(&scale) => Op::Modulate { x, scale },
                    None => Op::Silu { x },
                }
            }
            _ => Op::Transpose { x },
        };
        let label = format!("n{}", g.nodes.len());
        g.push(op, label)
            .expect("the random builder only makes valid ops");
    }
    if g.nodes.is_empty() {
        let x = TensorId(0);
        g.push(Op::Silu { x }, "n0").unwrap();
    }
    let node_outs: Vec<TensorId> = g.nodes.iter().map(|n| n.out).collect();
    let mut chosen: Vec<TensorId> = outs
        .iter()
        .map(|&o| node_outs[o as usize % node_outs.len()])
        .collect();
    if chosen.is_empty() {
        chosen.push(*node_outs.last().unwrap());
    }
    for (i, id) in chosen.into_iter().enumerate() {
        g.mark_output(format!("out{i}"), id);
    }
    g
}

/// Brute-force liveness: is activation `t` live at point `i` (a node index, or `nodes.len()` = after
/// execution)? Written at or before `i`, and read at or after `i` or a graph output.
pub fn live_at(g: &Graph, t: TensorId, i: usize) -> bool {
    let Some(def) = g.nodes.iter().position(|n| n.out == t) else {
        return false;
    };
    // A node of a group a backend may fuse is written while the group's first node runs.
    let first = hbridge_graph::fusion::groups(g)
        .iter()
        .enumerate()
        .find_map(|(i, grp)| grp.filter(|grp| i <= def && def < i + grp.len).map(|_| i))
        .unwrap_or(def);
    if first > i {
        return false;
    }
    i <= def
        || g.outputs.iter().any(|(_, o)| *o == t)
        || g.nodes[i.min(g.nodes.len())..]
            .iter()
            .any(|n| n.op.inputs().contains(&t))
}

/// Brute-force peak: the largest total size of activations live at one point.
pub fn brute_peak(g: &Graph) -> usize {
    (0..=g.nodes.len())
        .map(|i| {
            g.nodes
                .iter()
                .filter(|n| live_at(g, n.out, i))
                .map(|n| g.tensor(n.out).numel())
                .sum()
        })
        .max()
        .unwrap_or(0)
}

/// Every property a plan must have, checked against the brute-force liveness.
pub fn check_plan(g: &Graph, p: &MemoryPlan) -> Result<(), String> {
    if p.offsets.len() != g.tensors.len() {
        return Err(format!(
            "{} offsets for {} tensors",
            p.offsets.len(),
            g.tensors.len()
        ));
    }
    let written: Vec<bool> = (0..g.tensors.len())
        .map(|i| g.nodes.iter().any(|n| n.out.index() == i))
        .collect();
    for (i, t) in g.tensors.iter().enumerate() {
        match (p.offsets[i], written[i]) {
            (None, true) => return Err(format!("activation {} has no offset", t.label)),
            (Some(_), false) => {
                return Err(format!(
                    "{} ({:?}) is no node output but has an offset",
                    t.label, t.source
                ))
            }
            (Some(off), true) => {
                if off % ALIGN != 0 {
                    return Err(format!("{} at {off}, not {ALIGN}-aligned", t.label));
                }
                if off + t.numel() > p.arena_len {
                    return Err(format!(
                        "{} [{off}, +{}) past the arena of {}",
                        t.label,
                        t.numel(),
                        p.arena_len
                    ));
                }
            }
            (None, false) => {}
        }
    }
    for i in 0..=g.nodes.len() {
        let live: Vec<TensorId> = g
            .nodes
            .iter()
            .map(|n| n.out)
            .filter(|&t| live_at(g, t, i) && g.tensor(t).numel() > 0)
            .collect();
        for (j, &a) in live.iter().enumerate() {
            for &b in &live[j + 1..] {
                let (oa, ob) = (p.offsets[a.index()].unwrap(), p.offsets[b.index()].unwrap());
                let (ea, eb) = (oa + g.tensor(a).numel(), ob + g.tensor(b).numel());
                if oa < eb && ob < ea {
                    return Err(format!(
                        "at node {i}, live {} [{oa}, {ea}) and {} [{ob}, {eb}) overlap",
                        g.tensor(a).label,
                        g.tensor(b).label
                    ));
                }
            }
        }
    }
    let peak = plan::peak_live_elements(g);
    if p.arena_len < peak {
        return Err(format!("arena {} below the peak of {peak}", p.arena_len));
    }
    Ok(())
}

/// Every id in range, every activation written by exactly one node before any node reads it, every node
/// output an activation; with `all_referenced`, also every tensor read, written or output by something.
pub fn check_ids(g: &Graph, all_referenced: bool) -> Result<(), String> {
    let n = g.tensors.len();
    let mut referenced = vec![false; n];
    let mut written_at = vec![None; n];
    for (i, node) in g.nodes.iter().enumerate() {
        for id in node.op.inputs() {
            if id.index() >= n {
                return Err(format!("node {i} reads {id:?} of {n} tensors"));
            }
            referenced[id.index()] = true;
            if matches!(g.tensor(id).source, Source::Activation) && written_at[id.index()].is_none()
            {
                return Err(format!(
                    "node {i} reads {} before it is written",
                    g.tensor(id).label
                ));
            }
        }
        if node.out.index() >= n {
            return Err(format!("node {i} writes {:?} of {n} tensors", node.out));
        }
        if !matches!(g.tensor(node.out).source, Source::Activation) {
            return Err(format!(
                "node {i} writes {} which is no activation",
                g.tensor(node.out).label
            ));
        }
        if written_at[node.out.index()].replace(i).is_some() {
            return Err(format!("{} written twice", g.tensor(node.out).label));
        }
        referenced[node.out.index()] = true;
    }
    for (name, id) in &g.outputs {
        if id.index() >= n {
            return Err(format!("output {name} is {id:?} of {n} tensors"));
        }
        referenced[id.index()] = true;
    }
    for w in &g.state_writes {
        for id in [w.state, w.src, w.row] {
            if id.index() >= n {
                return Err(format!("a state write names {id:?} of {n} tensors"));
            }
            referenced[id.index()] = true;
        }
    }
    if let Some(i) = referenced.iter().position(|r| all_referenced && !r) {
        return Err(format!(
            "tensor {} is referenced by nothing",
            g.tensors[i].label
        ));
    }
    Ok(())
}

/// A hash of what each tensor computes: leaves by source, shape and label; nodes by op (ids blanked) and
/// their inputs' hashes. Equal across graphs that compute the same thing under different ids.
pub fn structural_hashes(g: &Graph) -> Vec<u64> {
    let mut h: Vec<Option<u64>> = vec![None; g.tensors.len()];
    for (i, t) in g.tensors.iter().enumerate() {
        if !matches!(t.source, Source::Activation) {
            let mut s = DefaultHasher::new();
            format!("{:?}{:?}{}", t.source, t.shape, t.label).hash(&mut s);
            h[i] = Some(s.finish());
        }
    }
    for node in &g.nodes {
        let mut s = DefaultHasher::new();
        format!("{:?}", map_ids(&node.op, |_| TensorId(0))).hash(&mut s);
        for id in node.op.inputs() {
            h[id.index()]
                .expect("inputs hashed before use")
                .hash(&mut s);
        }
        let t = g.tensor(node.out);
        format!("{:?}{}", t.shape, t.label).hash(&mut s);
        h[node.out.index()] = Some(s.finish());
    }
    h.into_iter().map(|x| x.unwrap_or(0)).collect()
}

/// Per output name, the structural hash of what it computes.
pub fn output_hashes(g: &Graph) -> Vec<(String, u64)> {
    let h = structural_hashes(g);
    g.outputs
        .iter()
        .map(|(name, id)| (name.clone(), h[id.index()]))
        .collect()
}

/// Node indices whose outputs some graph output depends on (brute force over the original graph).
pub fn reaching_nodes(g: &Graph) -> Vec<usize> {
    let mut needed = vec![false; g.tensors.len()];
    for (_, id) in &g.outputs {
        needed[id.index()] = true;
    }
    let mut reach = vec![false; g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate().rev() {
        if needed[node.out.index()] {
            reach[i] = true;
            for id in node.op.inputs() {
                needed[id.index()] = true;
            }
        }
    }
    (0..g.nodes.len()).filter(|&i| reach[i]).collect()
}
