//! Every backend's resident weights by `(part, name)`, with the lookup and shape check they share: a
//! graph names a weight and the shape it expects, and a weight that is missing or shaped otherwise is an
//! error naming it, whatever the backend holds it as.

use crate::cpu::EngineError;
use hbridge_graph::Graph;
use hbridge_loader::Part;
use std::collections::HashMap;

/// A weight of some backend with a shape.
pub trait Shaped {
    fn shape(&self) -> &[usize];
}

/// The part's index in the table (Part is not Hash, so one map per part).
pub fn slot(part: Part) -> usize {
    match part {
        Part::Und => 0,
        Part::Gen => 1,
        Part::Vae => 2,
        Part::Bridge => 3,
    }
}

/// `found` must be `expected`, or the error names the weight and both shapes.
pub fn check_shape(
    part: Part,
    name: &str,
    expected: &[usize],
    found: &[usize],
) -> Result<(), EngineError> {
    if expected != found {
        return Err(EngineError::WeightShape {
            part,
            name: name.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        });
    }
    Ok(())
}

/// Values given for a weight (tests, synthetic weights) must fill its `shape`.
pub fn check_len(name: &str, shape: &[usize], found: usize) -> Result<(), EngineError> {
    let expected: usize = shape.iter().product();
    if found != expected {
        return Err(EngineError::DataLength {
            name: name.to_string(),
            shape: shape.to_vec(),
            expected,
            found,
        });
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct WeightTable<T> {
    parts: [HashMap<String, T>; 4],
}

impl<T> Default for WeightTable<T> {
    fn default() -> Self {
        WeightTable {
            parts: Default::default(),
        }
    }
}

impl<T: Shaped> WeightTable<T> {
    pub fn insert(&mut self, part: Part, name: String, weight: T) {
        self.parts[slot(part)].insert(name, weight);
    }

    pub fn get(&self, part: Part, name: &str) -> Option<&T> {
        self.parts[slot(part)].get(name)
    }

    /// The weight at `(part, name)` if it has `shape`, or why it cannot be used.
    pub fn require(&self, part: Part, name: &str, shape: &[usize]) -> Result<&T, EngineError> {
        let w = self
            .get(part, name)
            .ok_or_else(|| EngineError::MissingWeight {
                part,
                name: name.to_string(),
            })?;
        check_shape(part, name, shape, w.shape())?;
        Ok(w)
    }

    /// Checks that every weight `graph` references is present with the declared shape.
    pub fn check_graph(&self, graph: &Graph) -> Result<(), EngineError> {
        for (id, part, name) in graph.weights() {
            self.require(part, name, &graph.tensor(id).shape)?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.parts.iter().flat_map(|p| p.values())
    }
}
