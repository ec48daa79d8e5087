//! connect() scenarios (issue 17): the local port runs out toward one destination, a 4-tuple
//! that exists, a UDP range that is full, TIME_WAIT holding ports, and the facts around them
//! (ports are shared per destination; bind(port 0) needs a port nobody uses, and
//! IP_BIND_ADDRESS_NO_PORT leaves the choice to connect()). The connections are held by
//! separate processes, so the owner portwatch names is checked, in a namespace whose
//! `ip_local_port_range` is two ports wide. A connect() that succeeds is never an event.

use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use portwatch_common::Backend;
use serde_json::{Value, json};

use super::expect::says;
use crate::scenarios::{
    Ctx, Scenario,
    check::{fields, fields_of},
    eventually,
    holder::Holder,
    netns::{self, Netns},
    portwatch::{Event, Portwatch, lookup},
    sock::SockSpec,
};

const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;
const SERVER: &str = "127.0.0.1:9999";
const OTHER_SERVER: &str = "127.0.0.1:9998";

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::shared("explain_connect_ports_exhausted", ports_exhausted),
        Scenario::shared(
            "explain_connect_ports_exhausted_io_uring",
            uring_ports_exhausted,
        )
        .only_backends(&[Backend::Fexit]),
        Scenario::shared(
            "io_uring_connect_unseen_by_tracepoints",
            uring_connect_unseen,
        )
        .only_backends(&[Backend::Tracepoint]),
        Scenario::shared(
            "explain_connect_time_wait_holds_ports",
            time_wait_holds_ports,
        ),
        Scenario::shared("explain_connect_tuple_in_use", tuple_in_use),
        Scenario::shared("explain_connect_udp_ports_exhausted", udp_exhausted),
        Scenario::shared(
            "explain_connect_udp_ports_exhausted_io_uring",
            uring_udp_exhausted,
        )
        .only_backends(&[Backend::Fexit]),
        Scenario::shared("connect_retries_fold_into_one_event", retries_folded),
        Scenario::shared("ports_toward_each_destination", ports_snapshot),
        Scenario::shared("connect_other_results_are_not_events", other_results),
        Scenario::alone("connect_port_is_the_destination_and_no_connect", filters),
    ]
}

/// The explanation's sentence, details and fix, as one text.
fn whole_text(ev: &Value) -> String {
    let mut parts = vec![
        lookup(ev, "explain.message")
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ];
    if let Some(d) = lookup(ev, "explain.details").as_array() {
        parts.extend(d.iter().filter_map(|l| l.as_str().map(String::from)));
    }
    parts.push(
        lookup(ev, "explain.fix")
            .as_str()
            .unwrap_or_default()
            .to_string(),
    );
    parts.join("\n")
}

fn text_says(ev: &Event, words: &[&str]) -> Result<()> {
    let t = whole_text(&ev.0);
    for w in words {
        ensure!(
            t.contains(w),
            "the explanation lacks {w:?}:\n{t}\n  line: {ev}"
        );
    }
    Ok(())
}

/// A namespace with a two-port range, a server on [`SERVER`] and [`OTHER_SERVER`], and a
/// client process holding both range ports toward [`SERVER`].
fn full_toward_server(pw: &Portwatch, ns: &Netns) -> Result<(Holder, Holder)> {
    netns::set_sysctl("net/ipv4/ip_local_port_range", "40000 40001")?;
    let mut server = Holder::spawn(ns, "pw-server")?;
    // The other server's events are not awaited: `--port 9999` filters them out.
    let l = server.bind_ok(&SockSpec::tcp(SERVER).listening())?;
    server.bind_ok(&SockSpec::tcp(OTHER_SERVER).listening())?;
    pw.wait_call(ns, "listen", server.pid, l.ino)?;
    let mut client = Holder::spawn(ns, "pw-client")?;
    for _ in 0..2 {
        let c = client.connect_ok(&SockSpec::tcp("0.0.0.0:0"), false, SERVER)?;
        let port = c.local.map(|a| a.port());
        ensure!(
            matches!(port, Some(40000..=40001)),
            "set-up: the client's connection got local port {port:?}, not one of 40000-40001"
        );
    }
    Ok((server, client))
}

/// Two connections to one destination take both ports: the third connect() there fails with
/// EADDRNOTAVAIL, explained with the numbers and the client named; a connect() to another
/// destination port still works (ports are shared per 4-tuple); bind(port 0) fails
/// (EADDRINUSE: it needs a port nobody uses), and with IP_BIND_ADDRESS_NO_PORT bind + connect
/// works.
fn ports_exhausted(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let (_server, client) = full_toward_server(pw, ns)?;
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let c = a.connect(&SockSpec::tcp("0.0.0.0:0"), false, SERVER)?;
    ensure!(
        c.errno == EADDRNOTAVAIL,
        "set-up: the third connect() to {SERVER} should fail with EADDRNOTAVAIL, got errno {}",
        c.errno
    );
    let ev = pw.wait_call(ns, "connect", a.pid, c.ino)?;
    exhausted_toward_server(&ev, &a, &client)?;
    // Another destination: the same ports serve it.
    let other = a.connect_ok(&SockSpec::tcp("0.0.0.0:0"), false, OTHER_SERVER)?;
    let port = other.local.map(|l| l.port());
    ensure!(
        matches!(port, Some(40000..=40001)),
        "a connect() to {OTHER_SERVER} should reuse a range port, got local port {port:?}"
    );
    // With IP_BIND_ADDRESS_NO_PORT the port is chosen at connect(): it works.
    let spec = SockSpec::tcp("127.0.0.1:0").with(|o| o.bind_address_no_port = true);
    a.connect_ok(&spec, true, OTHER_SERVER)?;
    // bind(port 0) needs a port no socket uses: none is left. Its event comes after every
    // connect() above, so once it is in, a successful connect() that was reported would be.
    let b = a.bind_fails(&SockSpec::tcp("127.0.0.1:0"), libc::EADDRINUSE)?;
    let bev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    fields(&bev, &[("explain.rule", json!("ephemeral-exhausted"))])?;
    text_says(
        &bev,
        &["2 are held by connections", "IP_BIND_ADDRESS_NO_PORT"],
    )?;
    let connects: Vec<String> = pw
        .events_in(ns)
        .into_iter()
        .filter(|e| e.kind() == "connect" && !e.is("connect", a.pid, c.ino))
        .map(|e| e.to_string())
        .collect();
    ensure!(
        connects.is_empty(),
        "successful connect()s were reported:\n{}",
        connects.join("\n")
    );
    Ok(())
}

/// `ev`, the connect() of `asker` that failed toward [`SERVER`] in [`full_toward_server`]'s
/// namespace: traced under `asker`, and explained with the range's numbers and `client`, which
/// holds both connections, named.
fn exhausted_toward_server(ev: &Event, asker: &Holder, client: &Holder) -> Result<()> {
    fields(
        ev,
        &[
            ("pid", json!(asker.pid)),
            ("comm", json!(asker.comm)),
            ("ok", json!(false)),
            ("errno", json!("EADDRNOTAVAIL")),
            ("protocol", json!("tcp")),
            ("requested.addr", json!("127.0.0.1")),
            ("requested.port", json!(9999)),
            ("bound", json!(null)),
            ("explain.rule", json!("connect-ports-exhausted")),
        ],
    )?;
    says(
        ev,
        &[
            "EADDRNOTAVAIL at connect(): no local port is free toward 127.0.0.1:9999",
            "all 2 usable ports of net.ipv4.ip_local_port_range 40000–40001 are taken toward \
             it, 2 by connections to it",
            "(0 of them only in TIME_WAIT) and 0 by bound or listening sockets",
        ],
    )?;
    text_says(
        ev,
        &[
            "2 ports, 0 reserved",
            &format!(
                "connections to 127.0.0.1:9999 held by: pid {} ({}) 2",
                client.pid, client.comm
            ),
            "net.ipv4.tcp_tw_reuse=",
            "reuse connections",
        ],
    )
}

/// The same exhaustion, the failing connect() submitted through io_uring (IORING_OP_CONNECT):
/// no connect system call. The fexit hooks on inet_stream_connect see it under the submitting
/// process and it is explained exactly as the system call's is.
fn uring_ports_exhausted(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let (_server, client) = full_toward_server(pw, ns)?;
    let mut a = Holder::spawn(ns, "pw-uring-ask")?;
    let c = a.uring_connect(&SockSpec::tcp("0.0.0.0:0"), false, SERVER)?;
    ensure!(
        c.errno == EADDRNOTAVAIL,
        "set-up: the third connect() to {SERVER}, through io_uring, should fail with \
         EADDRNOTAVAIL, got errno {}",
        c.errno
    );
    let ev = pw.wait_call(ns, "connect", a.pid, c.ino)?;
    fields(&ev, &[("backend", json!("fexit"))])?;
    exhausted_toward_server(&ev, &a, &client)
}

/// The tracepoint backend hooks the connect system call, which io_uring does not make: the
/// same io_uring connect() makes no event (README, Limits). A connect() system call that fails
/// the same way right after it does, so once that one is in, the first would have been.
fn uring_connect_unseen(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let (_server, client) = full_toward_server(pw, ns)?;
    let mut a = Holder::spawn(ns, "pw-uring-ask")?;
    let tcp = SockSpec::tcp("0.0.0.0:0");
    let c = a.uring_connect(&tcp, false, SERVER)?;
    ensure!(
        c.errno == EADDRNOTAVAIL,
        "set-up: the third connect() to {SERVER}, through io_uring, should fail with \
         EADDRNOTAVAIL, got errno {}",
        c.errno
    );
    let s = a.connect(&tcp, false, SERVER)?;
    ensure!(
        s.errno == EADDRNOTAVAIL,
        "set-up: the connect() system call after it should fail with EADDRNOTAVAIL, got \
         errno {}",
        s.errno
    );
    let ev = pw.wait_call(ns, "connect", a.pid, s.ino)?;
    exhausted_toward_server(&ev, &a, &client)?;
    let seen: Vec<String> = pw
        .events_in(ns)
        .into_iter()
        .filter(|e| e.sock_ino() == Some(c.ino))
        .map(|e| e.to_string())
        .collect();
    ensure!(
        seen.is_empty(),
        "the tracepoint backend reported the io_uring connect(), which README's Limits says \
         it cannot see:\n{}",
        seen.join("\n")
    );
    Ok(())
}

/// Client-side TIME_WAIT holds range ports: with tcp_tw_reuse=0 the next connect() fails, and
/// the explanation counts the TIME_WAIT ports and says no process holds them.
fn time_wait_holds_ports(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    netns::set_sysctl("net/ipv4/tcp_tw_reuse", "0")?;
    netns::set_sysctl("net/ipv4/ip_local_port_range", "40000 40001")?;
    let mut server = Holder::spawn(ns, "pw-server")?;
    let l = server.bind_ok(&SockSpec::tcp(SERVER).listening())?;
    pw.wait_call(ns, "listen", server.pid, l.ino)?;
    let mut client = Holder::spawn(ns, "pw-client")?;
    for _ in 0..2 {
        let c = client.connect_ok(&SockSpec::tcp("0.0.0.0:0"), false, SERVER)?;
        client.close(c.id)?;
    }
    // Closed first, the client's side becomes a timewait sock (TIME_WAIT, or FIN_WAIT2 while
    // the server has not closed) once its FIN is acked: wait for both, so that the count is
    // of settled states (a slow VM may still be in FIN_WAIT1, a full socket, for a moment).
    let settled = eventually(cx.pw.timeout(5.0), || {
        let tcp = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
        Ok(tcp
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let local_port = f.get(1).and_then(|a| a.rsplit(':').next());
                let remote_port = f.get(2).and_then(|a| a.rsplit(':').next());
                matches!(local_port, Some("9C40" | "9C41"))
                    && remote_port == Some("270F")
                    && matches!(f.get(3), Some(&"05" | &"06"))
            })
            .count()
            == 2)
    })?;
    ensure!(
        settled,
        "set-up: the two closed connections did not reach TIME_WAIT or FIN_WAIT2"
    );
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let c = a.connect(&SockSpec::tcp("0.0.0.0:0"), false, SERVER)?;
    ensure!(
        c.errno == EADDRNOTAVAIL,
        "set-up: with both ports in TIME_WAIT or FIN_WAIT2 and tcp_tw_reuse=0, connect() \
         should fail with EADDRNOTAVAIL, got errno {}",
        c.errno
    );
    let ev = pw.wait_call(ns, "connect", a.pid, c.ino)?;
    fields(&ev, &[("explain.rule", json!("connect-ports-exhausted"))])?;
    says(&ev, &["(2 of them only in TIME_WAIT)"])?;
    text_says(
        &ev,
        &[
            "net.ipv4.tcp_tw_reuse=0",
            "held only by TIME_WAIT connections",
            "net.ipv4.tcp_tw_reuse=1 lets new connections take them",
        ],
    )
}

/// Two SO_REUSEADDR sockets on one fixed local port: the second connect() to the same
/// destination fails with EADDRNOTAVAIL, and the socket with that 4-tuple is named.
fn tuple_in_use(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut server = Holder::spawn(ns, "pw-server")?;
    let l = server.bind_ok(&SockSpec::tcp(SERVER).listening())?;
    pw.wait_call(ns, "listen", server.pid, l.ino)?;
    let spec = SockSpec::tcp("127.0.0.1:45000").with(|o| o.reuseaddr = true);
    let mut h = Holder::spawn(ns, "pw-holder")?;
    h.connect_ok(&spec, true, SERVER)?;
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let c = a.connect(&spec, true, SERVER)?;
    ensure!(
        c.errno == EADDRNOTAVAIL,
        "set-up: the second connect() from 127.0.0.1:45000 to {SERVER} should fail with \
         EADDRNOTAVAIL, got errno {}",
        c.errno
    );
    let ev = pw.wait_call(ns, "connect", a.pid, c.ino)?;
    fields(
        &ev,
        &[
            ("explain.rule", json!("connect-tuple-in-use")),
            ("requested.port", json!(9999)),
            ("bound.addr", json!("127.0.0.1")),
            ("bound.port", json!(45000)),
            ("explain.holders.0.owners.0.pid", json!(h.pid)),
            ("explain.holders.0.owners.0.comm", json!(h.comm)),
            ("explain.holders.0.port", json!(45000)),
            ("explain.holders.0.peer", json!("127.0.0.1:9999")),
        ],
    )?;
    says(
        &ev,
        &[
            "this socket is bound to 127.0.0.1:45000",
            &format!(
                "pid {} ({}) already has the connection 127.0.0.1:45000 → 127.0.0.1:9999",
                h.pid, h.comm
            ),
        ],
    )
}

/// Two connected UDP sockets hold both range ports: a third UDP connect() fails with EAGAIN,
/// and the holder of the UDP ports is named.
fn udp_exhausted(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    udp_exhausted_by(pw, ns, Try::Once)
}

/// The same, the failing connect() submitted through io_uring (IORING_OP_CONNECT on a UDP
/// socket, which reaches inet_dgram_connect): the fexit hook sees it under the submitting
/// process, and it is explained as the system call's is.
///
/// io_uring takes EAGAIN for "not ready yet": it polls the socket, finds it writable and tries
/// again, many times, before it completes the request with EAGAIN (from 32 to over 100
/// attempts on 6.1 and 6.12 when this was written, some on an io_uring worker thread). Each
/// attempt is a real failed call of the kernel's connect; portwatch folds them into one event
/// that counts them (README, Limits).
fn uring_udp_exhausted(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    udp_exhausted_by(pw, ns, Try::Uring)
}

/// A client that retries: the same UDP connect() system call made 5 times on one socket, all
/// failing with EAGAIN, is one event with `"attempts": 5`, explained as one.
fn retries_folded(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    udp_exhausted_by(pw, ns, Try::Again(5))
}

/// How the failing connect() is made.
#[derive(Clone, Copy, PartialEq)]
enum Try {
    Once,
    /// Through io_uring, which repeats it by itself.
    Uring,
    /// The system call, this many times on one socket.
    Again(u32),
}

fn udp_exhausted_by(pw: &Portwatch, ns: &Netns, how: Try) -> Result<()> {
    netns::set_sysctl("net/ipv4/ip_local_port_range", "40000 40001")?;
    let mut h = Holder::spawn(ns, "pw-holder")?;
    for _ in 0..2 {
        h.connect_ok(&SockSpec::udp("0.0.0.0:0"), false, "127.0.0.1:53")?;
    }
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let udp = SockSpec::udp("0.0.0.0:0");
    let c = match how {
        Try::Once => a.connect(&udp, false, "127.0.0.1:54")?,
        Try::Uring => a.uring_connect(&udp, false, "127.0.0.1:54")?,
        Try::Again(n) => a.connect_tries(&udp, "127.0.0.1:54", n)?,
    };
    ensure!(
        c.errno == libc::EAGAIN,
        "set-up: a third UDP connect() should fail with EAGAIN, got errno {}",
        c.errno
    );
    let ev = if how == Try::Once {
        pw.wait_call(ns, "connect", a.pid, c.ino)?
    } else {
        folded_attempts(pw, ns, &mut a, c.ino, how)?
    };
    fields(
        &ev,
        &[
            ("errno", json!("EAGAIN")),
            ("protocol", json!("udp")),
            ("requested.port", json!(54)),
            ("explain.rule", json!("connect-udp-ports-exhausted")),
        ],
    )?;
    says(
        &ev,
        &["all 2 usable ports of net.ipv4.ip_local_port_range 40000–40001"],
    )?;
    text_says(
        &ev,
        &[&format!("UDP ports held by: pid {} ({}) 2", h.pid, h.comm)],
    )
}

/// The events of the repeated connect() on socket `ino` of `asker`: one (two at most, when a
/// call of some other process on the machine came between two attempts), the same failure
/// explained the same way, their `attempts` adding up to the calls made (`Try::Again`;
/// io_uring's count is its own). Returns the first.
fn folded_attempts(
    pw: &Portwatch,
    ns: &Netns,
    asker: &mut Holder,
    ino: u64,
    how: Try,
) -> Result<Event> {
    // A later call of the same process: once its event is out, so are all the attempts' (the
    // ring keeps order, and a held connect() goes out before any later call).
    let mark = asker.bind_ok(&SockSpec::tcp("127.0.0.1:0"))?;
    let what = format!(
        "the bind event of pid {} on socket inode {}",
        asker.pid, mark.ino
    );
    let attempts: Vec<Event> = pw
        .wait_for(ns, &what, |e| {
            e.iter().any(|e| e.is("bind", asker.pid, mark.ino))
        })?
        .into_iter()
        .filter(|e| e.sock_ino() == Some(ino))
        .collect();
    let shown = || {
        attempts
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    ensure!(
        !attempts.is_empty() && attempts.len() <= 2,
        "the repeated connect() on socket inode {ino} should be one event (two at most, when \
         another process's call came between two attempts), got {}:\n{}",
        attempts.len(),
        shown()
    );
    let first = attempts[0].clone();
    for e in &attempts {
        ensure!(
            e.is("connect", asker.pid, ino) && e.get("explain") == first.get("explain"),
            "every event of the repeated connect() should be the same failure, explained the \
             same way:\n{}",
            shown()
        );
    }
    let total: u64 = attempts
        .iter()
        .map(|e| e.get("attempts").as_u64().unwrap_or(0))
        .sum();
    match how {
        Try::Again(n) => ensure!(
            total == u64::from(n),
            "the {n} connect() calls should be counted as {n} attempts, got {total}:\n{}",
            shown()
        ),
        _ => ensure!(
            total >= 2 && total > attempts.len() as u64,
            "io_uring's attempts at one connect() should be folded into the event's count \
             (it made dozens when this was written), got {total} in {} events:\n{}",
            attempts.len(),
            shown()
        ),
    }
    Ok(first)
}

/// `portwatch ports --netns NS --json`: in a 4-port range, a bound socket (placed by bind(),
/// so blocked toward every destination), 3 connections to one server and 1 to another, and one
/// connected UDP socket. The busiest destination is full (3 connections + the bound port), the
/// other half full; UDP a quarter; each with the process holding it.
fn ports_snapshot(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    netns::set_sysctl("net/ipv4/ip_local_port_range", "40000 40003")?;
    let mut server = Holder::spawn(ns, "pw-server")?;
    for addr in [SERVER, OTHER_SERVER] {
        server.bind_ok(&SockSpec::tcp(addr).listening())?;
    }
    let mut bound = Holder::spawn(ns, "pw-bound")?;
    let b = bound.bind_ok(&SockSpec::tcp("127.0.0.1:40003"))?;
    pw.wait_call(ns, "bind", bound.pid, b.ino)?;
    let mut client = Holder::spawn(ns, "pw-client")?;
    let tcp = SockSpec::tcp("0.0.0.0:0");
    for _ in 0..3 {
        client.connect_ok(&tcp, false, SERVER)?;
    }
    client.connect_ok(&tcp, false, OTHER_SERVER)?;
    let mut udp = Holder::spawn(ns, "pw-udp")?;
    udp.connect_ok(&SockSpec::udp("0.0.0.0:0"), false, "127.0.0.1:53")?;
    let out = Command::new(&cx.pw.exe)
        .args(["ports", "--netns", &ns.path(), "--json"])
        .output()
        .context("running portwatch ports")?;
    ensure!(
        out.status.success(),
        "portwatch ports failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).context("parsing portwatch ports --json")?;
    crate::scenarios::schema::check(&v).context("ports --json")?;
    fields_of(
        &v,
        &[
            ("type", json!("ports")),
            ("namespaces.0.netns", json!(ns.inode())),
            ("namespaces.0.range.usable", json!(4)),
            ("namespaces.0.tcp.worst_ratio", json!(1.0)),
            ("namespaces.0.tcp.held_by_binds", json!(1)),
            ("namespaces.0.tcp.destinations.0.port", json!(9999)),
            ("namespaces.0.tcp.destinations.0.connections", json!(3)),
            ("namespaces.0.tcp.destinations.0.blocked", json!(4)),
            ("namespaces.0.tcp.destinations.0.free", json!(0)),
            (
                "namespaces.0.tcp.destinations.0.owners.0.pid",
                json!(client.pid),
            ),
            (
                "namespaces.0.tcp.destinations.0.owners.0.comm",
                json!(client.comm),
            ),
            ("namespaces.0.tcp.destinations.0.owners.0.count", json!(3)),
            ("namespaces.0.tcp.destinations.1.port", json!(9998)),
            ("namespaces.0.tcp.destinations.1.connections", json!(1)),
            ("namespaces.0.tcp.destinations.1.blocked", json!(2)),
            ("namespaces.0.tcp.destinations.1.ratio", json!(0.5)),
            ("namespaces.0.udp.used", json!(1)),
            ("namespaces.0.udp.ratio", json!(0.25)),
            ("namespaces.0.udp.owners.0.pid", json!(udp.pid)),
        ],
    )
}

/// Every other connect() result is dropped: refused, unreachable, a connect() on a listening
/// socket, a UDP disconnect (AF_UNSPEC), a Unix socket, and successes (the bench's loop counts
/// on that). None is an event; a bind made after them, which is, shows they were all read.
fn other_results(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = Holder::spawn(ns, "pw-asker")?;
    let tcp = SockSpec::tcp("0.0.0.0:0");
    let refused = h.connect(&tcp, false, "127.0.0.1:9")?;
    ensure!(
        refused.errno == libc::ECONNREFUSED,
        "set-up: want ECONNREFUSED, got {}",
        refused.errno
    );
    // No route in a fresh namespace (only lo, and it has 127.0.0.0/8).
    let unreachable = h.connect(&tcp, false, "192.0.2.1:80")?;
    ensure!(
        unreachable.errno == libc::ENETUNREACH,
        "set-up: want ENETUNREACH, got {}",
        unreachable.errno
    );
    let l = h.bind_ok(&SockSpec::tcp("127.0.0.1:9999").listening())?;
    h.connect_ok(&tcp, false, "127.0.0.1:9999")?;
    // connect() on a listening socket: refused by the kernel, not about a port.
    let listening = h.connect(
        &SockSpec::tcp("127.0.0.1:9998").listening(),
        true,
        "127.0.0.1:9999",
    )?;
    ensure!(
        listening.errno != 0,
        "set-up: connect() on a listening socket should fail"
    );
    h.connect_ok(&SockSpec::udp("0.0.0.0:0"), false, "127.0.0.1:53")?;
    let unix = std::os::unix::net::UnixStream::connect("/nonexistent/portwatch-test.sock");
    ensure!(
        unix.is_err(),
        "set-up: a Unix connect() to nowhere should fail"
    );
    let marker = h.bind_ok(&SockSpec::udp("127.0.0.1:0"))?;
    pw.wait_call(ns, "bind", h.pid, marker.ino)?;
    pw.wait_call(ns, "listen", h.pid, l.ino)?;
    let connects: Vec<String> = pw
        .events_in(ns)
        .into_iter()
        .filter(|e| e.kind() == "connect")
        .map(|e| e.to_string())
        .collect();
    ensure!(
        connects.is_empty(),
        "connect() results reported:\n{}",
        connects.join("\n")
    );
    Ok(())
}

/// `--port` matches a connect()'s destination port, not its local one; `--no-connect` leaves
/// connect() untraced.
fn filters(cx: &Ctx, ns: &Netns) -> Result<()> {
    let pw = Portwatch::start(&cx.pw, &["--port", "9999", "--port", "45000"])?;
    let (_server, _client) = full_toward_server(&pw, ns)?;
    let mut a = Holder::spawn(ns, "pw-asker")?;
    // Bound to local port 45000, toward 9998 (not a --port): its tuple exists, it fails, and
    // it is not reported.
    let spec = SockSpec::tcp("127.0.0.1:45000").with(|o| o.reuseaddr = true);
    let mut h = Holder::spawn(ns, "pw-holder")?;
    h.connect_ok(&spec, true, OTHER_SERVER)?;
    let local = a.connect(&spec, true, OTHER_SERVER)?;
    ensure!(
        local.errno == EADDRNOTAVAIL,
        "set-up: want EADDRNOTAVAIL, got {}",
        local.errno
    );
    // Toward 9999: reported.
    let dest = a.connect(&SockSpec::tcp("0.0.0.0:0"), false, SERVER)?;
    ensure!(
        dest.errno == EADDRNOTAVAIL,
        "set-up: want EADDRNOTAVAIL, got {}",
        dest.errno
    );
    pw.wait_call(ns, "connect", a.pid, dest.ino)?;
    let stopped = pw.stop()?;
    let wrong: Vec<String> = stopped
        .events_in(ns)
        .into_iter()
        .filter(|e| e.kind() == "connect" && e.sock_ino() != Some(dest.ino))
        .map(|e| e.to_string())
        .collect();
    ensure!(
        wrong.is_empty(),
        "--port 9999 45000 reported a connect() to 9998:\n{}",
        wrong.join("\n")
    );

    let pw = Portwatch::start(&cx.pw, &["--no-connect"])?;
    ensure!(
        !pw.stderr().iter().any(|l| l.contains("connect()")),
        "--no-connect still says it traces connect(): {:?}",
        pw.stderr()
    );
    let again = a.connect(&SockSpec::tcp("0.0.0.0:0"), false, SERVER)?;
    ensure!(
        again.errno == EADDRNOTAVAIL,
        "set-up: want EADDRNOTAVAIL, got {}",
        again.errno
    );
    let marker = a.bind_ok(&SockSpec::udp("127.0.0.1:0"))?;
    pw.wait_call(ns, "bind", a.pid, marker.ino)?;
    let stopped = pw.stop()?;
    let connects = stopped
        .events_in(ns)
        .into_iter()
        .filter(|e| e.kind() == "connect")
        .count();
    ensure!(
        connects == 0,
        "--no-connect reported {connects} connect() events"
    );
    Ok(())
}
