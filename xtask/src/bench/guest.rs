//! fexit vs tracepoint, inside TCG VMs with Debian 12's 6.1 and Debian 13's 6.12 kernels
//! (vm.rs): this host's kernel refuses trampolines, so that is the only place the fexit backend
//! runs.
//!
//! TCG emulates every instruction, so absolute times say nothing about real hardware. Only
//! ratios between configurations measured in the same guest, in the same round, are reported.
//! The guest has two vCPUs, the loop pinned to the last; each is a thread on the host, so
//! whatever runs on the other vCPU (portwatch's user space) competes with the loop for the
//! host's cores. The rows after the fexit `--json` one take it apart: the trampolines' floor,
//! portwatch stopped during the binds, and a busy shell with nothing traced.
//!
//! The host copies this xtask binary, portwatch and the bind loop into the initramfs and runs
//! `xtask bench guest`, which alternates the configurations like the host bench and writes its
//! results as one JSON document to the results port (/dev/ttyS1).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::{
    attach::{self, AttachSample},
    fdstats::{self, ProgStat},
    rounds::{Disturbance, Measurement, Sizes, run_rounds},
    tracer::{self, Backend, Mode, Tools, Tracer},
    workload::Worker,
};
use crate::vm;

/// Untraced, then each backend with the never-matching filter and with every event as JSON;
/// then what the fexit JSON row is made of: the empty programs on the same hooks (the
/// trampolines' floor), portwatch stopped while the loop is timed (its programs without its
/// user-space work on the other vCPU), and a busy shell on the other vCPU without any tracer
/// (what any work there costs the loop's vCPU under TCG).
pub const VM_CONFIGS: [Tracer; 8] = [
    Tracer::None,
    Tracer::Portwatch(Backend::Tracepoint, Mode::Filtered),
    Tracer::Portwatch(Backend::Fexit, Mode::Filtered),
    Tracer::Portwatch(Backend::Tracepoint, Mode::Json),
    Tracer::Portwatch(Backend::Fexit, Mode::Json),
    Tracer::EmptyFexit,
    Tracer::Portwatch(Backend::Fexit, Mode::JsonPaused),
    Tracer::BusyOtherCpu,
];

/// The configurations whose programs' run time the VM measures (kernel.bpf_stats_enabled, in
/// a pass of its own after the timed rounds).
pub const VM_BPF_CONFIGS: [Tracer; 5] = [
    Tracer::EmptyFexit,
    Tracer::Portwatch(Backend::Fexit, Mode::Filtered),
    Tracer::Portwatch(Backend::Fexit, Mode::Json),
    Tracer::Portwatch(Backend::Fexit, Mode::JsonPaused),
    Tracer::Portwatch(Backend::Tracepoint, Mode::Json),
];

/// Program run time in the VM, per program, between two readings of the tracer's fdinfo.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GuestBpfCost {
    pub tracer: Tracer,
    pub binds: u64,
    /// Untimed: the loop's own figure for these binds, with the stats on.
    pub ns_per_bind: f64,
    pub programs: Vec<ProgStat>,
}

/// The configurations that also time the getppid() and connect() loops in the VM: untraced and
/// each backend with every event written. A process that never binds should pay nothing for
/// fexit (its hooks are on the socket functions, not on every system call), and a successful
/// connect() next to nothing on either backend.
pub const VM_CALL_CONFIGS: [Tracer; 3] = [
    Tracer::None,
    Tracer::Portwatch(Backend::Tracepoint, Mode::Json),
    Tracer::Portwatch(Backend::Fexit, Mode::Json),
];

/// getppid() calls and connect()s timed per measurement in the VM, per timed bind.
pub const VM_GETPPIDS_PER_BIND: u64 = 50;
pub const VM_BINDS_PER_CONNECT: u64 = 3;

/// vCPUs of the bench VM: the loop is pinned to the last.
const VM_CPUS: u32 = 2;

/// Boot, several portwatch starts (BTF parsing under emulation takes a while), power-off.
const VM_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Debug)]
pub struct VmSettings {
    pub binds: u64,
    pub rounds: usize,
    pub attach_samples: usize,
    pub port: u16,
}

/// `xtask bench guest`: the in-VM half.
#[derive(clap::Args, Debug, Clone)]
pub struct GuestArgs {
    #[arg(long)]
    binds: u64,
    #[arg(long)]
    rounds: usize,
    #[arg(long)]
    attach_samples: usize,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "/bench/portwatch")]
    portwatch: PathBuf,
    #[arg(long, default_value = "/bench/bindloop")]
    bindloop: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GuestResults {
    pub kernel: String,
    pub nproc: usize,
    pub binds: u64,
    pub rounds: usize,
    pub measurements: Vec<Measurement>,
    pub attach: Vec<AttachSample>,
    #[serde(default)]
    pub bpf: Vec<GuestBpfCost>,
    /// Boot to power-off, seconds (filled in by the host).
    #[serde(default)]
    pub vm_seconds: f64,
}

/// Runs in the guest; prints [`GuestResults`] as JSON on stdout.
pub fn main(a: GuestArgs) -> Result<()> {
    let scratch = PathBuf::from("/tmp/bench");
    std::fs::create_dir_all(&scratch)?;
    let tools = Tools {
        portwatch: a.portwatch.clone(),
        bpftrace: None,
        scratch,
    };
    let mut worker = Worker::spawn(&a.bindloop, a.port, super::nproc().saturating_sub(1))?;
    // Nothing else runs in the guest: no reruns.
    let (measurements, _) = run_rounds(
        &tools,
        &mut worker,
        &VM_CONFIGS,
        a.rounds,
        Sizes {
            binds: a.binds,
            warmup: a.binds / 10,
            // Every slot runs the same loops before its binds (the tables show
            // VM_CALL_CONFIGS): a slot that made 1000 connections just before is compared
            // with slots that did too, never with ones that did not.
            getppids: a.binds * VM_GETPPIDS_PER_BIND,
            getppid_on: &VM_CONFIGS,
            connects: a.binds / VM_BINDS_PER_CONNECT,
            connect_on: &VM_CONFIGS,
        },
        Disturbance {
            max_other_cpu: f64::INFINITY,
            reruns: 0,
        },
        &mut || false,
    )?;
    let mut bpf = Vec::new();
    for t in VM_BPF_CONFIGS {
        bpf.push(bpf_cost(&tools, &mut worker, t, a.binds)?);
    }
    let mut attach = Vec::new();
    for _ in 0..a.attach_samples {
        for backend in [Backend::Tracepoint, Backend::Fexit] {
            attach.push(attach::sample(&tools, backend, &mut worker, a.port)?);
        }
    }
    let results = GuestResults {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        nproc: super::nproc(),
        binds: a.binds,
        rounds: a.rounds,
        measurements,
        attach,
        bpf,
        vm_seconds: 0.0,
    };
    println!("{}", serde_json::to_string(&results)?);
    Ok(())
}

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Starts `tracer`, warms up, and reads its programs' run time over `binds` binds with
/// kernel.bpf_stats_enabled on (only for this pass: the stats cost two clock reads per run).
fn bpf_cost(
    tools: &Tools,
    worker: &mut Worker,
    tracer: Tracer,
    binds: u64,
) -> Result<GuestBpfCost> {
    let running = tracer::start_process(tools, tracer, "bpf")?;
    worker.run(binds / 10, 0)?;
    std::fs::write(STATS_SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
    let paused = matches!(tracer, Tracer::Portwatch(_, Mode::JsonPaused));
    let before = fdstats::programs_of(running.pid);
    if paused {
        running.signal(libc::SIGSTOP);
    }
    let sample = worker.run(binds, 0);
    if paused {
        running.signal(libc::SIGCONT);
    }
    let after = fdstats::programs_of(running.pid);
    let _ = std::fs::write(STATS_SYSCTL, "0");
    let sample = sample?;
    running.stop(&[worker.pid])?;
    let programs = fdstats::delta(&before, &after);
    eprintln!(
        "bench: bpf_stats {}: {}",
        tracer.label(),
        programs
            .iter()
            .map(|p| format!(
                "{} {:.0} ns × {:.2}/bind",
                p.name,
                p.run_time_ns as f64 / p.run_cnt as f64,
                p.run_cnt as f64 / sample.binds.max(1) as f64
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(GuestBpfCost {
        tracer,
        binds: sample.binds,
        ns_per_bind: sample.ns_per_bind(),
        programs,
    })
}

/// Boots the VM with the bench inside and returns what it measured.
pub fn run_vm(
    tools: &Tools,
    bindloop: &Path,
    v: &VmSettings,
    distro: vm::Distro,
) -> Result<GuestResults> {
    let kernel = vm::ensure_kernel(&crate::cmd::workspace_root().join("vm-cache"), distro)?;
    let xtask = guest_copy_of_xtask(&tools.scratch)?;
    let guest = vm::Guest {
        files: vec![
            (xtask, "/bench/xtask".into()),
            (tools.portwatch.clone(), "/bench/portwatch".into()),
            (bindloop.to_path_buf(), "/bench/bindloop".into()),
        ],
        command: format!(
            "/bench/xtask bench guest --binds {} --rounds {} --attach-samples {} --port {} \
             >/dev/ttyS1",
            v.binds, v.rounds, v.attach_samples, v.port
        ),
        timeout: VM_TIMEOUT,
        memory_mb: 1024,
        // The loop on a vCPU of its own, as on the host: portwatch's own work (decoding,
        // writing JSON, its timers) then does not slow the loop, and what is left is what
        // the hooks cost the caller.
        cpus: VM_CPUS,
        kernel_args: String::new(),
    };
    let out = vm::run(&kernel, &guest, &tools.scratch.join("vm"))?;
    if out.exit_code != Some(0) {
        let tail: Vec<&str> = out.console.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "the bench in the VM ({}) exited with {:?}; console:\n{}",
            kernel.version,
            out.exit_code,
            tail.join("\n")
        );
    }
    let mut r: GuestResults = serde_json::from_slice(&out.results).map_err(|e| {
        anyhow!(
            "unreadable results from the VM ({e}): {:?}",
            String::from_utf8_lossy(&out.results[..out.results.len().min(300)])
        )
    })?;
    r.vm_seconds = out.elapsed.as_secs_f64();
    Ok(r)
}

/// This xtask binary without debug info (a debug build is mostly DWARF, and every byte goes
/// through the initramfs). It runs the guest half.
/// Copied through /proc/self/exe, which still works when cargo has rebuilt (replaced) the
/// file meanwhile, as happens when someone else builds xtask during a long bench.
fn guest_copy_of_xtask(scratch: &Path) -> Result<PathBuf> {
    let full = scratch.join("xtask-guest.full");
    let copy = scratch.join("xtask-guest");
    std::fs::copy("/proc/self/exe", &full)
        .with_context(|| format!("copying this xtask binary to {}", full.display()))?;
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&copy)
        .arg(&full)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::rename(&full, &copy)?;
    }
    Ok(copy)
}
