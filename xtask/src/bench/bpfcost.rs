//! Kernel-side cost per bind, measured by the kernel itself (kernel.bpf_stats_enabled): the
//! run time of a tracer's programs divided by the binds made.
//!
//! Why, next to the timed rounds: row 3 must be within 1% of row 2, a difference much smaller
//! than the scatter of wall-clock rounds on these shared machines (BENCHMARKS.md, "Noise").
//! Both rows run the same number of programs on the same hooks, so the tracepoint dispatch
//! costs the same; the difference in program run time is the whole difference, and the kernel
//! measures it with little noise. Stats are on only during this pass (they cost two clock
//! reads per program run), never during the timed rounds.

use std::{fs, process::Command, thread, time::Duration};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use super::{
    tracer::{self, Tools, Tracer},
    workload::Worker,
};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BpfCost {
    pub tracer: Tracer,
    /// Program run time per bind, all of the tracer's programs on the bind path together.
    pub ns_per_bind: f64,
    /// (program name, ns per run) for each program that ran.
    pub programs: Vec<(String, f64)>,
    pub binds: u64,
}

#[derive(Deserialize)]
struct Prog {
    id: u32,
    #[serde(default)]
    name: String,
    #[serde(default)]
    run_time_ns: u64,
    #[serde(default)]
    run_cnt: u64,
}

fn programs() -> Result<Vec<Prog>> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("running bpftool (apt-get install bpftool)")?;
    ensure!(out.status.success(), "bpftool prog show failed");
    Ok(serde_json::from_slice(&out.stdout).unwrap_or_default())
}

/// Restores the sysctl however the pass ends.
struct StatsOn(String);

impl StatsOn {
    fn enable() -> Result<StatsOn> {
        let old = fs::read_to_string(STATS_SYSCTL).context("reading the BPF stats sysctl")?;
        fs::write(STATS_SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(StatsOn(old.trim().to_string()))
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = fs::write(STATS_SYSCTL, &self.0);
    }
}

/// Starts `tracer`, makes `binds` binds, and sums the run time of the programs it loaded
/// (those with ids above every id that existed before it started; ids only grow).
pub fn measure(tools: &Tools, worker: &mut Worker, tracer: Tracer, binds: u64) -> Result<BpfCost> {
    let newest_before = programs()?.iter().map(|p| p.id).max().unwrap_or(0);
    let running = tracer::start_process(tools, tracer, "bpfcost")?;
    // A warm-up outside the figures: first runs fault in maps and code.
    worker.run(binds / 10, 0)?;
    let stats = StatsOn::enable()?;
    let ours = |all: Vec<Prog>| -> Vec<Prog> {
        all.into_iter()
            .filter(|p| {
                p.id > newest_before && (p.name.contains("bind") || p.name.contains("listen"))
            })
            .collect()
    };
    let before = ours(programs()?);
    let sample = worker.run(binds, 0)?;
    let after = ours(programs()?);
    drop(stats);
    running.stop(&[worker.pid])?;
    thread::sleep(Duration::from_millis(50));
    let mut total = 0u64;
    let mut per_prog = Vec::new();
    for a in &after {
        let b = before.iter().find(|b| b.id == a.id);
        let (t, n) = match b {
            Some(b) => (a.run_time_ns - b.run_time_ns, a.run_cnt - b.run_cnt),
            None => (a.run_time_ns, a.run_cnt),
        };
        total += t;
        if n > 0 {
            per_prog.push((a.name.clone(), t as f64 / n as f64));
        }
    }
    ensure!(
        !after.is_empty(),
        "{}: found none of its programs",
        tracer.label()
    );
    Ok(BpfCost {
        tracer,
        ns_per_bind: total as f64 / sample.binds.max(1) as f64,
        programs: per_prog,
        binds: sample.binds,
    })
}
