//! Load + attach time: from the moment portwatch is spawned to the first event it can see.
//!
//! The worker binds flat out (one bind every few µs) while portwatch starts with
//! `--port <worker's port> --count 1 --json`; the first record's kernel timestamp, against
//! the wall clock just before the spawn, is the answer. It includes exec, dynamic linking, BTF
//! parsing, layout resolution, loading and attaching: all of what a user waits for. The
//! "attached in N ms" that portwatch itself prints covers loading and attaching only.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::{
    tracer::{Backend, BackendDef, PORTWATCH_READY, Tools, wait_rusage},
    workload::Worker,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachSample {
    #[serde(with = "BackendDef")]
    pub backend: Backend,
    /// Spawn to the kernel timestamp of the first event, ms.
    pub to_first_event_ms: f64,
    /// What portwatch's ready line says (load + attach, no BTF parsing).
    pub reported_ms: Option<u64>,
    /// Peak RSS of the whole short run (start-up, BTF parsing included), KiB.
    pub maxrss_kib: u64,
}

pub fn sample(
    tools: &Tools,
    backend: Backend,
    worker: &mut Worker,
    port: u16,
) -> Result<AttachSample> {
    worker.spin_start()?;
    thread::sleep(Duration::from_millis(20));
    let result = sample_spinning(tools, backend, port);
    let spun = worker.spin_stop();
    let s = result?;
    spun?;
    Ok(s)
}

fn sample_spinning(tools: &Tools, backend: Backend, port: u16) -> Result<AttachSample> {
    let t0 = realtime_ns();
    let mut child = Command::new(&tools.portwatch)
        .args([
            "trace",
            "--backend",
            backend.name(),
            "--json",
            "--count",
            "1",
        ])
        .args(["--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting portwatch")?;
    let pid = child.id() as i32;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let err_thread = thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let first = rx.recv_timeout(Duration::from_secs(120));
    let (exited, ru) = wait_rusage(pid, Duration::from_secs(30));
    if !exited {
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_rusage(pid, Duration::from_secs(5));
    }
    let stderr = err_thread.join().unwrap_or_default();
    let first = first.map_err(|_| anyhow!("no event within 120 s; stderr: {stderr:?}"))?;
    if !exited {
        bail!("portwatch --count 1 did not exit after its first event");
    }
    let time = first
        .split("\"time\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(parse_rfc3339)
        .ok_or_else(|| anyhow!("no time in the first record: {first:?}; stderr: {stderr:?}"))?;
    let reported_ms = stderr
        .iter()
        .find(|l| l.starts_with(PORTWATCH_READY))
        .and_then(|l| l.split("attached in ").nth(1))
        .and_then(|r| r.split(" ms").next())
        .and_then(|n| n.parse().ok());
    Ok(AttachSample {
        backend,
        to_first_event_ms: (time - t0) as f64 / 1e6,
        reported_ms,
        maxrss_kib: ru.map(|r| r.ru_maxrss as u64).unwrap_or(0),
    })
}

pub fn realtime_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// "2026-11-24T16:31:52.430181Z" → ns since the epoch (UTC only, as portwatch writes it).
pub fn parse_rfc3339(s: &str) -> Option<i128> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, dd) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    let digits = frac.len().min(9);
    let frac_ns: i64 = frac[..digits].parse::<i64>().ok()? * 10i64.pow((9 - digits) as u32);
    let secs = days_from_civil(y, m, dd) * 86400 + h * 3600 + mi * 60 + sec;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(frac_ns))
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_portwatch_times() {
        let ns = parse_rfc3339("2026-11-24T16:00:01.000123Z").unwrap();
        assert_eq!(ns, 1_795_536_001_000_123_000);
        assert_eq!(
            civil_from_days(days_from_civil(2026, 11, 24)),
            (2026, 11, 24)
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }
}
