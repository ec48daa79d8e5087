//! Issue 18: failures where people look afterwards. `trace --journal` against a real
//! systemd-journald, and `portwatch why` against a real tracer, with no tracer, and from a
//! log file. journald runs standalone in a private mount namespace with its own tmpfs on /run
//! (and /var/log), as on a host without systemd as PID 1 (docs/TESTING.md); portwatch,
//! `journalctl` and `why` run in that namespace through nsenter. The failing processes are
//! holders moved into a unit's cgroup (`<v2 mount>/system.slice/pwj-PID-*.service`). Host
//! only: the VMs' initramfs has no journald.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::{
    Ctx, Scenario,
    holder::Holder,
    netns::Netns,
    portwatch::{Event, Portwatch},
    sock::SockSpec,
    workload::Cgroups,
};

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::alone("journal_entry_under_failing_unit", entry_under_failing_unit).host_only(),
        Scenario::alone("journal_storm_coalesced", storm_coalesced).host_only(),
        Scenario::alone("why_asks_the_running_tracer", why_running_tracer).host_only(),
        Scenario::alone("why_without_tracer", why_without_tracer).host_only(),
        Scenario::alone("why_reads_log_with_truncated_line", why_log).host_only(),
    ]
}

/// The journald binary Debian ships (package systemd, which `cargo xtask setup` installs).
const JOURNALD: &str = "/lib/systemd/systemd-journald";

/// A private mount namespace with a fresh tmpfs on /run and /var/log, optionally with
/// systemd-journald running in it. Killed (and so gone) on drop.
struct PrivateRun {
    child: Child,
}

impl PrivateRun {
    fn start(journald: bool) -> Result<Self> {
        let script = format!(
            "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/log && {}",
            if journald {
                format!("mkdir -p /run/systemd/journal && exec {JOURNALD}")
            } else {
                "exec sleep 3600".to_string()
            }
        );
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("unshare (util-linux)")?;
        let run = PrivateRun { child };
        // Ready: journald's socket exists, seen through its own root; or sleep runs.
        let ready = PathBuf::from(format!(
            "/proc/{}/root/run/systemd/journal/socket",
            run.child.id()
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = if journald {
                ready.exists()
            } else {
                std::fs::read_to_string(format!("/proc/{}/comm", run.child.id()))
                    .is_ok_and(|c| c.trim() == "sleep")
            };
            if up {
                return Ok(run);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not come up in a private mount namespace within 10 s",
                    if journald { JOURNALD } else { "sleep" }
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The namespace's root as this process sees it (`/proc/PID/root`).
    fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.child.id()))
    }

    /// nsenter's arguments that run a program in this namespace.
    fn wrapper(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--mount=/proc/{}/ns/mnt", self.child.id()),
            "--".into(),
        ]
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let w = self.wrapper();
        Command::new(&w[0])
            .args(&w[1..])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} through nsenter"))
    }

    /// `journalctl -u UNIT -o json`: the entries, parsed.
    fn journal(&self, unit: &str) -> Result<Vec<Value>> {
        let out = self.run("journalctl", &["-u", unit, "-o", "json", "--no-pager"])?;
        ensure!(
            out.status.success(),
            "journalctl -u {unit}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("journalctl said {l}")))
            .collect()
    }

    /// Polls `journalctl -u UNIT` until `done` holds for its entries.
    fn journal_until(
        &self,
        unit: &str,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let entries = self.journal(unit)?;
            if done(&entries) {
                return Ok(entries);
            }
            if Instant::now() >= deadline {
                bail!(
                    "journalctl -u {unit} after {timeout:?}: {} entries:\n{}",
                    entries.len(),
                    entries
                        .iter()
                        .map(|e| format!("  {e}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `trace --json --backend B` plus `extra`.
fn trace_args(cx: &Ctx, extra: &[&str]) -> Vec<String> {
    ["trace", "--json", "--backend", cx.pw.backend_flag()]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

fn field<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry[name].as_str().unwrap_or("")
}

/// Checks each `(field, value)` of a journal entry, reporting every mismatch at once.
fn entry_fields(entry: &Value, want: &[(&str, String)]) -> Result<()> {
    let wrong: Vec<String> = want
        .iter()
        .filter(|(k, v)| field(entry, k) != v)
        .map(|(k, v)| format!("  {k}: want {v:?}, got {}", entry[*k]))
        .collect();
    ensure!(wrong.is_empty(), "{}\nentry: {entry}", wrong.join("\n"));
    Ok(())
}

/// A holder listens on 0.0.0.0:PORT; a process in `pwj-PID-a.service` fails to bind
/// 127.0.0.1:PORT and exits at once. `journalctl -u pwj-PID-a.service` shows portwatch's
/// entry with its fields. A process in a cgroup named like another unit, made inside that
/// unit's subtree (as any process with a delegated subtree can), is filed under the unit that
/// owns the subtree, never under the name it chose.
fn entry_under_failing_unit(cx: &Ctx, ns: &Netns) -> Result<()> {
    let run = PrivateRun::start(true)?;
    let me = std::process::id();
    let unit = format!("pwj-{me}-a.service");
    let victim = format!("pwj-{me}-victim.service");
    let cg = Cgroups::new(&format!("system.slice/{unit}"))?;
    let holder_unit = format!("pwj-{me}-holder.service");
    let holder_cg = Cgroups::new(&format!("system.slice/{holder_unit}"))?;
    let w = run.wrapper();
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let pw = Portwatch::start_wrapped(
        &cx.pw,
        &w,
        trace_args(cx, &["--journal", "--port", "47310"]),
    )?;
    let mut holder = Holder::spawn(ns, "pwj-holder")?;
    holder_cg.put("", holder.pid)?;
    holder.bind_ok(&SockSpec::tcp("0.0.0.0:47310").listening())?;
    let mut failing = Holder::spawn(ns, "pwj-failing")?;
    cg.put("", failing.pid)?;
    let fail = failing.bind_fails(&SockSpec::tcp("127.0.0.1:47310"), libc::EADDRINUSE)?;
    let failing_pid = failing.pid;
    failing.exit()?;
    let mut sub = Holder::spawn(ns, "pwj-sub")?;
    let sub_cgroup = cg.put(&format!("payload/{victim}"), sub.pid)?;
    // Another rule than the first failure's (same address, not the wildcard's), or the two
    // would be one kind of failure of one unit, coalesced.
    let fail2 = sub.bind_fails(&SockSpec::tcp("0.0.0.0:47310"), libc::EADDRINUSE)?;
    let sub_pid = sub.pid;
    sub.exit()?;
    pw.wait_call(ns, "bind", failing_pid, fail.ino)?;
    pw.wait_call(ns, "bind", sub_pid, fail2.ino)?;
    let entries = run.journal_until(&unit, cx.pw.timeout(10.0), |e| e.len() >= 2)?;
    let stopped = pw.stop()?;
    ensure!(
        entries.len() == 2,
        "two failures, two entries under {unit}; got {}:\n{entries:#?}",
        entries.len()
    );
    let first = entries
        .iter()
        .find(|e| field(e, "PORTWATCH_PID") == failing_pid.to_string())
        .context("no entry for the failing process")?;
    let msg = field(first, "MESSAGE");
    let head = format!(
        "{unit} (pid {failing_pid}, pwj-failing): EADDRINUSE on bind tcp4 127.0.0.1:47310: pid {} \
         (pwj-holder, {holder_unit}) holds 0.0.0.0:47310 (listening)",
        holder.pid
    );
    ensure!(
        msg.starts_with(&head),
        "MESSAGE {msg:?} does not start with {head:?}"
    );
    let (_, fix) = msg
        .split_once("\nfix: ")
        .with_context(|| format!("no fix line in {msg:?}"))?;
    entry_fields(
        first,
        &[
            ("PRIORITY", "3".into()),
            ("SYSLOG_IDENTIFIER", "portwatch".into()),
            ("_UID", "0".into()),
            ("PORTWATCH_CALL", "bind".into()),
            ("PORTWATCH_PROTOCOL", "tcp".into()),
            ("PORTWATCH_ADDRESS", "127.0.0.1".into()),
            ("PORTWATCH_PORT", "47310".into()),
            ("PORTWATCH_ERRNO", "EADDRINUSE".into()),
            ("PORTWATCH_RULE", "wildcard-covers-specific".into()),
            ("PORTWATCH_FIX", fix.into()),
            ("PORTWATCH_HOLDER_PIDS", holder.pid.to_string()),
            ("PORTWATCH_HOLDER_UNITS", holder_unit.clone()),
            ("PORTWATCH_COMM", "pwj-failing".into()),
            ("OBJECT_SYSTEMD_UNIT", unit.clone()),
            ("OBJECT_SYSTEMD_CGROUP", format!("/system.slice/{unit}")),
        ],
    )?;
    let second = entries
        .iter()
        .find(|e| field(e, "PORTWATCH_PID") == sub_pid.to_string())
        .context("no entry for the process in the sub-cgroup")?;
    entry_fields(
        second,
        &[
            ("OBJECT_SYSTEMD_UNIT", unit.clone()),
            ("OBJECT_SYSTEMD_CGROUP", sub_cgroup),
            ("PORTWATCH_ADDRESS", "0.0.0.0".into()),
        ],
    )?;
    let stolen = run.journal(&victim)?;
    ensure!(
        stolen.is_empty(),
        "a process named its cgroup {victim} and got entries filed there:\n{stolen:#?}"
    );
    ensure!(
        stopped
            .stderr
            .iter()
            .any(|l| l == "portwatch: journal: 2 failed calls, 2 entries written (0 repeats coalesced), 0 not written"),
        "the journal line at exit:\n{}",
        stopped.describe()
    );
    Ok(())
}

/// 300 identical failures from one unit: one entry at once, the rest in one repeat line with
/// the right count (written at exit at the latest). Never 300 lines.
fn storm_coalesced(cx: &Ctx, ns: &Netns) -> Result<()> {
    const N: u32 = 300;
    let run = PrivateRun::start(true)?;
    let unit = format!("pwj-{}-storm.service", std::process::id());
    let cg = Cgroups::new(&format!("system.slice/{unit}"))?;
    let w = run.wrapper();
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let pw = Portwatch::start_wrapped(
        &cx.pw,
        &w,
        trace_args(cx, &["--journal", "--port", "47311"]),
    )?;
    let mut holder = Holder::spawn(ns, "pwj-holder")?;
    holder.bind_ok(&SockSpec::tcp("0.0.0.0:47311").listening())?;
    let mut failing = Holder::spawn(ns, "pwj-storm")?;
    cg.put("", failing.pid)?;
    let counted = failing.bind_loop(
        &SockSpec::tcp("127.0.0.1:47311"),
        N,
        Duration::ZERO,
        Duration::ZERO,
    )?;
    ensure!(counted.failed == N, "the holder's binds: {counted:?}");
    let failing_pid = failing.pid;
    let failed = |e: &[Event]| {
        e.iter()
            .filter(|e| e.pid() == Some(failing_pid.into()) && !e.ok())
            .count()
    };
    pw.wait_for(ns, &format!("{N} failed binds"), |e| {
        failed(e) >= N as usize
    })?;
    let stopped = pw.stop()?;
    let entries = run.journal_until(&unit, cx.pw.timeout(10.0), |e| {
        e.iter()
            .filter_map(|e| field(e, "PORTWATCH_REPEATS").parse::<u64>().ok())
            .sum::<u64>()
            >= u64::from(N - 1)
    })?;
    let firsts = entries
        .iter()
        .filter(|e| field(e, "MESSAGE_ID") == "cb3ded73ecc74f17ab0d48abf0adfbb6")
        .count();
    let repeats: u64 = entries
        .iter()
        .filter(|e| field(e, "MESSAGE_ID") == "dee851f624fe42ea87cac2e0bb857fa8")
        .map(|e| field(e, "PORTWATCH_REPEATS").parse::<u64>().unwrap_or(0))
        .sum();
    // One line at once, then one per 10 s window: a storm that long on a loaded machine may
    // straddle a window, never more.
    ensure!(
        firsts == 1 && repeats == u64::from(N - 1) && entries.len() <= 3,
        "{N} failures: want 1 entry at once and repeat lines counting {}, at most 3 lines; got \
         {firsts} and {repeats} in {} lines:\n{}",
        N - 1,
        entries.len(),
        entries
            .iter()
            .map(|e| format!("  {}", field(e, "MESSAGE").lines().next().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let repeat_msg = entries
        .iter()
        .map(|e| field(e, "MESSAGE"))
        .find(|m| m.contains("repeats are coalesced"))
        .context("no repeat line")?;
    ensure!(
        repeat_msg.starts_with(&format!(
            "{unit} (pid {failing_pid}, pwj-storm): EADDRINUSE"
        )),
        "{repeat_msg}"
    );
    let want = format!(
        "portwatch: journal: {N} failed calls, {} entries written ({} repeats coalesced), 0 not \
         written",
        entries.len(),
        N - 1
    );
    ensure!(
        stopped.stderr.contains(&want),
        "want {want:?}\n{}",
        stopped.describe()
    );
    Ok(())
}

/// A failure seen by two tracers, then `portwatch why PORT` asks both: shown once, in trace's
/// columns with the explanation, after a line per tracer; `--json` gives the very object
/// `trace --json` printed; another port: none.
fn why_running_tracer(cx: &Ctx, ns: &Netns) -> Result<()> {
    let run = PrivateRun::start(false)?;
    let w = run.wrapper();
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let pw = Portwatch::start_wrapped(&cx.pw, &w, trace_args(cx, &["--port", "47312"]))?;
    // A second tracer on the host: `why` asks both, and shows the call they both saw once.
    let pw2 = Portwatch::start_wrapped(&cx.pw, &w, trace_args(cx, &["--port", "47312"]))?;
    let mut holder = Holder::spawn(ns, "pwj-holder")?;
    holder.bind_ok(&SockSpec::tcp("0.0.0.0:47312").listening())?;
    let mut failing = Holder::spawn(ns, "pwj-failing")?;
    let fail = failing.bind_fails(&SockSpec::tcp("127.0.0.1:47312"), libc::EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", failing.pid, fail.ino)?;
    pw2.wait_call(ns, "bind", failing.pid, fail.ino)?;
    let exe = cx.pw.exe.display().to_string();
    let text = |o: &[u8]| String::from_utf8_lossy(o).into_owned();

    let human = run.run(&exe, &["why", "47312"])?;
    let (out, err) = (text(&human.stdout), text(&human.stderr));
    ensure!(human.status.success(), "why 47312: {}\n{err}", human.status);
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines.len() >= 3 && lines[0].starts_with("TIME") && lines[0].contains("DETAILS"),
        "why 47312 printed:\n{out}"
    );
    let failure_lines = lines
        .iter()
        .filter(|l| l.contains("127.0.0.1:47312") && !l.starts_with(' '))
        .count();
    ensure!(
        failure_lines == 1,
        "two tracers saw one failure: want it once, got {failure_lines}:\n{out}"
    );
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    ensure!(
        cols.get(1..7)
            == Some(
                &[
                    &failing.pid.to_string()[..],
                    "pwj-failing",
                    "bind",
                    "tcp4",
                    "127.0.0.1:47312",
                    "EADDRINUSE"
                ][..]
            ),
        "the failure's line: {}\n{out}",
        lines[1]
    );
    let because = format!(
        "    ↳ EADDRINUSE: pid {} (pwj-holder) holds 0.0.0.0:47312 (listening)",
        holder.pid
    );
    ensure!(lines[2].starts_with(&because), "want {because:?}\n{out}");
    for tracer in [pw.pid, pw2.pid] {
        let said =
            format!("portwatch: tracer pid {tracer}: 1 failed call recorded since it started at");
        ensure!(
            err.lines().any(|l| l.starts_with(&said)),
            "want {said:?} on stderr:\n{err}"
        );
    }

    let json = run.run(&exe, &["why", "47312", "--json"])?;
    let out = text(&json.stdout);
    ensure!(json.status.success(), "why --json: {}", json.status);
    let objs: Vec<Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("why --json printed {out}"))?;
    for o in &objs {
        super::schema::check(o).context("why --json")?;
    }
    ensure!(
        objs == [ev.0.clone()],
        "why --json must give the object trace --json printed:\n  trace: {}\n  why:   {out}",
        ev.0
    );

    let other = run.run(&exe, &["why", "47399"])?;
    ensure!(
        other.status.success()
            && other.stdout.is_empty()
            && text(&other.stderr).contains("no failed call on port 47399 was recorded"),
        "why 47399: {}\n{}{}",
        other.status,
        text(&other.stdout),
        text(&other.stderr)
    );
    pw.stop()?;
    pw2.stop()?;
    Ok(())
}

/// No tracer (and no unit log): one line that says so and how to start one; exit status 1.
/// A tracer killed with SIGKILL left its socket behind: that is no tracer either. With the
/// unit's JSON log there (written by a tracer that ended), `why` reads it and says so.
fn why_without_tracer(cx: &Ctx, ns: &Netns) -> Result<()> {
    let run = PrivateRun::start(false)?;
    let w = run.wrapper();
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let killed = Portwatch::start_wrapped(&cx.pw, &w, trace_args(cx, &["--port", "47314"]))?;
    let pid = killed.pid;
    // SAFETY: kill() on our own child's pid, not yet reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    killed.stop()?;
    let left = run
        .run("ls", &["/run/portwatch"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())?;
    ensure!(
        left.contains(&format!("trace-{pid}.sock")),
        "the killed tracer left no socket to test with: {left:?}"
    );
    let out = run.run(&cx.pw.exe.display().to_string(), &["why", "8080"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1)
            && out.stdout.is_empty()
            && err.lines().count() == 1
            && err.contains("no portwatch tracer is running")
            && err.contains("sudo portwatch trace"),
        "why 8080 with no tracer: {}\nstdout: {}\nstderr: {err}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );

    // The unit's JSON log, written by a tracer that has ended: read instead, and said so.
    let log = "/var/log/portwatch/events.jsonl";
    run.run("mkdir", &["-p", "/var/log/portwatch"])?;
    let pw = Portwatch::start_wrapped(
        &cx.pw,
        &w,
        trace_args(cx, &["--port", "47314", "--output", log]),
    )?;
    let mut holder = Holder::spawn(ns, "pwj-holder")?;
    holder.bind_ok(&SockSpec::tcp("0.0.0.0:47314").listening())?;
    let mut failing = Holder::spawn(ns, "pwj-failing")?;
    failing.bind_fails(&SockSpec::tcp("127.0.0.1:47314"), libc::EADDRINUSE)?;
    let failing_pid = failing.pid;
    // Events go to the file: wait for the failure's line there, seen through the namespace.
    let seen = run.root().join(log.trim_start_matches('/'));
    let deadline = Instant::now() + cx.pw.timeout(10.0);
    while !std::fs::read_to_string(&seen).is_ok_and(|t| {
        t.lines()
            .any(|l| l.contains(&format!("\"pid\":{failing_pid},")) && l.contains("\"ok\":false"))
    }) {
        ensure!(
            Instant::now() < deadline,
            "no failure in {}",
            seen.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pw.stop()?;
    let out = run.run(&cx.pw.exe.display().to_string(), &["why", "47314"])?;
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        out.status.success()
            && err.contains(&format!(
                "no tracer is running; reading the unit's JSON log {log}"
            ))
            && stdout
                .lines()
                .any(|l| l.contains(&format!(" {failing_pid} pwj-failing "))
                    && l.contains("EADDRINUSE")),
        "why 47314 with only the unit's log: {}\nstdout: {stdout}\nstderr: {err}",
        out.status
    );
    Ok(())
}

/// `trace --json --output FILE` records a failure; the file is rotated to FILE.1 and FILE
/// holds a line cut short (as a crash leaves it). `why --log FILE` reads both, shows the
/// failure, and says it skipped one line, where.
fn why_log(cx: &Ctx, ns: &Netns) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("pwj-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("events.jsonl");
    let _ = std::fs::remove_file(&log);
    let pw = Portwatch::start(
        &cx.pw,
        &["--port", "47313", "--output", &log.display().to_string()],
    )?;
    let mut holder = Holder::spawn(ns, "pwj-holder")?;
    holder.bind_ok(&SockSpec::tcp("0.0.0.0:47313").listening())?;
    let mut failing = Holder::spawn(ns, "pwj-failing")?;
    failing.bind_fails(&SockSpec::tcp("127.0.0.1:47313"), libc::EADDRINUSE)?;
    let failing_pid = failing.pid;
    // The file has the line once portwatch exits (it is written whole, at the latest then).
    let deadline = Instant::now() + cx.pw.timeout(10.0);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text
            .lines()
            .find(|l| l.contains(&format!("\"pid\":{failing_pid},")) && l.contains("\"ok\":false"))
        {
            break l.to_string();
        }
        ensure!(
            Instant::now() < deadline,
            "no failure in {}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    pw.stop()?;
    let rotated = dir.join("events.jsonl.1");
    std::fs::rename(&log, &rotated)?;
    std::fs::write(&log, &line[..line.len() / 2])?;

    let exe = cx.pw.exe.display().to_string();
    let out = Command::new(&exe)
        .args(["why", "47313", "--json", "--log"])
        .arg(&log)
        .output()?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let result = (|| {
        ensure!(out.status.success(), "why --log: {}\n{stderr}", out.status);
        ensure!(
            stdout.trim_end() == line,
            "why --json --log must print the logged line as it is:\n  log: {line}\n  why: {stdout}"
        );
        let said = format!(
            "portwatch: read {}, {}: 1 failed call; skipped 1 line that is not a whole JSON \
             object ({}:1)",
            rotated.display(),
            log.display(),
            log.display()
        );
        ensure!(
            stderr.lines().any(|l| l == said),
            "want {said:?}:\n{stderr}"
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
