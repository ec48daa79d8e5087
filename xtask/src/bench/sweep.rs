//! The highest bind rate portwatch keeps up with (a sweep of steps, each with a fresh
//! portwatch), and a forced overflow that checks lost events are counted and shown.

use std::{path::Path, thread};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{
    SETTLE, Settings, nproc,
    tracer::{self, Backend, Mode, Tools, Tracer, TracerStats},
    workload::Worker,
};

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
    /// Binds neither reported as events nor counted as lost (in the kernel, or unexplained at
    /// exit): must be 0.
    pub fn unaccounted(&self) -> i64 {
        let seen = self.stats.worker_events.unwrap_or(0)
            + self.stats.lost.unwrap_or(0)
            + self.stats.unexplained_at_exit.unwrap_or(0);
        self.binds as i64 - seen as i64
    }
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
pub(super) fn sweep(
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
    if cpus > 1 {
        steps.push(storm(tools, bindloop, s)?);
    }
    Ok(steps)
}

/// Two loops on both CPUs, each bind on port 0: every bind gets a new port, so nothing can be
/// shared between events (the "storm"); what counts is how many are explained.
fn storm(tools: &Tools, bindloop: &Path, s: &Settings) -> Result<SweepStep> {
    let mut a = Worker::spawn(bindloop, 0, 0)?;
    let mut b = Worker::spawn(bindloop, 0, 1)?;
    sweep_step(
        tools,
        &mut [&mut a, &mut b],
        "port-0 storm: 2 loops flat out, a new port every bind",
        None,
        s.sweep_ms,
    )
}

/// Pauses portwatch (SIGSTOP) while the loop makes `binds` binds, resumes it, and stops it at
/// once: most of the burst cannot fit in the ring, and every lost event must show up in the
/// stderr warning, the JSON `lost` records and the summary; and portwatch must exit within a
/// second with a full ring still waiting, counting what it did not explain.
pub(super) fn overflow(tools: &Tools, worker: &mut Worker, binds: u64) -> Result<SweepStep> {
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
    let stats = running.stop_at_once(&[worker.pid])?;
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
