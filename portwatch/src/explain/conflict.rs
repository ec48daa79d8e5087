//! The kernel's port-sharing rules, mirrored: given the socket that asks and one that already
//! holds the port, do they clash, and why (not)?
//!
//! Sources, Linux 6.1–6.18: `inet_bind_conflict()` and `inet_rcv_saddr_equal()` in
//! net/ipv4/inet_connection_sock.c (TCP), `udp_lib_lport_inuse()` in net/ipv4/udp.c (UDP), and
//! `__inet6_bind()`, which makes every socket bound to a specific IPv6 address v6-only.
//! Everything here is pure, so it is tested without root against a table of cases, and the
//! live tests check that it agrees with the running kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::sockets::{Family, Proto, State};

/// One side of a comparison: the facts the kernel's rules look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    pub family: Family,
    pub proto: Proto,
    pub addr: IpAddr,
    /// Effective IPV6_V6ONLY (see [`Side::effective_v6only`]).
    pub v6only: bool,
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub dev: u32,
    pub uid: Option<u32>,
    pub state: State,
    pub netns: u32,
}

impl Side {
    /// `__inet6_bind()` sets IPV6_V6ONLY on any socket bound to a specific, non-mapped IPv6
    /// address, whatever the program asked.
    pub fn effective_v6only(family: Family, addr: IpAddr, flag: bool) -> bool {
        match (family, addr) {
            (Family::Ipv6, IpAddr::V6(a)) => {
                flag || (!a.is_unspecified() && a.to_ipv4_mapped().is_none())
            }
            _ => false,
        }
    }

    fn is_wildcard(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => a.is_unspecified(),
            IpAddr::V6(a) => {
                a.is_unspecified() || a.to_ipv4_mapped().is_some_and(|v| v.is_unspecified())
            }
        }
    }

    /// A dual-stack IPv6 wildcard: `[::]` without IPV6_V6ONLY, which also takes IPv4.
    fn is_dual_wildcard(&self) -> bool {
        matches!(self.addr, IpAddr::V6(a) if a.is_unspecified()) && !self.v6only
    }

    /// IPv4 address or IPv4-mapped IPv6 address.
    fn is_ipv4ish(&self) -> bool {
        match self.addr {
            IpAddr::V4(_) => true,
            IpAddr::V6(a) => a.to_ipv4_mapped().is_some(),
        }
    }

    /// `sk_rcv_saddr`: what an IPv6 socket looks like to IPv4 comparisons.
    fn rcv_saddr_v4(&self) -> Ipv4Addr {
        const LOOPBACK4_IPV6: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
        match self.addr {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) if a.is_unspecified() => Ipv4Addr::UNSPECIFIED,
            IpAddr::V6(a) => a.to_ipv4_mapped().unwrap_or(LOOPBACK4_IPV6),
        }
    }

    fn v6(&self) -> Option<Ipv6Addr> {
        match (self.family, self.addr) {
            (Family::Ipv6, IpAddr::V6(a)) => Some(a),
            _ => None,
        }
    }
}

/// How the two addresses overlap, in the words the explanation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlap {
    /// The very same address (0.0.0.0 and 0.0.0.0, or 10.0.0.1 and 10.0.0.1).
    Same,
    /// The same IPv4 address, once written as `::ffff:a.b.c.d`.
    V4Mapped,
    /// The holder is on the wildcard address, which covers the asked specific one.
    HolderWildcard,
    /// The asker wants the wildcard, which would cover the holder's specific address.
    AskerWildcard,
    /// The holder is `[::]` dual-stack, which covers IPv4 addresses.
    HolderDualStack,
    /// The asker wants `[::]` dual-stack, which would cover the holder's IPv4 address.
    AskerDualStack,
}

/// Why options that can let sockets share a port did not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// Neither side set a sharing option.
    NoOptions,
    /// SO_REUSEADDR only on one side.
    ReuseAddrOneSided { asker_has: bool },
    /// The holder listens; SO_REUSEADDR never shares with a listener.
    HolderListens,
    /// listen() on a port where another socket already listens.
    ListenTwice,
    /// A TIME_WAIT holder that only SO_REUSEADDR on both sides (or SO_REUSEPORT) gets past.
    TimeWait {
        asker_reuse: bool,
        holder_reuse: bool,
    },
    /// SO_REUSEPORT only on one side.
    ReusePortOneSided { asker_has: bool },
    /// SO_REUSEPORT on both, but different users.
    ReusePortUid {
        asker: Option<u32>,
        holder: Option<u32>,
    },
    /// One socket is bound to a device and the other to none, which covers all devices.
    DeviceVsUnbound { asker_dev: u32, holder_dev: u32 },
}

/// Why the two sockets may hold the same port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coexist {
    SeparatePortSpaces,
    DifferentNetns,
    DifferentDevices,
    DifferentAddresses,
    /// One side is IPv6 v6-only and the other IPv4.
    V6Only {
        holder_is_v6only: bool,
    },
    ReuseAddr,
    UdpReuseAddr,
    ReusePort,
    TimeWaitReuse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    Conflict { overlap: Overlap, blocker: Blocker },
    Coexist(Coexist),
}

/// Whether the call is bind() or listen(): at listen() the asker is itself listening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Bind,
    Listen,
}

/// `inet_rcv_saddr_equal(sk, sk2, true)`: do the bound addresses overlap?
pub fn overlap(asker: &Side, holder: &Side) -> Option<Overlap> {
    let equal = match asker.v6() {
        Some(a6) => ipv6_equal(a6, asker, holder),
        None => {
            !holder.v6only && {
                let (a, h) = (asker.rcv_saddr_v4(), holder.rcv_saddr_v4());
                a == h || a.is_unspecified() || h.is_unspecified()
            }
        }
    };
    equal.then(|| classify(asker, holder))
}

fn ipv6_equal(a6: Ipv6Addr, asker: &Side, holder: &Side) -> bool {
    let a_mapped = a6.to_ipv4_mapped().is_some();
    let a_any = a6.is_unspecified();
    let h6 = holder.v6();
    let h_mapped = h6.is_none_or(|h| h.to_ipv4_mapped().is_some());
    let h_any = h6.is_some_and(|h| h.is_unspecified());
    if a_mapped && h_mapped {
        if holder.v6only {
            return false;
        }
        let (a, h) = (asker.rcv_saddr_v4(), holder.rcv_saddr_v4());
        return a == h || a.is_unspecified() || h.is_unspecified();
    }
    if a_any && h_any {
        return true;
    }
    if h_any && !(holder.v6only && a_mapped) {
        return true;
    }
    if a_any && !(asker.v6only && h_mapped) {
        return true;
    }
    h6 == Some(a6)
}

fn classify(asker: &Side, holder: &Side) -> Overlap {
    let (aw, hw) = (asker.is_wildcard(), holder.is_wildcard());
    if holder.is_dual_wildcard() && asker.is_ipv4ish() {
        return Overlap::HolderDualStack;
    }
    if asker.is_dual_wildcard() && holder.is_ipv4ish() {
        return Overlap::AskerDualStack;
    }
    match (aw, hw) {
        (true, true) => Overlap::Same,
        (false, true) => Overlap::HolderWildcard,
        (true, false) => Overlap::AskerWildcard,
        (false, false) if asker.family != holder.family => Overlap::V4Mapped,
        (false, false) => Overlap::Same,
    }
}

/// Why two non-overlapping addresses don't clash.
fn apart(asker: &Side, holder: &Side) -> Coexist {
    // IPV6_V6ONLY is the reason only where a wildcard is involved: two specific addresses of
    // different families (::1 and 127.0.0.1) never overlap, v6-only or not.
    let v4_vs_v6only = |v4: &Side, v6: &Side| {
        v4.is_ipv4ish() && v6.v6only && v6.v6().is_some() && (v4.is_wildcard() || v6.is_wildcard())
    };
    if v4_vs_v6only(asker, holder) {
        Coexist::V6Only {
            holder_is_v6only: true,
        }
    } else if v4_vs_v6only(holder, asker) {
        Coexist::V6Only {
            holder_is_v6only: false,
        }
    } else {
        Coexist::DifferentAddresses
    }
}

/// The relation between an asking socket and one holding the same port number.
pub fn relate(asker: &Side, holder: &Side, call: Call) -> Relation {
    if !asker.proto.shares_ports_with(holder.proto) {
        return Relation::Coexist(Coexist::SeparatePortSpaces);
    }
    if asker.netns != holder.netns {
        return Relation::Coexist(Coexist::DifferentNetns);
    }
    match asker.proto {
        Proto::Udp | Proto::UdpLite => relate_udp(asker, holder),
        _ => relate_tcp(asker, holder, call),
    }
}

fn devices_apart(asker: &Side, holder: &Side) -> bool {
    asker.dev != 0 && holder.dev != 0 && asker.dev != holder.dev
}

fn device_blocker(asker: &Side, holder: &Side) -> Option<Blocker> {
    ((asker.dev == 0) != (holder.dev == 0)).then_some(Blocker::DeviceVsUnbound {
        asker_dev: asker.dev,
        holder_dev: holder.dev,
    })
}

fn same_uid(asker: &Side, holder: &Side) -> bool {
    matches!((asker.uid, holder.uid), (Some(a), Some(h)) if a == h)
}

/// `inet_bind_conflict()` with relax and reuseport_ok, as bind() and listen() call it.
fn relate_tcp(asker: &Side, holder: &Side, call: Call) -> Relation {
    if devices_apart(asker, holder) {
        return Relation::Coexist(Coexist::DifferentDevices);
    }
    let Some(overlap) = overlap(asker, holder) else {
        return Relation::Coexist(apart(asker, holder));
    };
    let time_wait = holder.state.is_time_wait();
    let both_reuseport = asker.reuseport && holder.reuseport;
    if asker.reuseaddr && holder.reuseaddr && !holder.state.is_listen() {
        return Relation::Coexist(if time_wait {
            Coexist::TimeWaitReuse
        } else {
            Coexist::ReuseAddr
        });
    }
    // A TIME_WAIT socket has no owner any more, so the uid check does not apply to it.
    if both_reuseport && (time_wait || same_uid(asker, holder)) {
        return Relation::Coexist(Coexist::ReusePort);
    }
    let blocker = if time_wait {
        Blocker::TimeWait {
            asker_reuse: asker.reuseaddr,
            holder_reuse: holder.reuseaddr,
        }
    } else if both_reuseport {
        Blocker::ReusePortUid {
            asker: asker.uid,
            holder: holder.uid,
        }
    } else if call == Call::Listen && holder.state.is_listen() {
        Blocker::ListenTwice
    } else if holder.state.is_listen() && (asker.reuseaddr || holder.reuseaddr) {
        Blocker::HolderListens
    } else if asker.reuseaddr != holder.reuseaddr {
        Blocker::ReuseAddrOneSided {
            asker_has: asker.reuseaddr,
        }
    } else if asker.reuseport != holder.reuseport {
        Blocker::ReusePortOneSided {
            asker_has: asker.reuseport,
        }
    } else if let Some(b) = device_blocker(asker, holder) {
        b
    } else {
        Blocker::NoOptions
    };
    Relation::Conflict { overlap, blocker }
}

/// `udp_lib_lport_inuse()`: SO_REUSEADDR on both sides shares outright, whatever the state.
fn relate_udp(asker: &Side, holder: &Side) -> Relation {
    if asker.reuseaddr && holder.reuseaddr {
        return Relation::Coexist(Coexist::UdpReuseAddr);
    }
    if devices_apart(asker, holder) {
        return Relation::Coexist(Coexist::DifferentDevices);
    }
    let Some(overlap) = overlap(asker, holder) else {
        return Relation::Coexist(apart(asker, holder));
    };
    let both_reuseport = asker.reuseport && holder.reuseport;
    if both_reuseport && same_uid(asker, holder) {
        return Relation::Coexist(Coexist::ReusePort);
    }
    let blocker = if both_reuseport {
        Blocker::ReusePortUid {
            asker: asker.uid,
            holder: holder.uid,
        }
    } else if asker.reuseaddr != holder.reuseaddr {
        Blocker::ReuseAddrOneSided {
            asker_has: asker.reuseaddr,
        }
    } else if asker.reuseport != holder.reuseport {
        Blocker::ReusePortOneSided {
            asker_has: asker.reuseport,
        }
    } else if let Some(b) = device_blocker(asker, holder) {
        b
    } else {
        Blocker::NoOptions
    };
    Relation::Conflict { overlap, blocker }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(proto: Proto, addr: &str) -> Side {
        let addr: IpAddr = addr.parse().unwrap();
        let family = if addr.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        };
        Side {
            family,
            proto,
            addr,
            v6only: Side::effective_v6only(family, addr, false),
            reuseaddr: false,
            reuseport: false,
            dev: 0,
            uid: Some(1000),
            state: State::CLOSE,
            netns: 1,
        }
    }
    fn tcp(addr: &str) -> Side {
        side(Proto::Tcp, addr)
    }
    fn udp(addr: &str) -> Side {
        side(Proto::Udp, addr)
    }
    fn listening(mut s: Side) -> Side {
        s.state = State::LISTEN;
        s
    }
    fn reuse(mut s: Side) -> Side {
        s.reuseaddr = true;
        s
    }
    fn reuseport(mut s: Side, uid: u32) -> Side {
        s.reuseport = true;
        s.uid = Some(uid);
        s
    }
    fn v6only(mut s: Side) -> Side {
        s.v6only = true;
        s
    }
    fn conflict(o: Overlap, b: Blocker) -> Relation {
        Relation::Conflict {
            overlap: o,
            blocker: b,
        }
    }
    fn ok(c: Coexist) -> Relation {
        Relation::Coexist(c)
    }
    use Blocker as B;
    use Coexist as C;
    use Overlap as O;

    /// (case, asker, holder, call, expected): one row per rule.
    #[test]
    fn rule_table() {
        let tw = |mut s: Side, reuse: bool| {
            s.state = State::TIME_WAIT;
            s.reuseaddr = reuse;
            s.uid = None;
            s
        };
        let dev = |mut s: Side, d: u32| {
            s.dev = d;
            s
        };
        let other_ns = |mut s: Side| {
            s.netns = 2;
            s
        };
        let cases: Vec<(&str, Side, Side, Call, Relation)> = vec![
            (
                "same address",
                tcp("127.0.0.1"),
                listening(tcp("127.0.0.1")),
                Call::Bind,
                conflict(O::Same, B::NoOptions),
            ),
            (
                "wildcard holder covers specific",
                tcp("127.0.0.1"),
                tcp("0.0.0.0"),
                Call::Bind,
                conflict(O::HolderWildcard, B::NoOptions),
            ),
            (
                "specific holder blocks wildcard",
                tcp("0.0.0.0"),
                tcp("127.0.0.1"),
                Call::Bind,
                conflict(O::AskerWildcard, B::NoOptions),
            ),
            (
                "different specific addresses coexist",
                tcp("127.0.0.1"),
                tcp("127.0.0.2"),
                Call::Bind,
                ok(C::DifferentAddresses),
            ),
            (
                "tcp and udp have separate port spaces",
                udp("0.0.0.0"),
                listening(tcp("0.0.0.0")),
                Call::Bind,
                ok(C::SeparatePortSpaces),
            ),
            (
                "dual-stack [::] covers IPv4",
                tcp("0.0.0.0"),
                listening(tcp("::")),
                Call::Bind,
                conflict(O::HolderDualStack, B::NoOptions),
            ),
            (
                "dual-stack [::] covers a specific IPv4",
                tcp("127.0.0.1"),
                tcp("::"),
                Call::Bind,
                conflict(O::HolderDualStack, B::NoOptions),
            ),
            (
                "asking dual-stack [::] next to IPv4",
                tcp("::"),
                tcp("0.0.0.0"),
                Call::Bind,
                conflict(O::AskerDualStack, B::NoOptions),
            ),
            (
                "v6only [::] leaves IPv4 free",
                tcp("0.0.0.0"),
                v6only(tcp("::")),
                Call::Bind,
                ok(C::V6Only {
                    holder_is_v6only: true,
                }),
            ),
            (
                "asking v6only [::] next to IPv4",
                v6only(tcp("::")),
                tcp("0.0.0.0"),
                Call::Bind,
                ok(C::V6Only {
                    holder_is_v6only: false,
                }),
            ),
            (
                "specific IPv6 is v6-only by itself",
                tcp("0.0.0.0"),
                tcp("::1"),
                Call::Bind,
                ok(C::V6Only {
                    holder_is_v6only: true,
                }),
            ),
            (
                "::1 and 127.0.0.1 are different addresses, v6-only or not",
                tcp("::1"),
                tcp("127.0.0.1"),
                Call::Bind,
                ok(C::DifferentAddresses),
            ),
            (
                "v4-mapped equals IPv4",
                tcp("::ffff:127.0.0.1"),
                tcp("127.0.0.1"),
                Call::Bind,
                conflict(O::V4Mapped, B::NoOptions),
            ),
            (
                "v4-mapped vs v6only [::]",
                tcp("::ffff:127.0.0.1"),
                v6only(tcp("::")),
                Call::Bind,
                ok(C::V6Only {
                    holder_is_v6only: true,
                }),
            ),
            (
                "reuseaddr needs both",
                reuse(tcp("0.0.0.0")),
                tcp("0.0.0.0"),
                Call::Bind,
                conflict(O::Same, B::ReuseAddrOneSided { asker_has: true }),
            ),
            (
                "reuseaddr on both, holder not listening",
                reuse(tcp("0.0.0.0")),
                reuse(tcp("0.0.0.0")),
                Call::Bind,
                ok(C::ReuseAddr),
            ),
            (
                "reuseaddr is no help against a listener",
                reuse(tcp("0.0.0.0")),
                reuse(listening(tcp("0.0.0.0"))),
                Call::Bind,
                conflict(O::Same, B::HolderListens),
            ),
            (
                "listen twice",
                reuse(listening(tcp("0.0.0.0"))),
                reuse(listening(tcp("0.0.0.0"))),
                Call::Listen,
                conflict(O::Same, B::ListenTwice),
            ),
            (
                "udp reuseaddr shares outright",
                reuse(udp("0.0.0.0")),
                reuse(udp("0.0.0.0")),
                Call::Bind,
                ok(C::UdpReuseAddr),
            ),
            (
                "udp reuseaddr needs both",
                udp("0.0.0.0"),
                reuse(udp("0.0.0.0")),
                Call::Bind,
                conflict(O::Same, B::ReuseAddrOneSided { asker_has: false }),
            ),
            (
                "time-wait passed with reuseaddr on both",
                reuse(tcp("0.0.0.0")),
                tw(tcp("127.0.0.1"), true),
                Call::Bind,
                ok(C::TimeWaitReuse),
            ),
            (
                "time-wait blocks when the old socket lacked reuseaddr",
                reuse(tcp("0.0.0.0")),
                tw(tcp("127.0.0.1"), false),
                Call::Bind,
                conflict(
                    O::AskerWildcard,
                    B::TimeWait {
                        asker_reuse: true,
                        holder_reuse: false,
                    },
                ),
            ),
            (
                "time-wait blocks when the new socket lacks reuseaddr",
                tcp("0.0.0.0"),
                tw(tcp("127.0.0.1"), true),
                Call::Bind,
                conflict(
                    O::AskerWildcard,
                    B::TimeWait {
                        asker_reuse: false,
                        holder_reuse: true,
                    },
                ),
            ),
            (
                "reuseport shares between one user's sockets",
                reuseport(tcp("0.0.0.0"), 7),
                listening(reuseport(tcp("0.0.0.0"), 7)),
                Call::Bind,
                ok(C::ReusePort),
            ),
            (
                "reuseport needs both",
                reuseport(tcp("0.0.0.0"), 7),
                listening(tcp("0.0.0.0")),
                Call::Bind,
                conflict(O::Same, B::ReusePortOneSided { asker_has: true }),
            ),
            (
                "reuseport needs the same uid",
                reuseport(tcp("0.0.0.0"), 7),
                listening(reuseport(tcp("0.0.0.0"), 8)),
                Call::Bind,
                conflict(
                    O::Same,
                    B::ReusePortUid {
                        asker: Some(7),
                        holder: Some(8),
                    },
                ),
            ),
            (
                "different devices coexist",
                dev(tcp("0.0.0.0"), 2),
                dev(tcp("0.0.0.0"), 3),
                Call::Bind,
                ok(C::DifferentDevices),
            ),
            (
                "unbound device conflicts with a bound one",
                dev(tcp("0.0.0.0"), 2),
                tcp("0.0.0.0"),
                Call::Bind,
                conflict(
                    O::Same,
                    B::DeviceVsUnbound {
                        asker_dev: 2,
                        holder_dev: 0,
                    },
                ),
            ),
            (
                "different netns never conflict",
                tcp("0.0.0.0"),
                other_ns(tcp("0.0.0.0")),
                Call::Bind,
                ok(C::DifferentNetns),
            ),
        ];
        for (name, asker, holder, call, want) in cases {
            assert_eq!(relate(&asker, &holder, call), want, "{name}");
        }
    }
}
