//! Scenarios for `portwatch trace` (issue 2): what one bind or listen shows, the options, the
//! namespaces, the filters, the summary, clean detaching, and the error for a missing
//! privilege.
//!
//! Each scenario works in its own fresh network namespace, so fixed ports are fine: nothing
//! else binds there. Where a scenario checks that something is *not* shown, it does the
//! excluded calls first and then calls that must be shown; once those arrive, anything wrongly
//! let through would already be there (events of one thread arrive in order).

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use portwatch_common::{Backend, programs};
use serde_json::{Value, json};

use super::{
    Ctx, Scenario, SharedRun,
    check::{self, Want, ensure_events, fields, option_fields},
    eventually,
    holder::Holder,
    netns::{self, Netns},
    portwatch::{self, Event, Portwatch},
    sock::{self, Sock, SockSpec},
};

const EADDRINUSE: i32 = libc::EADDRINUSE;
const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;

pub fn scenarios() -> Vec<Scenario> {
    let mut v = vec![
        Scenario::shared("tcp4_bind_ok", tcp4_bind_ok),
        Scenario::shared("tcp4_eaddrinuse_shows_request", tcp4_eaddrinuse),
        Scenario::shared("ipv6_bind_and_conflict", ipv6),
        Scenario::shared("udp_on_tcp_listener_port", udp_on_tcp_port),
        Scenario::shared("tcp_port_zero_shows_assigned", |cx, pw, ns| {
            port_zero(cx, pw, ns, SockSpec::tcp("127.0.0.1:0"))
        }),
        Scenario::shared("udp_port_zero_shows_assigned", |cx, pw, ns| {
            port_zero(cx, pw, ns, SockSpec::udp("127.0.0.1:0"))
        }),
    ];
    v.extend(option_scenarios());
    v.extend([
        Scenario::shared("option_bound_device_lo", option_bound_device),
        Scenario::shared("listen_event", listen_event),
        Scenario::shared("listen_eaddrinuse", listen_eaddrinuse),
        Scenario::shared("other_netns_shows_its_netns", other_netns),
        Scenario::after("json_every_line_typed", json_lines),
        Scenario::after("no_programs_left_after_exit", no_programs_left),
        Scenario::alone("filter_port", filter_port),
        Scenario::alone("filter_failed", filter_failed),
        Scenario::alone("filter_pid", filter_pid),
        Scenario::alone("summary_counts", summary_counts),
        Scenario::alone("human_output", human_output),
        Scenario::alone("unprivileged_error", unprivileged_error),
        Scenario::alone("backend_auto", backend_auto).needing_auto_expect(),
    ]);
    v
}

// ---- helpers ---------------------------------------------------------------------------------

fn me() -> u32 {
    std::process::id()
}

/// Opens and binds; the bind must succeed (this is set-up, not the thing under test).
fn bind_ok(spec: &SockSpec) -> Result<Sock> {
    let (s, r) = sock::open_and_bind(spec).with_context(|| format!("creating {spec:?}"))?;
    r.with_context(|| format!("set-up: {} bind to {} failed", spec.proto.name(), spec.addr))?;
    Ok(s)
}

/// Opens and binds; the bind must fail with `errno`.
fn bind_fails(spec: &SockSpec, errno: i32) -> Result<Sock> {
    let (s, r) = sock::open_and_bind(spec).with_context(|| format!("creating {spec:?}"))?;
    sock::expect_errno(spec, sock::errno_of(&r), errno)?;
    Ok(s)
}

fn family(spec: &SockSpec) -> &'static str {
    if spec.ipv6() { "ipv6" } else { "ipv4" }
}

/// Who made the call and on which socket, for a call made on the current (scenario) thread.
fn caller(cx: &Ctx, ns: &Netns, s: &Sock) -> Result<Vec<Want<'static>>> {
    Ok(vec![
        ("backend", json!(cx.pw.backend_flag())),
        ("pid", json!(me())),
        // SAFETY: gettid and getuid cannot fail.
        ("tid", json!(unsafe { libc::gettid() })),
        ("uid", json!(unsafe { libc::getuid() })),
        ("comm", json!(netns::current_comm()?)),
        ("netns", json!(ns.inode())),
        ("fd", fd_shown(cx, s.fd())),
        ("sock_ino", json!(s.ino()?)),
        ("family", json!(family(&s.spec))),
        ("protocol", json!(s.spec.proto.name())),
    ])
}

/// The tracepoints see the syscall's fd; fexit hooks inet_bind(), which gets the socket, not
/// the fd, so portwatch shows null there.
fn fd_shown(cx: &Ctx, fd: i32) -> Value {
    if cx.pw.backend == Some(Backend::Tracepoint) {
        json!(fd)
    } else {
        Value::Null
    }
}

fn requested(a: SocketAddr) -> Vec<Want<'static>> {
    let (addr, port) = sock::addr_parts(a);
    vec![
        ("requested.addr", json!(addr)),
        ("requested.port", json!(port)),
    ]
}

fn bound(a: SocketAddr) -> Vec<Want<'static>> {
    let (addr, port) = sock::addr_parts(a);
    vec![("bound.addr", json!(addr)), ("bound.port", json!(port))]
}

fn success() -> Vec<Want<'static>> {
    vec![
        ("ok", json!(true)),
        ("result", json!(0)),
        ("errno", Value::Null),
    ]
}

fn failure(errno: i32, name: &str) -> Vec<Want<'static>> {
    vec![
        ("ok", json!(false)),
        ("result", json!(-errno)),
        ("errno", json!(name)),
    ]
}

/// Checks one bind event of this thread: who, what was asked, the result, the options.
fn check_bind(ev: &Event, cx: &Ctx, ns: &Netns, s: &Sock, extra: Vec<Want<'_>>) -> Result<()> {
    let mut want = caller(cx, ns, s)?;
    want.push(("type", json!("bind")));
    want.extend(requested(s.spec.addr));
    let ok = extra.iter().any(|(k, v)| *k == "ok" && *v == json!(true));
    want.extend(option_fields(&s.spec, ok));
    want.extend(extra);
    fields(ev, &want)
}

// ---- one call, as it shows up -----------------------------------------------------------------

fn tcp4_bind_ok(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let s = bind_ok(&SockSpec::tcp("127.0.0.1:8080"))?;
    let ev = pw.wait_call(ns, "bind", me(), s.ino()?)?;
    let mut extra = success();
    extra.extend(bound(s.local_addr()?));
    extra.push(("state", json!("BOUND")));
    check_bind(&ev, cx, ns, &s, extra)
}

fn tcp4_eaddrinuse(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let _holder = bind_ok(&SockSpec::tcp("127.0.0.1:8081"))?;
    // The same address, and the wildcard: both must show what was asked, port included.
    let mut keep = Vec::new();
    for addr in ["127.0.0.1:8081", "0.0.0.0:8081"] {
        let s = bind_fails(&SockSpec::tcp(addr), EADDRINUSE)?;
        let ev = pw.wait_call(ns, "bind", me(), s.ino()?)?;
        let mut extra = failure(EADDRINUSE, "EADDRINUSE");
        extra.push(("bound", Value::Null));
        check_bind(&ev, cx, ns, &s, extra)?;
        keep.push(s);
    }
    Ok(())
}

fn ipv6(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let spec = SockSpec::tcp("[::1]:8082");
    let a = bind_ok(&spec)?;
    let ev = pw.wait_call(ns, "bind", me(), a.ino()?)?;
    let mut extra = success();
    extra.extend(bound(a.local_addr()?));
    extra.push(("requested.scope_id", json!(0)));
    check_bind(&ev, cx, ns, &a, extra)?;

    let b = bind_fails(&spec, EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", me(), b.ino()?)?;
    check_bind(&ev, cx, ns, &b, failure(EADDRINUSE, "EADDRINUSE"))
}

fn udp_on_tcp_port(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let _tcp = bind_ok(&SockSpec::tcp("127.0.0.1:8083").listening())?;
    let u = bind_ok(&SockSpec::udp("127.0.0.1:8083"))?;
    let ev = pw.wait_call(ns, "bind", me(), u.ino()?)?;
    let mut extra = success();
    extra.extend(bound(u.local_addr()?));
    extra.push(("state", json!("UNCONN")));
    check_bind(&ev, cx, ns, &u, extra)
}

fn port_zero(cx: &Ctx, pw: &Portwatch, ns: &Netns, spec: SockSpec) -> Result<()> {
    let s = bind_ok(&spec)?;
    let got = s.local_addr()?;
    ensure!(
        got.port() != 0,
        "set-up: getsockname shows port 0 after bind"
    );
    let ev = pw.wait_call(ns, "bind", me(), s.ino()?)?;
    let mut extra = success();
    extra.extend(bound(got));
    check_bind(&ev, cx, ns, &s, extra)
}

// ---- options ----------------------------------------------------------------------------------

/// One scenario per option: set it alone and check that exactly it shows. Non-local addresses
/// (192.0.2.x, TEST-NET-1) bind only thanks to IP_FREEBIND / IP_TRANSPARENT, which also proves
/// the option took effect.
fn option_scenarios() -> Vec<Scenario> {
    let cases: Vec<(&'static str, SockSpec)> = vec![
        (
            "option_reuseaddr",
            SockSpec::tcp("127.0.0.1:8090").with(|o| o.reuseaddr = true),
        ),
        (
            "option_reuseport",
            SockSpec::tcp("127.0.0.1:8091").with(|o| o.reuseport = true),
        ),
        (
            "option_v6only_true",
            SockSpec::tcp("[::]:8092").with(|o| o.v6only = Some(true)),
        ),
        (
            "option_v6only_false",
            SockSpec::tcp("[::]:8093").with(|o| o.v6only = Some(false)),
        ),
        (
            "option_freebind",
            SockSpec::tcp("192.0.2.1:8094").with(|o| o.freebind = true),
        ),
        (
            "option_transparent",
            SockSpec::tcp("192.0.2.2:8095").with(|o| o.transparent = true),
        ),
        (
            "option_bind_address_no_port",
            SockSpec::tcp("127.0.0.1:0").with(|o| o.bind_address_no_port = true),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, spec)| {
            Scenario::shared(name, move |cx, pw, ns| {
                let s = bind_ok(&spec)?;
                let ev = pw.wait_call(ns, "bind", me(), s.ino()?)?;
                let mut extra = success();
                if spec.opts.bind_address_no_port {
                    // The port is picked at connect(), so none is bound yet.
                    ensure!(s.local_addr()?.port() == 0, "set-up: a port was bound");
                    extra.push(("bound", Value::Null));
                } else {
                    extra.extend(bound(s.local_addr()?));
                }
                check_bind(&ev, cx, ns, &s, extra)
            })
        })
        .collect()
}

/// SO_BINDTODEVICE, from a holder: portwatch resolves the interface name in the socket's
/// namespace through the process that bound it.
fn option_bound_device(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = Holder::spawn(ns, "pw-bindtodev")?;
    let spec = SockSpec::tcp("127.0.0.1:8096").with(|o| o.bind_device = Some("lo".into()));
    let b = h.bind_ok(&spec)?;
    let ev = pw.wait_call(ns, "bind", h.pid, b.ino)?;
    let mut want = vec![
        ("backend", json!(cx.pw.backend_flag())),
        ("pid", json!(h.pid)),
        ("comm", json!(h.comm)),
        ("netns", json!(ns.inode())),
        ("sock_ino", json!(b.ino)),
        ("options.bound_ifindex", json!(1)),
    ];
    want.extend(success());
    want.extend(requested(spec.addr));
    want.extend(option_fields(&spec, true));
    fields(&ev, &want)
}

// ---- listen -----------------------------------------------------------------------------------

fn listen_event(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let s = bind_ok(&SockSpec::tcp("127.0.0.1:8084"))?;
    s.listen(16).context("set-up: listen")?;
    let ev = pw.wait_call(ns, "listen", me(), s.ino()?)?;
    let mut want = caller(cx, ns, &s)?;
    want.extend(success());
    want.extend(bound(s.local_addr()?));
    want.extend([
        ("type", json!("listen")),
        ("state", json!("LISTEN")),
        ("requested", Value::Null),
    ]);
    fields(&ev, &want)
}

/// Two SO_REUSEADDR sockets may bind one port while neither listens; the second listen() is
/// where EADDRINUSE surfaces.
fn listen_eaddrinuse(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let spec = SockSpec::tcp("127.0.0.1:8085").with(|o| o.reuseaddr = true);
    let a = bind_ok(&spec)?;
    let b = bind_ok(&spec)?;
    a.listen(16).context("set-up: first listen")?;
    let r = b.listen(16);
    ensure!(
        sock::errno_of(&r) == EADDRINUSE,
        "set-up: second listen should fail with EADDRINUSE, got {r:?}"
    );
    let ev = pw.wait_call(ns, "listen", me(), b.ino()?)?;
    let mut want = caller(cx, ns, &b)?;
    want.extend(failure(EADDRINUSE, "EADDRINUSE"));
    want.push(("type", json!("listen")));
    fields(&ev, &want)
}

// ---- namespaces -------------------------------------------------------------------------------

/// The same port in two namespaces: both binds succeed, and each event names its namespace.
/// The second one is a holder process living entirely in the other namespace, like a
/// container's process would.
fn other_netns(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let spec = SockSpec::tcp("127.0.0.1:8086");
    let a = bind_ok(&spec)?;
    netns::in_new_netns("other_netns_b", |b| {
        ensure!(
            b.inode() != ns.inode(),
            "set-up: the second netns is the first"
        );
        let mut h = Holder::spawn(b, "pw-otherns")?;
        ensure!(
            h.netns == b.inode(),
            "set-up: the holder is not in the second netns"
        );
        let hb = h.bind_ok(&spec)?;
        let ev = pw.wait_call(b, "bind", h.pid, hb.ino)?;
        let mut want = vec![
            ("netns", json!(b.inode())),
            ("pid", json!(h.pid)),
            ("comm", json!(h.comm)),
        ];
        want.extend(success());
        fields(&ev, &want)
    })?;
    let ev = pw.wait_call(ns, "bind", me(), a.ino()?)?;
    let mut extra = success();
    extra.extend(bound(a.local_addr()?));
    check_bind(&ev, cx, ns, &a, extra)?;
    ensure!(
        ns.inode() != cx.root_netns,
        "set-up: the scenario ran in portwatch's own netns"
    );
    Ok(())
}

// ---- the shared portwatch, after it stopped ---------------------------------------------------

/// `--json`: every stdout line is an object with a known "type", the summary comes once and
/// last, and SIGINT made a clean exit with the human summary on stderr.
fn json_lines(_cx: &Ctx, run: &SharedRun) -> Result<()> {
    let st = &run.stopped;
    ensure!(
        st.status.code() == Some(0),
        "portwatch exited with {} after SIGINT\n{}",
        st.status,
        st.describe()
    );
    let mut types = Vec::new();
    for (i, r) in st.records.iter().enumerate() {
        match r {
            Err(line) => bail!("stdout line {} is not JSON: {line}", i + 1),
            Ok(v) => {
                let t = v["type"].as_str();
                ensure!(
                    v.is_object()
                        && matches!(t, Some("bind" | "listen" | "connect" | "lost" | "summary")),
                    "stdout line {} has no known \"type\": {v}",
                    i + 1
                );
                types.push(t.unwrap_or_default());
            }
        }
    }
    ensure!(!types.is_empty(), "portwatch printed nothing on stdout");
    let summaries = types.iter().filter(|t| **t == "summary").count();
    ensure!(
        summaries == 1 && types.last() == Some(&"summary"),
        "expected exactly one summary, as the last line; got {summaries} ({} lines)",
        types.len()
    );
    // Any call will do: a --filter may pick connect() scenarios only.
    ensure!(
        types
            .iter()
            .any(|t| matches!(*t, "bind" | "listen" | "connect")),
        "no bind, listen or connect event in the whole run"
    );
    let last_err = st.stderr.last().map(String::as_str).unwrap_or("");
    ensure!(
        is_summary(last_err),
        "the last stderr line is not the summary: {last_err:?}"
    );
    Ok(())
}

/// "portwatch: N event(s) [for C calls] (...) in S s; failures: ...; lost: K".
fn is_summary(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("portwatch: ") else {
        return false;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    rest.starts_with(" event") && rest.contains("; lost: ")
}

/// The program names portwatch loads per backend (besides connect's), as bpftool shows them
/// (older kernels keep 15 bytes).
fn expected_programs(backend: Option<Backend>) -> Vec<&'static str> {
    let names = match backend {
        Some(Backend::Fexit) => [
            programs::FEXIT_INET_BIND.prog,
            programs::FEXIT_INET6_BIND.prog,
            programs::FEXIT_INET_LISTEN.prog,
        ]
        .to_vec(),
        _ => vec![programs::SYS_EXIT_BIND, programs::SYS_EXIT_LISTEN],
    };
    names.into_iter().map(programs::kernel_name).collect()
}

/// While running, the shared portwatch held its backend's programs (by bpftool's pid
/// mapping); after SIGINT none of those program ids exist any more.
fn no_programs_left(cx: &Ctx, run: &SharedRun) -> Result<()> {
    let held = run
        .programs
        .as_ref()
        .map_err(|e| anyhow::anyhow!("listing programs while running: {e}"))?;
    let names: Vec<&str> = held.iter().map(|(_, n)| n.as_str()).collect();
    for want in expected_programs(cx.pw.backend) {
        // Older bpftool/kernels cut names at 15 bytes, newer ones show the full name.
        ensure!(
            names.iter().any(|n| n.starts_with(want)),
            "while running, portwatch held no program named {want}*; it held {names:?}"
        );
    }
    let ids: Vec<u64> = held.iter().map(|(id, _)| *id).collect();
    let mut left = Vec::new();
    let gone = eventually(cx.pw.timeout(5.0), || {
        let now = portwatch::bpftool_programs()?;
        left = now
            .iter()
            .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
            .map(|p| format!("{} {}", p["id"], p["name"]))
            .collect();
        Ok(left.is_empty())
    })?;
    ensure!(
        gone,
        "programs still loaded {:.0?} after portwatch exited: {}",
        cx.pw.timeout(5.0),
        left.join(", ")
    );
    Ok(())
}

// ---- filters and flags, each with its own portwatch -------------------------------------------

/// `--port 41000`: other ports are left out; failures on 41000 are kept; a port-0 bind is kept
/// only when the kernel gave it 41000. The netns's ephemeral range steers port 0 to a port.
fn filter_port(cx: &Ctx, ns: &Netns) -> Result<()> {
    let range = "net/ipv4/ip_local_port_range";
    netns::set_sysctl(range, "41002 41002")?;
    let pw = Portwatch::start(&cx.pw, &["--port", "41000"])?;
    // Left out:
    let other = bind_ok(&SockSpec::tcp("127.0.0.1:41001"))?;
    let zero_other = bind_ok(&SockSpec::tcp("127.0.0.1:0"))?;
    ensure!(
        zero_other.local_addr()?.port() == 41002,
        "set-up: port 0 did not get 41002"
    );
    // Kept:
    netns::set_sysctl(range, "41000 41000")?;
    let zero = bind_ok(&SockSpec::tcp("127.0.0.1:0"))?;
    ensure!(
        zero.local_addr()?.port() == 41000,
        "set-up: port 0 did not get 41000"
    );
    let fail = bind_fails(&SockSpec::tcp("127.0.0.1:41000"), EADDRINUSE)?;
    let udp = bind_ok(&SockSpec::udp("127.0.0.1:41000"))?;
    pw.wait_call(ns, "bind", me(), udp.ino()?)?;
    let st = pw.stop()?;
    let evs = st.events_in(ns);
    let inos: Vec<u64> = evs.iter().filter_map(Event::sock_ino).collect();
    ensure_events(
        inos == [zero.ino()?, fail.ino()?, udp.ino()?],
        &format!(
            "want exactly the port-0 bind that got 41000 (socket {}), the failed bind ({}) and \
             the UDP bind ({}); not {} (port 41001) nor {} (port 0 → 41002)",
            zero.ino()?,
            fail.ino()?,
            udp.ino()?,
            other.ino()?,
            zero_other.ino()?
        ),
        &evs,
    )?;
    fields(
        &evs[0],
        &[("requested.port", json!(0)), ("bound.port", json!(41000))],
    )?;
    fields(
        &evs[1],
        &[
            ("requested.port", json!(41000)),
            ("errno", json!("EADDRINUSE")),
        ],
    )?;
    fields(&evs[2], &[("protocol", json!("udp")), ("ok", json!(true))])
}

/// `--failed`: only calls that failed, whatever the errno.
fn filter_failed(cx: &Ctx, ns: &Netns) -> Result<()> {
    let pw = Portwatch::start(&cx.pw, &["--failed"])?;
    let a = bind_ok(&SockSpec::tcp("127.0.0.1:42000"))?;
    a.listen(16)?;
    let _udp = bind_ok(&SockSpec::udp("127.0.0.1:42000"))?;
    let inuse = bind_fails(&SockSpec::tcp("127.0.0.1:42000"), EADDRINUSE)?;
    let notavail = bind_fails(&SockSpec::tcp("192.0.2.1:42000"), EADDRNOTAVAIL)?;
    pw.wait_call(ns, "bind", me(), notavail.ino()?)?;
    let st = pw.stop()?;
    let evs = st.events_in(ns);
    ensure_events(
        evs.len() == 2 && evs.iter().all(|e| !e.ok()),
        "want only the two failed binds",
        &evs,
    )?;
    fields(
        &evs[0],
        &[
            ("sock_ino", json!(inuse.ino()?)),
            ("errno", json!("EADDRINUSE")),
        ],
    )?;
    fields(
        &evs[1],
        &[
            ("sock_ino", json!(notavail.ino()?)),
            ("errno", json!("EADDRNOTAVAIL")),
        ],
    )
}

/// `--pid`: only that process, in any namespace; the runner's own binds are left out.
fn filter_pid(cx: &Ctx, ns: &Netns) -> Result<()> {
    let mut h = Holder::spawn(ns, "pw-pidfilter")?;
    let pw = Portwatch::start(&cx.pw, &["--pid", &h.pid.to_string()])?;
    let _mine = bind_ok(&SockSpec::tcp("127.0.0.1:43000"))?;
    let b1 = h.bind_ok(&SockSpec::tcp("127.0.0.1:43001"))?;
    let b2 = h.bind(&SockSpec::tcp("127.0.0.1:43000"))?;
    ensure!(
        b2.errno == EADDRINUSE,
        "set-up: holder's second bind should fail"
    );
    pw.wait_call(ns, "bind", h.pid, b2.ino)?;
    let st = pw.stop()?;
    let all: Vec<Event> = st.events().collect();
    ensure_events(
        all.iter().all(|e| e.pid() == Some(h.pid.into())),
        &format!("events of other processes than {} got through", h.pid),
        &all,
    )?;
    let evs = st.events_in(ns);
    ensure_events(evs.len() == 2, "want exactly the holder's two binds", &evs)?;
    fields(
        &evs[0],
        &[
            ("sock_ino", json!(b1.ino)),
            ("comm", json!(h.comm)),
            ("ok", json!(true)),
        ],
    )?;
    fields(
        &evs[1],
        &[
            ("sock_ino", json!(b2.ino)),
            ("comm", json!(h.comm)),
            ("errno", json!("EADDRINUSE")),
        ],
    )
}

/// The closing summary counts exactly what was shown: a `--pid` filter on a holder makes the
/// counts independent of everything else on the machine.
fn summary_counts(cx: &Ctx, ns: &Netns) -> Result<()> {
    let mut h = Holder::spawn(ns, "pw-summary")?;
    let pw = Portwatch::start(&cx.pw, &["--pid", &h.pid.to_string()])?;
    // Not counted: another process.
    let _mine = bind_ok(&SockSpec::tcp("127.0.0.1:44001"))?;
    h.bind_ok(&SockSpec::tcp("127.0.0.1:44000").listening())?;
    let inuse = h.bind(&SockSpec::tcp("127.0.0.1:44000"))?;
    let notavail = h.bind(&SockSpec::udp("192.0.2.1:44000"))?;
    ensure!(
        inuse.errno == EADDRINUSE && notavail.errno == EADDRNOTAVAIL,
        "set-up: unexpected results {inuse:?} {notavail:?}"
    );
    pw.wait_call(ns, "bind", h.pid, notavail.ino)?;
    let st = pw.stop()?;
    let summary = st
        .summary()
        .with_context(|| format!("no summary line\n{}", st.describe()))?;
    check::fields_of(
        summary,
        &[
            ("backend", json!(cx.pw.backend_flag())),
            ("events", json!(4)),
            ("binds", json!(3)),
            ("listens", json!(1)),
            ("failed", json!(2)),
            ("by_errno", json!({"EADDRINUSE": 1, "EADDRNOTAVAIL": 1})),
            ("lost", json!(0)),
        ],
    )?;
    let human = st.stderr.last().map(String::as_str).unwrap_or("");
    ensure!(
        human.starts_with("portwatch: 4 events (3 bind, 1 listen)")
            && human.contains("EADDRINUSE 1")
            && human.contains("EADDRNOTAVAIL 1"),
        "stderr summary line: {human:?}"
    );
    Ok(())
}

/// Without --json: the header, then one line per call with the address asked for and the
/// errno name, and no color codes when stdout is not a terminal.
fn human_output(cx: &Ctx, _ns: &Netns) -> Result<()> {
    let pw = Portwatch::start_args(
        &cx.pw,
        [
            "trace",
            "--backend",
            cx.pw.backend_flag(),
            "--port",
            "45000",
        ]
        .map(String::from)
        .to_vec(),
    )?;
    let _a = bind_ok(&SockSpec::tcp("127.0.0.1:45000"))?;
    let _b = bind_fails(&SockSpec::tcp("127.0.0.1:45000"), EADDRINUSE)?;
    let comm = netns::current_comm()?;
    let pid = me().to_string();
    let ours = |l: &str| l.split_whitespace().any(|w| w == pid) && l.contains(&comm);
    let deadline = Instant::now() + cx.pw.timeout(10.0);
    let lines = loop {
        let lines = pw.stdout();
        if lines.iter().filter(|l| ours(l)).count() >= 2 || Instant::now() >= deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let st = pw.stop()?;
    let show = || format!("stdout:\n  {}", lines.join("\n  "));
    let header = lines.first().map(String::as_str).unwrap_or("");
    ensure!(
        ["TIME", "PID", "COMM", "CALL", "PROTO", "ADDRESS", "RESULT"]
            .iter()
            .all(|h| header.contains(h)),
        "no header line first; {}",
        show()
    );
    ensure!(
        !lines.iter().any(|l| l.contains('\x1b')),
        "color codes on a pipe; {}",
        show()
    );
    let mine: Vec<&String> = lines.iter().filter(|l| ours(l)).collect();
    ensure!(
        mine.len() >= 2
            && mine[0].contains("bind")
            && mine[0].contains("tcp4")
            && mine[0].contains("127.0.0.1:45000")
            && mine[0].contains(" ok")
            && mine[1].contains("127.0.0.1:45000")
            && mine[1].contains("EADDRINUSE"),
        "want a bind line with 127.0.0.1:45000 ok, then one with EADDRINUSE; {}",
        show()
    );
    ensure!(st.status.success(), "exit {}\n{}", st.status, st.describe());
    Ok(())
}

/// As an ordinary user (uid 65534, no capabilities): one line starting with
/// `portwatch: error:` that says how to fix it, exit code 1, nothing on stdout.
fn unprivileged_error(cx: &Ctx, _ns: &Netns) -> Result<()> {
    let mut cmd = Command::new(&cx.pw.exe);
    cmd.args(["trace", "--json", "--backend", cx.pw.backend_flag()])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // No setns here: std runs pre_exec hooks after setuid, when it is no longer allowed.
    let child = cmd.spawn().context("starting portwatch as uid 65534")?;
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let done = eventually(cx.pw.timeout(10.0), || Ok(waiter.is_finished()))?;
    if !done {
        // SAFETY: our child, not yet reaped (the waiter thread still waits for it).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let _ = waiter.join();
        bail!(
            "portwatch as uid 65534 was still running after {:.0?}",
            cx.pw.timeout(10.0)
        );
    }
    let out = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("waiter panicked"))??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let shown = || {
        format!(
            "exit {}; stderr:\n  {}",
            out.status,
            stderr.trim_end().replace('\n', "\n  ")
        )
    };
    ensure!(
        out.status.code() == Some(1),
        "want exit code 1; {}",
        shown()
    );
    ensure!(stdout.is_empty(), "stdout not empty: {stdout:?}");
    let errors = stderr
        .lines()
        .filter(|l| l.starts_with("portwatch: error:"))
        .count();
    ensure!(
        stderr.starts_with("portwatch: error:") && errors == 1,
        "want one line starting with `portwatch: error:`, first; {}",
        shown()
    );
    ensure!(
        stderr.contains("sudo") && !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "want the fix (sudo) and no panic or backtrace; {}",
        shown()
    );
    Ok(())
}

/// `--backend auto` picks what `--auto-expect` says this kernel supports; when it falls back
/// to the tracepoints it says why, in exactly one stderr line before the ready line.
fn backend_auto(cx: &Ctx, ns: &Netns) -> Result<()> {
    let want = cx.auto_expect.context("needs --auto-expect")?;
    let pw = Portwatch::start_args(
        &cx.pw,
        ["trace", "--json", "--backend", "auto"]
            .map(String::from)
            .to_vec(),
    )?;
    let stderr = pw.stderr();
    let ready_at = stderr
        .iter()
        .position(|l| l.starts_with(portwatch::READY_PREFIX))
        .context("no ready line")?;
    let before = &stderr[..ready_at];
    let ready = &stderr[ready_at];
    let shown = || format!("stderr:\n  {}", stderr.join("\n  "));
    ensure!(
        ready.contains(&format!("with the {want} backend")),
        "auto did not pick {want}; {}",
        shown()
    );
    if want == Backend::Tracepoint {
        ensure!(
            before.len() == 1,
            "want exactly one line before the ready line; {}",
            shown()
        );
        let why = before[0]
            .strip_prefix("portwatch: fexit unavailable (")
            .and_then(|r| r.strip_suffix("); using the syscall tracepoints"))
            .with_context(|| format!("fallback line has an unexpected form; {}", shown()))?;
        ensure!(
            why.trim().len() >= 8,
            "the fallback gives no real reason: {why:?}"
        );
    } else {
        ensure!(
            before.is_empty(),
            "unexpected lines before the ready line; {}",
            shown()
        );
    }
    let s = bind_ok(&SockSpec::tcp("127.0.0.1:46000"))?;
    let ev = pw.wait_call(ns, "bind", me(), s.ino()?)?;
    fields(&ev, &[("backend", json!(want.name()))])?;
    let st = pw.stop()?;
    let summary = st.summary().context("no summary")?;
    check::fields_of(summary, &[("backend", json!(want.name()))])
}
