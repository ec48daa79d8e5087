//! Which socket-table reads an event's facts need, decided from the event alone and from the
//! ports portwatch saw bound: [`super::FactFinder::prefetch`] reads them for a whole pass,
//! [`super::FactFinder::gather`] finds them cached. Pure: no I/O here.

use std::collections::HashMap;

use portwatch_common::walk;

use crate::{event::Event, sockets::Proto};

/// How many other namespaces a successful bind is compared against.
const MAX_OTHER_NETNS: usize = 8;

/// Port → namespaces where a bind or listen on it succeeded while tracing. A successful
/// bind is compared with those other namespaces only ("different netns never conflict"):
/// every table walk covers a whole hash table, too costly to do for every namespace.
#[derive(Default)]
pub(super) struct BoundPorts {
    seen: HashMap<u16, Vec<(u32, Proto)>>,
}

impl BoundPorts {
    /// Remembers that `port` was bound in namespace `netns` by a `proto` socket; the oldest
    /// of [`MAX_OTHER_NETNS`] namespaces goes.
    pub(super) fn note(&mut self, port: u16, netns: u32, proto: Proto) {
        let key = (netns, proto);
        let seen = self.seen.entry(port).or_default();
        if !seen.contains(&key) {
            seen.push(key);
            if seen.len() > MAX_OTHER_NETNS {
                seen.remove(0);
            }
        }
    }

    /// Forgets namespace `ino` (it is gone).
    pub(super) fn forget_netns(&mut self, ino: u32) {
        for seen in self.seen.values_mut() {
            seen.retain(|&(n, _)| n != ino);
        }
        self.seen.retain(|_, seen| !seen.is_empty());
    }

    /// The namespaces other than `netns` where `port` was bound while tracing.
    pub(super) fn other_namespaces(&self, netns: u32, port: u16) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .seen
            .get(&port)
            .map(|seen| {
                seen.iter()
                    .map(|&(n, _)| n)
                    .filter(|&n| n != netns)
                    .collect()
            })
            .unwrap_or_default();
        out.dedup();
        out
    }

    /// Whether a socket of another port space (UDP next to TCP) was bound on `port` in `netns`
    /// while tracing: only then is a success worth a table walk after the fact, since the
    /// kernel side read the call's own port space at the call. Without this, a storm of
    /// successful binds on ever-new ports (port 0) cost a whole table walk each.
    fn other_space_bound(&self, netns: u32, port: u16, proto: Proto) -> bool {
        self.seen.get(&port).is_some_and(|seen| {
            seen.iter()
                .any(|&(n, p)| n == netns && !p.shares_ports_with(proto))
        })
    }
}

/// The table reads one event's facts need.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum TableLookup {
    Nothing,
    /// A failed port 0 bind: how full the ephemeral range is (every port of the namespace).
    EphemeralRange,
    /// The call's port; for a success, also in the other namespaces that bound it. `tables`:
    /// the kernel did not read the port's owners at the call, so the tables must be read now.
    Port {
        port: u16,
        other_netns: bool,
        tables: bool,
    },
}

/// Decides the table reads `ev`'s facts need. [`super::FactFinder::prefetch`] and
/// [`super::FactFinder::gather`] both follow it, so that the second finds what the first read.
pub(super) fn table_lookup(ev: &Event, bound: &BoundPorts) -> TableLookup {
    if !needs_holders(ev) {
        return TableLookup::Nothing;
    }
    let port = ev.port();
    let port_zero = port == 0 || (!ev.ok() && ev.requested.as_ref().is_some_and(|r| r.port == 0));
    if port_zero && !ev.ok() {
        return TableLookup::EphemeralRange;
    }
    // A port the kernel picked (port 0) shares nothing on purpose: that other namespaces
    // hand out the same number is chance, not worth a table walk.
    let asked_zero = ev.requested.as_ref().is_some_and(|r| r.port == 0);
    let other_netns = ev.ok() && !asked_zero && {
        let netns = ev.netns().unwrap_or(0);
        !bound.other_namespaces(netns, port).is_empty()
    };
    // A failure is explained from the kernel's list alone; a success also looks at the
    // other protocol's sockets on the port, when one was seen there and the kernel side did
    // not read them at the call.
    let tables = !walked(ev)
        || (ev.ok()
            && !asked_zero
            && !other_space_walked(ev)
            && ev
                .socket
                .as_ref()
                .is_some_and(|s| bound.other_space_bound(s.netns, port, s.proto)));
    TableLookup::Port {
        port,
        other_netns,
        tables,
    }
}

/// Whether explaining this call needs the port's holders (they cost a table walk): a success
/// on a port (what it shares the port with) and EADDRINUSE (what is in the way).
fn needs_holders(ev: &Event) -> bool {
    match ev.errno() {
        None => ev.socket.as_ref().is_some_and(|s| s.port != 0),
        Some(e) => e == libc::EADDRINUSE,
    }
}

/// Whether the kernel side read the call's port's owners at the call.
pub(super) fn walked(ev: &Event) -> bool {
    ev.walk.is_some_and(|w| w & walk::DONE != 0)
}

/// Whether the kernel side also read the other protocol's owners of the port at the call.
fn other_space_walked(ev: &Event) -> bool {
    ev.walk.is_some_and(|w| w & walk::OTHER_SPACE != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Call, Requested},
        explain::tests::sock,
    };

    /// A bind in namespace 7 that asked for port `asked`, returned `ret`, left the socket on
    /// port `bound`; `walk`: the kernel side's walk bits (None: the tracepoint backend without
    /// a walk).
    fn bind(ret: i32, asked: u16, bound: u16, walk: Option<u8>) -> Event {
        let socket = sock(Proto::Tcp, "0.0.0.0", bound);
        Event {
            uid: 1000,
            fd: Some(3),
            requested: Some(Requested {
                sa_family: socket.family.af(),
                addr: socket.addr,
                port: asked,
                scope_id: 0,
                scope_name: None,
            }),
            ret,
            socket: Some(socket),
            walk,
            ..Event::imagined(Call::Bind, 42, "server")
        }
    }

    const IN_USE: i32 = -libc::EADDRINUSE;
    const WALKED: Option<u8> = Some(walk::DONE);

    fn port(port: u16, other_netns: bool, tables: bool) -> TableLookup {
        TableLookup::Port {
            port,
            other_netns,
            tables,
        }
    }

    #[test]
    fn only_successes_on_a_port_and_eaddrinuse_need_holders() {
        let none = BoundPorts::default();
        assert_eq!(
            table_lookup(&bind(0, 8080, 8080, WALKED), &none),
            port(8080, false, false)
        );
        assert_eq!(
            table_lookup(&bind(IN_USE, 8080, 0, WALKED), &none),
            port(8080, false, false)
        );
        for errno in [libc::EACCES, libc::EADDRNOTAVAIL, libc::EINVAL, libc::EPERM] {
            let ev = bind(-errno, 8080, 0, None);
            assert_eq!(
                table_lookup(&ev, &none),
                TableLookup::Nothing,
                "errno {errno}"
            );
        }
        // A success that left no port (nothing to share) needs nothing either.
        assert_eq!(
            table_lookup(&bind(0, 0, 0, None), &none),
            TableLookup::Nothing
        );
    }

    #[test]
    fn the_tables_are_read_when_the_kernel_did_not_walk_the_port() {
        let none = BoundPorts::default();
        assert_eq!(
            table_lookup(&bind(IN_USE, 8080, 0, None), &none),
            port(8080, false, true)
        );
        assert_eq!(
            table_lookup(&bind(0, 8080, 8080, None), &none),
            port(8080, false, true)
        );
        // A walk that did not happen (no table) is not a walk.
        let no_table = Some(walk::NO_TABLE);
        assert_eq!(
            table_lookup(&bind(IN_USE, 8080, 0, no_table), &none),
            port(8080, false, true)
        );
    }

    #[test]
    fn a_failed_port_zero_bind_needs_the_whole_range() {
        let none = BoundPorts::default();
        assert_eq!(
            table_lookup(&bind(IN_USE, 0, 0, WALKED), &none),
            TableLookup::EphemeralRange
        );
        assert_eq!(
            table_lookup(&bind(IN_USE, 0, 0, None), &none),
            TableLookup::EphemeralRange
        );
    }

    #[test]
    fn a_walked_success_reads_the_tables_only_for_the_other_port_space() {
        let mut bound = BoundPorts::default();
        let ok = bind(0, 8080, 8080, WALKED);
        // TCP seen on the port in this namespace: the kernel's walk covered it.
        bound.note(8080, 7, Proto::Tcp);
        assert_eq!(table_lookup(&ok, &bound), port(8080, false, false));
        // UDP seen there: a separate port space the walk did not cover.
        bound.note(8080, 7, Proto::Udp);
        assert_eq!(table_lookup(&ok, &bound), port(8080, false, true));
        // Unless the kernel side read that space at the call too.
        let both = bind(0, 8080, 8080, Some(walk::DONE | walk::OTHER_SPACE));
        assert_eq!(table_lookup(&both, &bound), port(8080, false, false));
        // Not for a port the kernel picked: sharing it is chance.
        let picked = bind(0, 0, 8080, WALKED);
        assert_eq!(table_lookup(&picked, &bound), port(8080, false, false));
    }

    #[test]
    fn a_success_looks_at_other_namespaces_that_bound_its_port() {
        let mut bound = BoundPorts::default();
        let ok = bind(0, 8080, 8080, WALKED);
        bound.note(8080, 7, Proto::Tcp);
        assert_eq!(table_lookup(&ok, &bound), port(8080, false, false));
        bound.note(8080, 9, Proto::Udp);
        assert_eq!(table_lookup(&ok, &bound), port(8080, true, false));
        // A failure is about its own namespace; a picked port shares nothing on purpose.
        assert_eq!(
            table_lookup(&bind(IN_USE, 8080, 0, WALKED), &bound),
            port(8080, false, false)
        );
        assert_eq!(
            table_lookup(&bind(0, 0, 8080, WALKED), &bound),
            port(8080, false, false)
        );
        // Once namespace 9 is gone, nothing is left to compare with.
        bound.forget_netns(9);
        assert_eq!(table_lookup(&ok, &bound), port(8080, false, false));
    }

    #[test]
    fn bound_ports_keep_the_newest_namespaces() {
        let mut bound = BoundPorts::default();
        for netns in 1..=MAX_OTHER_NETNS as u32 + 1 {
            bound.note(80, netns, Proto::Tcp);
            bound.note(80, netns, Proto::Tcp);
        }
        let others = bound.other_namespaces(0, 80);
        assert_eq!(others, (2..=MAX_OTHER_NETNS as u32 + 1).collect::<Vec<_>>());
        assert_eq!(bound.other_namespaces(2, 80).len(), MAX_OTHER_NETNS - 1);
        assert!(bound.other_namespaces(0, 81).is_empty());
        for netns in 2..=MAX_OTHER_NETNS as u32 + 1 {
            bound.forget_netns(netns);
        }
        assert!(bound.seen.is_empty());
    }
}
