//! Bind paths other than the bind() and listen() system calls (issue 20): io_uring's
//! IORING_OP_BIND and IORING_OP_LISTEN (Linux 6.11+). The fexit backend hooks the kernel's
//! inet_bind and inet_listen, which every path goes through, so it must trace them, name the
//! submitting process and explain a conflict. The tracepoint backend hooks the system calls
//! and cannot see them (the README says so under Limits), but `who` reads the kernel's tables
//! and fd tables, so it must still name such a holder.

use anyhow::{Context, Result, ensure};
use portwatch_common::Backend;
use serde_json::{Value, json};

use super::{
    Ctx, Scenario,
    check::{fields, fields_of},
    holder::{Bound, Holder},
    netns::Netns,
    portwatch::Portwatch,
    sock::{SockSpec, errno_text},
};

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::shared("io_uring_bind_listen_traced", uring_traced)
            .only_backends(&[Backend::Fexit]),
        Scenario::shared("who_names_io_uring_holder", uring_who),
    ]
}

/// Whether this kernel has IORING_OP_BIND (6.11+), from `uname -r`.
fn has_uring_bind(cx: &Ctx) -> bool {
    let mut it = cx
        .kernel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (major, minor) >= (6, 11)
}

/// A bind through io_uring in `h`; on a kernel without IORING_OP_BIND, checks that the kernel
/// refused the operation (EINVAL) and returns None: nothing to trace there.
fn uring_bind(cx: &Ctx, h: &mut Holder, spec: &SockSpec) -> Result<Option<Bound>> {
    let b = h.uring_bind(spec)?;
    if !has_uring_bind(cx) {
        ensure!(
            b.errno == libc::EINVAL,
            "set-up: kernel {} predates IORING_OP_BIND, which should fail with EINVAL, got {}",
            cx.kernel,
            errno_text(b.errno)
        );
        return Ok(None);
    }
    Ok(Some(b))
}

/// A server binds and listens on 127.0.0.1:8080 through io_uring, then another process binds
/// the same address through io_uring and fails: all three traced, under the submitting
/// process's pid and comm, and the conflict explained with that server as the holder.
fn uring_traced(cx: &Ctx, pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = Holder::spawn(ns, "pw-uring-srv")?;
    let spec = SockSpec::tcp("127.0.0.1:8080").listening();
    let Some(b) = uring_bind(cx, &mut h, &spec)? else {
        return Ok(());
    };
    ensure!(
        b.errno == 0,
        "set-up: io_uring bind+listen failed: {}",
        errno_text(b.errno)
    );
    for kind in ["bind", "listen"] {
        let ev = pw.wait_call(ns, kind, h.pid, b.ino)?;
        fields(
            &ev,
            &[
                ("ok", json!(true)),
                ("comm", json!(h.comm)),
                (
                    "requested.port",
                    if kind == "bind" {
                        json!(8080)
                    } else {
                        Value::Null
                    },
                ),
                ("bound.port", json!(8080)),
            ],
        )
        .with_context(|| format!("the io_uring {kind}"))?;
    }
    let mut a = Holder::spawn(ns, "pw-uring-2nd")?;
    let b2 = a.uring_bind(&SockSpec::tcp("127.0.0.1:8080"))?;
    ensure!(
        b2.errno == libc::EADDRINUSE,
        "set-up: the second io_uring bind should fail with EADDRINUSE, got {}",
        errno_text(b2.errno)
    );
    let ev = pw.wait_call(ns, "bind", a.pid, b2.ino)?;
    fields(
        &ev,
        &[
            ("comm", json!(a.comm)),
            ("errno", json!("EADDRINUSE")),
            ("explain.rule", json!("same-address")),
            ("explain.holders.0.owners.0.pid", json!(h.pid)),
            ("explain.holders.0.owners.0.comm", json!(h.comm)),
        ],
    )
}

/// A socket bound (not listening) through io_uring: `who` names it and its owner, on every
/// backend (the tracepoint backend never saw the bind).
fn uring_who(cx: &Ctx, _pw: &Portwatch, ns: &Netns) -> Result<()> {
    let mut h = Holder::spawn(ns, "pw-uring-srv")?;
    let Some(b) = uring_bind(cx, &mut h, &SockSpec::tcp("127.0.0.1:8080"))? else {
        return Ok(());
    };
    ensure!(
        b.errno == 0,
        "set-up: io_uring bind failed: {}",
        errno_text(b.errno)
    );
    let v = super::who::who(cx, &["8080"])?;
    let mine = super::who::holders_in(&v, ns)?;
    ensure!(
        mine.len() == 1,
        "want the io_uring-bound socket in netns {}, got {mine:?}",
        ns.inode()
    );
    fields_of(
        mine[0],
        &[
            ("state", json!("BOUND")),
            ("addr", json!("127.0.0.1")),
            ("sock_ino", json!(b.ino)),
            ("owners.0.pid", json!(h.pid)),
            ("owners.0.comm", json!(h.comm)),
        ],
    )
}
