//! Starts the executables a test builds (the `hbridge` CLI, the C demo) through the command in
//! `HBRIDGE_TEST_RUNNER` when it is set, the way cargo's target runner starts the test itself: a
//! cross build run under qemu-user (`scripts/check-aarch64.sh`) then runs them under qemu too.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::process::Command;

/// `exe`, or `HBRIDGE_TEST_RUNNER`'s words followed by `exe`.
pub fn command(exe: impl AsRef<OsStr>) -> Command {
    let runner = std::env::var("HBRIDGE_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(exe);
            command
        }
        None => Command::new(exe),
    }
}

/// The `hbridge` CLI built with these tests.
pub fn hbridge() -> Command {
    command(env!("CARGO_BIN_EXE_hbridge"))
}
