//! The values of a derived weight (`hbridge_graph::derived`): the product of two checkpoint matrices,
//! formed in f32 on the host when a backend loads it (the CPU keeps it as f32, CUDA uploads it as
//! bf16). Every backend's loader calls [`values`] for a name that [`derived::recipe`] knows.

use crate::cpu::ops::matmul::{Mat, MatMut};
use crate::cpu::ops::packed_gemm::product;
use crate::cpu::EngineError;
use crate::weight_table::check_shape;
use hbridge_graph::derived::{self, Product};
use hbridge_loader::{Checkpoint, Part};

/// The derived weight `name` `[out, in]` as f32 values, row-major; `None` when `name` is a checkpoint
/// tensor's. Errors name the missing or misshapen factor.
pub fn values(
    ckpt: &Checkpoint,
    name: &str,
    shape: &[usize],
) -> Option<Result<Vec<f32>, EngineError>> {
    derived::recipe(name).map(|p| product_of(ckpt, name, shape, &p))
}

fn product_of(
    ckpt: &Checkpoint,
    name: &str,
    shape: &[usize],
    p: &Product,
) -> Result<Vec<f32>, EngineError> {
    let &[out, inp] = shape else {
        return Err(EngineError::Graph {
            label: name.to_string(),
            problem: format!("a derived weight is a matrix, declared with shape {shape:?}"),
        });
    };
    let factor = |(part, n): &(Part, String)| -> Result<(Vec<f32>, Vec<usize>), EngineError> {
        let view = ckpt
            .tensor(*part, n)
            .ok_or_else(|| EngineError::MissingWeight {
                part: *part,
                name: n.clone(),
            })?;
        let values = view.to_f32().ok_or_else(|| EngineError::WeightDtype {
            part: *part,
            name: n.clone(),
            file: view.file.to_string(),
            dtype: view.dtype.to_string(),
        })?;
        Ok((values, view.shape.to_vec()))
    };
    let (outer, outer_shape) = factor(&p.outer)?;
    let mid = outer_shape.get(1).copied().unwrap_or(0);
    check_shape(p.outer.0, &p.outer.1, &[out, mid], &outer_shape)?;
    let (inner, inner_shape) = factor(&p.inner)?;
    check_shape(p.inner.0, &p.inner.1, &[mid, inp], &inner_shape)?;
    let mut w = vec![0f32; out * inp];
    product(
        MatMut::rm(&mut w, out, inp),
        Mat::rm(&outer, out, mid),
        Mat::rm(&inner, mid, inp),
        false,
        None,
    );
    Ok(w)
}
