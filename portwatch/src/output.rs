//! Human and JSON output. Human lines are aligned columns with color only on a terminal; JSON is
//! one object per line, its wire types all in [`json`]. `trace`'s renderer is here, `who`'s in
//! [`who`]; status lines (warnings, the summary) go to stderr through [`status`].

pub mod file;
pub mod json;
pub mod ports;
pub mod terminal;
pub mod who;
pub mod why;

use std::{
    collections::BTreeMap,
    fmt,
    io::{self, Write},
    net::IpAddr,
};

use json::{JsonEvent, JsonLost, JsonSummary};
use portwatch_common::Backend;
use terminal::safe;

use crate::{
    address::endpoint,
    errno,
    event::{Call, Event, Requested},
    explain::Verdict,
    sockets::SocketView,
};

/// Writes one status line to stderr. A closed or full stderr is ignored: a status line is
/// never worth a panic or an error of its own.
pub fn status(line: fmt::Arguments) {
    let _ = writeln!(io::stderr(), "{line}");
}

/// Converts the kernel's boot-time stamps into wall-clock time.
#[derive(Clone, Copy)]
pub struct Clock {
    realtime_minus_boottime_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let real = clock_ns(libc::CLOCK_REALTIME);
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        Clock {
            realtime_minus_boottime_ns: real - boot,
        }
    }

    pub fn unix_ns(&self, boot_ns: u64) -> i128 {
        i128::from(boot_ns) + self.realtime_minus_boottime_ns
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

fn broken_down(unix_ns: i128, local: bool) -> (libc::tm, u32) {
    let secs = (unix_ns.div_euclid(1_000_000_000)) as libc::time_t;
    let micros = (unix_ns.rem_euclid(1_000_000_000) / 1000) as u32;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe {
        if local {
            libc::localtime_r(&secs, &mut tm);
        } else {
            libc::gmtime_r(&secs, &mut tm);
        }
    }
    (tm, micros)
}

/// The DETAILS word for a call made `attempts` times (a folded repeat, [`Event::attempts`]):
/// trace's line and `why`'s say it alike. None for a single call.
pub fn attempts_detail(attempts: u64) -> Option<String> {
    (attempts > 1).then(|| format!("{attempts} attempts"))
}

/// RFC 3339 in UTC with microseconds: 2026-11-24T16:00:01.123456Z.
pub fn rfc3339(unix_ns: i128) -> String {
    let (tm, us) = broken_down(unix_ns, false);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{us:06}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Reads what [`rfc3339`] writes (any number of fraction digits, `Z` only) back into
/// nanoseconds since the epoch; None for anything else.
pub fn parse_rfc3339(s: &str) -> Option<i128> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: i128 = format!("{frac:0<9}").parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// Local time of day for the terminal: 16:00:01.123456.
pub(crate) fn time_of_day(unix_ns: i128) -> String {
    let (tm, us) = broken_down(unix_ns, true);
    format!(
        "{:02}:{:02}:{:02}.{us:06}",
        tm.tm_hour, tm.tm_min, tm.tm_sec
    )
}

struct Style {
    on: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn red(&self, t: &str) -> String {
        self.paint("1;31", t)
    }
    fn green(&self, t: &str) -> String {
        self.paint("32", t)
    }
    fn dim(&self, t: &str) -> String {
        self.paint("2", t)
    }
    fn yellow(&self, t: &str) -> String {
        self.paint("33", t)
    }
}

pub struct Printer {
    json: bool,
    style: Style,
    clock: Clock,
    own_netns: u32,
    out: file::Sink,
}

/// One line in `trace`'s columns, as `trace` prints each call and `why` each recorded one: one
/// layout for both. Cells are ready to print (made safe, painted); `result_len` is the visible
/// length of `result`, which may carry color codes.
pub(crate) struct Columns<'a> {
    pub time: &'a str,
    pub pid: &'a str,
    pub comm: &'a str,
    pub call: &'a str,
    pub proto: &'a str,
    pub address: &'a str,
    pub result: &'a str,
    pub result_len: usize,
    pub details: &'a str,
}

impl Columns<'_> {
    /// The column names.
    pub const HEADER: Columns<'static> = Columns {
        time: "TIME",
        pid: "PID",
        comm: "COMM",
        call: "CALL",
        proto: "PROTO",
        address: "ADDRESS",
        result: "RESULT",
        result_len: 6,
        details: "DETAILS",
    };

    /// The line, without trailing blanks. CALL is as wide as its longest word, `connect`.
    pub fn line(&self) -> String {
        let mut result = self.result.to_string();
        for _ in self.result_len..13 {
            result.push(' ');
        }
        format!(
            "{:<15} {:>7} {:<15} {:<7} {:<5} {:<27} {} {}",
            self.time,
            self.pid,
            self.comm,
            self.call,
            self.proto,
            self.address,
            result,
            self.details
        )
        .trim_end()
        .to_string()
    }
}

impl Printer {
    pub fn new(json: bool, color: bool, clock: Clock, own_netns: u32) -> Self {
        Printer {
            json,
            style: Style { on: color },
            clock,
            own_netns,
            out: file::Sink::stdout(),
        }
    }

    /// Event lines go to `sink` instead of stdout (`--output`).
    pub fn writing_to(mut self, sink: file::Sink) -> Self {
        self.out = sink;
        self
    }

    /// SIGHUP: reopen the output file.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.reopen()
    }

    pub fn header(&mut self) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        let line = Columns::HEADER.line();
        writeln!(self.out, "{}", self.style.dim(&line))?;
        self.out.flush()
    }

    pub fn event(&mut self, ev: &Event, verdict: Option<&Verdict>) -> io::Result<()> {
        if self.json {
            let obj = JsonEvent::new(ev, verdict, &self.clock);
            json::write_line(&mut self.out, &obj)
        } else {
            self.human(ev, verdict)
        }
    }

    fn human(&mut self, ev: &Event, verdict: Option<&Verdict>) -> io::Result<()> {
        let s = &self.style;
        let sock = ev.socket.as_ref();
        let proto = sock
            .map(SocketView::proto_family)
            .unwrap_or_else(|| "?".into());
        let address = match (ev.call, &ev.requested, sock) {
            (Call::Bind | Call::Connect, Some(r), _) => requested_endpoint(r),
            (Call::Bind | Call::Connect, None, _) => "(unreadable)".to_string(),
            (Call::Listen, _, Some(s)) => s.endpoint(),
            (Call::Listen, _, None) => "?".to_string(),
        };
        let (result, result_len) = match ev.errno() {
            None => (s.green("ok"), 2),
            Some(e) => {
                let n = errno::name(e);
                let len = n.len();
                (s.red(&n), len)
            }
        };
        let mut details = Vec::new();
        if let Some(sock) = sock {
            let asked_zero =
                ev.call == Call::Bind && ev.requested.as_ref().is_some_and(|r| r.port == 0);
            if ev.ok() && asked_zero && sock.port != 0 {
                details.push(format!("got port {}", sock.port));
            }
            if ev.kernel_socket {
                details.push("in-kernel socket".to_string());
            }
            details.extend(attempts_detail(u64::from(ev.attempts)));
            // A connect()'s ADDRESS is the destination; the local end, when it had one.
            if ev.call == Call::Connect && sock.port != 0 {
                details.push(format!("from {}", sock.endpoint()));
            }
            details.extend(sock.options.words(sock.family));
            if sock.netns != 0 && sock.netns != self.own_netns {
                details.push(format!("netns {}", sock.netns));
            }
        }
        if let Some(w) = ev.workload.as_ref().filter(|w| !w.is_root()) {
            details.push(w.label());
        }
        let line = Columns {
            time: &time_of_day(self.clock.unix_ns(ev.boot_ns)),
            pid: &ev.pid.to_string(),
            comm: &safe(&ev.comm),
            call: ev.call.as_str(),
            proto: &proto,
            address: &address,
            result: &result,
            result_len,
            details: &s.dim(&safe(&details.join(" "))),
        }
        .line();
        writeln!(self.out, "{line}")?;
        if let Some(v) = verdict {
            let mark = if v.ok {
                s.green("↳")
            } else {
                s.yellow("↳")
            };
            // The explanation quotes names (comm, interfaces, cgroup paths): made safe whole.
            writeln!(self.out, "    {mark} {}", safe(&v.message))?;
            for line in &v.details {
                writeln!(self.out, "      {}", s.dim(&safe(line)))?;
            }
            if let Some(fix) = &v.fix {
                writeln!(self.out, "      {} {}", s.yellow("fix:"), safe(fix))?;
            }
        }
        Ok(())
    }

    /// Events the kernel dropped since the last report. Always said, never silent.
    pub fn lost(&mut self, new: u64, total: u64) -> io::Result<()> {
        if self.json {
            json::write_line(&mut self.out, &JsonLost::new(new, total))?;
        }
        self.out.flush()?;
        status(format_args!(
            "portwatch: warning: {new} events lost (ring buffer full; {total} lost in all). \
             Narrow the trace with --port or --pid."
        ));
        Ok(())
    }

    pub fn summary(&mut self, sum: &Summary) -> io::Result<()> {
        if self.json {
            json::write_line(&mut self.out, &JsonSummary::from(sum))?;
        }
        self.out.flush()?;
        let failures = if sum.by_errno.is_empty() {
            "none".to_string()
        } else {
            sum.by_errno
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Repeats folded into one event ([`Event::attempts`]) make more calls than events.
        let calls = sum.binds + sum.listens + sum.connects;
        status(format_args!(
            "portwatch: {} event{}{} ({} bind, {} listen{}) in {:.1}s; failures: {failures}; lost: {}{}",
            sum.events,
            if sum.events == 1 { "" } else { "s" },
            if calls != sum.events {
                format!(" for {calls} calls")
            } else {
                String::new()
            },
            sum.binds,
            sum.listens,
            if sum.connects > 0 {
                format!(", {} connect", sum.connects)
            } else {
                String::new()
            },
            sum.seconds,
            sum.lost,
            if sum.unexplained_at_exit > 0 {
                format!(
                    "; {} more were waiting and were dropped unexplained at exit",
                    sum.unexplained_at_exit
                )
            } else {
                String::new()
            }
        ));
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The address asked for, with its scope as `ip` and `ping` write it: `[fe80::1%eth0]:80`
/// (the index where the name is unknown).
pub(crate) fn requested_endpoint(r: &Requested) -> String {
    match r.addr {
        IpAddr::V6(a) if r.scope_id != 0 => match &r.scope_name {
            Some(name) => format!("[{a}%{}]:{}", safe(name), r.port),
            None => format!("[{a}%{}]:{}", r.scope_id, r.port),
        },
        _ => endpoint(r.addr, r.port),
    }
}

/// What the closing summary reports.
pub struct Summary {
    pub events: u64,
    pub binds: u64,
    pub listens: u64,
    /// Failed connect()s (only those for want of a local port are traced).
    pub connects: u64,
    pub by_errno: BTreeMap<String, u64>,
    /// Events the kernel dropped because the ring buffer was full.
    pub lost: u64,
    /// Events that reached the ring buffer but were not explained because portwatch was told
    /// to stop (it exits within a second whatever the backlog).
    pub unexplained_at_exit: u64,
    pub seconds: f64,
    pub backend: Backend,
}

impl Summary {
    pub fn new(backend: Backend) -> Self {
        Summary {
            events: 0,
            binds: 0,
            listens: 0,
            connects: 0,
            by_errno: BTreeMap::new(),
            lost: 0,
            unexplained_at_exit: 0,
            seconds: 0.0,
            backend,
        }
    }

    /// One event, standing for `ev.attempts` calls: the call counts count each attempt.
    pub fn count(&mut self, ev: &Event) {
        let calls = u64::from(ev.attempts);
        self.events += 1;
        match ev.call {
            Call::Bind => self.binds += calls,
            Call::Listen => self.listens += calls,
            Call::Connect => self.connects += calls,
        }
        if let Some(e) = ev.errno() {
            *self.by_errno.entry(errno::name(e)).or_default() += calls;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        // 2026-11-24T16:00:01.000123Z
        let ns = 1_795_536_001_000_123_000_i128;
        assert_eq!(rfc3339(ns), "2026-11-24T16:00:01.000123Z");
    }

    #[test]
    fn reads_back_what_it_writes() {
        for ns in [
            1_795_536_001_000_123_000_i128,
            0,
            951_782_400_000_000_000, // 2000-02-29
            4_107_542_399_999_999_000,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns), "{}", rfc3339(ns));
        }
        assert_eq!(
            parse_rfc3339("2026-11-24T16:00:01Z"),
            Some(1_795_536_001_000_000_000)
        );
        for bad in [
            "",
            "2026-11-24 16:00:01Z",
            "2026-13-01T00:00:00Z",
            "2026-11-24T16:00:01.5+01:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
