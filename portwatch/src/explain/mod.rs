//! The explain engine: from one bind()/listen() result and the facts around it (who else holds
//! the port, the namespace's sysctls, its addresses), the kernel rule that decided, in one
//! plain sentence, with a fix.
//!
//! Pure: no I/O here. [`crate::facts`] gathers the facts; this module only reasons, so every
//! rule has a table test that needs no root. Where a fact could not be gathered, the verdict
//! says so instead of guessing.

pub mod conflict;
mod words;

use std::net::IpAddr;

use conflict::{Blocker, Call, Coexist, Overlap, Relation, Side};
use serde::Serialize;
pub use words::who;

use crate::{
    errno,
    event::{Call as EventCall, Event},
    output::JsonOptions,
    procfs::Owner,
    sockets::{Family, SocketView, State, endpoint},
};

/// Where portwatch learned about a holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// fexit on inet_bind_conflict: the very socket the kernel compared.
    KernelConflictCheck,
    /// The port's owners, read from the kernel's bind table or UDP hash at the call itself.
    KernelAtCall,
    /// The kernel's TCP/UDP socket tables (iter/tcp, iter/udp).
    SocketTable,
    /// A process's fd table: sockets that are bound but in no table (not listening).
    FdTable,
}

/// A socket on the same port, and the processes that hold it.
#[derive(Clone, Debug)]
pub struct Holder {
    pub socket: SocketView,
    pub owners: Vec<Owner>,
    pub source: Source,
    /// What is known of its owner beyond `owners` (who hold it now).
    pub status: OwnerStatus,
}

/// Who owns a holder, as far as portwatch could tell: never guessed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerStatus {
    /// `owners` hold it now.
    Live,
    /// A socket the kernel opened for itself (a tunnel, a kernel service): no process.
    InKernel,
    /// No process by nature: a TIME_WAIT connection, or an orphaned socket the kernel finishes.
    NoProcess,
    /// No process holds it any more; portwatch saw this process bind it.
    Closed { bound_by: Owner },
    /// No process holds it that portwatch can see, and portwatch did not see it bound.
    Unknown { why: &'static str },
}

impl OwnerStatus {
    /// The stable name in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            OwnerStatus::Live => "live",
            OwnerStatus::InKernel => "in-kernel",
            OwnerStatus::NoProcess => "no-process",
            OwnerStatus::Closed { .. } => "closed",
            OwnerStatus::Unknown { .. } => "unknown",
        }
    }
}

/// The namespace's settings that change the rules. Read, never assumed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sysctls {
    pub ip_local_port_range: Option<(u16, u16)>,
    pub ip_unprivileged_port_start: Option<u32>,
    pub ip_nonlocal_bind: Option<bool>,
    pub ipv6_ip_nonlocal_bind: Option<bool>,
    pub bindv6only: Option<bool>,
    pub ip_autobind_reuse: Option<bool>,
}

/// Everything explain may use besides the event itself.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Other sockets on the call's port in its namespace (TCP and UDP), if they were looked up.
    pub holders: Option<Vec<Holder>>,
    /// Why holders could not be looked up, when they could not.
    pub holders_unavailable: Option<String>,
    /// Holders came from the kernel at the call, and the list is cut short: "nothing else"
    /// cannot be said.
    pub holders_incomplete: bool,
    /// Sockets on the same port in other namespaces (for "different netns never conflict").
    pub other_netns: Vec<Holder>,
    pub sysctls: Sysctls,
    /// The namespace's interface addresses (shown for EADDRNOTAVAIL).
    pub local_addrs: Option<Vec<IpAddr>>,
    /// Whether the kernel takes the call's address as local now (a probe bind in the
    /// namespace; this also covers 127.0.0.0/8 and AnyIP routes, which no interface lists).
    pub addr_is_local: Option<bool>,
    /// Whether the calling process has CAP_NET_BIND_SERVICE (None: it exited).
    pub cap_net_bind_service: Option<bool>,
    /// Distinct ports in the ephemeral range held by TCP or UDP sockets (for port 0 failures).
    pub ephemeral_ports_in_use: Option<u32>,
    /// Names of BPF programs attached to the caller's cgroup for bind (for EPERM).
    pub cgroup_bind_programs: Vec<String>,
}

/// A holder as reported: the socket, its owners, and how it relates to the call.
#[derive(Clone, Debug, Serialize)]
pub struct HolderReport {
    pub protocol: String,
    pub family: Family,
    pub addr: String,
    pub port: u16,
    pub state: &'static str,
    pub options: JsonOptions,
    pub uid: Option<u32>,
    pub netns: u32,
    pub sock_ino: Option<u64>,
    pub owners: Vec<Owner>,
    /// For TIME_WAIT: milliseconds until the kernel drops it.
    pub time_wait_left_ms: Option<u64>,
    pub peer: Option<String>,
    pub source: Source,
    /// `live`, `in-kernel`, `no-process`, `closed` or `unknown` (see the README).
    pub owner_status: &'static str,
    /// For `closed`: the process portwatch saw bind it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound_by: Option<Owner>,
    /// The rule relating this socket to the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl HolderReport {
    pub fn new(h: &Holder, rule: Option<&'static str>, why: Option<String>) -> Self {
        let s = &h.socket;
        HolderReport {
            protocol: s.proto.name(),
            family: s.family,
            addr: s.addr.to_string(),
            port: s.port,
            state: s.state_name(),
            options: JsonOptions::of(s),
            uid: s.uid,
            netns: s.netns,
            sock_ino: (s.ino != 0).then_some(s.ino),
            owners: h.owners.clone(),
            time_wait_left_ms: s.tw_left_ms,
            peer: s.peer.map(|(a, p)| endpoint(a, p)),
            source: h.source,
            owner_status: h.status.name(),
            bound_by: match &h.status {
                OwnerStatus::Closed { bound_by } => Some(bound_by.clone()),
                _ => None,
            },
            rule,
            why,
        }
    }
}

/// What explain concludes about one call.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    #[serde(skip)]
    pub ok: bool,
    /// Stable id of the deciding rule (listed in the README).
    pub rule: &'static str,
    /// One sentence.
    pub message: String,
    /// Further sentences: other holders, the sysctl values that mattered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    pub fix: Option<String>,
    /// The sockets in the way (failures).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<HolderReport>,
    /// Sockets that share the port, and why that was allowed (successes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shares_with: Vec<HolderReport>,
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
            (EventCall::Bind, Some(r)) => (r.addr, r.port),
            (EventCall::Bind, None) => return None,
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
            EventCall::Bind => Call::Bind,
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
    let mut v = decide(&at, ev, facts);
    note_gone_owners(&mut v);
    Some(v)
}

/// A holder whose process no longer holds it gets a line of its own: the sentence names who
/// held the port at the call, the details say that it has let go since.
fn note_gone_owners(v: &mut Verdict) {
    for h in v.holders.iter().chain(&v.shares_with) {
        if let Some(b) = &h.bound_by {
            let line = format!(
                "pid {} ({}) no longer holds {}:{}: it closed the socket, exited, or passed it \
                 on in a unix-socket message since the call",
                b.pid, b.comm, h.addr, h.port
            );
            if !v.details.contains(&line) {
                v.details.push(line);
            }
        }
    }
}

fn decide(at: &Attempt, ev: &Event, facts: &Facts) -> Verdict {
    match ev.errno() {
        None => explain_success(at, facts),
        Some(libc::EADDRINUSE) => explain_in_use(at, facts),
        Some(libc::EACCES) => words::eacces(at, facts),
        Some(libc::EADDRNOTAVAIL) => words::eaddrnotavail(at, facts),
        Some(libc::EINVAL) => words::einval(at),
        Some(libc::EAFNOSUPPORT) => words::eafnosupport(at),
        Some(libc::EPERM) => words::eperm(at, facts),
        Some(libc::ENODEV) => words::enodev(at),
        Some(e) => Verdict {
            ok: false,
            rule: "unexplained",
            message: format!(
                "{}: {}; portwatch has no rule for this error.",
                errno::name(e),
                errno::describe(e)
            ),
            details: vec![],
            fix: None,
            holders: vec![],
            shares_with: vec![],
        },
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

/// The other sockets on the port, with their relation to the call.
fn relations<'h>(at: &Attempt, holders: &'h [Holder]) -> Vec<(&'h Holder, Relation)> {
    holders
        .iter()
        .filter(|h| h.socket.port == at.port)
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
        return words::ephemeral_exhausted(at, facts);
    }
    let Some(holders) = &facts.holders else {
        return words::holder_unknown(at, facts.holders_unavailable.as_deref());
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
        return words::holder_not_found(at, facts, &rels);
    }
    // Lead with what the kernel itself reported, then live sockets before TIME_WAIT ones.
    conflicts.sort_by_key(|(h, _, _)| {
        (
            h.source != Source::KernelConflictCheck,
            h.socket.state.is_time_wait(),
        )
    });
    words::conflict(at, &conflicts)
}

fn explain_success(at: &Attempt, facts: &Facts) -> Verdict {
    let rels = facts
        .holders
        .as_deref()
        .map(|h| relations(at, h))
        .unwrap_or_default();
    let others: Vec<(&Holder, Coexist)> = rels
        .iter()
        .filter_map(|(h, r)| match r {
            Relation::Coexist(c) => Some((*h, *c)),
            // The kernel let it through, so the holder is not what we think (it changed
            // between the call and our look). Don't claim a reason.
            Relation::Conflict { .. } => None,
        })
        .chain(
            facts
                .other_netns
                .iter()
                .filter(|h| h.socket.port == at.port && h.socket.netns != at.side.netns)
                .map(|h| (h, Coexist::DifferentNetns)),
        )
        .collect();
    let mut others = others;
    others.sort_by_key(|(_, c)| coexist_rank(*c));
    words::success(at, facts, &others)
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

/// Whether explain wants the port's holders for this call (they cost a table walk).
pub fn needs_holders(ev: &Event) -> bool {
    match ev.errno() {
        None => ev.socket.as_ref().is_some_and(|s| s.port != 0),
        Some(e) => e == libc::EADDRINUSE,
    }
}

#[cfg(test)]
mod tests;
