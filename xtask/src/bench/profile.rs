//! `cargo xtask bench --profile`: where portwatch spends its CPU while one core binds flat out.

use std::{process::Command, thread, time::Duration};

use anyhow::{Context, Result};

use super::{
    tracer::{self, Backend, Mode, Tools, Tracer},
    workload::Worker,
};

/// `perf record -e cpu-clock` (this VM has no hardware counters) with DWARF call graphs on
/// portwatch --json while one core binds flat out; returns the functions with the most
/// inclusive time, or why there are none.
pub(super) fn profile(tools: &Tools, worker: &mut Worker, ms: u64) -> String {
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
