//! Checks a part's tensors against the manifest before any compute: presence, dtype, shape.

use crate::error::{TensorIssue, TensorIssueKind};
use crate::manifest::{Expected, Group};
use crate::store::PartStore;
use std::collections::HashSet;

/// Which config file each dimension expression comes from, for hints.
pub struct ConfigFiles<'a> {
    /// The part's own config (e.g. `und/config.json`).
    pub own: &'a str,
    pub und: &'a str,
    pub gen: &'a str,
    pub layout: &'a str,
}

/// Appends the problems of `store` against `expected` to `issues`; returns the names it did not expect.
pub fn check_part(
    expected: &[Expected],
    store: &PartStore,
    files: &ConfigFiles,
    issues: &mut Vec<TensorIssue>,
) -> Vec<String> {
    // An optional group is checked only when the checkpoint has at least one of its tensors.
    let mut present_groups: HashSet<&str> = HashSet::new();
    for e in expected {
        if let Group::Optional(g) = e.group {
            if store.contains(&e.name) {
                present_groups.insert(g);
            }
        }
    }
    for e in expected {
        if let Group::Optional(g) = e.group {
            if !present_groups.contains(g) {
                continue;
            }
        }
        let Some(view) = store.get(&e.name) else {
            issues.push(TensorIssue {
                file: store.origin().to_string(),
                tensor: e.name.clone(),
                kind: TensorIssueKind::Missing {
                    expected: e.to_string(),
                },
            });
            continue;
        };
        if !view.dtype.is_float_weight() {
            issues.push(TensorIssue {
                file: view.file.to_string(),
                tensor: e.name.clone(),
                kind: TensorIssueKind::DType {
                    expected: "BF16, F16 or F32".into(),
                    found: view.dtype.to_string(),
                },
            });
        }
        if view.shape != e.shape().as_slice() {
            issues.push(TensorIssue {
                file: view.file.to_string(),
                tensor: e.name.clone(),
                kind: TensorIssueKind::Shape {
                    expected: e.to_string(),
                    found: view.shape.to_vec(),
                    hint: shape_hint(e, view.shape, files),
                },
            });
        }
    }
    let known: HashSet<&str> = expected.iter().map(|e| e.name.as_str()).collect();
    let mut extra: Vec<String> = store
        .names()
        .filter(|n| !known.contains(n))
        .map(str::to_string)
        .collect();
    extra.sort();
    extra
}

/// Says which dimension differs and which config fields produce it.
fn shape_hint(e: &Expected, found: &[usize], files: &ConfigFiles) -> String {
    if found.len() != e.dims.len() {
        return format!(
            "rank {} instead of {}: is this file from another model than {}?",
            found.len(),
            e.dims.len(),
            files.own
        );
    }
    let Some(i) = (0..found.len()).find(|&i| found[i] != e.dims[i].size) else {
        return String::new();
    };
    let dim = &e.dims[i];
    let label = match (found.len(), i) {
        (2, 0) => "rows".to_string(),
        (2, 1) => "columns".to_string(),
        (1, 0) => "elements".to_string(),
        _ => format!("in dim {i}"),
    };
    let (file, expr) = if let Some(rest) = dim.expr.strip_prefix("und ") {
        (files.und, rest)
    } else if let Some(rest) = dim.expr.strip_prefix("gen ") {
        (files.gen, rest)
    } else if dim.expr == "num_srt_tokens" {
        (files.layout, dim.expr.as_str())
    } else {
        (files.own, dim.expr.as_str())
    };
    let fields: Vec<&str> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter(|w| !w.is_empty() && !w.chars().all(|c| c.is_ascii_digit()) && *w != "min")
        .filter(|w| *w != "head_dim" || !expr.contains("heads"))
        .collect();
    if fields.is_empty() {
        return format!("{} {label} instead of {}", found[i], dim.size);
    }
    format!(
        "{} {label} instead of {expr} = {}: check {} in {file}",
        found[i],
        dim.size,
        fields.join(", ")
    )
}
