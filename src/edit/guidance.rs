//! Guidance with reference images (DESIGN.md 4) and the Euler loop of editing. Which branches run
//! follows OmniGen2's pipeline:
//! - text > 1 and image > 1: c = (prompt, refs), r = (negative, refs), u = (negative, no refs),
//!   `v = u + s_img (r - u) + s_txt (c - r)`;
//! - text > 1 only: `v = u + s_txt (c - u)` with u = (negative, no refs);
//! - otherwise only c runs.

use crate::model::{Model, ResidentContext, RunError, UndContext};
use crate::sampler;
use hbridge_engine::cpu::HostTensor;
use std::ops::ControlFlow;

/// Guidance scales of an edit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EditGuidance {
    /// Text scale `s_txt` (default 5.0): weighs `c - r` with references, `c - u` without the r branch; at
    /// or below 1, no guidance branch runs.
    pub text: f32,
    /// Image scale `s_img` (default 2.0): weighs `r - u`; the r branch runs only when both scales
    /// exceed 1.
    pub image: f32,
}

impl EditGuidance {
    /// Whether the r = (negative prompt, refs) branch runs.
    pub fn needs_refonly(&self) -> bool {
        self.text > 1.0 && self.image > 1.0
    }
    /// Whether the u = (negative prompt, no refs) branch runs.
    pub fn needs_uncond(&self) -> bool {
        self.text > 1.0
    }
}

/// The und contexts of the branches the guidance needs (`refonly` / `uncond` are `None` when unused).
#[derive(Debug, Clone)]
pub struct EditBranches {
    /// c: the prompt with the reference images (their vision tokens when the checkpoint has a vision
    /// tower).
    pub cond: UndContext,
    /// r: the negative prompt with the reference images; needed when both scales exceed 1.
    pub refonly: Option<UndContext>,
    /// u: the negative prompt alone (the gen side also runs without references); needed when the text
    /// scale exceeds 1.
    pub uncond: Option<UndContext>,
}

/// One step's velocities: the guided one and each branch's (for traces and tests).
#[derive(Debug, Clone)]
pub struct StepVelocities {
    /// The guided velocity the Euler step uses, flattened `[C_lat, H/f, W/f]`.
    pub guided: Vec<f32>,
    /// The c branch's velocity (prompt, references), same layout.
    pub cond: Vec<f32>,
    /// The r branch's velocity (negative prompt, references), when that branch ran.
    pub refonly: Option<Vec<f32>>,
    /// The u branch's velocity (negative prompt, no references), when that branch ran.
    pub uncond: Option<Vec<f32>>,
    /// The cond branch's reference tokens after the ref refiner (traced steps only).
    pub ref_tokens: Vec<HostTensor>,
}

fn velocity(
    model: &Model,
    x: &HostTensor,
    t: f32,
    branch: &mut ResidentContext<'_>,
    refs: &[HostTensor],
    trace: bool,
) -> Result<(Vec<f32>, crate::model::Outputs), RunError> {
    take_velocity(model.gen_step_resident_with_refs(x, t, branch, refs, trace)?)
}

fn take_velocity(
    mut out: crate::model::Outputs,
) -> Result<(Vec<f32>, crate::model::Outputs), RunError> {
    let v = out
        .remove("gen.velocity")
        .and_then(HostTensor::into_f32)
        .ok_or_else(|| RunError::Request("gen step produced no velocity".into()))?;
    Ok((v, out))
}

fn missing(branch: &str) -> RunError {
    RunError::Request(format!(
        "the guidance scales need the {branch} branch but no context was given for it"
    ))
}

/// The branches a guidance setting needs, made resident on the backend (see
/// [`Model::resident_context`]).
struct Resident<'a> {
    /// c, then r when it runs: the branches with the references in their gen sequence, which share
    /// the gen step's prefix (see [`Model::gen_step_branches_with_refs`]).
    with_refs: Vec<ResidentContext<'a>>,
    uncond: Option<ResidentContext<'a>>,
}

impl<'a> Resident<'a> {
    fn new(
        model: &Model,
        branches: &'a EditBranches,
        guidance: EditGuidance,
    ) -> Result<Self, RunError> {
        let refonly = match guidance.needs_refonly() {
            true => Some(
                branches
                    .refonly
                    .as_ref()
                    .ok_or_else(|| missing("ref-only"))?,
            ),
            false => None,
        };
        let uncond = match guidance.needs_uncond() {
            true => Some(
                branches
                    .uncond
                    .as_ref()
                    .ok_or_else(|| missing("unconditional"))?,
            ),
            false => None,
        };
        let with_refs = std::iter::once(&branches.cond)
            .chain(refonly)
            .map(|c| model.resident_context(c))
            .collect::<Result<_, _>>()?;
        Ok(Resident {
            with_refs,
            uncond: uncond.map(|c| model.resident_context(c)).transpose()?,
        })
    }
}

/// The guided velocity at latent `x` and time `t`. With `trace`, also the refined reference tokens.
pub fn step_velocity(
    model: &Model,
    x: &HostTensor,
    t: f32,
    branches: &EditBranches,
    refs: &[HostTensor],
    guidance: EditGuidance,
    trace: bool,
) -> Result<StepVelocities, RunError> {
    let mut resident = Resident::new(model, branches, guidance)?;
    resident_step(model, x, t, &mut resident, refs, guidance, trace)
}

fn resident_step(
    model: &Model,
    x: &HostTensor,
    t: f32,
    branches: &mut Resident<'_>,
    refs: &[HostTensor],
    guidance: EditGuidance,
    trace: bool,
) -> Result<StepVelocities, RunError> {
    let (cond, refonly, mut traced) = match branches.with_refs.as_mut_slice() {
        // Untraced c and r: one shared prefix, then each branch's suffix.
        [_, _] if !trace => {
            let mut outs = model
                .gen_step_branches_with_refs(x, t, &mut branches.with_refs, refs)?
                .into_iter()
                .map(take_velocity);
            let mut next = || {
                outs.next().unwrap_or_else(|| {
                    Err(RunError::Request("a guidance branch is missing".into()))
                })
            };
            let (c, r) = (next()?.0, next()?.0);
            (c, Some(r), crate::model::Outputs::new())
        }
        [c, rest @ ..] => {
            let (cond, traced) = velocity(model, x, t, c, refs, trace)?;
            let refonly = match rest.first_mut() {
                Some(b) => Some(velocity(model, x, t, b, refs, false)?.0),
                None => None,
            };
            (cond, refonly, traced)
        }
        [] => return Err(missing("conditional")),
    };
    let ref_tokens = (0..refs.len())
        .filter_map(|j| traced.remove(&hbridge_graph::build::gen_refs::ref_tokens_output(j)))
        .collect();
    let uncond = match &mut branches.uncond {
        Some(b) => Some(velocity(model, x, t, b, &[], false)?.0),
        None => None,
    };
    let mut guided = cond.clone();
    match (&refonly, &uncond) {
        (Some(r), Some(u)) => {
            sampler::guide_image_text(&mut guided, r, u, guidance.image, guidance.text)
        }
        (None, Some(u)) => sampler::guide_text(&mut guided, u, guidance.text),
        _ => {}
    }
    Ok(StepVelocities {
        guided,
        cond,
        refonly,
        uncond,
        ref_tokens,
    })
}

/// Euler from `noise` (`[C, h, w]`) over `timesteps` (N + 1 values) with edit guidance at every step;
/// `progress(step, steps)` after each; its `Break` stops with [`RunError::Cancelled`]. Returns the final
/// latent.
pub fn sample(
    model: &Model,
    noise: &HostTensor,
    timesteps: &[f32],
    branches: &EditBranches,
    refs: &[HostTensor],
    guidance: EditGuidance,
    mut progress: impl FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<HostTensor, RunError> {
    let mut x = noise
        .as_f32()
        .ok_or_else(|| RunError::Request("noise must be f32".into()))?
        .to_vec();
    let steps = timesteps.len().saturating_sub(1);
    // The branches' und K/V go to the backend once; every step reads them there.
    let mut resident = Resident::new(model, branches, guidance)?;
    for (i, w) in timesteps.windows(2).enumerate() {
        let xt = HostTensor::f32(noise.shape.clone(), x.clone());
        let v = resident_step(model, &xt, w[0], &mut resident, refs, guidance, false)?;
        sampler::euler_step(&mut x, &v.guided, w[1] - w[0]);
        if progress(i + 1, steps).is_break() {
            return Err(RunError::Cancelled { step: i + 1, steps });
        }
    }
    Ok(HostTensor::f32(noise.shape.clone(), x))
}
