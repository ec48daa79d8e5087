//! `trace --journal`: every failed call to the systemd journal, filed under the failing
//! process's unit, so `journalctl -u UNIT` and `systemctl status UNIT` show portwatch's
//! explanation next to the service's own error.
//!
//! - [`native`]: journald's native protocol (a datagram of fields; no libsystemd).
//! - [`entry`]: the fields of one entry, from the event and verdict every output shows.
//! - [`coalesce`]: storms become one line per kind per window.
//!
//! Attribution. journald trusts `OBJECT_*` fields only from uid 0 (`journalctl -u` matches
//! `OBJECT_SYSTEMD_UNIT` with `_UID=0`), so that is how the shipped unit runs. The unit comes
//! from the cgroup the kernel reported for the call, by systemd's rule (the outermost unit), so
//! a process that owns a delegated subtree cannot name another unit. `OBJECT_PID` is added
//! only when the failing process still runs in that same cgroup as the entry is sent (then
//! journald adds its command line and executable); for a process that has exited, whose pid
//! could be someone else's by now, and for every repeat line, it is left out.

pub mod coalesce;
pub mod entry;
pub mod native;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use self::{
    coalesce::{Coalescer, MAX_KINDS, WINDOW},
    entry::Repeats,
    native::{Fields, Writer},
};
use crate::{cgroup, errno, event::Event, explain::Verdict, output};

/// What makes two failures "the same" for coalescing: who (the unit, else the pid), the call,
/// the protocol, the port, the errno and the rule.
#[derive(Clone, Hash, PartialEq, Eq)]
struct Kind {
    who: String,
    call: &'static str,
    proto: Option<String>,
    port: u16,
    errno: Option<i32>,
    rule: Option<&'static str>,
}

impl Kind {
    fn of(ev: &Event, verdict: Option<&Verdict>) -> Self {
        Kind {
            who: match ev.workload.as_ref().and_then(|w| w.owning_unit()) {
                Some(u) => entry::unit_name(&u).into_owned(),
                None => format!("pid {}", ev.pid),
            },
            call: ev.call.as_str(),
            proto: ev.socket.as_ref().map(|s| s.proto_family()),
            port: ev.port(),
            errno: ev.errno(),
            rule: verdict.map(|v| v.rule.id()),
        }
    }
}

/// How often, at most, a failure to write to the journal is said on stderr.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The journal side of a trace.
pub struct Journal {
    writer: Writer,
    storms: Coalescer<Kind, (Event, Option<Verdict>)>,
    /// Failed calls seen, entries written, failures folded into repeat lines, entries journald
    /// refused (each said on stderr, at most every [`WARN_EVERY`]).
    failures: u64,
    written: u64,
    coalesced: u64,
    not_written: u64,
    warned: Option<Instant>,
}

impl Journal {
    /// Fails, with the fix, when journald does not listen here.
    pub fn open() -> Result<Self> {
        let path = Path::new(native::SOCKET);
        match std::fs::metadata(path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {}
            Ok(_) => bail!("--journal: {} is not a socket", path.display()),
            Err(e) => bail!(
                "--journal: {}: {e}: journald does not run here (start systemd-journald, or \
                 leave out --journal)",
                path.display()
            ),
        }
        if unsafe { libc::geteuid() } != 0 {
            output::status(format_args!(
                "portwatch: note: --journal as uid {}: journald files entries under the \
                 failing unit only when uid 0 sends them, so `journalctl -u UNIT` will not \
                 show them; `journalctl -t portwatch` will",
                unsafe { libc::geteuid() }
            ));
        }
        Ok(Journal {
            writer: Writer::new(path)?,
            storms: Coalescer::new(WINDOW, MAX_KINDS),
            failures: 0,
            written: 0,
            coalesced: 0,
            not_written: 0,
            warned: None,
        })
    }

    /// A traced call: failures are written (or counted, in a storm); successes are not.
    pub fn call(&mut self, ev: &Event, verdict: Option<&Verdict>) {
        if ev.ok() {
            return;
        }
        self.failures += 1;
        let now = Instant::now();
        if self.storms.offer(&Kind::of(ev, verdict), now, || {
            (ev.clone(), verdict.cloned())
        }) {
            let fields = entry::fields(ev, verdict, None, still_there(ev));
            self.send(&fields);
        } else {
            self.coalesced += 1;
        }
    }

    /// Writes the repeat lines whose window ended (all of them with `all`, at exit).
    pub fn tick(&mut self, all: bool) {
        let now = Instant::now();
        for due in self.storms.due(now, all) {
            let (ev, verdict) = &due.sample;
            let repeats = Repeats {
                count: due.repeats,
                secs: due.span.as_secs().max(1),
            };
            let fields = entry::fields(ev, verdict.as_ref(), Some(repeats), false);
            self.send(&fields);
        }
        if let Some((n, span)) = self.storms.overflow_due(now, all) {
            let mut f = Fields::default();
            f.add(
                "MESSAGE",
                format!(
                    "{n} more failed call{} in the last {} s, of more kinds than portwatch \
                     writes to the journal at once ({MAX_KINDS} per {} s); `portwatch why` \
                     and the JSON log have each one",
                    if n == 1 { "" } else { "s" },
                    span.as_secs().max(1),
                    WINDOW.as_secs()
                ),
            );
            f.add("PRIORITY", "4");
            f.add("SYSLOG_IDENTIFIER", "portwatch");
            f.add("MESSAGE_ID", entry::REPEATED);
            f.add("PORTWATCH_REPEATS", n.to_string());
            self.send(&f);
        }
    }

    fn send(&mut self, fields: &Fields) {
        match self.writer.send(fields) {
            Ok(()) => self.written += 1,
            Err(e) => {
                self.not_written += 1;
                if self.warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    self.warned = Some(Instant::now());
                    output::status(format_args!(
                        "portwatch: warning: the journal refused an entry ({}: {}); {} not \
                         written so far",
                        self.writer.path().display(),
                        e.raw_os_error()
                            .map(errno::name)
                            .unwrap_or_else(|| e.to_string()),
                        self.not_written
                    ));
                }
            }
        }
    }

    /// At exit: pending repeat lines out, then one status line with the counts.
    pub fn finish(&mut self) {
        self.tick(true);
        output::status(format_args!(
            "portwatch: journal: {} failed call{}, {} entr{} written ({} repeats coalesced), {} \
             not written",
            self.failures,
            if self.failures == 1 { "" } else { "s" },
            self.written,
            if self.written == 1 { "y" } else { "ies" },
            self.coalesced,
            self.not_written
        ));
    }
}

/// Whether the failing process still runs in the cgroup of its call, so `OBJECT_PID` names it
/// and not a process that took its pid since.
fn still_there(ev: &Event) -> bool {
    let Some(w) = &ev.workload else { return false };
    cgroup::path_of_pid(ev.pid).is_some_and(|p| p == w.path)
}
