//! `hbridge.json`: which topology, where each part lives, and the bridge pairing (DESIGN.md sections 5-6).

use super::json::Fields;
use crate::error::Result;
use serde_json::Value;
use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Und and gen experts joined by bridged attention in their middle layers.
    Hbridge,
    /// OmniGen2's own: und post-norm hidden states -> caption_embedder -> context_refiner, no bridge.
    Omnigen2,
}

impl Topology {
    pub const NAMES: [&'static str; 2] = ["hbridge", "omnigen2"];

    pub fn name(self) -> &'static str {
        match self {
            Topology::Hbridge => "hbridge",
            Topology::Omnigen2 => "omnigen2",
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub topology: Topology,
    pub und_dir: String,
    pub gen_dir: String,
    pub vae_dir: String,
    /// Present for the hbridge topology.
    pub bridge: Option<BridgeLayout>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BridgeLayout {
    pub dir: String,
    /// `(gen_layer, und_layer)`, in the order the file lists them.
    pub pairs: Vec<(usize, usize)>,
    pub num_srt_tokens: usize,
}

impl Layout {
    pub fn parse(path: &Path, value: &Value) -> Result<Self> {
        let f = Fields::new(path, value)?;
        let topology = match f.opt_str("topology")? {
            Some("hbridge") => Topology::Hbridge,
            Some("omnigen2") => Topology::Omnigen2,
            Some(other) => {
                return Err(f.unsupported(
                    "topology",
                    &format!("one of {:?}", Topology::NAMES),
                    format!("\"{other}\""),
                ))
            }
            None => {
                return Err(f.unsupported(
                    "topology",
                    &format!("one of {:?}", Topology::NAMES),
                    "nothing",
                ))
            }
        };
        let dir = |field: &str, default: &str| {
            relative_dir(&f, field, f.opt_str(field)?.unwrap_or(default))
        };
        let bridge = match (topology, f.object("bridge", "bridge.")?) {
            (Topology::Hbridge, None) => {
                return Err(f.unsupported(
                    "bridge",
                    "an object with \"pairs\" (the hbridge topology needs a bridge)",
                    "nothing",
                ))
            }
            (Topology::Hbridge, Some(b)) => Some(BridgeLayout::parse(&b)?),
            (Topology::Omnigen2, _) => None,
        };
        Ok(Layout {
            topology,
            und_dir: dir("und", "und")?,
            gen_dir: dir("gen", "gen")?,
            vae_dir: dir("vae", "vae")?,
            bridge,
        })
    }
}

impl BridgeLayout {
    fn parse(b: &Fields) -> Result<Self> {
        let raw = b.get("pairs").ok_or_else(|| {
            b.unsupported("pairs", "a list of [gen_layer, und_layer] pairs", "nothing")
        })?;
        let list = raw.as_array().ok_or_else(|| {
            b.unsupported(
                "pairs",
                "a list of [gen_layer, und_layer] pairs",
                super::json::kind(raw),
            )
        })?;
        let mut pairs = Vec::with_capacity(list.len());
        for item in list {
            let pair = item
                .as_array()
                .filter(|p| p.len() == 2)
                .and_then(|p| Some((p[0].as_u64()? as usize, p[1].as_u64()? as usize)));
            match pair {
                Some(p) => pairs.push(p),
                None => {
                    return Err(b.unsupported(
                        "pairs",
                        "a list of [gen_layer, und_layer] pairs of non-negative integers",
                        super::json::kind(item),
                    ))
                }
            }
        }
        Ok(BridgeLayout {
            dir: relative_dir(b, "path", b.opt_str("path")?.unwrap_or("bridge"))?,
            pairs,
            num_srt_tokens: b.opt_dim("num_srt_tokens")?.unwrap_or(16),
        })
    }
}

/// A part's folder must stay inside the model directory.
fn relative_dir(f: &Fields, field: &str, dir: &str) -> Result<String> {
    if dir.is_empty() || Path::new(dir).is_absolute() || dir.split(['/', '\\']).any(|c| c == "..") {
        return Err(f.unsupported(
            field,
            "a folder name relative to hbridge.json, inside the model directory",
            format!("\"{dir}\""),
        ));
    }
    Ok(dir.to_string())
}

/// The default pairing of DESIGN.md section 5: gen layers `M .. L_g-N-1` paired in order with und
/// layers `M .. L_u-N-1` by `u = M + floor((g - M) * n_u / n_g)`.
pub fn default_pairs(
    gen_layers: usize,
    und_layers: usize,
    skip_first: usize,
    skip_last: usize,
) -> Vec<(usize, usize)> {
    let skip = skip_first + skip_last;
    if gen_layers <= skip || und_layers <= skip {
        return Vec::new();
    }
    let (n_g, n_u) = (gen_layers - skip, und_layers - skip);
    (skip_first..gen_layers - skip_last)
        .map(|g| (g, skip_first + (g - skip_first) * n_u / n_g))
        .collect()
}
