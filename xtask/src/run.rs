//! `cargo xtask run -- <portwatch args>`: the README's run command. Sets up what is missing,
//! builds the release binary and replaces itself with it (under sudo unless already root), so
//! Ctrl-C and the exit code go straight to portwatch.

use std::{os::unix::process::CommandExt, path::PathBuf};

use anyhow::{Context, Result};

use crate::{cmd, setup};

/// Where `cargo build --release -p portwatch` leaves the binary.
pub fn release_binary() -> PathBuf {
    cmd::target_dir().join("release/portwatch")
}

pub fn build_release() -> Result<PathBuf> {
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "portwatch"]))?;
    Ok(release_binary())
}

pub fn run(args: &[String]) -> Result<()> {
    setup::ensure(false)?;
    let bin = build_release()?;
    let mut c = cmd::privileged(&bin);
    c.args(args);
    // exec only returns on failure.
    let err = c.exec();
    Err(err).with_context(|| format!("starting {}", cmd::render(&c)))
}
