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
    facts::{
        Facts, RangeUse,
        port_use::{DestUse, PortOwner, Range},
    },
    sockets::{Holder, Proto, endpoint},
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
        Some(Ok(r)) if sock.proto.shares_ports_with(Proto::Tcp) => match &r.dest {
            Some(d) if d.free() == 0 => ports_exhausted(at, f, d),
            Some(d) => not_shown(at, &dest_numbers(d)),
            None => not_shown(at, "the destination could not be read"),
        },
        Some(Ok(r)) => {
            if r.space.used >= r.space.range.usable() {
                udp_exhausted(at, r)
            } else {
                not_shown(
                    at,
                    &format!(
                        "{} of the {} usable UDP ports of {} are held now",
                        r.space.used,
                        r.space.range.usable(),
                        range_words(r.space.range)
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

/// The counts toward one destination, as one phrase.
fn dest_numbers(d: &DestUse) -> String {
    let from = match d.source {
        Some(s) => format!(" from {s}"),
        None if d.sources == 1 => " from one source address".to_string(),
        None => format!(" from {} source addresses", d.sources),
    };
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
            "{e}: no local port is free toward {dest}: connect() shares a local port between \
             destinations, but toward one destination from one source address each port \
             serves one connection, and {}.",
            dest_numbers(d)
        ),
    );
    v.details.push(format!(
        "{}: {}",
        range_words(d.range),
        range_size(d.range)
    ));
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

fn udp_exhausted(at: &Attempt, r: &RangeUse) -> Verdict {
    let e = err_name(at);
    let range = r.space.range;
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
    if !r.owners.is_empty() {
        v.details
            .push(format!("UDP ports held by: {}", PortOwner::list(&r.owners)));
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
            && h.socket.peer.is_some_and(|(a, p)| {
                p == at.port && a.to_canonical() == at.addr.to_canonical()
            })
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
        v.holders
            .push(Involved::new(h, Rule::ConnectTupleInUse, holder_desc(&h.socket)));
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
