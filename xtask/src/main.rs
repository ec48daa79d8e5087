//! Developer tasks for portwatch: set-up, build, the live test suite (here and in a VM with
//! Debian's stock kernel) and benchmarks. Run as `cargo xtask <task>`.

use anyhow::Result;
use clap::{Parser, Subcommand};
use xtask::{run, scenarios, setup, test, vm};

#[derive(Parser)]
#[command(about = "portwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing needs: the pinned toolchain, Debian packages,
    /// bpf-linker. Idempotent, and instant when everything is there.
    Setup,
    /// Set up, build portwatch (release) and run it with ARGS, via sudo unless root:
    /// `cargo xtask run -- trace --port 8080`.
    Run {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// The whole test suite: lint, unit tests, live scenarios here and in a VM.
    Test(test::TestArgs),
    /// Run the live scenarios against a portwatch binary (as root; used by `test`, on the host
    /// and inside the VM).
    Scenarios(scenarios::RunArgs),
    /// A holder process for the scenarios (internal).
    #[command(hide = true)]
    Hold(scenarios::holder::HoldArgs),
    /// Boot Debian 12's stock kernel in a TCG VM and run a shell command in it (debugging aid).
    Vm(vm::VmArgs),
    /// What tracing costs: bind loop under each configuration, writes BENCHMARKS.md.
    Bench(xtask::bench::BenchArgs),
    /// Build what operators install into target/dist/: the static binary, the .deb, the OCI
    /// image archive, SHA256SUMS. Offline and reproducible.
    Dist,
    /// Check target/dist/ as root: lintian, dpkg -i/trace/purge, the image run as the
    /// DaemonSet runs it (used by `test`).
    #[command(hide = true)]
    DistCheck(xtask::dist::check::CheckArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::ensure(true),
        Task::Run { args } => run::run(&args),
        Task::Test(args) => test::main(args),
        Task::Scenarios(args) => scenarios::main(args),
        Task::Hold(args) => scenarios::holder::main(args),
        Task::Vm(args) => vm::run_cli(args),
        Task::Bench(args) => xtask::bench::run(args),
        Task::Dist => {
            setup::ensure(false)?;
            xtask::dist::build().map(|_| ())
        }
        Task::DistCheck(args) => xtask::dist::check::main(args),
    }
}
