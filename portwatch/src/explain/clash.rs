//! The sentences for EADDRINUSE: the socket in the way and the rule that made them clash, or
//! why there is none to name.

use portwatch_common::walk;

use super::{
    Attempt, Involved, Rule, Verdict,
    classify::{clash_rule, overlap_rule},
    conflict::{Blocker, Overlap, Relation},
    phrase::{err_name, holder_desc, range_text, seconds, who},
};
use crate::{
    address::endpoint,
    event::Call,
    facts::{Facts, RangeUse},
    sockets::{Holder, OwnerStatus, Proto, Source},
};

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
    let mut v = Verdict::new(false, rule, message);
    v.fix = Some(if rule == overlap_rule(o) {
        overlap_fix(o, h)
    } else {
        fix
    });
    // A device on one side only does not keep them apart; say so when another rule led.
    let (asker_dev, holder_dev) = (at.side.dev, h.socket.options.bound_dev_if);
    if !matches!(b, Blocker::DeviceVsUnbound { .. }) && (asker_dev == 0) != (holder_dev == 0) {
        let (bound, unbound) = if asker_dev != 0 {
            ("this socket is", format!("the socket of {w}"))
        } else {
            ("the socket of the holder is", "this socket".to_string())
        };
        v.details.push(format!(
            "{bound} bound to a device (SO_BINDTODEVICE), but {unbound} is bound to none, and a \
             socket bound to no device covers every device: the device does not keep them apart"
        ));
    }
    // The caller holds the port itself: a reload, or a server that opened it twice. It is
    // still itself when it let go of that socket (or exited) before portwatch looked: the
    // socket it bound was in the way at the call.
    match own_holder(at, h) {
        Some(OwnHolder::Live) => {
            v.details.push(format!(
                "pid {} ({}) is itself among the holders: this process already held {} when \
                 it called {}, as a server does while it reloads or restarts in place",
                at.ev.pid,
                at.ev.comm,
                h.socket.endpoint(),
                call_name(at)
            ));
            v.fix = Some(
                "reuse the socket the process already holds (e.g. nginx keeps its listening \
                 sockets across a reload when the address stays the same), close it before \
                 binding the new address, or set SO_REUSEPORT on both sockets"
                    .to_string(),
            );
        }
        Some(OwnHolder::LetGo) => {
            v.details.push(format!(
                "pid {} ({}) is itself among the holders: this process already held {} when \
                 it called {}; it has closed that socket or exited since",
                at.ev.pid,
                at.ev.comm,
                h.socket.endpoint(),
                call_name(at)
            ));
            v.fix = Some(
                "the program took the port twice: keep using the socket it already has, or \
                 close that socket before it binds again; to have two sockets on the port, set \
                 SO_REUSEPORT on both"
                    .to_string(),
            );
        }
        None => {}
    }
    for (i, (h, o, b)) in conflicts.iter().enumerate() {
        let r = clash_rule(*o, *b);
        v.holders.push(Involved::new(
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

/// How the calling process is among the holders of the socket in its way.
enum OwnHolder {
    /// It holds the socket now.
    Live,
    /// portwatch saw this process bind it, and no process holds it any more.
    LetGo,
}

fn own_holder(at: &Attempt, h: &Holder) -> Option<OwnHolder> {
    if h.owners.iter().any(|o| o.pid == at.ev.pid) {
        return Some(OwnHolder::Live);
    }
    match &h.status {
        OwnerStatus::Closed { bound_by } if bound_by.pid == at.ev.pid => Some(OwnHolder::LetGo),
        _ => None,
    }
}

fn call_name(at: &Attempt) -> &'static str {
    match at.ev.call {
        Call::Bind => "bind()",
        Call::Listen => "listen()",
        Call::Connect => "connect()",
    }
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
    let mut v = Verdict::new(
        false,
        Rule::HolderNotFound,
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
    Verdict::new(
        false,
        Rule::HolderNotFound,
        format!(
            "{}: {} is in use, but portwatch could not look up who holds it{}.",
            err_name(at),
            at.endpoint(),
            why.map(|w| format!(" ({w})")).unwrap_or_default()
        ),
    )
}

/// Port 0 (or listen() on an unbound socket) with no port left.
pub fn ephemeral_exhausted(at: &Attempt, f: &Facts) -> Verdict {
    let e = err_name(at);
    let rule = if at.ev.call == Call::Listen {
        Rule::ListenEphemeralExhausted
    } else {
        Rule::EphemeralExhausted
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
    let mut v = Verdict::new(
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
    let by_connections = match &f.range_use {
        Some(Ok(RangeUse::Space { space: s, .. })) => {
            v.details.push(format!(
                "of the {} range ports in use now, {} are held by connections and {} by bound \
                 or listening sockets",
                s.used, s.by_connections, s.by_binds
            ));
            s.by_connections
        }
        Some(Err(why)) => {
            v.details.push(format!(
                "which sockets hold the range could not be counted: {why}"
            ));
            0
        }
        // A bind()'s numbers are never read toward one destination.
        Some(Ok(RangeUse::Toward(_))) | None => 0,
    };
    if by_connections > 0 {
        v.details.push(
            "bind() to port 0 needs a port no socket uses, while connect() shares a port \
             between destinations: IP_BIND_ADDRESS_NO_PORT on a socket that binds before it \
             connects leaves the choice of port to connect()"
                .to_string(),
        );
    }
    v.fix = Some(if by_connections > 0 {
        "if this socket binds only to connect, set IP_BIND_ADDRESS_NO_PORT before bind(); else \
         widen net.ipv4.ip_local_port_range, close sockets you no longer need, or bind a fixed \
         port"
            .to_string()
    } else {
        "widen net.ipv4.ip_local_port_range, close sockets you no longer need, or bind a fixed \
         port"
            .to_string()
    });
    v
}

/// The socket in the way is a connection whose local port the kernel picked from the
/// ephemeral range: it leads the verdict, and what the sharing rules say stays as a detail.
pub fn outbound_took_port(v: &mut Verdict, at: &Attempt, h: &Holder, f: &Facts) {
    let s = &h.socket;
    let e = err_name(at);
    let peer = s
        .peer
        .map(|(a, p)| format!(" to {}", endpoint(a, p)))
        .unwrap_or_default();
    let range = range_text(f)
        .map(|(r, _)| r)
        .unwrap_or_else(|| "net.ipv4.ip_local_port_range".to_string());
    let whose = if h.owners.is_empty() && s.state.is_time_wait() {
        format!("a connection in {} (no process owns it)", s.state_name())
    } else {
        format!("a connection of {}", who(h))
    };
    let previous = std::mem::replace(
        &mut v.message,
        format!(
            "{e}: port {} is the local port of {whose}, {}{peer} ({}); the port lies in the \
             ephemeral range ({range}), from which the kernel picks the local port of outgoing \
             connections, so it handed this one out while the port was free.",
            s.port,
            s.endpoint(),
            s.state_name(),
        ),
    );
    v.details.insert(0, previous);
    v.rule = Rule::OutboundTookPort;
    if let Some(first) = v.holders.first_mut() {
        first.rule = Rule::OutboundTookPort;
    }
    v.fix = Some(format!(
        "reserve the port so the kernel never hands it out: sysctl -w \
         net.ipv4.ip_local_reserved_ports={} (keep it in /etc/sysctl.d; add to any ports \
         already listed), or move the server out of the range ({range}); then close the \
         connection or wait for it to end",
        at.port
    ));
}
