//! Phrase helpers every sentence uses: who holds a socket, what the socket is, the error's
//! name, durations, the ephemeral range.

use std::net::IpAddr;

use super::Attempt;
use crate::{
    errno,
    event::Call,
    facts::Facts,
    sockets::{Holder, Owner, OwnerStatus, Proto, SocketView, State},
};

pub fn err_name(at: &Attempt) -> String {
    let name = errno::name(at.ev.errno().unwrap_or(0));
    match at.ev.call {
        Call::Bind => name,
        Call::Listen => format!("{name} at listen()"),
        Call::Connect => format!("{name} at connect()"),
    }
}

/// "pid 812 (java)", "pids 812, 813 (nginx)", or what stands in for an owner.
pub fn who(h: &Holder) -> String {
    if h.owners.is_empty() {
        return match &h.status {
            OwnerStatus::InKernel { bound_by: Some(b) } => format!(
                "an in-kernel socket (no process: the kernel opened it for itself when pid {} \
                 ({}) asked it to, e.g. for a tunnel device; inode {})",
                b.pid, b.comm, h.socket.ino
            ),
            OwnerStatus::InKernel { bound_by: None } => format!(
                "an in-kernel socket (no process: the kernel opened it for itself, e.g. a tunnel; \
                 inode {})",
                h.socket.ino
            ),
            // The same words as for a live owner: the sentence is about the call, and at the
            // call this process held it. That it has let go since is said in the details.
            OwnerStatus::Closed { bound_by } => format!(
                "pid {} ({}{})",
                bound_by.pid,
                bound_by.comm,
                workload_words(bound_by)
            ),
            OwnerStatus::Unknown { why } => {
                format!("socket inode {} (no owner found: {why})", h.socket.ino)
            }
            OwnerStatus::Live | OwnerStatus::NoProcess => {
                if h.socket.state.is_time_wait() {
                    format!(
                        "a {} connection (no process owns it)",
                        h.socket.state_name()
                    )
                } else {
                    "an orphaned socket (its process has closed it)".to_string()
                }
            }
        };
    }
    let mut pids: Vec<u32> = h.owners.iter().map(|o| o.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    let comm = &h.owners[0].comm;
    let workload = workload_words(&h.owners[0]);
    let list = pids
        .iter()
        .take(4)
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let more = if pids.len() > 4 {
        format!(" and {} more", pids.len() - 4)
    } else {
        String::new()
    };
    if pids.len() == 1 {
        format!("pid {list} ({comm}{workload})")
    } else {
        format!("pids {list}{more} ({comm}{workload})")
    }
}

/// ", docker 3f4e5a6b7c8d": where a process runs, when it is not the root cgroup.
fn workload_words(o: &Owner) -> String {
    o.workload
        .as_ref()
        .filter(|w| !w.is_root())
        .map(|w| format!(", {}", w.label()))
        .unwrap_or_default()
}

/// "[::]:8080 dual-stack (IPV6_V6ONLY=0, listening)", "udp 0.0.0.0:53 (SO_REUSEADDR)".
pub fn holder_desc(h: &SocketView) -> String {
    let proto = if h.proto == Proto::Tcp {
        String::new()
    } else {
        format!("{} ", h.proto.name())
    };
    let mut s = format!("{proto}{}", h.endpoint());
    let mut notes: Vec<String> = Vec::new();
    if matches!(h.addr, IpAddr::V6(a) if a.is_unspecified()) {
        s.push_str(if h.options.v6only {
            " v6-only"
        } else {
            " dual-stack"
        });
        notes.push(format!("IPV6_V6ONLY={}", u8::from(h.options.v6only)));
    }
    if h.proto == Proto::Tcp {
        notes.push(h.state.describe(h.proto).to_string());
    } else if h.state == State::ESTABLISHED {
        notes.push("connected".to_string());
    }
    if let (true, Some(ms)) = (h.state.is_time_wait(), h.tw_left_ms) {
        notes.push(format!("gone in {}", seconds(ms)));
    }
    if h.options.reuseaddr {
        notes.push("SO_REUSEADDR".into());
    }
    if h.options.reuseport {
        notes.push("SO_REUSEPORT".into());
    }
    if h.options.bound_dev_if != 0 {
        notes.push(format!("device {}", h.options.device_name()));
    }
    if !notes.is_empty() {
        s.push_str(&format!(" ({})", notes.join(", ")));
    }
    s
}

pub fn seconds(ms: u64) -> String {
    if ms >= 10_000 {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// The ephemeral range as a phrase, and how many ports it has.
pub fn range_text(f: &Facts) -> Option<(String, u32)> {
    f.sysctls.ip_local_port_range.map(|(lo, hi)| {
        (
            format!("net.ipv4.ip_local_port_range {lo}–{hi}"),
            u32::from(hi.saturating_sub(lo)) + 1,
        )
    })
}
