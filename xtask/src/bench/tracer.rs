//! The tracers the bench compares: starting one, knowing when it is attached, and stopping it
//! with its figures (events, lost events, CPU time, peak RSS).
//!
//! CPU time and RSS come from /proc/PID/stat and /proc/PID/status while the tracer still runs,
//! taken once it has gone idle after the workload (so the figures cover the events, not the
//! start-up or the exit), plus `wait4`'s rusage for the peak over the whole life.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

/// The start of portwatch's ready line on stderr.
pub const PORTWATCH_READY: &str = "portwatch: tracing bind() and listen() with the";

/// How long a tracer may take to attach, or to exit after SIGINT, before it counts as hung.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Empty programs on the hooks portwatch's tracepoint backend uses, one per syscall at its exit
/// (portwatch reads the arguments from the registers saved at entry): the cost of the hook
/// itself (bpftrace compiles `{ }` to `r0 = 0; exit`, 2 instructions). The BEGIN probe is a
/// uprobe in bpftrace's own process, off the bind path; it says "attached".
const EMPTY_BT: &str = "BEGIN { printf(\"READY\\n\"); }\n\
tracepoint:syscalls:sys_exit_bind, tracepoint:syscalls:sys_exit_listen, \
tracepoint:syscalls:sys_exit_connect { }\n";

/// The peer script (row 6), kept in the repo as the comparison.
const PEER_BT: &str = include_str!("../../bench/peer.bt");

pub use portwatch_common::Backend;

/// How the bench's JSON (rounds from the VM, cached results) writes a [`Backend`]: by its
/// variant's name, as it always has.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Backend")]
pub enum BackendDef {
    Tracepoint,
    Fexit,
}

/// What portwatch does with the events it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// `--port` on a port nobody binds: every event is dropped in the kernel.
    Filtered,
    /// Every event decoded, explained and written as `--json` to a file.
    Json,
    /// The same in the human format.
    Human,
    /// As [`Mode::Json`], but stopped (SIGSTOP) while the timed binds run and resumed after
    /// them: it still decodes, explains and writes every event (the ring holds a whole
    /// measurement's), only not on the other vCPU while the loop is timed. Separates what its
    /// programs cost the caller from what its user-space work costs the VM (VM only).
    JsonPaused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Tracer {
    None,
    EmptyBpf,
    Portwatch(#[serde(with = "BackendDef")] Backend, Mode),
    Peer,
    /// Empty fexit programs on the functions the fexit backend hooks (VM only: fexit_floor.rs).
    EmptyFexit,
    /// Untraced, with a shell spinning in a loop on the other vCPU (VM only): what any busy
    /// process there costs the loop's vCPU under TCG.
    BusyOtherCpu,
}

impl Tracer {
    pub fn label(self) -> String {
        match self {
            Tracer::None => "untraced".into(),
            Tracer::EmptyBpf => {
                "empty BPF programs on portwatch's hooks, sys_exit_bind + sys_exit_listen + sys_exit_connect (bpftrace `{ }`)"
                    .into()
            }
            Tracer::Portwatch(b, Mode::Filtered) => {
                format!(
                    "portwatch --backend {} --port {FILTER_PORT} (never matches)",
                    b.name()
                )
            }
            Tracer::Portwatch(b, Mode::Json) => {
                format!("portwatch --backend {} --json > file", b.name())
            }
            Tracer::Portwatch(b, Mode::Human) => {
                format!("portwatch --backend {} --color never > file", b.name())
            }
            Tracer::Portwatch(b, Mode::JsonPaused) => format!(
                "portwatch --backend {} --json > file, stopped (SIGSTOP) during the timed binds",
                b.name()
            ),
            Tracer::Peer => "peer: bpftrace xtask/bench/peer.bt > file".into(),
            Tracer::EmptyFexit => format!(
                "empty fexit programs on portwatch's fexit hooks ({})",
                super::fexit_floor::FUNCTIONS.join(", ")
            ),
            Tracer::BusyOtherCpu => "untraced, a shell busy-looping on the other vCPU".into(),
        }
    }

    pub fn is_portwatch(self) -> bool {
        matches!(self, Tracer::Portwatch(..))
    }
}

/// The port of the "never matches" filter. Port 1 (tcpmux) is bound by nothing here.
pub const FILTER_PORT: u16 = 1;

/// Where the tracers live and write.
#[derive(Clone, Debug)]
pub struct Tools {
    pub portwatch: PathBuf,
    /// None inside the VM, which runs no bpftrace configuration.
    pub bpftrace: Option<PathBuf>,
    pub scratch: PathBuf,
}

impl Tools {
    fn script(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.scratch.join(name);
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }
}

/// Figures of one tracer run. Counts are None where the tracer does not report them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TracerStats {
    /// Events the tracer handled: portwatch's summary count, or the peer's output lines.
    pub events: Option<u64>,
    /// Events about the bench's own binds found in the output file.
    pub worker_events: Option<u64>,
    /// Lost events as the tracer's final summary reports them (bpftrace: "Lost N events").
    pub lost: Option<u64>,
    /// "events lost" warnings portwatch printed on stderr while running.
    pub lost_warnings: u64,
    /// Sum of the `{"type":"lost"}` records in portwatch's JSON output.
    pub json_lost: Option<u64>,
    /// `lost` in portwatch's final JSON summary record.
    pub json_summary_lost: Option<u64>,
    /// `unexplained_at_exit` in that record: events still waiting when it was stopped, which
    /// it counted and dropped to exit within a second.
    #[serde(default)]
    pub unexplained_at_exit: Option<u64>,
    /// utime + stime from attached to idle after the workload, seconds.
    pub cpu_s: f64,
    /// VmHWM just before the stop signal, KiB.
    pub hwm_kib: u64,
    /// `ru_maxrss` at exit: the peak over the whole life, KiB.
    pub maxrss_kib: u64,
    /// Process start to attached (ready line or BEGIN marker), ms.
    pub ready_ms: f64,
    /// What portwatch's ready line says ("attached in N ms"): load + attach only.
    pub reported_attach_ms: Option<u64>,
    pub output_bytes: u64,
    /// The tracer ignored SIGINT for STOP_TIMEOUT and was killed.
    pub killed: bool,
    /// Stop signal to exit, ms.
    pub stop_ms: f64,
}

pub struct Running {
    tracer: Tracer,
    child: Child,
    pub pid: i32,
    out_path: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_thread: Option<JoinHandle<()>>,
    ready_ms: f64,
    cpu_at_ready: f64,
    reported_attach_ms: Option<u64>,
    /// Set once [`Running::stop`] has reaped the process.
    reaped: bool,
}

/// A tracer left behind by an error is killed, never left attached to the machine.
impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(libc::SIGKILL);
            wait_rusage(self.pid, Duration::from_secs(5));
        }
    }
}

/// [`start`] for a tracer that runs a process: any but [`Tracer::None`].
pub fn start_process(tools: &Tools, tracer: Tracer, tag: &str) -> Result<Running> {
    start(tools, tracer, tag)?.ok_or_else(|| anyhow!("{} runs no process", tracer.label()))
}

/// Starts `tracer` and returns once it is attached (None for [`Tracer::None`]).
pub fn start(tools: &Tools, tracer: Tracer, tag: &str) -> Result<Option<Running>> {
    let out_path = tools.scratch.join(format!("out-{tag}.txt"));
    let (mut cmd, marker) = match tracer {
        Tracer::None => return Ok(None),
        Tracer::EmptyBpf | Tracer::Peer => {
            let bpftrace = tools
                .bpftrace
                .as_ref()
                .ok_or_else(|| anyhow!("bpftrace is not installed (apt-get install bpftrace)"))?;
            let (script, marker) = if tracer == Tracer::Peer {
                (tools.script("peer.bt", PEER_BT)?, "PID ")
            } else {
                (tools.script("empty.bt", EMPTY_BT)?, "READY")
            };
            let mut c = Command::new(bpftrace);
            c.arg(script);
            (c, Some(marker))
        }
        Tracer::EmptyFexit => {
            let mut c = Command::new(std::env::current_exe().context("finding xtask")?);
            c.args(["bench", "empty-fexit"]);
            (c, Some("READY"))
        }
        Tracer::BusyOtherCpu => {
            let mut c = Command::new("sh");
            c.args(["-c", "echo READY; while :; do :; done"]);
            (c, Some("READY"))
        }
        Tracer::Portwatch(backend, mode) => {
            let mut c = Command::new(&tools.portwatch);
            c.args(["trace", "--backend", backend.name()]);
            match mode {
                Mode::Filtered => c.args(["--port", &FILTER_PORT.to_string(), "--json"]),
                Mode::Json | Mode::JsonPaused => c.arg("--json"),
                Mode::Human => c.args(["--color", "never"]),
            };
            (c, None)
        }
    };
    let out =
        fs::File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as i32;
    let (stderr, lines, stderr_thread) = read_lines(child.stderr.take().expect("piped"));
    let mut running = Running {
        tracer,
        child,
        pid,
        out_path,
        stderr,
        stderr_thread: Some(stderr_thread),
        ready_ms: 0.0,
        cpu_at_ready: 0.0,
        reported_attach_ms: None,
        reaped: false,
    };
    let ready = match marker {
        None => wait_ready_line(&lines, started),
        Some(m) => wait_marker(&mut running, m, started),
    };
    match ready {
        Ok(reported) => running.reported_attach_ms = reported,
        Err(e) => {
            // Drop kills and reaps it.
            let said = running.stderr.lock().unwrap().join("\n");
            return Err(e.context(format!(
                "{} did not attach; stderr:\n{said}",
                tracer.label()
            )));
        }
    }
    running.ready_ms = started.elapsed().as_secs_f64() * 1e3;
    running.cpu_at_ready = proc_cpu_s(pid).unwrap_or(0.0);
    Ok(Some(running))
}

/// Collects a child's stderr lines; each also goes down the channel, for the ready check.
fn read_lines(stderr: ChildStderr) -> (Arc<Mutex<Vec<String>>>, Receiver<String>, JoinHandle<()>) {
    let all = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = all.clone();
    let handle = thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    (all, rx, handle)
}

/// Waits for portwatch's ready line and returns the "attached in N ms" it reports.
fn wait_ready_line(lines: &Receiver<String>, started: Instant) -> Result<Option<u64>> {
    loop {
        let left = START_TIMEOUT.saturating_sub(started.elapsed());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with(PORTWATCH_READY) => {
                return Ok(line
                    .split("attached in ")
                    .nth(1)
                    .and_then(|r| r.split(" ms").next())
                    .and_then(|n| n.parse().ok()));
            }
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => bail!("no ready line within {START_TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => bail!("exited before attaching"),
        }
    }
}

/// bpftrace prints its BEGIN output to the file once every probe is attached.
fn wait_marker(r: &mut Running, marker: &str, started: Instant) -> Result<Option<u64>> {
    loop {
        let text = fs::read_to_string(&r.out_path).unwrap_or_default();
        if text.lines().any(|l| l.starts_with(marker)) {
            return Ok(None);
        }
        if let Some(status) = r.child.try_wait()? {
            r.reaped = true;
            bail!("exited ({status}) before attaching");
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("no {marker:?} within {START_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

impl Running {
    /// Waits until the tracer has caught up (CPU time and output file both still for
    /// `quiet`, at most `cap`), then stops it with SIGINT and gathers its figures.
    /// `workers` (pids) pick the bench's own events out of the output.
    pub fn stop(self, workers: &[u32]) -> Result<TracerStats> {
        self.stop_with(workers, true)
    }

    /// Sends SIGINT at once, without waiting for the tracer to catch up: `stop_ms` is then how
    /// long it takes to exit with a backlog (portwatch promises under a second).
    pub fn stop_at_once(self, workers: &[u32]) -> Result<TracerStats> {
        self.stop_with(workers, false)
    }

    fn stop_with(mut self, workers: &[u32], wait_idle: bool) -> Result<TracerStats> {
        // A busy loop never goes idle.
        if wait_idle && self.tracer != Tracer::BusyOtherCpu {
            self.wait_idle(Duration::from_millis(250), Duration::from_secs(20));
        }
        let cpu = proc_cpu_s(self.pid).unwrap_or(self.cpu_at_ready);
        let hwm_kib = proc_status_kib(self.pid, "VmHWM:").unwrap_or(0);
        let stopping = Instant::now();
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid, libc::SIGINT) };
        let (exited, rusage) = wait_rusage(self.pid, STOP_TIMEOUT);
        let mut killed = false;
        let rusage = if exited {
            rusage
        } else {
            killed = true;
            // SAFETY: as above.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            wait_rusage(self.pid, STOP_TIMEOUT).1
        };
        self.reaped = true;
        let stop_ms = stopping.elapsed().as_secs_f64() * 1e3;
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let stderr = std::mem::take(&mut *self.stderr.lock().unwrap());
        let output_bytes = fs::metadata(&self.out_path).map(|m| m.len()).unwrap_or(0);
        let scan = scan_output(&self.out_path, self.tracer, workers)?;
        let _ = fs::remove_file(&self.out_path);

        let mut stats = TracerStats {
            cpu_s: (cpu - self.cpu_at_ready).max(0.0),
            hwm_kib,
            maxrss_kib: rusage.map(|r| r.ru_maxrss as u64).unwrap_or(0),
            ready_ms: self.ready_ms,
            reported_attach_ms: self.reported_attach_ms,
            output_bytes,
            killed,
            stop_ms,
            worker_events: scan.worker_events,
            json_lost: scan.json_lost,
            json_summary_lost: scan.json_summary_lost,
            unexplained_at_exit: scan.unexplained_at_exit,
            ..TracerStats::default()
        };
        if self.tracer.is_portwatch() {
            let summary = stderr.iter().rev().find_map(|l| parse_summary(l));
            stats.events = summary.map(|s| s.0);
            stats.lost = summary.map(|s| s.1);
            stats.lost_warnings =
                stderr.iter().filter(|l| l.contains("events lost")).count() as u64;
            if summary.is_none() && !killed {
                bail!(
                    "{} printed no summary; stderr:\n{}",
                    self.tracer.label(),
                    stderr.join("\n")
                );
            }
        } else {
            stats.events = scan.lines;
            stats.lost = scan.bpftrace_lost;
        }
        Ok(stats)
    }

    fn wait_idle(&self, quiet: Duration, cap: Duration) {
        let started = Instant::now();
        let probe = || {
            (
                proc_cpu_s(self.pid).unwrap_or(0.0),
                fs::metadata(&self.out_path).map(|m| m.len()).unwrap_or(0),
            )
        };
        let mut last = probe();
        let mut since = Instant::now();
        while started.elapsed() < cap {
            thread::sleep(Duration::from_millis(25));
            let now = probe();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the tracer: the bench's way of making it fall
    /// behind on purpose, to see lost events reported.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(self.pid, sig) };
    }
}

/// "portwatch: N events (B bind, L listen) in S s; failures: ...; lost: K" → (N, K). N may be
/// followed by " for C calls" (repeated connect()s folded into one event).
pub fn parse_summary(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("portwatch: ")?;
    let (events, rest) = rest.split_once(" events ")?;
    // "lost: N", possibly followed by "; M more were waiting and were dropped unexplained".
    let lost = rest.rsplit_once("; lost: ")?.1;
    let lost = lost.split(';').next()?;
    Some((events.trim().parse().ok()?, lost.trim().parse().ok()?))
}

#[derive(Default)]
struct Scan {
    lines: Option<u64>,
    worker_events: Option<u64>,
    json_lost: Option<u64>,
    json_summary_lost: Option<u64>,
    unexplained_at_exit: Option<u64>,
    bpftrace_lost: Option<u64>,
}

/// One pass over a tracer's output file (which can be hundreds of MB).
fn scan_output(path: &Path, tracer: Tracer, workers: &[u32]) -> Result<Scan> {
    let mut scan = Scan::default();
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut r = BufReader::with_capacity(1 << 20, file);
    let json_pids: Vec<String> = workers.iter().map(|p| format!("\"pid\":{p},")).collect();
    let text_pids: Vec<String> = workers.iter().map(|p| p.to_string()).collect();
    let is_worker = |field: Option<&str>| field.is_some_and(|f| text_pids.iter().any(|p| p == f));
    let (mut lines, mut worker, mut json_lost, mut bt_lost) = (0u64, 0u64, 0u64, 0u64);
    let mut summary_lost = None;
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        if r.by_ref().take(1 << 24).read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        match tracer {
            Tracer::Portwatch(_, Mode::Json | Mode::JsonPaused | Mode::Filtered) => {
                if line.starts_with("{\"type\":\"bind\"")
                    || line.starts_with("{\"type\":\"listen\"")
                {
                    // The pid comes early in each record; don't search the explanation.
                    let head = &line[..floor_char_boundary(&line, 200)];
                    worker += u64::from(json_pids.iter().any(|p| head.contains(p.as_str())));
                } else if line.contains("\"type\":\"lost\"") {
                    // Key order is not fixed (the lost record puts "type" last).
                    json_lost += json_u64(&line, "\"lost\":").unwrap_or(0);
                } else if line.contains("\"type\":\"summary\"") {
                    summary_lost = json_u64(&line, "\"lost\":");
                    scan.unexplained_at_exit = json_u64(&line, "\"unexplained_at_exit\":");
                }
            }
            Tracer::Portwatch(_, Mode::Human) => {
                worker += u64::from(is_worker(line.split_whitespace().nth(1)));
            }
            Tracer::Peer | Tracer::EmptyBpf => {
                if let Some(n) = line
                    .trim()
                    .strip_prefix("Lost ")
                    .and_then(|r| r.strip_suffix(" events"))
                {
                    bt_lost += n.parse::<u64>().unwrap_or(0);
                    continue;
                }
                let mut f = line.split_whitespace();
                let first = f.next();
                // Event lines start with a pid; skip the header and bpftrace's own lines.
                if first.is_some_and(|t| t.parse::<u32>().is_ok()) {
                    lines += 1;
                    worker += u64::from(is_worker(first));
                }
            }
            Tracer::None | Tracer::EmptyFexit | Tracer::BusyOtherCpu => {}
        }
    }
    match tracer {
        Tracer::Portwatch(_, Mode::Json | Mode::JsonPaused | Mode::Filtered) => {
            scan.json_lost = Some(json_lost);
            scan.json_summary_lost = summary_lost;
        }
        Tracer::Peer | Tracer::EmptyBpf => {
            scan.lines = Some(lines);
            scan.bpftrace_lost = Some(bt_lost);
        }
        _ => {}
    }
    if !workers.is_empty() {
        scan.worker_events = Some(worker);
    }
    Ok(scan)
}

/// The largest char boundary ≤ `at` (str::floor_char_boundary is unstable).
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The unsigned integer after `key` in a flat JSON line.
fn json_u64(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// utime + stime of a live process (all its threads), seconds.
pub fn proc_cpu_s(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm)": state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// The number on a line of /proc/PID/status: a `kB` figure ("VmHWM:") or a count
/// ("nonvoluntary_ctxt_switches:").
pub fn proc_status_kib(pid: i32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Reaps `pid` with its rusage, polling up to `timeout`. (exited, rusage).
pub fn wait_rusage(pid: i32, timeout: Duration) -> (bool, Option<libc::rusage>) {
    let started = Instant::now();
    loop {
        // SAFETY: zeroed rusage is a valid out-parameter; pid is our child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let mut status = 0;
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            return (true, Some(ru));
        }
        if r < 0 || started.elapsed() >= timeout {
            return (false, None);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_portwatch_summary() {
        let l = "portwatch: 1234 events (1200 bind, 34 listen) in 2.5s; failures: none; lost: 7";
        assert_eq!(parse_summary(l), Some((1234, 7)));
        assert_eq!(parse_summary("portwatch: warning: 3 events lost"), None);
        let l = "portwatch: 2 events for 9 calls (1 bind, 0 listen, 8 connect) in 1.0s; \
                 failures: EAGAIN 8; lost: 0";
        assert_eq!(parse_summary(l), Some((2, 0)));
    }

    #[test]
    fn finds_json_numbers() {
        let l = r#"{"type":"summary","events":5,"lost":12,"seconds":1.0}"#;
        assert_eq!(json_u64(l, "\"lost\":"), Some(12));
        assert_eq!(json_u64(l, "\"events\":"), Some(5));
    }
}
