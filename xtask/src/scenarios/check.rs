//! Assertions on portwatch's JSON, phrased as what a user would read.
//!
//! [`fields`] compares many fields of one event at once and reports every mismatch together,
//! followed by the whole event line, so one failure message is enough to see what went wrong.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::{
    portwatch::{Event, lookup},
    sock::{Opts, SockSpec},
};

/// Expected value of one field, by dotted path into the event (`requested.port`).
pub type Want<'a> = (&'a str, Value);

/// Fails unless every `(path, value)` matches the event. Missing fields read as null.
pub fn fields(ev: &Event, want: &[Want<'_>]) -> Result<()> {
    fields_of(&ev.0, want)
}

pub fn fields_of(v: &Value, want: &[Want<'_>]) -> Result<()> {
    let bad: Vec<String> = want
        .iter()
        .filter(|(path, w)| !same(lookup(v, path), w))
        .map(|(path, w)| format!("{path} = {}, want {w}", lookup(v, path)))
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    bail!("{}\n  line: {v}", bad.join("; "))
}

/// Numbers compare by value (1 == 1.0); everything else structurally.
fn same(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => got == want,
    }
}

/// The option fields portwatch must show for a socket created from `spec`, after a bind that
/// succeeded (`bound_ok`) or not: all of them, so a flag that shows up where it was not set
/// fails too.
///
/// The kernel itself sets IPV6_V6ONLY when an IPv6 socket binds a specific, non-v4-mapped
/// address (`__inet6_bind`), and restores it when that bind fails; portwatch reports the
/// socket as it is after the call, so that is what is expected.
pub fn option_fields(spec: &SockSpec, bound_ok: bool) -> Vec<Want<'static>> {
    let Opts {
        reuseaddr,
        reuseport,
        v6only,
        freebind,
        transparent,
        bind_address_no_port,
        bind_device,
    } = &spec.opts;
    let v6only = if spec.ipv6() {
        let specific = match spec.addr.ip() {
            std::net::IpAddr::V6(a) => !a.is_unspecified() && a.to_ipv4_mapped().is_none(),
            std::net::IpAddr::V4(_) => false,
        };
        // Linux's default (net.ipv6.bindv6only) is 0: dual-stack.
        json!((bound_ok && specific) || v6only.unwrap_or(false))
    } else {
        Value::Null
    };
    vec![
        ("options.reuseaddr", json!(reuseaddr)),
        ("options.reuseport", json!(reuseport)),
        ("options.v6only", v6only),
        ("options.freebind", json!(freebind)),
        ("options.transparent", json!(transparent)),
        ("options.bind_address_no_port", json!(bind_address_no_port)),
        ("options.bound_device", json!(bind_device)),
    ]
}

/// Fails with `msg` and the offending events unless `cond`.
pub fn ensure_events(cond: bool, msg: &str, evs: &[Event]) -> Result<()> {
    if cond {
        return Ok(());
    }
    let mut s = msg.to_string();
    for e in evs {
        s.push_str(&format!("\n  line: {e}"));
    }
    if evs.is_empty() {
        s.push_str("\n  (no events)");
    }
    bail!(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_mismatch_and_the_line() {
        let ev = Event(json!({"ok": false, "requested": {"port": 0}, "errno": "EADDRINUSE"}));
        assert!(fields(&ev, &[("ok", json!(false)), ("errno", json!("EADDRINUSE"))]).is_ok());
        let err = fields(
            &ev,
            &[
                ("requested.port", json!(8080)),
                ("bound.port", json!(1)),
                ("ok", json!(false)),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("requested.port = 0, want 8080; bound.port = null, want 1\n"));
        assert!(err.contains("line: {"));
    }

    #[test]
    fn kernel_sets_v6only_on_specific_ipv6_binds() {
        let v6only = |spec: &SockSpec, ok| {
            option_fields(spec, ok)
                .into_iter()
                .find(|(k, _)| *k == "options.v6only")
                .unwrap()
                .1
        };
        assert_eq!(v6only(&SockSpec::tcp("[::1]:1"), true), json!(true));
        assert_eq!(v6only(&SockSpec::tcp("[::1]:1"), false), json!(false));
        assert_eq!(v6only(&SockSpec::tcp("[::]:1"), true), json!(false));
        assert_eq!(
            v6only(&SockSpec::tcp("[::ffff:127.0.0.1]:1"), true),
            json!(false)
        );
        assert_eq!(v6only(&SockSpec::tcp("127.0.0.1:1"), true), Value::Null);
    }
}
