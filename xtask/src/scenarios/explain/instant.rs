//! Issue 8: holders that only what the kernel saw at the instant of the call can explain
//! right, beyond the `_holder_gone` runs of the rule scenarios ([`super::holding`]): a
//! namespace deleted and made again under the same name, TIME_WAIT sockets of the same port in
//! other namespaces, a FIN_WAIT2 orphan, a socket the kernel itself opened, a socket that only
//! an unreceived SCM_RIGHTS message holds, and an owner that closes and rebinds in a loop.
//!
//! Where the wording of a new sentence is not settled, they assert the JSON fields:
//! `holders[].owners` and `holders[].owner_status` ("in-kernel": the socket has no file;
//! "closed": no process holds it any more, and `bound_by` names who bound it; "live").

use std::{thread, time::Duration};

use anyhow::{Context, Result, ensure};
use portwatch_common::Backend;
use serde_json::{Value, json};

use super::{
    expect::blames,
    holding::Holding,
    real_server::{Server, python_http},
    tcp_state::{leave_fin_wait2, leave_time_wait},
};
use crate::scenarios::{
    Ctx, Scenario,
    check::fields,
    holder::{Counted, Holder},
    netns::{self, Named, Netns},
    portwatch::{Event, Portwatch, lookup},
    sock::SockSpec,
    vanish::{Fifo, Target},
};

const EADDRINUSE: i32 = libc::EADDRINUSE;

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![
        // `ip netns` and python3: on the host only.
        Scenario::shared("explain_netns_deleted_and_made_again", netns_made_again).host_only(),
        Scenario::shared(
            "explain_time_wait_in_other_namespaces",
            time_wait_other_namespaces,
        ),
        Scenario::shared("explain_fin_wait2_holder", fin_wait2_holder),
        // The VM loads vxlan (a module there) and ships iproute2's ip for it.
        Scenario::shared("explain_in_kernel_holder", in_kernel_holder).needs_modules(&["vxlan"]),
        Scenario::shared("explain_in_flight_holder", in_flight_holder),
        Scenario::shared("explain_own_socket_in_the_way", own_socket),
        // Host only: under the VM's emulated CPU the owner's loop ends before the tracer has
        // explained enough conflicts for the comparison to show anything.
        Scenario::alone("explain_rebind_loop_undisturbed", rebind_loop).host_only(),
    ]
}

/// One portwatch throughout (the shared one). `ip netns add X`; in X a dual-stack server on
/// [::]:8080, and a bind on 0.0.0.0:8080 fails; the server goes, `ip netns del X`. Then
/// `ip netns add X` again (the kernel may well give it the old inode), python3's http.server
/// on 0.0.0.0:8080 in it, and a dual-stack bind on [::]:8080 fails: portwatch must name
/// python3, from the new namespace, not what it remembered of the old one.
fn netns_made_again(_: &Ctx, pw: &Portwatch, _: &Netns) -> Result<()> {
    let name = format!("pw-again-{}", std::process::id());
    let x = Named::add(&name)?;
    let first_inode = x.ns.inode();
    {
        let mut server = Holder::spawn(&x.ns, "pw-server")?;
        server.bind_ok(
            &SockSpec::tcp("[::]:8080")
                .with(|o| o.v6only = Some(false))
                .listening(),
        )?;
        let mut a = Holder::spawn(&x.ns, "pw-asker")?;
        let b = a.bind_fails(&SockSpec::tcp("0.0.0.0:8080"), EADDRINUSE)?;
        let ev = pw.wait_call(&x.ns, "bind", a.pid, b.ino)?;
        blames(&ev, "dual-stack-covers-ipv4", Holding::Kept, &server)
            .context("in the first namespace")?;
        a.exit()?;
        server.exit()?;
    }
    x.delete()?;

    let x = Named::add(&name)?;
    let again = format!(
        "in the namespace made again (inode {}; the deleted one had {first_inode})",
        x.ns.inode()
    );
    let server =
        Server::start(pw, &x.ns, &python_http("0.0.0.0")).with_context(|| again.clone())?;
    let mut a = Holder::spawn(&x.ns, "pw-asker")?;
    let b = a.bind_fails(
        &SockSpec::tcp("[::]:8080").with(|o| o.v6only = Some(false)),
        EADDRINUSE,
    )?;
    let ev = pw.wait_call(&x.ns, "bind", a.pid, b.ino)?;
    fields(
        &ev,
        &[
            ("explain.rule", json!("ipv4-blocks-dual-stack")),
            ("explain.holders.0.state", json!("LISTEN")),
            ("explain.holders.0.owners.0.pid", json!(server.pid)),
            ("explain.holders.0.owners.0.comm", json!(server.comm)),
        ],
    )
    .context(again)?;
    drop(a);
    drop(server);
    x.delete()
}

/// The restart case with TIME_WAIT connections on the same ports in two other namespaces:
/// a restart on 8080 (the old server had no SO_REUSEADDR) fails, one on 8081 (both have it)
/// passes, and both explanations list only this namespace's sockets.
fn time_wait_other_namespaces(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let leave = || -> Result<()> {
        leave_time_wait("127.0.0.1:8080", false)?;
        leave_time_wait("127.0.0.1:8081", true)
    };
    for other in ["pw-tw-other-1", "pw-tw-other-2"] {
        netns::in_new_netns(other, |_| leave())?;
    }
    leave()?;

    let mut a = Holder::spawn(ns, "pw-server")?;
    let b = a.bind_fails(&SockSpec::tcp("127.0.0.1:8080"), EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    fields(
        &ev,
        &[
            ("explain.rule", json!("time-wait")),
            ("explain.holders.0.state", json!("TIME_WAIT")),
        ],
    )?;
    only_from(&ev, "explain.holders", ns)?;

    let b = a.bind_ok(&SockSpec::tcp("127.0.0.1:8081").with(|o| o.reuseaddr = true))?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    fields(
        &ev,
        &[
            ("explain.rule", json!("ok-time-wait-reuse")),
            ("explain.shares_with.0.state", json!("TIME_WAIT")),
        ],
    )?;
    only_from(&ev, "explain.shares_with", ns)
}

/// The sockets listed under `list` (a path to an array) all live in `ns`, and there is one;
/// and no other namespace's socket is listed anywhere in the explanation: neither in
/// `holders` nor in `shares_with`, nor in `other_netns`, which only `ok-different-netns`
/// has.
fn only_from(ev: &Event, list: &str, ns: &Netns) -> Result<()> {
    let socks = lookup(&ev.0, list).as_array().cloned().unwrap_or_default();
    let elsewhere: Vec<Value> = ["explain.holders", "explain.shares_with"]
        .iter()
        .flat_map(|l| lookup(&ev.0, l).as_array().cloned().unwrap_or_default())
        .filter(|s| s["netns"].as_u64() != Some(ns.inode()))
        .collect();
    ensure!(
        !socks.is_empty() && elsewhere.is_empty(),
        "{list} should list this namespace's sockets (netns {}) and no other's; other \
         namespaces': {elsewhere:?}\n  line: {ev}",
        ns.inode()
    );
    let other = lookup(&ev.0, "explain.other_netns");
    ensure!(
        other.is_null(),
        "other_netns is for ok-different-netns only, got {other}\n  line: {ev}"
    );
    Ok(())
}

/// A server closed its side of a connection whose peer never closed: the kernel keeps it as
/// a timewait socket in the FIN_WAIT2 substate, and a restart without SO_REUSEADDR fails on
/// it. It must be named FIN_WAIT2, never TIME_WAIT, and no process owns it.
fn fin_wait2_holder(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let _peer = leave_fin_wait2("127.0.0.1:8080")?;
    let mut a = Holder::spawn(ns, "pw-server")?;
    let b = a.bind_fails(&SockSpec::tcp("127.0.0.1:8080"), EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    fields(
        &ev,
        &[
            ("explain.holders.0.state", json!("FIN_WAIT2")),
            ("explain.holders.0.owners", json!([])),
        ],
    )?;
    let m = ev.message();
    ensure!(
        !m.contains("TIME_WAIT"),
        "the explanation calls the FIN_WAIT2 socket TIME_WAIT: {m}\n  line: {ev}"
    );
    Ok(())
}

/// A VXLAN device with dstport 4789, brought up in the namespace, makes the kernel open a UDP
/// socket on 0.0.0.0:4789 that no process has: a bind there fails, and the explanation must
/// say the socket is the kernel's, with no owner. With fexit, which sees binds the kernel
/// makes itself, the kernel's own bind is traced too, under the task that caused it (`ip`),
/// and "who took 4789?" has that answer in the failure's explanation (`bound_by`).
fn in_kernel_holder(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    netns::ip(
        Some(ns),
        &[
            "link",
            "add",
            "pw-vx0",
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4789",
            "local",
            "127.0.0.1",
        ],
    )
    .context("set-up: a VXLAN device (is the vxlan module there?)")?;
    netns::ip(Some(ns), &["link", "set", "pw-vx0", "up"])?;
    let fexit = cx.pw.backend == Some(Backend::Fexit);
    if fexit {
        let evs = pw.wait_for(ns, "the kernel's own bind of udp 4789", |evs| {
            evs.iter().any(|e| e.0["bound"]["port"] == json!(4789))
        })?;
        let ev = evs
            .into_iter()
            .find(|e| e.0["bound"]["port"] == json!(4789))
            .context("the event")?;
        fields(
            &ev,
            &[
                ("type", json!("bind")),
                ("ok", json!(true)),
                ("protocol", json!("udp")),
                ("comm", json!("ip")),
                ("kernel_socket", json!(true)),
                ("fd", json!(null)),
            ],
        )?;
        let details = lookup(&ev.0, "explain.details").to_string();
        ensure!(
            details.contains("the kernel bound this socket for itself"),
            "the kernel's own bind is not said to be the kernel's: {details}\n  line: {ev}"
        );
    }
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let b = a.bind_fails(&SockSpec::udp("0.0.0.0:4789"), EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    fields(
        &ev,
        &[
            ("explain.rule", json!("same-address")),
            ("explain.holders.0.state", json!("UNCONN")),
            ("explain.holders.0.owners", json!([])),
            ("explain.holders.0.owner_status", json!("in-kernel")),
            ("kernel_socket", json!(false)),
        ],
    )?;
    if fexit {
        fields(&ev, &[("explain.holders.0.bound_by.comm", json!("ip"))])?;
        let m = ev.message();
        ensure!(
            m.contains("in-kernel socket") && m.contains("(ip)"),
            "the explanation should name the kernel's socket and ip, which made it: {m}\n  \
             line: {ev}"
        );
    }
    Ok(())
}

/// A bound socket whose only reference is an SCM_RIGHTS message nobody received (the process
/// that sent it still has the unix socket pair, but not the socket): a bind next to it fails,
/// and the explanation must not make up an owner. No process holds it, which is what it says,
/// naming the process that bound it; the kernel keeps no trace of which message holds a file,
/// so "in flight" is one of the possibilities the details name, not a finding.
fn in_flight_holder(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = Holder::spawn(ns, "pw-holder")?;
    h.bind_in_flight(&SockSpec::tcp("127.0.0.1:8080"))?;
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let b = a.bind_fails(
        &SockSpec::tcp("127.0.0.1:8080").with(|o| o.reuseaddr = true),
        EADDRINUSE,
    )?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    fields(
        &ev,
        &[
            ("explain.rule", json!("reuseaddr-needs-both")),
            ("explain.holders.0.state", json!("BOUND")),
            ("explain.holders.0.owners", json!([])),
            ("explain.holders.0.owner_status", json!("closed")),
            ("explain.holders.0.bound_by.pid", json!(h.pid)),
        ],
    )?;
    let details =
        ev.0.pointer("/explain/details")
            .and_then(Value::as_array)
            .context("no explain.details")?;
    ensure!(
        details.iter().any(|d| d
            .as_str()
            .is_some_and(|d| d.contains("unix-socket message"))),
        "the details do not say the socket may be in a unix-socket message: {details:?}"
    );
    Ok(())
}

/// An owner binds 127.0.0.1:8080, holds it 1 ms, closes and binds again, over and over,
/// while another process's binds of 0.0.0.0:8080 fail every 2 ms (it holds 127.0.0.2:8080
/// itself, so they can never succeed and get in the owner's way). Whatever portwatch does to
/// explain those failures (it looks at the owner's socket, even duplicates its fd) must not
/// make the owner's rebinds fail: as many fail with it attached as without, within a
/// generous margin. Counts, not times. portwatch traces only the failures, so that it keeps
/// up and explains them while the owner loops.
fn rebind_loop(cx: &Ctx, ns: &Netns) -> Result<()> {
    let n = (1000.0 / cx.pw.timeout_scale).max(100.0) as u32;
    // The owner's rebinds, and how many conflicts with its socket `pw` had explained by the
    // time the owner's loop ended.
    let run = |pw: Option<&Portwatch>| -> Result<(Counted, usize)> {
        let mut owner = Holder::spawn(ns, "pw-owner")?;
        let mut asker = Holder::spawn(ns, "pw-asker")?;
        asker.bind_ok(&SockSpec::tcp("127.0.0.2:8080"))?;
        let (owned, explained, asked) = thread::scope(|s| {
            let asking = s.spawn(move || {
                asker.bind_loop(
                    &SockSpec::tcp("0.0.0.0:8080"),
                    n / 2,
                    Duration::ZERO,
                    Duration::from_millis(2),
                )
            });
            let owned = owner.bind_loop(
                &SockSpec::tcp("127.0.0.1:8080"),
                n,
                Duration::from_millis(1),
                Duration::ZERO,
            );
            let explained = pw.map_or(0, |pw| {
                pw.events_in(ns)
                    .iter()
                    .filter(|e| blocked_by_owner(e))
                    .count()
            });
            (owned, explained, asking.join())
        });
        let asked = asked.map_err(|_| anyhow::anyhow!("the asking thread panicked"))??;
        ensure!(
            asked.failed == asked.binds,
            "set-up: {} of the asker's {} binds of 0.0.0.0:8080 succeeded",
            asked.binds - asked.failed,
            asked.binds
        );
        Ok((owned?, explained))
    };
    let (without, _) = run(None).context("without portwatch")?;
    let pw = Portwatch::start(&cx.pw, &["--port", "8080", "--failed"])?;
    let (with, explained) = run(Some(&pw)).context("with portwatch")?;
    pw.stop()?;
    // A tenth of the asker's failures, at most 20: under emulation everything is slower.
    let enough = (n / 20).min(20) as usize;
    ensure!(
        explained >= enough,
        "set-up: portwatch had explained only {explained} conflicts with the owner's socket \
         when the owner's loop ended (want {enough}): this run does not show anything"
    );
    let allowed = 2 * without.failed + n / 100;
    ensure!(
        with.failed <= allowed,
        "the owner's rebinds failed {} times of {} with portwatch explaining, {} without \
         (allowed: {allowed})",
        with.failed,
        with.binds,
        without.failed
    );
    Ok(())
}

/// An explained failure that names a socket on 127.0.0.1:8080 (the owner's) in the way.
fn blocked_by_owner(e: &Event) -> bool {
    lookup(&e.0, "explain.holders")
        .as_array()
        .is_some_and(|hs| {
            hs.iter()
                .any(|h| h["addr"] == "127.0.0.1" && h["port"] == 8080)
        })
}

/// A process in its own way: it holds 127.0.0.1:8080 and binds 0.0.0.0:8080 itself (a reload
/// that changes the address). Kept: "this process already held", and a fix about its own
/// socket. Then on 8081 the same, with the process gone right after the call (it exits the
/// moment the failed bind returns): still "this process already held ...", now saying it has
/// let go since, named from the bind portwatch saw (`bound_by`, whose fd is null with fexit,
/// which sees a socket, not an fd), and never "stop pid N" for the caller itself.
fn own_socket(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = Holder::spawn(ns, "pw-reloader")?;
    h.bind_ok(&SockSpec::tcp("127.0.0.1:8080").listening())?;
    let b = h.bind_fails(&SockSpec::tcp("0.0.0.0:8080"), EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", h.pid, b.ino)?;
    fields(
        &ev,
        &[
            ("explain.rule", json!("specific-blocks-wildcard")),
            ("explain.holders.0.owners.0.pid", json!(h.pid)),
        ],
    )?;
    own_words(
        &ev,
        h.pid,
        "127.0.0.1:8080",
        "as a server does while it reloads",
    )?;

    let held = h.bind_ok(&SockSpec::tcp("127.0.0.1:8081"))?;
    pw.wait_call(ns, "bind", h.pid, held.ino)?;
    let fifo = Fifo::new()?;
    h.exit_on(fifo.path())?;
    h.fire_after_next_call(&[Target {
        pid: h.pid,
        fifo: Some(fifo.path().to_path_buf()),
    }])?;
    // The holder exits before it can answer: the call's event is found by its pid.
    let answer = h.bind(&SockSpec::tcp("0.0.0.0:8081"));
    ensure!(
        answer.is_err(),
        "set-up: the process should have exited right after its bind, it answered {answer:?}"
    );
    let pid = u64::from(h.pid);
    let failed = |e: &Event| {
        e.pid() == Some(pid)
            && e.0["errno"] == json!("EADDRINUSE")
            && e.0["requested"]["port"] == json!(8081)
    };
    let evs = pw.wait_for(ns, "the failed bind of the process that exited", |evs| {
        evs.iter().any(failed)
    })?;
    let ev = evs.into_iter().find(failed).context("the event")?;
    let fd = if lookup(&ev.0, "backend") == &json!(Backend::Fexit.name()) {
        json!(null)
    } else {
        json!(held.fd)
    };
    fields(
        &ev,
        &[
            ("explain.rule", json!("specific-blocks-wildcard")),
            ("explain.holders.0.owners", json!([])),
            ("explain.holders.0.owner_status", json!("closed")),
            ("explain.holders.0.bound_by.pid", json!(h.pid)),
            ("explain.holders.0.bound_by.fd", fd),
        ],
    )?;
    own_words(
        &ev,
        h.pid,
        "127.0.0.1:8081",
        "it has closed that socket or exited since",
    )
}

/// The details say the caller itself held `endpoint` (`how`: live, or let go since), and the
/// fix does not tell it to stop itself.
fn own_words(ev: &Event, pid: u32, endpoint: &str, how: &str) -> Result<()> {
    let details = lookup(&ev.0, "explain.details").to_string();
    let fix = lookup(&ev.0, "explain.fix")
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        details.contains(&format!(
            "pid {pid} (pw-reloader) is itself among the holders: this process already held \
             {endpoint} when it called bind()"
        )) && details.contains(how),
        "the details should say the process itself held {endpoint} ({how}): {details}\n  line: {ev}"
    );
    ensure!(
        !fix.is_empty() && !fix.contains(&format!("stop pid {pid}")),
        "the fix tells the process to stop itself: {fix}\n  line: {ev}"
    );
    Ok(())
}
