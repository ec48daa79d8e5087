//! The main table's measurements: every configuration once per round, alternating, with a
//! round thrown away and run again when something else on the machine disturbed it. Some
//! configurations also time a getppid() loop under the same tracer, in the same slot of the
//! round: what the tracer costs processes that never bind.

use std::thread;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{
    SETTLE, noise,
    tracer::{self, Tools, Tracer, TracerStats},
    workload::{Sample, Worker},
};

/// One configuration run once: the bind loop's figure and the tracer's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    pub round: usize,
    pub tracer: Tracer,
    pub ns_per_bind: f64,
    pub binds: u64,
    pub errors: u64,
    /// ns per getppid() call under the same tracer, for the configurations in
    /// [`Sizes::getppid_on`].
    #[serde(default)]
    pub ns_per_getppid: Option<f64>,
    /// ns per successful connect() (+ accept + close) under the same tracer, for the
    /// configurations in [`Sizes::connect_on`].
    #[serde(default)]
    pub ns_per_connect: Option<f64>,
    pub stats: Option<TracerStats>,
    /// CPU used by everything but the bind loop and the tracer while the loop ran, in cores:
    /// another job on this shared machine competing with the measurement.
    #[serde(default)]
    pub other_cpu: f64,
    /// Someone else's program was attached to bind()/listen() just before or after.
    #[serde(default)]
    pub foreign_tracer: bool,
    /// Times the bind loop was switched out against its will during the timed binds
    /// (nonvoluntary_ctxt_switches): another task ran on its CPU.
    #[serde(default)]
    pub loop_preempted: Option<u64>,
}

/// Whether a round is fit to keep.
#[derive(Clone, Copy, Debug)]
pub struct Disturbance {
    /// Other processes used more than this many cores during a measurement.
    pub max_other_cpu: f64,
    /// Rounds that may be thrown away and rerun, in all.
    pub reruns: usize,
}

/// How much each measurement does.
#[derive(Clone, Copy, Debug)]
pub struct Sizes<'a> {
    /// Timed binds, and untimed ones before them.
    pub binds: u64,
    pub warmup: u64,
    /// Timed getppid() calls (a tenth more warm up), for the tracers in `getppid_on` only.
    pub getppids: u64,
    pub getppid_on: &'a [Tracer],
    /// Timed connect()s (a tenth more warm up), for the tracers in `connect_on` only.
    pub connects: u64,
    pub connect_on: &'a [Tracer],
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
    sizes: Sizes<'_>,
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
            let mut m = measure(tools, worker, tracer, attempt, sizes)
                .with_context(|| format!("round {}: {}", attempt + 1, tracer.label()))?;
            m.foreign_tracer = before || foreign();
            eprintln!(
                "bench: round {}  {:>8.0} ns/bind{}  {}{}{}",
                attempt + 1,
                m.ns_per_bind,
                m.ns_per_getppid
                    .map(|g| format!("  {g:>5.0} ns/getppid"))
                    .unwrap_or_default()
                    + &m.ns_per_connect
                        .map(|c| format!("  {c:>5.0} ns/connect"))
                        .unwrap_or_default(),
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
    sizes: Sizes<'_>,
) -> Result<Measurement> {
    thread::sleep(SETTLE);
    let running = tracer::start(tools, tracer, &format!("r{round}"))?;
    let wpid = worker.pid as i32;
    let ours = |r: &Option<tracer::Running>| {
        tracer::proc_cpu_s(wpid).unwrap_or(0.0)
            + r.as_ref()
                .map_or(0.0, |r| tracer::proc_cpu_s(r.pid).unwrap_or(0.0))
    };
    let (busy0, ours0) = (noise::busy_cpu_s(), ours(&running));
    // The getppid() loop first, while the tracer has no events to catch up on.
    let getppid = if sizes.getppids > 0 && sizes.getppid_on.contains(&tracer) {
        Some(worker.getppid(sizes.getppids, sizes.getppids / 10)?)
    } else {
        None
    };
    let connect = if sizes.connects > 0 && sizes.connect_on.contains(&tracer) {
        Some(worker.connect(sizes.connects, sizes.connects / 10)?)
    } else {
        None
    };
    // Mode::JsonPaused: portwatch stopped during the binds, resumed to handle them all after.
    let pause = matches!(tracer, Tracer::Portwatch(_, tracer::Mode::JsonPaused));
    let paused = running.as_ref().filter(|_| pause);
    if let Some(r) = paused {
        r.signal(libc::SIGSTOP);
    }
    let preempted0 = tracer::proc_status_kib(wpid, "nonvoluntary_ctxt_switches:");
    let sample = worker.run(sizes.binds, sizes.warmup);
    let preempted = tracer::proc_status_kib(wpid, "nonvoluntary_ctxt_switches:")
        .zip(preempted0)
        .map(|(b, a)| b.saturating_sub(a));
    if let Some(r) = paused {
        r.signal(libc::SIGCONT);
    }
    let sample = sample?;
    let (busy1, ours1) = (noise::busy_cpu_s(), ours(&running));
    let timed_s = |s: &Sample, warmup: u64| {
        s.ns as f64 / 1e9 * (s.binds + warmup) as f64 / s.binds.max(1) as f64
    };
    let secs = timed_s(&sample, sizes.warmup)
        + getppid.map_or(0.0, |g| timed_s(&g, sizes.getppids / 10))
        + connect.map_or(0.0, |c| timed_s(&c, sizes.connects / 10));
    let stats = match running {
        Some(r) => Some(r.stop(&[worker.pid])?),
        None => None,
    };
    Ok(Measurement {
        round,
        tracer,
        ns_per_bind: sample.ns_per_bind(),
        binds: sample.binds,
        errors: sample.errors + connect.map_or(0, |c| c.errors),
        ns_per_getppid: getppid.map(|g| g.ns_per_bind()),
        ns_per_connect: connect.map(|c| c.ns_per_bind()),
        stats,
        other_cpu: (((busy1 - busy0) - (ours1 - ours0)) / secs.max(1e-3)).max(0.0),
        foreign_tracer: false,
        loop_preempted: preempted,
    })
}
