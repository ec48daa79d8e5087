//! The three shapes most rule scenarios take: a holder process binds first, then an asker
//! process's bind fails (a clash), succeeds beside it (a share), or is refused for a reason
//! that involves no holder. Each checks the event portwatch printed for the asker's call.
//! Clashes and shares run in both [`Holding`] modes.

use anyhow::{Result, ensure};
use serde_json::json;

use super::{
    expect::{blames, shares_with, source_is},
    holding::{Holding, Seen},
};
use crate::scenarios::{
    Ctx,
    check::fields,
    holder::Holder,
    netns::Netns,
    portwatch::{Event, Portwatch, lookup},
    sock::SockSpec,
};

const EADDRINUSE: i32 = libc::EADDRINUSE;

/// A holder process binds `held`; an asker process's bind of `asked` must fail with
/// EADDRINUSE, explained by `rule` naming the holder. In the `Gone` mode the holder exits
/// right after the asker's bind.
pub(super) fn clash(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    holding: Holding,
    held: &[SockSpec],
    asked: SockSpec,
    rule: &str,
) -> Result<(Event, Holder, Holder)> {
    let mut h = Holder::spawn(ns, "pw-holder")?;
    for spec in held {
        h.bind_ok(spec)?;
    }
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let after = holding.prepare(cx, &mut [&mut h])?;
    let b = after.call(&mut a, |a| a.bind_fails(&asked, EADDRINUSE))?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    fields(
        &ev,
        &[
            ("errno", json!("EADDRINUSE")),
            ("requested.port", json!(asked.addr.port())),
        ],
    )?;
    blames(&ev, rule, holding, &h)?;
    Ok((ev, h, a))
}

/// [`clash`] with one held socket.
pub(super) fn clash_case(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    holding: Holding,
    held: SockSpec,
    asked: SockSpec,
    rule: &str,
) -> Result<Seen> {
    let (ev, h, a) = clash(cx, pw, ns, holding, &[held], asked, rule)?;
    source_is(cx, &ev)?;
    Ok(Seen::of(ev, &h, &a))
}

/// A holder binds `held`; the asker's bind of `asked` succeeds, explained by `rule`. In the
/// `Gone` mode the holder exits right after the asker's bind.
pub(super) fn share_case(
    cx: &Ctx,
    pw: &Portwatch,
    ns: &Netns,
    holding: Holding,
    held: SockSpec,
    asked: SockSpec,
    rule: &str,
) -> Result<Seen> {
    let mut h = Holder::spawn(ns, "pw-holder")?;
    h.bind_ok(&held)?;
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let after = holding.prepare(cx, &mut [&mut h])?;
    let b = after.call(&mut a, |a| a.bind_ok(&asked))?;
    let ev = pw.wait_call(ns, "bind", a.pid, b.ino)?;
    shares_with(&ev, rule, holding, &h)?;
    Ok(Seen::of(ev, &h, &a))
}

/// A [`clash_case`] as a scenario body.
pub(super) fn clashing(
    held: SockSpec,
    asked: SockSpec,
    rule: &'static str,
) -> impl Fn(&Ctx, &Portwatch, &Netns, Holding) -> Result<Seen> + Send + Sync + 'static {
    move |cx, pw, ns, holding| clash_case(cx, pw, ns, holding, held.clone(), asked.clone(), rule)
}

/// A [`share_case`] as a scenario body.
pub(super) fn sharing(
    held: SockSpec,
    asked: SockSpec,
    rule: &'static str,
) -> impl Fn(&Ctx, &Portwatch, &Netns, Holding) -> Result<Seen> + Send + Sync + 'static {
    move |cx, pw, ns, holding| share_case(cx, pw, ns, holding, held.clone(), asked.clone(), rule)
}

/// A [`refused`] as a scenario body.
pub(super) fn refusing(
    spec: SockSpec,
    errno: i32,
    rule: &'static str,
) -> impl Fn(&Ctx, &Portwatch, &Netns) -> Result<()> + Send + Sync + 'static {
    move |_, pw, ns| refused(pw, ns, spec.clone(), errno, rule)
}

/// A bind refused for a reason other than a holder.
pub(super) fn refused(
    pw: &Portwatch,
    ns: &Netns,
    spec: SockSpec,
    errno: i32,
    rule: &str,
) -> Result<()> {
    let mut a = Holder::spawn(ns, "pw-asker")?;
    let b = a.bind_fails(&spec, errno)?;
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
