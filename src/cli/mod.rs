//! Subcommands of the `hbridge` binary, one file each. Each returns a message on failure; `main` prints it.

pub mod chat;
pub mod demo;
pub mod forward;
pub mod generate;
