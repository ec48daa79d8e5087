//! What one journal entry says about a failed call: built from the same event and verdict the
//! terminal and JSON outputs show, so every call portwatch explains (bind, listen, and any
//! call added later) reaches the journal with no journal-specific work. Pure: the caller
//! decides whether the failing process may be named by `OBJECT_PID` (see [`super`]).
//!
//! Fields (documented in the README):
//! - `MESSAGE`: who failed and the explanation, one line, control characters shown escaped;
//!   the fix follows on a second line, which `journalctl` and `systemctl status` indent under
//!   the first.
//! - `PRIORITY=3` (err), `SYSLOG_IDENTIFIER=portwatch`, `MESSAGE_ID` ([`FAILED`], or
//!   [`REPEATED`] for a line that stands for repeats).
//! - `PORTWATCH_*`: the call, as data to filter on; `PORTWATCH_ATTEMPTS` only for a
//!   connect() repeated on its socket ([`Event::attempts`]).
//! - `OBJECT_SYSTEMD_UNIT` (and `OBJECT_SYSTEMD_USER_UNIT`, `OBJECT_SYSTEMD_OWNER_UID` for a
//!   user unit), `OBJECT_SYSTEMD_CGROUP`: the unit of the cgroup the kernel reported for the
//!   call, by systemd's own rule ([`crate::workload::OwningUnit`]); `OBJECT_PID` when allowed.

use super::native::Fields;
use crate::{
    errno,
    event::Event,
    explain::Verdict,
    output::{requested_endpoint, terminal::safe},
    workload::OwningUnit,
};

/// `MESSAGE_ID` of an entry explaining one failed call.
pub const FAILED: &str = "cb3ded73ecc74f17ab0d48abf0adfbb6";
/// `MESSAGE_ID` of an entry standing for repeats of a failure already in the journal.
pub const REPEATED: &str = "dee851f624fe42ea87cac2e0bb857fa8";

/// The most bytes of one free-text value (`MESSAGE`, `PORTWATCH_FIX`): an entry stays far
/// below the datagram limit (~208 KiB), so it always goes out in one datagram.
const MAX_TEXT: usize = 8 * 1024;

/// A line that stands for failures coalesced since the last entry of their kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repeats {
    /// Failures like this one since the last entry of its kind.
    pub count: u64,
    /// Over how many seconds.
    pub secs: u64,
}

/// "nginx.service (pid 812, nginx)", "pid 812 (nginx)": who failed, as a person reads it.
pub fn who(ev: &Event) -> String {
    let comm = safe(&ev.comm);
    match ev.workload.as_ref().filter(|w| !w.is_root()) {
        Some(w) => format!("{} (pid {}, {comm})", safe(&w.label()), ev.pid),
        None => format!("pid {} ({comm})", ev.pid),
    }
}

/// The address the call concerns: as asked (bind), else as bound (listen).
fn address(ev: &Event) -> Option<String> {
    match (&ev.requested, &ev.socket) {
        (Some(r), _) => Some(requested_endpoint(r)),
        (None, Some(s)) => Some(s.endpoint()),
        (None, None) => None,
    }
}

/// `MESSAGE`: "nginx.service (pid 812, nginx): EADDRINUSE on bind tcp4 0.0.0.0:80: pid 640
/// (apache2) holds ..." and, on a second line, "fix: ...".
pub fn message(ev: &Event, verdict: Option<&Verdict>, repeats: Option<Repeats>) -> String {
    let err = ev.errno().map(errno::name).unwrap_or_else(|| "ok".into());
    let proto = ev
        .socket
        .as_ref()
        .map(|s| format!(" {}", s.proto_family()))
        .unwrap_or_default();
    let addr = address(ev).map(|a| format!(" {a}")).unwrap_or_default();
    let said = match verdict {
        Some(v) => {
            let m = v.message.as_str();
            m.strip_prefix(&format!("{err}: ")).unwrap_or(m).to_string()
        }
        None => "portwatch has no explanation for this call".to_string(),
    };
    let attempts = if ev.attempts > 1 {
        format!(" ({} attempts)", ev.attempts)
    } else {
        String::new()
    };
    let mut line = format!(
        "{}: {err} on {}{proto}{addr}{attempts}: {said}",
        who(ev),
        ev.call.as_str()
    );
    if let Some(r) = repeats {
        line.push_str(&format!(
            " (repeated {} more time{} in the last {} s; repeats are coalesced)",
            r.count,
            if r.count == 1 { "" } else { "s" },
            r.secs
        ));
    }
    let mut text = cap(safe(&line).into_owned());
    if let Some(fix) = verdict.and_then(|v| v.fix.as_deref()) {
        text.push_str("\nfix: ");
        text.push_str(&cap(safe(fix).into_owned()));
    }
    text
}

/// `s` cut to [`MAX_TEXT`] bytes at a character boundary, marked when cut.
fn cap(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut at = MAX_TEXT;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push_str(" [cut]");
    }
    s
}

/// The whole entry. `object_pid`: the failing process still runs in the cgroup of the call,
/// so journald may read its details through `OBJECT_PID`.
pub fn fields(
    ev: &Event,
    verdict: Option<&Verdict>,
    repeats: Option<Repeats>,
    object_pid: bool,
) -> Fields {
    let mut f = Fields::default();
    f.add("MESSAGE", message(ev, verdict, repeats));
    f.add("PRIORITY", "3");
    f.add("SYSLOG_IDENTIFIER", "portwatch");
    f.add(
        "MESSAGE_ID",
        if repeats.is_some() { REPEATED } else { FAILED },
    );
    f.add("PORTWATCH_CALL", ev.call.as_str());
    if let Some(s) = &ev.socket {
        f.add("PORTWATCH_PROTOCOL", s.proto.name());
        f.add("PORTWATCH_FAMILY", s.family.name());
    }
    match (&ev.requested, &ev.socket) {
        (Some(r), _) => f.add("PORTWATCH_ADDRESS", r.addr.to_string()),
        (None, Some(s)) => f.add("PORTWATCH_ADDRESS", s.addr.to_string()),
        (None, None) => {}
    }
    f.add("PORTWATCH_PORT", ev.port().to_string());
    if let Some(e) = ev.errno() {
        f.add("PORTWATCH_ERRNO", errno::name(e));
    }
    if let Some(v) = verdict {
        f.add("PORTWATCH_RULE", v.rule.id());
        if let Some(fix) = &v.fix {
            f.add("PORTWATCH_FIX", cap(fix.clone()));
        }
        let mut pids = Vec::new();
        let mut units: Vec<String> = Vec::new();
        for o in v.holders.iter().flat_map(|i| &i.holder.owners) {
            if !pids.contains(&o.pid) {
                pids.push(o.pid);
            }
            if let Some(u) = o.workload.as_ref().and_then(|w| w.owning_unit()) {
                let name = unit_name(&u).to_string();
                if !units.contains(&name) {
                    units.push(name);
                }
            }
        }
        if !pids.is_empty() {
            let list: Vec<String> = pids.iter().map(u32::to_string).collect();
            f.add("PORTWATCH_HOLDER_PIDS", list.join(" "));
        }
        if !units.is_empty() {
            f.add("PORTWATCH_HOLDER_UNITS", units.join(" "));
        }
    }
    if let Some(r) = repeats {
        f.add("PORTWATCH_REPEATS", r.count.to_string());
    }
    if ev.attempts > 1 {
        f.add("PORTWATCH_ATTEMPTS", ev.attempts.to_string());
    }
    f.add("PORTWATCH_PID", ev.pid.to_string());
    f.add("PORTWATCH_COMM", ev.comm.clone());
    f.add("PORTWATCH_UID", ev.uid.to_string());
    if let Some(n) = ev.netns() {
        f.add("PORTWATCH_NETNS", n.to_string());
    }
    if object_pid {
        f.add("OBJECT_PID", ev.pid.to_string());
    }
    if let Some(w) = &ev.workload {
        f.add("OBJECT_SYSTEMD_CGROUP", w.path.clone());
        match w.owning_unit() {
            Some(OwningUnit::System(unit)) => f.add("OBJECT_SYSTEMD_UNIT", unit),
            Some(OwningUnit::User { manager, uid, unit }) => {
                f.add("OBJECT_SYSTEMD_UNIT", manager);
                f.add("OBJECT_SYSTEMD_USER_UNIT", unit);
                f.add("OBJECT_SYSTEMD_OWNER_UID", uid.to_string());
            }
            None => {}
        }
    }
    f
}

/// "nginx.service", or "user@1000.service/app.service" for a user unit: one word, so a list
/// of them is space-separated.
pub fn unit_name<'a>(u: &OwningUnit<'a>) -> std::borrow::Cow<'a, str> {
    match u {
        OwningUnit::System(unit) => (*unit).into(),
        OwningUnit::User { manager, unit, .. } => format!("{manager}/{unit}").into(),
    }
}

#[cfg(test)]
mod tests;
