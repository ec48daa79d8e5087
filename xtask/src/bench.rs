//! `cargo xtask bench`: what tracing costs a machine that binds sockets all day (issue 4).
//!
//! A native loop (xtask/bench/bindloop.c: socket + SO_REUSEADDR + bind + close on 127.0.0.1, in
//! its own network namespace, pinned to one CPU) runs under six configurations: untraced, empty
//! BPF programs on the hooks portwatch uses (sys_exit_bind and sys_exit_listen), portwatch with
//! a port filter that never matches, portwatch writing every event as JSON and as text, and a
//! bpftrace peer (xtask/bench/peer.bt). In the untraced, empty-program and JSON slots of each
//! round the same loop also times getppid() calls: what portwatch costs processes that never
//! bind, since syscall tracepoints put every task on the kernel's slow syscall path; and
//! successful connect()s to a local listener, which portwatch hooks (to explain the ones that
//! fail for want of a port) and must drop at next to no cost.
//!
//! Why the shape: single runs differ by ±20% on these shared machines, so the configurations
//! alternate within each round (rotated by one each round, so none always follows the same
//! neighbour) and the report gives per-round ratios to the same round's untraced run, as a
//! median with its spread, next to absolute times.
//!
//! Then: the highest bind rate portwatch keeps up with (one core flat out, both cores flat out,
//! paced rates below if needed), a forced overflow (portwatch paused with SIGSTOP) to check that
//! lost events are counted and shown, load + attach time, peak RSS, CPU per 100k events, and
//! fexit vs tracepoint ratios inside the TCG VM (vm.rs), the only place fexit loads.
//!
//! Results go to stdout and to BENCHMARKS.md. [`smoke`] runs all of it, minus the VM, at a
//! tiny size, so the suite notices when the bench rots.
//!
//! This file holds the command line and the order of the stages. The stages: `rounds` (the
//! alternating main table), `bpfcost` (kernel-side cost per bind), `sweep` (keeping up, the
//! forced overflow), [`attach`], `profile`, `guest` (the VM); `noise` watches the rest of the
//! machine, `report` writes the results.

pub mod attach;
mod bpfcost;
mod fdstats;
mod fexit_floor;
mod guest;
mod noise;
mod profile;
mod report;
mod rounds;
mod stats;
mod sweep;
mod tracer;
mod workload;

use std::{
    fs,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
pub use tracer::proc_status_kib;

use self::{
    noise::{foreign_tracers, loadavg, wait_for_quiet},
    report::Results,
    rounds::{Disturbance, Sizes, run_rounds},
    tracer::{Backend, Mode, Tools, Tracer},
    workload::Worker,
};
use crate::{
    cmd::{self, target_dir, workspace_root},
    run,
};

/// The configurations of the main table, in the order (rows 1 to 6).
const HOST_CONFIGS: [Tracer; 6] = [
    Tracer::None,
    Tracer::EmptyBpf,
    Tracer::Portwatch(Backend::Tracepoint, Mode::Filtered),
    Tracer::Portwatch(Backend::Tracepoint, Mode::Json),
    Tracer::Portwatch(Backend::Tracepoint, Mode::Human),
    Tracer::Peer,
];

/// The configurations that also time the connect() loop: untraced, the empty-program floor on
/// the same hooks (sys_exit_connect included), and portwatch with no filter.
const CONNECT_CONFIGS: [Tracer; 3] = GETPPID_CONFIGS;

/// The configurations that also time the getppid() loop: untraced, the empty-program floor,
/// and portwatch with every event written (no filter), as rows 1, 2 and 4 of the main table.
const GETPPID_CONFIGS: [Tracer; 3] = [
    Tracer::None,
    Tracer::EmptyBpf,
    Tracer::Portwatch(Backend::Tracepoint, Mode::Json),
];

/// Binds of the forced-overflow burst: about three times what portwatch's 4 MiB ring holds
/// (136-byte records), so most of it must be reported lost.
const OVERFLOW_BINDS: u64 = 100_000;

/// Pause before each measurement, so the previous tracer's exit and the kernel's cleanup after
/// it (unloading programs, freeing the ring) are not billed to the next configuration.
const SETTLE: Duration = Duration::from_millis(150);

/// `cargo xtask bench [--quick] [size flags]`
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    inner: Option<Inner>,
    /// A short run (about a minute): 3 rounds of 20k binds, a short sweep, a small VM run.
    #[arg(long)]
    quick: bool,
    /// Rounds of the alternating configurations [default: 7, --quick: 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// Timed binds per measurement [default: 60000, --quick: 20000]; a tenth more warm up.
    #[arg(long)]
    binds: Option<u64>,
    /// Timed getppid() calls per measurement in the untraced, empty-program and JSON
    /// configurations [default: 2000000, --quick: 1000000]; a tenth more warm up. 0 skips them.
    #[arg(long)]
    getppids: Option<u64>,
    /// Timed successful connect()s (to a local listener, accepted and closed) per measurement
    /// in the untraced, empty-program and JSON configurations [default: 30000, --quick:
    /// 10000]; a tenth more warm up. 0 skips them.
    #[arg(long)]
    connects: Option<u64>,
    /// Seconds per step of the keeping-up sweep [default: 3, --quick: 1].
    #[arg(long)]
    sweep_secs: Option<f64>,
    /// Load + attach time samples [default: 5, --quick: 3].
    #[arg(long)]
    attach_samples: Option<usize>,
    /// Skip the TCG VM (fexit vs tracepoint).
    #[arg(long)]
    no_vm: bool,
    /// Timed binds per measurement in the VM [default: 3000, --quick: 1000].
    #[arg(long)]
    vm_binds: Option<u64>,
    /// Rounds in the VM [default: 3, --quick: 2].
    #[arg(long)]
    vm_rounds: Option<usize>,
    /// Load + attach time samples per backend in the VM [default: 3, --quick: 1]. Each
    /// attaches while a loop binds on the other vCPU; 0 skips them (under TCG the kernel's
    /// live code patching can then crash the guest, see BENCHMARKS.md).
    #[arg(long)]
    vm_attach_samples: Option<usize>,
    /// CPU the bind loop is pinned to [default: the last one].
    #[arg(long)]
    cpu: Option<usize>,
    /// Port the bind loop binds (in its own network namespace).
    #[arg(long, default_value_t = 47000)]
    port: u16,
    /// Use this portwatch binary instead of building target/release/portwatch.
    #[arg(long, value_name = "PATH")]
    portwatch: Option<PathBuf>,
    /// Where to write the report [default: BENCHMARKS.md in the workspace root].
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Also record a CPU profile of portwatch (perf, cpu-clock) while one core binds flat out
    /// with --json, and put the hottest functions in the report.
    #[arg(long)]
    profile: bool,
    /// Seconds to wait for other programs traced onto bind()/listen() to detach before
    /// measuring (they slow every configuration); then measure anyway and report them.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    quiet_wait: u64,
    /// A round in which other processes used more than this many cores (or another tracer
    /// attached to bind()) is disturbed: it is run again, while --reruns lasts.
    #[arg(long, default_value_t = 0.25, value_name = "CORES")]
    max_other_cpu: f64,
    /// Disturbed rounds that may be rerun [default: 3, --quick: 1].
    #[arg(long)]
    reruns: Option<usize>,
}

#[derive(clap::Subcommand, Debug, Clone)]
enum Inner {
    /// The part of the bench that runs inside the VM (internal).
    #[command(hide = true)]
    Guest(guest::GuestArgs),
    /// Empty fexit programs on portwatch's fexit hooks, held until killed (VM floor, internal).
    #[command(hide = true)]
    EmptyFexit,
}

/// What one run does; built from [`BenchArgs`] or by [`smoke`].
#[derive(Clone, Debug)]
struct Settings {
    rounds: usize,
    binds: u64,
    warmup: u64,
    getppids: u64,
    connects: u64,
    sweep_ms: u64,
    /// Binds per configuration in the kernel-side cost pass.
    bpf_binds: u64,
    attach_samples: usize,
    overflow_binds: u64,
    vm: Option<guest::VmSettings>,
    cpu: usize,
    port: u16,
    portwatch: Option<PathBuf>,
    /// Build portwatch even when a binary exists (the real bench must not measure a stale one).
    build: bool,
    out: PathBuf,
    profile: bool,
    command: String,
    /// How long to wait for other people's bind tracers to detach before measuring.
    quiet_wait: Duration,
    disturbance: Disturbance,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.inner {
        Some(Inner::Guest(g)) => return guest::main(g),
        Some(Inner::EmptyFexit) => return fexit_floor::main(),
        None => {}
    }
    let q = args.quick;
    let binds = args.binds.unwrap_or(if q { 20_000 } else { 60_000 });
    let command = std::iter::once("cargo xtask".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let settings = Settings {
        rounds: args.rounds.unwrap_or(if q { 3 } else { 7 }).max(1),
        binds,
        warmup: binds / 10,
        getppids: args
            .getppids
            .unwrap_or(if q { 1_000_000 } else { 2_000_000 }),
        connects: args.connects.unwrap_or(if q { 10_000 } else { 30_000 }),
        sweep_ms: (args.sweep_secs.unwrap_or(if q { 1.0 } else { 3.0 }) * 1e3) as u64,
        bpf_binds: if q { 10_000 } else { 30_000 },
        attach_samples: args.attach_samples.unwrap_or(if q { 3 } else { 5 }),
        overflow_binds: OVERFLOW_BINDS,
        vm: (!args.no_vm).then(|| guest::VmSettings {
            binds: args.vm_binds.unwrap_or(if q { 1000 } else { 3000 }),
            rounds: args.vm_rounds.unwrap_or(if q { 2 } else { 3 }),
            attach_samples: args.vm_attach_samples.unwrap_or(if q { 1 } else { 3 }),
            port: args.port,
        }),
        cpu: args.cpu.unwrap_or_else(|| nproc().saturating_sub(1)),
        port: args.port,
        portwatch: args.portwatch,
        build: true,
        out: args
            .out
            .unwrap_or_else(|| workspace_root().join("BENCHMARKS.md")),
        profile: args.profile,
        command,
        quiet_wait: Duration::from_secs(args.quiet_wait),
        disturbance: Disturbance {
            max_other_cpu: args.max_other_cpu,
            reruns: args.reruns.unwrap_or(if q { 1 } else { 3 }),
        },
    };
    let results = execute(&settings)?;
    let md = report::markdown(&results);
    fs::write(&settings.out, &md).with_context(|| format!("writing {}", settings.out.display()))?;
    println!("{}", report::terminal(&results));
    eprintln!(
        "bench: wrote {} ({:.0} s in all)",
        settings.out.display(),
        results.duration_s
    );
    let missing = results.problems();
    ensure!(
        missing.is_empty(),
        "incomplete benchmark:\n  {}",
        missing.join("\n  ")
    );
    Ok(())
}

/// The whole bench at a tiny size, without the VM: seconds, for the test suite. Fails when a
/// configuration, the getppid() loop, the overflow check or the attach time produced no figure. The
/// report goes to target/xtask-bench/smoke.md, never over BENCHMARKS.md.
pub fn smoke() -> Result<()> {
    let scratch = scratch_dir();
    fs::create_dir_all(&scratch)?;
    let settings = Settings {
        rounds: 1,
        binds: 2000,
        warmup: 200,
        getppids: 200_000,
        connects: 2000,
        sweep_ms: 300,
        bpf_binds: 2000,
        attach_samples: 1,
        overflow_binds: OVERFLOW_BINDS,
        vm: None,
        cpu: nproc().saturating_sub(1),
        port: 47001,
        portwatch: None,
        build: false,
        out: scratch.join("smoke.md"),
        profile: false,
        command: "xtask::bench::smoke()".into(),
        quiet_wait: Duration::ZERO,
        disturbance: Disturbance {
            max_other_cpu: f64::INFINITY,
            reruns: 0,
        },
    };
    let results = execute(&settings)?;
    fs::write(&settings.out, report::markdown(&results))?;
    let problems = results.problems();
    ensure!(problems.is_empty(), "bench smoke: {}", problems.join("; "));
    Ok(())
}

fn execute(s: &Settings) -> Result<Results> {
    ensure!(
        cmd::is_root(),
        "the bench loads BPF programs and creates network namespaces: run it as root"
    );
    let started = Instant::now();
    let started_utc = report::utc_now();
    let scratch = scratch_dir();
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let portwatch = match &s.portwatch {
        Some(p) => p.clone(),
        None => build_portwatch(s.build)?,
    };
    let bindloop = workload::build(&scratch)?;
    let tools = Tools {
        portwatch,
        bpftrace: cmd::find_program("bpftrace"),
        scratch: scratch.clone(),
    };
    let foreign_before = wait_for_quiet(s.quiet_wait, s.disturbance.max_other_cpu);
    let load_before = loadavg();
    eprintln!(
        "bench: {} rounds × {} configurations × {} binds (+{} warm-up), {} getppid() calls in {} of them, bind loop on CPU {}",
        s.rounds,
        HOST_CONFIGS.len(),
        s.binds,
        s.warmup,
        s.getppids,
        GETPPID_CONFIGS.len(),
        s.cpu
    );
    let mut worker = Worker::spawn(&bindloop, s.port, s.cpu)?;

    let (measurements, discarded_rounds) = run_rounds(
        &tools,
        &mut worker,
        &HOST_CONFIGS,
        s.rounds,
        Sizes {
            binds: s.binds,
            warmup: s.warmup,
            getppids: s.getppids,
            getppid_on: &GETPPID_CONFIGS,
            connects: s.connects,
            connect_on: &CONNECT_CONFIGS,
        },
        s.disturbance,
        &mut || !foreign_tracers().is_empty(),
    )?;

    eprintln!(
        "bench: kernel-side cost per bind (kernel.bpf_stats_enabled, {} binds each)",
        s.bpf_binds
    );
    let mut bpf = Vec::new();
    for &t in HOST_CONFIGS.iter().filter(|t| **t != Tracer::None) {
        thread::sleep(SETTLE);
        let c = bpfcost::measure(&tools, &mut worker, t, s.bpf_binds)
            .with_context(|| format!("BPF run time of {}", t.label()))?;
        eprintln!(
            "bench:   {:>6.0} ns per bind in BPF  {}",
            c.ns_per_bind,
            t.label()
        );
        bpf.push(c);
    }
    eprintln!("bench: keeping-up sweep ({} ms per step)", s.sweep_ms);
    let sweep = sweep::sweep(&tools, &mut worker, &bindloop, s)?;
    eprintln!(
        "bench: forced overflow ({} binds while portwatch is paused)",
        s.overflow_binds
    );
    let overflow = sweep::overflow(&tools, &mut worker, s.overflow_binds)?;
    eprintln!("bench: load + attach time");
    let mut attach = Vec::new();
    for _ in 0..s.attach_samples {
        attach.push(attach::sample(
            &tools,
            Backend::Tracepoint,
            &mut worker,
            s.port,
        )?);
    }
    let profile = if s.profile {
        eprintln!("bench: profiling portwatch --json under one core flat out");
        Some(profile::profile(&tools, &mut worker, s.sweep_ms.max(3000)))
    } else {
        None
    };
    drop(worker);

    // Every kernel the suite's VM stage runs: fexit on 6.1 and on a 6.6+ kernel.
    let vm: Vec<Result<guest::GuestResults, String>> = match &s.vm {
        None => Vec::new(),
        Some(v) => crate::vm::Distro::ALL
            .into_iter()
            .map(|d| {
                eprintln!(
                    "bench: TCG VM {}, fexit vs tracepoint ({} rounds × {} binds)",
                    d.label(),
                    v.rounds,
                    v.binds
                );
                guest::run_vm(&tools, &bindloop, v, d).map_err(|e| format!("{}: {e:#}", d.label()))
            })
            .collect(),
    };

    Ok(Results {
        machine: report::Machine::here(),
        command: s.command.clone(),
        started_utc,
        duration_s: started.elapsed().as_secs_f64(),
        source: source_state(),
        rounds: s.rounds,
        binds: s.binds,
        warmup: s.warmup,
        cpu: s.cpu,
        configs: HOST_CONFIGS.to_vec(),
        getppids: s.getppids,
        getppid_configs: if s.getppids > 0 {
            GETPPID_CONFIGS.to_vec()
        } else {
            Vec::new()
        },
        connects: s.connects,
        connect_configs: if s.connects > 0 {
            CONNECT_CONFIGS.to_vec()
        } else {
            Vec::new()
        },
        measurements,
        bpf,
        sweep,
        overflow,
        attach,
        vm,
        vm_requested: s.vm.is_some(),
        foreign_before,
        foreign_after: foreign_tracers(),
        discarded_rounds,
        disturbance: s.disturbance,
        load_before,
        load_after: loadavg(),
        profile,
    })
}

/// The release binary: built when `always`, else only when there is none.
fn build_portwatch(always: bool) -> Result<PathBuf> {
    let bin = run::release_binary();
    if always || !bin.exists() {
        run::build_release()?;
    }
    ensure!(bin.exists(), "no {} after building", bin.display());
    Ok(bin)
}

/// Commit and whether the tree had changes, so a figure can be tied to the code it measured.
fn source_state() -> String {
    let git = |args: &[&str]| {
        cmd::probe(Command::new("git").args(args).current_dir(workspace_root()))
            .map(|out| out.trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "portwatch",
        "portwatch-ebpf",
        "portwatch-common",
    ])
    .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{commit} with uncommitted changes to portwatch")
    } else {
        commit
    }
}

pub fn nproc() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Output files, the compiled bind loop, the VM's work directory.
fn scratch_dir() -> PathBuf {
    target_dir().join("xtask-bench")
}

#[cfg(test)]
mod tests {
    /// Needs root, bpftrace and a built portwatch, so it is opt-in here:
    /// `cargo test -p xtask -- --ignored bench_smoke`. The suite calls [`super::smoke`] itself.
    #[test]
    #[ignore]
    fn bench_smoke() {
        super::smoke().unwrap();
    }
}
