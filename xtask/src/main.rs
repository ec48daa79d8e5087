//! Developer tasks for portwatch: set-up, build, the live test suite (here and in a VM with
//! Debian's stock kernel) and benchmarks. Run as `cargo xtask <task>`.

mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "portwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Boot Debian 12's stock kernel in a TCG VM and run a shell command in it (debugging aid).
    Vm(vm::VmArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Vm(args) => vm::run_cli(args),
    }
}
