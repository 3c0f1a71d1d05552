//! hbridge's hand-written CUDA kernels. The sources live in `kernels/cuda/`, one `.cu` per op family, each
//! opening with its launch shape, what it reads and writes, and whether it is memory- or compute-bound.
//! They are compiled at first use with NVRTC (pinned 13.0: its PTX loads on the 13.0 driver) and need
//! no CUDA headers: `common.cuh` defines the bf16 storage type and the few intrinsics the kernels use, so
//! the only thing a machine needs is libnvrtc.
//!
//! Entry points are every `extern "C" __global__` function of a file; the engine looks them up by name.

mod compile;
mod ptxas;

pub use compile::{compile_ptx, nvrtc_available, Arch, KernelError};
pub use ptxas::{find_ptxas, ptxas_report, KernelResources, PtxasError};

/// One kernel source file of `kernels/cuda/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFile {
    /// File stem, e.g. `attention`; also the module name the engine caches it under.
    pub name: &'static str,
    /// The file's text (without `common.cuh` and its headers; see [`KernelFile::full_source`]).
    pub source: &'static str,
    /// Headers of its op family (`attention_common.cuh`: the parameter struct and tile loaders the
    /// attention versions share), as (file name, text), prepended after `common.cuh`.
    pub headers: &'static [(&'static str, &'static str)],
}

/// Device helpers shared by every kernel file (bf16 storage, conversions, reductions, MMA wrappers).
pub const COMMON: &str = include_str!("../cuda/common.cuh");

macro_rules! kernel_files {
    ($($name:literal $([$($header:literal),*])?),* $(,)?) => {
        /// Every kernel file, in a fixed order.
        pub const FILES: &[KernelFile] = &[
            $(KernelFile {
                name: $name,
                source: include_str!(concat!("../cuda/", $name, ".cu")),
                headers: &[$($(($header, include_str!(concat!("../cuda/", $header)))),*)?],
            },)*
        ];
    };
}

kernel_files!(
    "attention" ["attention_common.cuh"],
    "attention_sm90" ["attention_common.cuh", "wgmma.cuh"],
    "norm",
    "rope",
    "bridge",
    "elementwise",
    "layout",
    "timestep",
    "softmax",
    "gemv",
);

impl KernelFile {
    pub fn by_name(name: &str) -> Option<&'static KernelFile> {
        FILES.iter().find(|f| f.name == name)
    }

    /// What NVRTC compiles: `common.cuh`, then the file under a `#line` directive so compiler messages
    /// name the file and line the developer edits.
    pub fn full_source(&self) -> String {
        let mut s = format!("{COMMON}\n");
        for (name, text) in self.headers {
            s.push_str(&format!("#line 1 \"{name}\"\n{text}\n"));
        }
        s.push_str(&format!("#line 1 \"{}.cu\"\n{}", self.name, self.source));
        s
    }

    /// Names of the file's `extern "C" __global__` functions.
    pub fn entry_points(&self) -> Vec<&'static str> {
        entry_points(self.source)
    }
}

fn entry_points(source: &'static str) -> Vec<&'static str> {
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find("extern \"C\" __global__") {
        rest = &rest[i + "extern \"C\" __global__".len()..];
        // `... void [__launch_bounds__(..)] NAME(`: the identifier before the first parenthesis that is
        // not `__launch_bounds__`'s.
        loop {
            let Some(paren) = rest.find('(') else {
                return names;
            };
            let head = rest[..paren].trim_end();
            let start = head
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |j| j + 1);
            let ident = &head[start..];
            if ident == "__launch_bounds__" {
                let Some(close) = rest[paren..].find(')') else {
                    return names;
                };
                rest = &rest[paren + close + 1..];
                continue;
            }
            if !ident.is_empty() {
                names.push(ident);
            }
            rest = &rest[paren..];
            break;
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_entry_points() {
        let src = "extern \"C\" __global__ void __launch_bounds__(128) foo_bar(int x) {}\n\
                   __device__ void helper() {}\n\
                   extern \"C\" __global__ void baz(\n float* y) {}";
        assert_eq!(entry_points(src), vec!["foo_bar", "baz"]);
    }

    #[test]
    fn every_file_has_entry_points_and_a_header_comment() {
        for f in FILES {
            assert!(
                !f.entry_points().is_empty(),
                "{}.cu has no extern \"C\" __global__ function",
                f.name
            );
            assert!(
                f.source.trim_start().starts_with("//"),
                "{}.cu must open with its header comment",
                f.name
            );
        }
    }
}
