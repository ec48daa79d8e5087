//! Rule scenarios that need their own set-up (a sysctl, a TIME_WAIT connection, a device,
//! another namespace, a full ephemeral range, another uid, a cgroup program), or check more
//! than the generic [`super::cases`] do.

use anyhow::{Context, Result, ensure};
use serde_json::json;

use super::{
    cases::{clash, share_case},
    expect::{blames, fields_owned, named, says, shares_with, source_is},
    holding::{Holding, Seen},
    tcp_state::leave_time_wait,
};
use crate::scenarios::{
    Ctx,
    cgroup_deny::DenyProgram,
    check::fields,
    holder::Holder,
    netns::{self, Netns},
    portwatch::{Portwatch, lookup},
    sock::{Sock, SockSpec, errno_text},
};

const EADDRINUSE: i32 = libc::EADDRINUSE;

// ---- addresses -------------------------------------------------------------------------------

pub(super) fn same_address(cx: &Ctx, pw: &Portwatch, ns: &Netns, holding: Holding) -> Result<Seen> {
    let (ev, h, a) = clash(
        cx,
        pw,
        ns,
        holding,
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
    source_is(cx, &ev)?;
    Ok(Seen::of(ev, &h, &a))
}

/// The brief's own example, word for word.
pub(super) fn dual_stack(cx: &Ctx, pw: &Portwatch, ns: &Netns, holding: Holding) -> Result<Seen> {
    let (ev, h, a) = clash(
        cx,
        pw,
        ns,
        holding,
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
    source_is(cx, &ev)?;
    Ok(Seen::of(ev, &h, &a))
}

pub(super) fn bindv6only_default(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    holding: Holding,
) -> Result<Seen> {
    netns::set_sysctl("net/ipv6/bindv6only", "1")?;
    let mut h = Holder::spawn(ns, "pw-holder")?;
    let held = h.bind_ok(&SockSpec::tcp("[::]:8080").listening())?;
    let hev = pw.wait_call(ns, "bind", h.pid, held.ino)?;
    fields(&hev, &[("options.v6only", json!(true))])?;
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let after = holding.prepare(cx, &mut [&mut h])?;
    let b = after.call(&mut a, |a| a.bind_ok(&SockSpec::tcp("0.0.0.0:8080")))?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    shares_with(&ev, "ok-v6only-by-default", holding, &h)?;
    says(&ev, &["net.ipv6.bindv6only=1"])?;
    Ok(Seen::of(ev, &h, &a))
}

// ---- SO_REUSEADDR ----------------------------------------------------------------------------

/// The holder is bound but not listening, the kind ss misses: found anyway.
pub(super) fn reuseaddr_needs_both(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    holding: Holding,
) -> Result<Seen> {
    let (ev, h, a) = clash(
        cx,
        pw,
        ns,
        holding,
        &[SockSpec::tcp("127.0.0.1:8080")],
        SockSpec::tcp("127.0.0.1:8080").with(|o| o.reuseaddr = true),
        "reuseaddr-needs-both",
    )?;
    fields(&ev, &[("explain.holders.0.state", json!("BOUND"))])?;
    source_is(cx, &ev)?;
    Ok(Seen::of(ev, &h, &a))
}

/// Two UDP sockets share a port with SO_REUSEADDR; a third without it is refused, and both
/// are named. In the `Gone` mode both holders exit right after the third's bind.
pub(super) fn udp_reuseaddr(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    holding: Holding,
) -> Result<Seen> {
    let spec = SockSpec::udp("0.0.0.0:5353").with(|o| o.reuseaddr = true);
    let mut h = Holder::spawn(ns, "pw-holder")?;
    h.bind_ok(&spec)?;
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let b = a.bind_ok(&spec)?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    shares_with(&ev, "ok-udp-reuseaddr", Holding::Kept, &h)?;
    // Without SO_REUSEADDR on the new socket, both UDP sockets (holder and asker) are in the
    // way.
    let mut c = Holder::spawn(ns, "pw-third")?;
    let after = holding.prepare(cx, &mut [&mut h, &mut a])?;
    let b = after.call(&mut c, |c| {
        c.bind_fails(&SockSpec::udp("0.0.0.0:5353"), EADDRINUSE)
    })?;
    let ev = pw.wait_call(ns, "bind", c.pid, b.ino)?;
    fields(&ev, &[("explain.rule", json!("reuseaddr-needs-both"))])?;
    says(&ev, &["for UDP"])?;
    let pids: Vec<u64> = lookup(&ev.0, "explain.holders")
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter_map(|x| lookup(x, holding.pid_field()).as_u64())
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        pids.contains(&u64::from(h.pid)) && pids.contains(&u64::from(a.pid)),
        "both UDP sockets should be named, got pids {pids:?}\n  line: {ev}"
    );
    Ok(Seen {
        ev,
        varying: vec![
            (h.pid.into(), "<holder>"),
            (a.pid.into(), "<sharer>"),
            (c.pid.into(), "<caller>"),
        ],
    })
}

/// The restart case: a server (`old_reuse`) left a connection in TIME_WAIT
/// ([`leave_time_wait`]); a new socket (`new_reuse`) binds the same address.
pub(super) fn time_wait(
    pw: &Portwatch,
    ns: &Netns,
    old_reuse: bool,
    new_reuse: bool,
    rule: Option<&str>,
    words: &str,
) -> Result<()> {
    let addr = "127.0.0.1:8080";
    leave_time_wait(addr, old_reuse)?;
    let mut a = Holder::spawn(ns, "pw-server")?;
    let spec = SockSpec::tcp(addr).with(|o| o.reuseaddr = new_reuse);
    match rule {
        Some(rule) => {
            let b = a.bind_fails(&spec, EADDRINUSE)?;
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

pub(super) fn listen_conflict(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    holding: Holding,
) -> Result<Seen> {
    let spec = SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseaddr = true);
    let mut h = Holder::spawn(ns, "pw-holder")?;
    let first = h.bind_ok(&spec)?;
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let second = a.bind_ok(&spec)?;
    let ev = pw.wait_call(ns, "bind", a.pid, second.ino)?;
    shares_with(&ev, "ok-reuseaddr", Holding::Kept, &h)?;
    let l = h.listen(first.id)?;
    ensure!(
        l.errno == 0,
        "set-up: first listen failed: {}",
        errno_text(l.errno)
    );
    let after = holding.prepare(cx, &mut [&mut h])?;
    let l = after.call(&mut a, |a| a.listen(second.id))?;
    ensure!(
        l.errno == EADDRINUSE,
        "set-up: second listen should fail with EADDRINUSE, got {}",
        errno_text(l.errno)
    );
    let ev = pw.wait_call(ns, "listen", a.pid, second.ino)?;
    fields(&ev, &[("errno", json!("EADDRINUSE"))])?;
    blames(&ev, "listen-conflict", holding, &h)?;
    says(&ev, &["at listen()"])?;
    Ok(Seen::of(ev, &h, &a))
}

// ---- SO_REUSEPORT, devices, namespaces --------------------------------------------------------

pub(super) fn reuseport_uid(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    holding: Holding,
) -> Result<Seen> {
    let spec = SockSpec::tcp("0.0.0.0:8080").with(|o| o.reuseport = true);
    let mut h = Holder::spawn(ns, "pw-holder")?;
    h.bind_ok(&spec.clone().listening())?;
    let mut a = Holder::spawn_as(ns, "pw-nobody", 65534)?;
    let after = holding.prepare(cx, &mut [&mut h])?;
    let b = after.call(&mut a, |a| a.bind_fails(&spec, EADDRINUSE))?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    fields(&ev, &[("sk_uid", json!(65534))])?;
    blames(&ev, "reuseport-uid-mismatch", holding, &h)?;
    says(&ev, &["uid 0", "uid 65534"])?;
    Ok(Seen::of(ev, &h, &a))
}

pub(super) fn bindtodevice_unbound(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    holding: Holding,
) -> Result<Seen> {
    let _dev = netns::tun_device("pw0")?;
    let (ev, h, a) = clash(
        cx,
        pw,
        ns,
        holding,
        &[SockSpec::tcp("0.0.0.0:8080").with(|o| o.bind_device = Some("pw0".into()))],
        SockSpec::tcp("0.0.0.0:8080"),
        "bindtodevice-unbound",
    )?;
    fields(
        &ev,
        &[("explain.holders.0.options.bound_device", json!("pw0"))],
    )?;
    says(&ev, &["device pw0"])?;
    Ok(Seen::of(ev, &h, &a))
}

pub(super) fn different_devices(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    holding: Holding,
) -> Result<Seen> {
    let _d0 = netns::tun_device("pw0")?;
    let _d1 = netns::tun_device("pw1")?;
    share_case(
        cx,
        pw,
        ns,
        holding,
        SockSpec::tcp("0.0.0.0:8080").with(|o| o.bind_device = Some("pw0".into())),
        SockSpec::tcp("0.0.0.0:8080").with(|o| o.bind_device = Some("pw1".into())),
        "ok-different-devices",
    )
}

pub(super) fn different_netns(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    holding: Holding,
) -> Result<Seen> {
    netns::in_new_netns("pw-other-ns", |other| {
        let mut h = Holder::spawn(other, "pw-holder")?;
        let held = h.bind_ok(&SockSpec::tcp("0.0.0.0:8080").listening())?;
        // portwatch learns of the other namespace from the holder's own bind.
        pw.wait_call(other, "bind", h.pid, held.ino)?;
        let mut a = Holder::spawn(ns, "pw-asker")?;
        let after = holding.prepare(cx, &mut [&mut h])?;
        let b = after.call(&mut a, |a| a.bind_ok(&SockSpec::tcp("0.0.0.0:8080")))?;
        let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
        // The other namespace's socket is listed on its own (`other_netns`): it shares
        // nothing with the call, so it is not in `shares_with`.
        let mut want = vec![
            ("ok".to_string(), json!(true)),
            ("explain.rule".to_string(), json!("ok-different-netns")),
            (
                "explain.other_netns.0.netns".to_string(),
                json!(other.inode()),
            ),
            ("explain.shares_with".to_string(), json!(null)),
        ];
        want.extend(named("explain.other_netns.0", holding, h.pid, &h.comm));
        fields_owned(&ev, &want)?;
        let mut seen = Seen::of(ev, &h, &a);
        seen.varying.push((other.inode(), "<other netns>"));
        Ok(seen)
    })
}

// ---- port 0 ----------------------------------------------------------------------------------

/// Fills a two-port ephemeral range; returns the holder with both ports.
fn fill_range(pw: &Portwatch, ns: &Netns, reuse: bool) -> Result<Holder> {
    netns::set_sysctl("net/ipv4/ip_local_port_range", "41000 41001")?;
    let mut h = Holder::spawn(ns, "pw-holder")?;
    let spec = SockSpec::tcp("127.0.0.1:0").with(|o| o.reuseaddr = reuse);
    for _ in 0..2 {
        let b = h.bind_ok(&spec)?;
        pw.wait_call(ns, "bind", h.pid, b.ino)?;
    }
    Ok(h)
}

pub(super) fn ephemeral_exhausted(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = fill_range(pw, ns, false)?;
    let b = h.bind_fails(&SockSpec::tcp("127.0.0.1:0"), EADDRINUSE)?;
    let ev = pw.wait_call(ns, "bind", h.pid, b.ino)?;
    fields(&ev, &[("explain.rule", json!("ephemeral-exhausted"))])?;
    says(&ev, &["41000–41001", "2 of its 2 ports"])
}

pub(super) fn listen_exhausted(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = fill_range(pw, ns, false)?;
    let b = h.listen_unbound(&SockSpec::tcp("0.0.0.0:0"))?;
    ensure!(
        b.errno == EADDRINUSE,
        "set-up: listen() on an unbound socket should fail with EADDRINUSE, got {}",
        errno_text(b.errno)
    );
    let ev = pw.wait_call(ns, "listen", h.pid, b.ino)?;
    fields(
        &ev,
        &[("explain.rule", json!("listen-ephemeral-exhausted"))],
    )?;
    says(&ev, &["never bound", "41000–41001"])
}

pub(super) fn autobind_reuse(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    holding: Holding,
) -> Result<Seen> {
    let mut h = fill_range(pw, ns, true)?;
    netns::set_sysctl("net/ipv4/ip_autobind_reuse", "1")?;
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let after = holding.prepare(cx, &mut [&mut h])?;
    let b = after.call(&mut a, |a| {
        a.bind_ok(&SockSpec::tcp("127.0.0.1:0").with(|o| o.reuseaddr = true))
    })?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    shares_with(&ev, "ok-autobind-reuse", holding, &h)?;
    Ok(Seen::of(ev, &h, &a))
}

// ---- other refusals --------------------------------------------------------------------------

pub(super) fn privileged_port(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut a = Holder::spawn_as(ns, "pw-nobody", 65534)?;
    let b = a.bind_fails(&SockSpec::tcp("0.0.0.0:80"), libc::EACCES)?;
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

pub(super) fn already_bound(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
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

pub(super) fn eperm_cgroup(_: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let deny = DenyProgram::attach(&format!("pw-deny-{}", ns.inode()))?;
    let mut a = Holder::spawn(ns, "pw-asker")?;
    deny.add(a.pid)?;
    let b = a.bind_fails(&SockSpec::tcp("127.0.0.1:8080"), libc::EPERM)?;
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
