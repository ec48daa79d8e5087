//! The sentences: one per rule, written for someone who has never read the kernel source.

use std::net::IpAddr;

use portwatch_common::walk;

use super::{
    Attempt, Facts, Holder, HolderReport, OwnerStatus, Source, Verdict,
    conflict::{Blocker, Coexist, Overlap, Relation},
};
use crate::{
    errno,
    event::Call,
    sockets::{Family, Proto, SocketView, endpoint},
};

fn verdict(ok: bool, rule: &'static str, message: String) -> Verdict {
    Verdict {
        ok,
        rule,
        message,
        details: vec![],
        fix: None,
        holders: vec![],
        shares_with: vec![],
    }
}

fn err_name(at: &Attempt) -> String {
    let name = errno::name(at.ev.errno().unwrap_or(0));
    match at.ev.call {
        Call::Bind => name,
        Call::Listen => format!("{name} at listen()"),
    }
}

/// "pid 812 (java)", "pids 812, 813 (nginx)", or what stands in for an owner.
pub fn who(h: &Holder) -> String {
    if h.owners.is_empty() {
        return match &h.status {
            OwnerStatus::InKernel => format!(
                "an in-kernel socket (no process: the kernel opened it for itself, e.g. a tunnel; \
                 inode {})",
                h.socket.ino
            ),
            // The same words as for a live owner: the sentence is about the call, and at the
            // call this process held it. That it has let go since is said in the details.
            OwnerStatus::Closed { bound_by } => format!("pid {} ({})", bound_by.pid, bound_by.comm),
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
        format!("pid {list} ({comm})")
    } else {
        format!("pids {list}{more} ({comm})")
    }
}

/// "[::]:8080 dual-stack (IPV6_V6ONLY=0, listening)", "udp 0.0.0.0:53 (SO_REUSEADDR)".
fn holder_desc(h: &SocketView) -> String {
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
    } else if h.state == crate::sockets::State::ESTABLISHED {
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

fn seconds(ms: u64) -> String {
    if ms >= 10_000 {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn report(h: &Holder, rule: &'static str, why: String) -> HolderReport {
    HolderReport::new(h, Some(rule), Some(why))
}

fn overlap_rule(o: Overlap) -> &'static str {
    match o {
        Overlap::Same => "same-address",
        Overlap::V4Mapped => "v4-mapped",
        Overlap::HolderWildcard => "wildcard-covers-specific",
        Overlap::AskerWildcard => "specific-blocks-wildcard",
        Overlap::HolderDualStack => "dual-stack-covers-ipv4",
        Overlap::AskerDualStack => "ipv4-blocks-dual-stack",
    }
}

/// Overlaps across address families are the surprise in a clash, so they lead over the
/// sharing options that failed to help (those still appear in the message).
fn cross_family(o: Overlap) -> bool {
    matches!(
        o,
        Overlap::HolderDualStack | Overlap::AskerDualStack | Overlap::V4Mapped
    )
}

/// The rule that decides a clash between the asker and one holder.
fn clash_rule(o: Overlap, b: Blocker) -> &'static str {
    let soft = matches!(
        b,
        Blocker::NoOptions
            | Blocker::HolderListens
            | Blocker::ReuseAddrOneSided { .. }
            | Blocker::ReusePortOneSided { .. }
    );
    if soft && cross_family(o) {
        overlap_rule(o)
    } else {
        blocker_rule(b).unwrap_or(overlap_rule(o))
    }
}

fn blocker_rule(b: Blocker) -> Option<&'static str> {
    Some(match b {
        Blocker::NoOptions => return None,
        Blocker::ReuseAddrOneSided { .. } => "reuseaddr-needs-both",
        Blocker::HolderListens => "reuseaddr-vs-listen",
        Blocker::ListenTwice => "listen-conflict",
        Blocker::TimeWait { .. } => "time-wait",
        Blocker::ReusePortOneSided { .. } => "reuseport-needs-both",
        Blocker::ReusePortUid { .. } => "reuseport-uid-mismatch",
        Blocker::DeviceVsUnbound { .. } => "bindtodevice-unbound",
    })
}

/// The clause saying how the addresses overlap: "which covers 0.0.0.0:8080".
fn overlap_clause(o: Overlap, at: &Attempt) -> String {
    let a = at.endpoint();
    match o {
        Overlap::Same => "exactly the address and port asked for".to_string(),
        Overlap::V4Mapped => {
            format!("the same IPv4 address as {a}, written once as IPv4-mapped IPv6")
        }
        Overlap::HolderWildcard => format!("and its wildcard address covers {a}"),
        Overlap::AskerWildcard => {
            format!("and the wildcard {a} would cover that specific address")
        }
        Overlap::HolderDualStack => format!("which covers {a}"),
        Overlap::AskerDualStack => {
            format!("and {a} is dual-stack (IPV6_V6ONLY=0), so it would take IPv4 too")
        }
    }
}

fn overlap_fix(o: Overlap, h: &Holder) -> String {
    let w = who(h);
    match o {
        Overlap::Same | Overlap::V4Mapped => format!(
            "stop {w} or use another port; to run several servers on one port, set \
             SO_REUSEPORT on every socket (same user)"
        ),
        Overlap::HolderWildcard => format!(
            "make {w} bind its specific address instead of the wildcard, or use another port"
        ),
        Overlap::AskerWildcard => {
            "bind only the specific addresses you need instead of the wildcard, or use \
             another port"
                .to_string()
        }
        Overlap::HolderDualStack => format!(
            "set IPV6_V6ONLY=1 on the [::] socket of {w} (nginx: listen [::]:PORT \
             ipv6only=on) so IPv4 stays free, or let that one socket serve both"
        ),
        Overlap::AskerDualStack => {
            "set IPV6_V6ONLY=1 on this socket to serve IPv6 only, or stop the IPv4 holder and \
             let this dual-stack socket serve both"
                .to_string()
        }
    }
}

/// EADDRINUSE with at least one conflicting holder. The first one leads.
pub fn conflict(at: &Attempt, conflicts: &[(&Holder, Overlap, Blocker)]) -> Verdict {
    let (h, o, b) = conflicts[0];
    let e = err_name(at);
    let w = who(h);
    let hd = holder_desc(&h.socket);
    let udp = matches!(at.side.proto, Proto::Udp | Proto::UdpLite);
    let rule = clash_rule(o, b);
    let (message, fix) = match b {
        Blocker::NoOptions => (
            format!("{e}: {w} holds {hd}, {}.", overlap_clause(o, at)),
            overlap_fix(o, h),
        ),
        Blocker::ReuseAddrOneSided { asker_has } => {
            let missing = if asker_has {
                format!("the socket of {w} doesn't")
            } else {
                "this socket doesn't".to_string()
            };
            let meaning = if udp {
                "for UDP, SO_REUSEADDR on both sockets lets them share even the same address"
            } else {
                "SO_REUSEADDR lets sockets share a port only when both set it"
            };
            (
                format!(
                    "{e}: {w} holds {hd}, {}; {meaning}, and {missing}.",
                    overlap_clause(o, at)
                ),
                if asker_has {
                    format!("set SO_REUSEADDR on the socket of {w} too, before its bind()")
                } else {
                    "set SO_REUSEADDR on this socket before bind()".to_string()
                },
            )
        }
        Blocker::HolderListens => (
            format!(
                "{e}: {w} holds {hd}, {}; SO_REUSEADDR never lets a socket bind next to a \
                 listening one.",
                overlap_clause(o, at)
            ),
            format!(
                "stop {w} first, or set SO_REUSEPORT on both sockets (same user) to share the \
                 port"
            ),
        ),
        Blocker::ListenTwice => (
            format!(
                "{e}: {w} already listens on {hd}; SO_REUSEADDR let both sockets bind, but \
                 only one of them may listen."
            ),
            "listen on one socket only, or set SO_REUSEPORT on both (same user) so the kernel \
             spreads connections across them"
                .to_string(),
        ),
        Blocker::TimeWait {
            asker_reuse,
            holder_reuse,
        } => {
            let peer = h
                .socket
                .peer
                .map(|(a, p)| format!(" with {}", endpoint(a, p)))
                .unwrap_or_default();
            let left = h
                .socket
                .tw_left_ms
                .map(|ms| format!(" for {} more", seconds(ms)))
                .unwrap_or_default();
            let lacking = match (asker_reuse, holder_reuse) {
                (false, true) => "this socket doesn't set SO_REUSEADDR".to_string(),
                (true, false) => "the old socket didn't: the old server's listening socket \
                                  lacked SO_REUSEADDR, and its connections inherited that"
                    .to_string(),
                _ => "neither has it".to_string(),
            };
            (
                format!(
                    "{e}: a connection of the old server on {}{peer} is still in {}{left} \
                     (no process owns it); a new bind gets past it only if both it and the new \
                     socket have SO_REUSEADDR, and {lacking}.",
                    h.socket.endpoint(),
                    h.socket.state_name()
                ),
                if holder_reuse {
                    "set SO_REUSEADDR on the server socket before bind()".to_string()
                } else {
                    format!(
                        "set SO_REUSEADDR before bind() in the server (then its next restart \
                         passes its own TIME_WAIT connections), or wait{}",
                        h.socket
                            .tw_left_ms
                            .map(|ms| format!(" {}", seconds(ms)))
                            .unwrap_or_default()
                    )
                },
            )
        }
        Blocker::ReusePortOneSided { asker_has } => {
            let missing = if asker_has {
                format!("the socket of {w} doesn't")
            } else {
                "this socket doesn't".to_string()
            };
            (
                format!(
                    "{e}: {w} holds {hd}, {}; SO_REUSEPORT shares a port only when every socket \
                     on it sets it, and {missing}.",
                    overlap_clause(o, at)
                ),
                "set SO_REUSEPORT on every socket of the port, before bind(), all as the same \
                 user"
                    .to_string(),
            )
        }
        Blocker::ReusePortUid { asker, holder } => {
            let u = |x: Option<u32>| x.map_or("?".to_string(), |v| v.to_string());
            (
                format!(
                    "{e}: {w} holds {hd} with SO_REUSEPORT as uid {}, and this socket is uid {}; \
                     SO_REUSEPORT shares a port only between sockets of the same user.",
                    u(holder),
                    u(asker)
                ),
                "run both as the same user".to_string(),
            )
        }
        Blocker::DeviceVsUnbound {
            asker_dev,
            holder_dev,
        } => {
            let (bound_side, dev) = if asker_dev != 0 {
                ("this socket is", at.sock.options.device_name())
            } else {
                ("the holder is", h.socket.options.device_name())
            };
            let _ = holder_dev;
            (
                format!(
                    "{e}: {w} holds {hd}, {}; {bound_side} bound to device {dev}, but a socket \
                     bound to no device covers every device, so they clash.",
                    overlap_clause(o, at)
                ),
                "bind both sockets to (different) devices with SO_BINDTODEVICE, or neither"
                    .to_string(),
            )
        }
    };
    let mut v = verdict(false, rule, message);
    v.fix = Some(if rule == overlap_rule(o) {
        overlap_fix(o, h)
    } else {
        fix
    });
    for (i, (h, o, b)) in conflicts.iter().enumerate() {
        let r = clash_rule(*o, *b);
        v.holders.push(report(
            h,
            r,
            format!("{}: {}", who(h), holder_desc(&h.socket)),
        ));
        if i > 0 && i <= 5 {
            v.details.push(format!(
                "also in the way: {} holds {}",
                who(h),
                holder_desc(&h.socket)
            ));
        }
    }
    if conflicts.len() > 6 {
        v.details
            .push(format!("and {} more sockets", conflicts.len() - 6));
    }
    if h.source == Source::KernelConflictCheck {
        v.details
            .push("reported by the kernel's own conflict check".to_string());
    }
    v
}

/// EADDRINUSE, no holder found.
pub fn holder_not_found(at: &Attempt, f: &Facts, rels: &[(&Holder, Relation)]) -> Verdict {
    let e = err_name(at);
    let at_call = at.ev.walk.is_some_and(|w| w & walk::DONE != 0);
    let why = if f.holders_incomplete {
        "the list of the port's owners the kernel side read at the call was cut short, and the \
         one in the way was not among those it sent"
    } else if at_call {
        "none of the sockets the kernel had on the port at the call conflicts by the rules \
         portwatch knows"
    } else {
        "portwatch read the tables after the call, and the socket may have closed by then"
    };
    let mut v = verdict(
        false,
        "holder-not-found",
        format!(
            "{e}: the kernel found {} in use, but portwatch did not find the socket in its way: \
             {why}.",
            at.endpoint()
        ),
    );
    if !rels.is_empty() {
        v.details.push(format!(
            "{} other socket(s) on port {} now, none of which conflicts",
            rels.len(),
            at.port
        ));
    }
    v
}

pub fn holder_unknown(at: &Attempt, why: Option<&str>) -> Verdict {
    verdict(
        false,
        "holder-not-found",
        format!(
            "{}: {} is in use, but portwatch could not look up who holds it{}.",
            err_name(at),
            at.endpoint(),
            why.map(|w| format!(" ({w})")).unwrap_or_default()
        ),
    )
}

fn range_text(f: &Facts) -> Option<(String, u32)> {
    f.sysctls.ip_local_port_range.map(|(lo, hi)| {
        (
            format!("net.ipv4.ip_local_port_range {lo}–{hi}"),
            u32::from(hi.saturating_sub(lo)) + 1,
        )
    })
}

/// Port 0 (or listen() on an unbound socket) with no port left.
pub fn ephemeral_exhausted(at: &Attempt, f: &Facts) -> Verdict {
    let e = err_name(at);
    let rule = if at.ev.call == Call::Listen {
        "listen-ephemeral-exhausted"
    } else {
        "ephemeral-exhausted"
    };
    let what = if at.ev.call == Call::Listen {
        "listen() on a socket that was never bound picks a free port like bind() to port 0, and"
    } else {
        "port 0 asks the kernel to pick a free port, and"
    };
    let (range, size) = range_text(f).unwrap_or(("the ephemeral port range".into(), 0));
    let used = match (f.ephemeral_ports_in_use, size) {
        (Some(0), _) => "; the sockets that held its ports closed before portwatch looked".into(),
        (Some(u), s) if s > 0 => format!(": {u} of its {s} ports are held by sockets"),
        _ => String::new(),
    };
    let mut v = verdict(
        false,
        rule,
        format!("{e}: {what} none is left in {range}{used}."),
    );
    if let Some(reuse) = f.sysctls.ip_autobind_reuse {
        v.details.push(format!(
            "net.ipv4.ip_autobind_reuse={} ({})",
            u8::from(reuse),
            if reuse {
                "ports held by SO_REUSEADDR sockets were tried too"
            } else {
                "with 1, ports held by SO_REUSEADDR sockets could be shared as a last resort"
            }
        ));
    }
    v.fix = Some(
        "widen net.ipv4.ip_local_port_range, close sockets you no longer need, or bind a fixed \
         port"
            .to_string(),
    );
    v
}

pub fn success(at: &Attempt, f: &Facts, others: &[(&Holder, Coexist)]) -> Verdict {
    let ep = at.endpoint();
    let port_zero = at.asked_port_zero()
        || (at.ev.call == Call::Bind && at.ev.requested.as_ref().is_some_and(|r| r.port == 0));
    let Some((h, c)) = others.first() else {
        return if port_zero {
            let range = range_text(f)
                .map(|(r, _)| format!(" from {r}"))
                .unwrap_or_default();
            verdict(
                true,
                "ok-ephemeral",
                format!("ok: the kernel picked port {}{range}.", at.port),
            )
        } else if at.ev.call == Call::Listen {
            verdict(true, "ok-listen", format!("ok: listening on {ep}."))
        } else if f.holders.is_some() && !f.holders_incomplete {
            verdict(
                true,
                "ok-port-free",
                format!(
                    "ok: nothing else holds {} port {} here.",
                    at.side.proto.name(),
                    at.port
                ),
            )
        } else {
            verdict(true, "ok", format!("ok: bound {ep}."))
        };
    };
    let (rule, message) = if port_zero
        && *c == Coexist::ReuseAddr
        && f.sysctls.ip_autobind_reuse == Some(true)
    {
        (
            "ok-autobind-reuse",
            format!(
                "ok: port {} was already held by {} ({}), but net.ipv4.ip_autobind_reuse=1 lets \
                 port 0 share a port with SO_REUSEADDR sockets when no free one is left.",
                at.port,
                who(h),
                holder_desc(&h.socket)
            ),
        )
    } else {
        coexist_words(at, f, h, *c)
    };
    let mut v = verdict(true, rule, message);
    for (h, c) in others {
        let (r, m) = coexist_words(at, f, h, *c);
        v.shares_with.push(report(h, r, m));
    }
    if others.len() > 1 {
        v.details
            .push(format!("{} sockets share this port", others.len() + 1));
    }
    v
}

fn coexist_words(at: &Attempt, f: &Facts, h: &Holder, c: Coexist) -> (&'static str, String) {
    let w = who(h);
    let hd = holder_desc(&h.socket);
    let ep = at.endpoint();
    match c {
        Coexist::SeparatePortSpaces => (
            "ok-separate-port-spaces",
            format!(
                "ok: {w} holds {}{hd} too, but {} and {} have separate port spaces.",
                if h.socket.proto == Proto::Tcp {
                    "tcp "
                } else {
                    ""
                },
                at.side.proto.name().to_uppercase(),
                h.socket.proto.name().to_uppercase()
            ),
        ),
        Coexist::DifferentNetns => (
            "ok-different-netns",
            format!(
                "ok: {w} holds {hd} in network namespace {}; different network namespaces never \
                 conflict.",
                h.socket.netns
            ),
        ),
        Coexist::DifferentDevices => (
            "ok-different-devices",
            format!(
                "ok: {w} holds {hd}; sockets bound to different devices (here {}) may share a \
                 port.",
                at.sock.options.device_name()
            ),
        ),
        Coexist::DifferentAddresses => (
            "ok-different-addresses",
            format!("ok: {w} holds {hd}; different specific addresses may share a port."),
        ),
        Coexist::V6Only { holder_is_v6only } => {
            let by_default = f.sysctls.bindv6only == Some(true);
            let rule = if by_default {
                "ok-v6only-by-default"
            } else {
                "ok-v6only"
            };
            let default_note = if by_default {
                " (the namespace default: net.ipv6.bindv6only=1)"
            } else {
                ""
            };
            let msg = if holder_is_v6only {
                format!(
                    "ok: {w} holds {hd}, which is IPv6-only{default_note}, so IPv4 {ep} stays free."
                )
            } else {
                format!(
                    "ok: {ep} is IPv6-only (IPV6_V6ONLY=1){default_note}, so it does not clash \
                     with the IPv4 {hd} of {w}."
                )
            };
            (rule, msg)
        }
        Coexist::ReuseAddr => (
            "ok-reuseaddr",
            format!(
                "ok: shares the port with {w} ({hd}): both set SO_REUSEADDR and that one is not \
                 listening."
            ),
        ),
        Coexist::UdpReuseAddr => (
            "ok-udp-reuseaddr",
            format!(
                "ok: shares the port with {w} ({hd}): both UDP sockets set SO_REUSEADDR, which \
                 for UDP allows even the same address."
            ),
        ),
        Coexist::ReusePort => (
            "ok-reuseport",
            format!(
                "ok: shares the port with {w} ({hd}): both set SO_REUSEPORT{}, and the kernel \
                 spreads traffic across them.",
                at.side
                    .uid
                    .map(|u| format!(" as uid {u}"))
                    .unwrap_or_default()
            ),
        ),
        Coexist::TimeWaitReuse => (
            "ok-time-wait-reuse",
            format!(
                "ok: got past a {} connection on {}: both it and this socket have \
                 SO_REUSEADDR.",
                h.socket.state_name(),
                h.socket.endpoint()
            ),
        ),
    }
}

pub fn eacces(at: &Attempt, f: &Facts) -> Verdict {
    let e = err_name(at);
    let start = f.sysctls.ip_unprivileged_port_start;
    match start {
        Some(s) if u32::from(at.port) < s && at.port != 0 => {
            let cap = match f.cap_net_bind_service {
                Some(false) => format!("pid {} lacks CAP_NET_BIND_SERVICE", at.ev.pid),
                Some(true) => format!(
                    "pid {} has CAP_NET_BIND_SERVICE, but not in the user namespace that owns \
                     this network namespace",
                    at.ev.pid
                ),
                None => format!("pid {} did not have CAP_NET_BIND_SERVICE", at.ev.pid),
            };
            let mut v = verdict(
                false,
                "privileged-port",
                format!(
                    "{e}: port {} is below net.ipv4.ip_unprivileged_port_start ({s}), and {cap} \
                     (uid {}).",
                    at.port, at.ev.uid
                ),
            );
            v.fix = Some(format!(
                "use a port >= {s}, grant the capability (setcap cap_net_bind_service=+ep BINARY, \
                 or systemd AmbientCapabilities=CAP_NET_BIND_SERVICE), or lower \
                 net.ipv4.ip_unprivileged_port_start"
            ));
            v
        }
        _ => verdict(
            false,
            "eacces-lsm",
            format!(
                "{e}: port {} is not privileged here (ip_unprivileged_port_start {}), so a \
                 security module (SELinux, AppArmor) or a BPF program refused it.",
                at.port,
                start.map_or("unknown".to_string(), |s| s.to_string())
            ),
        ),
    }
}

pub fn eaddrnotavail(at: &Attempt, f: &Facts) -> Verdict {
    let e = err_name(at);
    let addr = match at.addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(at.addr),
        a => a,
    };
    let nonlocal = if addr.is_ipv4() {
        "net.ipv4.ip_nonlocal_bind"
    } else {
        "net.ipv6.ip_nonlocal_bind"
    };
    let mut v = verdict(
        false,
        "address-not-local",
        if f.addr_is_local == Some(true) {
            format!(
                "{e}: {addr} was not an address of this network namespace when bind() ran (it is \
                 now: it was added since)."
            )
        } else {
            format!(
                "{e}: {addr} is not an address of any interface in this network namespace, and \
                 neither IP_FREEBIND, IP_TRANSPARENT nor {nonlocal} is set."
            )
        },
    );
    if let Some(l) = &f.local_addrs {
        let list: Vec<String> = l.iter().map(IpAddr::to_string).take(8).collect();
        v.details
            .push(format!("local addresses here: {}", list.join(", ")));
    }
    v.fix = Some(format!(
        "bind an address the host has (see `ip addr`) or the wildcard; if the address comes \
         later (VRRP, DHCP), set IP_FREEBIND on the socket or {nonlocal}=1"
    ));
    v
}

pub fn einval(at: &Attempt) -> Verdict {
    let e = err_name(at);
    let sock = at.sock;
    if at.ev.call == Call::Listen {
        return verdict(
            false,
            "listen-invalid",
            format!(
                "{e}: listen() needs a TCP socket that is not connected ({} is {}).",
                sock.proto_family(),
                sock.state.describe(sock.proto)
            ),
        );
    }
    let v6 = match at.addr {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    };
    let mut v = if sock.port != 0 || sock.state.0 != 7 {
        let mut v = verdict(
            false,
            "already-bound",
            format!(
                "{e}: this socket is already bound to {} (by an earlier bind(), or implicitly \
                 by connect() or listen()); a socket binds once.",
                sock.endpoint()
            ),
        );
        v.fix = Some("create a new socket for the new address".to_string());
        v
    } else if let (Some(a), true) = (v6, sock.options.v6only) {
        if a.to_ipv4_mapped().is_some() {
            let mut v = verdict(
                false,
                "v4-mapped-on-v6only",
                format!(
                    "{e}: {a} is an IPv4 address in IPv6 clothing, and this socket is IPv6-only \
                     (IPV6_V6ONLY=1)."
                ),
            );
            v.fix = Some(
                "use an AF_INET socket for IPv4, or clear IPV6_V6ONLY before bind()".to_string(),
            );
            v
        } else {
            einval_v6(at, a)
        }
    } else if let Some(a) = v6 {
        einval_v6(at, a)
    } else {
        verdict(
            false,
            "einval-other",
            format!("{e}: the kernel rejected the arguments (address length or family)."),
        )
    };
    if v.rule == "einval-other" && sock.family == Family::Ipv6 {
        v.details
            .push("IPv6 sockets need a full sockaddr_in6 (28 bytes)".to_string());
    }
    v
}

fn einval_v6(at: &Attempt, a: std::net::Ipv6Addr) -> Verdict {
    let e = err_name(at);
    if a.is_multicast() && at.side.proto == Proto::Tcp {
        let mut v = verdict(
            false,
            "multicast-on-tcp",
            format!("{e}: {a} is a multicast address, and TCP cannot bind one."),
        );
        v.fix = Some("use UDP for multicast".to_string());
        return v;
    }
    if a.is_unicast_link_local() {
        let mut v = verdict(
            false,
            "link-local-needs-scope",
            format!(
                "{e}: {a} is link-local, so it exists once per interface; the kernel needs to \
                 know which (no sin6_scope_id, no SO_BINDTODEVICE)."
            ),
        );
        v.fix = Some(format!(
            "give the interface: bind [{a}%eth0]:PORT (sin6_scope_id = its index)"
        ));
        return v;
    }
    verdict(
        false,
        "einval-other",
        format!("{e}: the kernel rejected the arguments (address length or family)."),
    )
}

pub fn eafnosupport(at: &Attempt) -> Verdict {
    let mut v = verdict(
        false,
        "family-mismatch",
        format!(
            "{}: the address family does not match the socket: {} socket, {} address.",
            err_name(at),
            if at.sock.family == Family::Ipv6 {
                "IPv6"
            } else {
                "IPv4"
            },
            match at.ev.requested.as_ref().map(|r| r.sa_family) {
                Some(2) => "AF_INET".to_string(),
                Some(10) => "AF_INET6".to_string(),
                Some(n) => format!("family {n}"),
                None => "unknown".to_string(),
            }
        ),
    );
    v.fix = Some("create the socket with the address's family".to_string());
    v
}

pub fn eperm(at: &Attempt, f: &Facts) -> Verdict {
    let mut v = verdict(
        false,
        "bpf-or-lsm-denied",
        format!(
            "{}: not a port conflict: a BPF cgroup program (bind4/bind6) or a security module \
             refused this bind.",
            err_name(at)
        ),
    );
    if !f.cgroup_bind_programs.is_empty() {
        v.details.push(format!(
            "BPF programs attached to the caller's cgroup: {}",
            f.cgroup_bind_programs.join(", ")
        ));
    }
    v.fix = Some("check `bpftool cgroup tree` and the LSM's logs (audit, dmesg)".to_string());
    v
}

pub fn enodev(at: &Attempt) -> Verdict {
    verdict(
        false,
        "no-such-device",
        format!(
            "{}: the interface given by sin6_scope_id or SO_BINDTODEVICE (index {}) does not \
             exist in this network namespace.",
            err_name(at),
            at.sock.options.bound_dev_if
        ),
    )
}
