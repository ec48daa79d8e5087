//! How full the ephemeral port range is, counted from one list of a namespace's sockets: in
//! all (for bind() to port 0 and UDP autobind), and toward one destination (for TCP
//! connect(), whose ports are shared per 4-tuple). Pure counting, no I/O: the callers read the
//! socket table once per batch and count here for each event, so a host with 100k connections
//! costs one pass over a list per explanation, not a table walk.
//!
//! The kernel's rules counted here (`__inet_hash_connect`, `inet_csk_find_open_port`,
//! `udp_lib_get_port` in Linux 6.1–6.18):
//! - connect() picks a range port, not reserved, whose bind bucket was made by connect()
//!   itself: a port that a bind() placed a socket on (bound, listening) is skipped whatever
//!   the destination. Among the rest it needs one with no connection to the same destination
//!   from the same source address (TIME_WAIT ones count, unless `tcp_tw_reuse` lets the kernel
//!   take them over).
//! - bind() to port 0 needs a port nobody uses at all.
//! - UDP autobind (connect() or sendto() on an unbound socket) needs a port no UDP socket uses:
//!   UDP ports are not shared per destination.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use super::Sysctls;
use crate::{
    sockets::{Holder, Owner, Proto},
    workload::Workload,
};

/// The range and what of it can be handed out at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub lo: u16,
    pub hi: u16,
    /// Ports of the range in `ip_local_reserved_ports`: never handed out automatically.
    pub reserved: u32,
}

impl Range {
    /// The namespace's range, None when `ip_local_port_range` or the reserved list could not
    /// be read (nothing is assumed).
    pub fn of(s: &Sysctls) -> Option<Range> {
        let (lo, hi) = s.ip_local_port_range?;
        s.ip_local_reserved_ports.as_ref()?;
        let reserved = (lo..=hi).filter(|&p| s.reserved(p) == Some(true)).count() as u32;
        Some(Range { lo, hi, reserved })
    }

    pub fn size(&self) -> u32 {
        u32::from(self.hi.saturating_sub(self.lo)) + 1
    }

    /// Ports the kernel may hand out: the range less the reserved ones.
    pub fn usable(&self) -> u32 {
        self.size().saturating_sub(self.reserved)
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

/// A process holding some of the counted ports, with how many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortOwner {
    pub pid: u32,
    pub comm: String,
    pub workload: Option<Workload>,
    pub count: u32,
}

impl PortOwner {
    /// "pid 812 (java, nginx.service) 1200, pid 813 (java) 40", or "-" for none.
    pub fn list(owners: &[PortOwner]) -> String {
        if owners.is_empty() {
            return "-".to_string();
        }
        owners
            .iter()
            .map(|o| {
                let w = o
                    .workload
                    .as_ref()
                    .filter(|w| !w.is_root())
                    .map(|w| format!(", {}", w.label()))
                    .unwrap_or_default();
                format!("pid {} ({}{w}) {}", o.pid, o.comm, o.count)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Range ports in one port space (TCP or UDP), split by what holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceUse {
    pub range: Range,
    /// Distinct usable range ports held by anything.
    pub used: u32,
    /// Of those, held by a connection (a socket with a peer, TIME_WAIT included).
    pub by_connections: u32,
    /// Held by a socket that bind() placed there (bound or listening, no peer): connect()
    /// never reuses those.
    pub by_binds: u32,
}

/// Range ports toward one TCP destination, as connect() sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestUse {
    pub range: Range,
    pub dest: (IpAddr, u16),
    /// The source address counted (the socket's bound address), or None: every source.
    pub source: Option<IpAddr>,
    /// Distinct usable range ports with a connection to `dest` (from `source`).
    pub to_dest: u32,
    /// Of those, ports whose only connections to `dest` are TIME_WAIT (or FIN_WAIT2 after
    /// close): no process holds them any more.
    pub to_dest_time_wait: u32,
    /// Distinct source addresses of those connections.
    pub sources: u32,
    /// Usable range ports placed by bind() (bound or listening): never used by connect().
    pub by_binds: u32,
    /// Usable range ports connect() cannot take toward `dest`: `to_dest` ∪ `by_binds`.
    pub blocked: u32,
    /// The processes holding most of the connections to `dest`, most first.
    pub owners: Vec<PortOwner>,
}

impl DestUse {
    /// Ports connect() could still take toward this destination.
    pub fn free(&self) -> u32 {
        self.range.usable().saturating_sub(self.blocked)
    }
}

/// Same address, whether written as IPv4 or as v4-mapped IPv6.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// A socket bind() placed on its port: it has a port and no peer (bound, listening, UDP
/// unconnected).
fn placed_by_bind(h: &Holder) -> bool {
    h.socket.port != 0 && h.socket.peer.is_none()
}

/// Range ports used in `proto`'s port space, from `holders` (every socket of a namespace).
pub fn space_use(holders: &[Holder], proto: Proto, range: Range) -> SpaceUse {
    let mut used = BTreeSet::new();
    let mut conns = BTreeSet::new();
    let mut binds = BTreeSet::new();
    for h in in_space(holders, proto, range) {
        used.insert(h.socket.port);
        if h.socket.peer.is_some() {
            conns.insert(h.socket.port);
        }
        if placed_by_bind(h) {
            binds.insert(h.socket.port);
        }
    }
    SpaceUse {
        range,
        used: used.len() as u32,
        by_connections: conns.len() as u32,
        by_binds: binds.len() as u32,
    }
}

/// The sockets of `proto`'s port space on a usable port of the range.
fn in_space(holders: &[Holder], proto: Proto, range: Range) -> impl Iterator<Item = &Holder> {
    holders
        .iter()
        .filter(move |h| h.socket.proto.shares_ports_with(proto) && range.contains(h.socket.port))
}

/// Range ports toward `dest` for a TCP connect() from `source` (None: the socket had no
/// address yet, so connections from every source count), with the top `top` owners.
/// `reserved(port)` says whether a port is reserved (not counted).
pub fn dest_use(
    holders: &[Holder],
    range: Range,
    reserved: impl Fn(u16) -> bool,
    dest: (IpAddr, u16),
    source: Option<IpAddr>,
    top: usize,
) -> DestUse {
    // Port → whether a live (not TIME_WAIT) connection to dest holds it.
    let mut ports: HashMap<u16, bool> = HashMap::new();
    let mut sources = BTreeSet::new();
    let mut binds = BTreeSet::new();
    let mut owners: HashMap<u32, PortOwner> = HashMap::new();
    for h in in_space(holders, Proto::Tcp, range).filter(|h| !reserved(h.socket.port)) {
        let s = &h.socket;
        if placed_by_bind(h) {
            binds.insert(s.port);
            continue;
        }
        let Some((peer, pport)) = s.peer else {
            continue;
        };
        if pport != dest.1 || !same_ip(peer, dest.0) {
            continue;
        }
        if source.is_some_and(|src| !src.is_unspecified() && !same_ip(src, s.addr)) {
            continue;
        }
        sources.insert(s.addr.to_canonical());
        *ports.entry(s.port).or_default() |= !s.state.is_time_wait();
        if let Some(o) = h.owners.first() {
            count_owner(&mut owners, o);
        }
    }
    let to_dest = ports.len() as u32;
    let blocked = ports.keys().chain(&binds).collect::<BTreeSet<_>>().len() as u32;
    DestUse {
        range,
        dest,
        source: source.filter(|s| !s.is_unspecified()),
        to_dest,
        to_dest_time_wait: ports.values().filter(|live| !**live).count() as u32,
        sources: sources.len() as u32,
        by_binds: binds.len() as u32,
        blocked,
        owners: top_owners(owners, top),
    }
}

/// The processes holding most of `proto`'s usable range ports (UDP: every socket there holds
/// its port alone).
pub fn space_owners(
    holders: &[Holder],
    proto: Proto,
    range: Range,
    reserved: impl Fn(u16) -> bool,
    top: usize,
) -> Vec<PortOwner> {
    let mut owners = HashMap::new();
    for h in in_space(holders, proto, range).filter(|h| !reserved(h.socket.port)) {
        if let Some(o) = h.owners.first() {
            count_owner(&mut owners, o);
        }
    }
    top_owners(owners, top)
}

fn count_owner(owners: &mut HashMap<u32, PortOwner>, o: &Owner) {
    owners
        .entry(o.pid)
        .or_insert_with(|| PortOwner {
            pid: o.pid,
            comm: o.comm.clone(),
            workload: o.workload.clone(),
            count: 0,
        })
        .count += 1;
}

fn top_owners(owners: HashMap<u32, PortOwner>, top: usize) -> Vec<PortOwner> {
    let mut v: Vec<PortOwner> = owners.into_values().collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then(a.pid.cmp(&b.pid)));
    v.truncate(top);
    v
}

/// Every TCP destination with connections from range ports, most blocked first, at most `top`
/// of them (each counted over every source address, as a socket without a bound address sees
/// them).
pub fn busy_destinations(
    holders: &[Holder],
    range: Range,
    reserved: impl Fn(u16) -> bool + Copy,
    top: usize,
    owners_each: usize,
) -> Vec<DestUse> {
    let mut dests: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
    for h in in_space(holders, Proto::Tcp, range) {
        if let Some((peer, port)) = h.socket.peer {
            dests.insert((peer.to_canonical(), port));
        }
    }
    // Count each destination's ports in one pass, then describe the busiest fully.
    let mut per_dest: HashMap<(IpAddr, u16), BTreeSet<u16>> = HashMap::new();
    for h in in_space(holders, Proto::Tcp, range).filter(|h| !reserved(h.socket.port)) {
        if let Some((peer, port)) = h.socket.peer {
            per_dest
                .entry((peer.to_canonical(), port))
                .or_default()
                .insert(h.socket.port);
        }
    }
    let mut ranked: Vec<((IpAddr, u16), usize)> = per_dest
        .into_iter()
        .map(|(d, ports)| (d, ports.len()))
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(top);
    ranked
        .into_iter()
        .map(|(d, _)| dest_use(holders, range, reserved, d, None, owners_each))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::sockets::{Family, Options, OwnerStatus, SocketView, Source, State};

    fn sock(proto: Proto, port: u16, state: State, peer: Option<(&str, u16)>) -> Holder {
        Holder {
            socket: SocketView {
                family: Family::Ipv4,
                proto,
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port,
                state,
                options: Options::default(),
                uid: Some(0),
                netns: 1,
                ino: u64::from(port),
                peer: peer.map(|(a, p)| (a.parse().unwrap(), p)),
                tw_left_ms: None,
            },
            owners: if state.is_time_wait() {
                vec![]
            } else {
                vec![Owner {
                    pid: 100 + u32::from(port % 2),
                    comm: "client".into(),
                    fd: 3,
                    workload: None,
                    forward: None,
                }]
            },
            source: Source::SocketTable,
            status: OwnerStatus::Live,
        }
    }

    fn range() -> Range {
        Range {
            lo: 40000,
            hi: 40003,
            reserved: 0,
        }
    }

    const DB: (&str, u16) = ("127.0.0.1", 5432);

    #[test]
    fn counts_ports_toward_one_destination() {
        let est = State::ESTABLISHED;
        let holders = vec![
            sock(Proto::Tcp, 40000, est, Some(DB)),
            sock(Proto::Tcp, 40001, State::TIME_WAIT, Some(DB)),
            // Another destination shares port 40000: it does not count.
            sock(Proto::Tcp, 40000, est, Some(("127.0.0.1", 6379))),
            // A bound socket: connect() never takes its port.
            sock(Proto::Tcp, 40002, State::CLOSE, None),
            // UDP, outside the range: not counted.
            sock(Proto::Udp, 40003, est, Some(DB)),
            sock(Proto::Tcp, 8080, est, Some(DB)),
        ];
        let d = dest_use(
            &holders,
            range(),
            |_| false,
            ("127.0.0.1".parse().unwrap(), 5432),
            None,
            5,
        );
        assert_eq!(d.to_dest, 2);
        assert_eq!(d.to_dest_time_wait, 1);
        assert_eq!(d.by_binds, 1);
        assert_eq!(d.blocked, 3);
        assert_eq!(d.free(), 1);
        assert_eq!(d.sources, 1);
        // TIME_WAIT has no owner: one connection, owned by pid 100.
        assert_eq!(d.owners.len(), 1);
        assert_eq!((d.owners[0].pid, d.owners[0].count), (100, 1));
        // Reserved ports are not counted; a v4-mapped destination is the same one.
        let d = dest_use(
            &holders,
            Range {
                reserved: 1,
                ..range()
            },
            |p| p == 40001,
            ("::ffff:127.0.0.1".parse().unwrap(), 5432),
            Some("127.0.0.1".parse().unwrap()),
            5,
        );
        assert_eq!((d.to_dest, d.to_dest_time_wait, d.blocked), (1, 0, 2));
        assert_eq!(d.free(), 1);
        // Another source address does not share its ports with this one.
        let d = dest_use(
            &holders,
            range(),
            |_| false,
            ("127.0.0.1".parse().unwrap(), 5432),
            Some("127.0.0.2".parse().unwrap()),
            5,
        );
        assert_eq!((d.to_dest, d.blocked), (0, 1));
    }

    #[test]
    fn splits_a_port_space_by_connections_and_binds() {
        let holders = vec![
            sock(Proto::Tcp, 40000, State::ESTABLISHED, Some(DB)),
            sock(
                Proto::Tcp,
                40000,
                State::ESTABLISHED,
                Some(("127.0.0.1", 1)),
            ),
            sock(Proto::Tcp, 40001, State::LISTEN, None),
            sock(Proto::Udp, 40002, State::CLOSE, None),
        ];
        let t = space_use(&holders, Proto::Tcp, range());
        assert_eq!((t.used, t.by_connections, t.by_binds), (2, 1, 1));
        let u = space_use(&holders, Proto::Udp, range());
        assert_eq!((u.used, u.by_connections, u.by_binds), (1, 0, 1));
    }

    #[test]
    fn ranks_busy_destinations() {
        let s = Sysctls {
            ip_local_port_range: Some((40000, 40003)),
            ip_local_reserved_ports: Some(String::new()),
            ..Sysctls::default()
        };
        let r = Range::of(&s).unwrap();
        assert_eq!((r.size(), r.usable()), (4, 4));
        let est = State::ESTABLISHED;
        let holders = vec![
            sock(Proto::Tcp, 40000, est, Some(DB)),
            sock(Proto::Tcp, 40001, est, Some(DB)),
            sock(Proto::Tcp, 40002, est, Some(DB)),
            sock(Proto::Tcp, 40000, est, Some(("127.0.0.1", 1))),
            sock(Proto::Udp, 40003, est, Some(DB)),
        ];
        let busy = busy_destinations(&holders, r, |_| false, 5, 3);
        assert_eq!(busy.len(), 2);
        assert_eq!(busy[0].dest.1, 5432);
        assert_eq!(
            (busy[0].to_dest, busy[0].blocked, busy[0].free()),
            (3, 3, 1)
        );
        assert_eq!((busy[1].dest.1, busy[1].to_dest), (1, 1));
        // Unreadable sysctls give no range: nothing is assumed.
        assert_eq!(Range::of(&Sysctls::default()), None);
    }
}
