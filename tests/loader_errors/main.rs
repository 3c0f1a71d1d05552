//! Every way a checkpoint can fail to load is a typed error whose message names the file, the tensor
//! or field, what was expected and what was found, and the likely cause where one is clear.

#[path = "../common/mod.rs"]
mod common;

use common::*;
use hbridge::init::WeightDType;
use hbridge_loader::{LoadError, SafetensorsProblem, TensorFile, TensorIssueKind};
use safetensors::Dtype;
use serde_json::json;
use std::path::Path;

const K_PROJ_3: &str = "model.language_model.layers.3.self_attn.k_proj.weight";

fn tiny() -> TempDir {
    tiny_checkpoint(7, WeightDType::BF16)
}

mod config;
mod files;
mod index;
mod raw;
mod tensors;
