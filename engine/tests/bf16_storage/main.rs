//! `WeightStorage::Bf16`: linear weights and embedding tables held as bf16 and widened as kernels read
//! them. From a BF16 checkpoint the results are bit-identical to f32 storage at half the bytes; from an
//! F32 checkpoint the weights are rounded and the results stay close.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/fixture.rs"]
mod fixture;

mod errors;
mod linear;
mod model;
mod timing;

use hbridge_engine::HostTensor;
use std::collections::HashMap;

/// Every output of `a` equals the same output of `b` bit for bit (so NaNs and signed zeros count).
#[track_caller]
pub fn assert_bits_equal(
    what: &str,
    a: &HashMap<String, HostTensor>,
    b: &HashMap<String, HostTensor>,
) {
    assert_eq!(a.len(), b.len(), "{what}: output count");
    for (name, ta) in a {
        let tb = &b[name];
        assert_eq!(ta.shape, tb.shape, "{what} {name}: shape");
        let (va, vb) = (ta.as_f32().unwrap(), tb.as_f32().unwrap());
        if let Some(i) = (0..va.len()).find(|&i| va[i].to_bits() != vb[i].to_bits()) {
            panic!("{what} {name}: differs at {i}: {} vs {}", va[i], vb[i]);
        }
    }
}
