//! Scenarios for portwatch's explanations (issue 3): every rule reproduced with real sockets,
//! held by separate processes, under the real tracer. Each asserts what a user reads: the
//! result, the rule id, and the pid and comm of the process in the way (or sharing the port).
//!
//! The same scenarios run on this host's kernel and on Debian's 6.1 in the VM, with both
//! backends there, so they also show that the rule engine agrees with two kernels.

use std::{
    io::Read as _,
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::{
    Ctx, Scenario,
    check::fields,
    eventually,
    holder::{Bound, Holder},
    netns::{self, Netns},
    portwatch::{Event, Portwatch, lookup},
    sock::{Sock, SockSpec},
};

const EADDRINUSE: i32 = libc::EADDRINUSE;

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::shared("explain_same_address", same_address),
        Scenario::shared("explain_wildcard_covers_specific", |cx, pw, ns| {
            clash_case(
                cx,
                pw,
                ns,
                SockSpec::tcp("0.0.0.0:8080").listening(),
                SockSpec::tcp("127.0.0.1:8080"),
                "wildcard-covers-specific",
            )
        }),
        Scenario::shared("explain_specific_blocks_wildcard", |cx, pw, ns| {
            clash_case(
                cx,
                pw,
                ns,
                SockSpec::tcp("127.0.0.1:8080").listening(),
                SockSpec::tcp("0.0.0.0:8080"),
                "specific-blocks-wildcard",
            )
        }),
        Scenario::shared("explain_different_addresses_coexist", |_, pw, ns| {
            share_case(
                pw,
                ns,
                SockSpec::tcp("127.0.0.1:8080").listening(),
                SockSpec::tcp("127.0.0.2:8080"),
                "ok-different-addresses",
            )
        }),
        Scenario::shared("explain_tcp_udp_separate_spaces", |_, pw, ns| {
            share_case(
                pw,
                ns,
                SockSpec::tcp("0.0.0.0:8080").listening(),
                SockSpec::udp("0.0.0.0:8080"),
                "ok-separate-port-spaces",
            )
        }),
        Scenario::shared("explain_dual_stack_covers_ipv4", dual_stack),
        Scenario::shared("explain_v6only_leaves_ipv4", |_, pw, ns| {
            share_case(
                pw,
                ns,
                SockSpec::tcp("[::]:8080")
                    .with(|o| o.v6only = Some(true))
                    .listening(),
                SockSpec::tcp("0.0.0.0:8080"),
                "ok-v6only",
            )
        }),
        Scenario::shared("explain_bindv6only_default", bindv6only_default),
        Scenario::shared("explain_v4_mapped", |cx, pw, ns| {
            clash_case(
                cx,
                pw,
                ns,
                SockSpec::tcp("127.0.0.1:8080").listening(),
                SockSpec::tcp("[::ffff:127.0.0.1]:8080"),
                "v4-mapped",
            )
        }),
        Scenario::shared("explain_ipv4_blocks_dual_stack", |cx, pw, ns| {
            clash_case(
                cx,
                pw,
                ns,
                SockSpec::tcp("0.0.0.0:8080").listening(),
                SockSpec::tcp("[::]:8080").with(|o| o.v6only = Some(false)),
                "ipv4-blocks-dual-stack",
            )
        }),
        Scenario::shared("explain_v4_mapped_on_v6only", |_, pw, ns| {
            refused(
                pw,
                ns,
                SockSpec::tcp("[::ffff:127.0.0.1]:8080").with(|o| o.v6only = Some(true)),
                libc::EINVAL,
                "v4-mapped-on-v6only",
            )
        }),
        Scenario::shared(
            "explain_reuseaddr_needs_both_bound_only_holder",
            reuseaddr_needs_both,
        ),
        Scenario::shared("explain_reuseaddr_vs_listen", |cx, pw, ns| {
            clash_case(
                cx,
                pw,
                ns,
                SockSpec::tcp("0.0.0.0:8080")
                    .with(|o| o.reuseaddr = true)
                    .listening(),
                SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseaddr = true),
                "reuseaddr-vs-listen",
            )
        }),
        Scenario::shared("explain_reuseaddr_on_both", |_, pw, ns| {
            share_case(
                pw,
                ns,
                SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseaddr = true),
                SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseaddr = true),
                "ok-reuseaddr",
            )
        }),
        Scenario::shared("explain_udp_reuseaddr", udp_reuseaddr),
        Scenario::shared("explain_time_wait_blocks_restart", |_, pw, ns| {
            time_wait(
                pw,
                ns,
                false,
                true,
                Some("time-wait"),
                "the old socket didn't",
            )
        }),
        Scenario::shared(
            "explain_time_wait_new_socket_lacks_reuseaddr",
            |_, pw, ns| {
                time_wait(
                    pw,
                    ns,
                    true,
                    false,
                    Some("time-wait"),
                    "this socket doesn't set SO_REUSEADDR",
                )
            },
        ),
        Scenario::shared("explain_time_wait_passed_with_reuseaddr", |_, pw, ns| {
            time_wait(pw, ns, true, true, None, "TIME_WAIT")
        }),
        Scenario::shared("explain_listen_conflict", listen_conflict),
        Scenario::shared("explain_reuseport_same_user", |_, pw, ns| {
            share_case(
                pw,
                ns,
                SockSpec::tcp("0.0.0.0:8080")
                    .with(|o| o.reuseport = true)
                    .listening(),
                SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseport = true),
                "ok-reuseport",
            )
        }),
        Scenario::shared("explain_reuseport_needs_both", |cx, pw, ns| {
            clash_case(
                cx,
                pw,
                ns,
                SockSpec::tcp("0.0.0.0:8080")
                    .with(|o| o.reuseport = true)
                    .listening(),
                SockSpec::tcp("0.0.0.0:8080"),
                "reuseport-needs-both",
            )
        }),
        Scenario::shared("explain_reuseport_uid_mismatch", reuseport_uid),
        Scenario::shared(
            "explain_bindtodevice_unbound_conflicts",
            bindtodevice_unbound,
        ),
        Scenario::shared("explain_bindtodevice_different_devices", different_devices),
        Scenario::shared("explain_different_netns_never_conflict", different_netns),
        Scenario::shared("explain_ephemeral_exhausted", ephemeral_exhausted),
        Scenario::shared("explain_listen_ephemeral_exhausted", listen_exhausted),
        Scenario::shared("explain_autobind_reuse", autobind_reuse),
        Scenario::shared("explain_privileged_port", privileged_port),
        Scenario::shared("explain_address_not_local", |_, pw, ns| {
            refused(
                pw,
                ns,
                SockSpec::tcp("192.0.2.1:8080"),
                libc::EADDRNOTAVAIL,
                "address-not-local",
            )
        }),
        Scenario::shared("explain_already_bound", already_bound),
        Scenario::shared("explain_multicast_on_tcp", |_, pw, ns| {
            refused(
                pw,
                ns,
                SockSpec::tcp("[ff02::1]:8080"),
                libc::EINVAL,
                "multicast-on-tcp",
            )
        }),
        Scenario::shared("explain_link_local_needs_scope", |_, pw, ns| {
            refused(
                pw,
                ns,
                SockSpec::tcp("[fe80::1]:8080"),
                libc::EINVAL,
                "link-local-needs-scope",
            )
        }),
        Scenario::shared("explain_eperm_cgroup_program", eperm_cgroup),
        Scenario::shared("explain_real_server_busybox_httpd", |_, pw, ns| {
            real_server(
                pw,
                ns,
                &busybox_httpd_cmd()?,
                SockSpec::tcp("127.0.0.1:8080"),
                "reuseaddr-vs-listen",
            )
        }),
        Scenario::shared("explain_real_server_python_http", |_, pw, ns| {
            real_server(
                pw,
                ns,
                &[
                    "python3",
                    "-m",
                    "http.server",
                    "8080",
                    "--bind",
                    "127.0.0.1",
                ],
                SockSpec::tcp("127.0.0.1:8080"),
                "reuseaddr-vs-listen",
            )
        })
        .host_only(),
        // The brief's example with a real server: python's [::] socket is dual-stack.
        Scenario::shared("explain_real_server_python_dual_stack", |_, pw, ns| {
            real_server(
                pw,
                ns,
                &["python3", "-m", "http.server", "8080", "--bind", "::"],
                SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseaddr = true),
                "dual-stack-covers-ipv4",
            )
        })
        .host_only(),
        Scenario::shared("who_finds_bound_only_holder", who_bound_only),
        Scenario::shared("who_sees_what_ss_misses", who_vs_ss).host_only(),
        Scenario::shared("who_predicts_what_the_kernel_does", who_predicts),
    ]
}

// ---- helpers ---------------------------------------------------------------------------------

fn spawn(ns: &Netns, comm: &str) -> Result<Holder> {
    Holder::spawn(ns, comm)
}

/// A bind in `h` that must fail with `errno`.
fn bind_fails(h: &mut Holder, spec: &SockSpec, errno: i32) -> Result<Bound> {
    let b = h.bind(spec)?;
    ensure!(
        b.errno == errno,
        "set-up: {} bind to {} should fail with {}, got {}",
        spec.proto.name(),
        spec.addr,
        std::io::Error::from_raw_os_error(errno),
        describe(b.errno)
    );
    Ok(b)
}

fn describe(errno: i32) -> String {
    if errno == 0 {
        "success".into()
    } else {
        std::io::Error::from_raw_os_error(errno).to_string()
    }
}

/// The explanation blames `h`'s process first.
fn blames(ev: &Event, rule: &str, h: &Holder) -> Result<()> {
    fields(
        ev,
        &[
            ("explain.rule", json!(rule)),
            ("explain.holders.0.owners.0.pid", json!(h.pid)),
            ("explain.holders.0.owners.0.comm", json!(h.comm)),
        ],
    )
}

/// The explanation says the port is shared with `h`'s process, and why.
fn shares_with(ev: &Event, rule: &str, h: &Holder) -> Result<()> {
    fields(
        ev,
        &[
            ("ok", json!(true)),
            ("explain.rule", json!(rule)),
            ("explain.shares_with.0.owners.0.pid", json!(h.pid)),
            ("explain.shares_with.0.owners.0.comm", json!(h.comm)),
        ],
    )
}

fn message(ev: &Event) -> String {
    lookup(&ev.0, "explain.message")
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn says(ev: &Event, words: &[&str]) -> Result<()> {
    let m = message(ev);
    for w in words {
        ensure!(
            m.contains(w),
            "the explanation lacks {w:?}: {m}\n  line: {ev}"
        );
    }
    Ok(())
}

/// Where the leading holder came from: the kernel's own conflict check under fexit (TCP),
/// else the socket tables or, for a bound-only socket, the fd tables.
fn source_is(cx: &Ctx, ev: &Event, without_fexit: &str) -> Result<()> {
    let want = if cx.pw.backend == "fexit" {
        "kernel-conflict-check"
    } else {
        without_fexit
    };
    fields(ev, &[("explain.holders.0.source", json!(want))])
}

/// A holder process binds `held`; an asker process's bind of `asked` must fail with
/// EADDRINUSE, explained by `rule` naming the holder.
fn clash(
    pw: &Portwatch,
    ns: &Netns,
    held: &[SockSpec],
    asked: SockSpec,
    rule: &str,
) -> Result<(Event, Holder, Holder)> {
    let mut h = spawn(ns, "pw-holder")?;
    for spec in held {
        h.bind_ok(spec)?;
    }
    let mut a = spawn(ns, "pw-asker")?;
    let b = bind_fails(&mut a, &asked, EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    fields(
        &ev,
        &[
            ("errno", json!("EADDRINUSE")),
            ("requested.port", json!(asked.addr.port())),
        ],
    )?;
    blames(&ev, rule, &h)?;
    Ok((ev, h, a))
}

fn clash_case(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    held: SockSpec,
    asked: SockSpec,
    rule: &str,
) -> Result<()> {
    let (ev, _h, _a) = clash(pw, ns, &[held], asked, rule)?;
    source_is(cx, &ev, "socket-table")
}

/// A holder binds `held`; the asker's bind of `asked` succeeds, explained by `rule`.
fn share_case(
    pw: &Portwatch,
    ns: &Netns,
    held: SockSpec,
    asked: SockSpec,
    rule: &str,
) -> Result<()> {
    let mut h = spawn(ns, "pw-holder")?;
    h.bind_ok(&held)?;
    let mut a = spawn(ns, "pw-asker")?;
    let b = a.bind_ok(&asked)?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    shares_with(&ev, rule, &h)
}

/// A bind refused for a reason other than a holder.
fn refused(pw: &Portwatch, ns: &Netns, spec: SockSpec, errno: i32, rule: &str) -> Result<()> {
    let mut a = spawn(ns, "pw-asker")?;
    let b = bind_fails(&mut a, &spec, errno)?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    fields(
        &ev,
        &[("explain.rule", json!(rule)), ("result", json!(-errno))],
    )?;
    ensure!(
        !lookup(&ev.0, "explain.fix").is_null(),
        "no fix offered\n  line: {ev}"
    );
    Ok(())
}

// ---- addresses -------------------------------------------------------------------------------

fn same_address(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let (ev, _h, _a) = clash(
        pw,
        ns,
        &[SockSpec::tcp("127.0.0.1:8080").listening()],
        SockSpec::tcp("127.0.0.1:8080"),
        "same-address",
    )?;
    fields(
        &ev,
        &[
            ("explain.holders.0.state", json!("LISTEN")),
            ("explain.holders.0.addr", json!("127.0.0.1")),
            ("explain.holders.0.port", json!(8080)),
            ("explain.holders.0.netns", json!(ns.inode())),
        ],
    )?;
    source_is(cx, &ev, "socket-table")
}

/// The brief's own example, word for word.
fn dual_stack(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let (ev, h, _a) = clash(
        pw,
        ns,
        &[SockSpec::tcp("[::]:8080")
            .with(|o| o.v6only = Some(false))
            .listening()],
        SockSpec::tcp("0.0.0.0:8080"),
        "dual-stack-covers-ipv4",
    )?;
    says(
        &ev,
        &[
            &format!(
                "EADDRINUSE: pid {} ({}) holds [::]:8080 dual-stack (IPV6_V6ONLY=0",
                h.pid, h.comm
            ),
            "which covers 0.0.0.0:8080",
        ],
    )?;
    fields(&ev, &[("explain.holders.0.options.v6only", json!(false))])?;
    source_is(cx, &ev, "socket-table")
}

fn bindv6only_default(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    netns::set_sysctl("net/ipv6/bindv6only", "1")?;
    let mut h = spawn(ns, "pw-holder")?;
    let held = h.bind_ok(&SockSpec::tcp("[::]:8080").listening())?;
    let hev = pw.wait_call(ns, "bind", h.pid, held.ino)?;
    fields(&hev, &[("options.v6only", json!(true))])?;
    let mut a = spawn(ns, "pw-asker")?;
    let b = a.bind_ok(&SockSpec::tcp("0.0.0.0:8080"))?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    shares_with(&ev, "ok-v6only-by-default", &h)?;
    says(&ev, &["net.ipv6.bindv6only=1"])
}

// ---- SO_REUSEADDR ----------------------------------------------------------------------------

/// The holder is bound but not listening, the kind ss misses: found anyway.
fn reuseaddr_needs_both(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let (ev, _h, _a) = clash(
        pw,
        ns,
        &[SockSpec::tcp("127.0.0.1:8080")],
        SockSpec::tcp("127.0.0.1:8080").with(|o| o.reuseaddr = true),
        "reuseaddr-needs-both",
    )?;
    fields(&ev, &[("explain.holders.0.state", json!("BOUND"))])?;
    source_is(cx, &ev, "fd-table")
}

fn udp_reuseaddr(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let spec = SockSpec::udp("0.0.0.0:5353").with(|o| o.reuseaddr = true);
    let mut h = spawn(ns, "pw-holder")?;
    h.bind_ok(&spec)?;
    let mut a = spawn(ns, "pw-asker")?;
    let b = a.bind_ok(&spec)?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    shares_with(&ev, "ok-udp-reuseaddr", &h)?;
    // Without SO_REUSEADDR on the new socket, both UDP sockets (holder and asker) are in the
    // way.
    let mut c = spawn(ns, "pw-third")?;
    let b = bind_fails(&mut c, &SockSpec::udp("0.0.0.0:5353"), EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", c.pid, b.ino)?;
    fields(&ev, &[("explain.rule", json!("reuseaddr-needs-both"))])?;
    says(&ev, &["for UDP"])?;
    let pids: Vec<u64> = lookup(&ev.0, "explain.holders")
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter_map(|x| lookup(x, "owners.0.pid").as_u64())
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        pids.contains(&u64::from(h.pid)) && pids.contains(&u64::from(a.pid)),
        "both UDP sockets should be named, got pids {pids:?}\n  line: {ev}"
    );
    Ok(())
}

/// The restart case. A server (`old_reuse`) accepts a connection and closes it first, so the
/// connection sits in TIME_WAIT with the listener's SO_REUSEADDR; then the listener goes away
/// and a new socket (`new_reuse`) binds the same address.
fn time_wait(
    pw: &Portwatch,
    ns: &Netns,
    old_reuse: bool,
    new_reuse: bool,
    rule: Option<&str>,
    words: &str,
) -> Result<()> {
    let addr = "127.0.0.1:8080";
    {
        let srv = Sock::open(&SockSpec::tcp(addr).with(|o| o.reuseaddr = old_reuse))?;
        srv.bind()?;
        srv.listen(16)?;
        let listener: TcpListener = srv.socket.into();
        let client = TcpStream::connect(addr)?;
        let (conn, _) = listener.accept()?;
        drop(conn); // the server closes first: its side will be the TIME_WAIT one
        let mut buf = [0u8; 1];
        client.set_read_timeout(Some(Duration::from_secs(5)))?;
        let _ = (&client).read(&mut buf); // wait for the server's FIN
        drop(client);
    }
    let seen = eventually(Duration::from_secs(10), || {
        let tcp = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
        // local address 0100007F:1F90 (127.0.0.1:8080), state 06 (TIME_WAIT)
        Ok(tcp
            .lines()
            .any(|l| l.contains("0100007F:1F90") && l.split_whitespace().nth(3) == Some("06")))
    })?;
    ensure!(seen, "set-up: no TIME_WAIT connection on {addr} appeared");
    let mut a = spawn(ns, "pw-server")?;
    let spec = SockSpec::tcp(addr).with(|o| o.reuseaddr = new_reuse);
    match rule {
        Some(rule) => {
            let b = bind_fails(&mut a, &spec, EADDRINUSE)?;
            let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
            fields(
                &ev,
                &[
                    ("explain.rule", json!(rule)),
                    ("explain.holders.0.state", json!("TIME_WAIT")),
                    ("explain.holders.0.owners", json!([])),
                    ("explain.holders.0.options.reuseaddr", json!(old_reuse)),
                ],
            )?;
            let left = lookup(&ev.0, "explain.holders.0.time_wait_left_ms");
            ensure!(
                left.as_u64().is_some_and(|ms| ms > 0 && ms <= 60_000),
                "time_wait_left_ms should be in (0, 60000], got {left}\n  line: {ev}"
            );
            says(&ev, &[words])
        }
        None => {
            let b = a.bind_ok(&spec)?;
            let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
            fields(&ev, &[("explain.rule", json!("ok-time-wait-reuse"))])?;
            says(&ev, &[words])
        }
    }
}

fn listen_conflict(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let spec = SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseaddr = true);
    let mut h = spawn(ns, "pw-holder")?;
    let first = h.bind_ok(&spec)?;
    let mut a = spawn(ns, "pw-asker")?;
    let second = a.bind_ok(&spec)?;
    let ev = pw.wait_call(ns, "bind", a.pid, second.ino)?;
    shares_with(&ev, "ok-reuseaddr", &h)?;
    let l = h.listen(first.id)?;
    ensure!(
        l.errno == 0,
        "set-up: first listen failed: {}",
        describe(l.errno)
    );
    let l = a.listen(second.id)?;
    ensure!(
        l.errno == EADDRINUSE,
        "set-up: second listen should fail with EADDRINUSE, got {}",
        describe(l.errno)
    );
    let ev = pw.wait_call(ns, "listen", a.pid, second.ino)?;
    fields(&ev, &[("errno", json!("EADDRINUSE"))])?;
    blames(&ev, "listen-conflict", &h)?;
    says(&ev, &["at listen()"])
}

// ---- SO_REUSEPORT, devices, namespaces --------------------------------------------------------

fn reuseport_uid(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let spec = SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseport = true);
    let mut h = spawn(ns, "pw-holder")?;
    h.bind_ok(&spec.clone().listening())?;
    let mut a = Holder::spawn_as(ns, "pw-nobody", 65534)?;
    let b = bind_fails(&mut a, &spec, EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    fields(&ev, &[("sk_uid", json!(65534))])?;
    blames(&ev, "reuseport-uid-mismatch", &h)?;
    says(&ev, &["uid 0", "uid 65534"])
}

fn bindtodevice_unbound(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let _dev = netns::tun_device("pw0")?;
    let (ev, _h, _a) = clash(
        pw,
        ns,
        &[SockSpec::tcp("0.0.0.0:8080").with(|o| o.bind_device = Some("pw0".into()))],
        SockSpec::tcp("0.0.0.0:8080"),
        "bindtodevice-unbound",
    )?;
    fields(
        &ev,
        &[("explain.holders.0.options.bound_device", json!("pw0"))],
    )?;
    says(&ev, &["device pw0"])
}

fn different_devices(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let _d0 = netns::tun_device("pw0")?;
    let _d1 = netns::tun_device("pw1")?;
    share_case(
        pw,
        ns,
        SockSpec::tcp("0.0.0.0:8080").with(|o| o.bind_device = Some("pw0".into())),
        SockSpec::tcp("0.0.0.0:8080").with(|o| o.bind_device = Some("pw1".into())),
        "ok-different-devices",
    )
}

fn different_netns(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    netns::in_new_netns("pw-other-ns", |other| {
        let mut h = spawn(other, "pw-holder")?;
        let held = h.bind_ok(&SockSpec::tcp("0.0.0.0:8080").listening())?;
        // portwatch learns of the other namespace from the holder's own bind.
        pw.wait_call(other, "bind", h.pid, held.ino)?;
        let mut a = spawn(ns, "pw-asker")?;
        let b = a.bind_ok(&SockSpec::tcp("0.0.0.0:8080"))?;
        let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
        shares_with(&ev, "ok-different-netns", &h)?;
        fields(
            &ev,
            &[("explain.shares_with.0.netns", json!(other.inode()))],
        )
    })
}

// ---- port 0 ----------------------------------------------------------------------------------

/// Fills a two-port ephemeral range; returns the holder with both ports.
fn fill_range(pw: &Portwatch, ns: &Netns, reuse: bool) -> Result<Holder> {
    netns::set_sysctl("net/ipv4/ip_local_port_range", "41000 41001")?;
    let mut h = spawn(ns, "pw-holder")?;
    let spec = SockSpec::tcp("127.0.0.1:0").with(|o| o.reuseaddr = reuse);
    for _ in 0..2 {
        let b = h.bind_ok(&spec)?;
        pw.wait_call(ns, "bind", h.pid, b.ino)?;
    }
    Ok(h)
}

fn ephemeral_exhausted(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = fill_range(pw, ns, false)?;
    let b = bind_fails(&mut h, &SockSpec::tcp("127.0.0.1:0"), EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", h.pid, b.ino)?;
    fields(&ev, &[("explain.rule", json!("ephemeral-exhausted"))])?;
    says(&ev, &["41000–41001", "2 of its 2 ports"])
}

fn listen_exhausted(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = fill_range(pw, ns, false)?;
    let b = h.listen_unbound(&SockSpec::tcp("0.0.0.0:0"))?;
    ensure!(
        b.errno == EADDRINUSE,
        "set-up: listen() on an unbound socket should fail with EADDRINUSE, got {}",
        describe(b.errno)
    );
    let ev = pw.wait_call(ns, "listen", h.pid, b.ino)?;
    fields(
        &ev,
        &[("explain.rule", json!("listen-ephemeral-exhausted"))],
    )?;
    says(&ev, &["never bound", "41000–41001"])
}

fn autobind_reuse(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let h = fill_range(pw, ns, true)?;
    netns::set_sysctl("net/ipv4/ip_autobind_reuse", "1")?;
    let mut a = spawn(ns, "pw-asker")?;
    let b = a.bind_ok(&SockSpec::tcp("127.0.0.1:0").with(|o| o.reuseaddr = true))?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    shares_with(&ev, "ok-autobind-reuse", &h)
}

// ---- other refusals --------------------------------------------------------------------------

fn privileged_port(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut a = Holder::spawn_as(ns, "pw-nobody", 65534)?;
    let b = bind_fails(&mut a, &SockSpec::tcp("0.0.0.0:80"), libc::EACCES)?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    fields(
        &ev,
        &[
            ("explain.rule", json!("privileged-port")),
            ("uid", json!(65534)),
        ],
    )?;
    says(
        &ev,
        &[
            "ip_unprivileged_port_start (1024)",
            "lacks CAP_NET_BIND_SERVICE",
        ],
    )
}

fn already_bound(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let s = Sock::open(&SockSpec::tcp("127.0.0.1:0"))?;
    s.bind()?;
    let err = s
        .bind_to("127.0.0.1:8080".parse()?)
        .err()
        .context("set-up: a second bind() should fail")?;
    ensure!(
        err.raw_os_error() == Some(libc::EINVAL),
        "set-up: got {err}"
    );
    let ino = s.ino()?;
    let evs = pw.wait_for(ns, "the failed second bind", |e| {
        e.iter()
            .any(|e| e.sock_ino() == Some(ino) && e.errno() == Some("EINVAL"))
    })?;
    let ev = evs
        .iter()
        .find(|e| e.sock_ino() == Some(ino) && e.errno() == Some("EINVAL"))
        .expect("waited for");
    fields(
        ev,
        &[
            ("explain.rule", json!("already-bound")),
            ("requested.port", json!(8080)),
        ],
    )?;
    let port = s.local_addr()?.port();
    says(ev, &[&format!("already bound to 127.0.0.1:{port}")])
}

/// A cgroup bind4 program that refuses every bind: `r0 = 0; exit`.
struct DenyProgram {
    prog: std::os::fd::OwnedFd,
    cgroup: std::fs::File,
    dir: std::path::PathBuf,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_BIND: u32 = 8;

impl DenyProgram {
    fn attach(name: &str) -> Result<Self> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
            })
            .context("no cgroup2 mount")?;
        let dir = std::path::PathBuf::from(root).join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
        let license = c"GPL";
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_SOCK_ADDR.to_ne_bytes());
        attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[48..57].copy_from_slice(b"deny_bind");
        attr[68..72].copy_from_slice(&BPF_CGROUP_INET4_BIND.to_ne_bytes());
        // SAFETY: BPF_PROG_LOAD with a zero-padded bpf_attr that outlives the call.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), 128) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("loading the deny program");
        }
        // SAFETY: a new fd.
        let prog = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        let cgroup = std::fs::File::open(&dir)?;
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(cgroup.as_raw_fd() as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
        attr[8..12].copy_from_slice(&BPF_CGROUP_INET4_BIND.to_ne_bytes());
        // SAFETY: BPF_PROG_ATTACH with a zero-padded bpf_attr.
        if unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_ATTACH, attr.as_ptr(), 128) } != 0 {
            return Err(std::io::Error::last_os_error()).context("attaching the deny program");
        }
        Ok(DenyProgram { prog, cgroup, dir })
    }

    fn add(&self, pid: u32) -> Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", self.dir.display()))
    }
}

impl Drop for DenyProgram {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(self.cgroup.as_raw_fd() as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(self.prog.as_raw_fd() as u32).to_ne_bytes());
        attr[8..12].copy_from_slice(&BPF_CGROUP_INET4_BIND.to_ne_bytes());
        // SAFETY: BPF_PROG_DETACH with a zero-padded bpf_attr.
        unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_DETACH, attr.as_ptr(), 128) };
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn eperm_cgroup(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let deny = DenyProgram::attach(&format!("pw-deny-{}", ns.inode()))?;
    let mut a = spawn(ns, "pw-asker")?;
    deny.add(a.pid)?;
    let b = bind_fails(&mut a, &SockSpec::tcp("127.0.0.1:8080"), libc::EPERM)?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    fields(&ev, &[("explain.rule", json!("bpf-or-lsm-denied"))])?;
    let details = lookup(&ev.0, "explain.details").to_string();
    ensure!(
        details.contains("bind4 program") && details.contains("deny_bind"),
        "the cgroup program is not named: {details}\n  line: {ev}"
    );
    a.exit()?;
    drop(deny);
    Ok(())
}

// ---- real servers ----------------------------------------------------------------------------

fn busybox_httpd_cmd() -> Result<Vec<&'static str>> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .context("busybox not found")?;
    Ok(vec![
        busybox,
        "httpd",
        "-f",
        "-p",
        "127.0.0.1:8080",
        "-h",
        "/",
    ])
}

/// A server not written here holds the port; portwatch must name it. Both servers set
/// SO_REUSEADDR, as most servers do, and listen: the rule is that SO_REUSEADDR cannot help
/// against a listener.
fn real_server(
    pw: &Portwatch,
    ns: &Netns,
    argv: &[&str],
    asked: SockSpec,
    rule: &str,
) -> Result<()> {
    let path = ns.path();
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (open, setns) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let f = std::fs::File::open(&path)?;
            if libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", argv.join(" ")))?;
    let pid = child.id();
    let result = (|| {
        let evs = pw.wait_for(ns, &format!("the server (pid {pid}) listening"), |e| {
            e.iter()
                .any(|e| e.kind() == "listen" && e.pid() == Some(u64::from(pid)))
        })?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?
            .trim()
            .to_string();
        drop(evs);
        let mut a = spawn(ns, "pw-asker")?;
        let b = bind_fails(&mut a, &asked, EADDRINUSE)?;
        let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
        fields(
            &ev,
            &[
                ("explain.rule", json!(rule)),
                ("explain.holders.0.options.reuseaddr", json!(true)),
                ("explain.holders.0.owners.0.pid", json!(pid)),
                ("explain.holders.0.owners.0.comm", json!(comm)),
            ],
        )
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

// ---- who -------------------------------------------------------------------------------------

fn who(cx: &Ctx, args: &[&str]) -> Result<Value> {
    let out = Command::new(&cx.pw.exe)
        .arg("who")
        .args(args)
        .arg("--json")
        .output()
        .context("running portwatch who")?;
    ensure!(
        out.status.success(),
        "portwatch who {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("parsing portwatch who --json")
}

fn who_bound_only(cx: &Ctx, _pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = spawn(ns, "pw-holder")?;
    let b = h.bind_ok(&SockSpec::tcp("127.0.0.1:8080").with(|o| o.reuseaddr = true))?;
    let v = who(cx, &["8080"])?;
    let holders = v["holders"].as_array().context("no holders array")?;
    let mine: Vec<&Value> = holders
        .iter()
        .filter(|x| x["netns"].as_u64() == Some(ns.inode()))
        .collect();
    ensure!(
        mine.len() == 1,
        "want the one holder in netns {}, got {mine:?}",
        ns.inode()
    );
    super::check::fields_of(
        mine[0],
        &[
            ("state", json!("BOUND")),
            ("source", json!("fd-table")),
            ("sock_ino", json!(b.ino)),
            ("owners.0.pid", json!(h.pid)),
            ("owners.0.comm", json!(h.comm)),
            ("options.reuseaddr", json!(true)),
        ],
    )
}

/// `ss -tanp` (run in the same namespace) lists no socket on the port; `who` does.
fn who_vs_ss(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = spawn(ns, "pw-holder")?;
    let held = h.bind_ok(&SockSpec::tcp("127.0.0.1:8080"))?;
    pw.wait_call(ns, "bind", h.pid, held.ino)?;
    let out = Command::new("ss")
        .args(["-tanp"])
        .output()
        .context("running ss (iproute2)")?;
    let ss = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "ss failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !ss.contains(":8080"),
        "ss shows the bound-only socket after all, so this test proves nothing:\n{ss}"
    );
    let v = who(cx, &["8080"])?;
    let found = v["holders"].as_array().is_some_and(|hs| {
        hs.iter().any(|x| {
            x["netns"].as_u64() == Some(ns.inode())
                && x["owners"][0]["pid"].as_u64() == Some(u64::from(h.pid))
        })
    });
    ensure!(found, "who did not list pid {}'s socket: {v}", h.pid);
    Ok(())
}

/// For each case, `who --addr` predicts; then the same bind is made, and the kernel's answer
/// and the trace's explanation must match the prediction.
fn who_predicts(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = spawn(ns, "pw-holder")?;
    let held = h.bind_ok(
        &SockSpec::tcp("0.0.0.0:8080")
            .with(|o| o.reuseaddr = true)
            .listening(),
    )?;
    pw.wait_call(ns, "bind", h.pid, held.ino)?;
    let path = ns.path();
    let cases: Vec<(Vec<&str>, SockSpec)> = vec![
        (vec!["--addr", "127.0.0.1"], SockSpec::tcp("127.0.0.1:8080")),
        (
            vec!["--addr", "0.0.0.0", "--reuseaddr"],
            SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseaddr = true),
        ),
        (
            vec!["--addr", "127.0.0.1", "--udp"],
            SockSpec::udp("127.0.0.1:8080"),
        ),
        (
            vec!["--addr", "::", "--v6only"],
            SockSpec::tcp("[::]:8080").with(|o| o.v6only = Some(true)),
        ),
        (
            vec!["--addr", "::"],
            SockSpec::tcp("[::]:8080").with(|o| o.v6only = Some(false)),
        ),
        (vec!["--addr", "192.0.2.9"], SockSpec::tcp("192.0.2.9:8080")),
    ];
    for (args, spec) in cases {
        let mut all = vec!["8080", "--netns", path.as_str()];
        all.extend(&args);
        let v = who(cx, &all)?;
        let predicted_ok = v["prediction"]["would_succeed"]
            .as_bool()
            .context("no prediction")?;
        let predicted_rule = v["prediction"]["verdict"]["rule"].clone();
        let mut a = spawn(ns, "pw-asker")?;
        let b = a.bind(&spec)?;
        ensure!(
            (b.errno == 0) == predicted_ok,
            "who {} predicted {}, the kernel said {}",
            args.join(" "),
            if predicted_ok { "success" } else { "failure" },
            describe(b.errno)
        );
        let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
        let traced_rule = lookup(&ev.0, "explain.rule").clone();
        ensure!(
            traced_rule == predicted_rule,
            "who {} predicted rule {predicted_rule}, trace explained {traced_rule}",
            args.join(" ")
        );
        a.exit()?;
    }
    Ok(())
}
