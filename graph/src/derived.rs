//! Weights a graph derives from checkpoint tensors instead of reading one: the product of two linear
//! weights applied one after the other with nothing in between, so the graph runs one GEMM where the
//! model has two. At a bridged gen layer (DESIGN.md 5) that is twice the case:
//! - `to_out.0(bridge.o_proj(o_s))`: one `[hidden_g, H_u*D_u]` weight instead of the `[H_g*D_g,
//!   H_u*D_u]` projection and the `[hidden_g, H_g*D_g]` output linear (on hbridge-7b4b a 4112 x 2520 x
//!   2520 GEMM less per layer and branch);
//! - `bridge.v_proj(to_v(h))`: one `[K_u*D_u, hidden_g]` weight instead of `to_v` and the projection.
//!
//! The same math (both are bias-free), computed in another order: backends form the product in f32 when
//! they load the weight. A derived weight's name says what it is the product of, so a backend's loader
//! needs nothing but the checkpoint and [`recipe`] to make it.

use hbridge_loader::Part;

/// Every derived weight's name starts with this (no checkpoint tensor does).
const PREFIX: &str = "derived.";

/// A derived weight: `outer x inner` (`[out, mid] x [mid, in]`), each a checkpoint tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub outer: (Part, String),
    pub inner: (Part, String),
}

/// The name of bridged gen layer `layer`'s `to_out.0 x bridge.o_proj` weight.
pub fn bridge_out(layer: usize) -> String {
    format!("{PREFIX}layers.{layer}.attn.to_out.0*bridge.o_proj")
}

/// The name of bridged gen layer `layer`'s `bridge.v_proj x to_v` weight.
pub fn bridge_v(layer: usize) -> String {
    format!("{PREFIX}layers.{layer}.bridge.v_proj*attn.to_v")
}

/// What the derived weight `name` is the product of; `None` for a checkpoint tensor's name.
pub fn recipe(name: &str) -> Option<Product> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix("layers.")?;
    let (layer, what) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let gen = |n: &str| (Part::Gen, format!("layers.{layer}.{n}.weight"));
    let bridge = |n: &str| (Part::Bridge, format!("bridge.layers.{layer}.{n}.weight"));
    match what {
        "attn.to_out.0*bridge.o_proj" => Some(Product {
            outer: gen("attn.to_out.0"),
            inner: bridge("o_proj"),
        }),
        "bridge.v_proj*attn.to_v" => Some(Product {
            outer: bridge("v_proj"),
            inner: gen("attn.to_v"),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_to_their_factors() {
        let o = recipe(&bridge_out(7)).unwrap();
        assert_eq!(o.outer, (Part::Gen, "layers.7.attn.to_out.0.weight".into()));
        assert_eq!(
            o.inner,
            (Part::Bridge, "bridge.layers.7.o_proj.weight".into())
        );
        let v = recipe(&bridge_v(12)).unwrap();
        assert_eq!(
            v.outer,
            (Part::Bridge, "bridge.layers.12.v_proj.weight".into())
        );
        assert_eq!(v.inner, (Part::Gen, "layers.12.attn.to_v.weight".into()));
        for name in [
            "layers.7.attn.to_out.0.weight",
            "derived.layers.x.attn.to_out.0*bridge.o_proj",
            "derived.layers.3.something",
            "derived.",
        ] {
            assert_eq!(recipe(name), None, "{name}");
        }
    }
}
