//! The sentences for a connect() that failed for want of a local port ("Cannot assign
//! requested address"): the range full toward the destination, a 4-tuple that exists, a UDP
//! range full, or a source address that is not local. Every number comes from the facts, read
//! in the caller's namespace; where they do not show the cause, the verdict says what they do
//! show instead of guessing.

use std::net::IpAddr;

use super::{
    Attempt, Involved, Rule, Verdict,
    phrase::{err_name, holder_desc, who},
};
use crate::{
    address::endpoint,
    facts::{
        Facts, RangeUse,
        port_use::{DestUse, PortOwner, Range, SpaceUse},
    },
    sockets::{Holder, Proto},
};

pub fn explain(at: &Attempt, f: &Facts) -> Verdict {
    let sock = at.sock;
    let source_ok = sock.options.freebind || sock.options.transparent;
    if !sock.addr.is_unspecified() && f.addr_is_local == Some(false) && !source_ok {
        return source_not_local(at, f);
    }
    if sock.port != 0 && at.ev.errno() != Some(libc::EAGAIN) {
        return tuple_in_use(at, f);
    }
    match &f.range_use {
        Some(Ok(RangeUse::Toward(d))) if d.free() == 0 => ports_exhausted(at, f, d),
        Some(Ok(RangeUse::Toward(d))) => not_shown(at, &dest_numbers(d)),
        Some(Ok(RangeUse::Space { .. })) if sock.proto.shares_ports_with(Proto::Tcp) => {
            not_shown(at, "the destination could not be read")
        }
        Some(Ok(RangeUse::Space { space, owners })) => {
            if space.used >= space.range.usable() {
                udp_exhausted(at, space, owners)
            } else {
                not_shown(
                    at,
                    &format!(
                        "{} of the {} usable UDP ports of {} are held now",
                        space.used,
                        space.range.usable(),
                        range_words(space.range)
                    ),
                )
            }
        }
        Some(Err(why)) => not_shown(at, &format!("the numbers could not be read: {why}")),
        None => not_shown(at, "the numbers were not read"),
    }
}

/// "net.ipv4.ip_local_port_range 40000–40001".
fn range_words(r: Range) -> String {
    format!("net.ipv4.ip_local_port_range {}–{}", r.lo, r.hi)
}

/// "2 ports, 0 reserved (net.ipv4.ip_local_reserved_ports), 2 usable".
fn range_size(r: Range) -> String {
    format!(
        "{} ports, {} reserved (net.ipv4.ip_local_reserved_ports), {} usable",
        r.size(),
        r.reserved,
        r.usable()
    )
}

/// " from 10.0.0.5", " from one source address".
fn from_words(d: &DestUse) -> String {
    match d.source {
        Some(s) => format!(" from {s}"),
        None if d.sources == 1 => " from one source address".to_string(),
        None => format!(" from {} source addresses", d.sources),
    }
}

/// The counts toward one destination, as one phrase.
fn dest_numbers(d: &DestUse) -> String {
    let from = from_words(d);
    format!(
        "{} of the {} usable ports of {} have a connection to {}{from} ({} of them only in \
         TIME_WAIT), and {} are held by bound or listening sockets (bind()), which connect() \
         never takes; {} are free toward it now",
        d.to_dest,
        d.range.usable(),
        range_words(d.range),
        endpoint(d.dest.0, d.dest.1),
        d.to_dest_time_wait,
        d.by_binds,
        d.free()
    )
}

/// "net.ipv4.tcp_tw_reuse=2 (...)": what the kernel does with TIME_WAIT ports.
fn tw_reuse_words(v: Option<u8>) -> String {
    match v {
        Some(0) => "net.ipv4.tcp_tw_reuse=0: a TIME_WAIT port is never reused for a new \
                    connection to the same destination"
            .to_string(),
        Some(1) => "net.ipv4.tcp_tw_reuse=1: a TIME_WAIT port may be reused with TCP \
                    timestamps, once a second has passed since its last packet"
            .to_string(),
        Some(2) => "net.ipv4.tcp_tw_reuse=2 (the default): TIME_WAIT ports are reused for \
                    loopback connections only, with TCP timestamps, once a second has passed \
                    since their last packet"
            .to_string(),
        Some(n) => format!("net.ipv4.tcp_tw_reuse={n}"),
        None => "net.ipv4.tcp_tw_reuse could not be read".to_string(),
    }
}

fn ports_exhausted(at: &Attempt, f: &Facts, d: &DestUse) -> Verdict {
    let e = err_name(at);
    let dest = endpoint(d.dest.0, d.dest.1);
    let mut v = Verdict::new(
        false,
        Rule::ConnectPortsExhausted,
        format!(
            "{e}: no local port is free toward {dest}: all {} usable ports of {} are taken \
             toward it, {} by connections to it{} ({} of them only in TIME_WAIT) and {} by \
             bound or listening sockets.",
            d.range.usable(),
            range_words(d.range),
            d.to_dest,
            from_words(d),
            d.to_dest_time_wait,
            d.by_binds
        ),
    );
    v.details.push(
        "connect() shares a local port between destinations, but toward one destination from \
         one source address each port serves one connection (TIME_WAIT ones too), and it never \
         takes a port that a bind() placed a socket on"
            .to_string(),
    );
    v.details
        .push(format!("{}: {}", range_words(d.range), range_size(d.range)));
    v.details.push(tw_reuse_words(f.sysctls.tcp_tw_reuse));
    if !d.owners.is_empty() {
        v.details.push(format!(
            "connections to {dest} held by: {}",
            PortOwner::list(&d.owners)
        ));
    }
    if d.to_dest_time_wait > 0 {
        v.details.push(format!(
            "{} of those ports are held only by TIME_WAIT connections (no process: the kernel \
             keeps a closed connection's 4-tuple for 60 s)",
            d.to_dest_time_wait
        ));
    }
    let mut fixes: Vec<String> = Vec::new();
    let tw_dominates = d.to_dest_time_wait * 2 > d.to_dest;
    let reuse = "reuse connections (a pool, HTTP keep-alive) instead of opening one per request";
    if tw_dominates && f.sysctls.tcp_tw_reuse != Some(1) {
        fixes.push(format!(
            "{reuse}; TIME_WAIT holds most ports: net.ipv4.tcp_tw_reuse=1 lets new connections \
             take them (with TCP timestamps)"
        ));
    } else {
        fixes.push(reuse.to_string());
    }
    if d.by_binds > 0 || at.sock.options.bind_address_no_port {
        fixes.push(
            "if the program binds before connecting, set IP_BIND_ADDRESS_NO_PORT so the port \
             is chosen at connect(), shared across destinations"
                .to_string(),
        );
    }
    fixes.push(
        "spread connections over more source addresses or destinations (each pair has its own \
         ports)"
            .to_string(),
    );
    fixes.push(format!(
        "widen net.ipv4.ip_local_port_range (now {}–{})",
        d.range.lo, d.range.hi
    ));
    v.fix = Some(fixes.join("; or "));
    v
}

fn udp_exhausted(at: &Attempt, space: &SpaceUse, owners: &[PortOwner]) -> Verdict {
    let e = err_name(at);
    let range = space.range;
    let mut v = Verdict::new(
        false,
        Rule::ConnectUdpPortsExhausted,
        format!(
            "{e}: the UDP socket had no local port, and the kernel found none free to give it: \
             all {} usable ports of {} are held by UDP sockets (UDP does not share a port \
             between destinations).",
            range.usable(),
            range_words(range)
        ),
    );
    v.details
        .push(format!("{}: {}", range_words(range), range_size(range)));
    if !owners.is_empty() {
        v.details
            .push(format!("UDP ports held by: {}", PortOwner::list(owners)));
    }
    v.fix = Some(format!(
        "send from one bound UDP socket to many destinations (sendto()) instead of a socket \
         per destination, close the sockets you no longer need, or widen \
         net.ipv4.ip_local_port_range (now {}–{})",
        range.lo, range.hi
    ));
    v
}

/// The socket is bound to a fixed local port: the kernel refuses a connection whose 4-tuple
/// (source address and port, destination address and port) already exists.
fn tuple_in_use(at: &Attempt, f: &Facts) -> Verdict {
    let e = err_name(at);
    let sock = at.sock;
    let dest = endpoint(at.addr, at.port);
    let same = |h: &&Holder| {
        h.socket.port == sock.port
            && (sock.ino == 0 || h.socket.ino != sock.ino)
            && h.socket
                .peer
                .is_some_and(|(a, p)| p == at.port && a.to_canonical() == at.addr.to_canonical())
            && (sock.addr.is_unspecified()
                || h.socket.addr.to_canonical() == sock.addr.to_canonical())
    };
    let found = f.holders.as_deref().unwrap_or_default().iter().find(same);
    let message = match found {
        Some(h) => format!(
            "{e}: this socket is bound to {}, and {} already has the connection {} → {dest} \
             ({}): one 4-tuple, one connection; SO_REUSEADDR or SO_REUSEPORT let both sockets \
             bind the port, not both connect from it to the same destination.",
            sock.endpoint(),
            who(h),
            h.socket.endpoint(),
            holder_desc(&h.socket)
        ),
        None => format!(
            "{e}: this socket is bound to {}, and with a fixed local port the kernel refuses \
             connect() only when a connection {} → {dest} already exists; portwatch did not \
             find it in the socket tables after the call ({}).",
            sock.endpoint(),
            sock.endpoint(),
            f.holders_unavailable
                .as_deref()
                .unwrap_or("it closed since, or it is in a table portwatch cannot read")
        ),
    };
    let mut v = Verdict::new(false, Rule::ConnectTupleInUse, message);
    if let Some(h) = found {
        v.holders.push(Involved::new(
            h,
            Rule::ConnectTupleInUse,
            holder_desc(&h.socket),
        ));
    }
    v.fix = Some(
        "do not bind a fixed local port for outgoing connections: leave the port to connect() \
         (bind with port 0 and IP_BIND_ADDRESS_NO_PORT, or do not bind at all)"
            .to_string(),
    );
    v
}

fn source_not_local(at: &Attempt, f: &Facts) -> Verdict {
    let e = err_name(at);
    let addr = at.sock.addr;
    let mut v = Verdict::new(
        false,
        Rule::AddressNotLocal,
        format!(
            "{e}: the socket's source address {addr} is not an address of this network \
             namespace now (it was removed since bind(), or bound with IP_FREEBIND before it \
             existed), so connect() cannot send from it."
        ),
    );
    if let Some(l) = &f.local_addrs {
        let list: Vec<String> = l.iter().map(IpAddr::to_string).take(8).collect();
        v.details
            .push(format!("local addresses here: {}", list.join(", ")));
    }
    v.fix = Some(
        "bind the connecting socket to an address the host has now (see `ip addr`), or do not \
         bind it and let the kernel choose the source"
            .to_string(),
    );
    v
}

/// The error, and what the numbers show instead of a cause.
fn not_shown(at: &Attempt, numbers: &str) -> Verdict {
    let e = err_name(at);
    let dest = endpoint(at.addr, at.port);
    Verdict::new(
        false,
        Rule::ConnectUnexplained,
        format!(
            "{e}: the kernel says this at connect() to {dest} when no local port is free \
             toward it, but the numbers read after the call do not show that: {numbers} \
             (connections may have closed since the call)."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Call, Event, Requested},
        explain::{explain, tests::sock},
        facts::{
            Sysctls,
            port_use::{self, Range},
        },
        sockets::{Holder, Owner, OwnerStatus, Proto, Source, State},
    };

    const RANGE: Range = Range {
        lo: 40000,
        hi: 40001,
        reserved: 0,
    };

    /// A connect() of a socket bound to `local` (0.0.0.0:0: not bound) to `dest`.
    fn connect(proto: Proto, local: (&str, u16), dest: (&str, u16), errno: i32) -> Event {
        let mut s = sock(proto, local.0, local.1);
        s.ino = 1;
        Event {
            uid: 1000,
            fd: Some(3),
            requested: Some(Requested {
                sa_family: s.family.af(),
                addr: dest.0.parse().unwrap(),
                port: dest.1,
                scope_id: 0,
                scope_name: None,
            }),
            ret: -errno,
            socket: Some(s),
            ..Event::imagined(Call::Connect, 42, "client")
        }
    }

    /// A connection from 127.0.0.1:`port` to `dest`, owned by `pid` (none in TIME_WAIT).
    fn conn(proto: Proto, port: u16, dest: (&str, u16), state: State, pid: u32) -> Holder {
        let mut s = sock(proto, "127.0.0.1", port);
        s.state = state;
        s.peer = Some((dest.0.parse().unwrap(), dest.1));
        Holder {
            status: OwnerStatus::Live,
            socket: s,
            owners: if state.is_time_wait() {
                vec![]
            } else {
                vec![Owner {
                    pid,
                    comm: "worker".into(),
                    fd: 5,
                    workload: None,
                    forward: None,
                }]
            },
            source: Source::SocketTable,
        }
    }

    /// The facts a failed connect() gets from `all` (the namespace's sockets).
    fn facts(ev: &Event, all: &[Holder], tw_reuse: u8) -> Facts {
        let sock = ev.socket.as_ref().unwrap();
        let r = ev.requested.as_ref().unwrap();
        let range_use = if sock.proto.shares_ports_with(Proto::Tcp) {
            RangeUse::Toward(port_use::dest_use(
                all,
                RANGE,
                |_| false,
                (r.addr, r.port),
                Some(sock.addr),
                3,
            ))
        } else {
            RangeUse::Space {
                space: port_use::space_use(all, sock.proto, RANGE),
                owners: port_use::space_owners(all, sock.proto, RANGE, |_| false, 3),
            }
        };
        Facts {
            sysctls: Sysctls {
                ip_local_port_range: Some((RANGE.lo, RANGE.hi)),
                ip_local_reserved_ports: Some(String::new()),
                tcp_tw_reuse: Some(tw_reuse),
                ..Sysctls::default()
            },
            range_use: Some(Ok(range_use)),
            ..Facts::default()
        }
    }

    const DB: (&str, u16) = ("127.0.0.1", 5432);

    fn text(v: &Verdict) -> String {
        format!(
            "{}\n{}\n{}",
            v.message,
            v.details.join("\n"),
            v.fix.as_deref().unwrap_or("")
        )
    }

    #[test]
    fn a_full_range_toward_one_destination() {
        let ev = connect(Proto::Tcp, ("0.0.0.0", 0), DB, libc::EADDRNOTAVAIL);
        let all = vec![
            conn(Proto::Tcp, 40000, DB, State::ESTABLISHED, 7),
            conn(Proto::Tcp, 40001, DB, State::ESTABLISHED, 7),
            // Another destination on the same port: shared, not counted.
            conn(
                Proto::Tcp,
                40000,
                ("127.0.0.1", 6379),
                State::ESTABLISHED,
                8,
            ),
        ];
        let v = explain(&ev, &facts(&ev, &all, 2)).unwrap();
        assert_eq!(v.rule, Rule::ConnectPortsExhausted, "{}", v.message);
        assert!(
            v.message.starts_with(
                "EADDRNOTAVAIL at connect(): no local port is free toward 127.0.0.1:5432: all 2 \
                 usable ports of net.ipv4.ip_local_port_range 40000–40001 are taken toward it, 2 \
                 by connections to it from one source address (0 of them only in TIME_WAIT) and \
                 0 by bound or listening sockets."
            ),
            "{}",
            v.message
        );
        let t = text(&v);
        assert!(
            t.contains("connections to 127.0.0.1:5432 held by: pid 7 (worker) 2"),
            "{t}"
        );
        assert!(t.contains("net.ipv4.tcp_tw_reuse=2 (the default)"), "{t}");
        // Live connections: pooling first; no tcp_tw_reuse advice, no IP_BIND_ADDRESS_NO_PORT.
        let fix = v.fix.unwrap();
        assert!(fix.starts_with("reuse connections"), "{fix}");
        assert!(!fix.contains("tcp_tw_reuse"), "{fix}");
        assert!(!fix.contains("IP_BIND_ADDRESS_NO_PORT"), "{fix}");
    }

    #[test]
    fn time_wait_and_binds_change_the_fix() {
        let ev = connect(Proto::Tcp, ("0.0.0.0", 0), DB, libc::EADDRNOTAVAIL);
        let mut bound = sock(Proto::Tcp, "127.0.0.1", 40001);
        bound.ino = 9;
        let all = vec![
            conn(Proto::Tcp, 40000, DB, State::TIME_WAIT, 0),
            Holder {
                status: OwnerStatus::Live,
                socket: bound,
                owners: vec![],
                source: Source::FdTable,
            },
        ];
        let v = explain(&ev, &facts(&ev, &all, 0)).unwrap();
        assert_eq!(v.rule, Rule::ConnectPortsExhausted, "{}", v.message);
        assert!(v.message.contains("1 by connections to it from one source address (1 of them only in TIME_WAIT) and 1 by bound or listening sockets"), "{}", v.message);
        let t = text(&v);
        assert!(
            t.contains("net.ipv4.tcp_tw_reuse=0: a TIME_WAIT port is never reused"),
            "{t}"
        );
        assert!(t.contains("held only by TIME_WAIT connections"), "{t}");
        let fix = v.fix.unwrap();
        assert!(
            fix.contains("net.ipv4.tcp_tw_reuse=1 lets new connections take them"),
            "{fix}"
        );
        assert!(fix.contains("IP_BIND_ADDRESS_NO_PORT"), "{fix}");
    }

    /// Never `connect-ports-exhausted` unless the numbers show it.
    #[test]
    fn numbers_that_do_not_show_it_are_said_as_such() {
        let ev = connect(Proto::Tcp, ("0.0.0.0", 0), DB, libc::EADDRNOTAVAIL);
        let all = vec![conn(Proto::Tcp, 40000, DB, State::ESTABLISHED, 7)];
        let v = explain(&ev, &facts(&ev, &all, 2)).unwrap();
        assert_eq!(v.rule, Rule::ConnectUnexplained);
        assert!(
            v.message.contains("1 are free toward it now"),
            "{}",
            v.message
        );
        let mut f = facts(&ev, &all, 2);
        f.range_use = Some(Err("the socket table could not be read: EPERM".into()));
        let v = explain(&ev, &f).unwrap();
        assert_eq!(v.rule, Rule::ConnectUnexplained);
        assert!(
            v.message.contains("could not be read: the socket table"),
            "{}",
            v.message
        );
    }

    #[test]
    fn a_fixed_local_port_whose_tuple_exists() {
        let ev = connect(Proto::Tcp, ("127.0.0.1", 45000), DB, libc::EADDRNOTAVAIL);
        let mut f = facts(&ev, &[], 2);
        f.holders = Some(vec![conn(Proto::Tcp, 45000, DB, State::ESTABLISHED, 812)]);
        let v = explain(&ev, &f).unwrap();
        assert_eq!(v.rule, Rule::ConnectTupleInUse);
        assert!(
            v.message.contains(
                "this socket is bound to 127.0.0.1:45000, and pid 812 (worker) already has the \
                 connection 127.0.0.1:45000 → 127.0.0.1:5432"
            ),
            "{}",
            v.message
        );
        assert_eq!(v.holders.len(), 1);
        // Not found: said, never made up.
        f.holders = Some(vec![]);
        let v = explain(&ev, &f).unwrap();
        assert_eq!(v.rule, Rule::ConnectTupleInUse);
        assert!(
            v.message.contains("portwatch did not find it"),
            "{}",
            v.message
        );
        assert!(v.holders.is_empty());
    }

    #[test]
    fn a_source_address_that_is_gone() {
        let ev = connect(Proto::Tcp, ("10.9.9.9", 0), DB, libc::EADDRNOTAVAIL);
        let mut f = facts(&ev, &[], 2);
        f.addr_is_local = Some(false);
        let v = explain(&ev, &f).unwrap();
        assert_eq!(v.rule, Rule::AddressNotLocal);
        assert!(
            v.message
                .contains("source address 10.9.9.9 is not an address"),
            "{}",
            v.message
        );
    }

    #[test]
    fn a_full_udp_range() {
        let dns = ("127.0.0.1", 53);
        let ev = connect(Proto::Udp, ("0.0.0.0", 0), ("127.0.0.1", 54), libc::EAGAIN);
        let all = vec![
            conn(Proto::Udp, 40000, dns, State::ESTABLISHED, 7),
            conn(Proto::Udp, 40001, dns, State::ESTABLISHED, 7),
        ];
        let v = explain(&ev, &facts(&ev, &all, 2)).unwrap();
        assert_eq!(v.rule, Rule::ConnectUdpPortsExhausted);
        assert!(
            v.message
                .starts_with("EAGAIN at connect(): the UDP socket had no local port")
        );
        assert!(text(&v).contains("UDP ports held by: pid 7 (worker) 2"));
        let v = explain(&ev, &facts(&ev, &all[..1], 2)).unwrap();
        assert_eq!(v.rule, Rule::ConnectUnexplained);
        assert!(
            v.message.contains("1 of the 2 usable UDP ports"),
            "{}",
            v.message
        );
    }
}
