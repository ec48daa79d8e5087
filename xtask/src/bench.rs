//! `cargo xtask bench`: what tracing costs a machine that binds sockets all day (issue 4).
//!
//! A native loop (xtask/bench/bindloop.c: socket + SO_REUSEADDR + bind + close on 127.0.0.1, in
//! its own network namespace, pinned to one CPU) runs under six configurations: untraced, empty
//! BPF programs on the same tracepoints, portwatch with a port filter that never matches,
//! portwatch writing every event as JSON and as text, and a bpftrace peer (xtask/bench/peer.bt).
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

pub mod attach;
mod bpfcost;
mod guest;
mod report;
mod stats;
mod tracer;
mod workload;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use self::{
    report::Results,
    tracer::{Backend, Mode, Tools, Tracer, TracerStats},
    workload::Worker,
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
}

/// What one run does; built from [`BenchArgs`] or by [`smoke`].
#[derive(Clone, Debug)]
struct Settings {
    rounds: usize,
    binds: u64,
    warmup: u64,
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

/// One configuration run once: the bind loop's figure and the tracer's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    pub round: usize,
    pub tracer: Tracer,
    pub ns_per_bind: f64,
    pub binds: u64,
    pub errors: u64,
    pub stats: Option<TracerStats>,
    /// CPU used by everything but the bind loop and the tracer while the loop ran, in cores:
    /// another job on this shared machine competing with the measurement.
    #[serde(default)]
    pub other_cpu: f64,
    /// Someone else's program was attached to bind()/listen() just before or after.
    #[serde(default)]
    pub foreign_tracer: bool,
}

/// Whether a round is fit to keep.
#[derive(Clone, Copy, Debug)]
pub struct Disturbance {
    /// Other processes used more than this many cores during a measurement.
    pub max_other_cpu: f64,
    /// Rounds that may be thrown away and rerun, in all.
    pub reruns: usize,
}

/// One step of the keeping-up sweep (or the forced overflow).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepStep {
    pub label: String,
    pub workers: usize,
    /// Per worker; None = flat out.
    pub target_rate: Option<f64>,
    /// Binds per second actually made, all workers together.
    pub rate: f64,
    pub binds: u64,
    pub errors: u64,
    pub secs: f64,
    pub stats: TracerStats,
}

impl SweepStep {
    /// Binds neither reported as events nor counted as lost: must be 0.
    pub fn unaccounted(&self) -> i64 {
        let seen = self.stats.worker_events.unwrap_or(0) + self.stats.lost.unwrap_or(0);
        self.binds as i64 - seen as i64
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(Inner::Guest(g)) = args.inner {
        return guest::main(g);
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
        sweep_ms: (args.sweep_secs.unwrap_or(if q { 1.0 } else { 3.0 }) * 1e3) as u64,
        bpf_binds: if q { 10_000 } else { 30_000 },
        attach_samples: args.attach_samples.unwrap_or(if q { 3 } else { 5 }),
        overflow_binds: OVERFLOW_BINDS,
        vm: (!args.no_vm).then(|| guest::VmSettings {
            binds: args.vm_binds.unwrap_or(if q { 1000 } else { 3000 }),
            rounds: args.vm_rounds.unwrap_or(if q { 2 } else { 3 }),
            attach_samples: if q { 1 } else { 3 },
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
/// configuration, the sweep, the overflow check or the attach time produced no figure. The
/// report goes to target/xtask-bench/smoke.md, never over BENCHMARKS.md.
pub fn smoke() -> Result<()> {
    let scratch = scratch_dir();
    fs::create_dir_all(&scratch)?;
    let settings = Settings {
        rounds: 1,
        binds: 2000,
        warmup: 200,
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
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
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
        bpftrace: which("bpftrace"),
        scratch: scratch.clone(),
    };
    let foreign_before = wait_for_quiet(s.quiet_wait, s.disturbance.max_other_cpu);
    let load_before = loadavg();
    eprintln!(
        "bench: {} rounds × {} configurations × {} binds (+{} warm-up), bind loop on CPU {}",
        s.rounds,
        HOST_CONFIGS.len(),
        s.binds,
        s.warmup,
        s.cpu
    );
    let mut worker = Worker::spawn(&bindloop, s.port, s.cpu)?;

    let (measurements, discarded_rounds) = run_rounds(
        &tools,
        &mut worker,
        &HOST_CONFIGS,
        s.rounds,
        (s.binds, s.warmup),
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
    let sweep = sweep(&tools, &mut worker, &bindloop, s)?;
    eprintln!(
        "bench: forced overflow ({} binds while portwatch is paused)",
        s.overflow_binds
    );
    let overflow = overflow(&tools, &mut worker, s.overflow_binds)?;
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
        Some(profile(&tools, &mut worker, s.sweep_ms.max(3000)))
    } else {
        None
    };
    drop(worker);

    let vm = s.vm.as_ref().map(|v| {
        eprintln!(
            "bench: TCG VM, fexit vs tracepoint ({} rounds × {} binds)",
            v.rounds, v.binds
        );
        guest::run_vm(&tools, &bindloop, v).map_err(|e| format!("{e:#}"))
    });

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

/// Runs every configuration once per round, rotated by one each round.
///
/// `foreign` says whether someone else's tracer is on the bind path (checked before and after
/// each measurement, while none of ours is attached). A round in which that happened, or
/// in which other processes took more than `d.max_other_cpu` cores, is thrown away and run
/// again while `d.reruns` lasts; later ones are kept and flagged. Returns the kept
/// measurements and the number of rounds thrown away.
pub fn run_rounds(
    tools: &Tools,
    worker: &mut Worker,
    configs: &[Tracer],
    rounds: usize,
    (binds, warmup): (u64, u64),
    d: Disturbance,
    foreign: &mut dyn FnMut() -> bool,
) -> Result<(Vec<Measurement>, usize)> {
    let mut kept = Vec::new();
    let mut discarded = 0;
    let mut attempt = 0;
    while kept.len() < rounds * configs.len() {
        let mut this = Vec::new();
        for i in 0..configs.len() {
            let tracer = configs[(i + attempt) % configs.len()];
            let before = foreign();
            let mut m = measure(tools, worker, tracer, attempt, binds, warmup)
                .with_context(|| format!("round {}: {}", attempt + 1, tracer.label()))?;
            m.foreign_tracer = before || foreign();
            eprintln!(
                "bench: round {}  {:>8.0} ns/bind  {}{}{}",
                attempt + 1,
                m.ns_per_bind,
                tracer.label(),
                m.stats
                    .as_ref()
                    .map(|s| format!(
                        "  (events {}, lost {}, cpu {:.2} s{})",
                        s.events.map_or("?".into(), |e| e.to_string()),
                        s.lost.map_or("?".into(), |e| e.to_string()),
                        s.cpu_s,
                        if s.killed {
                            ", KILLED: ignored SIGINT"
                        } else {
                            ""
                        }
                    ))
                    .unwrap_or_default(),
                if m.foreign_tracer || m.other_cpu > d.max_other_cpu {
                    format!(
                        "  [disturbed: {}other processes used {:.2} cores]",
                        if m.foreign_tracer {
                            "another tracer attached; "
                        } else {
                            ""
                        },
                        m.other_cpu
                    )
                } else {
                    String::new()
                }
            );
            this.push(m);
        }
        attempt += 1;
        let disturbed = this
            .iter()
            .any(|m| m.foreign_tracer || m.other_cpu > d.max_other_cpu);
        if disturbed && discarded < d.reruns {
            discarded += 1;
            eprintln!("bench: round {attempt} was disturbed; running it again");
            continue;
        }
        kept.extend(this);
    }
    Ok((kept, discarded))
}

fn measure(
    tools: &Tools,
    worker: &mut Worker,
    tracer: Tracer,
    round: usize,
    binds: u64,
    warmup: u64,
) -> Result<Measurement> {
    thread::sleep(SETTLE);
    let running = tracer::start(tools, tracer, &format!("r{round}"))?;
    let wpid = worker.pid as i32;
    let ours = |r: &Option<tracer::Running>| {
        tracer::proc_cpu_s(wpid).unwrap_or(0.0)
            + r.as_ref()
                .map_or(0.0, |r| tracer::proc_cpu_s(r.pid).unwrap_or(0.0))
    };
    let (busy0, ours0) = (busy_cpu_s(), ours(&running));
    let sample = worker.run(binds, warmup)?;
    let (busy1, ours1) = (busy_cpu_s(), ours(&running));
    let secs = sample.ns as f64 / 1e9 * (binds + warmup) as f64 / binds.max(1) as f64;
    let stats = match running {
        Some(r) => Some(r.stop(&[worker.pid])?),
        None => None,
    };
    Ok(Measurement {
        round,
        tracer,
        ns_per_bind: sample.ns_per_bind(),
        binds: sample.binds,
        errors: sample.errors,
        stats,
        other_cpu: (((busy1 - busy0) - (ours1 - ours0)) / secs.max(1e-3)).max(0.0),
        foreign_tracer: false,
    })
}

/// CPU seconds all CPUs spent not idle since boot (/proc/stat: user, nice, system, irq,
/// softirq, steal).
fn busy_cpu_s() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    busy as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// One sweep step: a fresh `portwatch --json > file` while `workers` bind at `rate` each.
fn sweep_step(
    tools: &Tools,
    workers: &mut [&mut Worker],
    label: &str,
    rate: Option<f64>,
    ms: u64,
) -> Result<SweepStep> {
    thread::sleep(SETTLE);
    let running = tracer::start_process(
        tools,
        Tracer::Portwatch(Backend::Tracepoint, Mode::Json),
        "sweep",
    )?;
    for w in workers.iter_mut() {
        w.send_pace(rate.unwrap_or(f64::INFINITY), ms)?;
    }
    let mut samples = Vec::new();
    for w in workers.iter_mut() {
        samples.push(w.reply()?);
    }
    let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    let stats = running.stop(&pids)?;
    let binds = samples.iter().map(|s| s.binds).sum::<u64>();
    let secs = samples.iter().map(|s| s.ns).max().unwrap_or(1) as f64 / 1e9;
    let step = SweepStep {
        label: label.to_string(),
        workers: workers.len(),
        target_rate: rate,
        rate: binds as f64 / secs,
        binds,
        errors: samples.iter().map(|s| s.errors).sum(),
        secs,
        stats,
    };
    eprintln!(
        "bench: sweep {label}: {:.0} binds/s, {} events about them, lost {} ({} warnings), portwatch CPU {:.0}%",
        step.rate,
        step.stats.worker_events.unwrap_or(0),
        step.stats.lost.map_or("?".into(), |l| l.to_string()),
        step.stats.lost_warnings,
        100.0 * step.stats.cpu_s / secs
    );
    Ok(step)
}

/// One core flat out; both cores flat out (a second worker on another CPU), which is past what
/// one core can make; and, only if one core already loses events, paced rates below it until
/// nothing is lost.
fn sweep(
    tools: &Tools,
    worker: &mut Worker,
    bindloop: &Path,
    s: &Settings,
) -> Result<Vec<SweepStep>> {
    let mut steps = vec![sweep_step(
        tools,
        &mut [&mut *worker],
        "1 core flat out",
        None,
        s.sweep_ms,
    )?];
    let one_core = steps[0].rate;
    if steps[0].stats.lost != Some(0) {
        for frac in [0.75, 0.5, 0.25] {
            let label = format!("1 core paced at {:.0}% of flat out", frac * 100.0);
            let step = sweep_step(
                tools,
                &mut [&mut *worker],
                &label,
                Some(one_core * frac),
                s.sweep_ms,
            )?;
            let clean = step.stats.lost == Some(0);
            steps.push(step);
            if clean {
                break;
            }
        }
    }
    let cpus = nproc();
    if cpus > 1 {
        let other = if s.cpu == 0 { 1 } else { 0 };
        let mut second = Worker::spawn(bindloop, s.port, other)?;
        let both = sweep_step(
            tools,
            &mut [&mut *worker, &mut second],
            "2 cores flat out (2 loops, 2 netns)",
            None,
            s.sweep_ms,
        )?;
        let (lossy, top) = (both.stats.lost != Some(0), both.rate);
        steps.push(both);
        // Two loops lose events (portwatch now shares a CPU with one of them): find the
        // highest combined rate at which two paced (sleeping) loops still lose nothing.
        if lossy && steps[0].stats.lost == Some(0) {
            for frac in [0.5, 0.7, 0.85] {
                let total = one_core.max(top) * frac;
                let label = format!("2 loops paced at {total:.0} binds/s in all");
                let step = sweep_step(
                    tools,
                    &mut [&mut *worker, &mut second],
                    &label,
                    Some(total / 2.0),
                    s.sweep_ms,
                )?;
                let lost = step.stats.lost != Some(0);
                steps.push(step);
                if lost {
                    break;
                }
            }
        }
    }
    Ok(steps)
}

/// Pauses portwatch (SIGSTOP) while the loop makes `binds` binds, resumes it, and stops it:
/// most of the burst cannot fit in the ring, and every lost event must show up in the stderr
/// warning, the JSON `lost` records and the summary.
fn overflow(tools: &Tools, worker: &mut Worker, binds: u64) -> Result<SweepStep> {
    thread::sleep(SETTLE);
    let running = tracer::start_process(
        tools,
        Tracer::Portwatch(Backend::Tracepoint, Mode::Json),
        "overflow",
    )?;
    running.signal(libc::SIGSTOP);
    let sample = worker.run(binds, 0);
    running.signal(libc::SIGCONT);
    let sample = sample?;
    let stats = running.stop(&[worker.pid])?;
    Ok(SweepStep {
        label: "portwatch paused (SIGSTOP) during the burst".into(),
        workers: 1,
        target_rate: None,
        rate: sample.rate(),
        binds: sample.binds,
        errors: sample.errors,
        secs: sample.ns as f64 / 1e9,
        stats,
    })
}

/// `perf record -e cpu-clock` (this VM has no hardware counters) with DWARF call graphs on
/// portwatch --json while one core binds flat out; returns the functions with the most
/// inclusive time, or why there are none.
fn profile(tools: &Tools, worker: &mut Worker, ms: u64) -> String {
    let mut run = || -> Result<String> {
        let data = tools.scratch.join("perf.data");
        let running = tracer::start_process(
            tools,
            Tracer::Portwatch(Backend::Tracepoint, Mode::Json),
            "profile",
        )?;
        let mut perf = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "1999"])
            .args(["--call-graph", "dwarf,16384", "-o"])
            .arg(&data)
            .args(["-p", &running.pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting perf (apt-get install linux-perf)")?;
        thread::sleep(Duration::from_millis(300));
        worker.send_pace(f64::INFINITY, ms)?;
        let sample = worker.reply()?;
        // perf stops on SIGTERM too; SIGINT may be ignored when the bench runs in the background.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(perf.id() as i32, libc::SIGTERM) };
        perf.wait()?;
        let stats = running.stop(&[worker.pid])?;
        let out = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--children",
                "--sort",
                "symbol",
                "-g",
                "none",
            ])
            .args(["--percent-limit", "2", "-i"])
            .arg(&data)
            .output()
            .context("running perf report")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let body: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            // The runtime's frames wrap everything; they say nothing about where time goes.
            .filter(|l| !l.contains("0xffffffffffffffff") && !l.contains("tokio::"))
            .map(|l| {
                let l = l.split_whitespace().collect::<Vec<_>>().join(" ");
                l.chars().take(150).collect()
            })
            .take(45)
            .collect();
        Ok(format!(
            "portwatch --json > file, {} binds at {:.0}/s from one core; {} events, portwatch CPU {:.2} s \
             ({:.1} µs per event).\nInclusive (children) and self share of portwatch's CPU samples:\n{}",
            sample.binds,
            sample.rate(),
            stats.events.unwrap_or(0),
            stats.cpu_s,
            stats.cpu_s * 1e6 / stats.events.unwrap_or(1).max(1) as f64,
            body.join("\n")
        ))
    };
    run().unwrap_or_else(|e| format!("profile failed: {e:#}"))
}

fn build_portwatch(always: bool) -> Result<PathBuf> {
    let bin = target_dir().join("release/portwatch");
    if always || !bin.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "portwatch"])
            .current_dir(workspace_root())
            .status()
            .context("running cargo build --release -p portwatch")?;
        ensure!(
            status.success(),
            "cargo build --release -p portwatch failed"
        );
    }
    ensure!(bin.exists(), "no {} after building", bin.display());
    Ok(bin)
}

/// Tracers attached to bind()/listen() hooks that are not ours: on a shared machine they slow
/// every configuration (the untraced one too), and they are the first thing to look at when
/// figures jump. Call it while none of the bench's tracers runs.
///
/// Two kinds of attachment: perf-event ones (bpftrace, BCC), which `bpftool perf list` names
/// with their pid, and BPF links (aya, libbpf: portwatch), which only the owner's
/// /proc/PID/fdinfo describes.
fn foreign_tracers() -> Vec<String> {
    let hooked = |name: &str| name.contains("bind") || name.contains("listen");
    let mut by_pid: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
    if let Ok(out) = Command::new("bpftool").args(["perf", "list"]).output() {
        for l in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| hooked(l))
        {
            // "pid 15244  fd 7: prog_id 149  tracepoint  sys_enter_bind"
            let mut f = l.split_whitespace();
            let pid = f.nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            let hook = l.split_whitespace().last().unwrap_or("?").to_string();
            by_pid.entry(pid).or_default().push(hook);
        }
    }
    for pid in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = pid.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let is_link =
                fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:bpf_link");
            if !is_link {
                continue;
            }
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            if let Some(tp) = info.lines().find_map(|l| l.strip_prefix("tp_name:"))
                && hooked(tp)
            {
                by_pid.entry(pid).or_default().push(tp.trim().to_string());
            }
        }
    }
    by_pid
        .into_iter()
        .map(|(pid, hooks)| {
            let cmd = fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .map(|c| c.replace('\0', " ").trim().to_string())
                .unwrap_or_default();
            format!("pid {pid} ({cmd}): {}", hooks.join(", "))
        })
        .collect()
}

/// Gives other people's bind tracers, and other jobs using more than `max_cpu` cores, up to
/// `patience` to go away, saying what they are. Returns the tracers still attached.
fn wait_for_quiet(patience: Duration, max_cpu: f64) -> Vec<String> {
    let started = Instant::now();
    let mut said = false;
    loop {
        let foreign = foreign_tracers();
        let busy0 = busy_cpu_s();
        thread::sleep(Duration::from_secs(1));
        let busy = busy_cpu_s() - busy0;
        let quiet = foreign.is_empty() && busy <= max_cpu;
        if quiet || started.elapsed() >= patience {
            if !quiet {
                eprintln!("bench: measuring anyway; the report lists the disturbance under Noise");
            }
            return foreign;
        }
        if !said {
            eprintln!(
                "bench: waiting up to {patience:?} for a quiet machine: {:.2} cores busy{}{}",
                busy,
                if foreign.is_empty() {
                    ""
                } else {
                    "; tracers on bind()/listen():\n  "
                },
                foreign.join("\n  ")
            );
            said = true;
        }
    }
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Commit and whether the tree had changes, so a figure can be tied to the code it measured.
fn source_state() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
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

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is one level below the workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
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
