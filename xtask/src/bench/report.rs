//! Turns the measurements into the table, the target verdicts and BENCHMARKS.md.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    attach::{AttachSample, civil_from_days},
    bpfcost::BpfCost,
    guest::{
        GuestResults, VM_BINDS_PER_CONNECT, VM_CALL_CONFIGS, VM_CONFIGS, VM_GETPPIDS_PER_BIND,
    },
    rounds::Measurement,
    stats::Spread,
    sweep::SweepStep,
    tracer::{Backend, Mode, Tracer},
};

/// The issue's limits (issue 9). Each is written here only: the targets' names print them.
const ROW3_MIN_SPEED: f64 = 0.96;
const ROW3_VS_ROW2_MAX: f64 = 1.01;
const ROW4_MIN_SPEED: f64 = 0.88;
/// The peer's time per bind over portwatch's (row 6 / row 4).
const PEER_MIN_RATIO: f64 = 1.6;
const CPU_PER_100K_MAX_S: f64 = 0.25;
const ATTACH_MAX_MS: f64 = 100.0;
const RSS_MAX_KIB: u64 = 30 * 1024;
/// Exit after SIGINT with a full ring waiting.
const STOP_MAX_MS: f64 = 1000.0;

pub struct Machine {
    pub nproc: usize,
    pub model: String,
    pub kernel: String,
}

impl Machine {
    pub fn here() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            nproc: super::nproc(),
            model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
                .unwrap_or_else(|| "unknown".into()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

pub struct Results {
    pub machine: Machine,
    pub command: String,
    pub started_utc: String,
    pub duration_s: f64,
    pub source: String,
    pub rounds: usize,
    pub binds: u64,
    pub warmup: u64,
    pub cpu: usize,
    pub configs: Vec<Tracer>,
    /// Timed getppid() calls per measurement, and the configurations that made them.
    pub getppids: u64,
    pub getppid_configs: Vec<Tracer>,
    /// Timed connect()s per measurement, and the configurations that made them.
    pub connects: u64,
    pub connect_configs: Vec<Tracer>,
    pub measurements: Vec<Measurement>,
    pub bpf: Vec<BpfCost>,
    pub sweep: Vec<SweepStep>,
    pub overflow: SweepStep,
    pub attach: Vec<AttachSample>,
    /// One run per VM kernel (empty when not run).
    pub vm: Vec<Result<GuestResults, String>>,
    pub vm_requested: bool,
    pub foreign_before: Vec<String>,
    pub foreign_after: Vec<String>,
    pub discarded_rounds: usize,
    pub disturbance: super::rounds::Disturbance,
    pub load_before: String,
    pub load_after: String,
    pub profile: Option<String>,
}

/// One configuration over all rounds.
struct Row {
    tracer: Tracer,
    ns: Option<Spread>,
    /// Untraced time / this time, per round: 1.0 = free, 0.5 = half the binds per second.
    speed: Option<Spread>,
    added_ns: Option<Spread>,
    events: Option<u64>,
    lost: Option<u64>,
    cpu_per_100k: Option<f64>,
    rss_kib: Option<u64>,
    killed: usize,
    errors: u64,
}

fn of(ms: &[Measurement], t: Tracer) -> BTreeMap<usize, &Measurement> {
    ms.iter()
        .filter(|m| m.tracer == t)
        .map(|m| (m.round, m))
        .collect()
}

/// `f(a, b)` of the time per bind, for every round that measured both.
fn paired(ms: &[Measurement], a: Tracer, b: Tracer, f: impl Fn(f64, f64) -> f64) -> Option<Spread> {
    paired_by(ms, a, b, |m| Some(m.ns_per_bind), f)
}

/// `f(value(a), value(b))` for every round in which both have the value.
fn paired_by(
    ms: &[Measurement],
    a: Tracer,
    b: Tracer,
    value: impl Fn(&Measurement) -> Option<f64>,
    f: impl Fn(f64, f64) -> f64,
) -> Option<Spread> {
    let (a, b) = (of(ms, a), of(ms, b));
    let v: Vec<f64> = a
        .iter()
        .filter_map(|(r, x)| Some(f(value(x)?, value(b.get(r)?)?)))
        .collect();
    Spread::of(&v)
}

/// The time per getppid() call, where the configuration timed one.
fn getppid_ns(m: &Measurement) -> Option<f64> {
    m.ns_per_getppid
}

/// The time per successful connect(), where the configuration timed one.
fn connect_ns(m: &Measurement) -> Option<f64> {
    m.ns_per_connect
}

/// The table of a loop timed in the slots of rows 1, 2 and 4 (getppid(), connect()): time per
/// `call`, speed against untraced, the ns added per `unit`, and the time against the empty
/// programs'.
fn per_call_table(
    out: &mut String,
    ms: &[Measurement],
    configs: &[Tracer],
    call: &str,
    unit: &str,
    value: fn(&Measurement) -> Option<f64>,
) {
    // The host's tables have the empty-program floor, and rows numbered as the main table's;
    // the VM's have neither.
    let host = configs.contains(&Tracer::EmptyBpf);
    let _ = writeln!(
        out,
        "|{} Configuration | ns per {call}, median (min–max) | Speed vs untraced, median (min–max of rounds) | Added ns per {unit} |{}\n\
         |{}---|---|---|---|{}",
        if host { " # |" } else { "" },
        if host {
            " Time / the empty programs' time |"
        } else {
            ""
        },
        if host { "---|" } else { "" },
        if host { "---|" } else { "" },
    );
    for &t in configs {
        let ns: Vec<f64> = of(ms, t).values().filter_map(|m| value(m)).collect();
        let (untraced, floor) = (t == Tracer::None, t == Tracer::EmptyBpf);
        let vs_floor = paired_by(ms, t, Tracer::EmptyBpf, value, |x, e| x / e);
        if host {
            let _ = write!(out, "| {} ", row_number(t));
        }
        let _ = write!(
            out,
            "| {} | {} | {} | {} |",
            t.label(),
            spread_ns(&Spread::of(&ns)),
            if untraced {
                "100%".into()
            } else {
                spread_pct(&paired_by(ms, Tracer::None, t, value, |u, x| u / x))
            },
            if untraced {
                "–".into()
            } else {
                spread_ns(&paired_by(ms, t, Tracer::None, value, |x, u| x - u))
            },
        );
        if host {
            let _ = write!(
                out,
                " {} |",
                match vs_floor {
                    _ if untraced || floor => "–".into(),
                    Some(v) => format!("{:.3} ({:.3}–{:.3})", v.median, v.min, v.max),
                    None => "n/a".into(),
                }
            );
        }
        out.push('\n');
    }
}

/// What the tracers cost a successful connect(): the connect loop under rows 1, 2, 4. The
/// issue's targets: ≥ 0.98 of untraced on fexit (measured in the VM section), within 1% of the
/// empty programs on the tracepoint backend.
fn connect_section(r: &Results, out: &mut String) {
    let ms = &r.measurements;
    let _ = writeln!(
        out,
        "In the same slots of the same rounds as rows 1, 2 and 4, the loop makes {} connect()s \
         (after {} warm-up ones) to a listener in its own namespace, each accepted and both ends \
         closed (the client with SO_LINGER 0, so no TIME_WAIT piles up). They all succeed: \
         portwatch's connect() program reads the return value and stops (it reports only the \
         errnos about the local port), so its cost should be the hook's, the empty programs'.\n",
        r.connects,
        r.connects / 10
    );
    per_call_table(
        out,
        ms,
        &r.connect_configs,
        "connect()",
        "connect",
        connect_ns,
    );
    let json = Tracer::Portwatch(Backend::Tracepoint, Mode::Json);
    if let Some(v) = paired_by(ms, json, Tracer::EmptyBpf, connect_ns, |x, e| x / e) {
        let _ = writeln!(
            out,
            "\nTarget (tracepoint): portwatch's time per connect() within 1% of the empty \
             programs': {:.3}× (median of rounds), {}.",
            v.median,
            if v.median <= 1.01 {
                "met"
            } else {
                "**missed**"
            }
        );
    }
}

/// What the tracers cost a process that never binds: the getppid() loop under rows 1, 2, 4.
fn getppid_section(r: &Results, out: &mut String) {
    let ms = &r.measurements;
    let _ = writeln!(
        out,
        "In the same slots of the same rounds as rows 1, 2 and 4 (the same tracer, just attached, \
         before the binds), the loop makes {} `syscall(SYS_getppid)` calls after {} warm-up calls. \
         While any program is attached to a syscall tracepoint, the kernel sends every task on the \
         machine through its slow syscall path (the syscall-tracepoint work flag is set on every \
         thread), whether the task ever binds or not.\n",
        r.getppids,
        r.getppids / 10
    );
    per_call_table(out, ms, &r.getppid_configs, "getppid()", "call", getppid_ns);
    let json = Tracer::Portwatch(Backend::Tracepoint, Mode::Json);
    let added = |t| paired_by(ms, t, Tracer::None, getppid_ns, |x, u| x - u);
    let base = Spread::of(
        &of(ms, Tracer::None)
            .values()
            .filter_map(|m| getppid_ns(m))
            .collect::<Vec<_>>(),
    );
    let speed = paired_by(ms, Tracer::None, json, getppid_ns, |u, x| u / x);
    let vs_floor = paired_by(ms, json, Tracer::EmptyBpf, getppid_ns, |x, e| x / e);
    let _ = match (base, added(json), added(Tracer::EmptyBpf), speed, vs_floor) {
        (Some(b), Some(p), Some(e), Some(sp), Some(v)) => writeln!(
            out,
            "\nWhat it means here: with portwatch attached, each system call of a process that never \
             binds (here getppid(), {:.0} ns untraced) changes by {:+.0} ns ({} of its untraced \
             speed), and by {:+.0} ns with only the empty programs on the same hooks; portwatch's \
             time is {:.3}× the empty programs' (median of rounds), so {}.",
            b.median,
            p.median,
            pct(sp.median),
            e.median,
            v.median,
            if v.median > 1.02 {
                "other processes pay more with portwatch attached than with the empty programs alone"
            } else if v.median >= 0.98 {
                "what other processes pay is the hooks' cost (the slow syscall path), not portwatch's programs, which run on bind() and listen() only"
            } else {
                "other processes paid less with portwatch attached than with the empty programs alone, which the hooks cannot explain (portwatch's programs only add to them): read that difference as this run's scatter"
            }
        ),
        _ => writeln!(
            out,
            "\nNot measured in every configuration (see the table)."
        ),
    };
}

fn rows(ms: &[Measurement], configs: &[Tracer]) -> Vec<Row> {
    configs
        .iter()
        .map(|&t| {
            let mine = of(ms, t);
            let ns: Vec<f64> = mine.values().map(|m| m.ns_per_bind).collect();
            let stats: Vec<_> = mine.values().filter_map(|m| m.stats.as_ref()).collect();
            let sum = |f: &dyn Fn(&super::tracer::TracerStats) -> Option<u64>| {
                let v: Vec<u64> = stats.iter().filter_map(|s| f(s)).collect();
                (!v.is_empty()).then(|| v.iter().sum::<u64>())
            };
            let events = sum(&|s| s.events);
            let cpu: f64 = stats.iter().map(|s| s.cpu_s).sum();
            Row {
                tracer: t,
                ns: Spread::of(&ns),
                speed: paired(ms, Tracer::None, t, |u, x| u / x),
                added_ns: paired(ms, t, Tracer::None, |x, u| x - u),
                events,
                lost: sum(&|s| s.lost),
                cpu_per_100k: events.filter(|&e| e > 0).map(|e| cpu * 1e5 / e as f64),
                rss_kib: stats.iter().map(|s| s.hwm_kib.max(s.maxrss_kib)).max(),
                killed: stats.iter().filter(|s| s.killed).count(),
                errors: mine.values().map(|m| m.errors).sum(),
            }
        })
        .collect()
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn spread_pct(s: &Option<Spread>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{} ({}–{})", pct(s.median), pct(s.min), pct(s.max)),
        Some(s) => pct(s.median),
        None => "n/a".into(),
    }
}

fn spread_ns(s: &Option<Spread>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max),
        Some(s) => format!("{:.0}", s.median),
        None => "n/a".into(),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("–".into(), |v| v.to_string())
}

fn row_number(t: Tracer) -> &'static str {
    match t {
        Tracer::None => "1",
        Tracer::EmptyBpf => "2",
        Tracer::Portwatch(_, Mode::Filtered) => "3",
        Tracer::Portwatch(_, Mode::Json) => "4",
        Tracer::Portwatch(_, Mode::Human) => "5",
        Tracer::Peer => "6",
        // VM only: the VM table has no row numbers.
        Tracer::Portwatch(_, Mode::JsonPaused) | Tracer::EmptyFexit | Tracer::BusyOtherCpu => "–",
    }
}

fn main_table(r: &Results) -> String {
    let mut s = String::new();
    s.push_str(
        "| # | Configuration | ns per bind, median (min–max) | Speed vs untraced, median (min–max of rounds) | Same, undisturbed rounds only | Added ns per bind | BPF run time per bind (bpf_stats) | Events handled | Lost | Tracer CPU s per 100k events | Tracer peak RSS |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let clean = r.undisturbed();
    for row in rows(&r.measurements, &r.configs) {
        let untraced = row.tracer == Tracer::None;
        let clean_speed = paired(&clean, Tracer::None, row.tracer, |u, x| u / x);
        let _ = writeln!(
            s,
            "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row_number(row.tracer),
            row.tracer.label(),
            if row.killed > 0 {
                format!(" (**ignored SIGINT {}×, killed**)", row.killed)
            } else if row.errors > 0 {
                format!(" (**{} binds failed**)", row.errors)
            } else {
                String::new()
            },
            spread_ns(&row.ns),
            if untraced {
                "100%".into()
            } else {
                spread_pct(&row.speed)
            },
            match clean_speed {
                _ if untraced => "100%".into(),
                Some(c) => format!("{} ({} rounds)", spread_pct(&Some(c)), c.n),
                None => "no undisturbed round".into(),
            },
            if untraced {
                "–".into()
            } else {
                spread_ns(&row.added_ns)
            },
            r.bpf
                .iter()
                .find(|c| c.tracer == row.tracer)
                .map_or("–".into(), |c| format!("{:.0} ns", c.ns_per_bind)),
            opt(row.events),
            opt(row.lost),
            row.cpu_per_100k.map_or("–".into(), |c| format!("{c:.2}")),
            row.rss_kib.map_or("–".into(), mib),
        );
    }
    s
}

struct Target {
    name: String,
    measured: String,
    met: Option<bool>,
}

/// Issue 9: a storm of all-different ports is explained at this rate or better.
const STORM_EXPLAINED_PER_S: f64 = 50_000.0;

fn targets(r: &Results) -> Vec<Target> {
    let ms = &r.measurements;
    let empty = Tracer::EmptyBpf;
    let filtered = Tracer::Portwatch(Backend::Tracepoint, Mode::Filtered);
    let json = Tracer::Portwatch(Backend::Tracepoint, Mode::Json);
    let mut out = Vec::new();

    let clean = r.undisturbed();
    let clean_note = |f: &dyn Fn(&[Measurement]) -> Option<Spread>,
                      fmt: &dyn Fn(Spread) -> String| match f(&clean) {
        Some(c) if clean.len() < ms.len() => format!("; undisturbed rounds only: {}", fmt(c)),
        _ => String::new(),
    };
    // A row's speed as a share of untraced, per round, against a floor.
    let speed_target = |name: String, t: Tracer, min: f64| {
        let speed = paired(ms, Tracer::None, t, |u, x| u / x);
        Target {
            name,
            measured: format!(
                "{}{}",
                spread_pct(&speed),
                clean_note(&|m| paired(m, Tracer::None, t, |u, x| u / x), &|c| {
                    format!("{} ({} rounds)", pct(c.median), c.n)
                })
            ),
            met: speed.map(|s| s.median >= min),
        }
    };
    out.push(speed_target(
        format!(
            "Row 3 (`--port` filter that never matches) at ≥ {} of row 1's speed",
            pct(ROW3_MIN_SPEED)
        ),
        filtered,
        ROW3_MIN_SPEED,
    ));

    let r32 = paired(ms, filtered, empty, |a, b| a / b);
    let wall = r32.map_or("n/a".into(), |s| {
        format!(
            "wall clock: row 3 / row 2 = {:.3} (rounds {:.3}–{:.3}, IQR {:.3}–{:.3}){}",
            s.median,
            s.min,
            s.max,
            s.q1,
            s.q3,
            clean_note(&|m| paired(m, filtered, empty, |a, b| a / b), &|c| {
                format!("{:.3} ({} rounds)", c.median, c.n)
            })
        )
    });
    // The verdict uses the kernel's own accounting when there is one: the wall-clock ratio
    // scatters more than the 1% it has to resolve.
    let bpf = |t: Tracer| r.bpf.iter().find(|c| c.tracer == t).map(|c| c.ns_per_bind);
    let untraced = of(ms, Tracer::None)
        .values()
        .map(|m| m.ns_per_bind)
        .collect::<Vec<_>>();
    let untraced = Spread::of(&untraced).map(|s| s.median);
    let kernel = match (bpf(filtered), bpf(empty), untraced) {
        (Some(f), Some(e), Some(u)) => Some((f, e, (f - e) / u)),
        _ => None,
    };
    out.push(Target {
        name: format!(
            "Row 3 within {} of row 2 (the empty programs on the same hooks)",
            pct(ROW3_VS_ROW2_MAX - 1.0)
        ),
        measured: match kernel {
            Some((f, e, share)) => format!(
                "kernel (verdict): row 3's programs run {f:.0} ns per bind, row 2's {e:.0} ns: \
                 {:+.0} ns = {:+.1}% of an untraced bind; {wall}",
                f - e,
                share * 100.0
            ),
            None => wall,
        },
        met: match kernel {
            Some((_, _, share)) => Some(share <= ROW3_VS_ROW2_MAX - 1.0),
            None => r32.map(|s| s.median <= ROW3_VS_ROW2_MAX),
        },
    });

    out.push(speed_target(
        format!(
            "Row 4 (every event decoded, explained and written as `--json`) at ≥ {} of row 1's \
             speed",
            pct(ROW4_MIN_SPEED)
        ),
        json,
        ROW4_MIN_SPEED,
    ));

    let r64 = paired(ms, Tracer::Peer, json, |p, j| p / j);
    let wins = {
        let (j, p) = (of(ms, json), of(ms, Tracer::Peer));
        let both: Vec<_> = j.iter().filter_map(|(k, m)| Some((m, p.get(k)?))).collect();
        let won = both
            .iter()
            .filter(|(m, p)| m.ns_per_bind < p.ns_per_bind)
            .count();
        (won, both.len())
    };
    out.push(Target {
        name: format!(
            "Row 6 (bpftrace peer) takes ≥ {PEER_MIN_RATIO}× row 4's time per bind in the same run"
        ),
        measured: r64.map_or("n/a".into(), |s| {
            format!(
                "peer takes {:.2}× portwatch's time per bind (rounds {:.2}–{:.2}); portwatch faster in {}/{} rounds",
                s.median, s.min, s.max, wins.0, wins.1
            )
        }),
        met: r64.map(|s| s.median >= PEER_MIN_RATIO),
    });

    let cpu4 = rows(ms, &[json]).pop().and_then(|row| row.cpu_per_100k);
    out.push(Target {
        name: format!("Row 4's tracer CPU ≤ {CPU_PER_100K_MAX_S} s per 100k events"),
        measured: cpu4.map_or("n/a".into(), |c| {
            // Three decimals: at two, a value just over the target read as the target itself.
            format!("{c:.3} s per 100k events (all rounds together)")
        }),
        met: cpu4.map(|c| c <= CPU_PER_100K_MAX_S),
    });

    let one = r.sweep.first();
    out.push(Target {
        name: "Zero lost events at the highest rate one core produces".into(),
        measured: one.map_or("n/a".into(), |s| {
            format!(
                "{:.0} binds/s from one core: {} lost, {} of {} binds reported",
                s.rate,
                opt(s.stats.lost),
                opt(s.stats.worker_events),
                s.binds
            )
        }),
        met: one.map(|s| s.stats.lost == Some(0) && !s.stats.killed && s.unaccounted() <= 0),
    });

    let storm = r.sweep.iter().find(|s| s.label.starts_with("port-0 storm"));
    let explained_per_s = |s: &SweepStep| s.stats.worker_events.unwrap_or(0) as f64 / s.secs;
    out.push(Target {
        name: format!(
            "A port-0 storm explained (not only counted) at ≥ {:.0}k events/s",
            STORM_EXPLAINED_PER_S / 1000.0
        ),
        measured: storm.map_or("not run (one CPU)".into(), |s| {
            format!(
                "{:.0} binds/s made, {:.0} explained per second, {} lost",
                s.rate,
                explained_per_s(s),
                opt(s.stats.lost)
            )
        }),
        met: storm.map(|s| explained_per_s(s) >= STORM_EXPLAINED_PER_S && !s.stats.killed),
    });
    out.push(Target {
        name: format!(
            "Exit within {} s of SIGINT with a full ring waiting",
            STOP_MAX_MS / 1000.0
        ),
        measured: format!(
            "{:.0} ms ({} events dropped unexplained, counted)",
            r.overflow.stats.stop_ms,
            opt(r.overflow.stats.unexplained_at_exit)
        ),
        met: Some(r.overflow.stats.stop_ms < STOP_MAX_MS && !r.overflow.stats.killed),
    });

    let att = Spread::of(
        &r.attach
            .iter()
            .map(|a| a.to_first_event_ms)
            .collect::<Vec<_>>(),
    );
    out.push(Target {
        name: format!("Attach ≤ {ATTACH_MAX_MS} ms (process start to first event possible)"),
        measured: att.map_or("n/a".into(), |s| {
            format!(
                "median {:.0} ms (max {:.0} ms over {} starts)",
                s.median, s.max, s.n
            )
        }),
        met: att.map(|s| s.median <= ATTACH_MAX_MS),
    });

    let peak = peak_rss(r);
    out.push(Target {
        name: format!(
            "RSS ≤ {} MiB (portwatch's peak over every run above)",
            RSS_MAX_KIB / 1024
        ),
        measured: peak
            .as_ref()
            .map_or("n/a".into(), |(k, w)| format!("{} ({w})", mib(*k))),
        met: peak.map(|(k, _)| k <= RSS_MAX_KIB),
    });
    out
}

/// The highest peak RSS of any portwatch run, and which run it was.
fn peak_rss(r: &Results) -> Option<(u64, String)> {
    let mut all: Vec<(u64, String)> = Vec::new();
    for m in &r.measurements {
        if let (true, Some(s)) = (m.tracer.is_portwatch(), &m.stats) {
            all.push((
                s.hwm_kib.max(s.maxrss_kib),
                format!("row {}", row_number(m.tracer)),
            ));
        }
    }
    for s in r.sweep.iter().chain([&r.overflow]) {
        all.push((
            s.stats.hwm_kib.max(s.stats.maxrss_kib),
            format!("sweep: {}", s.label),
        ));
    }
    for a in &r.attach {
        all.push((a.maxrss_kib, "start-up to first event".into()));
    }
    all.into_iter().max_by_key(|(k, _)| *k)
}

fn sweep_table(steps: &[SweepStep]) -> String {
    let mut s = String::from(
        "| Load | Binds/s made | Binds | Events about them | Lost (summary) | Lost (JSON records) | stderr warnings | Unaccounted | portwatch CPU | Peak RSS |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for st in steps {
        let _ = writeln!(
            s,
            "| {}{} | {:.0} | {} | {} | {} | {} | {} | {} | {:.0}% of a core | {} |",
            st.label,
            if st.stats.killed {
                " (**ignored SIGINT, killed**)"
            } else {
                ""
            },
            st.rate,
            st.binds,
            opt(st.stats.worker_events),
            opt(st.stats.lost),
            opt(st.stats.json_lost),
            st.stats.lost_warnings,
            st.unaccounted().max(0),
            100.0 * st.stats.cpu_s / st.secs.max(1e-9),
            mib(st.stats.hwm_kib.max(st.stats.maxrss_kib)),
        );
    }
    s
}

fn vm_section(r: &Results, out: &mut String) {
    if r.vm.is_empty() {
        out.push_str("Not run (`--no-vm`).\n");
        return;
    }
    for vm in &r.vm {
        vm_kernel(vm, out);
    }
}

fn vm_kernel(vm: &Result<GuestResults, String>, out: &mut String) {
    let g = match vm {
        Ok(g) => g,
        Err(e) => {
            let _ = writeln!(out, "**The VM run failed:** {e}");
            return;
        }
    };
    let _ = writeln!(out, "### {}\n", g.kernel);
    let _ = writeln!(
        out,
        "Kernel {} under QEMU TCG, {} vCPUs (the loop pinned to the last, portwatch free to run on the others); {} rounds × {} binds; \
         boot to power-off {:.0} s. **TCG emulates every instruction: only these ratios, taken inside \
         the VM, mean anything; do not compare them with the host's table.**\n",
        g.kernel, g.nproc, g.rounds, g.binds, g.vm_seconds
    );
    out.push_str(
        "| Configuration (VM) | ns per bind, median (min–max) | Speed vs untraced, median (min–max) | Events | Lost | Loop switched out per 1000 binds, median (max) |\n|---|---|---|---|---|---|\n",
    );
    for row in rows(&g.measurements, &VM_CONFIGS) {
        let switched = Spread::of(
            &of(&g.measurements, row.tracer)
                .values()
                .filter_map(|m| Some(m.loop_preempted? as f64 * 1000.0 / m.binds.max(1) as f64))
                .collect::<Vec<_>>(),
        );
        let _ = writeln!(
            out,
            "| {}{} | {} | {} | {} | {} | {} |",
            row.tracer.label(),
            if row.killed > 0 { " (**killed**)" } else { "" },
            spread_ns(&row.ns),
            if row.tracer == Tracer::None {
                "100%".into()
            } else {
                spread_pct(&row.speed)
            },
            opt(row.events),
            opt(row.lost),
            switched.map_or("n/a".into(), |s| format!("{:.1} ({:.1})", s.median, s.max)),
        );
    }
    let ms = &g.measurements;
    for mode in [Mode::Filtered, Mode::Json] {
        let ratio = paired(
            ms,
            Tracer::Portwatch(Backend::Fexit, mode),
            Tracer::Portwatch(Backend::Tracepoint, mode),
            |f, t| f / t,
        );
        let _ = writeln!(
            out,
            "\nfexit / tracepoint time per bind, {}: {}",
            if mode == Mode::Json {
                "every event as JSON"
            } else {
                "never-matching filter"
            },
            ratio.map_or("n/a".into(), |s| format!(
                "{:.3} (rounds {:.3}–{:.3})",
                s.median, s.min, s.max
            ))
        );
    }
    vm_breakdown(out, g);
    let _ = writeln!(
        out,
        "\nIn the same slots, {} getppid() calls (a process that never binds) and {} connect()s \
         to a listener in the loop's namespace, each accepted and closed (all succeed):\n",
        g.binds * VM_GETPPIDS_PER_BIND,
        g.binds / VM_BINDS_PER_CONNECT
    );
    per_call_table(out, ms, &VM_CALL_CONFIGS, "getppid()", "call", getppid_ns);
    out.push('\n');
    per_call_table(
        out,
        ms,
        &VM_CALL_CONFIGS,
        "connect()",
        "connect",
        connect_ns,
    );
    out.push('\n');
    if g.attach.is_empty() {
        let _ = writeln!(
            out,
            "- start to first event: not sampled in the VM in this run (`--vm-attach-samples 0`). \
             Sampling attaches while a loop binds on the other vCPU, and on 6.12 under TCG that \
             crashed the guest in two runs out of two (an `int3` oops in the loop, at a site the \
             kernel was patching: `inet_bind+5` for fexit, `syscall_exit_to_user_mode_prepare` \
             for the tracepoint). That looks like a race between TCG's vCPUs and the kernel's \
             live code patching; it was not seen on this host nor in the scenarios."
        );
    }
    for b in [Backend::Tracepoint, Backend::Fexit] {
        let v: Vec<&AttachSample> = g.attach.iter().filter(|a| a.backend == b).collect();
        let sp = Spread::of(&v.iter().map(|a| a.to_first_event_ms).collect::<Vec<_>>());
        let rep = Spread::of(
            &v.iter()
                .filter_map(|a| a.reported_ms.map(|x| x as f64))
                .collect::<Vec<_>>(),
        );
        if let Some(sp) = sp {
            let _ = writeln!(
                out,
                "- start to first event, {} backend (VM, emulated): median {:.0} ms; portwatch's own \"attached in\": {}",
                b.name(),
                sp.median,
                rep.map_or("n/a".into(), |r| format!("{:.0} ms", r.median))
            );
        }
    }
}

/// What the fexit `--json` row's loss is made of, from the rows that take one part away at a
/// time (per-round differences to untraced), and the programs' own run time (bpf_stats).
fn vm_breakdown(out: &mut String, g: &GuestResults) {
    let ms = &g.measurements;
    let json = Tracer::Portwatch(Backend::Fexit, Mode::Json);
    let paused = Tracer::Portwatch(Backend::Fexit, Mode::JsonPaused);
    let added = |t| paired(ms, t, Tracer::None, |x, u| x - u).map(|s| s.median);
    let untraced = Spread::of(
        &of(ms, Tracer::None)
            .values()
            .map(|m| m.ns_per_bind)
            .collect::<Vec<_>>(),
    )
    .map(|s| s.median);
    let speed = |t| paired(ms, Tracer::None, t, |u, x| u / x);
    if !g.bpf.is_empty() {
        out.push_str(
            "\nProgram run time inside the VM (kernel.bpf_stats_enabled=1, a pass of its own after the rounds, \
             so the timed rounds never pay for the stats; the tracer's programs read from its \
             /proc/PID/fdinfo):\n\n\
             | Configuration | Program | Runs per bind | ns per run | ns per bind | Share of an untraced bind |\n\
             |---|---|---|---|---|---|\n",
        );
        for c in &g.bpf {
            for p in &c.programs {
                let per_bind = p.run_time_ns as f64 / c.binds.max(1) as f64;
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.2} | {:.0} | {:.0} | {} |",
                    c.tracer.label(),
                    p.name,
                    p.run_cnt as f64 / c.binds.max(1) as f64,
                    p.run_time_ns as f64 / p.run_cnt.max(1) as f64,
                    per_bind,
                    untraced.map_or("n/a".into(), |u| pct(per_bind / u)),
                );
            }
        }
    }
    let (Some(j), Some(p), Some(e), Some(u)) = (
        added(json),
        added(paused),
        added(Tracer::EmptyFexit),
        untraced,
    ) else {
        return;
    };
    let switched = |t| {
        Spread::of(
            &of(ms, t)
                .values()
                .filter_map(|m| Some(m.loop_preempted? as f64 * 1000.0 / m.binds.max(1) as f64))
                .collect::<Vec<_>>(),
        )
        .map_or("n/a".into(), |s| format!("{:.1}", s.median))
    };
    // What the reader's user space adds while the loop runs: said as measured, and explained
    // only when there is something to explain (a negative difference is noise, not a cost).
    let user_space = if j - p > 0.0 {
        format!(
            "so {:.0} ns come from portwatch's user-space work while the loop runs. It does not \
             run on the loop's vCPU (the loop was switched out {} times per 1000 binds with it, \
             {} untraced): under TCG each vCPU is a host thread, and the reader's competes with \
             the loop's for the host's cores",
            j - p,
            switched(json),
            switched(Tracer::None),
        )
    } else {
        format!(
            "so portwatch's user-space work while the loop runs added nothing measurable in this \
             run ({:.0} ns, within the rounds' spread)",
            j - p
        )
    };
    let _ = writeln!(
        out,
        "\nWhere the fexit `--json` row's time goes (medians of per-round differences to untraced, \
         {u:.0} ns per bind): {j:.0} ns added in all ({}); with portwatch stopped during the \
         binds (its programs still run, its user space does not) {p:.0} ns ({}), of which the empty \
         programs on the same hooks (the trampolines) {e:.0} ns ({}); {user_space}. The rest is \
         portwatch's program itself (its run time per bind is in the table above). A shell \
         busy-looping on the other vCPU, nothing traced, made the loop {}.",
        spread_pct(&speed(json)),
        spread_pct(&speed(paused)),
        spread_pct(&speed(Tracer::EmptyFexit)),
        added(Tracer::BusyOtherCpu).map_or("n/a".into(), |b| format!(
            "{b:.0} ns slower ({})",
            spread_pct(&speed(Tracer::BusyOtherCpu))
        )),
    );
    let json_speed = speed(json);
    let _ = writeln!(
        out,
        "\nTarget (issue 20): fexit `--json` at ≥ 90% of untraced: {} — **{}**; without the \
         user-space part (portwatch stopped during the binds): {}.",
        spread_pct(&json_speed),
        if json_speed.is_some_and(|s| s.median >= 0.90) {
            "met"
        } else {
            "not met"
        },
        spread_pct(&speed(paused)),
    );
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    s.push_str("# Benchmarks\n\n");
    let _ = writeln!(
        s,
        "Generated by `{}` on {} in {:.0} s. Do not edit by hand: rerun the command.\n",
        r.command, r.started_utc, r.duration_s
    );
    let _ = writeln!(
        s,
        "- Machine: {} CPUs ({}), kernel {}\n- portwatch: release build of {}\n- Load average before / after: {} / {}\n",
        r.machine.nproc, r.machine.model, r.machine.kernel, r.source, r.load_before, r.load_after
    );
    s.push_str("## What tracing costs a bind() loop (tracepoint backend, this machine)\n\n");
    let _ = writeln!(
        s,
        "Workload: xtask/bench/bindloop.c, `socket(AF_INET, SOCK_STREAM)` + `setsockopt(SO_REUSEADDR)` + \
         `bind(127.0.0.1:port)` + `close`, in its own network namespace, pinned to CPU {}; {} timed binds \
         after {} warm-up binds per measurement, {} rounds. In each round every configuration runs once \
         (the order rotates by one per round) and its time is divided by the same round's untraced time; \
         the table gives the median of those per-round ratios and their range. Tracers are not pinned. \
         Tracer CPU and RSS are read from /proc/PID/stat and /proc/PID/status (and wait4's rusage). \
         \"BPF run time per bind\" comes from a separate pass with kernel.bpf_stats_enabled=1 (never on \
         during the timed rounds): the run time of the tracer's programs divided by the binds made.\n",
        r.cpu, r.binds, r.warmup, r.rounds
    );
    s.push_str(&main_table(r));
    s.push_str("\n## Targets\n\n| Target | Measured | Met |\n|---|---|---|\n");
    for t in targets(r) {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            t.name,
            t.measured,
            match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            }
        );
    }
    if !r.getppid_configs.is_empty() {
        s.push_str("\n## What portwatch costs processes that never bind (a getppid() loop)\n\n");
        getppid_section(r, &mut s);
    }
    if !r.connect_configs.is_empty() {
        s.push_str("\n## What portwatch costs a successful connect() (a connect loop)\n\n");
        connect_section(r, &mut s);
    }
    s.push_str("\n## Keeping up: bind rate vs lost events (portwatch --json > file)\n\n");
    s.push_str(
        "A fresh portwatch per step. \"Events about them\" counts the JSON records of the bench's own \
         binds; \"Unaccounted\" = binds − those records − lost, and must be 0: nothing may vanish \
         silently.\n\n",
    );
    s.push_str(&sweep_table(&r.sweep));
    let clean = r
        .sweep
        .iter()
        .filter(|st| st.stats.lost == Some(0) && !st.stats.killed)
        .map(|st| st.rate)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let _ = writeln!(
        s,
        "\nHighest rate with zero lost events: {}{}.\n",
        clean.map_or("none of the rates tried".into(), |c| format!(
            "{c:.0} binds/s"
        )),
        if r.sweep.iter().all(|st| st.stats.lost == Some(0)) {
            " (the most this machine's cores could produce; the limit is above it)"
        } else {
            ""
        }
    );
    s.push_str("### Past the limit: lost events are counted and shown\n\n");
    s.push_str(
        "portwatch is paused with SIGSTOP while the loop makes a burst of binds about three times \
         what its ring buffer holds, then resumed and sent SIGINT at once, with the full ring \
         still waiting.\n\n",
    );
    s.push_str(&sweep_table(std::slice::from_ref(&r.overflow)));
    let o = &r.overflow.stats;
    let shown = o.lost.unwrap_or(0) > 0
        && o.lost_warnings > 0
        && o.json_lost == o.lost
        && o.json_summary_lost == o.lost
        && r.overflow.unaccounted() <= 0;
    let _ = writeln!(
        s,
        "\nVerdict: {} (summary lost {}, JSON `lost` records sum {}, JSON summary `lost` {}, {} stderr warnings, {} binds unaccounted).\n",
        if shown {
            "every lost event is counted and shown"
        } else {
            "**lost events are NOT all shown**"
        },
        opt(o.lost),
        opt(o.json_lost),
        opt(o.json_summary_lost),
        o.lost_warnings,
        r.overflow.unaccounted().max(0)
    );
    let _ = writeln!(
        s,
        "Stopping with a backlog: exited {:.0} ms after SIGINT (target: under {} s), {} events \
         still waiting were counted as `unexplained_at_exit` and dropped.\n",
        o.stop_ms,
        STOP_MAX_MS / 1000.0,
        opt(o.unexplained_at_exit)
    );
    s.push_str("## Load + attach time (tracepoint backend)\n\n");
    s.push_str(
        "From spawning `portwatch trace --json --count 1 --port <loop's port>` to the kernel timestamp of \
         the first event, while the loop binds every few µs: exec, BTF parsing, layout, load and attach.\n\n\
         | Start | To first event | portwatch's \"attached in\" (load + attach only) | Peak RSS |\n|---|---|---|---|\n",
    );
    for (i, a) in r.attach.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.0} ms | {} | {} |",
            i + 1,
            a.to_first_event_ms,
            a.reported_ms.map_or("n/a".into(), |m| format!("{m} ms")),
            mib(a.maxrss_kib)
        );
    }
    s.push_str("\n## fexit vs tracepoint (TCG VM only)\n\n");
    vm_section(r, &mut s);
    if let Some(p) = &r.profile {
        let _ = writeln!(
            s,
            "\n## Profile of portwatch (perf, cpu-clock)\n\n```\n{p}\n```"
        );
    }
    s.push_str("\n## Noise\n\n");
    let kept_disturbed = r
        .measurements
        .iter()
        .filter(|m| m.foreign_tracer || m.other_cpu > r.disturbance.max_other_cpu)
        .count();
    let other = Spread::of(
        &r.measurements
            .iter()
            .map(|m| m.other_cpu)
            .collect::<Vec<_>>(),
    );
    let _ = writeln!(
        s,
        "- Rounds thrown away and rerun because another tracer was attached to bind()/listen() or \
         other processes used more than {:.2} cores during a measurement: {}. Kept measurements \
         still disturbed (reruns used up): {} of {}.\n- CPU used by other processes while the loop \
         ran, in cores: median {:.2}, max {:.2}.",
        r.disturbance.max_other_cpu,
        r.discarded_rounds,
        kept_disturbed,
        r.measurements.len(),
        other.map_or(0.0, |o| o.median),
        other.map_or(0.0, |o| o.max),
    );
    for (when, list) in [("before", &r.foreign_before), ("after", &r.foreign_after)] {
        for l in list {
            let _ = writeln!(s, "  - {when}: `{l}`");
        }
    }
    s.push_str(
        "- Single runs of the same loop differ by about ±20% on these shared machines, more when \
         someone else traces; compare the per-round ratios, not absolute times between runs.\n",
    );
    s
}

/// What the terminal gets: the same as the file.
pub fn terminal(r: &Results) -> String {
    markdown(r)
}

impl Results {
    /// Measurements of the rounds in which nothing else competed (see [`super::rounds::Disturbance`]).
    fn undisturbed(&self) -> Vec<Measurement> {
        let bad =
            |m: &Measurement| m.foreign_tracer || m.other_cpu > self.disturbance.max_other_cpu;
        let dirty: std::collections::BTreeSet<usize> = self
            .measurements
            .iter()
            .filter(|m| bad(m))
            .map(|m| m.round)
            .collect();
        self.measurements
            .iter()
            .filter(|m| !dirty.contains(&m.round))
            .cloned()
            .collect()
    }

    /// Configurations or checks without a figure: the bench (and the smoke test) fail on them.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for row in rows(&self.measurements, &self.configs) {
            let measured = of(&self.measurements, row.tracer).len();
            if measured < self.rounds {
                p.push(format!(
                    "{}: {measured} of {} rounds measured",
                    row.tracer.label(),
                    self.rounds
                ));
            }
            if row
                .ns
                .is_none_or(|s| s.median.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
            {
                p.push(format!("{}: no time per bind", row.tracer.label()));
            }
            if row.tracer != Tracer::None && row.tracer != Tracer::EmptyBpf && row.events.is_none()
            {
                p.push(format!("{}: no event count", row.tracer.label()));
            }
            if row.errors > 0 {
                p.push(format!(
                    "{}: {} binds failed",
                    row.tracer.label(),
                    row.errors
                ));
            }
        }
        for &t in &self.connect_configs {
            let timed = of(&self.measurements, t)
                .values()
                .filter(|m| m.ns_per_connect.is_some_and(|c| c > 0.0))
                .count();
            if timed < self.rounds {
                p.push(format!(
                    "connect() loop under {}: {timed} of {} rounds timed",
                    t.label(),
                    self.rounds
                ));
            }
        }
        for &t in &self.getppid_configs {
            let timed = of(&self.measurements, t)
                .values()
                .filter(|m| m.ns_per_getppid.is_some_and(|g| g > 0.0))
                .count();
            if timed < self.rounds {
                p.push(format!(
                    "getppid() loop under {}: {timed} of {} rounds timed",
                    t.label(),
                    self.rounds
                ));
            }
        }
        for t in self.configs.iter().filter(|t| **t != Tracer::None) {
            if !self
                .bpf
                .iter()
                .any(|c| c.tracer == *t && c.ns_per_bind > 0.0)
            {
                p.push(format!("{}: no BPF run time", t.label()));
            }
        }
        if self.sweep.is_empty() {
            p.push("keeping-up sweep: no step".into());
        }
        if self.overflow.stats.lost.is_none() {
            p.push("forced overflow: no lost count".into());
        }
        // Not a speed: a bind neither reported nor counted as lost vanished silently.
        for st in self.sweep.iter().chain(std::iter::once(&self.overflow)) {
            if st.unaccounted() > 0 {
                p.push(format!(
                    "{}: {} binds unaccounted",
                    st.label,
                    st.unaccounted()
                ));
            }
        }
        if self.attach.is_empty() {
            p.push("attach time: no sample".into());
        }
        if peak_rss(self).is_none_or(|(k, _)| k == 0) {
            p.push("peak RSS: not measured".into());
        }
        if self.vm_requested {
            if self.vm.is_empty() {
                p.push("VM: not run".into());
            }
            for vm in &self.vm {
                match vm {
                    Ok(g) => {
                        for t in VM_CONFIGS {
                            if of(&g.measurements, t).len() < g.rounds {
                                p.push(format!(
                                    "VM {}: {} not measured every round",
                                    g.kernel,
                                    t.label()
                                ));
                            }
                        }
                    }
                    Err(e) => p.push(format!("VM: {e}")),
                }
            }
        }
        p
    }
}

/// "2026-11-24 16:31 UTC".
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (y, m, d) = civil_from_days(secs.div_euclid(86400));
    let t = secs.rem_euclid(86400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        t / 3600,
        t % 3600 / 60
    )
}
