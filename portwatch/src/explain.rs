//! The explain engine: from one bind()/listen() result and the facts around it (who else holds
//! the port, the namespace's sysctls, its addresses), the kernel rule that decided, in one
//! plain sentence, with a fix.
//!
//! Pure: no I/O here. [`crate::facts`] gathers the facts; this module only reasons, so every
//! rule has a table test that needs no root. Where a fact could not be gathered, the verdict
//! says so instead of guessing.

mod clash;
mod classify;
pub mod conflict;
mod connect;
mod phrase;
mod refusal;
mod rule;
mod success;

use std::net::IpAddr;

use conflict::{Blocker, Call, Coexist, Overlap, Relation, Side};
pub use phrase::who;
pub use rule::Rule;

use crate::{
    address::endpoint,
    event::{Call as EventCall, Event},
    facts::Facts,
    sockets::{Holder, OwnerStatus, SocketView, Source, State},
};

/// A holder a verdict names: the socket, the rule relating it to the call, and why, in words.
#[derive(Clone, Debug)]
pub struct Involved {
    pub holder: Holder,
    pub rule: Rule,
    pub why: String,
}

/// What explain concludes about one call.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub ok: bool,
    /// The deciding rule.
    pub rule: Rule,
    /// One sentence.
    pub message: String,
    /// Further sentences: other holders, the sysctl values that mattered.
    pub details: Vec<String>,
    pub fix: Option<String>,
    /// The sockets in the way (failures).
    pub holders: Vec<Involved>,
    /// Sockets that share the port, and why that was allowed (successes). Only the caller's
    /// own network namespace's: nothing from another namespace shares anything with it.
    pub shares_with: Vec<Involved>,
    /// `ok-different-netns` only: the sockets holding the port in other network namespaces,
    /// the point of that rule. Empty for every other verdict.
    pub other_netns: Vec<Involved>,
}

impl Involved {
    fn new(holder: &Holder, rule: Rule, why: String) -> Self {
        Involved {
            holder: holder.clone(),
            rule,
            why,
        }
    }
}

impl Verdict {
    /// A verdict of one sentence; details, fix and holders are added by whoever needs them.
    fn new(ok: bool, rule: Rule, message: String) -> Self {
        Verdict {
            ok,
            rule,
            message,
            details: vec![],
            fix: None,
            holders: vec![],
            shares_with: vec![],
            other_netns: vec![],
        }
    }
}

/// The call under explanation, reduced to what the rules need.
pub struct Attempt<'a> {
    pub ev: &'a Event,
    pub sock: &'a SocketView,
    /// The address the call concerns: as asked for bind, as bound for listen.
    pub addr: IpAddr,
    pub port: u16,
    pub side: Side,
}

impl<'a> Attempt<'a> {
    pub fn new(ev: &'a Event) -> Option<Self> {
        let sock = ev.socket.as_ref()?;
        let (addr, port) = match (ev.call, &ev.requested) {
            (EventCall::Bind | EventCall::Connect, Some(r)) => (r.addr, r.port),
            (EventCall::Bind | EventCall::Connect, None) => return None,
            (EventCall::Listen, _) => (sock.addr, sock.port),
        };
        // After a successful bind the socket says what was bound (the port for port 0).
        let port = if ev.ok() && sock.port != 0 {
            sock.port
        } else {
            port
        };
        let side = Side {
            family: sock.family,
            proto: sock.proto,
            addr,
            v6only: Side::effective_v6only(sock.family, addr, sock.options.v6only),
            reuseaddr: sock.options.reuseaddr,
            reuseport: sock.options.reuseport,
            dev: sock.options.bound_dev_if,
            uid: sock.uid,
            state: if ev.call == EventCall::Listen {
                State::LISTEN
            } else {
                State::CLOSE
            },
            netns: sock.netns,
        };
        Some(Attempt {
            ev,
            sock,
            addr,
            port,
            side,
        })
    }

    fn call(&self) -> Call {
        match self.ev.call {
            // A connect() is never related to holders by the bind rules.
            EventCall::Bind | EventCall::Connect => Call::Bind,
            EventCall::Listen => Call::Listen,
        }
    }

    /// `0.0.0.0:8080`, as the user would write it.
    pub fn endpoint(&self) -> String {
        endpoint(self.addr, self.port)
    }

    fn asked_port_zero(&self) -> bool {
        match self.ev.call {
            EventCall::Bind => self.ev.requested.as_ref().is_some_and(|r| r.port == 0),
            EventCall::Connect => false,
            // listen() on an unbound socket picks a port like bind(port 0).
            EventCall::Listen => {
                self.ev.requested.is_none() && !self.ev.ok() && self.sock.port == 0
            }
        }
    }
}

pub fn side_of(s: &SocketView) -> Side {
    Side {
        family: s.family,
        proto: s.proto,
        addr: s.addr,
        v6only: Side::effective_v6only(s.family, s.addr, s.options.v6only),
        reuseaddr: s.options.reuseaddr,
        reuseport: s.options.reuseport,
        dev: s.options.bound_dev_if,
        uid: s.uid,
        state: s.state,
        netns: s.netns,
    }
}

/// Explains a call. Returns None for calls explain has nothing to say about (an unreadable
/// request, a socket that could not be read).
pub fn explain(ev: &Event, facts: &Facts) -> Option<Verdict> {
    let at = Attempt::new(ev)?;
    // No port rule speaks about a raw socket: its "port" is its protocol's number.
    if !at.sock.proto.has_ports() {
        return None;
    }
    let mut v = if ev.call == EventCall::Connect {
        connect::explain(&at, facts)
    } else {
        decide(&at, ev, facts)
    };
    note_kernel_socket(&mut v, ev);
    note_gone_owners(&mut v);
    note_forwards(&mut v);
    note_socket_units(&mut v, facts);
    Some(v)
}

/// A call on the kernel's own socket: no process will hold it; the task named is the one that
/// made the kernel bind it ("who took 4789?": `ip`, bringing a VXLAN device up).
fn note_kernel_socket(v: &mut Verdict, ev: &Event) {
    if ev.kernel_socket {
        v.details.insert(
            0,
            format!(
                "the kernel bound this socket for itself (it has no file, and no process will \
                 hold it), at the request of pid {} ({}): a tunnel device such as VXLAN or \
                 Geneve, WireGuard or the NFS client binds so; it stays until that device or \
                 service goes",
                ev.pid, ev.comm
            ),
        );
    }
}

/// A holder whose process no longer holds it gets a line of its own: the sentence names who
/// held the port at the call, the details say that it has let go since.
fn note_gone_owners(v: &mut Verdict) {
    for inv in v.holders.iter().chain(&v.shares_with).chain(&v.other_netns) {
        if let OwnerStatus::Closed { bound_by: b } = &inv.holder.status {
            let s = &inv.holder.socket;
            let line = format!(
                "pid {} ({}) no longer holds {}:{}: it closed the socket, exited, or passed it \
                 on in a unix-socket message since the call",
                b.pid, b.comm, s.addr, s.port
            );
            if !v.details.contains(&line) {
                v.details.push(line);
            }
        }
    }
}

/// A holder owned by a docker-proxy: which container it publishes the port for, or that the
/// container is gone.
fn note_forwards(v: &mut Verdict) {
    for inv in v.holders.iter().chain(&v.shares_with) {
        for o in &inv.holder.owners {
            if let Some(f) = &o.forward {
                let line = f.sentence(o.pid);
                if !v.details.contains(&line) {
                    v.details.push(line);
                }
            }
        }
    }
}

/// A holder owned by systemd: a socket unit holds the port for a service it starts on
/// demand. Which unit, when a unit file names the port; with `ReusePort=yes` against another
/// user, that the uid rule is what blocks.
fn note_socket_units(v: &mut Verdict, facts: &Facts) {
    let Some(units) = &facts.socket_units else {
        return;
    };
    let Some((inv, o)) = v.holders.iter().chain(&v.shares_with).find_map(|inv| {
        inv.holder
            .owners
            .iter()
            .find(|o| o.is_systemd())
            .map(|o| (inv, o))
    }) else {
        return;
    };
    let port = inv.holder.socket.port;
    let mut lines = Vec::new();
    if units.is_empty() {
        lines.push(format!(
            "pid {} ({}) is systemd: a socket unit holds port {port} (socket activation: \
             systemd listens and starts the service on the first connection), but no .socket \
             file under /etc/systemd, /run/systemd or /lib/systemd names that port",
            o.pid, o.comm
        ));
    } else {
        let names: Vec<String> = units
            .iter()
            .map(|u| format!("{} ({})", u.name, u.listen))
            .collect();
        lines.push(format!(
            "pid {} ({}) is systemd: socket unit {} holds port {port} (socket activation: \
             systemd listens and starts the service on the first connection); stop it with \
             systemctl stop {} or let that service have the port",
            o.pid,
            o.comm,
            names.join(", "),
            units[0].name
        ));
        if inv.rule == Rule::ReuseportUidMismatch
            && let Some(u) = units.iter().find(|u| u.reuse_port)
        {
            lines.push(format!(
                "{} sets ReusePort=yes, but the socket belongs to systemd's user (uid {}), and \
                 SO_REUSEPORT shares a port only between sockets of the same user: run the \
                 service as that user, or take the socket from the unit (sd_listen_fds) \
                 instead of binding it again",
                u.name,
                inv.holder
                    .socket
                    .uid
                    .map_or("?".to_string(), |u| u.to_string())
            ));
        }
    }
    for line in lines {
        if !v.details.contains(&line) {
            v.details.push(line);
        }
    }
}

fn decide(at: &Attempt, ev: &Event, facts: &Facts) -> Verdict {
    match ev.errno() {
        None => explain_success(at, facts),
        Some(libc::EADDRINUSE) => explain_in_use(at, facts),
        Some(libc::EACCES) => refusal::eacces(at, facts),
        Some(libc::EADDRNOTAVAIL) => refusal::eaddrnotavail(at, facts),
        Some(libc::EINVAL) => refusal::einval(at),
        Some(libc::EAFNOSUPPORT) => refusal::eafnosupport(at),
        Some(libc::EPERM) => refusal::eperm(at, facts),
        Some(libc::ENODEV) => refusal::enodev(at),
        Some(e) => refusal::unexplained(e),
    }
}

/// What a bind described by `ev` (its result ignored) would do right now, given `facts`:
/// the same rules in the order the kernel applies them (address, privileged port, conflicts).
pub fn predict(ev: &Event, facts: &Facts) -> Option<Verdict> {
    let mut ev = ev.clone();
    ev.ret = 0;
    let at = Attempt::new(&ev)?;
    let sock = at.sock;
    let nonlocal_ok = sock.options.freebind
        || sock.options.transparent
        || match at.addr {
            IpAddr::V4(_) => facts.sysctls.ip_nonlocal_bind == Some(true),
            IpAddr::V6(_) => facts.sysctls.ipv6_ip_nonlocal_bind == Some(true),
        };
    let ret = if !nonlocal_ok && facts.addr_is_local == Some(false) {
        -libc::EADDRNOTAVAIL
    } else if at.port != 0
        && facts
            .sysctls
            .ip_unprivileged_port_start
            .is_some_and(|s| u32::from(at.port) < s)
        && facts.cap_net_bind_service == Some(false)
    {
        -libc::EACCES
    } else if facts.holders.as_deref().is_some_and(|h| {
        relations(&at, h)
            .iter()
            .any(|(_, r)| matches!(r, Relation::Conflict { .. }))
    }) {
        -libc::EADDRINUSE
    } else {
        0
    };
    ev.ret = ret;
    explain(&ev, facts)
}

/// The other sockets on the port in the call's network namespace, with their relation to the
/// call. (Sockets of other namespaces never conflict nor share: see [`explain_success`].)
fn relations<'h>(at: &Attempt, holders: &'h [Holder]) -> Vec<(&'h Holder, Relation)> {
    holders
        .iter()
        .filter(|h| h.socket.port == at.port)
        .filter(|h| same_netns(h.socket.netns, at.side.netns))
        // The call's own socket shows up in the tables after a successful bind.
        .filter(|h| !(at.sock.ino != 0 && h.socket.ino == at.sock.ino))
        .map(|h| {
            (
                h,
                conflict::relate(&at.side, &side_of(&h.socket), at.call()),
            )
        })
        .collect()
}

fn explain_in_use(at: &Attempt, facts: &Facts) -> Verdict {
    if at.asked_port_zero() {
        return clash::ephemeral_exhausted(at, facts);
    }
    let Some(holders) = &facts.holders else {
        return clash::holder_unknown(at, facts.holders_unavailable.as_deref());
    };
    let rels = relations(at, holders);
    let mut conflicts: Vec<(&Holder, Overlap, Blocker)> = rels
        .iter()
        .filter_map(|(h, r)| match r {
            Relation::Conflict { overlap, blocker } => Some((*h, *overlap, *blocker)),
            Relation::Coexist(_) => None,
        })
        .collect();
    if conflicts.is_empty() {
        return clash::holder_not_found(at, facts, &rels);
    }
    // Lead with what the kernel itself reported, then live sockets before TIME_WAIT ones.
    conflicts.sort_by_key(|(h, _, _)| {
        (
            h.source != Source::KernelConflictCheck,
            h.socket.state.is_time_wait(),
        )
    });
    let mut v = clash::conflict(at, &conflicts);
    let (lead, _, _) = conflicts[0];
    if outbound(lead, holders, &facts.sysctls) {
        clash::outbound_took_port(&mut v, at, lead, facts);
    }
    v
}

/// A connection (to a peer) whose local port lies in the ephemeral range, with no socket
/// listening on that port that it could have been accepted from: the kernel gave it that port
/// for an outgoing connection. SYN_SENT is outgoing by nature. A connection whose peer's port
/// is in the ephemeral range too looks like one a server accepted (its old listener may be
/// gone: a restart leaves exactly that in TIME_WAIT), so it is not called outbound.
fn outbound(h: &Holder, holders: &[Holder], sysctls: &crate::facts::Sysctls) -> bool {
    let s = &h.socket;
    let connected =
        s.state == State::ESTABLISHED || s.state == State::SYN_SENT || s.state.is_time_wait();
    let peer_ephemeral = s
        .peer
        .is_some_and(|(_, port)| sysctls.in_ephemeral_range(port));
    connected
        && s.peer.is_some()
        && sysctls.in_ephemeral_range(s.port)
        && (s.state == State::SYN_SENT
            || (!peer_ephemeral
                && !holders
                    .iter()
                    .any(|o| o.socket.port == s.port && o.socket.state.is_listen())))
}

/// Whether a socket of namespace `a` is in namespace `b` (0: not known, taken as the same).
fn same_netns(a: u32, b: u32) -> bool {
    a == 0 || b == 0 || a == b
}

fn explain_success(at: &Attempt, facts: &Facts) -> Verdict {
    let rels = facts
        .holders
        .as_deref()
        .map(|h| relations(at, h))
        .unwrap_or_default();
    let mut here: Vec<(&Holder, Coexist)> = rels
        .iter()
        .filter_map(|(h, r)| match r {
            Relation::Coexist(c) => Some((*h, *c)),
            // The kernel let it through, so the holder is not what we think (it changed
            // between the call and our look). Don't claim a reason.
            Relation::Conflict { .. } => None,
        })
        .collect();
    here.sort_by_key(|(_, c)| coexist_rank(*c));
    // Another namespace's sockets on the port are the point only when nothing here shares it
    // (`ok-different-netns`); then they are listed on their own, never as sharing the port.
    let elsewhere: Vec<(&Holder, Coexist)> = if here.is_empty() {
        facts
            .other_netns
            .iter()
            .filter(|h| h.socket.port == at.port && !same_netns(h.socket.netns, at.side.netns))
            .map(|h| (h, Coexist::DifferentNetns))
            .collect()
    } else {
        Vec::new()
    };
    let mut v = if here.is_empty() && !elsewhere.is_empty() {
        success::different_netns(at, facts, &elsewhere)
    } else {
        success::success(at, facts, &here)
    };
    success::note_ephemeral_risk(&mut v, at, facts);
    v
}

/// Which reason for sharing a port leads the explanation: options someone set on purpose
/// first, then addresses, then the protocol or namespace being different altogether.
fn coexist_rank(c: Coexist) -> u8 {
    match c {
        Coexist::ReusePort => 0,
        Coexist::ReuseAddr | Coexist::UdpReuseAddr | Coexist::TimeWaitReuse => 1,
        Coexist::DifferentDevices => 2,
        Coexist::DifferentAddresses => 3,
        Coexist::V6Only { .. } => 4,
        Coexist::SeparatePortSpaces => 5,
        Coexist::DifferentNetns => 6,
    }
}

#[cfg(test)]
pub(crate) mod tests;
